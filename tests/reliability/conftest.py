"""Prints the figures of the fault-injection and fuzz suites at the end of the run."""

from __future__ import annotations

import pytest
from figures import FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        line = ", ".join(f"{name}: {n}" for name, n in sorted(FIGURES.items()))
        terminalreporter.write_line(f"reliability figures: {line}")
