#!/usr/bin/env bash
# The main job on a machine without Xen (`make demo`): xenkdumpd on a simulated host and
# a private D-Bus, with a real Debian kernel as the crash kernel.  It shows
# `xenkdumpctl status`, replaces the kernel file the way a package upgrade does (a new
# file renamed over the old name) and shows the automatic reload.
# Runs with Debian's /usr/bin/python3 and the checkout's sources; writes under
# /var/tmp/xenkdump-demo (override with XENKDUMP_DEMO_DIR).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${XENKDUMP_DEMO_DIR:-/var/tmp/xenkdump-demo}
PY=/usr/bin/python3
export PYTHONPATH="$here/daemon/src:$here/bindings${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

# What the demo needs on a fresh Debian 12 machine: the product's runtime packages
# (as on a dom0) and the tools that build the purgatory and the demo's initrd.
need=()
for p in python3 python3-cffi python3-yaml python3-jsonschema python3-dbus-fast python3-dbus python3-systemd dbus libxenmisc4.17 \
         gcc make binutils cpio gzip; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "demo: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
make -s -C "$here" purgatory

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ctl() { echo "\$ xenkdumpctl $*"; "$PY" -m xenkdump.cli.ctl --hypervisor "sim:$work/host.yaml" "$@"; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

rm -rf "$work" && mkdir -p "$work/boot" "$work/etc" "$work/state"

say "A real Debian kernel as the crash kernel, and a small initrd"
vmlinuz=$(bash "$here/scripts/fetch-test-kernel.sh")
ver=$(basename "$vmlinuz"); ver=${ver#vmlinuz-}
cp "$vmlinuz" "$work/boot/vmlinuz-$ver"
( cd "$work" && mkdir -p initrd && printf '#!/bin/sh\necho crash kernel\n' > initrd/init && chmod +x initrd/init \
  && cd initrd && find . | cpio -o -H newc --quiet | gzip -9 > "$work/boot/initrd.img-$ver" )
ls -l "$work/boot"

cat > "$work/etc/xenkdump.yaml" <<EOF
# The demo's configuration (see config/xenkdump.yaml for every key).
kernel: latest
initrd: auto
cmdline:
  base: "console=ttyS0,115200"
  append: [irqpoll, nr_cpus=1, reset_devices]
state_dir: $work/state
boot_dir: $work/boot
reload_debounce: 0.5
EOF

say "A private D-Bus (the daemon and the CLI honour DBUS_SYSTEM_BUS_ADDRESS)"
"$PY" "$here/tests/privatebus.py" --policy demo --listen "unix:dir=$work" > "$work/bus.conf"
exec 3< <(dbus-daemon --config-file="$work/bus.conf" --fork --print-address=1 --print-pid=1)
read -r DBUS_SYSTEM_BUS_ADDRESS <&3
read -r bus_pid <&3
pids+=("$bus_pid")
export DBUS_SYSTEM_BUS_ADDRESS
echo "DBUS_SYSTEM_BUS_ADDRESS=$DBUS_SYSTEM_BUS_ADDRESS"

say "xenkdumpd on the simulated host"
"$PY" -m xenkdump.daemon.main --config "$work/etc/xenkdump.yaml" --hypervisor "sim:$work/host.yaml" \
  2> >(sed 's/^/  [xenkdumpd] /' >&2) &
daemon_pid=$!
pids+=("$daemon_pid")

generation() {
  "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print((d.get("armed") or {}).get("generation", 0))' \
    "$work/state/state.json" 2>/dev/null || echo 0
}
wait_generation() {
  for _ in $(seq 1 600); do
    [ "$(generation)" -ge "$1" ] && return 0
    kill -0 "$daemon_pid" 2>/dev/null || { echo "xenkdumpd exited" >&2; return 1; }
    sleep 0.1
  done
  echo "timed out waiting for generation $1" >&2; return 1
}
wait_generation 1
# The bus name comes after the first load (READY=1 follows both).
for _ in $(seq 1 100); do ctl status >/dev/null 2>&1 && break; sleep 0.1; done
ctl status

say "A package upgrade replaces the kernel (new file renamed over the old name)"
cp "$work/boot/vmlinuz-$ver" "$work/boot/.vmlinuz-$ver.dpkg-new"
head -c 4096 /dev/zero >> "$work/boot/.vmlinuz-$ver.dpkg-new"   # a rebuilt image: new bytes
t0=$(date +%s%N)
mv "$work/boot/.vmlinuz-$ver.dpkg-new" "$work/boot/vmlinuz-$ver"
wait_generation 2
t1=$(date +%s%N)
echo "reloaded automatically in $(( (t1 - t0) / 1000000 )) ms (including the 0.5 s debounce)"
ctl status

say "Stopping xenkdumpd (the crash kernel stays armed)"
kill -TERM "$daemon_pid"; wait "$daemon_pid" || true
echo "demo done; files under $work"
