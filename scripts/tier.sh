#!/usr/bin/env bash
# Runs one test tier and prints how long it took: `scripts/tier.sh NAME COMMAND...`.
# Used by `make check` so that every CI log shows each tier's time.
set -uo pipefail
name=$1
shift
start=$(date +%s)
"$@"
rc=$?
echo "[tier] $name: $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
