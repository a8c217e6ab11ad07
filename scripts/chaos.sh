#!/usr/bin/env bash
# Chaos test: real discod processes killed with -9 under KV load; the history must be
# linearizable. Usage: scripts/chaos.sh [--minutes M] [--nodes N] [...]  (see scripts/chaos.py -h)
# Builds discod and raft-sim in release unless DISCOD/RAFT_SIM point at binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${DISCOD:-}" ] || [ -z "${RAFT_SIM:-}" ]; then
  swift build -c release --product discod
  swift build -c release --product raft-sim
fi
exec python3 scripts/chaos.py --discod "${DISCOD:-.build/release/discod}" --raft-sim "${RAFT_SIM:-.build/release/raft-sim}" "$@"
