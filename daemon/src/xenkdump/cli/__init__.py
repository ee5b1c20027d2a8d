"""Command-line front ends: xenkdumpctl (cli.ctl)."""
