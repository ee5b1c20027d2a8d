"""The metrics file: Prometheus text format, parsed back and linted by promtool."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from xenkdump.metrics.textfile import Counters, render, write
from xenkdump.status import Status

CACHE = Path(os.environ.get("XENKDUMP_CACHE", "/var/cache/xenkdump-tests"))
PROMTOOL = CACHE / "promtool" / "promtool"

LOADED = Status(
    state="loaded",
    state_reason="crash kernel armed (generation 3)",
    generation=3,
    daemon_version="0.1.0",
    xen_version="4.17.7",
    crash_region=(0xAE6FF000, 256 << 20),
    crash_region_used=(0xAE6FF000, 128 << 20),
    required_bytes=70 << 20,
    loaded_at=1_700_000_000_250_000,
    crash_area_verdict="ok",
)


def families(text: str) -> list[Any]:
    """prometheus_client's own parser of the text format (untyped upstream)."""
    return list(text_string_to_metric_families(text))  # type: ignore[no-untyped-call]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in families(text):
        assert family.name.startswith("xenkdump_")
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_every_value_reads_back() -> None:
    text = render(LOADED, Counters(loads=2, load_failures=1, config_rejections=4), 256 << 20)
    got = samples(text)
    assert got[("xenkdump_armed", ())] == 1
    assert got[("xenkdump_state", (("state", "loaded"),))] == 1
    assert got[("xenkdump_state", (("state", "degraded"),))] == 0
    assert got[("xenkdump_crash_area_bytes", ())] == 256 << 20
    assert got[("xenkdump_crash_area_required_bytes", ())] == 70 << 20
    assert got[("xenkdump_crash_area_recommended_bytes", ())] == 256 << 20
    assert got[("xenkdump_crash_area_verdict", (("verdict", "ok"),))] == 1
    assert got[("xenkdump_crash_area_verdict", (("verdict", "missing"),))] == 0
    assert got[("xenkdump_loads_total", ())] == 2
    assert got[("xenkdump_load_failures_total", ())] == 1
    assert got[("xenkdump_config_rejections_total", ())] == 4
    assert got[("xenkdump_last_load_timestamp_seconds", ())] == 1_700_000_000.25
    assert got[("xenkdump_info", (("version", "0.1.0"), ("xen_version", "4.17.7")))] == 1
    types = {f.name: f.type for f in families(text)}
    assert types["xenkdump_loads"] == "counter" and types["xenkdump_armed"] == "gauge"


def test_self_test_results_appear_once_a_self_test_ran() -> None:
    assert "xenkdump_selftest" not in render(LOADED, Counters())
    ran = LOADED._replace(
        image_sha256="ab" * 32,
        last_self_test=(("ImageSha256", "ab" * 32), ("Passed", True), ("Started", 2_000_000)),
    )
    got = samples(render(ran, Counters()))
    assert got[("xenkdump_selftest_last_passed", ())] == 1
    assert got[("xenkdump_selftest_last_timestamp_seconds", ())] == 2
    assert got[("xenkdump_selftest_last_tested_armed_image", ())] == 1
    failed = ran._replace(last_self_test=(("Passed", False), ("Started", 0)))
    got = samples(render(failed, Counters()))
    assert got[("xenkdump_selftest_last_passed", ())] == 0
    assert got[("xenkdump_selftest_last_tested_armed_image", ())] == 0


def test_dump_results_appear_once_a_dump_was_found() -> None:
    assert "xenkdump_dump_last" not in render(LOADED, Counters())
    found = LOADED._replace(
        last_dump=(
            ("Path", "/var/crash/host-20261202T030000Z"),
            ("Time", 1_796_180_400),
            ("Bytes", 92 << 20),
            ("Result", "complete"),
        ),
    )
    got = samples(render(found, Counters()))
    assert got[("xenkdump_dump_last_complete", ())] == 1
    assert got[("xenkdump_dump_last_timestamp_seconds", ())] == 1_796_180_400
    assert got[("xenkdump_dump_last_bytes", ())] == 92 << 20
    failed = found._replace(last_dump=(("Result", "failed"), ("Time", 0), ("Bytes", 0)))
    assert samples(render(failed, Counters()))[("xenkdump_dump_last_complete", ())] == 0


def test_nothing_armed_and_odd_label_values() -> None:
    text = render(Status(state="failed", xen_version='4.17"\\\n'), Counters())
    got = samples(text)
    assert got[("xenkdump_armed", ())] == 0
    assert got[("xenkdump_state", (("state", "failed"),))] == 1
    assert got[("xenkdump_info", (("version", ""), ("xen_version", '4.17"\\\n')))] == 1


def test_promtool_accepts_the_file(tmp_path: Path) -> None:
    assert PROMTOOL.exists(), f"{PROMTOOL}: installed by scripts/setup-test-env.sh"
    path = tmp_path / "xenkdump.prom"
    tested = LOADED._replace(
        last_self_test=(("Passed", True), ("Started", 1_700_000_000)),
        last_dump=(("Result", "complete"), ("Time", 1_700_000_000), ("Bytes", 1 << 20)),
    )
    write(path, render(tested, Counters(loads=1)))
    proc = subprocess.run(
        [str(PROMTOOL), "check", "metrics"],
        stdin=path.open("rb"),
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout == b"" and proc.stderr == b"", proc.stderr
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["xenkdump.prom"]  # no temporary left
