"""Names of the D-Bus API: bus name, object path, interface, errors.

The contract itself is ``org.xenkdump.Kdump1.xml`` (package data); these constants
must agree with it, which tests/daemon/test_dbus_contract.py checks.  The options
of Reload, Unload and SelfTest are declared in xenkdump.requests.
"""

from __future__ import annotations

import os

BUS_NAME = "org.xenkdump.Kdump1"
INTERFACE = "org.xenkdump.Kdump1"
OBJECT_PATH = "/org/xenkdump/Kdump1"
INTERFACE_XML = "org.xenkdump.Kdump1.xml"

DBUS_SERVICE = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"

_ERR = INTERFACE + ".Error."
ERROR_INVALID_ARGS = _ERR + "InvalidArgs"
ERROR_INVALID_CONFIG = _ERR + "InvalidConfig"
ERROR_IMAGE_INVALID = _ERR + "ImageInvalid"
ERROR_DOES_NOT_FIT = _ERR + "DoesNotFit"
ERROR_BUSY = _ERR + "Busy"
ERROR_HYPERVISOR_UNAVAILABLE = _ERR + "HypervisorUnavailable"
ERROR_HYPERVISOR_FAILED = _ERR + "HypervisorFailed"
ERROR_NOT_PERMITTED = _ERR + "NotPermitted"
ERROR_FAILED = _ERR + "Failed"
ERROR_INTERNAL = _ERR + "Internal"

# The closed set of error names this interface returns (documented in the XML).
ERRORS = (
    ERROR_INVALID_ARGS,
    ERROR_INVALID_CONFIG,
    ERROR_IMAGE_INVALID,
    ERROR_DOES_NOT_FIT,
    ERROR_BUSY,
    ERROR_HYPERVISOR_UNAVAILABLE,
    ERROR_HYPERVISOR_FAILED,
    ERROR_NOT_PERMITTED,
    ERROR_FAILED,
    ERROR_INTERNAL,
)

# Standard errors for calls outside the interface (wrong member or property name).
ERROR_UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
ERROR_UNKNOWN_INTERFACE = "org.freedesktop.DBus.Error.UnknownInterface"
ERROR_UNKNOWN_PROPERTY = "org.freedesktop.DBus.Error.UnknownProperty"
ERROR_PROPERTY_READ_ONLY = "org.freedesktop.DBus.Error.PropertyReadOnly"


def system_bus_address(bus_address: str | None = None) -> str:
    """The address used: ``bus_address``, else $DBUS_SYSTEM_BUS_ADDRESS, else the default."""
    if bus_address:
        return bus_address
    # The same rule as libdbus and dbus_fast (D-Bus specification, "Well-known buses").
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")


def interface_xml() -> str:
    """The contract XML, as installed with the package."""
    from importlib import resources  # noqa: PLC0415 (only the daemon and tests read it)

    return resources.files(__package__).joinpath(INTERFACE_XML).read_text(encoding="utf-8")
