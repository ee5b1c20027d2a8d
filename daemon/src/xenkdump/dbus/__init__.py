"""The D-Bus surface of xenkdumpd: the contract XML, its names, the service and a client.

Only ``transport.py``, ``service.py`` and ``client.py`` import dbus_fast; everything else
here is pure, and the client imports nothing of the service.
"""
