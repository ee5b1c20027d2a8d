"""The real adapter: ``Hypervisor`` on libxenctrl through the cffi binding.

Every libxenctrl call goes through ``XenHypervisor._call``, which reads errno
immediately, collects what libxenctrl logged and raises HypervisorError on
failure.  libxenctrl is given a logger of its own (libxentoollog's stdio
logger writing into a memory stream) so its messages end up in our exceptions
and log instead of on the process's stderr.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Callable, Sequence

import xenkdump_xenctrl as xc
from xenkdump.errors import HypervisorError, HypervisorUnavailable, InputError, PlanError
from xenkdump.hv.values import (
    KEXEC_RANGE_MA_CPU,
    KEXEC_RANGE_MA_CRASH,
    KEXEC_RANGE_MA_VMCOREINFO,
    KEXEC_RANGE_MA_XEN,
    MIN_XEN_VERSION,
    PAGE_SIZE,
    AddressRange,
    ClosingContext,
    E820Entry,
    PhysInfo,
    Segment,
    read_dom0_cmdline,
)
from xenkdump.safefile import Limit, read_file_if_exists

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


def _warn(message: str, *args: object) -> None:
    """Log a warning; logging is imported only then (``hv info`` start-up, bench/cli.py)."""
    import logging  # noqa: PLC0415

    logging.getLogger(__name__).warning(message, *args)


ffi = xc.ffi

PRIVCMD_PATHS = ("/dev/xen/privcmd", "/proc/xen/privcmd")
# dom0's "ADDRESS SIZE" (hex) of its VMCOREINFO note; a machine address on a PV dom0.
# $XENKDUMP_SYS_VMCOREINFO names another file (like $XENKDUMP_LIBXENCTRL, for tests).
SYS_VMCOREINFO = "/sys/kernel/vmcoreinfo"
ENV_VMCOREINFO = "XENKDUMP_SYS_VMCOREINFO"

# xen/version.h sub-commands of xc_version.
XENVER_VERSION = 0
XENVER_EXTRAVERSION = 1
XENVER_COMMANDLINE = 9
# xen_extraversion_t is char[16], xen_commandline_t char[1024].
EXTRAVERSION_LEN = 16
COMMANDLINE_LEN = 1024

# Xen inserts reserved entries for I/O gaps, so the machine map can be far
# longer than the firmware's; too small an array gives EINVAL.  kexec-tools
# uses 32768 for crash loads (docs/xen-kexec-contract.md §2.8).
MACHINE_MAP_MAX = 32768

# What libxenctrl would print to stderr with no logger (it defaults to
# XTL_PROGRESS); progress bars are for domain builds and are dropped.
_LOG_LEVEL = "XTL_INFO"

PV_HINT = (
    "kexec hypercall unavailable: dom0 must be PV (a PVH/HVM dom0 has no kexec_op) "
    "and Xen must be built with CONFIG_KEXEC"
)

_PHYSINFO = struct.Struct("<" + "I" * len(xc.PHYSINFO_FIELDS))
assert [off for _, off in xc.PHYSINFO_FIELDS] == list(range(0, _PHYSINFO.size, 4))
assert tuple(name for name, _ in xc.PHYSINFO_FIELDS) == PhysInfo._fields


class _CapturedLog:
    """A libxentoollog stdio logger writing into an open_memstream buffer."""

    def __init__(self, lib: xc.Library) -> None:
        self._lib = lib
        self._ptr = ffi.new("char **")
        self._size = ffi.new("size_t *")
        self._stream = lib.c.open_memstream(self._ptr, self._size)
        if self._stream == ffi.NULL:
            raise HypervisorUnavailable(
                "open_memstream", ffi.errno, "cannot capture libxenctrl's log"
            )
        flags = lib.ctrl.XTL_STDIOSTREAM_HIDE_PROGRESS
        stdio = lib.ctrl.xtl_createlogger_stdiostream(
            self._stream, getattr(lib.ctrl, _LOG_LEVEL), flags
        )
        if stdio == ffi.NULL:
            err = ffi.errno
            self._close_stream()
            raise HypervisorUnavailable("xtl_createlogger_stdiostream", err)
        # The stdio logger starts with its xentoollog_logger vtable, which is
        # what libxenctrl takes (xentoollog.h's XTL_NEW_LOGGER layout).
        self.logger: Any = ffi.cast("xentoollog_logger *", stdio)

    def take(self) -> str:
        """Everything logged since the last take(), as one line."""
        c = self._lib.c
        c.fflush(self._stream)
        raw = b"" if self._ptr[0] == ffi.NULL else ffi.unpack(self._ptr[0], self._size[0])
        # glibc's memstream size follows the position: rewind makes it empty.
        c.rewind(self._stream)
        c.fflush(self._stream)
        lines = raw.decode("utf-8", errors="replace").splitlines()
        return "; ".join(line.strip() for line in lines if line.strip())

    def _close_stream(self) -> None:
        self._lib.c.fclose(self._stream)
        self._lib.c.free(self._ptr[0])
        self._ptr[0] = ffi.NULL

    def close(self) -> None:
        # xtl_logger_destroy frees the logger but leaves the FILE to us.
        self._lib.ctrl.xtl_logger_destroy(self.logger)
        self._close_stream()


def read_dom0_vmcoreinfo(path: Path | str = SYS_VMCOREINFO) -> AddressRange:
    """dom0's VMCOREINFO note range from ``path``; size 0 when the kernel exports none.

    Linux writes ``"%pa %x"``: the address (a machine address on a PV dom0) and the
    note's size, both hex.  PlanError naming ``path`` when the text is anything else.
    """
    raw = read_file_if_exists(path, "dom0 VMCOREINFO", Limit.PROC, error=PlanError)
    if raw is None:
        return AddressRange(0, 0)
    text = raw.decode("ascii", errors="replace").strip()
    fields = text.split()
    try:
        if len(fields) != 2:
            raise ValueError(text)
        start, size = int(fields[0], 16), int(fields[1], 16)
    except ValueError:
        raise PlanError(f"{path}: expected 'ADDRESS SIZE' in hex, found {text[:60]!r}") from None
    return AddressRange(start, size)


def _privcmd_present() -> bool:
    return any(os.path.exists(p) for p in PRIVCMD_PATHS)


def _open_failure(err: int, logged: str) -> HypervisorUnavailable:
    """Name the cause of an xc_interface_open failure."""
    if err in (errno.EACCES, errno.EPERM):
        cause = "permission denied on /dev/xen/privcmd: run as root"
    elif err == errno.ENOENT or not _privcmd_present():
        cause = "no /dev/xen/privcmd: not a Xen dom0 (or the xen-privcmd module is not loaded)"
    else:
        cause = "cannot open the Xen control interface"
    if logged:
        cause += f" [libxenctrl: {logged}]"
    return HypervisorUnavailable("xc_interface_open", err, cause)


class XenHypervisor(ClosingContext):
    """``xenkdump.hv.port.Hypervisor`` on a real PV dom0.

    Open with ``XenHypervisor.open()`` and close deterministically (``with``
    or ``close()``).  Calls are serialised by a lock: the captured log and
    errno must belong to the call that produced them.  A forked child must
    open its own instance.
    """

    name = "xen"

    def __init__(self, lib: xc.Library, xch: Any, captured: _CapturedLog) -> None:
        self._lib = lib
        self._ctrl = lib.ctrl
        self._xch: Any = xch
        self._log = captured
        self._lock = threading.RLock()
        # Xen 4.12+: page buffers straight from libxencall (§2.7).
        self._xcall: Any = None
        if xc.has_symbol(self._ctrl, "xc_interface_xcall_handle"):
            self._xcall = self._ctrl.xc_interface_xcall_handle(xch)

    @classmethod
    def open(cls, library: str | None = None) -> XenHypervisor:
        """Open libxenctrl and check that this Xen can load crash images.

        Raises HypervisorUnavailable naming the cause: library missing, not a
        dom0, not root, Xen older than 4.4, or no kexec hypercall (non-PV dom0).
        """
        try:
            lib = xc.open_library(library)
        except xc.LibraryLoadError as e:
            raise HypervisorUnavailable("load libxenctrl", 0, str(e)) from None
        captured = _CapturedLog(lib)
        xch = lib.ctrl.xc_interface_open(captured.logger, captured.logger, 0)
        if xch == ffi.NULL:
            err = ffi.errno
            logged = captured.take()
            captured.close()
            raise _open_failure(err, logged)
        self = cls(lib, xch, captured)
        try:
            self._check_usable()
        except BaseException:
            self.close()
            raise
        return self

    def _check_usable(self) -> None:
        major, minor = self.xen_version()
        if (major, minor) < MIN_XEN_VERSION:
            # Xen < 4.4 answers the segment load command with 0 without
            # loading anything (xen-kexec-contract.md §4.2).
            need = ".".join(map(str, MIN_XEN_VERSION))
            raise HypervisorUnavailable(
                "xc_version", 0, f"Xen {major}.{minor} is too old: kexec loading needs Xen {need}+"
            )
        # Probe the hypercall: ENOSYS means a PVH/HVM dom0 or no CONFIG_KEXEC
        # (§2.1); _call turns it into HypervisorUnavailable.
        self.crash_range()

    # -- plumbing ---------------------------------------------------------

    def _handle(self, op: str) -> Any:
        if self._xch is None:
            raise HypervisorError(op, errno.EBADF, "the libxenctrl handle is closed")
        return self._xch

    def _call(self, op: str, fn: Callable[..., Any], *args: Any, ok: Callable[[Any], bool]) -> Any:
        """Call ``fn(xch, *args)``; raise HypervisorError unless ``ok(result)``."""
        with self._lock:
            xch = self._handle(op)
            try:
                result = fn(xch, *args)
            except (OverflowError, TypeError) as e:
                # cffi refuses a Python value that does not fit the C type.
                raise HypervisorError(op, errno.EINVAL, f"bad argument: {e}") from None
            err = ffi.errno  # before anything else can touch errno
            logged = self._log.take()
        if ok(result):
            if logged:
                _warn("libxenctrl (%s): %s", op, logged)
            return result
        if err == errno.ENOSYS:
            raise HypervisorUnavailable(
                op, err, f"{PV_HINT}{' [' + logged + ']' if logged else ''}"
            )
        raise HypervisorError(op, err, logged)

    def _int_call(self, op: str, fn: Callable[..., Any], *args: Any) -> int:
        result: int = self._call(op, fn, *args, ok=lambda rc: rc >= 0)
        return result

    def _range(self, op: str, range_id: int, nr: int) -> AddressRange:
        size = ffi.new("uint64_t *")
        start = ffi.new("uint64_t *")
        # On failure libxenctrl still writes stale values: _call raises first.
        self._int_call(op, self._ctrl.xc_kexec_get_range, range_id, nr, size, start)
        return AddressRange(start=int(start[0]), size=int(size[0]))

    # -- Hypervisor -------------------------------------------------------

    def xen_version(self) -> tuple[int, int]:
        rc = self._int_call(
            "xc_version(XENVER_version)", self._ctrl.xc_version, XENVER_VERSION, ffi.NULL
        )
        return rc >> 16, rc & 0xFFFF

    def xen_extraversion(self) -> str:
        buf = ffi.new("char[]", EXTRAVERSION_LEN)
        self._int_call(
            "xc_version(XENVER_extraversion)", self._ctrl.xc_version, XENVER_EXTRAVERSION, buf
        )
        return bytes(ffi.string(buf, EXTRAVERSION_LEN)).decode("utf-8", errors="replace")

    def xen_command_line(self) -> str:
        buf = ffi.new("char[]", COMMANDLINE_LEN)
        try:
            self._int_call(
                "xc_version(XENVER_commandline)", self._ctrl.xc_version, XENVER_COMMANDLINE, buf
            )
        except HypervisorError as e:
            # XSM may refuse it; the port allows "" for "unavailable".
            if e.errno in (errno.EPERM, errno.EINVAL):
                return ""
            raise
        return bytes(ffi.string(buf, COMMANDLINE_LEN)).decode("utf-8", errors="replace")

    def dom0_command_line(self) -> str:
        try:
            return read_dom0_cmdline()
        except InputError:
            return ""

    def crash_range(self) -> AddressRange:
        return self._range("xc_kexec_get_range(MA_CRASH)", KEXEC_RANGE_MA_CRASH, 0)

    def xen_range(self) -> AddressRange:
        return self._range("xc_kexec_get_range(MA_XEN)", KEXEC_RANGE_MA_XEN, 0)

    def vmcoreinfo_range(self) -> AddressRange:
        return self._range("xc_kexec_get_range(MA_VMCOREINFO)", KEXEC_RANGE_MA_VMCOREINFO, 0)

    def dom0_vmcoreinfo_range(self) -> AddressRange:
        override = os.environ.get(ENV_VMCOREINFO)
        return read_dom0_vmcoreinfo(override or SYS_VMCOREINFO)

    def cpu_note_range(self, cpu: int) -> AddressRange:
        if not -(2**31) <= cpu < 2**31:
            raise HypervisorError(f"xc_kexec_get_range(MA_CPU, {cpu})", errno.ERANGE)
        return self._range(f"xc_kexec_get_range(MA_CPU, {cpu})", KEXEC_RANGE_MA_CPU, cpu)

    def max_cpus(self) -> int:
        return self._int_call("xc_get_max_cpus", self._ctrl.xc_get_max_cpus)

    def physinfo(self) -> PhysInfo:
        # Opaque zeroed buffer bigger than any release's xc_physinfo_t; only
        # the leading u32 fields (offsets 0-24) are read, because later
        # offsets differ between releases (xen-kexec-contract.md §2.9).
        buf = ffi.new("unsigned char[]", xc.PHYSINFO_SIZE)
        self._int_call("xc_physinfo", self._ctrl.xc_physinfo, buf)
        return PhysInfo(*_PHYSINFO.unpack_from(ffi.buffer(buf, _PHYSINFO.size)))

    def machine_memory_map(self) -> list[E820Entry]:
        # struct e820entry is packed (20 bytes) in the cdef (§2.8).
        entries = ffi.new("struct e820entry[]", MACHINE_MAP_MAX)
        n = self._int_call(
            "xc_get_machine_memory_map",
            self._ctrl.xc_get_machine_memory_map,
            entries,
            MACHINE_MAP_MAX,
        )
        return [E820Entry(int(e.addr), int(e.size), int(e.type)) for e in entries[0:n]]

    def kexec_load(self, type: int, arch: int, entry: int, segments: Sequence[Segment]) -> None:
        op = "xc_kexec_load"
        for field, value, bits in (("type", type, 8), ("arch", arch, 16), ("entry", entry, 64)):
            if not 0 <= value < 1 << bits:
                raise HypervisorError(
                    op, errno.EINVAL, f"{field} {value:#x} does not fit uint{bits}_t"
                )
        for i, seg in enumerate(segments):
            if not (0 <= seg.dest < 1 << 64 and 0 <= seg.memsz < 1 << 64):
                raise HypervisorError(
                    op, errno.EINVAL, f"segment {i}: dest or memsz outside 64 bits"
                )
        array = ffi.new("xen_kexec_segment_t[]", max(1, len(segments)))
        pages: list[tuple[Any, int, Any]] = []
        # One lock hold for the whole load: the pages belong to this handle.
        with self._lock:
            self._handle(op)
            try:
                # libxenctrl bounces only the segment array; each segment's
                # data must already be in hypercall-safe pages (§2.7).
                for i, seg in enumerate(segments):
                    if seg.buf is None:
                        array[i].buf.h = ffi.NULL
                    else:
                        nr = max(1, -(-len(seg.buf) // PAGE_SIZE))
                        ptr, shadow = self._alloc_pages(op, nr)
                        pages.append((ptr, nr, shadow))
                        ffi.memmove(ptr, seg.buf, len(seg.buf))
                        array[i].buf.h = ptr
                    array[i].buf_size = seg.bufsz
                    array[i].dest_maddr = seg.dest
                    array[i].dest_size = seg.memsz
                self._int_call(
                    op, self._ctrl.xc_kexec_load, type, arch, entry, len(segments), array
                )
            finally:
                for ptr, nr, shadow in pages:
                    self._free_pages(ptr, nr, shadow)

    def _alloc_pages(self, op: str, nr: int) -> tuple[Any, Any]:
        """``nr`` hypercall-safe pages; caller holds the lock."""
        if self._xcall is not None and self._xcall != ffi.NULL:
            ptr = self._ctrl.xencall_alloc_buffer_pages(self._xcall, nr)
            shadow = None
        else:
            # Before Xen 4.12: the xc_hypercall_buffer_t route; ubuf = -1
            # marks a buffer that is not a bounce buffer (xenctrl.h).
            shadow = ffi.new("xc_hypercall_buffer_t *")
            shadow.ubuf = ffi.cast("void *", -1)
            ptr = self._ctrl.xc__hypercall_buffer_alloc_pages(self._xch, shadow, nr)
        if ptr == ffi.NULL:
            err = ffi.errno or errno.ENOMEM
            logged = self._log.take()
            raise HypervisorError(f"{op}: allocate {nr} hypercall pages", err, logged)
        return ptr, shadow

    def _free_pages(self, ptr: Any, nr: int, shadow: Any) -> None:
        if shadow is None:
            self._ctrl.xencall_free_buffer_pages(self._xcall, ptr, nr)
        else:
            self._ctrl.xc__hypercall_buffer_free_pages(self._xch, shadow, nr)

    def kexec_unload(self, type: int) -> None:
        self._int_call("xc_kexec_unload", self._ctrl.xc_kexec_unload, type)

    def kexec_status(self, type: int) -> int:
        # Reports load/unload parity, not "loaded" (§4.1): for display only.
        if not xc.has_symbol(self._ctrl, "xc_kexec_status"):
            raise HypervisorError(
                "xc_kexec_status", errno.ENOSYS, "kexec status needs Xen 4.9 or later"
            )
        return self._int_call("xc_kexec_status", self._ctrl.xc_kexec_status, type)

    # xc_kexec_exec is declared in the binding but deliberately has no method.

    def close(self) -> None:
        with self._lock:
            xch, self._xch = self._xch, None
            if xch is None:
                return
            rc = self._ctrl.xc_interface_close(xch)
            err = ffi.errno
            logged = self._log.take()
            # The logger must outlive the handle that logs into it.
            self._log.close()
        if rc != 0:
            _warn("xc_interface_close failed: errno %d %s", err, logged)
