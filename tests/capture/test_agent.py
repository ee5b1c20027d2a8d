"""The capture agent (a POSIX sh script) outside QEMU: busybox sh and dash, a synthetic
ELF core, a fake makedumpfile/ssh/df, real files on a real filesystem as the target.

What must hold: the fallback chain (-X -d LEVEL, -X -d 1, -X -d 0, raw copy), the
free-space refusal of the raw copy, the `incomplete` marker and the atomic rename,
retention that never deletes the dump just written, failure_action / final_action,
metadata.json with every step, and SSH with a pinned host key and `-F` piped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from xenkdump.capture import AGENT, xensyms
from xenkdump.hv.port import AddressRange
from xenkdump.selftest import plan
from xenkdump.selftest.stages import Level, Stage, Tracker

sys.path.insert(0, str(Path(__file__).parent))
from fakes import busybox_bin, make_fake_bin, synthetic_core, write_exec, xen_notes

XEN = AddressRange(0x3FE00000, 8 * 4096)
CONSOLE = b"(XEN) Xen version 4.17.7 (Debian)\n(XEN) Panic on CPU 0:\n(XEN) FATAL TRAP\n"
KMSG = "xenkdump-kmsg-0123456789abcdef"

SHELLS = [
    pytest.param("busybox", id="busybox-sh"),
    pytest.param("dash", id="dash"),
]


@dataclass
class Agent:
    tmp: Path
    shell: str
    env: dict[str, str]
    target: Path
    core: bytes

    def run(self, **conf: str) -> subprocess.CompletedProcess[str]:
        lines = [f"{k}='{v}'" for k, v in conf.items()]
        (self.tmp / "capture.conf").write_text("\n".join(lines) + "\n")
        argv = [shutil.which("busybox") or "busybox", "sh"] if self.shell == "busybox" else ["dash"]
        return subprocess.run(
            [*argv, str(AGENT)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def dumps(self) -> list[Path]:
        return sorted(p for p in self.target.iterdir() if p.name.startswith("h1-"))

    def calls(self) -> str:
        log = self.tmp / "calls.log"
        return log.read_text() if log.exists() else ""

    def actions(self) -> list[str]:
        log = self.tmp / "actions.log"
        return log.read_text().split() if log.exists() else []


@pytest.fixture(params=SHELLS)
def agent(request: pytest.FixtureRequest, tmp_path: Path) -> Agent:
    shell = request.param
    if shutil.which(shell) is None:
        pytest.fail(f"{shell} is missing: scripts/setup-test-env.sh installs it")
    fake = make_fake_bin(tmp_path / "bin", shutil.which("df") or "/bin/df")
    path = [str(fake)]
    if shell == "busybox":  # the crash kernel's userland: busybox applets only
        path.append(str(busybox_bin(tmp_path / "bb", shutil.which("busybox") or "busybox")))
    path.append(os.environ.get("PATH", "/usr/bin:/bin"))
    core = synthetic_core(tmp_path / "vmcore", xen=XEN, console=CONSOLE)
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "uptime").write_text("12.34 5.00\n")
    (tmp_path / "known_hosts").write_text("[127.0.0.1]:2222 ssh-ed25519 AAAA\n")
    env = {
        "PATH": os.pathsep.join(path),
        "XK_CONF": str(tmp_path / "capture.conf"),
        "XK_VMCORE": str(tmp_path / "vmcore"),
        "XK_UPTIME": str(tmp_path / "uptime"),
        "XK_SCRATCH": str(tmp_path / "scratch"),
        "XK_ACTION_CMD": str(fake / "act"),
        "XK_DF": str(fake / "df"),  # busybox sh runs its own df applet before PATH's
        "FAKE_LOG": str(tmp_path / "calls.log"),
        "FAKE_ACTIONS": str(tmp_path / "actions.log"),
        "FAKE_KMSG": KMSG,
        # A real crash's command line (self-test mode: tests below write their own).
        "XK_CMDLINE": str(tmp_path / "cmdline"),
        "XK_MEMINFO": str(tmp_path / "meminfo"),
    }
    (tmp_path / "cmdline").write_text("console=ttyS0 irqpoll elfcorehdr=0x1000000\n")
    (tmp_path / "meminfo").write_text("MemTotal:  262144 kB\nMemAvailable:  181234 kB\n")
    return Agent(tmp_path, shell, env, target, core)


def base_conf(agent: Agent, **extra: str) -> dict[str, str]:
    conf = {
        "XK_TARGET_KIND": "local",
        "XK_PATH": str(agent.target),
        "XK_HOST": "h1",
        "XK_XEN_RANGE": f"{XEN.start:#x}+{XEN.size:#x}",
        "XK_XEN_VERSION": "4.17.7",
        "XK_XEN_CMDLINE": 'console=com1 crashkernel=256M "quoted"',
        "XK_DOM0_KERNEL": "6.1.0-57-amd64",
        "XK_KERNEL_SHA256": "ab" * 32,
        "XK_FORMAT": "compressed",
    }
    conf.update(extra)
    return conf


def one_dump(agent: Agent) -> tuple[Path, dict[str, object]]:
    dumps = agent.dumps()
    assert len(dumps) == 1, (dumps, list(agent.target.iterdir()))
    meta = json.loads((dumps[0] / "metadata.json").read_text())
    return dumps[0], meta


def steps(meta: dict[str, object]) -> list[tuple[str, int]]:
    rows = meta["steps"]
    assert isinstance(rows, list)
    return [(s["name"], s["exit_code"]) for s in rows]


def test_saves_dmesg_xen_console_vmcore_and_metadata(agent: Agent) -> None:
    proc = agent.run(**base_conf(agent))
    assert proc.returncode == 0, proc.stderr
    d, meta = one_dump(agent)
    assert d.name.startswith("h1-") and d.name.endswith("Z") and len(d.name) == len("h1-") + 16
    assert sorted(p.name for p in d.iterdir()) == [
        "dmesg.txt",
        "metadata.json",
        "vmcore",
        "xen-console.txt",
    ]
    assert not [p for p in agent.target.iterdir() if p.name.startswith(".incoming")]
    assert KMSG in (d / "dmesg.txt").read_text()
    assert (d / "xen-console.txt").read_text() == CONSOLE.decode()
    assert (d / "vmcore").read_text() == "KDUMP level=31\n"
    assert meta["result"] == "complete" and meta["host"] == "h1"
    assert meta["xen"] == {
        "version": "4.17.7",
        "command_line": 'console=com1 crashkernel=256M "quoted"',
    }
    assert meta["dom0_kernel"] == "6.1.0-57-amd64"
    assert meta["crash_time"] == d.name[len("h1-") :]
    assert meta["xen_console"]["found"] is True  # type: ignore[index]
    assert meta["vmcore"]["how"] == "makedumpfile -X -d 31 -c"  # type: ignore[index]
    assert steps(meta) == [("dmesg", 0), ("xen-console", 0), ("vmcore -d 31", 0)]
    files = meta["files"]
    assert isinstance(files, dict)
    for name in ("vmcore", "dmesg.txt", "xen-console.txt"):
        data = (d / name).read_bytes()
        assert files[name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # makedumpfile: Xen mode, work dir on the target (the incoming dir), no threads
    calls = agent.calls()
    assert "makedumpfile -X -d 31 -c --work-dir " + str(agent.target / ".incoming-") in calls
    assert "--num-threads" not in calls
    assert "incomplete" in calls  # the marker was there while the vmcore was written
    assert agent.actions() == ["reboot"]


def test_records_the_lowest_memavailable_and_the_uptime(agent: Agent) -> None:
    meminfo = agent.tmp / "meminfo"
    meminfo.write_text("MemTotal: 100000 kB\nMemFree: 1 kB\nMemAvailable: 80000 kB\n")
    agent.env.update(XK_MEMINFO=str(meminfo), FAKE_MEMINFO=str(meminfo), XK_MEM_INTERVAL="0.05")
    proc = agent.run(**base_conf(agent))
    assert proc.returncode == 0, proc.stderr
    _d, meta = one_dump(agent)
    # the dip while makedumpfile ran was seen by the sampler, not only the value after it
    assert meta["memory"] == {
        "total_kib": 100000,
        "available_at_start_kib": 80000,
        "min_available_kib": 30000,
        "peak_used_kib": 70000,
    }
    assert meta["uptime"] == {"agent_start": 12.34, "metadata": 12.34}
    assert not (agent.tmp / "scratch" / "mem.watch").exists()  # the sampler was stopped


@pytest.mark.parametrize(
    ("fail", "used", "expected_steps"),
    [
        ("31", "1", ["vmcore -d 31", "vmcore -d 1"]),
        ("31 1", "0", ["vmcore -d 31", "vmcore -d 1", "vmcore -d 0"]),
    ],
)
def test_fallback_chain(agent: Agent, fail: str, used: str, expected_steps: list[str]) -> None:
    agent.env["FAKE_MDF_FAIL"] = fail
    proc = agent.run(**base_conf(agent, XK_COMPRESS="lzo"))
    assert proc.returncode == 0, proc.stderr
    d, meta = one_dump(agent)
    assert (d / "vmcore").read_text() == f"KDUMP level={used}\n"
    got = [(n, rc) for n, rc in steps(meta) if n.startswith("vmcore")]
    assert got == [(n, 0 if n == f"vmcore -d {used}" else 1) for n in expected_steps]
    assert meta["vmcore"]["how"] == f"makedumpfile -X -d {used} -l"  # type: ignore[index]
    assert agent.actions() == ["reboot"]


def test_elf_format_is_makedumpfile_e(agent: Agent) -> None:
    proc = agent.run(**base_conf(agent, XK_FORMAT="elf"))
    assert proc.returncode == 0, proc.stderr
    _d, meta = one_dump(agent)
    assert meta["vmcore"]["how"] == "makedumpfile -X -d 31 -E"  # type: ignore[index]
    assert meta["vmcore"]["format"] == "elf"  # type: ignore[index]
    assert "makedumpfile -X -d 31 -E --work-dir" in agent.calls()


def test_raw_copy_when_every_makedumpfile_fails_and_the_target_has_room(agent: Agent) -> None:
    agent.env["FAKE_MDF_FAIL"] = "31 1 0"
    proc = agent.run(**base_conf(agent))
    assert proc.returncode == 0, proc.stderr
    d, meta = one_dump(agent)
    assert (d / "vmcore").read_bytes() == agent.core
    assert steps(meta)[-1] == ("vmcore raw", 0)
    assert meta["vmcore"]["format"] == "elf"  # type: ignore[index]


def test_raw_copy_refused_without_free_space_then_failure_action(agent: Agent) -> None:
    agent.env["FAKE_MDF_FAIL"] = "31 1 0"
    agent.env["FAKE_FREE_KB"] = "4"  # 4 KiB free, the core is bigger
    proc = agent.run(**base_conf(agent, XK_FAILURE_ACTION="halt", XK_FINAL_ACTION="shell"))
    assert proc.returncode == 1
    assert "raw copy refused" in proc.stderr
    d, meta = one_dump(agent)  # the cheap parts are kept, marked as failed
    assert not (d / "vmcore").exists()
    assert KMSG in (d / "dmesg.txt").read_text()
    assert meta["result"] == "failed" and meta["vmcore"]["saved"] is False  # type: ignore[index]
    assert steps(meta)[-1] == ("vmcore raw", 28)  # ENOSPC
    assert agent.actions() == ["halt"]


def test_unwritable_target_runs_failure_action(agent: Agent) -> None:
    (agent.tmp / "file").write_text("")
    proc = agent.run(**base_conf(agent, XK_PATH=str(agent.tmp / "file" / "sub")))
    assert proc.returncode == 1
    assert "not writable" in proc.stderr
    assert agent.actions() == ["reboot"]


def test_no_vmcore_is_not_a_crash_boot(agent: Agent) -> None:
    agent.env["XK_VMCORE"] = str(agent.tmp / "absent")
    proc = agent.run(**base_conf(agent, XK_FAILURE_ACTION="shell"))
    assert proc.returncode == 1 and "not a crash kernel boot" in proc.stderr
    assert agent.actions() == ["shell"] and agent.dumps() == []


def test_xen_image_scan_reads_a_range_not_on_page_boundaries(agent: Agent) -> None:
    """Xen's image range as Xen reports it need not start or end on a page: the scan
    still reads it (by whole pages: a read per byte of /proc/vmcore took minutes)."""
    unaligned = f"{XEN.start + 1:#x}+{XEN.size - 17:#x}"
    proc = agent.run(**base_conf(agent, XK_XEN_RANGE=unaligned))
    assert proc.returncode == 0, proc.stderr
    d, meta = one_dump(agent)
    assert meta["xen_console"]["found"] is True, meta["xen_console"]  # type: ignore[index]
    assert (d / "xen-console.txt").read_text() == CONSOLE.decode()


def test_xen_console_not_found_is_said_plainly(agent: Agent) -> None:
    proc = agent.run(**base_conf(agent, XK_XEN_RANGE="0x7000000+0x8000"))
    assert proc.returncode == 0, proc.stderr
    d, meta = one_dump(agent)
    console = meta["xen_console"]
    assert console["found"] is False  # type: ignore[index]
    assert "not in the dump's memory map" in console["how"]  # type: ignore[index]
    assert (d / "xen-console.txt").read_text() == ""


def _old_dump(target: Path, stamp: str, size: int) -> Path:
    d = target / f"h1-{stamp}"
    d.mkdir()
    (d / "metadata.json").write_text("{}")
    (d / "vmcore").write_bytes(os.urandom(size))
    return d


def test_retention_keep_count(agent: Agent) -> None:
    old = [_old_dump(agent.target, f"2020010{i}T000000Z", 4096) for i in range(1, 4)]
    other = agent.target / "notes"  # not a dump: never touched
    other.mkdir()
    proc = agent.run(**base_conf(agent, XK_KEEP="2"))
    assert proc.returncode == 0, proc.stderr
    left = sorted(p.name for p in agent.target.iterdir())
    assert old[2].name in left and old[0].name not in left and old[1].name not in left
    assert "notes" in left and len(agent.dumps()) == 2


def test_retention_max_total_never_deletes_the_new_dump(agent: Agent) -> None:
    old = [_old_dump(agent.target, f"2020010{i}T000000Z", 64 * 1024) for i in range(1, 4)]
    proc = agent.run(**base_conf(agent, XK_MAX_TOTAL="1"))  # 1 byte: less than the new dump
    assert proc.returncode == 0, proc.stderr
    assert all(not p.exists() for p in old)
    (new,) = agent.dumps()
    assert (new / "vmcore").exists()


def test_retention_by_size_stops_when_under_the_limit(agent: Agent) -> None:
    old = [_old_dump(agent.target, f"2020010{i}T000000Z", 256 * 1024) for i in range(1, 4)]
    proc = agent.run(**base_conf(agent, XK_MAX_TOTAL=str(700 * 1024)))
    assert proc.returncode == 0, proc.stderr
    assert [p.exists() for p in old] == [False, True, True]


SERVER_REARRANGE = [
    pytest.param("", "", id="rearranged"),
    pytest.param("no-mdf", "the server has no makedumpfile", id="no-mdf"),
    pytest.param("fail", "makedumpfile -R on the server failed (exit 1)", id="fails"),
    # A corrupt stream that keeps -R busy: the server's timeout(1) ends it.
    pytest.param("spin", "makedumpfile -R on the server ran out of its 1 s", id="spins"),
]


@pytest.mark.parametrize(("server", "why"), SERVER_REARRANGE)
def test_ssh_target_pipes_flattened_dump_with_a_pinned_host_key(
    agent: Agent, server: str, why: str
) -> None:
    if server == "no-mdf":  # a server whose commands are busybox's: no makedumpfile
        bb = busybox_bin(agent.tmp / "server-bin", shutil.which("busybox") or "busybox")
        agent.env["FAKE_REMOTE_PATH"] = str(bb)
    elif server:
        agent.env.update(FAKE_REMOTE_R=server, XK_REARRANGE_SECONDS="1")
    conf = base_conf(
        agent,
        XK_TARGET_KIND="ssh",
        XK_SSH_DEST="dumper@127.0.0.1",
        XK_SSH_PORT="2222",
        XK_SSH_KEY=str(agent.tmp / "id"),
        XK_SSH_KNOWN_HOSTS=str(agent.tmp / "known_hosts"),
    )
    proc = agent.run(**conf)
    assert proc.returncode == 0, proc.stderr
    d, meta = one_dump(agent)
    assert KMSG in (d / "dmesg.txt").read_text()
    calls = agent.calls()
    assert "-o StrictHostKeyChecking=yes" in calls
    assert f"UserKnownHostsFile={agent.tmp / 'known_hosts'}" in calls
    assert "makedumpfile -F -X -d 31 -c --work-dir" in calls
    # one shared connection: opened after the reachability check, closed at the end
    ssh_lines = [ln for ln in calls.splitlines() if ln.startswith("ssh ")]
    assert "-o ControlMaster=yes -f -N" in ssh_lines[1], ssh_lines[:2]
    assert all("-o ControlMaster=no" in ln for ln in ssh_lines[2:-1])
    assert "-O exit" in ssh_lines[-1]
    rearrange = [(n, rc) for n, rc in steps(meta) if n == "vmcore -R"]
    assert meta["result"] == "complete"
    if not why:
        assert (d / "vmcore").read_text() == "KDUMP level=31\n"
        assert not (d / "vmcore.flat").exists()
        assert meta["vmcore"]["format"] == "kdump-compressed"  # type: ignore[index]
        assert rearrange == [("vmcore -R", 0)]
    else:
        # The stream stays, whole; metadata.json says why and how to rebuild it.
        assert (d / "vmcore.flat").read_text() == "FLAT:KDUMP level=31\n"
        assert not (d / "vmcore").exists()
        assert meta["vmcore"]["format"] == (  # type: ignore[index]
            f"flattened: {why} (makedumpfile -R vmcore < vmcore.flat)"
        )
        assert f"vmcore.flat kept: {why}" in proc.stderr
        assert [rc != 0 for _, rc in rearrange] == ([] if server == "no-mdf" else [True])
    assert agent.actions() == ["reboot"]


def test_ssh_unreachable_runs_failure_action(agent: Agent) -> None:
    agent.env["FAKE_SSH_DOWN"] = "1"
    conf = base_conf(
        agent,
        XK_TARGET_KIND="ssh",
        XK_SSH_DEST="dumper@127.0.0.1",
        XK_SSH_KNOWN_HOSTS=str(agent.tmp / "known_hosts"),
        XK_FAILURE_ACTION="halt",
    )
    proc = agent.run(**conf)
    assert proc.returncode == 1 and "unreachable" in proc.stderr
    assert agent.actions() == ["halt"]


# Xen's console ring through Xen's symbols (docs/capture.md §3): Xen's image at XEN,
# linked 2 MiB above XEN_VIRT_START; the ring in the heap (here: dom0's load), wrapped.
XPS = XEN.start - 0x200000  # xen_phys_start
RING_AT, RING_SIZE = 0x102000, 4096
SYMS = {"conring": 0x201000, "conring_size": 0x201008, "conringp": 0x201010}
CHECK = {"domain_list": 0x201100, "max_page": 0x201108}


def ring_core(agent: Agent, *, vmcoreinfo_domain_list: int) -> str:
    """A core whose Xen wrote 4096 + 100 characters: the ring's oldest text starts at 100."""
    lines = b"".join(b"(XEN) line %04d of Xen's log\n" % i for i in range(200))
    text = lines[-(RING_SIZE + 100) :]
    ring = bytearray(RING_SIZE)
    for i, ch in enumerate(text):
        ring[i % RING_SIZE] = ch
    ptr = xensyms.DIRECTMAP_VIRT_START + RING_AT
    vmcoreinfo = (
        f"SYMBOL(domain_list)={xensyms.XEN_VIRT_START + vmcoreinfo_domain_list:x}\n"
        f"SYMBOL(max_page)={xensyms.XEN_VIRT_START + CHECK['max_page']:x}\n"
    )
    synthetic_core(
        agent.tmp / "vmcore",
        xen=XEN,
        console=CONSOLE,
        notes=xen_notes(XPS, vmcoreinfo),
        patches={
            XPS + SYMS["conring"]: ptr.to_bytes(8, "little"),
            XPS + SYMS["conring_size"]: RING_SIZE.to_bytes(4, "little"),
            XPS + SYMS["conringp"]: (RING_SIZE + 100).to_bytes(4, "little"),
            RING_AT: bytes(ring),
        },
    )
    return text[-RING_SIZE:].decode()


def ring_conf(agent: Agent) -> dict[str, str]:
    found = xensyms.ConsoleSymbols("/boot/xen-4.17-amd64.gz", {**SYMS, **CHECK})
    return base_conf(agent, **found.agent_values())


def test_xen_console_ring_located_through_xens_symbols(agent: Agent) -> None:
    expected = ring_core(agent, vmcoreinfo_domain_list=CHECK["domain_list"])
    proc = agent.run(**ring_conf(agent))
    assert proc.returncode == 0, proc.stderr
    d, meta = one_dump(agent)
    # the oldest character first, across the wrap
    assert (d / "xen-console.txt").read_text() == expected
    console = meta["xen_console"]
    assert console["found"] is True  # type: ignore[index]
    assert console["how"] == (  # type: ignore[index]
        f"Xen's console ring, {RING_SIZE} bytes at machine address {RING_AT:#x} (characters "
        f"written: {RING_SIZE + 100}), located through conring in the symbol table of "
        "/boot/xen-4.17-amd64.gz and checked against Xen's VMCOREINFO"
    )


def test_xen_console_ring_of_another_xen_binary_is_refused(agent: Agent) -> None:
    ring_core(agent, vmcoreinfo_domain_list=CHECK["domain_list"] + 0x40)  # another build
    proc = agent.run(**ring_conf(agent))
    assert proc.returncode == 0, proc.stderr
    d, meta = one_dump(agent)
    how = meta["xen_console"]["how"]  # type: ignore[index]
    assert how.startswith(
        "Xen's console ring not located: /boot/xen-4.17-amd64.gz is not the Xen that crashed"
    ), how
    # the fallback scan of Xen's image still runs (here it finds the test's text)
    assert (d / "xen-console.txt").read_text() == CONSOLE.decode()


# ---- self-test mode: xenkdump.selftest=<id> on the crash command line ----

SELFTEST_ID = "abcdef012345"
TOKEN = plan.token_for(SELFTEST_ID).decode()


def selftest(agent: Agent) -> Path:
    """The command line of a self-test's staging VM; its scratch disk as a directory."""
    (agent.tmp / "cmdline").write_text(
        f"console=ttyS0 elfcorehdr=131072K xenkdump.selftest={SELFTEST_ID} panic=-1\n"
    )
    disk = agent.tmp / "scratch-disk"
    disk.mkdir()
    agent.env["XK_SELFTEST_DEVICE"] = ""  # no block device to mount: a directory
    agent.env["XK_SELFTEST_PATH"] = str(disk)
    # An earlier dump at the configured target: self-test mode must not touch it.
    old = agent.target / "h1-20200101T000000Z"
    old.mkdir()
    (old / "metadata.json").write_text("{}")
    return disk


def markers(out: str) -> list[list[str]]:
    prefix = f"xenkdump-selftest: {SELFTEST_ID} "
    return [
        line.removeprefix(prefix).split() for line in out.splitlines() if line.startswith(prefix)
    ]


def test_selftest_mode_runs_the_pipeline_on_the_scratch_disk_and_reports_each_stage(
    agent: Agent,
) -> None:
    disk = selftest(agent)
    agent.env["FAKE_KMSG"] = f"xenkdump: dom0 says {TOKEN}"  # dom0's last words hold it
    agent.env["FAKE_MDF_FAIL"] = "31 1 0"  # the synthetic core: makedumpfile cannot filter
    proc = agent.run(**base_conf(agent, XK_KEEP="1", XK_FINAL_ACTION="reboot"))
    assert proc.returncode == 0, proc.stderr
    seen = markers(proc.stdout)
    assert [m[0] for m in seen] == [
        "crash-kernel-up", "capture-started", "token-found", "dump-written",
    ]  # fmt: skip
    assert seen[0][1] == "uptime=12.34"
    assert "in=dmesg" in seen[2] and f"vmcore_bytes={len(agent.core)}" in seen[2]
    values = dict(w.partition("=")[::2] for w in seen[3][1:])
    assert values["bytes"] == str(len(agent.core)) and values["mem_min_avail_kb"] == "181234"
    assert values["mem_total_kb"] == "262144"
    # The tracker on the host reads these lines as the stages of the boot level.
    tracker = Tracker(SELFTEST_ID, Level.BOOT, start=0.0, total_timeout=900.0)
    tracker.reach(Stage.VM_START, 0.0)
    tracker.feed(proc.stdout, 1.0)
    assert tracker.failed is None and tracker.awaiting(Stage.DONE)
    # The dump is on the scratch disk, with every step of the fallback chain...
    (dump,) = [p for p in disk.iterdir() if p.name.startswith("h1-")]
    assert dump.name == values["dir"]
    meta = json.loads((dump / "metadata.json").read_text())
    assert meta["result"] == "complete" and meta["vmcore"]["how"].startswith("raw copy")
    assert steps(meta) == [
        ("dmesg", 0), ("xen-console", 0), ("vmcore -d 31", 1), ("vmcore -d 1", 1),
        ("vmcore -d 0", 1), ("vmcore raw", 0),
    ]  # fmt: skip
    assert (dump / "vmcore").read_bytes() == agent.core
    # ...the configured target is untouched (no dump, no retention) and the VM powers off.
    assert [p.name for p in agent.target.iterdir()] == ["h1-20200101T000000Z"]
    assert agent.actions() == ["halt"]


def test_selftest_token_found_in_the_vmcore_when_dmesg_lacks_it(agent: Agent) -> None:
    disk = selftest(agent)
    with (agent.tmp / "vmcore").open("ab") as f:  # the token somewhere in memory
        f.write(b"\0" * 4096 + TOKEN.encode() + b"\0" * 100)
    proc = agent.run(**base_conf(agent))
    seen = markers(proc.stdout)
    assert [m[0] for m in seen][-2:] == ["token-found", "dump-written"], proc.stdout
    assert "in=vmcore" in seen[-2]
    assert len([p for p in disk.iterdir() if p.name.startswith("h1-")]) == 1


def test_selftest_without_the_token_fails_at_token_found_and_powers_off(agent: Agent) -> None:
    disk = selftest(agent)
    proc = agent.run(**base_conf(agent, XK_FAILURE_ACTION="shell"))
    assert proc.returncode == 1
    seen = markers(proc.stdout)
    assert seen[-1][:2] == ["failed", "token-found"] and "not in" in " ".join(seen[-1])
    assert not [p for p in disk.iterdir() if p.name.startswith("h1-")]  # never committed
    assert agent.actions() == ["halt"]  # not the configured shell: the VM just stops


def test_selftest_scratch_disk_that_cannot_be_mounted_fails_at_dump_written(agent: Agent) -> None:
    selftest(agent)
    agent.env["XK_SELFTEST_DEVICE"] = str(agent.tmp / "no-such-disk")
    agent.env["XK_DEVICE_WAIT"] = "1"
    agent.env["PATH"] = (
        f"{write_exec(agent.tmp / 'bin' / 'mount', 'exit 32').parent}:" + (agent.env["PATH"])
    )
    agent.env["FAKE_KMSG"] = TOKEN
    proc = agent.run(**base_conf(agent))
    assert proc.returncode == 1
    seen = markers(proc.stdout)
    assert seen[-1][:2] == ["failed", "dump-written"] and "could not be mounted" in proc.stdout
    assert agent.actions() == ["halt"]
