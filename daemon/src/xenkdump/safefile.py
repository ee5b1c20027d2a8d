"""The one way xenkdump reads and writes files: bounded, non-blocking reads; atomic writes.

Reading (``read_file``): every file xenkdump reads -- kernel, initrd, configuration and
drop-ins, the state record, a simulated host -- is opened with ``O_NONBLOCK`` (a FIFO
or a device never hangs the caller), must be a regular file (``fstat``), and is read up
to a size limit that fits its kind (``Limit``).  Anything else is one ``InputError`` (or
the subclass the caller names) that names the file and says what was expected::

    /tmp/k: kernel: expected a regular file, found a FIFO
    /boot/initrd.img: initrd: expected at most 1024 MiB, found 1500 MiB

Writing (``atomic_write``): a temporary file in the target's directory, created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (never through a symlink someone planted, never an
existing file), its mode set with ``fchmod`` on the descriptor (never by name), written,
``fsync``-ed, renamed over the target, then the directory ``fsync``-ed: after a crash
the target is either the old file or the new one, whole.  A failure raises
``FileWriteError`` naming the target and the errno (e.g. ENOSPC, EROFS).

``shown(path)`` is a path as it may appear in a message, the journal or on D-Bus: bytes
that are not UTF-8 are escaped (``\\xff``), so that no message is invalid text.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterator

from xenkdump.errors import FileWriteError, InputError
from xenkdump.units import KIB, MIB

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from pathlib import Path  # not imported: xenkdumpctl hv info (bench/cli.py)


class Limit(enum.IntEnum):
    """Largest file accepted, by kind (bytes)."""

    # A bzImage: Debian's are ~8 MiB; a crash area holds at most a few hundred MiB.
    KERNEL = 256 * MIB
    # An initramfs: Debian's are 30-70 MB; it must fit in the crash area with the kernel.
    INITRD = 1024 * MIB
    # YAML written by people or config management: configuration, drop-ins, simulated host.
    CONFIG = 1 * MIB
    # The state record (a few KiB) and the simulator's own state.
    STATE = 1 * MIB
    # Kernel-provided text files (/proc/cmdline, /proc/stat, /sys/firmware/efi/systab).
    PROC = 1 * MIB


def shown(path: Path | str) -> str:
    """``path`` as valid one-line text: undecodable bytes escaped as ``\\xNN``, control
    characters as Python writes them (``\\n``)."""
    text = os.fsencode(path).decode("utf-8", errors="backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def is_text(s: str) -> bool:
    """True when ``s`` is valid UTF-8 text (no surrogate escapes of undecodable bytes)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def require_text_path(path: Path | str, what: str, *, error: type[InputError] = InputError) -> None:
    """``error`` unless ``path`` is UTF-8: it is recorded, logged and sent on D-Bus,
    which carries only valid UTF-8 strings."""
    if not is_text(str(path)):
        raise error(f"{shown(path)}: {what}: expected a UTF-8 path, found bytes that are not")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return f"file type {stat.S_IFMT(mode):#o}"


def _size(n: int) -> str:
    if n >= MIB:
        return f"{n / MIB:.0f} MiB" if n % MIB == 0 else f"{n / MIB:.1f} MiB"
    return f"{n // KIB} KiB" if n >= KIB and n % KIB == 0 else f"{n} bytes"


def read_file(
    path: Path | str,
    what: str,
    limit: Limit | int,
    *,
    error: type[InputError] = InputError,
) -> bytes:
    """The bytes of the regular file ``path`` (a ``what``: "kernel", "configuration"...).

    Raises ``error`` (an InputError subclass) naming the file when it is missing,
    unreadable, not a regular file or larger than ``limit``.
    """
    data = read_file_if_exists(path, what, limit, error=error)
    if data is None:
        raise error(f"{shown(path)}: {what} not found")
    return data


def open_regular(
    path: Path | str,
    what: str,
    limit: Limit | int,
    *,
    error: type[InputError] = InputError,
) -> int | None:
    """A descriptor of the regular file ``path`` (None when it does not exist), opened
    without blocking and checked against ``limit``; the caller closes it.  ``error``
    naming the file for anything else."""
    name = shown(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"{name}: {what} unreadable: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{name}: {what}: expected a regular file, found {_kind(st.st_mode)}")
        if st.st_size > limit:
            raise error(
                f"{name}: {what}: expected at most {_size(limit)}, found {_size(st.st_size)}"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def chunks(
    path: Path | str,
    what: str,
    limit: Limit | int,
    *,
    error: type[InputError] = InputError,
) -> Iterator[bytes]:
    """The bytes of the regular file ``path`` in chunks of at most 8 MiB (for hashing
    without holding the file); the checks of ``read_file``."""
    fd = open_regular(path, what, limit, error=error)
    if fd is None:
        raise error(f"{shown(path)}: {what} not found")
    return _chunks_of(fd, path, what, limit, error)


def _chunks_of(
    fd: int, path: Path | str, what: str, limit: int, error: type[InputError]
) -> Iterator[bytes]:
    """Read ``fd`` to EOF (st_size is only a hint: /proc files say 0), bounded; close it."""
    try:
        total = 0
        while True:
            try:
                chunk = os.read(fd, min(limit + 1 - total, 8 * MIB))
            except OSError as exc:
                raise error(f"{shown(path)}: {what} unreadable: {exc.strerror or exc}") from None
            if not chunk:
                return
            total += len(chunk)
            if total > limit:
                raise error(f"{shown(path)}: {what}: expected at most {_size(limit)}, found more")
            yield chunk
    finally:
        os.close(fd)


def check_readable(path: Path | str, what: str, limit: Limit | int) -> str:
    """ "" if ``path`` is a regular file xenkdump could read, else why not (one line)."""
    try:
        fd = open_regular(path, what, limit)
    except InputError as exc:
        return str(exc)
    if fd is None:
        return f"{shown(path)}: {what} not found"
    os.close(fd)
    return ""


def read_file_if_exists(
    path: Path | str,
    what: str,
    limit: Limit | int,
    *,
    error: type[InputError] = InputError,
) -> bytes | None:
    """``read_file``, but None when ``path`` does not exist."""
    fd = open_regular(path, what, limit, error=error)
    if fd is None:
        return None
    return b"".join(_chunks_of(fd, path, what, limit, error))


def atomic_write(path: Path | str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring)."""
    directory, name = os.path.split(path)
    directory = directory or "."
    import secrets  # noqa: PLC0415 (hashlib, OpenSSL: writers only)

    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise FileWriteError(path, exc) from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        import contextlib  # noqa: PLC0415 (a failed write only: readers load no contextlib)

        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise FileWriteError(path, exc) from None
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        # The rename happened; only its durability is in doubt.
        raise FileWriteError(directory, exc) from None


__all__ = [
    "Limit",
    "atomic_write",
    "check_readable",
    "chunks",
    "is_text",
    "open_regular",
    "read_file",
    "read_file_if_exists",
    "require_text_path",
    "shown",
]
