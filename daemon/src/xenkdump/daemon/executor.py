"""Carries out the engine's actions through the hypervisor port and the image builder.

Every method here blocks (file reads, hashing, hypercalls): the daemon calls them in a
worker thread (asyncio.to_thread), one at a time (the engine keeps one outstanding).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from xenkdump.advice.crashkernel import Advice
from xenkdump.advice.gather import host_advice, measure
from xenkdump.daemon import kernels
from xenkdump.daemon.engine import Armed, Load, LoadDone, Outcome, RecordCheck, Scope, Start
from xenkdump.errors import InputError, XenkdumpError
from xenkdump.hv.port import E820_RAM, Hypervisor
from xenkdump.image import loader
from xenkdump.image.planner import HostFacts, ImageInputs, required_bytes
from xenkdump.safefile import Limit, read_file
from xenkdump.settings.model import InitrdPolicy, KernelPolicy, Settings
from xenkdump.state.record import Ledger, LoadRecord, RecordStore
from xenkdump.units import size_text

log = logging.getLogger(__name__)


def boot_time() -> float:
    """When this (dom0) system booted, in seconds since the epoch (/proc/stat btime)."""
    try:
        text = read_file(Path("/proc/stat"), "kernel statistics", Limit.PROC).decode("ascii")
    except (InputError, UnicodeDecodeError):
        return 0.0
    for line in text.splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


class Executor:
    def __init__(self, hv: Hypervisor, settings: Settings, *, release: str | None = None) -> None:
        self.hv = hv
        self.settings = settings
        self.release = release
        self.store = RecordStore(settings.state_dir)
        self.record: LoadRecord | None = None  # what is armed after our last action
        self.ledger: Ledger | None = None  # the record and what we know Xen holds
        self.crash_range = hv.crash_range()
        major, minor = hv.xen_version()
        self.xen_version = f"{major}.{minor}{hv.xen_extraversion()}"
        self.advice: Advice | None = None  # crashkernel= advice, after each action
        self.dump_target = ""  # the dump target's last check, "ok: ..." or "failing: ..."
        # time.monotonic() of the running action's last step (read, host, load) or, while
        # it waits for a child job (mkinitramfs), when that job's own timeout ends: what
        # the daemon's watchdog keep-alive checks (progress, not just a live event loop).
        self.progress_at = 0.0
        # Crash-area bytes of the image the newest load read (0: it read none); the
        # advice's measure while nothing is armed with initrd: xenkdump (refresh_advice).
        self.measured = 0

    def set_settings(self, settings: Settings) -> None:
        # The state directory is where our record lives; moving it mid-run would orphan
        # the record, so a change applies at the next start.
        if settings.state_dir != self.settings.state_dir:
            log.warning(
                "state_dir changed to %s: takes effect when xenkdumpd restarts", settings.state_dir
            )
        self.settings = settings

    # ---- start-up: what is armed? ----

    def check_record(self) -> Start:
        """What is armed: our durable record checked against Xen's parity
        (why only the parity: docs/xen-kexec-contract.md §4.1).

        A record older than this boot, missing, unreadable or disagreeing with Xen
        leaves the location of any armed image unknown (state/record.py).
        """
        ledger = loader.recall(self.hv, self.store, crash=self.crash_range, boot_time=boot_time())
        self.ledger = ledger
        k = ledger.knowledge
        self.record = k.armed
        if not k.known:
            return Start(RecordCheck.UNKNOWN, detail=k.state.unknown)
        if k.armed is None:
            return Start(RecordCheck.UNLOADED, detail=k.detail)
        return Start(
            RecordCheck.ARMED, Armed(k.armed.generation, k.armed.half == "whole"), k.detail
        )

    def _ledger(self) -> Ledger:
        if self.ledger is None:
            self.check_record()
        assert self.ledger is not None
        return self.ledger

    @property
    def location_unknown(self) -> str:
        """Why the location of an armed image is unknown ("" when it is known)."""
        return "" if self.ledger is None else self.ledger.knowledge.state.unknown

    # ---- loads ----

    def resolve(self, action: Load) -> tuple[Path, Path | None]:
        files = kernels.resolve(self.settings, release=self.release)
        kernel, initrd = files.kernel, files.initrd
        if action.overrides is not None:
            if action.overrides.kernel:
                kernel = Path(action.overrides.kernel)
                # A one-shot kernel with the auto policy takes its own initrd, if any.
                if action.overrides.initrd is None and self.settings.initrd is InitrdPolicy.AUTO:
                    initrd = kernels.resolve(
                        _with_kernel(self.settings, kernel), release=self.release
                    ).initrd
            if action.overrides.initrd is not None:
                initrd = Path(action.overrides.initrd) if action.overrides.initrd else None
        explicit = action.overrides is not None and action.overrides.initrd is not None
        if self.settings.initrd is InitrdPolicy.XENKDUMP and not explicit:
            initrd = self.crash_initramfs(kernel)
        return kernel, initrd

    def check_target(self) -> str | None:
        """Preflight of the dump target (initrd: xenkdump only): the problem, or None."""
        if self.settings.initrd is not InitrdPolicy.XENKDUMP:
            return None
        from xenkdump.capture import target  # noqa: PLC0415

        dump = self.settings.dump
        ram = sum(e.size for e in self.hv.machine_memory_map() if e.type == E820_RAM)
        try:
            summary = target.preflight(dump, target.estimate_dump_bytes(ram, dump.level))
        except XenkdumpError as exc:
            self.dump_target = f"failing: {exc}"
            return str(exc)
        self.dump_target = f"ok: {summary}"
        log.debug("dump target: %s", summary)
        return None

    def find_new_dump(self) -> tuple[dict[str, object] | None, bool]:
        """(the newest dump at the target as a LastDump dictionary or None, whether it is
        one xenkdumpd has not reported before: e.g. the dump of the crash before this boot).

        What was reported is kept in the crash initramfs's directory (``last-dump``), so
        it survives reboots; targets not reachable from dom0 give (None, False).
        """
        if self.settings.initrd is not InitrdPolicy.XENKDUMP:
            return None, False
        from xenkdump.capture import dumps, initramfs  # noqa: PLC0415

        try:
            found = dumps.list_dumps(dumps.dump_directory(self.settings.dump))
        except (XenkdumpError, OSError):
            return None, False
        if not found:
            return None, False
        newest = found[-1]
        doc: dict[str, object] = {
            "Path": str(newest.path),
            "Time": newest.crash_time,
            "Bytes": newest.bytes,
            "Result": newest.result,
        }
        seen = initramfs.DEFAULT_DIR / "last-dump"
        try:
            known = seen.read_text(encoding="utf-8").strip()
        except OSError:
            known = ""
        if known == str(newest.path):
            return doc, False
        try:
            seen.parent.mkdir(parents=True, exist_ok=True)
            tmp = seen.with_name(".last-dump.tmp")
            tmp.write_text(str(newest.path) + "\n", encoding="utf-8")
            tmp.replace(seen)
        except OSError as exc:
            log.warning("%s: cannot record the dump reported: %s", seen, exc.strerror or exc)
        return doc, True

    def crash_initramfs(self, kernel: Path) -> Path:
        """xenkdump's own crash initramfs for ``kernel``, rebuilt when its content changed.

        InitramfsError (an OperationError) when the build fails: the reload fails, the
        armed image stays and the state is degraded with that error.
        """
        from xenkdump.capture import initramfs  # noqa: PLC0415 (only with initrd: xenkdump)

        built = initramfs.for_kernel(
            self.settings.dump, self.hv, kernel, self.settings.boot_dir, watch=self._child_job
        )
        if built.rebuilt:
            log.info(
                "crash initramfs rebuilt: %s (%s, %.1f s)",
                built.path,
                size_text(built.size),
                built.seconds,
            )
        return built.path

    @contextlib.contextmanager
    def _child_job(self, timeout: float) -> Iterator[None]:
        """A child job the load waits for is progress while it runs, up to its timeout
        (a crash initramfs build takes minutes on a slow host: docs/capture.md §8)."""
        self.progress_at = time.monotonic() + timeout
        try:
            yield
        finally:
            self.progress_at = time.monotonic()

    def read_inputs(self, action: Load) -> ImageInputs:
        kernel, initrd = self.resolve(action)
        c = self.settings.cmdline
        base = action.overrides.cmdline if action.overrides and action.overrides.cmdline else c.base
        return loader.read_inputs(kernel, initrd, cmdline=base, append=c.append, remove=c.remove)

    def gather_host(self) -> HostFacts:
        return loader.gather_host(self.hv)

    def host_fingerprint(self) -> str:
        return str(self.gather_host().fingerprint())

    def load(self, action: Load) -> LoadDone:
        """Carry out ``action``; raise the project's errors when it fails."""
        started = self.progress_at = time.monotonic()
        self.measured = 0
        ledger = self._ledger()
        current = ledger.knowledge.armed
        inputs = None
        if action.scope is Scope.HOST and action.overrides is None and current is not None:
            inputs = self.armed_inputs(current)  # only the ELF core header is to change
        if inputs is None:
            inputs = self.read_inputs(action)
        self.progress_at = time.monotonic()
        host = self.gather_host()
        self.progress_at = time.monotonic()
        with contextlib.suppress(XenkdumpError):  # the load itself says what is wrong
            self.measured = required_bytes(inputs, host)
        if (
            action.scope is not Scope.FORCE
            and current is not None
            and self.matches(current, inputs, host)
        ):
            self.record = current
            return LoadDone(Outcome.SKIPPED, Armed(current.generation, current.half == "whole"))
        try:
            rec = loader.load(self.hv, inputs, host, ledger, reason=action.reason)
        finally:
            self.record = ledger.knowledge.armed
        took = (time.monotonic() - started) * 1000
        summary = f"{Path(rec.kernel).name} into the {rec.half} half in {took:.0f} ms"
        return LoadDone(Outcome.LOADED, Armed(rec.generation, rec.half == "whole"), summary)

    def armed_inputs(self, rec: LoadRecord) -> ImageInputs | None:
        """The armed image's own files, read again for a header-only rebuild.

        xenkdumpd keeps no kernel or initrd bytes between loads (its idle memory stays
        small whatever the initrd's size): a rebuild for a host change re-reads the files
        the record names and checks their digests.  None when a file changed or is gone
        since it was loaded: then the configuration is resolved again (a full reload).
        """
        try:
            inputs = loader.read_inputs(
                Path(rec.kernel),
                Path(rec.initrd) if rec.initrd else None,
                cmdline=rec.user_cmdline,
            )
        except XenkdumpError as exc:
            log.info("header-only rebuild: %s; reloading from the configuration", exc)
            return None
        if (inputs.kernel_sha256, inputs.initrd_sha256) != (rec.kernel_sha256, rec.initrd_sha256):
            log.info(
                "header-only rebuild: %s or its initrd changed since generation %d was "
                "loaded; reloading from the configuration",
                rec.kernel,
                rec.generation,
            )
            return None
        return replace(inputs, cmdline=rec.user_cmdline)

    @staticmethod
    def matches(rec: LoadRecord, inputs: ImageInputs, host: HostFacts) -> bool:
        """True when ``rec`` is what loading ``inputs`` on ``host`` would arm."""
        return (
            rec.kernel == str(inputs.kernel_path)
            and rec.kernel_sha256 == inputs.kernel_sha256
            and (rec.initrd or None) == (str(inputs.initrd_path) if inputs.initrd_path else None)
            and rec.initrd_sha256 == inputs.initrd_sha256
            and rec.user_cmdline == inputs.cmdline
            and rec.host_fingerprint == host.fingerprint()
        )

    def after_failure(self) -> bool:
        """After a failed action: is an image still armed?  (What we know, not a re-read:
        the record on disk may lag behind when it could not be written.)"""
        self.record = None if self.ledger is None else self.ledger.knowledge.armed
        return self.record is not None

    def refresh_advice(self) -> None:
        """Judge Xen's crash area against the armed image (or the configured one)."""
        rec = self.record
        if rec is not None:
            required = rec.required_bytes
        elif self.settings.initrd is InitrdPolicy.XENKDUMP:
            # measure() would build the crash initramfs: again, after a load whose
            # build failed.  What the newest load read, if anything.
            required = self.measured
        else:
            required = measure(self.hv, self.settings)
        try:
            self.advice = host_advice(self.hv, required)
        except XenkdumpError as exc:
            log.warning("cannot judge the crash area: %s", exc)
            self.advice = None

    def unload(self) -> None:
        ledger = self._ledger()
        try:
            loader.unload(self.hv, ledger)
        finally:
            self.record = ledger.knowledge.armed


def _with_kernel(settings: Settings, kernel: Path) -> Settings:
    return replace(settings, kernel=KernelPolicy.PATH, kernel_path=kernel)
