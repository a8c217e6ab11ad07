#!/usr/bin/env bash
# Registry benchmark: propagation from a registration's response to DNS on every server, and
# DNS qps on a follower idle and under a 64-client registration load. See propagation.py.
#
# Usage: scripts/bench/propagation.sh [--registrations 1000] [--duration 10] [--skip-load]
#   env DISCOD (default .build/release/discod, built if missing)
# Needs: apt-get install dnsperf wrk dnsutils
set -euo pipefail
cd "$(dirname "$0")/../.."
DISCOD=${DISCOD:-.build/release/discod}
[ -x "$DISCOD" ] || swift build -c release --product discod
for tool in dnsperf wrk python3; do command -v $tool >/dev/null || { echo "propagation.sh: needs $tool (apt-get install dnsperf wrk)" >&2; exit 2; }; done
exec python3 scripts/bench/propagation.py --discod "$DISCOD" "$@"
