#!/usr/bin/env bash
# Fetches Debian's current amd64 kernel package (linux-image-amd64's dependency)
# with apt-get download, unpacks it into the test cache and prints the path of
# its vmlinuz.  Nothing is installed on the host and /boot is never touched.
set -euo pipefail
CACHE=${XENKDUMP_CACHE:-/var/cache/xenkdump-tests}
mkdir -p "$CACHE/kernel"
cd "$CACHE/kernel"
existing=$(ls -1 root/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
if [ -n "$existing" ]; then
  echo "$CACHE/kernel/$existing"
  exit 0
fi
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
  apt-get update -qq
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[ -n "$pkg" ] || { echo "fetch-test-kernel: cannot resolve linux-image-amd64's kernel package" >&2; exit 1; }
rm -f ./*.deb
apt-get download -qq "$pkg" >&2
rm -rf root.tmp && mkdir root.tmp
dpkg-deb -x ./*.deb root.tmp
rm -rf root && mv root.tmp root
rm -f ./*.deb
echo "$CACHE/kernel/$(ls -1 root/boot/vmlinuz-* | head -n1)"
