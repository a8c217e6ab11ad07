#!/usr/bin/env bash
# Registration storm benchmark (issue 13): N agents register at once on a real 3-server discod
# cluster on loopback, then all re-register; DNS latency on every server idle and during.
# See storm.py for what is measured and how.
#
# Usage: scripts/bench/storm.sh [--agents 41000] [--connections 256] [--dns-rate 2000]
#                               [--client-jitter 0] [--pin] [--dnsperf-nice -10] [--dnsperf-scheduling realtime|normal] [--keep]
#   env DISCOD (default .build/release/discod, built if missing)
# Needs: apt-get install dnsperf dnsutils
set -euo pipefail
cd "$(dirname "$0")/../.."
DISCOD=${DISCOD:-.build/release/discod}
[ -x "$DISCOD" ] || swift build -c release --product discod
for tool in dnsperf dig taskset python3; do command -v $tool >/dev/null || { echo "storm.sh: needs $tool (apt-get install dnsperf dnsutils)" >&2; exit 2; }; done
# RRL as shipped (on, loopback exempt): the benchmark runs the servers' defaults.
unset DISCO_DNS_RRL_ENABLED
exec python3 scripts/bench/storm.py --discod "$DISCOD" "$@"
