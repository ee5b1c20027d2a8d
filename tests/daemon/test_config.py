"""The configuration loader: defaults, every key, and errors with file:line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xenkdump.daemon import kernels
from xenkdump.errors import ConfigError
from xenkdump.schema import CONFIG_SCHEMA, keys, load, schema
from xenkdump.settings import CmdlineSettings, InitrdPolicy, KernelPolicy, Settings
from xenkdump.settings.load import ConfigProblems, load_settings, parse_settings
from xenkdump.settings.model import SelfTestSettings

REPO = Path(__file__).resolve().parents[2]


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ConfigProblems) as info:
        parse_settings(text, "/etc/xenkdump/xenkdump.yaml")
    return [(p.line, p.key, p.message) for p in info.value.problems]


def test_empty_file_means_defaults() -> None:
    s = parse_settings("", "f.yaml")
    assert s.kernel is KernelPolicy.RUNNING and s.initrd is InitrdPolicy.XENKDUMP
    assert s.state_dir == Path("/run/xenkdump") and s.boot_dir == Path("/boot")
    assert s.topology_check_interval == 60 and s.reload_debounce == 0.5
    assert len(s.digest) == 64


def test_every_key() -> None:
    s = parse_settings(
        "kernel: /k/vmlinuz-1\ninitrd: /k/initrd\ncmdline:\n  base: root=/dev/x\n"
        "  append: [a, b=1]\n  remove: [quiet]\nstate_dir: /s\nboot_dir: /b\n"
        "topology_check_interval: 5\nreload_debounce: 0\n",
        "f.yaml",
    )
    assert (s.kernel, s.kernel_path) == (KernelPolicy.PATH, Path("/k/vmlinuz-1"))
    assert (s.initrd, s.initrd_path) == (InitrdPolicy.PATH, Path("/k/initrd"))
    assert s.cmdline == CmdlineSettings("root=/dev/x", ("a", "b=1"), ("quiet",))
    assert (s.state_dir, s.boot_dir) == (Path("/s"), Path("/b"))
    assert (s.topology_check_interval, s.reload_debounce) == (5.0, 0.0)


KEYS = ", ".join(schema(CONFIG_SCHEMA)["properties"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kernel: running\nbogus: 1\n", [(2, "bogus", f"unknown key (expected one of: {KEYS})")]),
        (
            "cmdline:\n  append: [a]\n  apend: [b]\n",
            [(3, "cmdline.apend", "unknown key (expected one of: base, append, remove)")],
        ),
        (
            "kernel: 5\n",
            [(1, "kernel", "expected 'running', 'latest' or an absolute path, found integer '5'")],
        ),
        (
            "kernel: relative/path\n",
            [
                (
                    1,
                    "kernel",
                    "expected 'running', 'latest' or an absolute path, "
                    "found string 'relative/path'",
                )
            ],
        ),
        (
            "initrd: [a]\n",
            [
                (
                    1,
                    "initrd",
                    "expected 'xenkdump', 'auto', 'none', null or an absolute path, found a list",
                )
            ],
        ),
        (
            "cmdline:\n  append: irqpoll\n",
            [(2, "cmdline.append", "expected a list of strings, found string 'irqpoll'")],
        ),
        (
            "cmdline:\n  remove: [1, ' ']\n",
            [
                (2, "cmdline.remove[0]", "expected a non-empty string, found integer '1'"),
                (2, "cmdline.remove[1]", "expected a non-empty string, found string ' '"),
            ],
        ),
        (
            "cmdline: quiet\n",
            [(1, "cmdline", "expected a mapping with base, append, remove, found string 'quiet'")],
        ),
        (
            "topology_check_interval: soon\n",
            [
                (
                    1,
                    "topology_check_interval",
                    "expected a number of seconds > 0, found string 'soon'",
                )
            ],
        ),
        (
            "topology_check_interval: 0\n",
            [(1, "topology_check_interval", "expected a number of seconds > 0, found integer '0'")],
        ),
        (
            "reload_debounce: -1\n",
            [(1, "reload_debounce", "expected a number of seconds >= 0, found integer '-1'")],
        ),
        (
            "reload_debounce: true\n",
            [(1, "reload_debounce", "expected a number of seconds >= 0, found boolean 'true'")],
        ),
        (
            "reload_debounce: .nan\n",
            [(1, "reload_debounce", "expected a finite number, found .nan")],
        ),
        (
            "state_dir: run/x\n",
            [(1, "state_dir", "expected an absolute path, found string 'run/x'")],
        ),
        ("kernel: running\nkernel: latest\n", [(2, "kernel", "duplicate key (first on line 1)")]),
        ("- kernel\n", [(1, "", "expected a mapping, found a list")]),
        ("? [a]\n: 1\n", [(1, "", "expected a key name, found a list")]),
        (
            "kernel: 2024-01-01\n",
            [
                (
                    1,
                    "kernel",
                    "expected 'running', 'latest' or an absolute path, "
                    "found timestamp '2024-01-01'",
                )
            ],
        ),
    ],
)
def test_rejected_with_line_and_expected_type(
    text: str, expected: list[tuple[int, str, str]]
) -> None:
    assert problems(text) == expected


def test_all_problems_reported_in_one_line() -> None:
    with pytest.raises(ConfigProblems) as info:
        parse_settings("kernel: 1\nfoo: 2\nreload_debounce: x\n", "/etc/x.yaml")
    text = str(info.value)
    assert "\n" not in text
    assert "/etc/x.yaml:1: kernel:" in text
    assert "/etc/x.yaml:2: foo: unknown key" in text
    assert "/etc/x.yaml:3: reload_debounce:" in text
    assert isinstance(info.value, ConfigError) and info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "line"),
    [("kernel: [unclosed\n", 2), ("kernel: running\n  bad indent: x\n", 2), ("a: 'x\n", 2)],
)
def test_bad_yaml_names_the_line(text: str, line: int) -> None:
    with pytest.raises(ConfigProblems) as info:
        parse_settings(text, "/c.yaml")
    assert str(info.value).startswith(f"/c.yaml:{line}: invalid YAML: ")


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: configuration file not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"kernel: \xff\n")
    with pytest.raises(ConfigError, match=r"bin.yaml: expected UTF-8 text"):
        load_settings(bad)


# config/examples/sim-*.yaml describe simulated hosts (hv/simhost.py), not the daemon.
DAEMON_CONFIGS = sorted(
    [
        REPO / "config" / "xenkdump.yaml",
        *(
            p
            for p in (REPO / "config" / "examples").rglob("*.yaml")
            if not p.name.startswith("sim-")
        ),
    ]
)


@pytest.mark.parametrize("path", DAEMON_CONFIGS, ids=lambda p: p.name)
def test_shipped_files_are_valid(path: Path) -> None:
    s = load_settings(path)
    assert isinstance(s, Settings) and s.source == path


def keys_in_yaml_text(text: str) -> list[str]:
    """Dotted keys written in a YAML file, commented-out ones (``# base: ...``) too."""
    found: list[str] = []
    stack: list[tuple[int, str]] = []
    for m in re.finditer(r"^( *)(?:# )?([a-z0-9_]+):(?: |$)", text, re.M):
        indent, name = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, name))
        key = ".".join(n for _i, n in stack)
        if key not in found:  # a commented-out variant of a key shown just before
            found.append(key)
    return found


def test_schema_and_shipped_file_agree() -> None:
    """The shipped file shows every key of the schema, in its order, and nothing else;
    every value it sets that the schema gives a scalar default is that default."""
    shipped = REPO / "config" / "xenkdump.yaml"
    assert keys_in_yaml_text(shipped.read_text()) == keys(CONFIG_SCHEMA)
    value = load([(str(shipped), shipped.read_bytes())], CONFIG_SCHEMA).value
    assert isinstance(value, dict)
    for name, sub in schema(CONFIG_SCHEMA)["properties"].items():
        if name in value and not isinstance(sub.get("default"), (dict, list, type(None))):
            assert value[name] == sub["default"], name


def test_shipped_file_spells_out_the_defaults() -> None:
    shipped = load_settings(REPO / "config" / "xenkdump.yaml")
    default = Settings()
    for name in (
        "kernel",
        "initrd",
        "state_dir",
        "boot_dir",
        "topology_check_interval",
        "reload_debounce",
        "selftest",
    ):
        assert getattr(shipped, name) == getattr(default, name), name


# ---- kernel: running | latest | PATH -----------------------------------------------------


def make_boot(tmp_path: Path, versions: list[str], initrds: list[str]) -> Path:
    boot = tmp_path / "boot"
    boot.mkdir()
    for v in versions:
        (boot / f"vmlinuz-{v}").write_bytes(b"k")
    for v in initrds:
        (boot / f"initrd.img-{v}").write_bytes(b"i")
    return boot


def test_latest_uses_version_order_and_matching_initrd(tmp_path: Path) -> None:
    boot = make_boot(
        tmp_path, ["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"], ["6.1.0-10-amd64"]
    )
    s = parse_settings(f"kernel: latest\ninitrd: auto\nboot_dir: {boot}\n", "f")
    files = kernels.resolve(s)
    assert files.kernel == boot / "vmlinuz-6.1.0-10-amd64"
    assert files.initrd == boot / "initrd.img-6.1.0-10-amd64"


def test_running_uses_the_release_and_no_initrd_when_absent(tmp_path: Path) -> None:
    boot = make_boot(tmp_path, ["6.1.0-9-amd64"], [])
    s = parse_settings(f"boot_dir: {boot}\n", "f")
    files = kernels.resolve(s, release="6.1.0-9-amd64")
    assert files == kernels.KernelFiles(boot / "vmlinuz-6.1.0-9-amd64", None)


def test_relevance_filter(tmp_path: Path) -> None:
    boot = make_boot(tmp_path, ["6.1.0-9-amd64"], [])
    running = parse_settings(f"boot_dir: {boot}\n", "f")
    assert kernels.is_relevant(running, boot / "vmlinuz-6.1.0-9-amd64", release="6.1.0-9-amd64")
    assert kernels.is_relevant(running, boot / "initrd.img-6.1.0-9-amd64", release="6.1.0-9-amd64")
    assert not kernels.is_relevant(running, boot / "vmlinuz-6.2", release="6.1.0-9-amd64")
    assert not kernels.is_relevant(
        running, boot / "System.map-6.1.0-9-amd64", release="6.1.0-9-amd64"
    )
    latest = parse_settings(f"kernel: latest\nboot_dir: {boot}\n", "f")
    assert kernels.is_relevant(latest, boot / "vmlinuz-6.2")
    assert not kernels.is_relevant(latest, boot / "vmlinuz-6.2.dpkg-new")
    fixed = parse_settings("kernel: /k/vmlinuz-1\ninitrd: auto\n", "f")
    assert kernels.is_relevant(fixed, Path("/k/vmlinuz-1"))
    assert kernels.is_relevant(fixed, Path("/k/initrd.img-1"))
    assert not kernels.is_relevant(fixed, Path("/k/other"))
    assert kernels.watched_directories(fixed) == {Path("/k")}


# ---- drop-ins: <config>.d/*.yaml laid over the main file in lexical order -------------------


def make_config(tmp_path: Path, main: str, dropins: dict[str, str | bytes]) -> Path:
    config = tmp_path / "xenkdump.yaml"
    config.write_text(main)
    if dropins:
        (tmp_path / "xenkdump.yaml.d").mkdir()
    for name, text in dropins.items():
        path = tmp_path / "xenkdump.yaml.d" / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    return config


def test_dropins_merge_in_lexical_order_mappings_by_key_lists_replaced(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        "kernel: running\ncmdline:\n  append: [irqpoll]\n  remove: [quiet]\nreload_debounce: 1\n",
        {
            "20-host.yaml": "cmdline:\n  append: [nr_cpus=1, irqpoll]\nreload_debounce: 3\n",
            "10-site.yaml": "kernel: latest\nreload_debounce: 2\n",
            ".10-site.yaml.swp": "kernel: [",  # an editor's file: skipped
            "30-old.yaml.dpkg-old": "kernel: [",  # not *.yaml: skipped
        },
    )
    s = load_settings(config)
    assert s.kernel is KernelPolicy.LATEST
    assert s.cmdline == CmdlineSettings(None, ("nr_cpus=1", "irqpoll"), ("quiet",))
    assert s.reload_debounce == 3.0  # 20-host.yaml is laid last
    d = tmp_path / "xenkdump.yaml.d"
    assert s.sources == (config, d / "10-site.yaml", d / "20-host.yaml")
    assert s.source == config


def test_digest_covers_the_merged_result_not_the_layout(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = make_config(tmp_path / "a", "kernel: latest\nreload_debounce: 2\n", {})
    two = make_config(
        tmp_path / "b", "# split in two\nkernel: latest\n", {"50.yaml": "reload_debounce: 2.0\n"}
    )
    assert load_settings(one).digest == load_settings(two).digest
    (tmp_path / "b" / "xenkdump.yaml.d" / "60.yaml").write_text("reload_debounce: 3\n")
    assert load_settings(one).digest != load_settings(two).digest


@pytest.mark.parametrize(
    ("dropin", "expected"),
    [
        (b"reload_debounce: -2\n", ":1: reload_debounce: expected a number of seconds >= 0"),
        (b"\x7fELF\x02\x01\x01\x00\xff\xfe", ": expected UTF-8 text"),
        (b"<config><kernel>x</kernel>\n  - a: b\n", ":2: invalid YAML: "),
        (
            b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + b"".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 12)}]\n".encode()
                for i in range(8)
            ),
            ":1: expected at most 10000 values",
        ),
    ],
    ids=["bad value", "binary", "not YAML", "alias bomb"],
)
def test_bad_dropin_is_one_line_naming_it(tmp_path: Path, dropin: bytes, expected: str) -> None:
    config = make_config(tmp_path, "kernel: running\n", {"50-bad.yaml": dropin})
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{tmp_path}/xenkdump.yaml.d/50-bad.yaml{expected}")


def test_unlistable_dropin_dir_and_unreadable_dropin(tmp_path: Path) -> None:
    config = make_config(tmp_path, "kernel: running\n", {})
    (tmp_path / "xenkdump.yaml.d").write_text("not a directory")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert str(info.value) == (
        f"{tmp_path}/xenkdump.yaml.d: cannot list the drop-in directory: Not a directory"
    )
    (tmp_path / "xenkdump.yaml.d").unlink()
    (tmp_path / "xenkdump.yaml.d" / "10-dir.yaml").mkdir(parents=True)
    with pytest.raises(
        ConfigError, match=r"10-dir.yaml: configuration file: expected a regular file"
    ):
        load_settings(config)


def test_selftest_section() -> None:
    s = parse_settings(
        "selftest:\n  after_reload: true\n  level: boot\n  timeout: 300\n  memory_limit: 512\n",
        "f.yaml",
    )
    assert s.selftest == SelfTestSettings(
        after_reload=True, level="boot", timeout=300, memory_limit_mib=512
    )
    assert parse_settings("selftest:\n", "f.yaml").selftest == SelfTestSettings()
    assert problems("selftest:\n  after_reload: yes please\n  timeout: 5\n  level: full\n") == [
        (2, "selftest.after_reload", "expected true or false, found string 'yes please'"),
        (3, "selftest.timeout", "expected whole seconds from 10 to 86400, found integer '5'"),
        (4, "selftest.level", "expected 'handoff', 'boot' or null, found string 'full'"),
    ]
    handoff = parse_settings(
        "selftest:\n  level: handoff\n  xen: /boot/xen-4.17-amd64.gz\n"
        "  dom0_kernel: /boot/vmlinuz-6.1.0-57-amd64\n",
        "f.yaml",
    ).selftest
    assert (handoff.level, handoff.xen, handoff.dom0_kernel) == (
        "handoff",
        Path("/boot/xen-4.17-amd64.gz"),
        Path("/boot/vmlinuz-6.1.0-57-amd64"),
    )
    assert SelfTestSettings().level == ""  # unset: handoff where a Xen binary matches
    assert problems("selftest:\n  xen: xen.gz\n  dom0_kernel: 7\n") == [
        (2, "selftest.xen", "expected null or an absolute path, found string 'xen.gz'"),
        (3, "selftest.dom0_kernel", "expected null or an absolute path, found integer '7'"),
    ]
    # selftest.schedule: a calendar systemd-analyze accepts (tests/unit/test_selftest_schedule.py).
    assert parse_settings("selftest:\n  schedule: daily\n", "f.yaml").selftest.schedule == "daily"
    assert problems("selftest:\n  schedule: dayly\n")[0][:2] == (2, "selftest.schedule")
