"""The crash kernel's command line.

Starts from the user's line (or dom0's /proc/cmdline), drops what only makes
sense in a Xen dom0, adds what a crash kernel needs and what kexec-tools adds
(docs/crash-image.md §2.3: ``elfcorehdr=<addr/1024>K`` and ``acpi_rsdp=``).
Nothing else is added: in particular never ``kexec_jump_back_entry=``, which
kexec-tools' purgatory appends on Xen <= 4.21 (docs/xen-kexec-contract.md §5.3) and ours does not.

Tokens are split the way the kernel's next_arg() does (whitespace outside
double quotes) and kept verbatim.  Everything after a lone ``--`` belongs to
init, so additions go before it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from typing import Final

from xenkdump.errors import ImageError, InputError, PlanError

DEFAULT_CRASH_ARGS: tuple[str, ...] = ("irqpoll", "nr_cpus=1", "reset_devices")

# Keys dropped whatever their value: they describe dom0 under Xen, the running
# (not the crash) kernel, or carve memory a 256 MiB crash kernel does not have.
_DOM0_KEYS: Final = frozenset(
    {
        "xencons",  # PV console selection
        "dom0_mem",  # Xen's option, sometimes copied into dom0's line by mistake
        "dom0_max_vcpus",
        "crashkernel",  # reserving a crash area inside the crash kernel makes no sense
        "elfcorehdr",  # ours is added below; a stale one would win or conflict
        "kexec_jump_back_entry",
        "BOOT_IMAGE",  # GRUB's note of the dom0 image path
        "initrd",  # a boot loader's initrd path, not ours
        "memmap",  # the e820 in boot_params is the crash kernel's map (crash-image.md §2.5)
        "mem",
        "hugepages",  # the distributions' kdump scripts drop these too
        "hugepagesz",
        "default_hugepagesz",
        "hugetlb_cma",
        "cma",
    }
)
# Key prefixes of Xen-specific kernel and module options (xen_nopvspin,
# xen-pciback.hide, xen.balloon...): meaningless on the bare-metal crash kernel.
_DOM0_PREFIXES: Final = ("xen_", "xen-", "xen.")
# key=value pairs dropped only for these values.
_DOM0_VALUES: Final = {"console": ("hvc",), "earlyprintk": ("xen",), "earlycon": ("xen",)}

_LOADER_KEYS: Final = frozenset({"elfcorehdr", "kexec_jump_back_entry"})
_SPACE: Final = " \t\n\v\f\r"
# Linux 8250 port index for the legacy I/O bases (Xen comN=...,<io-base>).
_IO_BASE_TTY: Final = {0x3F8: 0, 0x2F8: 1, 0x3E8: 2, 0x2E8: 3}


def split_cmdline(s: str) -> list[str]:
    """Whitespace-separated tokens; double quotes protect spaces (kernel next_arg()).

    Quotes stay in the token, so ``" ".join(split_cmdline(s))`` is ``s`` with its
    whitespace normalised.  An unterminated quote runs to the end, as in the kernel.
    """
    tokens: list[str] = []
    cur: list[str] = []
    in_quote = False
    for ch in s:
        if ch == '"':
            in_quote = not in_quote
            cur.append(ch)
        elif ch in _SPACE and not in_quote:
            if cur:
                tokens.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        tokens.append("".join(cur))
    return tokens


def arg_key(token: str) -> str:
    """``key`` of ``key=value`` (quotes removed); the whole token for a flag."""
    return token.split("=", 1)[0].replace('"', "")


def _arg_value(token: str) -> str:
    return token.split("=", 1)[1].replace('"', "") if "=" in token else ""


def _split_init(tokens: list[str]) -> tuple[list[str], list[str]]:
    """(kernel params, ``--`` and init's args)."""
    if "--" in tokens:
        i = tokens.index("--")
        return tokens[:i], tokens[i:]
    return tokens, []


def is_dom0_only(token: str) -> bool:
    """True for arguments that belong to dom0 under Xen, not to the crash kernel."""
    key = arg_key(token)
    if key in _DOM0_KEYS or key.startswith(_DOM0_PREFIXES):
        return True
    prefixes = _DOM0_VALUES.get(key)
    return prefixes is not None and _arg_value(token).startswith(prefixes)


def _removed(token: str, remove: Sequence[str]) -> bool:
    # "key" drops every key=...; "key=value" drops that exact argument.
    return any(token == r if "=" in r else arg_key(token) == r for r in remove)


def _edit(
    base: str, append: Sequence[str], remove: Sequence[str], defaults: bool
) -> tuple[list[str], list[str], list[str]]:
    """(kernel params kept + defaults, appended params, init part)."""
    params, init = _split_init(split_cmdline(base))
    kept = [t for t in params if not is_dom0_only(t) and not _removed(t, remove)]
    if defaults:
        present = {arg_key(t) for t in kept}
        kept += [
            d for d in DEFAULT_CRASH_ARGS if arg_key(d) not in present and not _removed(d, remove)
        ]
    # The loader's own arguments are never taken from the user (they would conflict).
    extra = [t for a in append for t in split_cmdline(a) if arg_key(t) not in _LOADER_KEYS]
    # An appended "-- args" adds arguments for init; they join the base's init part.
    extra, extra_init = _split_init(extra)
    if extra_init:
        init = init + extra_init[1:] if init else extra_init
    return kept, extra, init


def user_cmdline(
    *, base: str, append: Sequence[str] = (), remove: Sequence[str] = (), use_defaults: bool = True
) -> str:
    """The user-level crash command line, before host facts are known.

    ``base`` stripped of dom0-only arguments and ``remove`` keys, then
    DEFAULT_CRASH_ARGS not already present (if ``use_defaults``), then ``append``.
    crash_cmdline() later adds the console and elfcorehdr=/acpi_rsdp=.
    """
    kept, extra, init = _edit(base, append, remove, use_defaults)
    line = " ".join(kept + extra + init)
    check_text(line)
    return line


def check_text(line: str) -> None:
    """InputError unless ``line`` is UTF-8 text without control characters.

    A control character would reach the crash kernel's parser, the record, the journal
    and D-Bus; bytes that are not UTF-8 (surrogate escapes from argv) cannot be sent
    on D-Bus at all.
    """
    for i, ch in enumerate(line):
        if ord(ch) < 0x20 or ord(ch) == 0x7F or 0xD800 <= ord(ch) <= 0xDFFF:
            what = (
                "bytes that are not UTF-8"
                if 0xD800 <= ord(ch) <= 0xDFFF
                else f"control character {ord(ch):#04x}"
            )
            raise InputError(
                f"command line: expected printable UTF-8 text, found {what} at character {i}"
            )


def _xen_serial(xen_cmdline: str) -> str | None:
    """``console=ttyS<n>,<baud>[<parity><bits>]`` for Xen's serial console, or None.

    Xen's ``console=`` is a comma list (e.g. ``com1,vga``); ``comN=`` is
    ``<baud>[/<base-baud>][,DPS[,<io-base>|pci|amt[,...]]]``.  An ``auto`` or
    missing baud becomes 115200, the rate Xen's own docs use.
    """
    tokens = split_cmdline(xen_cmdline)
    consoles: list[str] = []
    ports: dict[str, str] = {}
    for t in tokens:
        key, value = arg_key(t), _arg_value(t)
        if key == "console":
            consoles = value.split(",")
        elif key in ("com1", "com2"):
            ports[key] = value
    port = next((c for c in consoles if c in ("com1", "com2")), None)
    if port is None:
        return None
    index = 0 if port == "com1" else 1
    parts = ports.get(port, "").split(",")
    baud = parts[0].split("/", 1)[0]
    if not baud.isdigit() or int(baud) == 0:
        baud = "115200"
    suffix = ""
    dps = parts[1] if len(parts) > 1 else ""
    m = re.fullmatch(r"([5-8])([neoms])([12])", dps)
    if m and (m.group(1), m.group(2)) != ("8", "n"):
        suffix = f"{m.group(2)}{m.group(1)}"  # Linux writes <baud><parity><bits>
    if len(parts) > 2:
        # pci / amt / empty: keep the comN index.
        with contextlib.suppress(ValueError):
            index = _IO_BASE_TTY.get(int(parts[2], 0), index)
    return f"console=ttyS{index},{int(baud)}{suffix}"


def _has_tty(tokens: Iterable[str], tty: str) -> bool:
    return any(arg_key(t) == "console" and _arg_value(t).split(",", 1)[0] == tty for t in tokens)


def crash_cmdline(
    *,
    base: str,
    xen_cmdline: str = "",
    elfcorehdr_addr: int,
    acpi_rsdp: int = 0,
    append: Sequence[str] = (),
    remove: Sequence[str] = (),
    cmdline_size: int = 2047,
    defaults: bool = True,
) -> str:
    """The crash kernel's full command line (§2.3).

    ``base`` stripped (dom0-only args, ``remove``), DEFAULT_CRASH_ARGS not
    present (unless ``defaults`` is False, for a base already built by
    user_cmdline from an explicit line), Xen's serial console as
    ``console=ttyS<n>,<baud>``, ``append``, ``elfcorehdr=<addr/1024>K`` and
    ``acpi_rsdp=0x..`` when non-zero; init's ``--`` part last.
    PlanError if elfcorehdr_addr is not 1 KiB aligned; ImageError if the line
    is longer than the kernel's ``cmdline_size``.
    """
    if elfcorehdr_addr < 0 or elfcorehdr_addr % 1024:
        raise PlanError(
            f"elfcorehdr address: expected a multiple of 1 KiB, found {elfcorehdr_addr:#x}"
        )
    kept, extra, init = _edit(base, append, remove, defaults)
    if acpi_rsdp:
        kept = [t for t in kept if arg_key(t) != "acpi_rsdp"]
    console = _xen_serial(xen_cmdline)
    if console is not None:
        tty = console.split("=", 1)[1].split(",", 1)[0]
        if not _has_tty(kept + extra, tty):
            kept.append(console)
    tail = [f"elfcorehdr={elfcorehdr_addr >> 10}K"]
    if acpi_rsdp:
        tail.append(f"acpi_rsdp={acpi_rsdp:#x}")
    line = " ".join(kept + extra + tail + init)
    size = len(line.encode("utf-8", errors="surrogateescape"))
    if size > cmdline_size:
        raise ImageError(
            f"crash command line: expected at most {cmdline_size} bytes (the kernel's "
            f"cmdline_size), found {size}"
        )
    return line
