"""The D-Bus surface of xenkdumpd: the contract XML, its names, the service and a client.

Only ``service.py`` and ``client.py`` import dbus_fast; everything else here is pure.
"""
