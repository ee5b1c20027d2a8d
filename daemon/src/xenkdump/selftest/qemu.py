"""QEMU command lines: the one way this project boots a staging VM (pure functions).

Two machines, both a PC with one vCPU, no default devices, no reboot, the first
serial port to a file (docs/selftest.md §2, §6; docs/lab.md §3):

* ``direct_argv``: a Linux kernel booted directly (the self-test's boot level);
* ``xen_argv``: Xen's ELF through QEMU's multiboot loader, dom0's kernel and
  initramfs as its modules, 9p shares and virtio disks (the self-test's handoff
  level and every real-Xen boot of tests/e2e).

Under TCG the CPU is ``qemu64``: with ``max`` a PV dom0 dies at its first
exception (SMAP/SMEP emulation, docs/lab.md §6).  Under KVM it is the host's.
Launching is vm.py's job (it takes the argv these return).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from xenkdump.errors import InputError

ACCELS: Final = ("kvm", "tcg")


@dataclass(frozen=True)
class Share:
    """A host directory exported to the guest over virtio-9p (``mount -t 9p <tag>``)."""

    path: Path
    tag: str
    readonly: bool = True


@dataclass(frozen=True)
class Disk:
    """A raw image as a virtio disk (/dev/vda, /dev/vdb, ... in order)."""

    path: Path
    snapshot: bool = False  # writes go to a temporary overlay, never to the file


@dataclass(frozen=True)
class XenMachine:
    """What a Xen boot needs: the hypervisor ELF, dom0's kernel and initramfs, the rest."""

    xen: Path  # Xen's ELF (QEMU's multiboot loader does not take the gzip)
    xen_cmdline: str
    dom0_kernel: Path
    dom0_cmdline: str
    dom0_initrd: Path
    memory_mib: int
    serial: Path
    accel: str = "tcg"
    shares: tuple[Share, ...] = ()
    disks: tuple[Disk, ...] = ()
    # A virtio NIC on QEMU's user-mode network (the guest reaches the host's loopback
    # as 10.0.2.2); without it the VM has no network at all.
    user_net: bool = False


def _machine(qemu: str, accel: str, memory_mib: int, serial: Path) -> list[str]:
    if accel not in ACCELS:
        raise InputError(f"QEMU accelerator: expected one of {', '.join(ACCELS)}, got {accel!r}")
    return [
        qemu,
        "-accel", accel,
        "-cpu", "host" if accel == "kvm" else "qemu64",
        "-m", str(memory_mib),
        "-smp", "1",
        "-nodefaults", "-no-reboot",
        "-display", "none", "-monitor", "none",
        "-serial", f"file:{serial}",
    ]  # fmt: skip


def _no_comma(value: str, what: str) -> str:
    # QEMU's option parser splits at commas (",," escapes one); paths we pass never
    # need one, so refusing them keeps every argument unambiguous.
    if "," in value:
        raise InputError(f"{what} {value!r}: a comma cannot be passed to QEMU here")
    return value


def _disk_args(disks: Sequence[Disk]) -> list[str]:
    out: list[str] = []
    for d in disks:
        snap = ",snapshot=on" if d.snapshot else ""
        out += ["-drive", f"file={_no_comma(str(d.path), 'disk')},if=virtio,format=raw{snap}"]
    return out


def direct_argv(
    qemu: str,
    *,
    accel: str,
    memory_mib: int,
    serial: Path,
    kernel: str,
    cmdline: str,
    initrd: str = "",
    loader: tuple[Path, int] | None = None,
    disks: Sequence[Disk] = (),
) -> list[str]:
    """A kernel booted directly; ``loader`` (file, address) is placed in RAM before it runs."""
    argv = _machine(qemu, accel, memory_mib, serial)
    argv += ["-kernel", kernel, "-append", cmdline]
    if initrd:
        argv += ["-initrd", initrd]
    if loader is not None:
        blob, addr = loader
        argv += [
            "-device",
            f"loader,file={_no_comma(str(blob), 'file')},addr={addr:#x},force-raw=on",
        ]
    return argv + _disk_args(disks)


def xen_argv(qemu: str, m: XenMachine) -> list[str]:
    """Xen, dom0 and its initramfs as multiboot modules, the shares, the disks."""
    argv = _machine(qemu, m.accel, m.memory_mib, m.serial)
    # multiboot modules: "file args,file"; a module's arguments end at the comma.
    kernel = _no_comma(str(m.dom0_kernel), "dom0 kernel")
    module = f"{kernel} {_no_comma(m.dom0_cmdline, 'dom0 command line')}"
    argv += [
        "-kernel", str(m.xen),
        "-append", m.xen_cmdline,
        "-initrd", f"{module},{_no_comma(str(m.dom0_initrd), 'dom0 initramfs')}",
    ]  # fmt: skip
    for s in m.shares:
        mode = ",readonly=on" if s.readonly else ""
        argv += [
            "-virtfs",
            f"local,path={_no_comma(str(s.path), 'share')},mount_tag={s.tag},"
            f"security_model=none{mode},multidevs=remap",
        ]
    argv += _disk_args(m.disks)
    if m.user_net:
        argv += ["-netdev", "user,id=xknet", "-device", "virtio-net-pci,netdev=xknet"]
    return argv


def xen_cmdline(*, dom0_mib: int, crashkernel: str, extra: str = "") -> str:
    """Xen's command line in a staging VM: COM1 console, dom0's memory, the crash area.

    ``crashkernel`` is the value (``256M`` or ``256M@0x10000000``).
    """
    return (
        f"console=com1 com1=115200,8n1 dom0_mem={dom0_mib}M,max:{dom0_mib}M loglvl=all "
        f"guest_loglvl=all crashkernel={crashkernel} {extra}"
    ).strip()
