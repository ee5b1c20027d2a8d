"""safefile: the one bounded, non-blocking reader and the one atomic writer."""

from __future__ import annotations

import errno
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenkdump.errors import ConfigError, FileWriteError, InputError
from xenkdump.safefile import Limit, atomic_write, read_file, read_file_if_exists, shown


@pytest.fixture(autouse=True)
def _no_hang() -> Iterator[None]:
    """A read that blocks (a FIFO opened without O_NONBLOCK) fails the test, not the run."""

    def _alarm(_sig: int, _frame: object) -> None:
        raise TimeoutError("read_file blocked")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_reads_a_regular_file_and_through_a_symlink(tmp_path: Path) -> None:
    f = tmp_path / "k"
    f.write_bytes(b"abc" * 1000)
    (tmp_path / "link").symlink_to(f)
    assert read_file(f, "kernel", Limit.KERNEL) == b"abc" * 1000
    assert read_file(tmp_path / "link", "kernel", Limit.KERNEL) == b"abc" * 1000


def test_proc_files_with_size_zero_are_read_whole() -> None:
    data = read_file(Path("/proc/self/status"), "status", Limit.PROC)
    assert os.stat("/proc/self/status").st_size == 0
    assert b"Pid:" in data


@pytest.mark.parametrize(
    ("make", "found"),
    [
        (os.mkfifo, "a FIFO"),
        (lambda p: p.mkdir(), "a directory"),
        (lambda p: p.symlink_to("/dev/zero"), "a character device"),
    ],
)
def test_anything_but_a_regular_file_is_one_named_error(
    tmp_path: Path, make: object, found: str
) -> None:
    p = tmp_path / "thing"
    make(p)  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        read_file(p, "configuration file", Limit.CONFIG, error=ConfigError)
    assert str(info.value) == f"{p}: configuration file: expected a regular file, found {found}"


def test_size_limit_is_checked_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as f:
        f.truncate(3 * Limit.CONFIG)  # sparse: costs nothing, would cost 3 MiB to read
    with pytest.raises(InputError, match=r"big: initrd: expected at most 1 MiB, found 3 MiB$"):
        read_file(big, "initrd", Limit.CONFIG)
    exact = tmp_path / "exact"
    exact.write_bytes(b"x" * 4096)
    assert len(read_file(exact, "x", 4096)) == 4096
    with pytest.raises(InputError, match="expected at most 4095 bytes"):
        read_file(exact, "x", 4095)


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"/nope: kernel not found$"):
        read_file(tmp_path / "nope", "kernel", Limit.KERNEL)
    assert read_file_if_exists(tmp_path / "nope", "kernel", Limit.KERNEL) is None
    with pytest.raises(InputError, match="kernel unreadable: Not a directory"):
        (tmp_path / "f").write_bytes(b"")
        read_file(tmp_path / "f" / "x", "kernel", Limit.KERNEL)


def test_non_utf8_paths_are_shown_escaped(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/k\xff\xfe"
    name = os.fsdecode(raw)
    with pytest.raises(InputError) as info:
        read_file(Path(name), "kernel", Limit.KERNEL)
    message = str(info.value)
    message.encode("utf-8")  # valid text: no surrogates reach a log or the bus
    assert message == f"{tmp_path}/k\\xff\\xfe: kernel not found"
    assert shown(name).endswith("/k\\xff\\xfe")


def test_atomic_write_sets_the_mode_on_the_descriptor_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"one", mode=0o640)
    atomic_write(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_write_never_follows_a_planted_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's file")
    victim.chmod(0o600)
    monkeypatch.setattr("secrets.token_hex", lambda _n: "fixed")
    planted = tmp_path / f".state.json.{os.getpid()}.fixed.tmp"
    planted.symlink_to(victim)
    with pytest.raises(FileWriteError, match=r"state.json: cannot write: EEXIST"):
        atomic_write(tmp_path / "state.json", b"data", mode=0o644)
    assert victim.read_bytes() == b"root's file"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EIO])
def test_write_failures_name_the_file_and_keep_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")

    def failing_write(_fd: int, _data: object) -> int:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr("xenkdump.safefile.os.write", failing_write)
    with pytest.raises(FileWriteError) as info:
        atomic_write(target, b"new")
    assert str(info.value) == (
        f"{target}: cannot write: {errno.errorcode[err]} ({os.strerror(err)})"
    )
    assert info.value.errno == err
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_paths_that_are_not_utf8_are_refused_by_name(tmp_path: Path) -> None:
    from xenkdump.errors import ImageError  # noqa: PLC0415
    from xenkdump.image import loader  # noqa: PLC0415

    bad = Path(os.fsdecode(os.fsencode(tmp_path) + b"/vmlinuz-\xff"))
    bad.write_bytes(b"x")
    with pytest.raises(ImageError) as info:
        loader.read_inputs(bad, None, cmdline="x")
    assert (
        str(info.value)
        == f"{tmp_path}/vmlinuz-\\xff: kernel: expected a UTF-8 path, found bytes that are not"
    )
