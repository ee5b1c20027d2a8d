"""Start-up cost of xenkdumpctl: a few commands against the bare interpreter, in one run.

What runs is what Debian installs: ``/usr/bin/python3`` running
``xenkdump.cli.ctl.main`` (pybuild's console-script wrapper), with the checkout's
sources, byte-compiled first as Debian's package is, at the end of the module path
where dist-packages is (no venv, no editable-install finder, no PYTHONPATH ahead of
the standard library).  The floor is ``/usr/bin/python3 -c pass``.  The runs are
interleaved (each round runs the floor and every command once), so that a busy
machine slows all of them alike.  Printed: the best and the median wall time of
``--rounds`` rounds, and the ratio of the best times.  Goal: ``--help``, ``status``
(through a running xenkdumpd) and ``hv info`` within 3x the floor.  ``hv info`` here
uses the simulated host, whose YAML description xenkdumpd has already checked against
its JSON Schema (hv/simhost.py keeps the validated value next to the file, so the
command reads JSON); on a dom0 it is libxenctrl through cffi instead.  The same commands on
real Xen (Xen 4.17 under QEMU, ``hv info`` through libxenctrl) are timed by
tests/e2e/test_daemon_crash.py in its dom0 boot; this prints its last figures, from
bench/out/e2e_cli.json.

    .venv/bin/python bench/cli.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import subprocess
import sys
import time

from benchlib import REPO, running_daemon

PYTHON = "/usr/bin/python3"
# What Debian's xenkdumpctl does (pybuild's console-script wrapper), the package last.
GOAL = 3.0
SOURCES = (REPO / "daemon" / "src", REPO / "bindings")
CTL = (
    f"import sys; sys.path += {[str(s) for s in SOURCES]!r}; "
    "from xenkdump.cli.ctl import main; sys.exit(main())"
)
LAB = REPO / "bench" / "out" / "e2e_cli.json"


def run_once(argv: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``argv``; it must succeed."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench/cli.py: {argv[3:]} exited {done.returncode}: {done.stderr.strip()}")
    return took


def measure(runs: dict[str, list[str]], env: dict[str, str], rounds: int) -> dict[str, list[float]]:
    """Name -> wall seconds of each round, the commands interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, argv in runs.items():
            times[name].append(run_once(argv, env))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    for tree in SOURCES:  # as the package's postinst does (py3compile)
        compileall.compile_dir(tree, quiet=1)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    with running_daemon() as daemon:
        assert daemon.address is not None
        env["DBUS_SYSTEM_BUS_ADDRESS"] = daemon.address
        host = f"sim:{daemon.root / 'host.yaml'}"
        floor = f"{PYTHON} -c pass"
        runs = {
            floor: [PYTHON, "-c", "pass"],
            "--help": [PYTHON, "-c", CTL, "--help"],
            "status (through xenkdumpd)": [PYTHON, "-c", CTL, "status"],
            "hv info (simulated host)": [PYTHON, "-c", CTL, "--hypervisor", host, "hv", "info"],
        }
        times = measure(runs, env, args.rounds)
    best = {name: min(t) for name, t in times.items()}
    print(
        f"floor: {floor}: best {best[floor] * 1e3:.1f} ms, "
        f"median {statistics.median(times[floor]) * 1e3:.1f} ms ({args.rounds} rounds)"
    )
    for name in list(runs)[1:]:
        ratio = best[name] / best[floor]
        verdict = "within" if ratio <= GOAL else "OVER"
        print(
            f"xenkdumpctl {name}: best {best[name] * 1e3:.1f} ms, "
            f"median {statistics.median(times[name]) * 1e3:.1f} ms; "
            f"ratio {ratio:.1f}x the floor ({verdict} the goal of {GOAL:.0f}x)"
        )
    print_lab()


def print_lab() -> None:
    """The real-Xen figures tests/e2e/test_daemon_crash.py left, if any."""
    if not LAB.exists():
        print(f"real Xen: no figures yet ({LAB.relative_to(REPO)} is written by")
        print("  .venv/bin/python -m pytest -m e2e tests/e2e/test_daemon_crash.py)")
        return
    lab = json.loads(LAB.read_text())
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(LAB.stat().st_mtime))
    floor = lab["floor_ns"] / 1e9
    print(f"real Xen ({LAB.relative_to(REPO)}, {when}, best of {lab['rounds']} rounds):")
    print(f"  floor: /usr/bin/python3 -c pass in dom0 under QEMU TCG: {floor:.2f} s")
    medians = lab.get("median_round_ratios", {})
    for name, ns in lab["commands_ns"].items():
        ratio = lab["ratios"][name]
        verdict = "within" if ratio <= GOAL else "OVER"
        median = f", median of the rounds' ratios {medians[name]:.1f}x" if name in medians else ""
        print(
            f"  xenkdumpctl {name}: {ns / 1e9:.2f} s; ratio {ratio:.1f}x the floor "
            f"({verdict} the goal of {GOAL:.0f}x){median}"
        )


if __name__ == "__main__":
    main()
