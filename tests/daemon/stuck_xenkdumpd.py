"""xenkdumpd whose loads never finish: a load stuck in a system call (a hung NFS read).

For tests/daemon/test_daemon_process.py: the watchdog keep-alive must stop while the
load makes no progress, and SIGTERM must still stop the daemon within seconds.
Run as ``python stuck_xenkdumpd.py XENKDUMPD-ARGS...``.
"""

from __future__ import annotations

import sys
import threading

from xenkdump.daemon import executor, main

main.STALL_LIMIT = 2.0  # instead of a minute


def _stuck(self: executor.Executor, _action: object) -> object:
    threading.Event().wait()  # never set: blocks like a read that never returns
    raise AssertionError("unreachable")


executor.Executor.load = _stuck  # type: ignore[assignment,method-assign]

if __name__ == "__main__":
    sys.exit(main.main(sys.argv[1:]))
