"""xenkdumpd's self-tests: one at a time, each in a thread of its own, reported on the loop.

The thread that runs a job starts its VM and lives as long as it (vm.py: the VM's
death signal follows that thread), so the VM dies with xenkdumpd even on kill -9.
Progress and the end are handed back to the asyncio loop, where listeners (the
D-Bus service) and ``on_change`` (the status snapshot) run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xenkdump.errors import BusyError, InputError
from xenkdump.selftest.job import Job, Options, Result
from xenkdump.selftest.plan import Image
from xenkdump.selftest.stages import Stage

log = logging.getLogger("xenkdump.selftest")


@dataclass(frozen=True)
class Progress:
    id: str
    stage: str
    fraction: float


@dataclass(frozen=True)
class Finished:
    id: str
    passed: bool
    result: tuple[tuple[str, Any], ...]  # Result.to_status()


Listener = Callable[[Progress | Finished], None]
JobFactory = Callable[..., Job]


class SelfTests:
    def __init__(self, on_change: Callable[[], None], job_factory: JobFactory = Job) -> None:
        self._on_change = on_change
        self._factory = job_factory
        self._listeners: list[Listener] = []
        self._job: Job | None = None
        self._thread: threading.Thread | None = None
        self.last: Result | None = None
        self._current: tuple[tuple[str, Any], ...] = ()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def running_id(self) -> str:
        return self._job.id if self._job is not None else ""

    def last_status(self) -> tuple[tuple[str, Any], ...]:
        return self.last.to_status() if self.last is not None else ()

    def current_status(self) -> tuple[tuple[str, Any], ...]:
        """The running self-test as CurrentSelfTest's pairs; () when none runs."""
        return self._current if self._job is not None else ()

    def _set_current(self, job: Job, stage: str, fraction: float) -> None:
        values = {"Id": job.id, "Level": str(job.level), "Stage": stage}
        self._current = tuple(sorted({**values, "Fraction": float(fraction)}.items()))
        self._on_change()

    async def start(self, image: Image, options: Options) -> str:
        """Check, then start a run; its id at once.  BusyError while one runs."""
        if self._job is not None:
            raise BusyError(f"a self-test is already running (id {self._job.id})")
        loop = asyncio.get_running_loop()
        holder: list[Job] = []

        def progress(stage: Stage, fraction: float) -> None:
            loop.call_soon_threadsafe(self._progress, holder[0].id, stage, fraction)

        job = self._factory(image, options, progress=progress)
        holder.append(job)
        self._job = job  # Busy from here, also while the checks below run
        try:
            await asyncio.to_thread(job.preflight)  # one-line refusals, nothing started
        except BaseException:
            self._job = None
            raise
        thread = threading.Thread(
            target=self._run, args=(job, loop), name=f"selftest-{job.id}", daemon=True
        )
        self._thread = thread
        self._set_current(job, "", 0.0)
        thread.start()
        log.info("self-test %s started (%s level)", job.id, job.level)
        return job.id

    def cancel(self, test_id: str) -> None:
        if self._job is None or self._job.id != test_id:
            running = f" (the running one is {self._job.id})" if self._job is not None else ""
            raise InputError(f"CancelSelfTest: no self-test {test_id!r} is running{running}")
        log.info("self-test %s: cancel requested", test_id)
        self._job.cancel()

    async def close(self) -> None:
        """Cancel a running self-test and wait until its VM is gone."""
        job, thread = self._job, self._thread
        if job is not None:
            job.cancel()
        if thread is not None:
            await asyncio.to_thread(thread.join)

    # ---- the job's thread, then the loop ----

    def _run(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        try:
            result = job.run()
        except Exception as exc:  # a bug: the run still ends, with the reason
            log.exception("self-test %s: internal error", job.id)
            result = Result(job.id, str(job.level), time.time(), reason=repr(exc))
        with contextlib.suppress(RuntimeError):  # the loop is closed: xenkdumpd exits
            loop.call_soon_threadsafe(self._finished, job, result)

    def _progress(self, test_id: str, stage: Stage, fraction: float) -> None:
        if self._job is not None and self._job.id == test_id:
            self._set_current(self._job, stage.value, fraction)
        self._emit(Progress(test_id, stage.value, fraction))

    def _finished(self, job: Job, result: Result) -> None:
        if self._job is job:
            self._job = None
            self._thread = None
            self._current = ()
        self.last = result
        log.log(logging.INFO if result.passed else logging.WARNING, "%s", result.summary())
        self._on_change()
        self._emit(Finished(result.id, result.passed, result.to_status()))

    def _emit(self, event: Progress | Finished) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("self-test listener %r failed", listener)
