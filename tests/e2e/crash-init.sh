#!/bin/busybox sh
# The crash kernel's /init (tests/e2e): prove /proc/vmcore holds dom0's memory,
# dump it with makedumpfile, print every stage as an XK-CRASH: marker, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /scratch && mount -t tmpfs -o size=90% tmpfs /scratch
. /etc/xk.conf
say() { echo "XK-CRASH: $*"; }
say "booted marker=$XK_MARKER"
say "cmdline $(cat /proc/cmdline)"
if [ -e /proc/vmcore ]; then
  say "vmcore bytes $(stat -c %s /proc/vmcore)"
  t0=$(cut -d' ' -f1 /proc/uptime)
  # vmcore_scan prints "found offset=... paddr=..." or "notfound" (exit 0 / 1).
  say "token $(vmcore_scan /proc/vmcore "$XK_NEEDLE" 2>&1) after ${t0}s..$(cut -d' ' -f1 /proc/uptime)s"
  say "free $(free -m | awk '/Mem:/ {print $2 " MiB total, " $7 " MiB available"}')"
  # -d 31 needs dom0's own VMCOREINFO: xenkdump's ELF core header carries it (kexec-tools'
  # does not, and then only makedumpfile's Xen mode, -X: Xen and dom0 pages, applies).
  for opts in "-c -d 31" "-X -c"; do
    rm -f /scratch/dump
    makedumpfile $opts /proc/vmcore /scratch/dump > /scratch/mdf.log 2>&1
    rc=$?
    tr '\r' '\n' < /scratch/mdf.log | grep -v "^SYMBOL\|^LOAD\|^ *phys_start\|^OFFSET\|^SIZE\|^LENGTH\|^Copying\|^Checking\|^Excluding" | tail -n 6 | sed 's/^/XK-CRASH: makedumpfile| /'
    if [ $rc -eq 0 ] && [ -s /scratch/dump ]; then
      say "makedumpfile ok opts=$(echo $opts | tr ' ' '_') bytes=$(stat -c %s /scratch/dump) uptime=$(cut -d' ' -f1 /proc/uptime)s"
      break
    fi
    say "makedumpfile failed opts=$(echo $opts | tr ' ' '_') rc=$rc"
  done
  makedumpfile --dump-dmesg /proc/vmcore /scratch/dmesg.txt > /scratch/dmesg.log 2>&1
  rc=$?
  tail -n 3 /scratch/dmesg.log | sed 's/^/XK-CRASH: dump-dmesg| /'
  kmsg=notfound
  grep -q "$XK_KMSG" /scratch/dmesg.txt 2>/dev/null && kmsg=found
  say "dmesg rc=$rc kmsg=$kmsg lines=$(wc -l < /scratch/dmesg.txt 2>/dev/null || echo 0)"
else
  say "no /proc/vmcore"
fi
say "end"
sync
poweroff -f
sleep 30
