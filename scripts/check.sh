#!/usr/bin/env bash
# The README's test command: on a fresh Debian 12 machine (as root) installs what the
# build needs to start (make), then `make check` installs everything else the tests
# need (scripts/setup-test-env.sh, and tests/e2e installs QEMU, Xen and friends) and
# runs every tier: lint, unit/contract/CLI/daemon tests, real Xen under QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v make >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends make >/dev/null
fi
exec make check
