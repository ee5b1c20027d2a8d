#!/bin/sh
# xenkdump's self-test hook for the crash environment (docs/selftest.md §3).
#
# A crash initrd runs this early in its /init.  Without xenkdump.selftest=<id> on
# the kernel command line it returns at once (a real crash: capture as usual).
# With it, it proves the capture path on the staging VM's dump and reports each
# stage as a console line "xenkdump-selftest: <id> <stage> [key=value...]" (or
# "xenkdump-selftest: <id> failed <stage> <reason>"), then powers the VM off:
#   crash-kernel-up   user space runs (uptime= the kernel's boot seconds)
#   capture-started   this hook runs in self-test mode
#   token-found       the self-test's token is in /proc/vmcore (the dump is real)
#   dump-written      /proc/vmcore copied to the scratch disk (/dev/vda)
# Needs only busybox applets (sed, cut, tr, grep, rev, dd, stat, awk).
st_id=$(sed -n 's/.*xenkdump\.selftest=\([a-z0-9]*\).*/\1/p' /proc/cmdline 2>/dev/null)
[ -n "$st_id" ] || return 0 2>/dev/null || exit 0

st_say() { echo "xenkdump-selftest: $st_id $*"; }
st_avail() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }
st_min=$(st_avail)
st_low() { a=$(st_avail); [ "$a" -lt "$st_min" ] && st_min=$a; }
st_fail() { st_say "failed $1 $2"; sync; poweroff -f; sleep 30; exit 1; }

st_say "crash-kernel-up uptime=$(cut -d' ' -f1 /proc/uptime)"
st_say "capture-started"
[ -r /proc/vmcore ] || st_fail token-found "no /proc/vmcore: the crash kernel found no ELF core header (elfcorehdr=)"
st_size=$(stat -c %s /proc/vmcore)
st_needle="xenkdump-selftest-token-$(echo "$st_id" | rev)"
# NUL bytes split the dump into short lines for grep (most memory is zero).
st_hits=$(tr '\0' '\n' < /proc/vmcore | grep -c -F "$st_needle")
st_low
[ "${st_hits:-0}" -gt 0 ] || st_fail token-found "the token is not in /proc/vmcore ($st_size bytes): the ELF core header does not describe the crashed system's memory"
st_say "token-found vmcore_bytes=$st_size"
if [ ! -b /dev/vda ]; then
  modprobe virtio_pci 2>/dev/null; modprobe virtio_blk 2>/dev/null; sleep 1
fi
[ -b /dev/vda ] || st_fail dump-written "no scratch disk: /dev/vda is missing (the crash initrd has no virtio_blk driver)"
dd if=/proc/vmcore of=/dev/vda bs=65536 2>/dev/null || st_fail dump-written "writing /proc/vmcore to /dev/vda failed"
sync
st_low
st_say "dump-written bytes=$st_size mem_min_avail_kb=$st_min mem_total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
poweroff -f
sleep 30
