"""Property-based fuzzing of every parser and input: no traceback, every failure a named error.

Each input a user, a file or a D-Bus caller can supply goes through the code that reads
it with hypothesis-generated values -- random bytes, and mutations of a valid value
(the interesting inputs are the nearly-right ones).  A failure must be one of the
project's errors (``XenkdumpError``) with a one-line message; anything else (a
traceback) fails the test.  The number of cases run is counted in the figures printed
at the end of the run (conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from figures import FIGURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenkdump import requests
from xenkdump.daemon.core import DaemonCore
from xenkdump.dbus import contract
from xenkdump.errors import XenkdumpError
from xenkdump.hv.port import KEXEC_TYPE_CRASH
from xenkdump.hv.sim import SimulatedHypervisor
from xenkdump.hv.simhost import default_host, parse_host, render_host
from xenkdump.image import cmdline
from xenkdump.image.bzimage import parse_bzimage
from xenkdump.requests import ReloadOptions
from xenkdump.settings.load import parse_settings
from xenkdump.settings.model import Settings
from xenkdump.state.record import RecordStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from imagefixtures import synth_bzimage

T = TypeVar("T")
CASES = 300
FAST = settings(
    max_examples=CASES,
    derandomize=True,  # the same cases every run: CI never turns red by chance
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def one_line(exc: XenkdumpError) -> None:
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    text.encode("utf-8")  # valid text: it may reach the journal and D-Bus


def named(call: Callable[[], T]) -> T | None:
    """``call()``, or None when it failed with one of the project's one-line errors."""
    FIGURES["cases fuzzed"] += 1
    try:
        return call()
    except XenkdumpError as exc:
        one_line(exc)
        return None


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few bytes overwritten, a cut, or a splice: nearly right."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


# ---- bzImage ----------------------------------------------------------------------------

KERNEL = synth_bzimage()


@FAST
@given(st.one_of(st.binary(max_size=4096), mutated(KERNEL[:2048]).map(lambda h: h + KERNEL[2048:])))
def test_bzimage_parser(data: bytes) -> None:
    named(lambda: parse_bzimage(data, "/fuzz/vmlinuz"))


# ---- YAML: the configuration and the simulated host -------------------------------------

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
CONFIG_KEYS = ["kernel", "initrd", "cmdline", "state_dir", "boot_dir",
               "topology_check_interval", "reload_debounce"]  # fmt: skip


@st.composite
def config_docs(draw: st.DrawFn) -> bytes:
    keys = st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=10))
    doc = draw(st.dictionaries(keys, _values, max_size=6))
    return yaml.safe_dump(doc).encode()


YAML_NOISE = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.sampled_from(
        [b"a: &x [*x]", b"!!python/object:os.system x", b"a: b: c", b"{", b"- - -", b"\t\x00"]
    ),
)


@FAST
@given(st.one_of(config_docs(), YAML_NOISE))
def test_configuration_parser(raw: bytes) -> None:
    named(lambda: parse_settings(raw, "/fuzz/xenkdump.yaml"))


HOST_TEXT = render_host(default_host()).encode()


@FAST
@given(st.one_of(mutated(HOST_TEXT), YAML_NOISE))
def test_simulated_host_parser(raw: bytes) -> None:
    named(lambda: parse_host(raw, "/fuzz/host.yaml"))


# ---- the state record -------------------------------------------------------------------


def _valid_record() -> bytes:
    from test_record import ARMED_A  # noqa: PLC0415

    state = ARMED_A.begin("load", 1, ARMED_A.armed)
    return json.dumps(state.to_json(), indent=1).encode()


RECORD = _valid_record()


@st.composite
def record_edits(draw: st.DrawFn) -> bytes:
    """The valid record with one field (at any depth) replaced by a random value."""
    doc: Any = json.loads(RECORD)
    node = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and draw(st.booleans()):
            node = child
            continue
        node[key] = draw(_values)
        break
    return json.dumps(doc).encode()


@FAST
@given(st.one_of(record_edits(), mutated(RECORD), st.binary(max_size=200)))
def test_state_record_reader(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    store = RecordStore(tmp_path_factory.mktemp("state"))
    store.path.write_bytes(raw)
    state = named(store.read_state)
    if state is None:
        return
    # Whatever was read can be written back and reads the same.
    again = store.write_state(state)
    assert store.read_state() == again


# ---- command lines ----------------------------------------------------------------------

_words = st.text(max_size=30)


@FAST
@given(_words, st.lists(_words, max_size=3), st.lists(_words, max_size=3), st.text(max_size=60))
def test_command_lines(base: str, append: list[str], remove: list[str], xen: str) -> None:
    def build() -> tuple[str, str]:
        user = cmdline.user_cmdline(base=base, append=append, remove=remove)
        line = cmdline.crash_cmdline(
            base=user, xen_cmdline=xen, elfcorehdr_addr=0x1000, cmdline_size=200, defaults=False
        )
        return user, line

    built = named(build)
    if built is None:
        return
    user, line = built
    assert len(line.encode("utf-8")) <= 200
    assert all(ord(c) >= 0x20 and ord(c) != 0x7F for c in user)


# ---- D-Bus Reload arguments, through the real core on the simulator ----------------------

_paths = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(["/dev/zero", "/proc/self/status", "/", "/etc", "", "\x00", "/tmp/../etc"]),
)


@pytest.fixture(scope="module")
def armed_core(
    tmp_path_factory: pytest.TempPathFactory, debian_kernel: Path
) -> tuple[DaemonCore, SimulatedHypervisor, asyncio.AbstractEventLoop]:
    work = tmp_path_factory.mktemp("dbusfuzz")
    sim = SimulatedHypervisor.open(work / "host.yaml")
    settings_ = Settings(
        kernel_path=debian_kernel,
        state_dir=work / "state",
        boot_dir=work,
    )
    from xenkdump.settings.model import InitrdPolicy, KernelPolicy  # noqa: PLC0415

    core_settings = settings_.__class__(
        **{**settings_.__dict__, "kernel": KernelPolicy.PATH, "initrd": InitrdPolicy.NONE}
    )
    loop = asyncio.new_event_loop()
    core = DaemonCore(sim, core_settings)
    loop.run_until_complete(core.start())
    assert sim.armed_image_intact(KEXEC_TYPE_CRASH)
    return core, sim, loop


@settings(
    max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)
@given(_paths, _paths, _paths, st.booleans(), st.one_of(st.none(), st.text(max_size=30)))
def test_dbus_reload_arguments_never_hurt_the_daemon_or_the_armed_image(  # noqa: PLR0917
    armed_core: tuple[DaemonCore, SimulatedHypervisor, asyncio.AbstractEventLoop],
    kernel: str | None,
    initrd: str | None,
    line: str | None,
    force: bool,
    reason: str | None,
) -> None:
    core, sim, loop = armed_core
    options = ReloadOptions(force=force, kernel=kernel, initrd=initrd, cmdline=line, reason=reason)
    named(lambda: loop.run_until_complete(core.reload(options)))
    status = core.status()
    json.dumps(status.to_json()).encode("utf-8")  # every string can be sent on D-Bus
    for value in status.to_json().values():
        if isinstance(value, str):
            value.encode("utf-8")
    assert sim.armed_image_intact(KEXEC_TYPE_CRASH)


# ---- D-Bus option dictionaries as they arrive on the wire --------------------------------

_signatures = st.sampled_from(["b", "s", "i", "u", "as", "a{sv}", "v", "o", "g", "x", "d"])
_option_names = st.one_of(st.sampled_from(sorted(requests.RELOAD_OPTIONS)), st.text(max_size=12))


@FAST
@given(st.dictionaries(_option_names, st.tuples(_signatures, _values), max_size=6))
def test_dbus_option_dictionaries(raw: dict[str, tuple[str, object]]) -> None:
    values = named(lambda: contract.check_options("Reload", raw, requests.RELOAD_OPTIONS))
    if values is not None:
        ReloadOptions(**values)  # type: ignore[arg-type]  # names and types were checked
