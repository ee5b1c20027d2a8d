"""The facts crashkernel= advice needs, from the hypervisor port and the configuration (I/O)."""

from __future__ import annotations

import logging

from xenkdump.advice.crashkernel import FOUR_GIB, Advice, AdviceInputs, advise
from xenkdump.daemon import kernels
from xenkdump.errors import XenkdumpError
from xenkdump.hv.port import E820_RAM, Hypervisor
from xenkdump.image import loader
from xenkdump.image.planner import required_bytes
from xenkdump.settings.model import Settings

log = logging.getLogger(__name__)


def measure(hv: Hypervisor, settings: Settings) -> int:
    """Bytes one half of the crash area needs for the configured image (read as xenkdumpd
    loads it, ``kernels.configured_inputs``); 0 if it cannot be measured."""
    try:
        inputs = kernels.configured_inputs(settings, hv)
        return required_bytes(inputs, loader.gather_host(hv, require_crash_area=False))
    except (XenkdumpError, OSError) as exc:
        log.info("cannot measure the configured crash image: %s", exc)
        return 0


def host_advice(hv: Hypervisor, required: int) -> Advice:
    """The advice for this host and an image of ``required`` bytes (0: unmeasured)."""
    ram_above_4g = any(e.type == E820_RAM and e.end > FOUR_GIB for e in hv.machine_memory_map())
    return advise(
        AdviceInputs(
            xen_cmdline=hv.xen_command_line(),
            dom0_cmdline=hv.dom0_command_line(),
            crash=hv.crash_range(),
            required=required,
            xen_version=hv.xen_version(),
            ram_above_4g=ram_above_4g,
        )
    )
