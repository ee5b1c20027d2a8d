"""This directory's fixtures live in busfixtures.py: mypy checks all test modules as one
program, in which every conftest.py would be a module named "conftest"."""

from busfixtures import *  # noqa: F403
