"""Change detection: inotify on directories, debounced triggers and periodic timers.

inotify is a small ctypes binding to libc (no extra dependency) read from the asyncio
loop with ``add_reader``.  Directories are watched, not files, so that a package upgrade
that renames a new file over the old one (a new inode) is still seen.  Nothing here
decides anything: each watcher calls back with a reason; the daemon decides.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import functools
import logging
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# <sys/inotify.h>
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

DIR_MASK = (
    IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)  # fmt: skip

# struct inotify_event { int wd; uint32_t mask; uint32_t cookie; uint32_t len; char name[]; }
EVENT_HEADER = struct.Struct("iIII")
assert EVENT_HEADER.size == 16


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.inotify_init1.argtypes = [ctypes.c_int]
    lib.inotify_init1.restype = ctypes.c_int
    lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    lib.inotify_add_watch.restype = ctypes.c_int
    lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.inotify_rm_watch.restype = ctypes.c_int
    return lib


def parse_events(data: bytes) -> list[tuple[int, int, str]]:
    """Split a read() of an inotify fd into (wd, mask, name) triples."""
    out = []
    offset = 0
    while offset + EVENT_HEADER.size <= len(data):
        wd, mask, _cookie, length = EVENT_HEADER.unpack_from(data, offset)
        offset += EVENT_HEADER.size
        name = data[offset : offset + length].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        offset += length
        out.append((wd, mask, name))
    return out


class Inotify:
    """An inotify instance: ``add(dir)``; ``read()`` returns (directory, name, mask)."""

    def __init__(self) -> None:
        fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        self._dirs: dict[int, Path] = {}

    def add(self, directory: Path, mask: int = DIR_MASK) -> None:
        wd = _lib().inotify_add_watch(self.fd, os.fsencode(directory), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch: {os.strerror(err)}", str(directory))
        self._dirs[wd] = directory

    def clear(self) -> None:
        for wd in list(self._dirs):
            _lib().inotify_rm_watch(self.fd, wd)
        self._dirs.clear()

    def read(self) -> list[tuple[Path | None, str, int]]:
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return []
        out: list[tuple[Path | None, str, int]] = []
        for wd, mask, name in parse_events(data):
            if mask & IN_IGNORED:
                self._dirs.pop(wd, None)
                continue
            out.append((self._dirs.get(wd), name, mask))
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Debouncer:
    """Calls ``fire(reasons)`` once, ``delay`` seconds after the last of a burst of pokes."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, delay: float, fire: Callable[[list[str]], None]
    ) -> None:
        self.loop = loop
        self.delay = delay
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._reasons: list[str] = []

    def poke(self, reason: str) -> None:
        if reason not in self._reasons:
            self._reasons.append(reason)
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.loop.call_later(self.delay, self._run)

    def _run(self) -> None:
        self._handle = None
        reasons, self._reasons = self._reasons, []
        self._fire(reasons)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._reasons = []


class DirectoryWatcher:
    """Watches directories; ``on_change(path, mask)`` for each entry event the filter accepts.

    A directory that does not exist yet is watched through its nearest existing parent,
    and re-armed on every event there (e.g. /boot created late, or a config directory).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[Path, int], None],
    ) -> None:
        self.loop = loop
        self.on_change = on_change
        self._inotify = Inotify()
        self._wanted: set[Path] = set()
        loop.add_reader(self._inotify.fd, self._readable)

    def watch(self, directories: Iterable[Path]) -> None:
        self._wanted = {Path(d) for d in directories}
        self._rearm()

    def _rearm(self) -> None:
        self._inotify.clear()
        armed: set[Path] = set()
        for d in sorted(self._wanted):
            target = d
            while not target.is_dir() and target != target.parent:
                target = target.parent
            if target in armed:
                continue
            try:
                self._inotify.add(target)
                armed.add(target)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                    log.warning("cannot watch %s: %s", target, exc.strerror)

    def _readable(self) -> None:
        events = self._inotify.read()
        rearm = False
        for directory, name, mask in events:
            if mask & IN_Q_OVERFLOW:
                # Events were lost: report every watched directory as changed.
                for d in self._wanted:
                    self.on_change(d, mask)
                continue
            if directory is None:
                continue
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF) or directory not in self._wanted:
                rearm = True
            self.on_change(directory / name if name else directory, mask)
        if rearm:
            self._rearm()

    def close(self) -> None:
        self.loop.remove_reader(self._inotify.fd)
        self._inotify.close()


class PeriodicTimer:
    """Calls ``tick()`` every ``interval`` seconds (one timer, re-armed after each call)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float, tick: Callable[[], None]
    ) -> None:
        self.loop = loop
        self.interval = interval
        self._tick = tick
        self._handle: asyncio.TimerHandle | None = loop.call_later(interval, self._run)

    def _run(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._run)
        self._tick()

    def set_interval(self, interval: float) -> None:
        if interval != self.interval:
            self.interval = interval
            self.cancel()
            self._handle = self.loop.call_later(interval, self._run)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
