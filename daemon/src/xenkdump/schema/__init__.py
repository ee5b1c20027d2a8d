"""One way to read every YAML file xenkdump reads: JSON Schema, with file:line errors.

* ``document.read_yaml`` turns YAML into JSON values and remembers, for every value and
  every key, the file and line that set it; ``document.merge`` lays drop-in files over
  each other (mappings key by key, lists and scalars replaced).
* ``validate.load`` reads, merges and validates against one of the JSON Schemas shipped
  beside this file, and raises ``ConfigProblems`` naming *every* problem as
  ``file:line: key: expected ..., found ...``.

The schemas (JSON Schema draft 2020-12; editors and fleet tools can use them too):

* ``xenkdump-config-v1.json`` -- ``/etc/xenkdump/xenkdump.yaml`` (``settings/load.py``
  turns its value into ``Settings``);
* ``sim-host-v1.json`` -- a simulated Xen host (``hv/simhost.py``).

Adding a configuration section (say ``dump:``) is three steps:

1. a property in ``xenkdump-config-v1.json`` with ``type``, ``additionalProperties:
   false`` for a mapping, a ``description`` (the docs) and ``default`` for each key, and
   ``x-expected`` -- the words after "expected" in an error -- wherever the type alone
   does not say it (``"a number of seconds > 0"``);
2. its typed value in ``settings/model.py`` and the conversion in ``settings/load.py``;
3. the key, commented, in ``config/xenkdump.yaml`` (a test checks that the schema, the
   shipped file and the README's key list agree).
"""

from __future__ import annotations

from xenkdump.schema.document import ConfigProblem, ConfigProblems, Document, KeyPath, read_yaml
from xenkdump.schema.validate import Checks, keys, load, schema, validate

CONFIG_SCHEMA = "xenkdump-config-v1.json"
SIM_HOST_SCHEMA = "sim-host-v1.json"

__all__ = [
    "CONFIG_SCHEMA",
    "SIM_HOST_SCHEMA",
    "Checks",
    "ConfigProblem",
    "ConfigProblems",
    "Document",
    "KeyPath",
    "keys",
    "load",
    "read_yaml",
    "schema",
    "validate",
]
