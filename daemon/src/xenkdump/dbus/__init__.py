"""The D-Bus surface of xenkdumpd: the contract XML, its names, the service and a client.

Only ``transport.py`` and ``service.py`` import dbus_fast (the daemon's asyncio bus);
``client.py``, xenkdumpctl's, uses python3-dbus and imports nothing of the service;
everything else here is pure.

dbus-fast's package imports its GLib integration, which loads PyGObject and GLib when
they are installed (about 4 MB resident in xenkdumpd, bench/idle.py).  xenkdump uses
only the asyncio bus, so GLib is kept out unless something imported it already.
"""

import sys

sys.modules.setdefault("gi", None)  # type: ignore[arg-type]
