"""cffi ABI-mode binding to libxenctrl: the kexec calls and their helpers.

ABI mode (``ffi.dlopen``) needs neither a compiler nor Xen headers at install
time.  The declarations live in ``decl/*.h`` (package data);
tests/unit/test_struct_layout.py checks every declared struct against the real
headers from Debian's libxen-dev.  cffi's "out-of-line" ABI mode keeps parsing
them (pycparser, tens of milliseconds, seconds under emulation) out of every
run: ``_ffi.py`` is the type table cffi generates from them
(``python3 -m xenkdump_xenctrl.generate`` rewrites it; tests/unit/test_binding.py
fails when it is stale), and loading it costs about a millisecond.

This module only loads and describes the library.  Calling it, checking
errors and owning handles is ``xenkdump.hv.xen.XenHypervisor``'s job.
``xenkdumpctl hv info`` imports it, so it stays light: no typing, dataclasses or
ctypes (docs/architecture.md §6).
"""

from __future__ import annotations

import os
import re

from xenkdump_xenctrl._ffi import ffi as _generated

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from typing import Any

    import cffi

__all__ = [
    "DECLS",
    "ENV_LIBRARY",
    "PHYSINFO_FIELDS",
    "PHYSINFO_SIZE",
    "SYS_HYPERVISOR",
    "Library",
    "LibraryLoadError",
    "build_ffi",
    "declared_functions",
    "ffi",
    "has_symbol",
    "open_library",
    "soname_candidates",
]

# Environment override for the library path or soname.
ENV_LIBRARY = "XENKDUMP_LIBXENCTRL"

# libxenctrl's soname carries the Xen release (no ABI stability across
# releases, docs/xen-kexec-contract.md §2.6); Debian ships 4.17 and later.
_NEWEST_MINOR = 40
_OLDEST_MINOR = 17


class _Decl:
    """One file of decl/ and how it is declared."""

    __slots__ = ("file", "library", "packed")

    def __init__(self, file: str, library: str, *, packed: bool = False) -> None:
        self.file = file
        # Which handle resolves its functions: "xenctrl" (libxenctrl and, through
        # dlsym's search of its dependency tree, the very libxentoollog and
        # libxencall it uses) or "c" (the C library).
        self.library = library
        self.packed = packed


# Order matters: later files use types declared by earlier ones.
DECLS: tuple[_Decl, ...] = (
    _Decl("xentoollog.h", "xenctrl"),
    _Decl("e820.h", "xenctrl", packed=True),
    _Decl("xenctrl.h", "xenctrl"),
    _Decl("xencall.h", "xenctrl"),
    _Decl("libc.h", "c"),
)

# xc_physinfo_t (struct xen_sysctl_physinfo): only its leading u32 fields
# are the same in every Xen release; later fields moved in 4.10 and 4.17
# (xen-kexec-contract.md §2.9).  We pass an opaque zeroed buffer of PHYSINFO_SIZE
# bytes (the 4.17-4.23 struct is 112) and read only these offsets.
PHYSINFO_FIELDS: tuple[tuple[str, int], ...] = (
    ("threads_per_core", 0),
    ("cores_per_socket", 4),
    ("nr_cpus", 8),
    ("max_cpu_id", 12),
    ("nr_nodes", 16),
    ("max_node_id", 20),
    ("cpu_khz", 24),
)
PHYSINFO_SIZE = 256

# Xen's sysfs directory in a dom0 (the running hypervisor's version).
SYS_HYPERVISOR = "/sys/hypervisor"


class LibraryLoadError(OSError):
    """libxenctrl could not be loaded; the message lists what was tried."""


def _decl_text(name: str) -> str:
    from importlib import resources  # noqa: PLC0415 (the declarations are read to check them)

    return resources.files(__name__).joinpath("decl", name).read_text(encoding="utf-8")


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)


# A prototype starts at column 0 with its return type; typedefs, struct
# bodies and #defines do not declare functions.  Compiled when first used (re caches
# it), not at import: a command opening the library never needs it.
_PROTO = r"^(?!typedef\b|struct\b|union\b|enum\b|#|\})[A-Za-z_][\w\s\*]*?\b(\w+)\s*\("


def declared_functions(library: str | None = None) -> tuple[str, ...]:
    """Names of the functions declared in decl/*.h (optionally for one library)."""
    names: list[str] = []
    for decl in DECLS:
        if library is None or decl.library == library:
            names += re.findall(_PROTO, _strip_comments(_decl_text(decl.file)), re.M)
    return tuple(names)


def build_ffi() -> cffi.FFI:
    """The declarations parsed by cffi (what ``_ffi.py`` is generated from)."""
    import cffi  # noqa: PLC0415 (pycparser: only to generate and check _ffi.py)

    new = cffi.FFI()
    for decl in DECLS:
        new.cdef(_strip_comments(_decl_text(decl.file)), packed=decl.packed)
    return new


ffi: Any = _generated

# Layout self-checks (xen-kexec-contract.md §2.3); the full check against the C
# headers is tests/unit/test_struct_layout.py.
assert ffi.sizeof("xen_kexec_segment_t") == 32
assert ffi.offsetof("xen_kexec_segment_t", "dest_size") == 24
assert ffi.sizeof("xc_hypercall_buffer_t") == 40
assert ffi.sizeof("struct e820entry") == 20


class Library:
    """A loaded libxenctrl: ``ctrl`` resolves the Xen functions, ``c`` libc's."""

    __slots__ = ("c", "ctrl", "path")

    def __init__(self, ctrl: Any, c: Any, path: str) -> None:
        self.ctrl = ctrl
        self.c = c
        self.path = path


def soname_candidates(sys_hypervisor: str = SYS_HYPERVISOR) -> list[str]:
    """Sonames tried when no override is given, newest Xen release first.

    On a dom0 the running Xen's release (``sys_hypervisor``/version/major and minor)
    comes first: each soname that fails costs the dynamic linker a search of the
    library directories (noticeable under emulation).
    """
    names = [f"libxenctrl.so.4.{n}" for n in range(_NEWEST_MINOR, _OLDEST_MINOR - 1, -1)]
    try:
        with (
            open(f"{sys_hypervisor}/version/major") as major,
            open(f"{sys_hypervisor}/version/minor") as minor,
        ):
            running = f"libxenctrl.so.{major.read().strip()}.{minor.read().strip()}"
    except OSError:
        return names
    return [running, *(n for n in names if n != running)] if running in names else names


def _dl_reason(error: OSError) -> str:
    """dlerror()'s text out of cffi's longer message, on one line."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    text = text.split(".  Additionally")[0]
    return re.sub(r"^cannot load library '[^']*': ", "", text)


def open_library(path: str | None = None) -> Library:
    """dlopen libxenctrl.

    ``path`` (else $XENKDUMP_LIBXENCTRL) is the only thing tried when given;
    otherwise the sonames from ``soname_candidates()``, then
    ``ctypes.util.find_library("xenctrl")``.  Raises LibraryLoadError with a
    one-line message naming what was tried.
    """
    override = path or os.environ.get(ENV_LIBRARY) or None
    if override is not None:
        try:
            ctrl = ffi.dlopen(override)
        except OSError as e:
            source = "argument" if path else f"${ENV_LIBRARY}"
            raise LibraryLoadError(
                f"cannot load libxenctrl from {override!r} (set by {source}): {_dl_reason(e)}"
            ) from None
        return Library(ctrl=ctrl, c=ffi.dlopen(None), path=override)
    tried = soname_candidates()
    for name in tried:
        # The out-of-line ffi's dlopen is dlopen(3) only: a miss costs one search of the
        # library directories, never cffi's in-line fallback to ctypes.util.find_library
        # (ldconfig and gcc per miss: seconds each on a dom0 under emulation).
        try:
            ctrl = ffi.dlopen(name)
        except OSError:
            continue
        return Library(ctrl=ctrl, c=ffi.dlopen(None), path=name)
    import ctypes.util  # noqa: PLC0415 (runs ldconfig: only when no soname loads)

    found = ctypes.util.find_library("xenctrl")
    if found is not None:
        try:
            return Library(ctrl=ffi.dlopen(found), c=ffi.dlopen(None), path=found)
        except OSError:
            pass
    raise LibraryLoadError(
        f"libxenctrl not found: tried {tried[0]} down to {tried[-1]} and "
        f"find_library('xenctrl') (found {found or 'nothing'}); install Xen's libxenctrl "
        f"(Debian: libxenmisc4.NN) or set {ENV_LIBRARY}"
    )


def has_symbol(lib: Any, name: str) -> bool:
    """True if ``name`` resolves in ``lib`` (e.g. xc_kexec_status needs Xen 4.9)."""
    try:
        getattr(lib, name)
    except AttributeError:
        return False
    return True
