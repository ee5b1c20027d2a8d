"""Give the memory of a finished load back to the system.

A load reads the kernel and initrd (tens of MB) and builds segments from them; once
Xen has its copy, xenkdumpd drops every byte, but glibc keeps freed heap pages that
sit below live allocations.  ``malloc_trim(0)`` returns them, so the idle daemon's
resident size does not grow with the initrd (bench/idle.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError as exc:  # not glibc-compatible: nothing to trim with
        log.debug("no C library to trim the heap with: %s", exc)
        return None


def release_free_memory() -> bool:
    """True when the C library returned freed heap memory to the system."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    return bool(trim(0))
