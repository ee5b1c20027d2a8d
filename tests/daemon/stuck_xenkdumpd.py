"""xenkdumpd whose watchdog stall limit is 2 s instead of a minute; with
STUCK_LOAD=1, its loads never finish (a load stuck in a system call: a hung NFS read).

For tests/daemon/test_daemon_process.py: the watchdog keep-alive must stop while the
load makes no progress (and SIGTERM must still stop the daemon within seconds), but
go on while the load waits for a child job within that job's own timeout.
Run as ``python stuck_xenkdumpd.py XENKDUMPD-ARGS...``.
"""

from __future__ import annotations

import os
import sys
import threading

from xenkdump.daemon import executor, main

main.STALL_LIMIT = 2.0  # instead of a minute


def _stuck(self: executor.Executor, _action: object) -> object:
    threading.Event().wait()  # never set: blocks like a read that never returns
    raise AssertionError("unreachable")


if os.environ.get("STUCK_LOAD") == "1":
    executor.Executor.load = _stuck  # type: ignore[assignment,method-assign]

if __name__ == "__main__":
    sys.exit(main.main(sys.argv[1:]))
