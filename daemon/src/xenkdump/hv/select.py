"""Choose a hypervisor adapter from a ``--hypervisor`` value: ``xen`` or ``sim[:FILE]``."""

from __future__ import annotations

import os

from xenkdump.errors import InputError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from xenkdump.hv.port import Hypervisor

# Where a simulated host lives when `sim` is given without a file.
DEFAULT_SIM_HOST = os.environ.get("XENKDUMP_SIM_HOST", "/var/lib/xenkdump/sim/host.yaml")
XEN_INTERFACES = ("/proc/xen", "/dev/xen/privcmd")


def xen_present() -> bool:
    """True on a Xen domain with the privcmd interface (dom0 or a driver domain)."""
    return any(os.path.exists(p) for p in XEN_INTERFACES)


def default_spec() -> str:
    if xen_present():
        return "xen"
    raise InputError(
        "no Xen found (/proc/xen and /dev/xen/privcmd are absent): "
        "use --hypervisor sim[:FILE] to work on a simulated host"
    )


def open_hypervisor(spec: str | None) -> Hypervisor:
    """Open the adapter named by ``spec`` (None: xen if present, else an error)."""
    if spec is None:
        spec = default_spec()
    kind, _, arg = spec.partition(":")
    if kind == "xen" and not arg:
        from xenkdump.hv.xen import XenHypervisor  # noqa: PLC0415 (cffi only when asked for)

        return XenHypervisor.open()
    if kind == "sim":
        from xenkdump.hv.sim import SimulatedHypervisor  # noqa: PLC0415

        return SimulatedHypervisor.open(arg or DEFAULT_SIM_HOST)
    raise InputError(f"--hypervisor: expected 'xen' or 'sim[:FILE]', got {spec!r}")
