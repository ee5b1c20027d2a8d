#!/bin/sh
# Runs in a real Debian dom0 booted with systemd (tests/e2e/dom0_root.py installs it
# as xk-e2e.service): waits for xenkdumpd.service, which the package enabled, reports
# what systemd, busctl and xenkdumpctl show (as root and as an unprivileged user),
# then panics dom0 so that the crash image xenkdumpd armed boots.  Every line goes to
# the console as "XK-SCEN: ...".  XK_USER and the token come from scenario.env.
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
if [ "$state" = active ]; then
  /usr/bin/python3 -c 'import sys; open(sys.argv[1], "wb").write(bytes.fromhex(sys.argv[2]))' \
    "$XK_TOKEN_FILE" "$XK_TOKEN_HEX"
  say "token written $(stat -c %s "$XK_TOKEN_FILE") bytes"
  # dom0's last words: the crash side must find this line in dom0's dmesg.
  echo "$XK_KMSG" >/dev/kmsg
  say "crashing"
  sync
  echo c >/proc/sysrq-trigger
  sleep 60
fi
say "not crashing: xenkdumpd is $state"
systemctl poweroff
