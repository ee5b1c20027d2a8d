#!/usr/bin/env bash
# Builds the Debian package from this checkout on Debian 12 or 13 (as root):
# installs the build dependencies debian/control names, builds in a copy of the
# tracked files (the checkout stays untouched) and leaves xenkdump_*.deb in OUTDIR.
#   bash scripts/build-deb.sh [OUTDIR]        (default: ./dist)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$here/dist}" && cd "${1:-$here/dist}" && pwd)
export DEBIAN_FRONTEND=noninteractive
# Debian's own tools only: a python3 earlier on PATH (pyenv, a venv) must not build it.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
if ! dpkg-checkbuilddeps "$here/debian/control" 2>/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends build-essential >/dev/null
  apt-get build-dep -y -qq "$here" >/dev/null
fi
work=$(mktemp -d /var/tmp/xenkdump-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
git -C "$here" ls-files -z | (cd "$here" && tar --null -T - -cf -) | tar -C "$work/src" -xf -
(cd "$work/src" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
  tail -40 "$work/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed (log above)" >&2
  exit 1
}
cp "$work"/*.deb "$work"/*.changes "$work"/*.buildinfo "$out/"
ls "$out"/xenkdump_*.deb
