"""The one private dbus-daemon of the tests, the benchmarks, the real-Xen lab and the demo.

The system bus is not ours to take, so each of them runs its own dbus-daemon with a
configuration made here; xenkdumpd and xenkdumpctl find it through
$DBUS_SYSTEM_BUS_ADDRESS.  Their policies differ on purpose:

``OPEN``   tests and benchmarks: every user may own, send and eavesdrop (the tests
           watch signals, and connect as another user to check uid handling);
``LAB``    xenkdumpd in dom0 (tests/e2e): every user may own, send and receive;
``DEMO``   scripts/demo.sh: the user who runs it may own, send and eavesdrop.

A test may pass its own ``<policy>`` body (test_dbus_policy.py includes the shipped
bus policy file).  From a shell::

    python3 tests/privatebus.py --policy demo --listen unix:dir=/tmp/x > bus.conf
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OPEN = """
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>"""

LAB = """
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>"""

DEMO = """
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>"""

POLICIES = {"open": OPEN, "lab": LAB, "demo": DEMO}


def config(listen: str, policy: str) -> str:
    """A dbus-daemon configuration listening on ``listen`` with the ``<policy>`` body given."""
    body = policy.strip("\n")
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>{listen}</listen>
  <auth>EXTERNAL</auth>
{body}
</busconfig>
"""


@contextmanager
def running(directory: Path, policy: str = OPEN) -> Iterator[str]:
    """A dbus-daemon with ``policy`` and its socket in ``directory``; yields its address."""
    conf = directory / "bus.conf"
    conf.write_text(config(f"unix:path={directory / 'bus.sock'}", policy))
    proc = subprocess.Popen(
        ["dbus-daemon", "--config-file", str(conf), "--nofork", "--print-address"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        address = proc.stdout.readline().strip()
        if not address:
            proc.wait(5)
            raise RuntimeError(f"dbus-daemon did not start: {proc.stderr.read().strip()}")
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Print a private dbus-daemon configuration.")
    parser.add_argument("--policy", choices=sorted(POLICIES), required=True)
    parser.add_argument("--listen", required=True, help="e.g. unix:path=/run/x/bus.sock")
    args = parser.parse_args()
    print(config(args.listen, POLICIES[args.policy]), end="")


if __name__ == "__main__":
    main()
