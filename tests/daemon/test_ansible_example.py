"""config/examples/ansible/ run by Debian's ansible-playbook against localhost.

What the test substitutes, and only that (config/examples/ansible/README.md says so too):
the daemon is xenkdumpd on a simulated host and a private dbus-daemon, not a systemd
service on a Xen dom0, so ``xenkdump_reload_command`` is ``kill -HUP PID`` (what
``systemctl reload xenkdumpd`` sends) and ``xenkdump_environment`` points xenkdumpctl at
the private bus; the configuration goes to a temporary directory instead of
/etc/xenkdump, and ``ansible_become`` is off (the tests already run as root).  The
playbook's tasks, the check-config gate and the status assertions run unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_dbus_daemon import make_boot, start_daemon, stop

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "examples" / "ansible"
CTL = Path(sys.executable).parent / "xenkdumpctl"

pytestmark = pytest.mark.ansible


@dataclass
class World:
    root: Path
    proc: subprocess.Popen[bytes]
    bus: str
    site: Path  # the site-wide file the playbook deploys

    def playbook(self, **extra: Any) -> subprocess.CompletedProcess[str]:
        variables = {
            "xenkdump_hosts": "localhost",
            "ansible_connection": "local",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_become": False,
            "xenkdump_etc": str(self.root),
            "xenkdumpctl": str(CTL),
            "xenkdump_config_src": str(self.site),
            "xenkdump_reload_command": f"kill -HUP {self.proc.pid}",
            "xenkdump_environment": {"DBUS_SYSTEM_BUS_ADDRESS": self.bus},
            **extra,
        }
        (self.root / "vars.json").write_text(json.dumps(variables))
        ansible = shutil.which("ansible-playbook")
        assert ansible, "ansible-playbook (Debian's ansible-core) is installed by setup"
        env = {
            **os.environ,
            "ANSIBLE_LOCAL_TEMP": str(self.root / "ansible-local"),
            "ANSIBLE_REMOTE_TEMP": str(self.root / "ansible-remote"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_CONFIG": str(self.root / "no-ansible.cfg"),
        }
        return subprocess.run(
            [
                ansible,
                "-i",
                "localhost,",
                str(EXAMPLE / "site.yml"),
                "-e",
                f"@{self.root}/vars.json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=env,
        )

    def status(self) -> dict[str, Any]:
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.bus}
        out = subprocess.run(
            [str(CTL), "status", "--json"], capture_output=True, text=True, env=env, check=True
        )
        result: dict[str, Any] = json.loads(out.stdout)
        return result


@pytest.fixture
def world(tmp_path: Path, debian_kernel: Path, private_bus: str) -> Iterator[World]:
    kernel = make_boot(tmp_path, debian_kernel)
    boot = kernel.parent
    common = (
        f"kernel: {kernel}\ninitrd: auto\nstate_dir: {tmp_path / 'state'}\nboot_dir: {boot}\n"
        "reload_debounce: 30\ntopology_check_interval: 3600\n"
    )
    (tmp_path / "xenkdump.yaml").write_text(common)  # what the host had before
    site = tmp_path / "site.yaml"
    site.write_text(
        common + "cmdline:\n  base: console=ttyS0\n  remove: [quiet]\n"
        f"metrics:\n  textfile: {tmp_path / 'xenkdump.prom'}\n"
    )
    proc, log = start_daemon(tmp_path, private_bus)
    yield World(tmp_path, proc, private_bus, site)
    assert stop(proc) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def test_playbook_checks_installs_reloads_and_verifies(world: World) -> None:
    before = world.status()
    assert before["State"] == "loaded" and before["Generation"] == 1
    run = world.playbook(xenkdump_cmdline_append=["irqpoll", "nr_cpus=1", "panic=7"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "failed=0" in run.stdout
    after = world.status()
    dropin = world.root / "xenkdump.yaml.d" / "50-host.yaml"
    assert after["ConfigFiles"] == [str(world.root / "xenkdump.yaml"), str(dropin)]
    assert after["State"] == "loaded" and after["Generation"] == 2
    assert "panic=7" in after["CommandLine"] and after["CommandLine"].startswith("console=ttyS0")
    assert (world.root / "xenkdump.prom").exists()  # the site file turned metrics on
    check = subprocess.run(
        [str(CTL), "check-config", "--json", str(world.root / "xenkdump.yaml")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(check.stdout)["digest"] == after["ConfigDigest"]
    # Nothing changed: a second run reloads nothing and still passes.
    again = world.playbook(xenkdump_cmdline_append=["irqpoll", "nr_cpus=1", "panic=7"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "changed=0" in again.stdout
    assert world.status()["Generation"] == 2


def test_a_bad_host_value_stops_before_anything_is_installed(world: World) -> None:
    before = world.status()
    run = world.playbook(xenkdump_cmdline_append="irqpoll")  # a string, not a list
    assert run.returncode != 0
    assert "Check the staged configuration" in run.stdout
    assert (
        "xenkdump.yaml.d/50-host.yaml:4: cmdline.append: expected a list of strings, "
        "found string 'irqpoll'"
    ) in run.stdout
    assert not (world.root / "xenkdump.yaml.d").exists()
    assert world.status() == before  # the daemon never saw it
