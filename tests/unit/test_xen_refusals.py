"""The real XenHypervisor adapter against a fake libxenctrl (no Xen needed).

tests/unit/data/fake_xenctrl.c is compiled here into libfakexenctrl.so, which
exports every function the binding declares and behaves like the host named
by $FAKE_XEN_MODE.  The adapter and the CLI load it through the binding's own
override ($XENKDUMP_LIBXENCTRL or ``XenHypervisor.open(library=...)``), so
everything above the C library is the production code path: the refusals
must be HypervisorUnavailable with one line naming the cause, and a load
must hand libxenctrl exactly the segment bytes (docs/xen-kexec-contract.md §1, §2.7).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import xenkdump_xenctrl as xc
from xenkdump.errors import HypervisorUnavailable
from xenkdump.hv.port import (
    EM_X86_64,
    KEXEC_TYPE_CRASH,
    PAGE_SIZE,
    AddressRange,
    E820Entry,
    Segment,
)
from xenkdump.hv.xen import ENV_VMCOREINFO, XenHypervisor

SHIM_SOURCE = Path(__file__).parent / "data" / "fake_xenctrl.c"

# What fake_xenctrl.c reports in "ok" mode.
CRASH = AddressRange(start=0x8000_0000, size=256 << 20)
E820 = [
    E820Entry(0x0, 0x9FC00, 1),
    E820Entry(0xF0000, 0x10000, 2),
    E820Entry(0x100000, 0xBFF0_0000, 1),
]


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """libfakexenctrl.so, built from fake_xenctrl.c against the real libxentoollog."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("needs gcc to build the fake libxenctrl (Debian: gcc)")
    out = tmp_path_factory.mktemp("fakexen") / "libfakexenctrl.so"
    cmd = [gcc, "-shared", "-fPIC", "-Wall", "-Wextra", "-Wl,--no-undefined"]
    cmd += ["-o", str(out), str(SHIM_SOURCE), "-l:libxentoollog.so.1"]
    built = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if built.returncode != 0 and "libxentoollog" in built.stderr:
        pytest.skip("needs libxentoollog.so.1 (Debian: libxentoollog1) to link the fake")
    assert built.returncode == 0, built.stderr
    return out


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file the fake appends one line per call to."""
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_XEN_RECORD", str(path))
    return path


def calls(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def fields(line: str) -> dict[str, str]:
    """`seg 0 buf=ptr size=3` -> {"buf": "ptr", "size": "3"}."""
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def test_shim_exports_every_declared_function(shim: Path) -> None:
    # Otherwise a binding change would leave the adapter failing on the fake
    # for a reason these tests do not mean to check.
    lib = xc.open_library(str(shim))
    missing = [n for n in xc.declared_functions("xenctrl") if not xc.has_symbol(lib.ctrl, n)]
    assert missing == []


# -- refusals -----------------------------------------------------------------

REFUSALS = {
    # mode: (errno name in the message, what it must say)
    "old": (None, ["Xen 4.3 is too old", "needs Xen 4.4+"]),
    "pvh": ("ENOSYS", ["dom0 must be PV", "CONFIG_KEXEC"]),
    "eacces": ("EACCES", ["permission denied on /dev/xen/privcmd: run as root"]),
}


@pytest.mark.parametrize("mode", sorted(REFUSALS))
def test_refusal_is_one_line_naming_the_cause(
    mode: str, shim: Path, record: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through the environment override, as the daemon and CLI are pointed.
    monkeypatch.setenv(xc.ENV_LIBRARY, str(shim))
    monkeypatch.setenv("FAKE_XEN_MODE", mode)
    with pytest.raises(HypervisorUnavailable) as info:
        XenHypervisor.open()
    text = str(info.value)
    errname, phrases = REFUSALS[mode]
    assert "\n" not in text
    for phrase in phrases:
        assert phrase in text
    if errname is None:
        assert info.value.errno == 0
    else:
        assert f"{errname} (" in text
    if mode == "eacces":
        # What libxenctrl logged reaches the message, through the real
        # libxentoollog stdio logger and the adapter's memory stream.
        assert "[libxenctrl: fake-xenctrl: error: cannot open /dev/xen/privcmd" in text
        assert calls(record) == []
    else:
        # A handle opened before the refusal is closed again.
        assert calls(record) == ["open", "close"]


def test_refusal_via_library_argument(shim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(xc.ENV_LIBRARY, raising=False)
    monkeypatch.setenv("FAKE_XEN_MODE", "old")
    with pytest.raises(HypervisorUnavailable, match=r"^xc_version failed: Xen 4\.3 is too old"):
        XenHypervisor.open(library=str(shim))


# -- a usable host --------------------------------------------------------------


@pytest.mark.parametrize("xcall", ["1", "0"], ids=["xencall-pages", "hypercall-buffer"])
def test_load_delivers_segments_and_unload(
    xcall: str, shim: Path, record: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_XEN_MODE", "ok")
    # "0": no xencall handle, as before Xen 4.12 (§2.7 fallback).
    monkeypatch.setenv("FAKE_XEN_XCALL", xcall)
    data = bytes(i * 7 % 251 for i in range(PAGE_SIZE + 904))  # spans two pages
    small = b"purgatory\x00\xff"
    segments = [
        Segment(data, CRASH.start + 0x100000, 0x200000),
        Segment(None, CRASH.start + 0x400000, 0x1000),
        Segment(small, CRASH.start, PAGE_SIZE),
    ]
    entry = CRASH.start + 0x123
    with XenHypervisor.open(library=str(shim)) as hv:
        assert hv.xen_version() == (4, 17)
        assert hv.crash_range() == CRASH
        assert hv.machine_memory_map() == E820
        assert hv.max_cpus() == 2
        assert hv.physinfo().nr_cpus == 2
        assert hv.kexec_status(KEXEC_TYPE_CRASH) == 0
        hv.kexec_load(KEXEC_TYPE_CRASH, EM_X86_64, entry, segments)
        assert hv.kexec_status(KEXEC_TYPE_CRASH) == 1
        hv.kexec_unload(KEXEC_TYPE_CRASH)
        assert hv.kexec_status(KEXEC_TYPE_CRASH) == 0
    lines = calls(record)
    assert lines[0] == "open" and lines[-1] == "close"
    how = "xencall" if xcall == "1" else "hcbuf"
    allocs = [ln for ln in lines if ln.startswith("alloc ")]
    frees = [ln for ln in lines if ln.startswith("free ")]
    # One page run per non-NULL segment, each freed with its own size.
    assert allocs == [f"alloc {how} nr=2", f"alloc {how} nr=1"]
    assert frees == [f"free {how} nr=2 match=1", f"free {how} nr=1 match=1"]
    load = [ln for ln in lines if ln.startswith("load ")]
    assert load == [f"load type=1 arch=62 entry={entry:#x} nr=3"]
    segs = [fields(ln) for ln in lines if ln.startswith("seg ")]
    assert len(segs) == 3
    for seg, got in zip(segments, segs, strict=True):
        assert int(got["dest"], 16) == seg.dest
        assert int(got["mem"], 16) == seg.memsz
        assert int(got["size"]) == seg.bufsz
        if seg.buf is None:
            assert (got["buf"], got["data"]) == ("NULL", "")
        else:
            # In hypercall-safe pages from the allocator, not Python memory.
            assert (got["buf"], got["pooled"]) == ("ptr", "1")
            assert bytes.fromhex(got["data"]) == seg.buf
    assert lines.index(load[0]) < lines.index(frees[0])
    assert "unload type=1" in lines


# -- the CLI ------------------------------------------------------------------


def ctl(shim: Path, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("xenkdumpctl")
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "xenkdump.cli.ctl"]
    env = dict(os.environ, FAKE_XEN_MODE=mode, **{xc.ENV_LIBRARY: str(shim)})
    env.pop("FAKE_XEN_RECORD", None)
    return subprocess.run(
        [*argv, "--hypervisor", "xen", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_cli_hv_info_json_shows_the_fake_host(shim: Path) -> None:
    done = ctl(shim, "ok", "hv", "info", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["hypervisor"] == "xen"
    assert info["xen_version"] == "4.17"
    assert info["xen_extraversion"] == ".99-fake"
    assert info["crash_range"] == {"start": CRASH.start, "size": CRASH.size}
    assert [n["cpu"] for n in info["cpus"]["notes"]] == [0, 1]
    assert [(e["addr"], e["size"], e["type"]) for e in info["memory_map"]] == [
        (e.addr, e.size, e.type) for e in E820
    ]
    assert info["kexec_status_parity"] == {"crash": 0, "default": 0}


@pytest.mark.parametrize(
    ("mode", "phrase"),
    [
        ("pvh", "dom0 must be PV"),
        ("old", "needs Xen 4.4+"),
        ("eacces", "run as root"),
    ],
)
def test_cli_refusal_is_one_line_exit_1(shim: Path, mode: str, phrase: str) -> None:
    done = ctl(shim, mode, "hv", "info")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("xenkdumpctl: ")
    assert phrase in lines[0]


# -- MemoryDenyWriteExecute= (the unit's hardening) ---------------------------

# Runs the CLI in a process that may never map memory writable and executable, as
# systemd's MemoryDenyWriteExecute=yes enforces (here with the kernel's own
# PR_SET_MDWE, Linux 6.3+): first proves the refusal is in force, then runs the command.
_UNDER_MDWE = """
import ctypes, errno, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(f"mdwe-unsupported {errno.errorcode[ctypes.get_errno()]}")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    sys.exit("mdwe-not-enforced")
from xenkdump.cli.ctl import main
sys.exit(main(sys.argv[1:]))
"""


def test_real_adapter_runs_without_writable_code(
    shim: Path, debian_kernel: Path, tmp_path: Path
) -> None:
    # The shim's dom0 keeps its VMCOREINFO note in the shim's RAM (this machine's own
    # /sys/kernel/vmcoreinfo describes another memory map).
    note = tmp_path / "vmcoreinfo"
    note.write_text("1f3dc000 1024\n")
    env = dict(
        os.environ,
        FAKE_XEN_MODE="ok",
        **{xc.ENV_LIBRARY: str(shim), ENV_VMCOREINFO: str(note)},
    )
    env.pop("FAKE_XEN_RECORD", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _UNDER_MDWE, "--hypervisor", "xen", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=120,
        )

    info = run("hv", "info", "--json")
    if info.stderr.startswith("mdwe-unsupported"):
        pytest.skip(f"kernel without PR_SET_MDWE (Linux < 6.3): {info.stderr.strip()}")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["xen_version"] == "4.17"
    state = tmp_path / "state"
    load = run("load", "--kernel", str(debian_kernel), "--no-daemon", "--state-dir", str(state))
    assert load.returncode == 0, load.stderr
    assert "Traceback" not in load.stderr
