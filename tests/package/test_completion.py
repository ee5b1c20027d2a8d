"""completion/xenkdumpctl, run by real bash with the bash-completion framework."""

from __future__ import annotations

import argparse
import shlex
import subprocess
from pathlib import Path

import pytest

from xenkdump.cli.ctl import build_parser

COMPLETION = Path(__file__).resolve().parents[2] / "completion" / "xenkdumpctl"
FRAMEWORK = Path("/usr/share/bash-completion/bash_completion")


def complete(line: str) -> list[str]:
    """What bash offers after ``line`` (the cursor at its end)."""
    assert FRAMEWORK.exists(), "bash-completion is installed by scripts/setup-test-env.sh"
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    script = f"""
source {FRAMEWORK}
source {COMPLETION}
COMP_WORDS=({" ".join(shlex.quote(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={shlex.quote(line)}
COMP_POINT={len(line)}
_xenkdumpctl xenkdumpctl "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return [w for w in proc.stdout.splitlines() if w]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_top_level_offers_every_command_and_global_option() -> None:
    parser = build_parser()
    offered = set(complete("xenkdumpctl "))
    assert set(subcommands(parser)) <= offered
    globals_ = {o for a in parser._actions for o in a.option_strings}
    assert globals_ <= offered


def test_prefix_narrows() -> None:
    assert complete("xenkdumpctl st") == ["status"]
    assert complete("xenkdumpctl --hypervisor xen re") == ["reload"]


@pytest.mark.parametrize("command", sorted(subcommands(build_parser())))
def test_every_option_of_every_command_is_offered(command: str) -> None:
    sub = subcommands(build_parser())[command]
    nested = subcommands(sub)
    cases = {command: sub} if not nested else {f"{command} {n}": p for n, p in nested.items()}
    if nested:
        assert set(nested) <= set(complete(f"xenkdumpctl {command} "))
    for line, p in cases.items():
        wanted = {o for a in p._actions for o in a.option_strings if o.startswith("--")}
        offered = set(complete(f"xenkdumpctl {line} --"))
        assert wanted <= offered, (line, wanted - offered)
        # Nothing another command has and this one lacks.
        assert offered <= wanted, (line, offered - wanted)


def test_file_arguments_complete_files(tmp_path: Path) -> None:
    (tmp_path / "vmlinuz-6.1").write_bytes(b"")
    assert complete(f"xenkdumpctl load --kernel {tmp_path}/vml") == [f"{tmp_path}/vmlinuz-6.1"]
