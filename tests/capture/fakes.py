"""Stand-ins for the crash kernel's world: a synthetic ELF core, makedumpfile, ssh, df.

The fakes are small POSIX sh scripts written into a ``bin`` directory that goes
first on PATH, so the agent runs unchanged.  Each records its arguments in
``calls.log`` for the tests to read.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from xenkdump.hv.port import EM_X86_64, AddressRange
from xenkdump.image import elfcore

PAGE = 4096

FAKE_MAKEDUMPFILE = r"""#!/bin/sh
# A makedumpfile stand-in: FAKE_MDF_FAIL lists the -d levels that fail.
echo "makedumpfile $*" >> "$FAKE_LOG"
dmesg=0; flat=0; level=""; workdir=""; rearrange=0; args=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dump-dmesg) dmesg=1 ;;
    -F) flat=1 ;;
    -R) rearrange=1 ;;
    -d) shift; level=$1 ;;
    --work-dir) shift; workdir=$1 ;;
    --num-threads*) echo "threads refused on Xen" >&2; exit 2 ;;
    -*) ;;
    *) args="$args $1" ;;
  esac
  shift
done
set -- $args
if [ $rearrange -eq 1 ]; then  # the server's -R: FAKE_REMOTE_R=fail|spin (a corrupt stream)
  case "${FAKE_REMOTE_R:-}" in
    fail) echo "makedumpfile: not a flattened stream" >&2; exit 1 ;;
    spin) while :; do :; done ;;
  esac
  sed 's/^FLAT://' > "$1"; exit 0
fi
[ -r "$1" ] || { echo "cannot read $1" >&2; exit 1; }
if [ $dmesg -eq 1 ]; then
  printf '[    0.000000] Linux version 6.1.0 (fake)\n' > "$2"
  printf '[  100.000000] %s\n' "${FAKE_KMSG:-token}" >> "$2"
  exit 0
fi
[ -n "$workdir" ] && [ -d "$workdir" ] || { echo "no --work-dir" >&2; exit 3; }
if [ -n "${FAKE_MEMINFO:-}" ]; then  # the dump's buffers: MemAvailable dips, then recovers
  # The dip lasts until the agent's sampler has recorded it (at most 30 s): a fixed
  # half second could pass unsampled on a loaded machine.
  printf 'MemTotal: 100000 kB\nMemAvailable: 30000 kB\n' > "$FAKE_MEMINFO.new"
  mv "$FAKE_MEMINFO.new" "$FAKE_MEMINFO"
  i=0
  while [ "$(cat "$XK_SCRATCH/mem.min" 2>/dev/null)" != 30000 ] && [ $i -lt 600 ]; do
    sleep 0.05; i=$((i + 1))
  done
  printf 'MemTotal: 100000 kB\nMemAvailable: 70000 kB\n' > "$FAKE_MEMINFO.new"
  mv "$FAKE_MEMINFO.new" "$FAKE_MEMINFO"
fi
ls "$workdir" >> "$FAKE_LOG" 2>/dev/null
for f in ${FAKE_MDF_FAIL:-}; do
  [ "$f" = "$level" ] && { echo "makedumpfile: fails at -d $level" >&2; exit 1; }
done
if [ $flat -eq 1 ]; then
  echo "FLAT:KDUMP level=$level"; exit 0
fi
echo "KDUMP level=$level" > "$2"
"""

FAKE_SSH = r"""#!/bin/sh
# An ssh stand-in: checks the pinned-key options, then runs the command here.
echo "ssh $*" >> "$FAKE_LOG"
strict=0; known=""
while [ $# -gt 0 ]; do
  case "$1" in
    -p|-i|-O) shift ;;
    -o) shift
        case "$1" in
          StrictHostKeyChecking=yes) strict=1 ;;
          UserKnownHostsFile=*) known=${1#*=} ;;
        esac ;;
    -*) ;;
    *) break ;;
  esac
  shift
done
[ $strict -eq 1 ] && [ -f "$known" ] || { echo "ssh: host key not pinned" >&2; exit 255; }
[ -n "${FAKE_SSH_DOWN:-}" ] && { echo "ssh: connect: Connection refused" >&2; exit 255; }
shift  # the destination
# FAKE_REMOTE_PATH: the server's PATH (without this bin: no makedumpfile there)
[ -n "${FAKE_REMOTE_PATH:-}" ] && PATH=$FAKE_REMOTE_PATH && export PATH
exec sh -c "$*"
"""

FAKE_DF = r"""#!/bin/sh
# df -Pk DIR with FAKE_FREE_KB free (the real df when unset).
if [ -z "${FAKE_FREE_KB:-}" ]; then exec "$REAL_DF" "$@"; fi
echo "Filesystem 1024-blocks Used Available Capacity Mounted on"
echo "fake 1000000 1 $FAKE_FREE_KB 1% /"
"""

FAKE_ACTION = r"""#!/bin/sh
echo "$1" >> "$FAKE_ACTIONS"
"""


def write_exec(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def make_fake_bin(dir: Path, real_df: str) -> Path:
    """A ``bin`` with makedumpfile, ssh, df and the action recorder."""
    dir.mkdir(parents=True, exist_ok=True)
    write_exec(dir / "makedumpfile", FAKE_MAKEDUMPFILE)
    write_exec(dir / "ssh", FAKE_SSH)
    write_exec(dir / "df", FAKE_DF.replace("$REAL_DF", real_df))
    write_exec(dir / "act", FAKE_ACTION)
    return dir


def busybox_bin(dir: Path, busybox: str) -> Path:
    """Every busybox applet as a symlink: the crash kernel's userland."""
    dir.mkdir(parents=True, exist_ok=True)
    out = os.popen(f"{busybox} --list").read().split()
    for applet in out:
        link = dir / applet
        if not link.exists():
            link.symlink_to(busybox)
    return dir


def xen_notes(xen_phys_start: int, vmcoreinfo: str) -> bytes:
    """Xen's crash-info note (XEN_ELFNOTE_CRASH_INFO: 8 longs, then xen_phys_start and
    dom0's p2m list) and its VMCOREINFO_XEN text note, as in a Xen dump."""

    def note(name: bytes, ntype: int, desc: bytes) -> bytes:
        name += b"\0"
        head = struct.pack("<III", len(name), len(desc), ntype)
        return head + name + bytes(-len(name) % 4) + desc + bytes(-len(desc) % 4)

    info = struct.pack("<10Q", 4, 17, 0, 0, 0, 0, 0, 0, xen_phys_start, 0)
    return note(b"Xen", 0x1000001, info) + note(b"VMCOREINFO_XEN", 0, vmcoreinfo.encode())


def synthetic_core(
    path: Path,
    *,
    xen: AddressRange,
    console: bytes,
    notes: bytes = b"",
    patches: dict[int, bytes] | None = None,
) -> bytes:
    """An ELF64 core with two PT_LOADs (dom0 RAM, Xen's image); ``console`` inside Xen's;
    ``notes`` in a PT_NOTE first; ``patches`` written at machine addresses.

    Headers come from xenkdump's own elfcore layouts; data offsets are page aligned,
    as in /proc/vmcore.
    """
    loads = [(AddressRange(0x100000, 4 * PAGE), b"dom0 page "), (xen, b"\0")]
    nph = len(loads) + (1 if notes else 0)
    data_off = PAGE
    phdrs = b""
    body = b""
    if notes:
        phdrs += elfcore.ELF64_PHDR.pack(
            {"p_type": elfcore.PT_NOTE, "p_offset": data_off, "p_filesz": len(notes)}
        )
        body += notes + bytes(-len(notes) % PAGE)
    for rng, fill in loads:
        phdrs += elfcore.ELF64_PHDR.pack(
            {
                "p_type": elfcore.PT_LOAD,
                "p_flags": 7,
                "p_offset": data_off + len(body),
                "p_vaddr": 0,
                "p_paddr": rng.start,
                "p_filesz": rng.size,
                "p_memsz": rng.size,
                "p_align": 0,
            }
        )
        chunk = (fill * (rng.size // len(fill) + 1))[: rng.size]
        if rng == xen:
            at = 2 * PAGE + 123  # console text somewhere in Xen's image
            chunk = chunk[:at] + console + chunk[at + len(console) :]
        for addr, blob in (patches or {}).items():
            if rng.start <= addr < rng.end:
                at = addr - rng.start
                chunk = chunk[:at] + blob + chunk[at + len(blob) :]
        body += chunk
    ehdr = elfcore.ELF64_EHDR.pack(
        {
            "ei_mag": elfcore.ELFMAG,
            "ei_class": elfcore.ELFCLASS64,
            "ei_data": elfcore.ELFDATA2LSB,
            "ei_version": elfcore.EV_CURRENT,
            "e_type": elfcore.ET_CORE,
            "e_machine": EM_X86_64,
            "e_version": elfcore.EV_CURRENT,
            "e_phoff": elfcore.ELF64_EHDR.size,
            "e_ehsize": elfcore.ELF64_EHDR.size,
            "e_phentsize": elfcore.ELF64_PHDR.size,
            "e_phnum": nph,
        }
    )
    head = ehdr + phdrs
    data = head + bytes(data_off - len(head)) + body
    path.write_bytes(data)
    return data


def systemd_run_standin(bin_dir: Path, record: Path) -> Path:
    """A ``systemd-run`` that writes its arguments to ``record``, one a line, then runs
    the command after "--" itself (the job's output is its own, as with --pipe)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "systemd-run"
    path.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nwhile [ "$1" != -- ]; do shift; done\n'
        'shift\nexec "$@"\n'
    )
    path.chmod(0o755)
    return path
