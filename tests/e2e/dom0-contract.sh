#!/bin/sh
# Runs in the packaged dom0 before xenkdumpd.service (tests/e2e/dom0_root.py installs it
# as xk-e2e-contract.service): the hypervisor-port contract suite against this release's
# Xen through the installed package (its binding, this release's libxenctrl and Python).
set -u
say() { echo "XK-SCEN: $*"; }
cd /var/lib/xk-e2e || exit 1
XENKDUMP_CONTRACT_XEN=1 XENKDUMP_TEST_MAY_UNLOAD=1 HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis \
  PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -p no:cacheprovider -q -rfEs --basetemp=/tmp/pytest \
  tests/contract tests/unit/test_binding.py >/run/xk-contract.log 2>&1
rc=$?
say "contract rc=$rc $(tail -n 1 /run/xk-contract.log)"
grep -E "^(FAILED|ERROR|SKIPPED)" /run/xk-contract.log | head -n 40 | sed 's/^/XK-SCEN: contract| /'
if [ $rc -ne 0 ]; then
  tail -n 80 /run/xk-contract.log | sed 's/^/XK-SCEN: contract-log| /'
fi
exit 0
