"""The crash image: pure builders (bzImage, boot_params, elfcorehdr, command line,
purgatory), the segment planner and the loader that feeds the hypervisor port.

The builders take values and return bytes; they never open files or make
hypercalls (docs/architecture.md §7).
"""

from __future__ import annotations
