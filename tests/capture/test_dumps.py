"""xenkdumpctl dumps: the dump directories at the target, with their results."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

XENKDUMPCTL = [sys.executable, "-m", "xenkdump.cli.ctl"]


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*XENKDUMPCTL, *args], capture_output=True, text=True, timeout=60, check=False
    )


def make(target: Path, name: str, meta: Mapping[str, object] | None, vmcore: int = 0) -> Path:
    d = target / name
    d.mkdir()
    if meta is not None:
        (d / "metadata.json").write_text(json.dumps(meta))
    (d / "vmcore").write_bytes(b"v" * vmcore)
    return d


def test_lists_complete_failed_incomplete_and_unknown_oldest_first(tmp_path: Path) -> None:
    target = tmp_path / "crash"
    target.mkdir()
    good = {
        "result": "complete",
        "vmcore": {"how": "makedumpfile -X -d 31 -c"},
        "files": {"vmcore": {"bytes": 1000}},
    }
    make(target, "xen1-20261202T101500Z", good, 1000)
    make(target, "xen1-20261201T090000Z", {"result": "failed", "vmcore": {"how": "none"}})
    make(target, ".incoming-xen1-20261203T000000Z", {"result": "complete"})
    make(target, "xen1-20261130T000000Z", None)  # metadata lost
    (target / "notes").mkdir()  # not a dump
    config = tmp_path / "x.yaml"
    config.write_text(f"dump:\n  path: {target}\n")
    proc = ctl("dumps", "--config", str(config), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(Path(r["path"]).name, r["result"]) for r in rows] == [
        ("xen1-20261130T000000Z", "unknown"),
        ("xen1-20261201T090000Z", "failed"),
        ("xen1-20261202T101500Z", "complete"),
        (".incoming-xen1-20261203T000000Z", "incomplete"),
    ]
    assert rows[2]["vmcore_bytes"] == 1000 and rows[2]["how"] == "makedumpfile -X -d 31 -c"
    assert rows[2]["time_text"] == "2026-12-02 10:15:00 UTC" and rows[2]["host"] == "xen1"
    text = ctl("dumps", "--config", str(config)).stdout
    assert "2026-12-02 10:15:00  complete" in text and "incomplete" in text


def test_ssh_and_unmounted_targets_say_where_the_dumps_are(tmp_path: Path) -> None:
    config = tmp_path / "x.yaml"
    config.write_text("dump:\n  target: ssh\n  ssh: dumper@backup\n")
    proc = ctl("dumps", "--config", str(config))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "xenkdumpctl: dump target ssh dumper@backup:/var/crash: the dumps are on the SSH "
        "server (list them there)"
    )
    config.write_text("dump:\n  device: LABEL=no-such-label-xk\n")
    proc = ctl("dumps", "--config", str(config))
    assert proc.returncode == 1 and "not mounted on dom0" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
