"""xenkdumpd: keeps a correct crash kernel armed in Xen; a systemd Type=notify service.

Start-up order: configuration (invalid: exit 2), hypervisor (unusable: exit 1), first
reconcile (adopt or load; a failure here is a state, not an exit), the D-Bus name
(unavailable: exit 1, the armed image stays), then READY=1.  The loop then only
wakes for inotify events, signals, the topology check and the watchdog keep-alive.
Stopping never unloads the crash kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Protocol

from xenkdump import __version__
from xenkdump.daemon import kernels
from xenkdump.daemon.core import DaemonCore
from xenkdump.daemon.notify import Notifier, setup_logging, watchdog_period
from xenkdump.daemon.watch import Debouncer, DirectoryWatcher, PeriodicTimer
from xenkdump.errors import OperationError, XenkdumpError
from xenkdump.exits import EXIT_FAILED, EXIT_OK, OneLineParser
from xenkdump.hv.select import open_hypervisor
from xenkdump.settings.load import dropin_dir, load_settings
from xenkdump.settings.model import DEFAULT_CONFIG_PATH, Settings
from xenkdump.state.record import check_state_dir
from xenkdump.status import Status

log = logging.getLogger("xenkdump.daemon")

# A load or unload that makes no progress for this long stops the watchdog keep-alive, so
# that systemd restarts xenkdumpd (the record settles what happened, docs/record-safety.md).
# A child job it waits for (mkinitramfs) is progress within its own timeout (executor.py).
STALL_LIMIT = 60.0
# SIGTERM waits this long for a running load or unload, then exits without it.
STOP_GRACE = 5.0


class ServiceHandle(Protocol):
    async def close(self) -> None: ...

    async def wait_disconnected(self) -> None: ...


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="xenkdumpd", description="Keep a correct crash (kdump) kernel armed in Xen."
    )
    p.add_argument("--version", action="version", version=f"xenkdumpd {__version__}")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"configuration file (default {DEFAULT_CONFIG_PATH}; built-in defaults if absent)",
    )
    p.add_argument(
        "--hypervisor",
        metavar="xen|sim[:FILE]",
        default=None,
        help="'xen' (libxenctrl on a PV dom0) or 'sim[:FILE]' (a simulated host)",
    )
    p.add_argument(
        "--no-bus",
        action="store_true",
        help="do not own the D-Bus name (tests, benchmarks): READY=1 after the first reconcile",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return p


class Daemon:
    """Wires the core to its inputs (inotify, signals, timers) and to systemd."""

    def __init__(self, core: DaemonCore, notifier: Notifier, *, use_bus: bool) -> None:
        self.core = core
        self.notifier = notifier
        self.use_bus = use_bus
        self.stop = asyncio.Event()
        self.exit_code = EXIT_OK
        self._watcher: DirectoryWatcher | None = None
        self._files: Debouncer | None = None
        self._config: Debouncer | None = None
        self._timers: list[PeriodicTimer] = []
        self._topology: PeriodicTimer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._schedule: asyncio.Task[None] | None = None
        self._starving = False
        self.abandoned = False  # stopped with a load or unload still running

    def _keep_alive(self) -> None:
        """WATCHDOG=1, but only while the running work (if any) makes progress."""
        age = self.core.progress_age()
        if age < STALL_LIMIT:
            self._starving = False
            self.notifier.watchdog()
        elif not self._starving:
            self._starving = True
            log.error(
                "the running load or unload made no progress for %.0f s: no longer feeding "
                "the watchdog, so that systemd restarts xenkdumpd",
                age,
            )

    async def _until_started_or_stopped(self) -> bool:
        """The first reconcile, unless SIGTERM comes first (True: it finished)."""
        start = asyncio.ensure_future(self.core.start())
        stop = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        if start.done():
            stop.cancel()
            await self.core.check_target()  # a target that cannot take a dump: degraded
            log.info("first reconcile done: %s", self.core.status().status_line())
            return True
        start.cancel()
        return False

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _periodic(self, core: DaemonCore) -> None:
        """Every topology_check_interval: Xen's CPUs and memory map, then the dump target."""
        await core.check_host()
        await core.check_target()
        await core.check_dumps()

    def _on_status(self, _old: Status, new: Status) -> None:
        self.notifier.status(new.status_line())

    def _watch_dirs(self, settings: Settings) -> set[Path]:
        dirs = kernels.watched_directories(settings)
        if self.core.config_path is not None:
            # The drop-in directory even when it does not exist yet: the watcher then
            # watches its parent, and its creation re-arms the watch (_on_path).
            dirs |= {self.core.config_path.parent, dropin_dir(self.core.config_path)}
        return dirs

    def _on_path(self, path: Path, _mask: int) -> None:
        settings = self.core.settings
        cfg = self.core.config_path
        if cfg is not None:
            dropins = dropin_dir(cfg)
            if path == dropins and self._watcher is not None:
                self._watcher.watch(self._watch_dirs(settings))  # created or removed
            if path in (cfg, cfg.parent, dropins) or path.parent == dropins:
                assert self._config is not None
                self._config.poke(f"configuration file {path} changed")
        if kernels.is_relevant(settings, path, release=self.core.executor.release):
            assert self._files is not None
            self._files.poke(f"{path} changed")

    def _on_settings(self, settings: Settings) -> None:
        if self._watcher is not None:
            self._watcher.watch(self._watch_dirs(settings))
        for deb in (self._files, self._config):
            if deb is not None:
                deb.delay = settings.reload_debounce
        if self._topology is not None:
            self._topology.set_interval(settings.topology_check_interval)
        self._spawn(self.core.check_target())  # the dump settings may name another target

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        core = self.core
        core.subscribe(self._on_status)
        self.notifier.status("starting: checking the armed image against our record")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: core.config_changed("SIGHUP", request=True))

        # Watch before the first reconcile, so a change during it is not missed.
        settings = core.settings
        self._files = Debouncer(
            loop, settings.reload_debounce, lambda reasons: core.files_changed("; ".join(reasons))
        )
        self._config = Debouncer(
            loop, settings.reload_debounce, lambda reasons: core.config_changed("; ".join(reasons))
        )
        self._watcher = DirectoryWatcher(loop, self._on_path)
        self._watcher.watch(self._watch_dirs(settings))
        core.on_settings(self._on_settings)

        period = watchdog_period()
        if period is not None:
            self._timers.append(PeriodicTimer(loop, period, self._keep_alive))
        if not await self._until_started_or_stopped():
            await self._stop(None)
            return self.exit_code

        handle: ServiceHandle | None = None
        if self.use_bus:
            try:
                # Imported here: the D-Bus stack is only needed when a bus is used.
                from xenkdump.dbus.service import serve  # noqa: PLC0415
            except ImportError as exc:
                raise OperationError(
                    f"D-Bus service unavailable: cannot import xenkdump.dbus.service ({exc})"
                ) from None
            handle = await serve(core, os.environ.get("DBUS_SYSTEM_BUS_ADDRESS"))
        # The dump of the crash before this boot, if any: once the bus can tell of it.
        await core.check_dumps()

        self._topology = PeriodicTimer(
            loop, settings.topology_check_interval, lambda: self._spawn(self._periodic(core))
        )
        # selftest.schedule: runs at its elapses until xenkdumpd stops (_shutdown).
        self._schedule = loop.create_task(core.run_schedule())
        self.notifier.ready(core.status().status_line())
        try:
            if handle is None:
                await self.stop.wait()
            else:
                await self._until_stop_or_bus_lost(handle)
        finally:
            await self._stop(handle)
        return self.exit_code

    async def _stop(self, handle: ServiceHandle | None) -> None:
        self.notifier.stopping()
        log.info("stopping; the crash kernel stays armed")
        self._shutdown()
        if handle is not None:
            await handle.close()
        if not await self.core.close(STOP_GRACE):
            self.abandoned = True
            log.warning(
                "stopping with a load or unload still running after %.0f s; its pending "
                "record and Xen's load/unload parity settle it at the next start",
                STOP_GRACE,
            )

    async def _until_stop_or_bus_lost(self, handle: ServiceHandle) -> None:
        """Wait for SIGTERM; if the bus goes away first, exit non-zero so that systemd
        (Restart=on-failure) starts us again and we re-own the name.  The crash kernel
        stays armed meanwhile."""
        stop: asyncio.Future[object] = asyncio.ensure_future(self.stop.wait())
        # Shielded: cancelling our wait must not cancel the bus's own disconnect future,
        # which close() awaits later.
        lost: asyncio.Future[object] = asyncio.ensure_future(
            asyncio.shield(handle.wait_disconnected())
        )
        done, pending = await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if lost in done and not self.stop.is_set():
            log.error("lost the D-Bus connection; exiting so that systemd restarts xenkdumpd")
            self.exit_code = EXIT_FAILED
            self.notifier.status("failed: lost the D-Bus connection")

    def _shutdown(self) -> None:
        if self._schedule is not None:
            self._schedule.cancel()
        for t in [*self._timers, self._topology]:
            if t is not None:
                t.cancel()
        for d in (self._files, self._config):
            if d is not None:
                d.cancel()
        if self._watcher is not None:
            self._watcher.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    notifier = Notifier()
    try:
        config_path: Path | None = args.config
        if config_path is None and DEFAULT_CONFIG_PATH.exists():
            config_path = DEFAULT_CONFIG_PATH
        settings = load_settings(config_path) if config_path is not None else Settings()
        if config_path is None:
            log.info("no %s: using built-in defaults", DEFAULT_CONFIG_PATH)
        # Whoever can write the state directory chooses where the next load goes.
        check_state_dir(settings.state_dir, create=True)
        hv = open_hypervisor(args.hypervisor)
    except XenkdumpError as exc:
        log.error("cannot start: %s", exc)
        notifier.send(f"STATUS=failed: {exc}")
        return exc.exit_code
    try:
        with hv:
            core = DaemonCore(hv, settings, config_path=config_path)
            daemon = Daemon(core, notifier, use_bus=not args.no_bus)
            runner = asyncio.Runner()
            try:
                code = runner.run(daemon.run())
            finally:
                if not daemon.abandoned:  # closing joins the worker threads
                    runner.close()
            if daemon.abandoned:
                logging.shutdown()
                os._exit(code)  # a worker thread is stuck in a system call: do not join it
            return code
    except XenkdumpError as exc:
        log.error("stopped: %s", exc)
        notifier.send(f"STATUS=failed: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
