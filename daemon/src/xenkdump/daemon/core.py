"""DaemonCore: the running daemon's state and requests, between the engine and its callers.

Callers (the D-Bus service, signal handlers, watchers) use only this class.  It feeds
events to the sans-I/O engine (engine.py), runs the Load/Unload actions the engine
returns in a worker thread through the executor, feeds their results back, and
publishes a Status (xenkdump.status) after every change.  Everything here runs on the asyncio
loop; ``status()`` never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from xenkdump import __version__
from xenkdump.daemon import engine as ev
from xenkdump.daemon.executor import Executor
from xenkdump.daemon.memory import release_free_memory
from xenkdump.daemon.notify import (
    MESSAGE_ID_DUMP_FOUND,
    MESSAGE_ID_LOAD_FAILED,
    MESSAGE_ID_LOADED,
    MESSAGE_ID_UNLOAD_FAILED,
    MESSAGE_ID_UNLOADED,
)
from xenkdump.errors import BusyError, ConfigError, InputError, OperationError, XenkdumpError
from xenkdump.hv.port import Hypervisor
from xenkdump.metrics.textfile import Counters
from xenkdump.metrics.textfile import render as metrics_text
from xenkdump.metrics.textfile import write as metrics_write
from xenkdump.requests import ReloadOptions, SelfTestOptions, UnloadOptions
from xenkdump.settings.load import load_settings
from xenkdump.settings.model import Settings
from xenkdump.status import State, Status, build
from xenkdump.units import MIB

log = logging.getLogger("xenkdump.daemon")

__all__ = ["BusyError", "DaemonCore", "State"]

Subscriber = Callable[[Status, Status], None]

_LOG_LEVEL = {
    ev.LogKind.LOADED: (logging.INFO, MESSAGE_ID_LOADED),
    ev.LogKind.LOAD_FAILED: (logging.ERROR, MESSAGE_ID_LOAD_FAILED),
    ev.LogKind.UNLOAD_FAILED: (logging.ERROR, MESSAGE_ID_UNLOAD_FAILED),
    ev.LogKind.UNLOADED: (logging.WARNING, MESSAGE_ID_UNLOADED),
    ev.LogKind.INFO: (logging.INFO, None),
    ev.LogKind.WARNING: (logging.WARNING, None),
}


class DaemonCore:
    def __init__(
        self,
        hv: Hypervisor,
        settings: Settings,
        *,
        config_path: Path | None = None,
        release: str | None = None,
    ) -> None:
        self.hv = hv
        self.settings = settings
        self.config_path = config_path
        self.engine = ev.Engine()
        self.executor = Executor(hv, settings, release=release)
        self._subscribers: list[Subscriber] = []
        self._settings_listeners: list[Callable[[Settings], None]] = []
        self._tickets = itertools.count(1)
        self._waiters: dict[int, asyncio.Future[Status]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._work_started: float | None = None  # monotonic start of the running action
        self._idle = asyncio.Event()
        self._idle.set()
        self._host_seen = ""
        self._last_dump: tuple[tuple[str, object], ...] = ()
        self._dump_listeners: list[Callable[[Mapping[str, object]], None]] = []
        # Imported here: the self-test's modules are not needed until a daemon runs.
        from xenkdump.selftest import launch  # noqa: PLC0415
        from xenkdump.selftest.runner import SelfTests  # noqa: PLC0415

        self.selftests = SelfTests(on_change=self._publish)
        # Under systemd a staging VM is a transient unit of its own (selftest/launch.py).
        self.selftest_launch = launch.detect()
        self._next_self_test = 0.0  # selftest.schedule's next elapse (epoch s), 0: none
        self._schedule_changed = asyncio.Event()
        self.counters = Counters()
        self._metrics_written: tuple[Path, str] | None = None
        self._snapshot = self._make_snapshot()

    # ---- the API the D-Bus service uses ----

    def status(self) -> Status:
        return self._snapshot

    def subscribe(self, callback: Subscriber) -> None:
        """``callback(old, new)`` after every change of the snapshot."""
        self._subscribers.append(callback)

    async def reload(self, options: ReloadOptions) -> Status:
        """Re-read the configuration, then load if anything changed (or ``force``).

        Raises ConfigError (the file is invalid: nothing changes), the builder's
        ImageError/PlanError, HypervisorError, or BusyError when work is running and
        ``wait`` is False.
        """
        reason = options.reason or "reload requested"
        overrides = ev.Overrides(options.kernel, options.initrd, options.cmdline)
        over = None if overrides == ev.Overrides() else overrides
        if not options.wait and self.engine.busy is not None:
            raise BusyError(f"a {type(self.engine.busy).__name__.lower()} is already running")
        if self._reread_config():
            self._feed(ev.ConfigAccepted())
        ticket = next(self._tickets)
        future: asyncio.Future[Status] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = future
        self._feed(ev.ReloadRequested(reason, force=options.force, overrides=over, ticket=ticket))
        return await future

    async def unload(self, options: UnloadOptions) -> Status:
        """Unload the crash image (the daemon then stays unloaded until a Reload)."""
        if not options.wait and self.engine.busy is not None:
            raise BusyError(f"a {type(self.engine.busy).__name__.lower()} is already running")
        ticket = next(self._tickets)
        future: asyncio.Future[Status] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = future
        self._feed(ev.UnloadRequested("unload requested", ticket=ticket))
        return await future

    async def self_test(self, options: SelfTestOptions) -> str:
        """Start a self-test of the armed image; its id.  InputError when nothing is armed
        or an option is wrong, BusyError while one runs, OperationError when refused."""
        from xenkdump.selftest.job import Options  # noqa: PLC0415
        from xenkdump.selftest.launch import work_dir  # noqa: PLC0415
        from xenkdump.selftest.plan import Image  # noqa: PLC0415
        from xenkdump.selftest.stages import Level  # noqa: PLC0415

        conf = self.settings.selftest
        level = options.level or conf.level
        run = Options(
            level=Level(level) if level else None,
            timeout=float(options.timeout or conf.timeout),
            xen=options.xen or str(conf.xen or ""),
            dom0_kernel=options.dom0_kernel or str(conf.dom0_kernel or ""),
            running_xen=self.executor.xen_version,  # the simulator models one too
            boot_dir=self.settings.boot_dir,
            memory_limit=conf.memory_limit_mib * MIB,
            launch=self.selftest_launch,
            work_dir=work_dir(self.selftest_launch),
        )
        snap = self._snapshot
        if not snap.crash_kernel or not snap.crash_region[1]:
            raise InputError(
                f"SelfTest: no crash image is armed ({snap.state}: {snap.state_reason}); "
                "there is nothing to test"
            )
        image = Image(
            kernel=snap.crash_kernel,
            initrd=snap.initrd,
            cmdline=snap.command_line,
            crash_size=snap.crash_region[1],
            image_sha256=snap.image_sha256,
            crash_addr=snap.crash_region[0],
        )
        return await self.selftests.start(image, run)

    def _self_test_after_load(self) -> None:
        """selftest.after_reload: a run of the image just armed (a refusal is logged)."""

        async def run() -> None:
            try:
                test_id = await self.self_test(SelfTestOptions())
            except XenkdumpError as exc:
                log.warning("self-test after the load not started: %s", exc)
                return
            log.info("self-test %s of the new image started (selftest.after_reload)", test_id)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def cancel_self_test(self, test_id: str) -> None:
        self.selftests.cancel(test_id)

    async def run_schedule(self) -> None:
        """selftest.schedule: a self-test of the armed image at each elapse, skipped with a
        log line while one runs or when nothing is armed (selftest/schedule.py decides)."""
        from xenkdump.selftest import schedule as sch  # noqa: PLC0415

        expression: str | None = None
        next_at: float | None = None
        while True:
            now = time.time()
            if self.settings.selftest.schedule != expression:
                expression = self.settings.selftest.schedule
                next_at = await self._next_elapse(expression, now)
            decision = sch.decide(
                now,
                next_at,
                running=self.selftests.running_id,
                armed=bool(self._snapshot.crash_kernel),
            )
            if isinstance(decision, sch.Wait):
                self._schedule_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._schedule_changed.wait(), decision.seconds)
                continue
            assert next_at is not None
            if isinstance(decision, sch.Skip):
                log.info("scheduled self-test (%s) skipped: %s", expression, decision.reason)
            else:
                try:
                    test_id = await self.self_test(SelfTestOptions())
                    log.info("self-test %s started (selftest.schedule: %s)", test_id, expression)
                except XenkdumpError as exc:
                    log.warning("scheduled self-test not started: %s", exc)
            next_at = await self._next_elapse(expression, sch.base_after(next_at, now))

    async def _next_elapse(self, expression: str, after: float) -> float | None:
        """The schedule's next elapse after ``after`` (None: off, never, or not computable)."""
        from xenkdump.selftest import schedule as sch  # noqa: PLC0415

        found: float | None = None
        if expression != sch.OFF:
            try:
                found = (await asyncio.to_thread(sch.calendar, expression, after)).next_at
            except XenkdumpError as exc:
                log.warning("selftest.schedule %r: no next run: %s", expression, exc)
        self._next_self_test = found or 0.0
        self._publish()
        return found

    # ---- what the daemon's own watchers call ----

    async def start(self) -> Status:
        """The first reconcile: check our record against Xen, adopt or load; wait for it."""
        from xenkdump.selftest.launch import describe, work_dir  # noqa: PLC0415
        from xenkdump.selftest.vm import stop_leftovers  # noqa: PLC0415

        launch = self.selftest_launch
        log.info("self-test VMs run %s", describe(launch))
        await asyncio.to_thread(stop_leftovers, launch, work_dir(launch))
        event = await asyncio.to_thread(self.executor.check_record)
        await asyncio.to_thread(self.executor.refresh_advice)
        log.info(
            "start-up: record %s%s",
            event.record.value,
            f" ({event.detail})" if event.detail else "",
        )
        self._feed(event)
        await self.wait_idle()
        rec = self.executor.record
        self._host_seen = rec.host_fingerprint if rec is not None else ""
        return self._snapshot

    async def wait_idle(self) -> None:
        while self.engine.busy is not None or self._tasks:
            self._idle.clear()
            await self._idle.wait()

    def files_changed(self, reason: str) -> None:
        self._feed(ev.Changed(ev.Change.FILES, reason))

    def config_changed(self, reason: str, *, request: bool = False) -> None:
        """The config file changed on disk (or SIGHUP, ``request``): re-read it.

        An accepted file that differs reloads when the inputs changed; a rejected one
        keeps the old settings and the image.  SIGHUP also re-checks the files.
        """
        try:
            changed = self._reread_config()
        except ConfigError:
            return
        if changed:
            self._feed(ev.Changed(ev.Change.CONFIG, reason))
        elif request:
            self._feed(ev.ReloadRequested(reason))

    async def check_host(self) -> None:
        """Compare Xen's CPUs and memory map with the last seen fingerprint.

        What is compared: docs/xen-kexec-contract.md §2.8, §2.9.
        """
        if self.engine.busy is not None or self.engine.starting:
            return  # the running load gathers the host itself
        try:
            fingerprint = await asyncio.to_thread(self.executor.host_fingerprint)
        except XenkdumpError as exc:
            log.warning("host topology check failed: %s", exc)
            return
        if fingerprint != self._host_seen:
            old, self._host_seen = self._host_seen, fingerprint
            self._feed(
                ev.Changed(
                    ev.Change.HOST,
                    f"host CPUs or memory map changed ({old[:12]} -> {fingerprint[:12]})",
                )
            )

    async def check_target(self) -> None:
        """Preflight of the dump target (reachable, writable, room for a dump): a
        failing target makes the state degraded, naming it; the image stays armed."""
        problem = await asyncio.to_thread(self.executor.check_target)
        self._feed(ev.TargetChecked(problem))

    async def check_dumps(self) -> None:
        """Look for a new dump at the target: log it (its own MESSAGE_ID), tell the
        DumpFound listeners and expose it as LastDump."""
        newest, new = await asyncio.to_thread(self.executor.find_new_dump)
        self._last_dump = tuple(sorted(newest.items())) if newest else ()
        if newest is not None and new:
            log.warning(
                "crash dump found: %s (%s, %d bytes)",
                newest["Path"],
                newest["Result"],
                newest["Bytes"],
                extra={"MESSAGE_ID": MESSAGE_ID_DUMP_FOUND},
            )
            for callback in list(self._dump_listeners):
                callback(newest)
        self._publish()

    def on_dump_found(self, callback: Callable[[Mapping[str, object]], None]) -> None:
        """``callback(dump)`` (the LastDump dictionary) when a new dump is found."""
        self._dump_listeners.append(callback)

    def on_settings(self, callback: Callable[[Settings], None]) -> None:
        """``callback(settings)`` whenever a new configuration is accepted."""
        self._settings_listeners.append(callback)

    async def close(self, grace: float | None = None) -> bool:
        """Wait for running work, at most ``grace`` seconds (None: for ever).

        False when work is still running: abandoning it is safe, because every
        hypercall is recorded as pending first and Xen's parity settles it at the
        next start (docs/record-safety.md §2.2).
        """
        await self.selftests.close()  # cancelled; its VM is destroyed
        try:
            await asyncio.wait_for(self.wait_idle(), grace)
        except TimeoutError:
            return False
        return True

    def progress_age(self) -> float:
        """Seconds since the running load or unload last made progress (0.0 when idle or
        while it waits for a child job within that job's timeout, executor.progress_at)."""
        started = self._work_started
        if started is None:
            return 0.0
        return max(0.0, time.monotonic() - max(started, self.executor.progress_at))

    # ---- internals ----

    def _reread_config(self) -> bool:
        """Re-read the config files; True if accepted and different (or healing a rejection).

        A rejected file raises ConfigError after telling the engine; the old settings stay.
        """
        if self.config_path is None:
            return False
        try:
            new = load_settings(self.config_path)
        except ConfigError as exc:
            self._feed(ev.ConfigRejected(str(exc)))
            raise
        healed = self.engine.config_error is not None
        same = new.digest == self.settings.digest
        self.settings = new  # the same values may now come from other files
        self._schedule_changed.set()
        if same:
            return healed
        self.executor.set_settings(new)
        for callback in self._settings_listeners:
            callback(new)
        files = ", ".join(str(p) for p in new.sources)
        log.info("configuration accepted from %s (sha256 %s)", files, new.digest[:12])
        return True

    def _feed(self, event: ev.Event) -> None:
        self._count(event)
        for action in self.engine.handle(event):
            if isinstance(action, ev.Log):
                level, message_id = _LOG_LEVEL[action.kind]
                extra = {"MESSAGE_ID": message_id} if message_id is not None else None
                log.log(level, "%s", action.message, extra=extra)
            else:
                task = asyncio.get_running_loop().create_task(self._run(action))
                self._tasks.add(task)
                task.add_done_callback(self._task_done)
        self._publish()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._tasks and self.engine.busy is None:
            self._idle.set()

    async def _run(self, action: ev.Load | ev.Unload) -> None:
        error: BaseException | None = None
        result: ev.Event
        self._work_started = time.monotonic()
        try:
            if isinstance(action, ev.Load):
                result = await asyncio.to_thread(self.executor.load, action)
            else:
                await asyncio.to_thread(self.executor.unload)
                result = ev.UnloadDone()
        except XenkdumpError as exc:
            error = exc
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            error = InputError(f"{where}{exc.strerror or exc}")
        except Exception as exc:  # a bug: report it, keep the daemon and the image
            log.exception("internal error while running %s", action)
            error = OperationError(f"internal error: {exc!r}")
        self._work_started = None
        if error is not None:
            if isinstance(action, ev.Load):
                armed = self.executor.after_failure()
                result = ev.LoadFailed(
                    str(error), armed_after=armed, unknown_after=self.executor.location_unknown
                )
            else:
                armed = self.executor.after_failure()
                result = ev.UnloadFailed(
                    str(error), armed_after=armed, unknown_after=self.executor.location_unknown
                )
        await asyncio.to_thread(self.executor.refresh_advice)
        self._feed(result)
        if isinstance(action, ev.Load) and error is None and self.settings.selftest.after_reload:
            self._self_test_after_load()
        await asyncio.to_thread(release_free_memory)  # the image's bytes are gone now
        for ticket in action.tickets:
            future = self._waiters.pop(ticket, None)
            if future is None or future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(self._snapshot)

    def _make_snapshot(self) -> Status:
        return build(
            state=self.engine.state,
            state_reason=self.engine.state_reason,
            record=self.executor.record,
            crash=self.executor.crash_range,
            xen_version=self.executor.xen_version,
            daemon_version=__version__,
            config_digest=self.settings.digest,
            config_files=tuple(str(p) for p in self.settings.sources),
            advice=self.executor.advice,
            last_error=self.engine.last_error,
            last_reason=self.engine.last_reason,
            last_self_test=self.selftests.last_status(),
            current_self_test=self.selftests.current_status(),
            dump_target=self.executor.dump_target,
            last_dump=self._last_dump,
            self_test_schedule=self.settings.selftest.schedule,
            next_self_test=int(self._next_self_test * 1_000_000),
        )

    def _count(self, event: ev.Event) -> None:
        c = self.counters
        if isinstance(event, ev.LoadDone) and event.outcome is ev.Outcome.LOADED:
            c = replace(c, loads=c.loads + 1)
        elif isinstance(event, ev.LoadFailed):
            c = replace(c, load_failures=c.load_failures + 1)
        elif isinstance(event, ev.ConfigRejected):
            c = replace(c, config_rejections=c.config_rejections + 1)
        elif isinstance(event, ev.UnloadDone):
            c = replace(c, unloads=c.unloads + 1)
        self.counters = c

    def _write_metrics(self, status: Status) -> None:
        """Rewrite the metrics file (metrics.textfile) when what it says changed."""
        path = self.settings.metrics_textfile
        if path is None:
            return
        advice = self.executor.advice
        text = metrics_text(status, self.counters, advice.recommended if advice else 0)
        if (path, text) == self._metrics_written:
            return
        try:
            metrics_write(path, text)
        except XenkdumpError as exc:
            log.warning("metrics file not written: %s", exc)
            return
        self._metrics_written = (path, text)

    def _publish(self) -> None:
        new = self._make_snapshot()
        old, self._snapshot = self._snapshot, new
        self._write_metrics(new)
        if new == old:
            return
        for callback in list(self._subscribers):
            try:
                callback(old, new)
            except Exception:
                log.exception("status subscriber %r failed", callback)
