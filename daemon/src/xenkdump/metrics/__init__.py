"""Metrics for monitoring: a Prometheus text-format file for node_exporter's textfile
collector, rewritten atomically on every change of the daemon's state (off by default;
``metrics: {textfile: PATH}`` in the configuration)."""
