"""Sizes, defined once: binary units and the x86 page (Xen's and Linux's, 4 KiB)."""

from __future__ import annotations

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
PAGE_SIZE = 4096


def mib_up(n: int) -> str:
    """Bytes as whole MiB for messages, rounded up so that "needs" never understates."""
    return f"{-(-n // MIB)} MiB"


def size_text(n: int) -> str:
    """Bytes for people: the largest of GiB, MiB, KiB that fits, one decimal."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
