"""Package data: purgatory.bin, built from purgatory/ by `make purgatory`."""
