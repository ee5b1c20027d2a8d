#!/bin/busybox sh
# dom0's /init (tests/e2e): Xen devices, the host root over 9p, then the job's
# scenario in a chroot.  Steps and module order: docs/lab.md §3, §6.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "XK-DOM0: $*"; }
die() { say "FAILED: $*"; say "end"; poweroff -f; sleep 30; }

for m in $(cat /etc/xk-modules); do
  insmod "/lib/xk/$m" || die "insmod $m"
done
mount -t xenfs xenfs /proc/xen || die "mount xenfs"
say "capabilities $(cat /proc/xen/capabilities)"

# xk_job= comes from the kernel command line (the harness sets it).
[ -n "$xk_job" ] || die "no xk_job= on the kernel command line"
mount -t 9p -o trans=virtio,version=9p2000.L,ro hostroot /host || die "mount hostroot"
mount -t 9p -o trans=virtio,version=9p2000.L,rw xkout "/host$xk_job/out" || die "mount xkout"
# rbind: /proc/xen (xenfs) must come along into the chroot.
for d in proc sys dev; do mount -o rbind "/$d" "/host/$d" || die "bind /$d"; done
# The checkout under test (xk_repo=) may live under /tmp or /run (CI clones
# anywhere): keep it visible through the tmpfs mounted over them.
mkdir -p /keep
case "$xk_repo" in
  /tmp/*|/run/*) mount -o bind "/host$xk_repo" /keep || die "bind $xk_repo" ;;
esac
mount -t tmpfs -o mode=1777 tmpfs /host/tmp || die "tmpfs /tmp"
mount -t tmpfs -o mode=755 tmpfs /host/run || die "tmpfs /run"
case "$xk_repo" in
  /tmp/*|/run/*) mkdir -p "/host$xk_repo" && mount -o bind /keep "/host$xk_repo" || die "rebind $xk_repo" ;;
esac
# A bare devtmpfs has no /dev/shm (docs/lab.md §6).
mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
say "ready $(cut -d' ' -f1 /proc/uptime)s"

set -o pipefail
chroot /host /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp \
  PYTHONDONTWRITEBYTECODE=1 /bin/sh "$xk_job/scenario.sh" 2>&1 | tee "/host$xk_job/out/scenario.log"
rc=$?
echo "$rc" > "/host$xk_job/out/rc"
sync
say "scenario exit $rc"
say "end"
poweroff -f
sleep 30
