#!/bin/sh
# Runs inside a fresh Debian root (mmdebstrap customize hook, chrooted): installs the
# package with apt (dependencies resolved by apt), checks what an administrator
# meets, then purges it twice (piuparts-style) and checks that nothing is left.
# Leaves the package installed at the end (the root may boot as a dom0 next).
# Prints XK-PKG: lines that tests/e2e/test_package.py reads.
set -eu
deb=$1
kernel=$2
say() { echo "XK-PKG: $*"; }
fail() { say "FAILED: $*"; exit 1; }
export DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin
# The footprint of the root, without what changes on its own (apt's lists and
# caches, logs, the files this script brought in).
snapshot() {
  find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /tmp \
      -o -path /var/cache/apt -o -path /var/lib/apt/lists -o -path /var/log \
      -o -path /var/cache/debconf -o -path /root/xk \) -prune -o -print | sort >"$1"
}
apt_install() { apt-get install -y -q --no-install-recommends "$deb" >/root/xk/apt.log 2>&1 || { tail -20 /root/xk/apt.log; fail "apt install"; }; }

say "release $(. /etc/os-release; echo "$VERSION_CODENAME")"
dpkg -s xenkdump >/dev/null 2>&1 && fail "xenkdump preinstalled"
apt_install
libs=$(dpkg-query -W -f='${db:Status-Abbrev}${Package}\n' 'libxenmisc*' | awk '/^ii/ {print $2}' | tr '\n' ' ')
say "installed $(dpkg-query -W -f='${Version}' xenkdump) with ${libs}and $(python3 -V)"

# What an administrator meets.
for f in /usr/sbin/xenkdumpd /usr/sbin/xenkdumpctl /etc/xenkdump/xenkdump.yaml \
    /usr/share/dbus-1/system.d/org.xenkdump.Kdump1.conf \
    /usr/share/dbus-1/interfaces/org.xenkdump.Kdump1.xml \
    /usr/lib/tmpfiles.d/xenkdump.conf /usr/lib/xenkdump/purgatory.bin \
    /usr/share/bash-completion/completions/xenkdumpctl \
    /usr/share/man/man8/xenkdumpd.8.gz /usr/share/man/man8/xenkdumpctl.8.gz \
    /usr/share/man/man5/xenkdump.yaml.5.gz; do
  [ -e "$f" ] || fail "missing $f"
done
unit=$(dpkg -L xenkdump | grep '/systemd/system/xenkdumpd.service$') || fail "no unit"
say "unit $unit"
grep -qx /etc/xenkdump/xenkdump.yaml /var/lib/dpkg/info/xenkdump.conffiles || fail "config is not a conffile"
say "enabled $(systemctl is-enabled xenkdumpd 2>&1 || true)"
say "version $(xenkdumpctl --version) / $(xenkdumpd --version)"
python3 -c 'import xenkdump_xenctrl as x; print("XK-PKG: libxenctrl", x.open_library().path)' \
  || fail "libxenctrl does not load"
# The installed purgatory and interface XML, found through the Python package.
xenkdumpctl --hypervisor "sim:/root/xk/host.yaml" plan --kernel "$kernel" --json >/root/xk/plan.json \
  || fail "plan with the installed purgatory"
grep -q '"purgatory"' /root/xk/plan.json || fail "plan has no purgatory segment"
python3 -c 'from xenkdump.dbus.names import interface_xml; assert "GetStatus" in interface_xml()' \
  || fail "interface XML"
say "plan ok"
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify "$unit" >/root/xk/verify.log 2>&1 || true
  # Without a running systemd verify may only warn about its own environment.
  # (man-db is not in a minimal root: its checks of Documentation=man: are moot here.)
  grep -v -e "Command 'man " /root/xk/verify.log | sed 's/^/XK-PKG: verify: /' || true
fi

# Purge twice: the second cycle must leave exactly what the first left, and no
# path of the package's may remain.
apt-get purge -y -q xenkdump >/root/xk/purge.log 2>&1 || fail "purge"
snapshot /root/xk/after-purge-1
apt_install
apt-get purge -y -q xenkdump >>/root/xk/purge.log 2>&1 || fail "second purge"
snapshot /root/xk/after-purge-2
left=$(grep -i xenkdump /root/xk/after-purge-1 || true)
[ -z "$left" ] || { echo "$left" | sed 's/^/XK-PKG: left: /'; fail "purge left files"; }
if ! diff -u /root/xk/after-purge-1 /root/xk/after-purge-2 >/root/xk/cycle.diff; then
  sed 's/^/XK-PKG: cycle: /' /root/xk/cycle.diff | head -40
  fail "a second install/purge cycle changed the root"
fi
say "purge clean ($(wc -l </root/xk/after-purge-1) paths compared)"
apt_install
say "done"
