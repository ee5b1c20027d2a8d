"""``xenkdumpctl check-config``: the real console script, offline (no daemon, no Xen)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from xenkdump.schema import CONFIG_SCHEMA, schema

REPO = Path(__file__).resolve().parents[2]
KEYS = ", ".join(schema(CONFIG_SCHEMA)["properties"])


def run(*args: str) -> subprocess.CompletedProcess[str]:
    ctl = Path(sys.executable).with_name("xenkdumpctl")
    # No bus to talk to and no Xen: the check must need neither.
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    return subprocess.run(
        [str(ctl), "--hypervisor", "xen", "check-config", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_shipped_examples_are_valid_offline() -> None:
    examples = sorted(
        p for p in (REPO / "config" / "examples").glob("*.yaml") if not p.name.startswith("sim-")
    )
    proc = run("--schema-only", str(REPO / "config" / "xenkdump.yaml"), *map(str, examples))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"valid: {REPO}/config/xenkdump.yaml, ")
    assert proc.stderr == ""


def test_every_problem_of_every_file_one_a_line_exit_2(tmp_path: Path) -> None:
    main = tmp_path / "xenkdump.yaml"
    main.write_text("kernel: running\nbogus: 1\n")
    (tmp_path / "xenkdump.yaml.d").mkdir()
    (tmp_path / "xenkdump.yaml.d" / "50-host.yaml").write_text(
        "cmdline:\n  append: irqpoll\nreload_debounce: -1\n"
    )
    proc = run(str(main))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"{main}:2: bogus: unknown key (expected one of: {KEYS})",
        f"{tmp_path}/xenkdump.yaml.d/50-host.yaml:2: cmdline.append: "
        "expected a list of strings, found string 'irqpoll'",
        f"{tmp_path}/xenkdump.yaml.d/50-host.yaml:3: reload_debounce: "
        "expected a number of seconds >= 0, found integer '-1'",
    ]


def test_a_named_file_that_does_not_exist(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("kernel: latest\n")
    proc = run("--schema-only", str(good), str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2
    assert proc.stderr == f"{tmp_path}/missing.yaml: configuration file not found\n"


def test_named_kernel_and_initrd_must_exist_unless_schema_only(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz-1"
    kernel.write_bytes(b"k")
    config = tmp_path / "c.yaml"
    config.write_text(f"kernel: {kernel}\n\ninitrd: {tmp_path}/nope.img\n")
    proc = run(str(config))
    assert proc.returncode == 2
    assert proc.stderr == (
        f"{config}:3: initrd: expected a readable initrd, found {tmp_path}/nope.img: "
        "No such file or directory\n"
    )
    assert run("--schema-only", str(config)).returncode == 0
    latest = tmp_path / "l.yaml"
    latest.write_text(f"kernel: latest\nboot_dir: {tmp_path}/empty\n")
    (tmp_path / "empty").mkdir()
    proc = run(str(latest))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"{latest}:1: kernel: expected a kernel file to load, found")


def test_json(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kernel: latest\n")
    (tmp_path / "c.yaml.d").mkdir()
    (tmp_path / "c.yaml.d" / "10.yaml").write_text("reload_debounce: soon\n")
    proc = run("--json", "--schema-only", str(config))
    assert proc.returncode == 2
    out = json.loads(proc.stdout)
    assert out == {
        "valid": False,
        "files": [str(config), f"{tmp_path}/c.yaml.d/10.yaml"],
        "digest": "",
        "problems": [
            {
                "file": f"{tmp_path}/c.yaml.d/10.yaml",
                "line": 1,
                "key": "reload_debounce",
                "message": "expected a number of seconds >= 0, found string 'soon'",
            }
        ],
    }
    (tmp_path / "c.yaml.d" / "10.yaml").write_text("reload_debounce: 2\n")
    out = json.loads(run("--json", "--schema-only", str(config)).stdout)
    assert out["valid"] is True and len(out["digest"]) == 64 and out["problems"] == []


def test_a_fifo_as_the_kernel_is_named_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "vmlinuz"
    os.mkfifo(fifo)
    config = tmp_path / "xenkdump.yaml"
    config.write_text(f"kernel: {fifo}\ninitrd: none\n")
    proc = run(str(config))  # would hang for ever if the check opened the FIFO blocking
    assert proc.returncode == 2
    assert f"found {fifo}: kernel: expected a regular file, found a FIFO" in proc.stderr
