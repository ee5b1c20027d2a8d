"""A stand-in for initramfs-tools' mkinitramfs, for tests that build a crash initramfs
without the real one (the real build is tests/capture/test_initramfs.py's).

``mkinitramfs -d CONFDIR -o OUT VERSION`` writes a gzip'd image holding the programs it
was given (so a new makedumpfile gives a new image).  Its environment steers it:
FAKE_FAIL (a file: while it exists, the build fails as a real one does), and, when
set, FAKE_MKINITRAMFS_RUNS (a file that gets one line per run) and
FAKE_MKINITRAMFS_SLOW (a file holding how many seconds a run takes).
"""

from __future__ import annotations

from pathlib import Path

SCRIPT = r"""#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in -d) shift; conf=$1 ;; -o) shift; out=$1 ;; esac
  shift
done
[ -n "${FAKE_MKINITRAMFS_RUNS:-}" ] && echo run >> "$FAKE_MKINITRAMFS_RUNS"
[ -n "${FAKE_MKINITRAMFS_SLOW:-}" ] && [ -s "$FAKE_MKINITRAMFS_SLOW" ] &&
  sleep "$(cat "$FAKE_MKINITRAMFS_SLOW")"
[ -e "${FAKE_FAIL:-/nonexistent}" ] && { echo "E: fake mkinitramfs failure" >&2; exit 1; }
cut -d' ' -f1 "$conf/xenkdump/programs" | xargs cat | gzip -n > "$out"
"""


def install(bin_dir: Path) -> Path:
    """Write the stand-in as ``bin_dir``/mkinitramfs (put ``bin_dir`` first on PATH)."""
    path = bin_dir / "mkinitramfs"
    path.write_text(SCRIPT)
    path.chmod(0o755)
    return path
