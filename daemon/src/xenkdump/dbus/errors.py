"""The one place where errors are converted between Python and D-Bus.

Server side: ``to_dbus(exc)`` gives the (error name, one-line message) a failed call
returns.  Client side: ``from_dbus(name, message)`` gives the project exception the
CLI prints, with its exit code (input problems 2, everything else 1).
"""

from __future__ import annotations

import logging

from xenkdump.dbus import names
from xenkdump.errors import (
    BusyError,
    ConfigError,
    HypervisorError,
    HypervisorUnavailable,
    ImageError,
    InputError,
    OperationError,
    PlanError,
    XenkdumpError,
)

log = logging.getLogger("xenkdump.dbus")


class NotPermittedError(OperationError):
    """The caller's uid may not call this method (checked by the daemon too)."""


class RemoteError(XenkdumpError):
    """A named D-Bus error returned by xenkdumpd, as the client sees it."""

    def __init__(self, name: str, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.name = name
        self.exit_code = exit_code


# Most specific first: the first isinstance match wins.
_TO_DBUS: tuple[tuple[type[BaseException], str], ...] = (
    (NotPermittedError, names.ERROR_NOT_PERMITTED),
    (ConfigError, names.ERROR_INVALID_CONFIG),
    (ImageError, names.ERROR_IMAGE_INVALID),
    (PlanError, names.ERROR_DOES_NOT_FIT),
    (InputError, names.ERROR_INVALID_ARGS),
    (HypervisorUnavailable, names.ERROR_HYPERVISOR_UNAVAILABLE),
    (HypervisorError, names.ERROR_HYPERVISOR_FAILED),
    (OperationError, names.ERROR_FAILED),
)

# Errors whose cause is the caller's input exit 2 at the CLI, as InputError does.
_INPUT_ERRORS = frozenset(
    {
        names.ERROR_INVALID_ARGS,
        names.ERROR_INVALID_CONFIG,
        names.ERROR_IMAGE_INVALID,
        names.ERROR_DOES_NOT_FIT,
    }
)


def one_line(text: str) -> str:
    return " ".join(text.split())


def to_dbus(exc: BaseException) -> tuple[str, str]:
    """(D-Bus error name, one-line message) for an exception raised by the core."""
    if isinstance(exc, BusyError):
        return names.ERROR_BUSY, one_line(str(exc)) or "xenkdumpd is busy"
    for cls, name in _TO_DBUS:
        if isinstance(exc, cls):
            return name, one_line(str(exc))
    # Not one of ours: a bug.  Log it with its traceback; the caller gets one line.
    log.error("internal error in a D-Bus call", exc_info=exc)
    return names.ERROR_INTERNAL, one_line(f"internal error: {exc!r}")


def exit_code_for(name: str) -> int:
    return 2 if name in _INPUT_ERRORS else 1


def from_dbus(name: str, message: str) -> RemoteError:
    """The exception the client raises for a D-Bus error reply."""
    text = one_line(message) or name
    if name in ("org.freedesktop.DBus.Error.AccessDenied", names.ERROR_NOT_PERMITTED):
        text = f"permission denied: {text} (only root may do this)"
    elif name == "org.freedesktop.DBus.Error.NoReply":
        text = f"xenkdumpd did not answer: {text}"
    return RemoteError(name, text, exit_code_for(name))
