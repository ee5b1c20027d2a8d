"""Counts the reliability suites report (cases fuzzed, faults injected, kill -9 runs).

conftest.py prints them at the end of the run; README.md quotes the last run.
"""

from __future__ import annotations

from collections import Counter

FIGURES: Counter[str] = Counter()
