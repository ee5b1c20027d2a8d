#!/bin/sh
# Runs in a real Debian dom0 booted with systemd (tests/e2e/dom0_root.py installs it
# as xk-e2e.service): waits for xenkdumpd.service, which the package enabled, to arm
# the crash kernel with the shipped configuration (its first load builds xenkdump's
# crash initramfs in dom0), reports what systemd, busctl and xenkdumpctl show (as
# root and as an unprivileged user), then panics dom0 so that the crash image
# xenkdumpd armed boots and its capture agent saves a dump.  Every line goes to the
# console as "XK-SCEN: ...".  XK_USER and the kmsg token come from scenario.env.
set -u
. /var/lib/xk-e2e/scenario.env
say() { echo "XK-SCEN: $*"; }
show() { systemctl show -p "$1" --value xenkdumpd; }
BUS="org.xenkdump.Kdump1 /org/xenkdump/Kdump1 org.xenkdump.Kdump1"
say "systemd up uptime=$(cut -d' ' -f1 /proc/uptime)s virt=$(systemd-detect-virt)"
i=0
while [ $i -lt 400 ]; do
  state=$(show ActiveState)
  case $state in active|failed) break ;; esac
  sleep 1
  i=$((i + 1))
done
say "unit ActiveState=$state SubState=$(show SubState) Result=$(show Result) waited=${i}s"
# Until xenkdumpd's State is "loaded" (at most 15 minutes, its TimeoutStartSec): a
# first load includes the crash initramfs build (minutes in this nested dom0), and a
# restarted xenkdumpd adopts the armed image.  $1 names the wait.
wait_loaded() {
  j=0
  while [ $j -lt 900 ]; do
    loaded=$(busctl get-property $BUS State 2>/dev/null | cut -d'"' -f2)
    [ "$loaded" = loaded ] && break
    sleep 2
    j=$((j + 2))
  done
  say "loaded-$1 State=${loaded:-none} waited=${j}s NRestarts=$(show NRestarts) uptime=$(cut -d' ' -f1 /proc/uptime)s"
}
[ "$state" = active ] && wait_loaded start
# The crash initramfs xenkdumpd built (its record) and how the build went.
say "initramfs $(tr -d '\n' </var/lib/xenkdump/crash-initrd.img-"$(uname -r)".json 2>&1)"
# Which programs and libraries of the packages installed only for this boot's other
# steps (XK_TEST_ONLY) the crash initramfs holds: none may be.
img=/var/lib/xenkdump/crash-initrd.img-$(uname -r)
lsinitramfs "$img" 2>/dev/null | sed 's,.*/,,' | sort -u >/run/xk-img-names.txt
for p in $XK_TEST_ONLY; do
  dpkg -L "$p" 2>/dev/null | grep -E '/s?bin/[^/]+$|\.so(\.[0-9]+)*$' | sed 's,.*/,,' | sort -u >/run/xk-pkg-names.txt
  say "initramfs-from $p files=$(comm -12 /run/xk-img-names.txt /run/xk-pkg-names.txt | wc -l) of=$(wc -l </run/xk-pkg-names.txt) $(comm -12 /run/xk-img-names.txt /run/xk-pkg-names.txt | head -n 5 | tr '\n' ' ')"
done
say "initramfs-names $(wc -l </run/xk-img-names.txt)"
journalctl -b --no-pager -o short-monotonic -u xenkdumpd -u 'xenkdump-initramfs-*' 2>&1 |
  grep -iE 'initramfs|watchdog|no progress|loaded generation|load failed|main process exited' |
  tail -n 12 | sed 's/^/XK-SCEN: journal| /'
say "status-text $(show StatusText)"
systemctl status --no-pager -n 15 xenkdumpd 2>&1 | sed 's/^/XK-SCEN: systemctl| /'
say "busctl State $(busctl get-property $BUS State 2>&1)"
say "busctl Generation $(busctl get-property $BUS Generation 2>&1)"
xenkdumpctl status >/run/xk-status.txt 2>&1
rc=$?
sed 's/^/XK-SCEN: ctl| /' /run/xk-status.txt
say "ctl-status rc=$rc"
# An unprivileged user reads the status and may not reload.
runuser -u "$XK_USER" -- xenkdumpctl status --json >/run/xk-user.json 2>&1
rc=$?
say "user-status rc=$rc $(grep -o '"State": *"[a-z-]*"' /run/xk-user.json | tr -d ' ')"
runuser -u "$XK_USER" -- busctl call $BUS Reload 'a{sv}' 0 >/run/xk-user-reload.txt 2>&1
rc=$?
say "user-reload rc=$rc $(head -n 1 /run/xk-user-reload.txt)"
runuser -u "$XK_USER" -- xenkdumpctl reload >/run/xk-user-ctl.txt 2>&1
rc=$?
say "user-ctl-reload rc=$rc $(tail -n 1 /run/xk-user-ctl.txt)"
say "security $(systemd-analyze security --no-pager xenkdumpd 2>&1 | tail -n 1)"

# The self-test under the real unit: xenkdumpd starts the staging VM as a transient
# unit of its own (QEMU could not run in xenkdumpd's sandbox); a cancel, and a kill
# of xenkdumpd, leave no QEMU.  $1: cancel | kill.  Lines "selftest-<how> ...".
qemus() { pgrep -c -f '^/usr/bin/qemu-system-x86_64 ' || true; }
selftest() {
  how=$1
  t0=$(cut -d' ' -f1 /proc/uptime)
  # The boot level: this root's /boot holds its Xen, so the default would be the
  # handoff level, whose VM (crash area + dom0 + Xen) this 1 GiB dom0 cannot afford;
  # the launch under the unit is the same for both levels.
  out=$(busctl call $BUS SelfTest 'a{sv}' 1 level s boot 2>&1)
  rc=$?
  id=$(echo "$out" | sed -n 's/^s "\([a-z0-9]*\)"$/\1/p')
  say "selftest-$how start rc=$rc id=$id $out"
  [ -n "$id" ] || return 0
  unit=xenkdump-selftest-$id.service
  i=0
  pid=0
  while [ $i -lt 60 ]; do
    pid=$(systemctl show -p MainPID --value "$unit" 2>/dev/null)
    [ "${pid:-0}" -gt 0 ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = qemu-system-x86 ] && break
    sleep 1
    i=$((i + 1))
  done
  say "selftest-$how unit $(systemctl show -p ActiveState -p SubState -p Nice -p IOSchedulingClass -p MemoryMax -p BindsTo "$unit" | tr '\n' ' ')"
  say "selftest-$how qemu pid=$pid comm=$(cat /proc/$pid/comm 2>/dev/null) ni=$(ps -o ni= -p "$pid" | tr -d ' ') io=$(ionice -p "$pid" 2>/dev/null | tr -d ' ') cgroup=$(cut -d: -f3 /proc/$pid/cgroup 2>/dev/null)"
  serial=$(ls /var/lib/xenkdump/selftest/xenkdump-selftest."$id".*/serial.log 2>/dev/null | head -n 1)
  # Let it run: the crash kernel's first console line shows QEMU really emulates
  # (nested TCG: slow; only the cancel run waits for it).  At most 60 s: the boot
  # level gives the crash kernel 120 s from vm-start to print (selftest/stages.py),
  # and on a loaded CI host nested TCG may need longer; the cancel must come while
  # the self-test still runs, or it tests nothing.
  limit=0
  [ "$how" = cancel ] && limit=${XK_SELFTEST_WAIT:-60}
  i=0
  while [ $i -lt "$limit" ] && [ -d "/proc/$pid" ] && ! grep -q "Linux version" "$serial" 2>/dev/null; do
    sleep 5
    i=$((i + 5))
    [ $((i % 30)) -eq 0 ] && say "selftest-$how waiting ${i}s serial=$(stat -c %s "$serial" 2>/dev/null)"
  done
  stage=$(busctl get-property $BUS CurrentSelfTest 2>&1 | grep -o '"Stage" s "[a-z-]*"' | cut -d'"' -f4)
  alive=no
  [ -d "/proc/$pid" ] && alive=yes
  say "selftest-$how running alive=$alive stage=$stage after=$(awk -v a="$t0" '{printf "%.0f", $1 - a}' /proc/uptime)s kernel=$(grep -c 'Linux version' "$serial" 2>/dev/null) serial=$(stat -c %s "$serial" 2>/dev/null)"
  systemctl status --no-pager -n 3 "$unit" 2>&1 | sed "s/^/XK-SCEN: selftest-$how| /"
  if [ "$how" = cancel ]; then
    busctl call $BUS CancelSelfTest s "$id" >/dev/null 2>&1
    i=0
    while [ $i -lt 60 ] && ! busctl get-property $BUS LastSelfTest | grep -q "\"$id\""; do
      sleep 1
      i=$((i + 1))
    done
    say "selftest-$how last $(busctl get-property $BUS LastSelfTest | grep -o '"Reason" s "[^"]*"' | tr ' ' '_')"
  else
    systemctl kill -s KILL xenkdumpd
  fi
  i=0
  while [ $i -lt 30 ] && [ "$(qemus)" != 0 ]; do
    sleep 1
    i=$((i + 1))
  done
  if [ "$how" = kill ]; then
    j=0
    while [ $j -lt 120 ] && [ "$(show ActiveState)" != active ]; do
      sleep 1
      j=$((j + 1))
    done
    say "selftest-$how restarted xenkdumpd=$(show ActiveState) NRestarts=$(show NRestarts) after=${j}s"
  fi
  say "selftest-$how end qemu-left=$(qemus) unit=$(systemctl is-active "$unit" 2>&1) after=${i}s units=$(systemctl list-units --all --plain --no-legend 'xenkdump-selftest-*' | wc -l)"
}
if [ "$state" = active ]; then
  selftest cancel
  selftest kill
fi
if [ "$state" = active ]; then
  wait_loaded crash
  # dom0's last words: the saved dmesg.txt must end with this line.
  echo "$XK_KMSG" >/dev/kmsg
  say "crashing"
  sync
  echo c >/proc/sysrq-trigger
  sleep 60
fi
say "not crashing: xenkdumpd is $state"
systemctl poweroff
