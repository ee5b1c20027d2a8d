"""xenkdumpctl imports only what a command needs (its start-up time: bench/cli.py).

Building the parser must not import the D-Bus stacks, the YAML/JSON Schema stack, the
image builder or a hypervisor adapter; each command's handler imports those when it
runs.  A run builds only the command it names: ``--help`` needs no command module.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from importcheck import run_and_list, under
from xenkdump.cli.ctl import (
    COMMANDS,
    GLOBAL_EXITS,
    GLOBAL_FLAGS,
    GLOBAL_VALUE_OPTIONS,
    build_parser,
    named_command,
)

# What makes a quick command slow to start (bench/cli.py), besides the stacks in HEAVY.
SLOW_STDLIB = (
    "typing",
    "dataclasses",
    "inspect",
    "pathlib",
    "hashlib",
    "_hashlib",
    "ctypes",
    "logging",
)

HEAVY = (
    "asyncio",
    "dbus",
    "dbus_fast",
    "yaml",
    "jsonschema",
    "cffi",
    "xenkdump.image.planner",
    "xenkdump.image.loader",
    "xenkdump.hv.sim",
    "xenkdump.hv.xen",
    "xenkdump.daemon",
    "xenkdump.settings.load",
    "xenkdump.state",
    "xenkdump.capture",
)


def test_building_the_parser_imports_nothing_heavy() -> None:
    _, out = run_and_list("from xenkdump.cli.ctl import build_parser; build_parser()")
    assert "xenkdump.cli.cmd_status" in out  # every command configured
    assert under(out, HEAVY) == []


def test_help_imports_no_command_module() -> None:
    _, out = run_and_list(
        "import contextlib\nfrom xenkdump.cli.ctl import main\n"
        "with contextlib.suppress(SystemExit):\n    main(['--help'])"
    )
    assert "xenkdump.cli.ctl" in out
    assert [m for m in out if m.startswith("xenkdump.cli.cmd_")] == []
    assert under(out, (*HEAVY, "dataclasses", "typing", "logging", "shutil", "bz2")) == []


def test_a_run_configures_only_its_command() -> None:
    _, out = run_and_list("from xenkdump.cli.ctl import build_parser; build_parser(['status'])")
    assert sorted(m for m in out if m.startswith("xenkdump.cli.cmd_")) == [
        "xenkdump.cli.cmd_status"
    ]


def test_the_named_command_is_found_past_the_global_options() -> None:
    assert named_command(["status", "--json"]) == "status"
    assert named_command(["-v", "--hypervisor", "status", "hv", "info"]) == "hv"
    assert named_command(["--hypervisor=sim:/x", "load"]) == "load"
    for exits in GLOBAL_EXITS:
        assert named_command(["-v", exits, "status"]) == ""  # help or version only


@pytest.mark.parametrize(
    "argv",
    [[], ["-v"], ["bogus"], ["--hyp", "sim", "status"], ["-vh"], ["--", "status"]],
)
def test_in_doubt_every_command_is_built(argv: list[str]) -> None:
    assert named_command(argv) is None


def test_help_is_wrapped_to_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    narrow = build_parser(["--help"]).format_help()
    monkeypatch.setenv("COLUMNS", "200")
    wide = build_parser(["--help"]).format_help()
    assert max(map(len, narrow.splitlines())) <= 58 < max(map(len, wide.splitlines()))


def test_the_scan_knows_every_global_option() -> None:
    """A new global option must be taught to ``named_command`` (else runs build all)."""
    parser = build_parser([])
    options = {o for a in parser._actions for o in a.option_strings}
    assert options == {*GLOBAL_FLAGS, *GLOBAL_VALUE_OPTIONS, *GLOBAL_EXITS}


def command_help(parser: argparse.ArgumentParser, name: str) -> str:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return str(action.choices[name].format_help())
    raise AssertionError("no commands")


def test_a_lazy_parser_is_the_whole_one_where_it_is_used() -> None:
    whole = build_parser()
    for name in COMMANDS:
        lazy = build_parser(["--hypervisor", "sim", "-v", name, "--help"])
        assert command_help(lazy, name) == command_help(whole, name)
    assert build_parser(["--help"]).format_help() == whole.format_help()


@pytest.mark.parametrize(("verbose", "expected"), [(True, "DEBUG: found 1\n"), (False, "")])
def test_logging_is_configured_when_something_first_imports_it(
    verbose: bool, expected: str
) -> None:
    code = (
        "import sys\nfrom xenkdump.cli.ctl import LoggingSetup\n"
        f"setup = LoggingSetup({verbose})\n"
        "assert 'logging' not in sys.modules\n"
        "import logging\n"
        "logging.getLogger('xenkdump.x').debug('found %d', 1)\n"
        "logging.getLogger('xenkdump.x').warning('kept %s', 'armed')\n"
        "setup.close()\n"
        "assert setup not in sys.meta_path\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    shown = expected.replace("DEBUG", "xenkdumpctl: DEBUG") if expected else ""
    assert proc.stderr == shown + "xenkdumpctl: WARNING: kept armed\n"


# What ``hv info`` asks, answered by a stand-in for libxenctrl (no Xen here).
_XEN_STANDIN = """
import xenkdump.hv.xen
from xenkdump.cli import cmd_hv
from xenkdump.hv.values import AddressRange, E820Entry, PhysInfo

class Xen:
    name = "xen"
    def xen_version(self): return (4, 17)
    def xen_extraversion(self): return ".7"
    def xen_command_line(self): return ""
    def crash_range(self): return AddressRange(0x10000000, 0x10000000)
    def xen_range(self): return AddressRange(0x1000, 0x1000)
    def vmcoreinfo_range(self): return AddressRange(0x2000, 0x1000)
    def max_cpus(self): return 1
    def cpu_note_range(self, cpu): return AddressRange(0x3000, 0x100)
    def physinfo(self): return PhysInfo(1, 1, 1, 0, 1, 0, 1)
    def machine_memory_map(self): return [E820Entry(0, 0x40000000, 1)]
    def kexec_status(self, type_): return 1

print(cmd_hv.render(cmd_hv.collect(Xen())))
"""


def test_hv_info_on_xen_loads_nothing_of_the_simulator() -> None:
    out, modules = run_and_list(_XEN_STANDIN)
    assert "Crash range" in out and "ram" in out
    assert under(modules, ("xenkdump.hv.sim", "xenkdump.hv.simhost", "xenkdump.schema")) == []
    heavy = ("yaml", "jsonschema", "pycparser", "dbus", "asyncio", *SLOW_STDLIB)
    assert under(modules, heavy) == []


def test_the_library_opens_without_ctypes() -> None:
    """The sonames are tried with the out-of-line ffi's plain dlopen (no find_library)."""
    _, modules = run_and_list("import xenkdump_xenctrl as xc\nprint(xc.open_library().path)")
    assert "xenkdump_xenctrl" in modules
    assert under(modules, ("ctypes", "cffi", "pycparser")) == []


def test_hv_info_on_a_simulated_host_loads_only_the_simulator(tmp_path: Path) -> None:
    """``xenkdumpctl hv info`` once its host file was validated (bench/cli.py's run)."""
    run = (
        "from xenkdump.cli.ctl import main\n"
        f"assert main(['--hypervisor', 'sim:{tmp_path / 'host.yaml'}', 'hv', 'info']) == 0"
    )
    _, first = run_and_list(run)  # creates the host file and validates it
    assert "yaml" in first
    out, modules = run_and_list(run)
    assert "Crash range" in out
    assert {"xenkdump.cli.cmd_hv", "xenkdump.hv.sim"} <= modules
    slow = (*HEAVY, *SLOW_STDLIB, "xenkdump.hv.xen", "xenkdump.schema", "xenkdump.image")
    assert under(modules, (m for m in slow if m != "xenkdump.hv.sim")) == []
