"""crashkernel= advice from Xen's own command line and the crash area it reserved (sans-I/O).

On a Xen host the crash area is reserved by **Xen** (``crashkernel=`` on Xen's command
line, KEXEC_RANGE_MA_CRASH); a PV dom0 ignores ``crashkernel=`` on its own command line
(it never reserves memory for kexec: Xen owns kexec).  xenkdump reloads without a window
only when the crash area holds two images, one per half (docs/reload-safety.md), so the
area must be at least twice the image's measured needs; the recommendation adds headroom
for kernel and initrd growth, rounded up to 64 MiB.

``advise(AdviceInputs)`` decides; it reads nothing.  On Debian, Xen's command line comes
from ``GRUB_CMDLINE_XEN_DEFAULT`` in ``/etc/default/grub.d/xen.cfg`` (then ``update-grub``
and a reboot), and the advice prints that exact line.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

from xenkdump.hv.port import AddressRange
from xenkdump.units import GIB, MIB, mib_up

FOUR_GIB = 4 * GIB
STEP = 64 * MIB
# Per half: room for a bigger kernel or initrd after an upgrade.
HEADROOM_MIN = 16 * MIB
# Used when no image could be measured (no kernel found): Debian's kernel and a
# typical initramfs need about 100 MiB, twice that with headroom.
UNMEASURED_DEFAULT = 512 * MIB
# ",below=" is Xen's grub-friendly spelling of "<" (Xen 4.10 and later).
BELOW_SINCE = (4, 10)
GRUB_FILE = "/etc/default/grub.d/xen.cfg"
GRUB_VARIABLE = "GRUB_CMDLINE_XEN_DEFAULT"
# Words Debian's GRUB script adds to Xen's line itself: not the administrator's to copy.
BOOTLOADER_WORDS = frozenset({"placeholder", "no-real-mode", "edd=off"})


class Verdict(enum.StrEnum):
    OK = "ok"  # two images fit, with headroom
    TIGHT = "tight"  # two images fit, without the recommended headroom
    TOO_SMALL = "too-small"  # a reload must unload first (or the image does not fit at all)
    MISSING = "missing"  # Xen reserved no crash area
    UNKNOWN = "unknown"  # a crash area, but no image measured to judge it by


@dataclass(frozen=True)
class AdviceInputs:
    xen_cmdline: str  # XENVER_commandline
    dom0_cmdline: str  # dom0's /proc/cmdline
    crash: AddressRange  # KEXEC_RANGE_MA_CRASH (size 0: none)
    required: int  # bytes one half must hold for the configured image; 0 if unmeasured
    xen_version: tuple[int, int]
    ram_above_4g: bool  # the machine memory map has RAM above 4 GiB


@dataclass(frozen=True)
class Advice:
    verdict: Verdict
    summary: str  # one line, for status
    details: tuple[str, ...]  # why, and what to do
    reserved: int  # bytes Xen reserved
    required: int  # bytes one image needs (0: unmeasured)
    recommended: int  # bytes to reserve
    xen_crashkernel: str  # the crashkernel= word on Xen's command line, "" if none
    dom0_crashkernel: str  # a crashkernel= word on dom0's command line (ignored), "" if none
    crashkernel: str  # the word to put on Xen's command line, "" when nothing to change
    grub_file: str
    grub_line: str  # the exact GRUB_CMDLINE_XEN_DEFAULT=... line, "" when nothing to change

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out["verdict"] = str(self.verdict)
        out["details"] = list(self.details)
        return out

    def text(self) -> str:
        """The advice as lines for a terminal."""
        lines = [self.summary, *(f"  {d}" for d in self.details)]
        if self.grub_line:
            lines += [
                f"In {self.grub_file}, set:",
                f"  {self.grub_line}",
                "then run update-grub and reboot.",
            ]
        return "\n".join(lines)


def two_halves(per_half: int) -> int:
    """A crashkernel= size whose halves each hold ``per_half`` bytes, in 64 MiB steps."""
    return -(-2 * per_half // STEP) * STEP


def recommended_size(required: int) -> int:
    """Bytes to reserve for two images of ``required`` bytes each, with headroom."""
    if required <= 0:
        return UNMEASURED_DEFAULT
    return two_halves(required + max(HEADROOM_MIN, required // 8))


def xen_size(n: int) -> str:
    """A size as Xen's command line spells it: 512M, 1G."""
    return f"{n // GIB}G" if n % GIB == 0 else f"{-(-n // MIB)}M"


def _last_word(cmdline: str, key: str) -> str:
    words = [w for w in cmdline.split() if w.startswith(f"{key}=")]
    return words[-1] if words else ""


def crashkernel_word(size: int, *, below_4g: bool, xen_version: tuple[int, int]) -> str:
    """``crashkernel=SIZE``, limited to below 4 GiB when asked (``,below=4G`` or ``<4G``)."""
    word = f"crashkernel={xen_size(size)}"
    if not below_4g:
        return word
    return word + (",below=4G" if xen_version >= BELOW_SINCE else "<4G")


def grub_line(xen_cmdline: str, word: str) -> str:
    """Xen's current options without crashkernel= (and the boot loader's own), plus ``word``."""
    keep = [
        w
        for w in xen_cmdline.split()
        if not w.startswith("crashkernel=") and w not in BOOTLOADER_WORDS
    ]
    value = " ".join([*keep, word]).replace("\\", "\\\\").replace('"', '\\"')
    value = value.replace("$", "\\$").replace("`", "\\`")
    return f'{GRUB_VARIABLE}="{value}"'


def advise(inputs: AdviceInputs) -> Advice:
    """Judge the crash area against the image's needs; say exactly what to change."""
    crash, required = inputs.crash, inputs.required
    xen_word = _last_word(inputs.xen_cmdline, "crashkernel")
    dom0_word = _last_word(inputs.dom0_cmdline, "crashkernel")
    recommended = recommended_size(required)
    details: list[str] = []
    if dom0_word:
        details.append(
            f"dom0's command line has {dom0_word}: a PV dom0 ignores it (Xen, not dom0, "
            f"reserves the crash area); it belongs on Xen's command line ({GRUB_VARIABLE}), "
            "not on Linux's (GRUB_CMDLINE_LINUX)"
        )
    measured = f"the crash image needs {mib_up(required)} per half" if required else ""
    if crash.size == 0:
        verdict = Verdict.MISSING
        if xen_word:
            summary = (
                f"no crash area: Xen's command line has {xen_word} but Xen reserved nothing "
                "(no room at boot, or a size it could not parse)"
            )
        elif dom0_word:
            summary = f"no crash area: {dom0_word} is on dom0's command line, not on Xen's"
        else:
            summary = "no crash area: Xen was booted without crashkernel="
        details.append("without a crash area no crash kernel can be loaded")
        if not required:
            details.append(
                f"no crash image could be measured: {xen_size(recommended)} suits a Debian "
                "kernel and its initramfs"
            )
    elif not required:
        verdict = Verdict.UNKNOWN
        summary = (
            f"crash area {mib_up(crash.size)} at {crash.start:#x}: no crash image measured "
            "to judge it by"
        )
    elif crash.size < 2 * required:
        verdict = Verdict.TOO_SMALL
        fits = "does not fit at all" if crash.size < required else "fits only once"
        summary = (
            f"crash area too small: {mib_up(crash.size)} reserved, {measured}; the image {fits}"
        )
        details.append(
            "every reload must unload the armed image first: a crash meanwhile finds no "
            "crash kernel"
            if crash.size >= required
            else "no crash kernel can be loaded"
        )
    elif crash.size < recommended:
        verdict = Verdict.TIGHT
        summary = (
            f"crash area {mib_up(crash.size)}: two images fit ({measured}) but with little "
            f"room for a bigger kernel or initrd; {xen_size(recommended)} is recommended"
        )
    else:
        verdict = Verdict.OK
        summary = (
            f"crash area {mib_up(crash.size)} at {crash.start:#x}: two images fit ({measured})"
        )
    change = verdict in (Verdict.MISSING, Verdict.TOO_SMALL, Verdict.TIGHT)
    below = inputs.ram_above_4g and (
        change or crash.end > FOUR_GIB or "<" in xen_word or "below=" in xen_word
    )
    word = crashkernel_word(recommended, below_4g=below, xen_version=inputs.xen_version)
    if change and below:
        details.append(
            "this host has RAM above 4 GiB: the limit keeps the crash area below 4 GiB, "
            "where a crash kernel finds memory for 32-bit DMA"
        )
    if change and "<" in word:
        details.append('GRUB needs the "<" escaped there: write \\<4G')
    if crash.size and crash.end > FOUR_GIB and not change:
        details.append(
            "the crash area lies above 4 GiB: a crash kernel may find no memory for 32-bit "
            f"DMA; {crashkernel_word(recommended, below_4g=True, xen_version=inputs.xen_version)}"
            " on Xen's command line keeps it below"
        )
    return Advice(
        verdict=verdict,
        summary=summary,
        details=tuple(details),
        reserved=crash.size,
        required=required,
        recommended=recommended,
        xen_crashkernel=xen_word,
        dom0_crashkernel=dom0_word,
        crashkernel=word if change else "",
        grub_file=GRUB_FILE,
        grub_line=grub_line(inputs.xen_cmdline, word) if change else "",
    )
