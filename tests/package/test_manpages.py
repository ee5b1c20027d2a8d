"""The man pages (man/*.rst, converted with rst2man at package build) cover every
command-line option, configuration key and D-Bus member, and convert without warnings."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from xenkdump.cli.ctl import build_parser as ctl_parser
from xenkdump.daemon.main import build_parser as daemon_parser
from xenkdump.dbus import names
from xenkdump.schema import CONFIG_SCHEMA, keys

MAN = Path(__file__).resolve().parents[2] / "man"
PAGES = ("xenkdumpd.8", "xenkdumpctl.8", "xenkdump.yaml.5")


def page(name: str) -> str:
    return (MAN / f"{name}.rst").read_text(encoding="utf-8")


def bold(text: str) -> set[str]:
    """Every word set in bold (**word**) in a page."""
    return set(re.findall(r"\*\*([^*\s][^*]*?)\*\*", text))


def options(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, str]]:
    """(command path, option string) for the parser and every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield " ".join((*path, name)), ""
                yield from options(sub, (*path, name))
        else:
            for opt in action.option_strings:
                yield " ".join(path), opt


@pytest.mark.parametrize(
    ("name", "parser"), [("xenkdumpctl.8", ctl_parser), ("xenkdumpd.8", daemon_parser)]
)
def test_every_option_and_command_is_documented(name: str, parser: object) -> None:
    words = bold(page(name))
    missing = []
    for command, opt in options(parser()):  # type: ignore[operator]
        if opt:
            if opt not in words:
                missing.append(f"{command} {opt}".strip())
        elif not any(re.search(rf"(^|\s){re.escape(command)}($|\s)", w) for w in words):
            missing.append(f"command {command}")
    assert not missing, f"man/{name}.rst lacks {missing}"


def test_every_config_key_is_documented() -> None:
    words = bold(page("xenkdump.yaml.5"))
    every = keys(CONFIG_SCHEMA)  # the schema is the one list of keys
    assert len(every) > 5 and "cmdline.append" in every
    assert [k for k in every if k not in words] == []
    # ...and the KEYS section lists exactly the schema's keys, in the schema's order.
    section = page("xenkdump.yaml.5").split("\nKEYS\n", 1)[1].split("\nEXAMPLE\n", 1)[0]
    assert re.findall(r"^\*\*([a-z0-9_.]+)\*\*$", section, re.M) == every


def test_every_dbus_member_and_error_is_documented() -> None:
    text = page("xenkdumpd.8")
    words = bold(text)
    root = ET.fromstring(names.interface_xml())
    [iface] = [i for i in root.iter("interface") if i.get("name") == names.INTERFACE]
    members = [m.get("name") for kind in ("method", "signal", "property") for m in iface.iter(kind)]
    assert "GetStatus" in members and "State" in members
    assert [m for m in members if m not in words] == []
    # Errors are listed as org.xenkdump.Kdump1.Error.X once, then **.Y** for the rest.
    short = {w.rsplit(".", 1)[-1] for w in words if w.startswith(("org.xenkdump", "."))}
    assert [e for e in names.ERRORS if e.rsplit(".", 1)[-1] not in short] == []


def test_bold_finds_what_is_bold_only() -> None:
    # The checks above rely on this: plain mentions do not count as documentation.
    assert bold("**--json** and --state-dir, **State** (s)") == {"--json", "State"}


@pytest.mark.parametrize("name", PAGES)
def test_page_converts_without_warnings(name: str, tmp_path: Path) -> None:
    rst2man = shutil.which("rst2man") or shutil.which("rst2man.py")
    assert rst2man, "rst2man (python3-docutils) is installed by scripts/setup-test-env.sh"
    out = tmp_path / name
    proc = subprocess.run(
        [rst2man, "--strict", str(MAN / f"{name}.rst"), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    head = out.read_text(encoding="utf-8")
    title, section = name.rsplit(".", 1)
    assert re.search(rf'^\.TH "?{re.escape(title.upper())}"? "?{section}"?', head, re.M | re.I)
