"""The project's exception types.

Two families, after h11's local/remote split:

* ``InputError`` -- the caller gave us something wrong (a file, a field, an
  argument).  The CLI exits 2; the daemon reports it and keeps what it has.
* ``OperationError`` -- the input was fine but doing it failed (the hypervisor
  refused, a device is missing).  The CLI exits 1.

Every message is one line that names the file or field and says what was
expected and what was found.
"""

from __future__ import annotations

import errno as _errno
import os

from xenkdump.exits import EXIT_FAILED, EXIT_USAGE


class XenkdumpError(Exception):
    """Base class of every error this project raises on purpose."""

    exit_code = EXIT_FAILED


class InputError(XenkdumpError):
    """Bad input: a file, a config field, a command-line argument."""

    exit_code = EXIT_USAGE


class ImageError(InputError):
    """A kernel, initrd or other image file is not what it must be."""


class PlanError(InputError):
    """The crash image cannot be placed (e.g. the crash range is too small)."""


class ConfigError(InputError):
    """The configuration file (or a simulated-host file) is invalid."""


class OperationError(XenkdumpError):
    """A well-formed request failed while being carried out."""


class BusyError(OperationError):
    """A reload or unload is already running and the caller asked not to wait."""


class HypervisorError(OperationError):
    """A libxenctrl call or a (simulated) kexec hypercall failed.

    Carries the operation name, the positive errno value and libxenctrl's own
    message when it printed one.
    """

    def __init__(self, op: str, errno: int, message: str = "") -> None:
        self.op = op
        self.errno = errno
        self.message = message
        name = _errno.errorcode.get(errno, f"errno {errno}")
        text = f"{op} failed: {name} ({os.strerror(errno)})" if errno else f"{op} failed"
        if message:
            text += f": {message}"
        super().__init__(text)


class HypervisorUnavailable(HypervisorError):
    """No usable hypervisor interface: no libxenctrl, not a PV dom0, Xen too old."""


class FileWriteError(OperationError):
    """Writing a file failed (no space, read-only file system, I/O error...): names the file."""

    def __init__(self, path: os.PathLike[str] | str, exc: OSError) -> None:
        self.path = os.fsencode(path).decode("utf-8", errors="backslashreplace")
        self.errno = exc.errno or 0
        name = _errno.errorcode.get(self.errno, f"errno {self.errno}")
        super().__init__(f"{self.path}: cannot write: {name} ({exc.strerror or exc})")
