"""The one YAML-and-JSON-Schema mechanism: line marks, safety limits, merging, the schemas."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from xenkdump.hv.port import E820_NAMES
from xenkdump.schema import CONFIG_SCHEMA, SIM_HOST_SCHEMA, ConfigProblems, load, read_yaml, schema
from xenkdump.schema.document import MAX_VALUES, merge
from xenkdump.settings import Settings
from xenkdump.settings.load import settings_from


def problems(files: list[tuple[str, str]], name: str = CONFIG_SCHEMA) -> list[str]:
    with pytest.raises(ConfigProblems) as info:
        load([(s, t.encode()) for s, t in files], name)
    assert "\n" not in str(info.value)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("name", [CONFIG_SCHEMA, SIM_HOST_SCHEMA])
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    Draft202012Validator.check_schema(schema(name))

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _v in pairs]
        assert len(keys) == len(set(keys)), f"{name}: a key twice in one object: {keys}"
        return dict(pairs)

    text = (resources.files("xenkdump.schema") / name).read_text()
    assert json.loads(text, object_pairs_hook=no_duplicates) == schema(name)


def test_config_schema_defaults_are_the_model_defaults() -> None:
    props = schema(CONFIG_SCHEMA)["properties"]
    defaults = {
        k: v["default"]
        if "properties" not in v
        else {name: sub["default"] for name, sub in v["properties"].items()}
        for k, v in props.items()
    }
    assert set(defaults) == set(props)
    assert settings_from(defaults, Settings()) == Settings()


def test_sim_host_e820_names_are_the_simulators() -> None:
    e820 = schema(SIM_HOST_SCHEMA)["$defs"]["e820"]["properties"]["type"]
    assert e820["anyOf"][0]["enum"] == list(E820_NAMES)


def test_alias_bomb_is_one_line_error() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 10)}]")
    found = problems([("/etc/bomb.yaml", "\n".join(lines) + "\n")])
    assert len(found) == 1
    assert found[0].startswith("/etc/bomb.yaml:1: ")  # the anchored value that kept growing
    assert f"expected at most {MAX_VALUES} values" in found[0]


def test_self_referencing_alias_and_deep_nesting_are_one_line_errors() -> None:
    assert problems([("/c.yaml", "a: &x [*x]\n")])[0].startswith("/c.yaml:")
    assert "nested" in problems([("/c.yaml", "[" * 5000 + "]" * 5000)])[0]


def test_empty_and_comment_only_files_are_empty_mappings() -> None:
    assert load([("/a.yaml", b""), ("/b.yaml", b"# nothing\n")], CONFIG_SCHEMA).value == {}


def test_merge_mappings_key_by_key_lists_replaced() -> None:
    base = read_yaml(b"kernel: running\ncmdline:\n  append: [a, b]\n  remove: [quiet]\n", "/m")
    drop = read_yaml(b"cmdline:\n  append: [c]\nreload_debounce: 2\n", "/d/10.yaml")
    merged = merge(base, drop)
    assert merged.value == {
        "kernel": "running",
        "cmdline": {"append": ["c"], "remove": ["quiet"]},
        "reload_debounce": 2,
    }
    assert merged.sources == ("/m", "/d/10.yaml")
    assert merged.mark(("cmdline", "append", 0)).source == "/d/10.yaml"
    assert ("cmdline", "append", 1) not in merged.marks  # the replaced list's marks went too
    assert merged.mark(("cmdline", "remove", 0)).source == "/m"


def test_errors_name_the_file_and_line_that_set_the_bad_value() -> None:
    found = problems(
        [
            ("/etc/x.yaml", "kernel: running\nreload_debounce: 1\n"),
            ("/etc/x.yaml.d/10-a.yaml", "\nreload_debounce: -1\n"),
            ("/etc/x.yaml.d/20-b.yaml", "cmdline:\n  apend: [x]\n"),
        ]
    )
    assert found == [
        "/etc/x.yaml.d/10-a.yaml:2: reload_debounce: "
        "expected a number of seconds >= 0, found integer '-1'",
        "/etc/x.yaml.d/20-b.yaml:2: cmdline.apend: "
        "unknown key (expected one of: base, append, remove)",
    ]


def test_a_later_file_can_fix_an_earlier_value() -> None:
    files = [("/a", b"kernel: relative\n"), ("/b", b"kernel: latest\n")]
    assert load(files, CONFIG_SCHEMA).value == {"kernel": "latest"}


def test_syntax_errors_of_every_file_are_reported(tmp_path: Path) -> None:
    found = problems([("/a.yaml", "kernel: [\n"), ("/b.yaml", "- x\n  y: 1\n")])
    assert [f.split(": ")[0] for f in found] == ["/a.yaml:2", "/b.yaml:2"]
    assert all("invalid YAML" in f for f in found)
