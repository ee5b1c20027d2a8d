"""The libxenctrl binding and XenHypervisor on this machine (libxenctrl, no Xen).

Tests marked ``realxen`` need a PV dom0 (/dev/xen/privcmd) and run inside the
real-Xen lab; elsewhere they are skipped with that reason.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import xenkdump_xenctrl as xc
from importcheck import run_and_list, under
from xenkdump.errors import HypervisorError, HypervisorUnavailable
from xenkdump.hv.port import (
    EM_X86_64,
    KEXEC_TYPE_CRASH,
    PAGE_SIZE,
    E820Entry,
    Hypervisor,
    Segment,
)
from xenkdump.hv.xen import XenHypervisor

REPO = Path(__file__).resolve().parents[2]
PRIVCMD = Path("/dev/xen/privcmd")

# What the binding must declare (docs/xen-kexec-contract.md §2.6).
REQUIRED = {
    "xc_interface_open",
    "xc_interface_close",
    "xc_version",
    "xc_kexec_get_range",
    "xc_kexec_load",
    "xc_kexec_unload",
    "xc_kexec_status",
    "xc_kexec_exec",
    "xc_get_machine_memory_map",
    "xc_physinfo",
    "xc_get_max_cpus",
    "xc_interface_xcall_handle",
    "xencall_alloc_buffer_pages",
    "xencall_free_buffer_pages",
    "xc__hypercall_buffer_alloc_pages",
    "xc__hypercall_buffer_free_pages",
    "xtl_createlogger_stdiostream",
    "xtl_logger_destroy",
}

no_xen = pytest.mark.skipif(
    PRIVCMD.exists(), reason="this is a Xen dom0: the no-Xen path cannot be seen"
)
needs_dom0 = pytest.mark.skipif(
    not PRIVCMD.exists(), reason="needs a PV dom0 with /dev/xen/privcmd (real-Xen lab)"
)


# -- the binding ------------------------------------------------------------


def test_library_loads_by_soname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(xc.ENV_LIBRARY, raising=False)
    lib = xc.open_library()
    assert lib.path in xc.soname_candidates()
    assert lib.path.startswith("libxenctrl.so.4.")


def test_every_declared_function_resolves() -> None:
    lib = xc.open_library()
    names = xc.declared_functions("xenctrl")
    assert set(names) >= REQUIRED
    for name in names:
        assert xc.has_symbol(lib.ctrl, name), name
        getattr(lib.ctrl, name)
    libc_names = xc.declared_functions("c")
    assert "open_memstream" in libc_names
    for name in libc_names:
        getattr(lib.c, name)


def test_the_generated_type_table_is_the_declarations() -> None:
    """_ffi.py (cffi's out-of-line ABI module) is what decl/*.h give today."""
    from xenkdump_xenctrl import generate  # noqa: PLC0415

    assert generate.generated() == generate.DEFAULT_PATH.read_text(encoding="utf-8"), (
        "bindings/xenkdump_xenctrl/_ffi.py is stale: run "
        "PYTHONPATH=bindings python3 -m xenkdump_xenctrl.generate"
    )


def test_loading_the_binding_parses_no_c() -> None:
    """No pycparser at run time (its parse is seconds per command under emulation)."""
    _, out = run_and_list("import xenkdump_xenctrl")
    assert "xenkdump_xenctrl._ffi" in out
    assert under(out, ("pycparser", "cffi", "ctypes")) == []


def test_has_symbol_reports_missing() -> None:
    lib = xc.open_library()
    assert not xc.has_symbol(lib.ctrl, "xc_no_such_function")


def test_the_running_xens_soname_is_tried_first(tmp_path: Path) -> None:
    (tmp_path / "version").mkdir()
    (tmp_path / "version" / "major").write_text("4\n")
    (tmp_path / "version" / "minor").write_text("17\n")
    names = xc.soname_candidates(str(tmp_path))
    assert names[0] == "libxenctrl.so.4.17" and names[1] == "libxenctrl.so.4.40"
    assert sorted(names) == sorted(xc.soname_candidates(str(tmp_path / "absent")))
    (tmp_path / "version" / "minor").write_text("3\n")  # older than any we drive
    assert xc.soname_candidates(str(tmp_path))[0] == "libxenctrl.so.4.40"


def test_soname_candidates_newest_first() -> None:
    names = xc.soname_candidates(str(Path("/nonexistent")))
    assert names[0] == "libxenctrl.so.4.40"
    assert names[-1] == "libxenctrl.so.4.17"
    assert len(names) == 24


def test_override_argument_bad_path_is_one_line() -> None:
    with pytest.raises(xc.LibraryLoadError) as info:
        xc.open_library("/nonexistent/libxenctrl.so.9")
    text = str(info.value)
    assert "\n" not in text
    assert "'/nonexistent/libxenctrl.so.9'" in text
    assert "cannot open shared object file" in text


def test_override_env_bad_and_good(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(xc.ENV_LIBRARY, "/nonexistent/x.so")
    with pytest.raises(xc.LibraryLoadError, match=r"\$XENKDUMP_LIBXENCTRL"):
        xc.open_library()
    # Whichever Xen release's libxenctrl is installed (4.17 on Debian 12, 4.20 on 13).
    sonames = glob.glob("/usr/lib/x86_64-linux-gnu/libxenctrl.so.4.*")
    [real] = [p for p in sonames if re.fullmatch(r".*/libxenctrl\.so\.4\.\d+", p)][-1:]
    monkeypatch.setenv(xc.ENV_LIBRARY, real)
    assert xc.open_library().path == real
    # The argument wins over the environment.
    soname = real.rsplit("/", 1)[1]
    assert xc.open_library(soname).path == soname


def test_e820_array_is_packed() -> None:
    entries = xc.ffi.new("struct e820entry[]", 2)
    entries[1].addr = 0x100000
    raw = bytes(xc.ffi.buffer(entries))
    assert len(raw) == 40
    assert raw[20:28] == (0x100000).to_bytes(8, "little")


# -- XenHypervisor without Xen ----------------------------------------------


def test_xen_hypervisor_satisfies_port() -> None:
    for name in ("xen_version", "crash_range", "kexec_load", "kexec_status", "close", "__enter__"):
        assert callable(getattr(XenHypervisor, name))
    assert XenHypervisor.name == "xen"
    assert not hasattr(XenHypervisor, "kexec_exec")


@no_xen
def test_open_without_xen_names_privcmd() -> None:
    with pytest.raises(HypervisorUnavailable) as info:
        XenHypervisor.open()
    e = info.value
    assert e.errno == errno.ENOENT
    assert e.op == "xc_interface_open"
    text = str(e)
    assert "\n" not in text
    assert "/dev/xen/privcmd" in text and "not a Xen dom0" in text
    # libxenctrl's own words reached the exception.
    assert "Could not obtain handle on privileged command interface" in e.message


@no_xen
def test_captured_log_does_not_accumulate() -> None:
    for _ in range(3):
        with pytest.raises(HypervisorUnavailable) as info:
            XenHypervisor.open()
        assert info.value.message.count("Could not obtain handle") == 1


def test_open_with_bad_library_is_unavailable() -> None:
    with pytest.raises(HypervisorUnavailable) as info:
        XenHypervisor.open("/nonexistent/libxenctrl.so.4.99")
    assert "'/nonexistent/libxenctrl.so.4.99'" in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 1


@no_xen
@pytest.mark.parametrize("python", ["/usr/bin/python3", sys.executable])
def test_open_without_xen_writes_nothing_to_stderr(python: str) -> None:
    script = (
        "from xenkdump.hv.xen import XenHypervisor\n"
        "from xenkdump.errors import HypervisorUnavailable\n"
        "try:\n"
        "    XenHypervisor.open()\n"
        "except HypervisorUnavailable as e:\n"
        "    print(e)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'daemon' / 'src'}:{REPO / 'bindings'}")
    env.pop(xc.ENV_LIBRARY, None)
    proc = subprocess.run(
        [python, "-c", script], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "xencall: error: Could not obtain handle" in proc.stdout
    assert "/dev/xen/privcmd" in proc.stdout


# -- on a real PV dom0 (the lab) --------------------------------------------


@pytest.mark.realxen
@needs_dom0
def test_real_queries() -> None:
    with XenHypervisor.open() as hv:
        assert isinstance(hv, Hypervisor)
        assert hv.xen_version() >= (4, 4)
        hv.xen_extraversion()
        hv.xen_command_line()
        n = hv.max_cpus()
        info = hv.physinfo()
        assert n == info.max_cpu_id + 1
        assert 1 <= info.nr_cpus <= n
        xen = hv.xen_range()
        assert xen.size > 0
        assert hv.vmcoreinfo_range().size == PAGE_SIZE
        memmap = hv.machine_memory_map()
        assert memmap and all(isinstance(e, E820Entry) for e in memmap)
        crash = hv.crash_range()
        if crash.size:
            assert any(e.addr <= crash.start and crash.end <= e.end for e in memmap)
            hv.cpu_note_range(0)
            with pytest.raises(HypervisorError) as info_err:
                hv.cpu_note_range(n)
            assert info_err.value.errno == errno.ERANGE
        assert hv.kexec_status(KEXEC_TYPE_CRASH) in (0, 1)
    with pytest.raises(HypervisorError) as closed:
        hv.crash_range()
    assert closed.value.errno == errno.EBADF


@pytest.mark.realxen
@needs_dom0
@pytest.mark.skipif(
    PRIVCMD.exists() and os.environ.get("XENKDUMP_TEST_MAY_UNLOAD") != "1",
    reason="replaces the armed crash image: set XENKDUMP_TEST_MAY_UNLOAD=1 (lab only)",
)
def test_real_load_and_unload_with_data() -> None:
    with XenHypervisor.open() as hv:
        crash = hv.crash_range()
        assert crash.size >= 16 * PAGE_SIZE, "Xen booted without crashkernel="
        # A page of `hlt; jmp .-1` at the start of the crash area: data passes
        # through hypercall pages; a plain buffer could EFAULT (§2.7).
        code = bytes([0xF4, 0xEB, 0xFD]) + bytes(PAGE_SIZE + 100)
        seg = Segment(buf=code, dest=crash.start, memsz=2 * PAGE_SIZE)
        hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, crash.start, [seg])
        hv.kexec_unload(KEXEC_TYPE_CRASH)
        with pytest.raises(HypervisorError) as info:
            hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, crash.start + crash.size + PAGE_SIZE, [seg])
        assert info.value.errno == errno.EADDRNOTAVAIL
        hv.kexec_unload(KEXEC_TYPE_CRASH)
