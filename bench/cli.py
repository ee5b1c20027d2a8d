"""Start-up cost of xenkdumpctl: a few commands against the bare interpreter, in one run.

Each command runs as Debian installs it (/usr/bin/python3 running
``xenkdump.cli.ctl.main``, the checkout's sources on PYTHONPATH); the floor is
``/usr/bin/python3 -c pass`` measured in the same run.  Printed: the best and the
median wall time of ``--rounds`` runs each, and the ratio of the best times.
Goal: ``--help``, ``status`` (through a running xenkdumpd) and ``hv info`` within 3x
the floor.  ``hv info`` here uses the simulated host, whose YAML description is parsed
and checked against its JSON Schema; on a dom0 it is libxenctrl through cffi instead.

    .venv/bin/python bench/cli.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from benchlib import REPO, running_daemon

PYTHON = "/usr/bin/python3"
# What Debian's /usr/bin/xenkdumpctl does (pybuild's console-script wrapper).
CTL = "import sys; from xenkdump.cli.ctl import main; sys.exit(main())"
GOAL = 3.0


def timed(argv: list[str], env: dict[str, str], rounds: int) -> tuple[float, float]:
    """(best, median) wall seconds of ``argv``; it must succeed."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            sys.exit(f"bench/cli.py: {argv[3:]} exited {done.returncode}: {done.stderr.strip()}")
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    env = dict(
        os.environ,
        PYTHONPATH=f"{REPO / 'daemon' / 'src'}:{REPO / 'bindings'}",
        PYTHONDONTWRITEBYTECODE="1",
    )
    with running_daemon() as daemon:
        assert daemon.address is not None
        env["DBUS_SYSTEM_BUS_ADDRESS"] = daemon.address
        host = f"sim:{daemon.root / 'host.yaml'}"
        commands = {
            "--help": ["--help"],
            "status (through xenkdumpd)": ["status"],
            "hv info (simulated host)": ["--hypervisor", host, "hv", "info"],
        }
        floor, floor_median = timed([PYTHON, "-c", "pass"], env, args.rounds)
        print(
            f"floor: {PYTHON} -c pass: best {floor * 1e3:.1f} ms, "
            f"median {floor_median * 1e3:.1f} ms ({args.rounds} runs)"
        )
        for name, argv in commands.items():
            best, median = timed([PYTHON, "-c", CTL, *argv], env, args.rounds)
            ratio = best / floor
            verdict = "within" if ratio <= GOAL else "OVER"
            print(
                f"xenkdumpctl {name}: best {best * 1e3:.1f} ms, median {median * 1e3:.1f} ms; "
                f"ratio {ratio:.1f}x the floor ({verdict} the goal of {GOAL:.0f}x)"
            )


if __name__ == "__main__":
    main()
