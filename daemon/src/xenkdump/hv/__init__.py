"""Hypervisor access: one narrow port (``port.Hypervisor``) and its adapters."""
