"""The crash kernel's command line: stripping, defaults, console translation, additions,
limits, and what must never appear."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenkdump.errors import ImageError, InputError, PlanError
from xenkdump.image import cmdline
from xenkdump.image.cmdline import (
    DEFAULT_CRASH_ARGS,
    crash_cmdline,
    split_cmdline,
    user_cmdline,
)

# A Debian dom0's /proc/cmdline under Xen, as GRUB's 20_linux_xen writes it.
DOM0 = (
    "BOOT_IMAGE=/boot/vmlinuz-6.1.0-56-amd64 root=UUID=1b2c3d4e ro console=hvc0 "
    "earlyprintk=xen xencons=hvc xen-pciback.hide=(0000:03:00.0) xen_nopvspin "
    "dom0_mem=4096M crashkernel=256M quiet"
)
XEN = "console=com1,vga com1=115200,8n1 dom0_mem=4096M,max:4096M crashkernel=256M"
EHDR = 0xBFBFC000  # 1 KiB aligned


def test_split_respects_quotes() -> None:
    assert split_cmdline('a b="c d" e') == ["a", 'b="c d"', "e"]
    assert split_cmdline('  a\tb\n"c d"  ') == ["a", "b", '"c d"']
    assert split_cmdline('x="unterminated y z') == ['x="unterminated y z']
    assert split_cmdline("") == []


def test_dom0_line_stripped_and_completed() -> None:
    line = crash_cmdline(base=DOM0, xen_cmdline=XEN, elfcorehdr_addr=EHDR)
    toks = split_cmdline(line)
    assert toks == [
        "root=UUID=1b2c3d4e",
        "ro",
        "quiet",
        "irqpoll",
        "nr_cpus=1",
        "reset_devices",
        "console=ttyS0,115200",
        f"elfcorehdr={EHDR // 1024}K",
    ]


def test_defaults_not_duplicated() -> None:
    line = crash_cmdline(base="irqpoll nr_cpus=2 reset_devices", elfcorehdr_addr=0)
    toks = split_cmdline(line)
    for d in ("irqpoll", "reset_devices"):
        assert toks.count(d) == 1
    assert [t for t in toks if t.startswith("nr_cpus=")] == ["nr_cpus=2"]
    assert toks[-1] == "elfcorehdr=0K"


def test_defaults_can_be_removed_or_off() -> None:
    toks = split_cmdline(crash_cmdline(base="ro", elfcorehdr_addr=0, remove=["irqpoll"]))
    assert "irqpoll" not in toks and "nr_cpus=1" in toks
    toks = split_cmdline(crash_cmdline(base="ro", elfcorehdr_addr=0, defaults=False))
    assert not set(DEFAULT_CRASH_ARGS) & set(toks)


def test_remove_and_append() -> None:
    line = crash_cmdline(
        base="root=/dev/sda1 quiet loglevel=3 console=tty0",
        elfcorehdr_addr=4096,
        remove=["quiet", "loglevel=3"],
        append=["no5lvl", 'dyndbg="file foo.c +p"'],
        acpi_rsdp=0xF05B0,
    )
    toks = split_cmdline(line)
    assert "quiet" not in toks and "loglevel=3" not in toks
    assert toks[-4:] == ["no5lvl", 'dyndbg="file foo.c +p"', "elfcorehdr=4K", "acpi_rsdp=0xf05b0"]


@pytest.mark.parametrize(
    ("xen", "console"),
    [
        ("console=com1 com1=115200,8n1", "console=ttyS0,115200"),
        ("console=vga,com2 com2=57600,8n1", "console=ttyS1,57600"),
        ("console=com1 com1=9600,7e1", "console=ttyS0,9600e7"),
        ("console=com1 com1=115200/1843200,8n1", "console=ttyS0,115200"),
        ("console=com1 com1=auto", "console=ttyS0,115200"),
        ("console=com1", "console=ttyS0,115200"),
        ("console=com1 com1=38400,8n1,0x2f8,3", "console=ttyS1,38400"),
        ("console=com1 com1=115200,8n1,pci", "console=ttyS0,115200"),
    ],
)
def test_console_translation(xen: str, console: str) -> None:
    toks = split_cmdline(crash_cmdline(base="ro", xen_cmdline=xen, elfcorehdr_addr=0))
    assert [t for t in toks if t.startswith("console=")] == [console]


@pytest.mark.parametrize("xen", ["", "console=vga", "com1=115200,8n1", "console=dbgp"])
def test_no_serial_console(xen: str) -> None:
    toks = split_cmdline(crash_cmdline(base="ro", xen_cmdline=xen, elfcorehdr_addr=0))
    assert not [t for t in toks if t.startswith("console=")]


def test_console_not_duplicated() -> None:
    base = "ro console=ttyS0,115200n8"
    toks = split_cmdline(crash_cmdline(base=base, xen_cmdline=XEN, elfcorehdr_addr=0))
    assert [t for t in toks if t.startswith("console=")] == ["console=ttyS0,115200n8"]


def test_kept_consoles_other_than_hvc() -> None:
    toks = split_cmdline(
        crash_cmdline(base="console=tty0 console=hvc0", xen_cmdline=XEN, elfcorehdr_addr=0)
    )
    assert [t for t in toks if t.startswith("console=")] == ["console=tty0", "console=ttyS0,115200"]


def test_init_args_stay_last() -> None:
    line = crash_cmdline(base="ro -- single foo=bar", elfcorehdr_addr=2048, append=["x"])
    toks = split_cmdline(line)
    assert toks[toks.index("--") :] == ["--", "single", "foo=bar"]
    assert toks.index("elfcorehdr=2K") < toks.index("--")


def test_appended_init_args() -> None:
    line = crash_cmdline(base="ro -- single", elfcorehdr_addr=0, append=["quiet -- emergency"])
    assert line.endswith("quiet elfcorehdr=0K -- single emergency")
    line = crash_cmdline(base="ro", elfcorehdr_addr=0, append=["-- emergency"], defaults=False)
    assert line == "ro elfcorehdr=0K -- emergency"


def test_stale_loader_args_replaced() -> None:
    base = "ro elfcorehdr=100K kexec_jump_back_entry=0x1234 acpi_rsdp=0x1"
    line = crash_cmdline(
        base=base, elfcorehdr_addr=8192, acpi_rsdp=0xE0000, append=["elfcorehdr=5K"]
    )
    toks = split_cmdline(line)
    assert [t for t in toks if t.startswith("elfcorehdr=")] == ["elfcorehdr=8K"]
    assert [t for t in toks if t.startswith("acpi_rsdp=")] == ["acpi_rsdp=0xe0000"]
    assert "kexec_jump_back_entry" not in line
    # without a known RSDP the user's own acpi_rsdp= stays
    assert "acpi_rsdp=0x1" in crash_cmdline(base="acpi_rsdp=0x1", elfcorehdr_addr=0)


def test_elfcorehdr_alignment() -> None:
    with pytest.raises(PlanError, match="expected a multiple of 1 KiB, found 0x1200"):
        crash_cmdline(base="", elfcorehdr_addr=0x1200)


def test_length_limit() -> None:
    base = "x" * 2040
    with pytest.raises(ImageError, match=r"expected at most 2047 bytes .*found 20[0-9][0-9]"):
        crash_cmdline(base=base, elfcorehdr_addr=0)
    line = crash_cmdline(base="x" * 1900, elfcorehdr_addr=0, defaults=False)
    assert len(line) <= 2047
    with pytest.raises(ImageError, match="expected at most 255 bytes"):
        crash_cmdline(base="a" * 250, elfcorehdr_addr=0, cmdline_size=255)


def test_user_cmdline() -> None:
    assert user_cmdline(base=DOM0, use_defaults=False) == "root=UUID=1b2c3d4e ro quiet"
    line = user_cmdline(base=DOM0, append=["no5lvl"], remove=["quiet"])
    assert line == "root=UUID=1b2c3d4e ro irqpoll nr_cpus=1 reset_devices no5lvl"
    # applying crash_cmdline on top adds nothing twice
    full = crash_cmdline(base=line, xen_cmdline=XEN, elfcorehdr_addr=0)
    toks = split_cmdline(full)
    assert len(toks) == len(set(toks))


TOKEN = st.text(alphabet='abcdefgxyz_=-.,019"', min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(TOKEN, max_size=30), st.lists(TOKEN, max_size=5), st.integers(0, 1 << 30))
def test_never_jump_back_and_idempotent(base: list[str], append: list[str], kib: int) -> None:
    line = " ".join(base)
    try:
        out = crash_cmdline(base=line, xen_cmdline=XEN, elfcorehdr_addr=kib * 1024, append=append)
    except ImageError as exc:
        assert "cmdline_size" in str(exc)
        return
    toks = split_cmdline(out)
    assert not any(t.startswith("kexec_jump_back_entry") for t in toks)
    assert not any(
        t.startswith(("console=hvc", "xencons", "dom0_mem", "crashkernel")) for t in toks
    )
    # An unbalanced quote swallows the rest of the line, as in the kernel; otherwise the
    # result has exactly one elfcorehdr= and building again from it changes nothing.
    if out.count('"') % 2 == 0 and all(a.count('"') % 2 == 0 for a in append):
        assert sum(1 for t in toks if t.startswith("elfcorehdr=")) == 1
        again = crash_cmdline(base=out, xen_cmdline=XEN, elfcorehdr_addr=kib * 1024)
        assert again == out


def test_limit_is_counted_in_bytes_not_characters() -> None:
    # 1,500 characters, 3,000 bytes: over a 2,047-byte cmdline_size.
    wide = "x=" + "é" * 1500
    with pytest.raises(ImageError, match=r"expected at most 2047 bytes .* found 30\d\d$"):
        cmdline.crash_cmdline(base=wide, elfcorehdr_addr=0x1000, cmdline_size=2047)


@pytest.mark.parametrize(
    ("base", "found"),
    [
        ("root=/dev/sda\x07", "control character 0x07"),
        ('a="x\ny"', "control character 0x0a"),
        ("panic=\x7f", "control character 0x7f"),
        (os.fsdecode(b"init=/sbin/\xffinit"), "bytes that are not UTF-8"),
    ],
)
def test_control_characters_and_undecodable_bytes_are_refused(base: str, found: str) -> None:
    with pytest.raises(
        InputError, match=f"command line: expected printable UTF-8 text, found {found}"
    ):
        cmdline.user_cmdline(base=base)
