#!/usr/bin/env bash
# systemd-analyze verify on Config/discod.service and Config/discod.socket (issue 17): the unit as shipped, with its
# ExecStart pointed at a built discod (verify checks that the binary exists). Prints the
# unit's `systemd-analyze security` exposure score too (a figure, not a pass/fail).
# Usage: scripts/verify-unit.sh [DISCOD]   (default .build/debug/discod)
set -euo pipefail
cd "$(dirname "$0")/.."
discod=$(realpath "${1:-.build/debug/discod}")
[[ -x $discod ]] || { echo "verify-unit.sh: no discod at $discod" >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
sed "s#/usr/local/bin/discod#$discod#" Config/discod.service >"$dir/discod.service"
cp Config/discod.socket "$dir/discod.socket"
for unit in discod.service discod.socket; do
  out=$(systemd-analyze verify "$dir/$unit" 2>&1 || echo "systemd-analyze verify failed ($?)")
  if [[ -n $out ]]; then
    echo "$out" >&2
    exit 1
  fi
  echo "verify-unit.sh: systemd-analyze verify: Config/$unit is clean"
done
systemd-analyze security --offline=yes "$dir/discod.service" 2>/dev/null | tail -1 || true
