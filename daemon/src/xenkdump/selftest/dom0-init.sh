#!/bin/sh
# The staging dom0's /init: xenkdump self-test, handoff level (docs/selftest.md §6).
#
# Runs in the staging VM only, as the first process of a dom0 booted by this
# host's Xen.  Loads the Xen and 9p modules, mounts the host's root read-only
# (9p "hostroot") and the run's work directory read-write (9p "xkwork") over its
# own path, then runs xenkdump's loader with the host's own Python in a chroot of
# the host's root (selftest/dom0load.py), writes the token into dom0's memory
# (the kernel log) and panics dom0: Xen then enters the crash image.
# Reports "xenkdump-selftest: <id> <stage>" or "... failed <stage> <reason>".
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /etc/xenkdump-selftest.conf
say() { echo "xenkdump-selftest: $st_id $*"; }
fail() { say "failed $1 $2"; sync; poweroff -f; sleep 30; exit 1; }

say "dom0-up uptime=$(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /etc/xenkdump-selftest.modules); do
  insmod "/lib/modules/$m" || fail image-loaded "dom0 could not load the module $m"
done
mount -t xenfs xenfs /proc/xen || fail image-loaded "no xenfs: the dom0 kernel is not a Xen dom0 kernel"
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro hostroot /host \
  || fail image-loaded "the host's root could not be mounted over 9p"
mount -t 9p -o trans=virtio,version=9p2000.L,rw xkwork "/host$st_work" \
  || fail image-loaded "the run's work directory could not be mounted over 9p"
# rbind: /proc/xen (xenfs) comes along into the chroot.
for d in proc sys dev; do mount -o rbind "/$d" "/host/$d" || fail image-loaded "bind /$d"; done
# A bare devtmpfs has no /dev/shm.
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /dev/shm
chroot /host /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/ LANG=C.UTF-8 \
  PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$st_pythonpath" \
  "$st_python" -m xenkdump.selftest.dom0load "$st_work/dom0load.json" \
  || fail image-loaded "xenkdump's loader failed in dom0 (its output is above)"
# The token: in dom0's memory (its kernel log), where the crash side must find it.
cat /etc/xenkdump-selftest.token > /dev/kmsg
sync
echo c > /proc/sysrq-trigger
sleep 60
fail panic "dom0 did not panic (sysrq)"
