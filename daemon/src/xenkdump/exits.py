"""Exit codes of xenkdumpctl and xenkdumpd, and their one-line argument parser.

0 success, 1 the operation failed, 2 a usage or input error (errors.py gives each
error class its code).
"""

from __future__ import annotations

import argparse

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")
