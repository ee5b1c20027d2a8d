"""This directory's fixtures live in purgatoryfixtures.py: mypy checks all test modules as one
program, in which every conftest.py would be a module named "conftest"."""

from purgatoryfixtures import *  # noqa: F403
