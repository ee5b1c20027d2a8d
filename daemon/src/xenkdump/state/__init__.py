"""xenkdump's own durable state: the record of what it armed in Xen (see record.py)."""
