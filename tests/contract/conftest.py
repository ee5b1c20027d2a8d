"""This directory's fixtures live in portfixtures.py: mypy checks all test modules as one
program, in which every conftest.py would be a module named "conftest"."""

from portfixtures import *  # noqa: F403
