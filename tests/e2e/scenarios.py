"""Shell snippets a scenario runs in dom0's chroot, and parsers for what they print.

Each dom0 step prints ``XK-SCEN: <key> <values>`` lines (to the serial log via
hvc0, and to out/scenario.log); the crash kernel prints ``XK-CRASH:`` lines
(crash-init.sh).  Tests assert on those lines, so every stage is visible in a
failure message.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import NoReturn

import pytest
from e2e_harness import CRASH_CMDLINE, CRASH_END, REPO, Assets, Boot, Job, clean_log, markers

import privatebus

VENV_PY = REPO / ".venv" / "bin" / "python"
XENKDUMPCTL = f"{VENV_PY} -m xenkdump.cli.ctl"
# What Debian's xenkdumpctl runs (the console-script wrapper), with the checkout where
# the package would be installed: after the interpreter's own path, as dist-packages is,
# not before it as PYTHONPATH would put it (every other import would look there first,
# a stat of each directory per import: seconds over dom0's 9p root).
CTL_MAIN = (
    f"import sys; sys.path += [{str(REPO / 'daemon' / 'src')!r}, {str(REPO / 'bindings')!r}]; "
    "from xenkdump.cli.ctl import main; sys.exit(main())"
)
DOM0_XEN = Path(__file__).resolve().parent / "dom0_xen.py"
TOKEN_FILE = "/run/xk-token"  # /run is a tmpfs in dom0 (dom0-init.sh): memory it keeps


def prelude() -> str:
    return "\n".join(
        [
            "set -u",
            'say() { echo "XK-SCEN: $*"; }',
            "now_ns() { date +%s%N; }",
            f"cd {shlex.quote(str(REPO))}",
        ]
    )


def kmsg_token(token: bytes) -> str:
    """The line dom0 writes to /dev/kmsg before it crashes (found again in dmesg.txt)."""
    return f"xenkdump-kmsg-{token.hex()[:16]}"


def write_token(token: bytes) -> str:
    """Put the token's raw bytes into a tmpfs file; only its hex form crosses 9p."""
    return "\n".join(
        [
            f'/usr/bin/python3 -c \'import sys; open(sys.argv[1], "wb").write('
            f"bytes.fromhex(sys.argv[2]))' {TOKEN_FILE} {token.hex()}",
            f'say "token written $(stat -c %s {TOKEN_FILE}) bytes"',
            # dom0's last words: the crash side must find this line in dom0's dmesg.
            f'echo "{kmsg_token(token)}" > /dev/kmsg',
        ]
    )


def kexec_tools_load(assets: Assets, initrd: Path, label: str = "kexec-tools") -> str:
    """``kexec -p`` (the peer), timed; Debian's kexec loads through libxenctrl in a dom0."""
    cmd = (
        f"{assets.kexec} -p {assets.kernel} --initrd={initrd} --append={shlex.quote(CRASH_CMDLINE)}"
    )
    return "\n".join(
        [
            "t0=$(now_ns)",
            f"{cmd} > $OUT/{label}.log 2>&1; rc=$?",
            "t1=$(now_ns)",
            f'say "load {label} rc=$rc ns=$((t1 - t0))"',
            f"sed 's/^/XK-SCEN: {label}| /' $OUT/{label}.log | tail -n 5",
        ]
    )


def xenkdump_load(assets: Assets, initrd: Path, label: str, state_dir: str) -> str:
    """``xenkdumpctl load`` from the checkout, run by the host's Python in dom0, timed."""
    cmd = (
        f"{XENKDUMPCTL} --hypervisor xen load --kernel {assets.kernel} --initrd {initrd} "
        f"--cmdline {shlex.quote(CRASH_CMDLINE)} --state-dir {state_dir}"
    )
    return "\n".join(
        [
            f"mkdir -p {state_dir}",
            "t0=$(now_ns)",
            f"{cmd} > $OUT/{label}.log 2>&1; rc=$?",
            "t1=$(now_ns)",
            f'say "load {label} rc=$rc ns=$((t1 - t0))"',
            f"sed 's/^/XK-SCEN: {label}| /' $OUT/{label}.log | tail -n 8",
        ]
    )


def in_process_args(
    assets: Assets, initrd: Path, rounds: int, state_dir: str = "/run/xk-state"
) -> str:
    """dom0_xen.py arguments for ``rounds`` timed loads inside one Python process."""
    return f"timed-load {assets.kernel} {initrd} {shlex.quote(CRASH_CMDLINE)} {state_dir} {rounds}"


def xen_query(args: str, label: str) -> str:
    """One call of dom0_xen.py (the project's real adapter); prints ``XK-SCEN: xen LABEL ...``."""
    return f"{VENV_PY} {DOM0_XEN} {args} 2>&1 | sed 's/^/XK-SCEN: xen {label} /'"


def bogus_load(assets: Assets, initrd: Path, state_dir: str, label: str) -> str:
    """Plan like ``xenkdumpctl load``, hand it to Xen with a wrong arch.

    Xen copies it and only then refuses it: docs/xen-kexec-contract.md §4.4.
    """
    args = " ".join(
        shlex.quote(str(a)) for a in ("bogus-load", assets.kernel, initrd, CRASH_CMDLINE, state_dir)
    )
    return xen_query(args, label)


def crash() -> str:
    """Panic dom0: Xen then runs the armed crash image (docs/xen-kexec-contract.md §5.1)."""
    return "\n".join(['say "crashing"', "sync", "echo c > /proc/sysrq-trigger", "sleep 60"])


XEN_CRASH_KEY = "'C' pressed -> triggering crashdump"  # Xen's line for debug key C


def xen_crash() -> str:
    """Crash Xen itself (debug key C, as ``xl debug-keys C``), dom0 still running: Xen
    then runs the armed crash image (docs/xen-kexec-contract.md §5.1)."""
    return "\n".join(['say "crashing xen"', "sync", xen_query("debug-keys C", "crash"), "sleep 60"])


def scen_values(lines: list[str], key: str) -> list[dict[str, str]]:
    """``key a=1 b=2`` lines -> [{'a': '1', 'b': '2'}, ...] (words without '=' as '_N')."""
    out = []
    for line in lines:
        words = line.split()
        if not words or " ".join(words[: len(key.split())]) != key:
            continue
        rec: dict[str, str] = {}
        for i, w in enumerate(words[len(key.split()) :]):
            k, sep, v = w.partition("=")
            if sep:
                rec[k] = v
            else:
                rec[f"_{i}"] = w
        out.append(rec)
    return out


class Run:
    """One finished boot with its markers; ``expect`` fails with the relevant serial log."""

    def __init__(self, boot: Boot, job: Job) -> None:
        self.boot = boot
        self.job = job
        self.scen = markers(boot.serial, "XK-SCEN:")
        self.crash = markers(boot.serial, "XK-CRASH:")
        self.dom0 = markers(boot.serial, "XK-DOM0:")

    def log_part(self, around: str | None) -> str:
        if self.boot.timed_out or around is None:
            return self.boot.tail(80)
        return self.boot.section(around, 80)

    def fail(self, msg: str, around: str | None = None) -> NoReturn:
        state = (
            f"QEMU killed after {self.boot.elapsed:.0f}s (timeout, or no output after the crash)"
            if self.boot.timed_out
            else f"boot took {self.boot.elapsed:.0f}s, stopped on {self.boot.stopped_on!r}"
        )
        scen_log = self.job.read_out("scenario.log")
        pytest.fail(
            f"{msg}\n[{state}]\n--- serial log ({around or 'tail'}) ---\n"
            f"{clean_log(self.log_part(around))}\n"
            + (f"--- dom0 scenario.log (tail) ---\n{scen_log[-3000:]}" if scen_log else ""),
            pytrace=False,
        )

    def expect(self, cond: object, msg: str, around: str | None = None) -> None:
        if not cond:
            self.fail(msg, around)

    def has(self, text: str) -> bool:
        return text in self.boot.serial

    def values(self, key: str, source: str = "scen") -> list[dict[str, str]]:
        return scen_values(self.crash if source == "crash" else self.scen, key)

    def expect_dom0_ready(self) -> None:
        self.expect(not self.boot.timed_out or self.dom0, "dom0 never started", None)
        self.expect(
            any(m.startswith("ready") for m in self.dom0),
            f"dom0 init did not get ready: {self.dom0}",
            "XK-DOM0:",
        )

    def expect_crash_dump(self, marker: str, *, dom0_vmcoreinfo: bool = True) -> dict[str, str]:
        """Crash kernel ``marker`` booted, found the token, and makedumpfile wrote a dump.

        ``dom0_vmcoreinfo``: the image was built by xenkdump, whose ELF core header
        carries dom0's VMCOREINFO (``-d 31`` and ``--dump-dmesg`` work); False for
        kexec-tools' image, which lacks it (only ``-X`` works).
        """
        self.expect(
            self.has("Executing kexec image"), "Xen did not run the crash image", "crashing"
        )
        booted = self.values("booted", "crash")
        self.expect(booted, "the crash kernel never reached its /init", "Executing kexec image")
        self.expect(
            booted[0].get("marker") == marker,
            f"crash kernel booted image {booted[0].get('marker')!r}, expected {marker!r}",
            "XK-CRASH:",
        )
        size = self.values("vmcore bytes", "crash")
        self.expect(size and int(size[0]["_0"]) > 0, "no /proc/vmcore", "XK-CRASH:")
        token = self.values("token", "crash")
        self.expect(
            token and "_0" in token[0] and token[0]["_0"] == "found",
            f"token not found in /proc/vmcore: {token}",
            "XK-CRASH:",
        )
        dumped = self.values("makedumpfile ok", "crash")
        self.expect(dumped, "makedumpfile wrote no dump", "XK-CRASH:")
        self.expect(self.boot.stopped_on == CRASH_END, "crash kernel did not finish", "XK-CRASH:")
        result = {**token[0], "vmcore_bytes": size[0]["_0"], **dumped[0]}
        if not dom0_vmcoreinfo:
            self.expect(
                dumped[0].get("opts") == "-X_-c",
                f"expected -d 31 to fail without dom0's VMCOREINFO: {dumped}",
                "XK-CRASH:",
            )
            return result
        # dom0's VMCOREINFO note in our ELF core header: page filtering and dom0's log work.
        self.expect(
            dumped[0].get("opts") == "-c_-d_31",
            f"makedumpfile -d 31 failed on our vmcore (dom0 VMCOREINFO missing?): {dumped}",
            "XK-CRASH:",
        )
        dmesg = self.values("dmesg", "crash")
        self.expect(
            dmesg and dmesg[0].get("rc") == "0" and dmesg[0].get("kmsg") == "found",
            f"makedumpfile --dump-dmesg did not give dom0's log with its last line: {dmesg}",
            "XK-CRASH:",
        )
        return {**result, "dmesg_lines": dmesg[0].get("lines", "?")}


# ---------------------------------------------------------------------------
# xenkdumpd in dom0 (test_daemon_crash.py): a private bus, the daemon, its status

DAEMON_DIR = "/tmp/xk-daemon"  # dom0's tmpfs /tmp (dom0-init.sh)
# Status fields printed as markers: ``status LABEL State=... Generation=... ...``.
_STATUS_FIELDS = ("State", "Generation", "ImageSha256", "CrashRegion", "CrashRegionUsed")
_STATUS_LINE = (
    "import json, sys; s = json.load(open(sys.argv[2])); "
    "f = lambda v: ','.join(map(str, v)) if isinstance(v, list) else str(v).replace(' ', '_'); "
    f"print('status', sys.argv[1], *(k + '=' + f(s.get(k, '')) for k in {_STATUS_FIELDS!r}))"
)


def daemon_config(kernel: Path, initrd: Path, state_dir: str) -> str:
    """A xenkdump.yaml naming the files and the command line (config/xenkdump.yaml keys)."""
    return "\n".join(
        [
            f"kernel: {kernel}",
            f"initrd: {initrd}",
            "cmdline:",
            f'  base: "{CRASH_CMDLINE}"',
            f"state_dir: {state_dir}",
            f"boot_dir: {kernel.parent}",
        ]
    )


def start_bus_and_daemon(config_yaml: str, hypervisor: str = "xen", work: str = DAEMON_DIR) -> str:
    """A private dbus-daemon (its address exported), then xenkdumpd in the background.

    NOTIFY_SOCKET stays unset: readiness is read from ``xenkdumpctl status`` instead.
    Sets ``XK_DAEMON_PID``; the daemon's stderr goes to $OUT/daemon.log.
    """
    bus_config = privatebus.config(f"unix:path={work}/bus.sock", privatebus.LAB)
    for text in (config_yaml, bus_config):
        if "XKEOF" in text:
            raise ValueError("here-document delimiter inside the text")
    return "\n".join(
        [
            f"mkdir -p {work}",
            f"cat > {work}/bus.conf <<'XKEOF'",
            bus_config.rstrip("\n"),
            "XKEOF",
            f"cat > {work}/xenkdump.yaml <<'XKEOF'",
            config_yaml,
            "XKEOF",
            # --fork: the parent returns once the bus listens; both lines come on fd 1.
            f"bus_out=$(/usr/bin/dbus-daemon --config-file={work}/bus.conf --fork "
            "--print-address=1 --print-pid=1); rc=$?",
            'DBUS_SYSTEM_BUS_ADDRESS=$(echo "$bus_out" | head -n 1)',
            "export DBUS_SYSTEM_BUS_ADDRESS",
            'say "bus rc=$rc address=$DBUS_SYSTEM_BUS_ADDRESS pid=$(echo "$bus_out" | sed -n 2p)"',
            "unset NOTIFY_SOCKET",
            "t_daemon=$(now_ns)",
            f"{VENV_PY} -m xenkdump.daemon.main --config {work}/xenkdump.yaml "
            f"--hypervisor {hypervisor} -v > $OUT/daemon.log 2>&1 &",
            "XK_DAEMON_PID=$!",
            'say "daemon started pid=$XK_DAEMON_PID"',
        ]
    )


def daemon_wait(label: str, patterns: tuple[str, ...], tries: int = 40) -> str:
    """Poll ``xenkdumpctl status --json`` until every grep -E pattern matches (bounded).

    Prints ``waited LABEL ok|timeout|daemon-exited tries=N ns=...`` and, when a status
    was read, ``status LABEL State=... Generation=...``; sets ``xk_ok=0`` on failure.
    """
    checks = " && ".join(f"grep -Eq {shlex.quote(p)} $OUT/status-{label}.json" for p in patterns)
    status = f"{XENKDUMPCTL} status --json > $OUT/status-{label}.json 2> $OUT/status-{label}.err"
    return "\n".join(
        [
            "t0=$(now_ns); i=0; result=timeout",
            f"while [ $i -lt {tries} ]; do",
            "  i=$((i + 1))",
            f"  if {status} && {checks}; then result=ok; break; fi",
            "  kill -0 $XK_DAEMON_PID 2>/dev/null || { result=daemon-exited; break; }",
            "  sleep 1",
            "done",
            f'say "waited {label} $result tries=$i ns=$(($(now_ns) - t0))"',
            f"[ -s $OUT/status-{label}.json ] && /usr/bin/python3 -c "
            f'{shlex.quote(_STATUS_LINE)} {label} $OUT/status-{label}.json | sed "s/^/XK-SCEN: /"',
            f"sed 's/^/XK-SCEN: status-{label}.err| /' $OUT/status-{label}.err | tail -n 3",
            '[ "$result" = ok ] || xk_ok=0',
        ]
    )


def daemon_reload(label: str = "reload") -> str:
    """``xenkdumpctl reload --force`` through D-Bus, timed; prints ``reload rc=... ns=...``."""
    return "\n".join(
        [
            "t0=$(now_ns)",
            f"{XENKDUMPCTL} reload --force > $OUT/{label}.log 2>&1; rc=$?",
            f'say "{label} rc=$rc ns=$(($(now_ns) - t0))"',
            f"sed 's/^/XK-SCEN: {label}| /' $OUT/{label}.log | tail -n 4",
            "[ $rc -eq 0 ] || xk_ok=0",
        ]
    )


def daemon_log_tail(lines: int = 12) -> str:
    return f"sed 's/^/XK-SCEN: daemon| /' $OUT/daemon.log | tail -n {lines}"


# xenkdumpctl's start-up (bench/cli.py), as an administrator runs it: Debian's
# /usr/bin/python3 with the package (here the checkout, byte-compiled) on its path.
CLI_STARTUP = {  # name in the log -> (what bench/cli.py calls it, python3's arguments)
    "floor": ("/usr/bin/python3 -c pass", "-c pass"),
    "help": ("--help", f"-c {shlex.quote(CTL_MAIN)} --help"),
    "status": ("status (through xenkdumpd)", f"-c {shlex.quote(CTL_MAIN)} status"),
    "hv-info": (
        "hv info (libxenctrl)",
        f"-c {shlex.quote(CTL_MAIN)} --hypervisor xen hv info",
    ),
}


def cli_startup(rounds: int) -> str:
    """Time ``/usr/bin/python3 -c pass`` and each CLI_STARTUP command, round by round.

    Prints ``cli NAME round=N rc=... ns=...``; ``status`` asks the running xenkdumpd.
    """
    lines = [
        "( export PYTHONDONTWRITEBYTECODE=1",
        f"for r in $(seq {rounds}); do",
    ]
    for name, (_, args) in CLI_STARTUP.items():
        lines += [
            "  t0=$(now_ns)",
            f"  /usr/bin/python3 {args} > $OUT/cli-{name}.log 2>&1; rc=$?",
            f'  say "cli {name} round=$r rc=$rc ns=$(($(now_ns) - t0))"',
        ]
    lines += ["done", ")"]
    for name in CLI_STARTUP:
        lines.append(f"sed 's/^/XK-SCEN: cli-{name}| /' $OUT/cli-{name}.log | tail -n 3")
    return "\n".join(lines)
