"""The shared decision and command line for jobs run outside xenkdumpd's sandbox
(xenkdump/transient.py): each job names its own forcing variable; systemd-run binds
the job to its owner and, on request, pipes its output back."""

from __future__ import annotations

import pytest

from xenkdump import transient

SERVICE = transient.Facts(
    env={"INVOCATION_ID": "0123abcd"},
    cgroup="0::/system.slice/xenkdumpd.service\n",
    booted=True,
    euid=0,
    systemd_run="/usr/bin/systemd-run",
    systemctl="/usr/bin/systemctl",
)
OWNED = transient.Transient("xenkdumpd.service", "/usr/bin/systemd-run", "/usr/bin/systemctl")


def test_a_service_of_a_booted_systemd_gets_a_transient_unit() -> None:
    assert transient.choose(SERVICE, "XK_JOB") == OWNED


@pytest.mark.parametrize("env", ["XK_JOB", "XK_OTHER"])
def test_only_the_jobs_own_variable_forces_it_direct(env: str) -> None:
    facts = transient.Facts(**{**SERVICE.__dict__, "env": {"INVOCATION_ID": "x", env: "direct"}})
    chosen = transient.choose(facts, "XK_JOB")
    assert (chosen == transient.Direct("XK_JOB=direct")) is (env == "XK_JOB")


def test_not_a_service_is_a_child_saying_why() -> None:
    facts = transient.Facts(**{**SERVICE.__dict__, "env": {}})
    chosen = transient.choose(facts, "XK_JOB")
    assert isinstance(chosen, transient.Direct) and "INVOCATION_ID" in chosen.why


@pytest.mark.parametrize("pipe", [False, True])
def test_run_argv_waits_binds_to_the_owner_and_keeps_argv(pipe: bool) -> None:
    job = ["/usr/sbin/mkinitramfs", "-o", "/var/lib/x y/img"]
    argv = transient.run_argv(
        OWNED, job, unit="xk-job.service", properties=["ProtectSystem=strict"], pipe=pipe
    )
    opts, rest = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    assert argv[0] == "/usr/bin/systemd-run" and rest == job
    for want in ("--unit=xk-job.service", "--wait", "--collect", "--service-type=exec"):
        assert want in opts
    assert "--property=BindsTo=xenkdumpd.service" in opts
    assert "--property=ProtectSystem=strict" in opts
    assert ("--pipe" in opts) is pipe
