#!/usr/bin/env bash
# Installs everything the tests need on a Debian 12 machine (as root) and
# creates the test venv.  Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

# Debian packages: the product's runtime (as on a real dom0) and test tools.
APT_RUNTIME="python3 python3-venv python3-cffi python3-yaml python3-jsonschema python3-dbus-fast python3-dbus python3-systemd dbus libxenmisc4.17 initramfs-tools makedumpfile"
APT_TEST="libxen-dev gcc binutils make systemd cpio busybox-static dash python3-docutils bash-completion python3-prometheus-client ansible-core"
missing=()
for p in $APT_RUNTIME $APT_TEST; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# promtool (Prometheus' own linter of the metrics file) from Debian's prometheus
# package, unpacked into the cache: installing the package would start a server.
PROMTOOL=${XENKDUMP_CACHE:-/var/cache/xenkdump-tests}/promtool/promtool
if [ ! -x "$PROMTOOL" ]; then
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; })
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -D -m 755 "$tmp/root/usr/bin/promtool" "$PROMTOOL"
  rm -rf "$tmp"
fi

# The test venv: Debian's /usr/bin/python3 with its system packages visible,
# plus test-only tools from PyPI.
VENV=${XENKDUMP_VENV:-$here/.venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import pytest, hypothesis, unicorn, elftools, mypy' 2>/dev/null; then
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e ".[test]"
fi
"$VENV/bin/python" -c 'import xenkdump, xenkdump_xenctrl' 2>/dev/null || "$VENV/bin/pip" install -q -e ".[test]"

# Real test inputs (a Debian kernel) and the purgatory binary.
bash scripts/fetch-test-kernel.sh >/dev/null
make -s purgatory
echo "setup: ok ($VENV)"
