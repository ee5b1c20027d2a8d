"""crashkernel= advice (sans-I/O): every verdict, the exact GRUB line, the dom0-line mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xenkdump.advice.crashkernel import (
    Advice,
    AdviceInputs,
    Verdict,
    advise,
    grub_line,
    recommended_size,
    xen_size,
)
from xenkdump.hv.port import AddressRange
from xenkdump.units import GIB, MIB

XEN = "placeholder console=com1 com1=115200,8n1 dom0_mem=4G,max:4G crashkernel=256M no-real-mode"
NEED = 100 * MIB  # one image, per half
AREA = AddressRange(0xAE6FF000, 256 * MIB)  # crashkernel=256M below Xen


def run(
    crash: AddressRange = AREA,
    *,
    xen: str = XEN,
    dom0: str = "root=/dev/xvda1 ro quiet",
    required: int = NEED,
    version: tuple[int, int] = (4, 17),
    high_ram: bool = True,
) -> Advice:
    return advise(AdviceInputs(xen, dom0, crash, required, version, high_ram))


def test_recommended_size_is_two_images_with_headroom_in_64_mib_steps() -> None:
    assert recommended_size(100 * MIB) == 256 * MIB  # 2 x (100 + 16) = 232 -> 256
    assert recommended_size(400 * MIB) == 960 * MIB  # 2 x (400 + 50) = 900 -> 960
    assert recommended_size(0) == 512 * MIB  # unmeasured: a Debian kernel and initramfs
    for need in (1, 63 * MIB, 200 * MIB, 3 * GIB):
        size = recommended_size(need)
        assert size % (64 * MIB) == 0 and size >= 2 * need + 2 * 16 * MIB
    assert (xen_size(256 * MIB), xen_size(1 * GIB), xen_size(1536 * MIB)) == (
        "256M",
        "1G",
        "1536M",
    )


def test_a_right_sized_area_needs_nothing() -> None:
    a = run()
    assert a.verdict is Verdict.OK
    assert (a.crashkernel, a.grub_line) == ("", "")
    assert a.summary == (
        "crash area 256 MiB at 0xae6ff000: two images fit (the crash image needs 100 MiB per half)"
    )


def test_no_reservation_gives_the_exact_grub_line() -> None:
    a = run(AddressRange(0, 0), xen="placeholder console=com1 dom0_mem=4G,max:4G")
    assert a.verdict is Verdict.MISSING
    assert a.summary == "no crash area: Xen was booted without crashkernel="
    assert a.crashkernel == "crashkernel=256M,below=4G"
    # The boot loader's own words are not copied; everything else of Xen's line is kept.
    assert a.grub_line == (
        'GRUB_CMDLINE_XEN_DEFAULT="console=com1 dom0_mem=4G,max:4G crashkernel=256M,below=4G"'
    )
    assert "In /etc/default/grub.d/xen.cfg, set:" in a.text()
    assert "then run update-grub and reboot." in a.text()


def test_too_small_replaces_the_old_crashkernel() -> None:
    a = run(AddressRange(0xAE6FF000, 128 * MIB))  # fits once, not twice
    assert a.verdict is Verdict.TOO_SMALL
    assert "fits only once" in a.summary and "128 MiB reserved" in a.summary
    assert any("every reload must unload" in d for d in a.details)
    assert a.xen_crashkernel == "crashkernel=256M"
    assert a.grub_line == (
        'GRUB_CMDLINE_XEN_DEFAULT="console=com1 com1=115200,8n1 dom0_mem=4G,max:4G '
        'crashkernel=256M,below=4G"'
    )
    nothing = run(AddressRange(0xAE6FF000, 64 * MIB))
    assert nothing.verdict is Verdict.TOO_SMALL and "does not fit at all" in nothing.summary


def test_tight_area_works_but_recommends_more() -> None:
    a = run(AddressRange(0xAE6FF000, 224 * MIB))  # 2 x 100 fits, headroom does not
    assert a.verdict is Verdict.TIGHT and "256M is recommended" in a.summary
    assert a.crashkernel == "crashkernel=256M,below=4G"


def test_crashkernel_on_dom0s_line_is_detected_and_explained() -> None:
    a = run(AddressRange(0, 0), xen="console=com1", dom0="root=/dev/sda1 crashkernel=384M quiet")
    assert a.verdict is Verdict.MISSING
    assert a.summary == "no crash area: crashkernel=384M is on dom0's command line, not on Xen's"
    assert a.dom0_crashkernel == "crashkernel=384M"
    assert "a PV dom0 ignores it" in a.details[0] and "GRUB_CMDLINE_LINUX" in a.details[0]
    # Also reported when the area itself is fine.
    ok = run(dom0="root=/dev/sda1 crashkernel=384M")
    assert ok.verdict is Verdict.OK and "a PV dom0 ignores it" in ok.details[0]


def test_crashkernel_that_xen_did_not_honour() -> None:
    a = run(AddressRange(0, 0), xen="crashkernel=64G")
    assert a.verdict is Verdict.MISSING and "has crashkernel=64G but Xen reserved nothing" in (
        a.summary
    )


def test_the_4g_limit_form_depends_on_ram_and_xen_version() -> None:
    low_only = run(AddressRange(0, 0), high_ram=False)
    assert low_only.crashkernel == "crashkernel=256M"
    old = run(AddressRange(0, 0), version=(4, 9))
    assert old.crashkernel == "crashkernel=256M<4G"
    assert any("\\<4G" in d for d in old.details)
    high = run(AddressRange(0x140000000, 512 * MIB))  # right size, but above 4 GiB
    assert high.verdict is Verdict.OK and "above 4 GiB" in high.details[-1]


def test_unmeasured_image() -> None:
    assert run(required=0).verdict is Verdict.UNKNOWN
    missing = run(AddressRange(0, 0), required=0)
    assert missing.verdict is Verdict.MISSING and missing.crashkernel == "crashkernel=512M,below=4G"


@pytest.mark.parametrize(
    ("xen", "line"),
    [
        ('a="b" c', 'GRUB_CMDLINE_XEN_DEFAULT="a=\\"b\\" c crashkernel=1G"'),
        ("a=$HOME `x`", 'GRUB_CMDLINE_XEN_DEFAULT="a=\\$HOME \\`x\\` crashkernel=1G"'),
        ("crashkernel=1M crashkernel=2M", 'GRUB_CMDLINE_XEN_DEFAULT="crashkernel=1G"'),
    ],
)
def test_grub_line_is_shell_safe(xen: str, line: str) -> None:
    assert grub_line(xen, "crashkernel=1G") == line


def test_json_shape() -> None:
    out = run(AddressRange(0, 0)).as_json()
    assert out["verdict"] == "missing" and isinstance(out["details"], list)
    assert set(out) >= {"reserved", "required", "recommended", "crashkernel", "grub_line"}


def test_the_readme_recommends_what_advise_computes_for_the_default_image() -> None:
    """README's install line names the size `advise` gives the default crash image, whose
    per-half need docs/capture.md §8 states (measured); the two must not drift apart."""
    repo = Path(__file__).resolve().parents[2]
    capture = (repo / "docs" / "capture.md").read_text()
    need = re.search(r"kernel plus this initramfs need (\d+) MiB", capture)
    assert need, "docs/capture.md no longer states the default image's need"
    readme = " ".join((repo / "README.md").read_text().split())
    said = re.findall(r"(\d+)M is what `xenkdumpctl advise` \(below\) recommends", readme)
    assert said == [str(recommended_size(int(need.group(1)) * MIB) // MIB)]
    assert f'GRUB_CMDLINE_XEN_DEFAULT="... crashkernel={said[0]}M"' in readme
