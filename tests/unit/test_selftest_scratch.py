"""The staging VM's scratch disk (selftest/scratch.py): made by mke2fs, read back by
debugfs, judged by ``verdict``.  Images with a dump directory are made with
``mke2fs -d`` (what the capture agent leaves), raw ones by writing an ELF core over
the disk (what the standalone hook does)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from xenkdump.selftest import plan, scratch
from xenkdump.units import MIB

TOKEN = plan.token_for("abcdef012345")
DIR = "h1-20261202T101010Z"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def disk_with(tmp_path: Path, files: dict[str, bytes], meta: dict[str, Any] | None) -> Path:
    src = tmp_path / "src"
    d = src / DIR
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    if meta is not None:
        (d / "metadata.json").write_text(json.dumps(meta))
    image = tmp_path / "scratch.img"
    scratch.make(image, 64 * MIB)
    # The same file system, populated (mke2fs -d), as the agent leaves it.
    subprocess.run(
        ["/sbin/mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-d", str(src),
         str(image)],
        check=True,
    )  # fmt: skip
    return image


def metadata(files: dict[str, bytes], result: str = "complete") -> dict[str, Any]:
    return {
        "format": 1,
        "result": result,
        "steps": [
            {"name": "dmesg", "exit_code": 1, "seconds": 0.01, "bytes": 0, "command": "m"},
            {"name": "vmcore raw", "exit_code": 0, "seconds": 0.2, "bytes": 65536, "command": "c"},
        ],
        "files": {n: {"bytes": len(b), "sha256": sha(b)} for n, b in files.items()},
    }


def read(image: Path, tmp_path: Path) -> scratch.Verdict:
    found = scratch.read_back(image, tmp_path / "out", TOKEN)
    return scratch.verdict(found, TOKEN)


def test_make_gives_an_empty_ext4_file_system_without_a_journal(tmp_path: Path) -> None:
    image = tmp_path / "scratch.img"
    scratch.make(image, 64 * MIB)
    assert image.stat().st_size == 64 * MIB
    assert image.stat().st_blocks * 512 < 8 * MIB  # sparse
    info = subprocess.run(
        ["/sbin/dumpe2fs", "-h", str(image)], capture_output=True, text=True, check=True
    ).stdout
    assert "ext_attr" in info and "has_journal" not in info
    assert read(image, tmp_path) == scratch.Verdict(
        False, "the scratch disk holds neither a dump directory nor a raw vmcore"
    )


def test_the_agents_dump_directory_is_read_back_with_its_steps(tmp_path: Path) -> None:
    files = {"vmcore": b"\x7fELF" + bytes(100) + TOKEN + bytes(50), "dmesg.txt": b"log\n"}
    v = read(disk_with(tmp_path, files, metadata(files)), tmp_path)
    assert v.ok and v.result == "complete" and DIR in v.reason
    assert [s["name"] for s in v.steps] == ["dmesg", "vmcore raw"]
    assert (tmp_path / "out" / "vmcore").read_bytes() == files["vmcore"]


def test_the_token_may_be_in_the_saved_dmesg(tmp_path: Path) -> None:
    files = {"vmcore": b"\x7fELF filtered", "dmesg.txt": b"kmsg " + TOKEN + b"\n"}
    assert read(disk_with(tmp_path, files, metadata(files)), tmp_path).ok


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no-token", "holds no dump with the token"),
        ("failed", "says result 'failed'"),
        ("no-metadata", "has no metadata.json"),
        ("bad-sha", "vmcore does not match its sha256"),
        ("no-vmcore", "has no vmcore"),
    ],
)
def test_a_dump_that_is_not_whole_or_not_ours_fails(tmp_path: Path, case: str, reason: str) -> None:
    files = {"vmcore": b"\x7fELF" + TOKEN, "dmesg.txt": b"log\n"}
    meta: dict[str, Any] | None = metadata(files)
    if case == "no-token":
        files = {"vmcore": b"\x7fELF other memory", "dmesg.txt": b"log\n"}
        meta = metadata(files)
    elif case == "failed":
        meta = metadata(files, "failed")
    elif case == "no-metadata":
        meta = None
    elif case == "bad-sha":
        assert meta is not None
        meta["files"]["vmcore"]["sha256"] = "0" * 64
    elif case == "no-vmcore":
        files = {"dmesg.txt": b"log " + TOKEN}
        meta = metadata(files)
    v = read(disk_with(tmp_path, files, meta), tmp_path)
    assert not v.ok and reason in v.reason, v


def test_a_raw_vmcore_over_the_disk_is_the_standalone_hooks(tmp_path: Path) -> None:
    image = tmp_path / "scratch.img"
    scratch.make(image, 64 * MIB)
    memory = plan.synthetic_memory("abcdef012345")
    with image.open("r+b") as f:
        f.write(memory)
    assert read(image, tmp_path) == scratch.Verdict(True, "a raw vmcore with the token")
    other = plan.synthetic_memory("ffffff000000")
    with image.open("r+b") as f:
        f.write(other)
    assert not read(image, tmp_path).ok
    # A handoff run's vmcore is the whole VM's memory: the token may lie deep in it,
    # across a read boundary.
    with image.open("r+b") as f:
        f.write(memory[: plan.TOKEN_OFFSET] + bytes(len(TOKEN)))
        f.seek((5 << 20) - 7)
        f.write(TOKEN)
    assert read(image, tmp_path).ok


def test_dump_dirs_are_the_directories_named_like_dumps() -> None:
    listing = (
        "/2/040755/0/0/.//\n/2/040755/0/0/..//\n/11/040700/0/0/lost+found//\n"
        f"/12/040755/0/0/{DIR}//\n/13/100644/0/0/h2-20261202T101010Z/5/\n"
        "/14/040755/0/0/.incoming-h1-20261202T101011Z//\n"
    )
    # Not a file named like one, nor a directory the agent never finished (.incoming-).
    assert scratch.dump_dirs(listing) == [DIR]
