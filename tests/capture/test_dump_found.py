"""After a reboot xenkdumpd finds the dump of the crash: it logs it once (its own journald
MESSAGE_ID), tells the DumpFound listeners and exposes it as LastDump and DumpTarget."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import pytest

from xenkdump.capture import initramfs
from xenkdump.daemon.core import DaemonCore
from xenkdump.daemon.notify import MESSAGE_ID_DUMP_FOUND
from xenkdump.hv.sim import SimulatedHypervisor
from xenkdump.settings.model import DumpSettings, InitrdPolicy, Settings


def saved(target: Path, name: str, result: str = "complete") -> Path:
    d = target / name
    d.mkdir()
    (d / "metadata.json").write_text(json.dumps({"result": result}))
    (d / "vmcore").write_bytes(b"v" * 100)
    return d


def test_a_new_dump_is_logged_once_signalled_and_exposed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(initramfs, "DEFAULT_DIR", tmp_path / "lib")  # where "seen" is kept
    target = tmp_path / "crash"
    target.mkdir()
    saved(target, "xen1-20261201T000000Z")
    newest = saved(target, "xen1-20261202T101500Z")
    hv = SimulatedHypervisor.open(tmp_path / "host.yaml")
    settings = Settings(
        initrd=InitrdPolicy.XENKDUMP, dump=DumpSettings(path=target), state_dir=tmp_path / "st"
    )
    found: list[Mapping[str, object]] = []

    async def checks() -> list[tuple[str, str, dict[str, object]]]:
        core = DaemonCore(hv, settings)
        core.on_dump_found(found.append)
        await core.check_target()
        await core.check_dumps()
        first = core.status()
        await core.check_dumps()  # a restart or the periodic check: not new any more
        second = core.status()
        late = saved(target, "xen1-20261203T080000Z", "failed")
        await core.check_dumps()
        return [
            (s.dump_target, str(dict(s.last_dump).get("Path")), dict(s.last_dump))
            for s in (first, second, core.status())
        ] + [("", str(late), {})]

    with caplog.at_level(logging.INFO, logger="xenkdump"):
        rows = asyncio.run(checks())
    first, second, third, late = rows
    assert first[0].startswith(f"ok: {target}: writable")
    assert first[1] == str(newest) and first[2]["Result"] == "complete"
    assert int(str(first[2]["Bytes"])) >= 100
    assert first[2]["Time"] == 1_796_206_500  # 2026-12-02 10:15:00 UTC
    assert second[1] == str(newest)
    assert third[1] == late[1] and third[2]["Result"] == "failed"
    assert [f["Path"] for f in found] == [str(newest), late[1]]  # once each
    logged = [r for r in caplog.records if r.getMessage().startswith("crash dump found")]
    assert [r.getMessage().split()[3] for r in logged] == [str(newest), late[1]]
    assert all(getattr(r, "MESSAGE_ID", None) == MESSAGE_ID_DUMP_FOUND for r in logged)
    # The next boot's daemon does not report them again.
    caplog.clear()

    async def restarted() -> None:
        core = DaemonCore(hv, settings)
        core.on_dump_found(found.append)
        await core.check_dumps()

    asyncio.run(restarted())
    assert len(found) == 2 and not [r for r in caplog.records if "dump found" in r.getMessage()]
