"""This directory's fixtures live in labfixtures.py: mypy checks all test modules as one
program, in which every conftest.py would be a module named "conftest"."""

from labfixtures import *  # noqa: F403
