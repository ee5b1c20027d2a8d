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

VENV_PY = REPO / ".venv" / "bin" / "python"
XENKDUMPCTL = f"{VENV_PY} -m xenkdump.cli.ctl"
LOADER_MODULE = REPO / "daemon" / "src" / "xenkdump" / "image" / "loader.py"
DOM0_XEN = Path(__file__).resolve().parent / "dom0_xen.py"
LIBXENCTRL = "/usr/lib/x86_64-linux-gnu/libxenctrl.so.4.17"  # Debian's libxenmisc4.17
TOKEN_FILE = "/run/xk-token"  # /run is a tmpfs in dom0 (dom0-init.sh): memory it keeps


def loader_present() -> bool:
    """xenkdump's image builder/loader has landed (load-and-crash and reload run)."""
    return LOADER_MODULE.exists()


def prelude() -> str:
    return "\n".join(
        [
            "set -u",
            'say() { echo "XK-SCEN: $*"; }',
            "now_ns() { date +%s%N; }",
            f"cd {shlex.quote(str(REPO))}",
        ]
    )


def write_token(token: bytes) -> str:
    """Put the token's raw bytes into a tmpfs file; only its hex form crosses 9p."""
    return "\n".join(
        [
            f'/usr/bin/python3 -c \'import sys; open(sys.argv[1], "wb").write('
            f"bytes.fromhex(sys.argv[2]))' {TOKEN_FILE} {token.hex()}",
            f'say "token written $(stat -c %s {TOKEN_FILE}) bytes"',
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


def xenkdump_load(
    assets: Assets, initrd: Path, label: str, state_dir: str, *, env: str = ""
) -> str:
    """``xenkdumpctl load`` from the checkout, run by the host's Python in dom0, timed.

    ``env`` is an optional ``NAME=value ...`` prefix for the command.
    """
    cmd = (
        f"{env} {XENKDUMPCTL} --hypervisor xen load --kernel {assets.kernel} --initrd {initrd} "
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
    """Plan like ``xenkdumpctl load`` and hand it to Xen with a wrong arch (§1.8 D4)."""
    args = " ".join(
        shlex.quote(str(a)) for a in ("bogus-load", assets.kernel, initrd, CRASH_CMDLINE, state_dir)
    )
    return xen_query(args, label)


def crash() -> str:
    """Panic dom0: Xen then runs the armed crash image (xen-qemu-lab.md "The crash")."""
    return "\n".join(['say "crashing"', "sync", "echo c > /proc/sysrq-trigger", "sleep 60"])


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

    def expect_crash_dump(self, marker: str) -> dict[str, str]:
        """Crash kernel ``marker`` booted, found the token, and makedumpfile wrote a dump."""
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
        return {**token[0], "vmcore_bytes": size[0]["_0"], **dumped[0]}
