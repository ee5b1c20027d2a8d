"""The interface contract, parsed from the XML: members, signatures, property values.

Pure (no dbus_fast, no I/O beyond reading the package's own XML): the service
dispatches and introspects from an ``InterfaceSpec``, so the XML stays the one
definition of the API.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass

from xenkdump.dbus import names
from xenkdump.errors import InputError, XenkdumpError
from xenkdump.status import PROPERTY_NAMES, Status

DOC_NS = "http://www.freedesktop.org/dbus/1.0/doc.dtd"
EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"


class ContractError(XenkdumpError):
    """The interface XML disagrees with the code (a packaging or development bug)."""


@dataclass(frozen=True)
class MethodSpec:
    name: str
    in_signature: str
    out_signature: str


@dataclass(frozen=True)
class SignalSpec:
    name: str
    signature: str


@dataclass(frozen=True)
class PropertySpec:
    name: str
    signature: str
    access: str  # "read" | "write" | "readwrite"
    emits_changed: bool  # False for EmitsChangedSignal=const/false


@dataclass(frozen=True)
class InterfaceSpec:
    name: str
    methods: Mapping[str, MethodSpec]
    signals: Mapping[str, SignalSpec]
    properties: Mapping[str, PropertySpec]
    interface_xml: str  # the <interface> element as served: the file's, without <doc:doc>


def _args(elem: ET.Element, direction: str) -> str:
    return "".join(
        a.get("type", "")
        for a in elem.findall("arg")
        if a.get("direction", "in" if elem.tag == "method" else "out") == direction
    )


def _has_doc(elem: ET.Element) -> bool:
    doc = elem.find(f"{{{DOC_NS}}}doc")
    return doc is not None and bool("".join(doc.itertext()).strip())


def parse_interface(xml_text: str, interface: str = names.INTERFACE) -> InterfaceSpec:
    """Parse the contract; every member must carry a <doc:doc>."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ContractError(f"{names.INTERFACE_XML}: not well-formed XML: {exc}") from None
    found = [i for i in root.findall("interface") if i.get("name") == interface]
    if len(found) != 1:
        raise ContractError(
            f"{names.INTERFACE_XML}: expected one <interface name={interface!r}>, "
            f"found {len(found)}"
        )
    iface = found[0]
    undocumented = [
        f"{e.tag} {e.get('name')}"
        for e in [
            iface,
            *(m for tag in ("method", "signal", "property") for m in iface.findall(tag)),
        ]
        if not _has_doc(e)
    ]
    if undocumented:
        raise ContractError(f"{names.INTERFACE_XML}: no <doc:doc> on {', '.join(undocumented)}")
    methods = {
        m.get("name", ""): MethodSpec(m.get("name", ""), _args(m, "in"), _args(m, "out"))
        for m in iface.findall("method")
    }
    signals = {
        s.get("name", ""): SignalSpec(s.get("name", ""), _args(s, "out"))
        for s in iface.findall("signal")
    }
    properties = {}
    for p in iface.findall("property"):
        emits = "true"
        for ann in p.findall("annotation"):
            if ann.get("name") == EMITS:
                emits = ann.get("value", "true")
        name = p.get("name", "")
        properties[name] = PropertySpec(
            name, p.get("type", ""), p.get("access", ""), emits == "true"
        )
    return InterfaceSpec(interface, methods, signals, properties, served_interface(iface))


def strip_docs(elem: ET.Element) -> ET.Element:
    """A copy of ``elem`` without <doc:doc> elements.

    The docs stay in the installed file (/usr/share/dbus-1/interfaces); the
    introspection reply leaves them out because strict parsers such as busctl's
    reject the doc namespace (introspect.dtd has no such element).
    """
    copy = ET.fromstring(ET.tostring(elem))
    for parent in copy.iter():
        for child in list(parent):
            if child.tag == f"{{{DOC_NS}}}doc":
                parent.remove(child)
    return copy


def served_interface(iface: ET.Element) -> str:
    copy = strip_docs(iface)
    for e in copy.iter():
        e.text = e.tail = None
    ET.indent(copy, space="  ", level=1)
    return ET.tostring(copy, encoding="unicode").rstrip()


def load_interface() -> InterfaceSpec:
    """The installed contract, checked against the status model (xenkdump.status)."""
    spec = parse_interface(names.interface_xml())
    missing = sorted(set(spec.properties) ^ set(PROPERTY_NAMES))
    if missing:
        raise ContractError(
            f"{names.INTERFACE_XML}: properties {missing} are not both in the XML and in "
            "the status model (xenkdump.status.Status)"
        )
    return spec


def property_values(spec: InterfaceSpec, status: Status) -> dict[str, tuple[str, object]]:
    """Every property as (signature, value), in the XML's order."""
    values = status.to_json()
    return {name: (p.signature, values[name]) for name, p in spec.properties.items()}


def changed_properties(
    spec: InterfaceSpec, old: Status, new: Status
) -> dict[str, tuple[str, object]]:
    """The properties whose value differs, for PropertiesChanged (const ones never)."""
    before = property_values(spec, old)
    after = property_values(spec, new)
    return {
        name: value
        for name, value in after.items()
        if spec.properties[name].emits_changed and value != before[name]
    }


def check_options(
    method: str, options: Mapping[str, tuple[str, object]], allowed: Mapping[str, str]
) -> dict[str, object]:
    """Validate an a{sv} of (signature, value) pairs against ``allowed`` name -> signature.

    Returns plain values; raises InputError naming the option, expected vs found.
    """
    out: dict[str, object] = {}
    for key, (signature, value) in options.items():
        want = allowed.get(key)
        if want is None:
            raise InputError(
                f"{method} option {key!r}: unknown (expected one of {', '.join(sorted(allowed))})"
            )
        if signature != want:
            raise InputError(
                f"{method} option {key!r}: expected D-Bus type {want!r}, got {signature!r}"
            )
        out[key] = value
    return out


def introspection_document(spec: InterfaceSpec, path: str) -> str:
    """The Introspect reply for ``path``: our object, or an ancestor node leading to it."""
    header = (
        '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
    )
    if path != names.OBJECT_PATH:
        prefix = "/" if path == "/" else path + "/"
        child = names.OBJECT_PATH[len(prefix) :].split("/", 1)[0]
        return f'{header}<node>\n  <node name="{child}"/>\n</node>\n'
    return f"{header}<node>\n{_STANDARD_INTERFACES}  {spec.interface_xml}\n</node>\n"


def is_ancestor(path: str) -> bool:
    """True for /, /org and /org/xenkdump: nodes on the way to our object."""
    if path == "/":
        return True
    return names.OBJECT_PATH.startswith(path + "/")


_STANDARD_INTERFACES = """\
  <interface name="org.freedesktop.DBus.Peer">
    <method name="Ping"/>
    <method name="GetMachineId">
      <arg name="machine_uuid" type="s" direction="out"/>
    </method>
  </interface>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect">
      <arg name="xml_data" type="s" direction="out"/>
    </method>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="out"/>
    </method>
    <method name="GetAll">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="props" type="a{sv}" direction="out"/>
    </method>
    <method name="Set">
      <arg name="interface_name" type="s" direction="in"/>
      <arg name="property_name" type="s" direction="in"/>
      <arg name="value" type="v" direction="in"/>
    </method>
    <signal name="PropertiesChanged">
      <arg name="interface_name" type="s"/>
      <arg name="changed_properties" type="a{sv}"/>
      <arg name="invalidated_properties" type="as"/>
    </signal>
  </interface>
"""
