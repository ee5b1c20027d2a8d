"""The binding's declarations against the real C headers (Debian libxen-dev).

A small C program including <xenctrl.h> and <xen/kexec.h> prints sizeof and
offsetof for every field of every struct the cdef declares, and the value of
every constant; cffi must agree exactly.  A struct added to decl/*.h without
a C counterpart here fails the test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import xenkdump_xenctrl as xc

ffi = xc.ffi

HEADERS = ("xenctrl.h", "xentoollog.h", "xen/kexec.h", "xen/version.h")
INCLUDE = Path("/usr/include")

# cffi name -> the C type it mirrors.  Every complete struct in the cdef
# must be listed (test_every_declared_struct_is_checked).
C_TYPES = {
    "xen_kexec_segment_t": "xen_kexec_segment_t",
    "struct xen_kexec_segment": "struct xen_kexec_segment",
    "xc_hypercall_buffer_t": "xc_hypercall_buffer_t",
    "struct xc_hypercall_buffer": "struct xc_hypercall_buffer",
    "struct e820entry": "struct e820entry",
    "xentoollog_level": "xentoollog_level",
}

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not all((INCLUDE / h).exists() for h in HEADERS),
    reason="needs gcc and libxen-dev's headers: run scripts/setup-test-env.sh",
)


def _field_paths(ctype: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every field, descending into nested structs/unions."""
    paths: list[str] = []
    for name, field in ctype.fields or ():
        path = prefix + name
        paths.append(path)
        if field.type.kind in {"struct", "union"}:
            paths += _field_paths(field.type, path + ".")
    return paths


def _constants() -> list[str]:
    names: list[str] = []
    for decl in xc.DECLS:
        text = (Path(xc.__file__).parent / "decl" / decl.file).read_text()
        names += re.findall(r"^#define\s+(\w+)", text, re.M)
        for body in re.findall(r"enum\s+\w*\s*\{(.*?)\}", text, re.S):
            names += re.findall(r"\b(XTL_\w+)", body)
    return names


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """{"T sizeof": n, "T field offsetof": n, "T field sizeof": n, "const NAME": v}."""
    lines = [f"#include <{h}>" for h in ("stddef.h", "stdio.h", *HEADERS)]
    lines.append("int main(void) {")
    for cname, ctype in C_TYPES.items():
        lines.append(f'  printf("%s sizeof %zu\\n", "{cname}", sizeof({ctype}));')
        t = ffi.typeof(cname)
        if t.kind != "struct":
            continue
        for path in _field_paths(t):
            lines.append(
                f'  printf("%s %s offsetof %zu\\n", "{cname}", "{path}", '
                f"offsetof({ctype}, {path}));"
            )
            lines.append(
                f'  printf("%s %s sizeof %zu\\n", "{cname}", "{path}", '
                f"sizeof((({ctype} *)0)->{path}));"
            )
    for name, _ in xc.PHYSINFO_FIELDS:
        lines.append(
            f'  printf("xc_physinfo_t {name} offsetof %zu\\n", offsetof(xc_physinfo_t, {name}));'
        )
        lines.append(
            f'  printf("xc_physinfo_t {name} sizeof %zu\\n", sizeof(((xc_physinfo_t *)0)->{name}));'
        )
    lines.append('  printf("xc_physinfo_t sizeof %zu\\n", sizeof(xc_physinfo_t));')
    for name in _constants():
        lines.append(f'  printf("const {name} %lld\\n", (long long)({name}));')
    lines += ["  return 0;", "}"]
    work = tmp_path_factory.mktemp("layout")
    (work / "layout.c").write_text("\n".join(lines) + "\n")
    subprocess.run(
        ["gcc", "-Wall", "-Werror", "-o", str(work / "layout"), str(work / "layout.c")],
        check=True,
        capture_output=True,
        text=True,
    )
    out = subprocess.run([str(work / "layout")], check=True, capture_output=True, text=True).stdout
    result: dict[str, int] = {}
    for line in out.splitlines():
        key, _, value = line.rpartition(" ")
        result[key] = int(value)
    return result


def test_every_declared_struct_is_checked() -> None:
    typedefs, structs, unions = ffi.list_types()
    complete = {f"struct {s}" for s in structs if ffi.typeof(f"struct {s}").fields is not None}
    complete |= {t for t in typedefs if ffi.typeof(t).kind == "struct" and ffi.typeof(t).fields}
    assert complete <= set(C_TYPES), f"add to C_TYPES: {sorted(complete - set(C_TYPES))}"
    assert not [u for u in unions if not u.startswith("$")]


@pytest.mark.parametrize("cname", sorted(C_TYPES))
def test_struct_layout_matches_header(cname: str, c_layout: dict[str, int]) -> None:
    assert ffi.sizeof(cname) == c_layout[f"{cname} sizeof"]
    t = ffi.typeof(cname)
    if t.kind != "struct":
        return
    paths = _field_paths(t)
    assert paths
    for path in paths:
        parts = path.split(".")
        assert ffi.offsetof(cname, *parts) == c_layout[f"{cname} {path} offsetof"], path
        field_type: Any = t
        for part in parts:
            field_type = dict(field_type.fields)[part].type
        assert ffi.sizeof(field_type) == c_layout[f"{cname} {path} sizeof"], path


def test_known_sizes(c_layout: dict[str, int]) -> None:
    # docs/xen-kexec-contract.md §2.3, §2.7, §2.8: the numbers the spec states.
    assert c_layout["xen_kexec_segment_t sizeof"] == 32
    assert c_layout["xc_hypercall_buffer_t sizeof"] == 40
    assert c_layout["struct e820entry sizeof"] == 20


def test_physinfo_leading_fields_match_header(c_layout: dict[str, int]) -> None:
    for name, offset in xc.PHYSINFO_FIELDS:
        assert c_layout[f"xc_physinfo_t {name} offsetof"] == offset, name
        assert c_layout[f"xc_physinfo_t {name} sizeof"] == 4, name
    assert c_layout["xc_physinfo_t sizeof"] <= xc.PHYSINFO_SIZE


def test_constants_match_header(c_layout: dict[str, int]) -> None:
    lib = xc.open_library()
    names = _constants()
    assert "XENVER_commandline" in names and "XTL_ERROR" in names
    for name in names:
        assert getattr(lib.ctrl, name) == c_layout[f"const {name}"], name
