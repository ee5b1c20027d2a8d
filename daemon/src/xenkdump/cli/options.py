"""Options several xenkdumpctl commands share: the state directory and --no-daemon."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from pathlib import Path

    from xenkdump.state.record import RecordStore


def path_arg(text: str) -> Path:
    """argparse ``type=`` for paths (pathlib is imported only when a path is given)."""
    from pathlib import Path

    return Path(text)


def state_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=path_arg,
        default=None,
        metavar="DIR",
        help="where the load record lives (default: $XENKDUMP_STATE_DIR or /run/xenkdump)",
    )


def no_daemon_option(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--no-daemon", action="store_true", help=text)


def store(args: argparse.Namespace) -> RecordStore:
    """The record store named by --state-dir (or the default)."""
    from xenkdump.state.record import RecordStore, default_state_dir

    state_dir: Path | None = args.state_dir
    return RecordStore(state_dir if state_dir is not None else default_state_dir())
