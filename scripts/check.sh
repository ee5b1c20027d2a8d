#!/usr/bin/env bash
# The README's test command: on a fresh Debian 12 machine (as root) installs what the
# build needs to start (make), then `make check` installs everything else the tests
# need (scripts/setup-test-env.sh, and tests/e2e installs QEMU, Xen and friends) and
# runs every tier: lint, unit/contract/CLI/daemon tests, real Xen under QEMU; then
# checks that the run left every tracked file unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v make >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends make >/dev/null
fi
# The tests must leave every tracked file as it was.
tracked_state() { git diff HEAD 2>/dev/null | sha256sum; }
before=$(tracked_state)
make check
if [ "$(tracked_state)" != "$before" ]; then
  echo "check: the test run changed tracked files:" >&2
  git status --short --untracked-files=no >&2
  exit 1
fi
