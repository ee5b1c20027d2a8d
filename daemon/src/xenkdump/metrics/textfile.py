"""The Prometheus text exposition of xenkdumpd's state (sans-I/O), and its atomic writer.

Names follow Prometheus' conventions: the ``xenkdump_`` prefix, base units in the name
(``_bytes``, ``_seconds``), ``_total`` for counters, and one gauge per value of an enum
with the value as a label (``xenkdump_state{state="loaded"} 1``).  node_exporter's
textfile collector reads ``*.prom`` files from its directory (Debian:
/var/lib/prometheus/node-exporter); the file is replaced with rename(2) so that a scrape
never sees half of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xenkdump.advice.crashkernel import Verdict
from xenkdump.safefile import atomic_write
from xenkdump.status import State, Status


@dataclass(frozen=True)
class Counters:
    """What xenkdumpd counted since it started (Prometheus counters reset on restart)."""

    loads: int = 0  # crash images loaded (first loads and reloads)
    load_failures: int = 0  # loads that failed (the armed image, if any, stayed)
    config_rejections: int = 0  # configuration re-reads that were refused
    unloads: int = 0


@dataclass(frozen=True)
class _Metric:
    name: str
    kind: str  # gauge or counter
    help: str
    samples: tuple[tuple[str, float], ...]  # (label text, value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def metrics(status: Status, counters: Counters, recommended: int = 0) -> list[_Metric]:
    """Every metric, from the status model and the counters."""
    armed = 1 if status.generation and status.state in (State.LOADED, State.DEGRADED) else 0
    labelled = [
        _Metric(
            "xenkdump_info",
            "gauge",
            "Versions of xenkdumpd and Xen, as labels.",
            (
                (
                    f'version="{_escape(status.daemon_version)}",'
                    f'xen_version="{_escape(status.xen_version)}"',
                    1,
                ),
            ),
        ),
        _Metric(
            "xenkdump_state",
            "gauge",
            "The daemon's state: 1 for the current one.",
            tuple((f'state="{s}"', 1 if status.state == s else 0) for s in State),
        ),
        _Metric(
            "xenkdump_crash_area_verdict",
            "gauge",
            "The crash area judged against the image: 1 for the current verdict.",
            tuple((f'verdict="{v}"', 1 if status.crash_area_verdict == v else 0) for v in Verdict),
        ),
    ]
    # (name, type, help, value): one unlabelled sample each.
    plain: list[tuple[str, str, str, float]] = [
        ("armed", "gauge", "1 when a crash kernel loaded by xenkdump is armed in Xen.", armed),
        (
            "crash_area_bytes",
            "gauge",
            "Size of the crash area Xen reserved (crashkernel=).",
            status.crash_region[1],
        ),
        (
            "crash_area_required_bytes",
            "gauge",
            "Bytes the armed crash image needs in one half of the crash area.",
            status.required_bytes,
        ),
        (
            "crash_area_recommended_bytes",
            "gauge",
            "The crash area size xenkdump recommends: two images and headroom.",
            recommended,
        ),
        (
            "whole_area",
            "gauge",
            "1 when the image uses the whole crash area (reloads must unload it first).",
            1 if status.whole_area else 0,
        ),
        (
            "generation",
            "gauge",
            "Loads done by xenkdumpd on this host since it booted (the record's generation).",
            status.generation,
        ),
        (
            "last_load_timestamp_seconds",
            "gauge",
            "When the armed image was loaded, seconds since the epoch; 0 if none.",
            status.loaded_at / 1e6,
        ),
        ("loads_total", "counter", "Crash images loaded since xenkdumpd started.", counters.loads),
        (
            "load_failures_total",
            "counter",
            "Loads that failed since xenkdumpd started (the armed image stayed).",
            counters.load_failures,
        ),
        (
            "config_rejections_total",
            "counter",
            "Configuration re-reads refused since xenkdumpd started.",
            counters.config_rejections,
        ),
        (
            "unloads_total",
            "counter",
            "Crash images unloaded since xenkdumpd started.",
            counters.unloads,
        ),
    ]
    test = dict(status.last_self_test)
    if test:  # no series at all until a self-test ran (an absent value, not a false one)
        plain += [
            (
                "selftest_last_passed",
                "gauge",
                "1 when the last self-test (xenkdumpctl selftest) passed, 0 when it failed.",
                1 if test.get("Passed") else 0,
            ),
            (
                "selftest_last_timestamp_seconds",
                "gauge",
                "When the last self-test started, seconds since the epoch.",
                int(test.get("Started", 0)) / 1e6,
            ),
            (
                "selftest_last_tested_armed_image",
                "gauge",
                "1 when the last self-test tested the image armed now.",
                1
                if test.get("ImageSha256") and test.get("ImageSha256") == status.image_sha256
                else 0,
            ),
        ]
    dump = dict(status.last_dump)
    if dump:  # likewise absent until xenkdumpd has found a saved dump
        plain += [
            (
                "dump_last_complete",
                "gauge",
                "1 when the last dump found at the target is complete, 0 when it is not.",
                1 if dump.get("Result") == "complete" else 0,
            ),
            (
                "dump_last_timestamp_seconds",
                "gauge",
                "When the host crashed for the last dump found, seconds since the epoch.",
                int(dump.get("Time", 0)),
            ),
            (
                "dump_last_bytes",
                "gauge",
                "Size of the last dump found at the target (all its files).",
                int(dump.get("Bytes", 0)),
            ),
        ]
    return labelled + [_Metric(f"xenkdump_{n}", k, h, (("", v),)) for n, k, h, v in plain]


def render(status: Status, counters: Counters, recommended: int = 0) -> str:
    """The text exposition format (version 0.0.4)."""
    lines: list[str] = []
    for m in metrics(status, counters, recommended):
        lines.append(f"# HELP {m.name} {m.help}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        for labels, value in m.samples:
            label_text = f"{{{labels}}}" if labels else ""
            lines.append(f"{m.name}{label_text} {_value(value)}")
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    """Replace ``path`` atomically (FileWriteError naming it on failure)."""
    atomic_write(path, text.encode(), mode=0o644)
