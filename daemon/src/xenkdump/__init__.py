"""xenkdump: keeps a correct crash (kdump) kernel loaded in the Xen hypervisor."""

__version__ = "0.1.0"
