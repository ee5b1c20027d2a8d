"""xenkdumpd: the engine (sans-I/O decisions), executor, core, watchers and entry point."""
