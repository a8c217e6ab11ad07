#!/usr/bin/env bash
# Overload benchmark: more queries than one worker can answer; what a legitimate client sees.
# discod with overload mode (dns.overload_queue_milliseconds, default 100), discod without it,
# and NSD, side by side in one run.
#
# Usage: scripts/bench/overload.sh [options]
#   -d, --duration S   seconds of overload per server (DURATION, default 10)
#   --outstanding N    the flood's queries in flight (OUTSTANDING, default 20000)
#   --overload-ms N    the first discod's dns.overload_queue_milliseconds (OVERLOAD_MS, default
#                      20, discod's default)
#   --busy-cpu         each server runs on CPU 0 beside a busy loop (a co-tenant at nice -5),
#                      the flood and the client on CPU 1: the server has part of a CPU for a
#                      CPU's worth of queries (default: no pinning; on 2 CPUs the flood then
#                      takes one and the server the other, about evenly matched)
#   --skip-build       never build discod (SKIP_BUILD=1)
#   --keep             keep the temp dir (KEEP_TMP=1)
# Environment also: DISCOD (default .build/release/discod).
#
# Each server serves one small zone on a loopback port with one worker (NSD: server-count 1,
# RRL off; discod: RRL off, as NSD). For DURATION seconds dnsperf floods it with as many
# queries as it can keep in flight (no rate limit: far beyond what one worker answers), while a
# second dnsperf, the legitimate client, asks 200 queries a second with a 2 s timeout. Printed
# per server: the flood's answered queries/s and lost share, and the client's answered share
# and latency p50 / p99 / p99.9 (the answers it got). What overload mode buys: the answers
# the client gets come in time, instead of after thousands of queued queries.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$here/../lib.sh"

DURATION=${DURATION:-10} OUTSTANDING=${OUTSTANDING:-20000} OVERLOAD_MS=${OVERLOAD_MS:-20} BUSY_CPU=0
while (($#)); do
  case $1 in
    -d | --duration) DURATION=$2; shift ;;
    --outstanding) OUTSTANDING=$2; shift ;;
    --busy-cpu) BUSY_CPU=1 ;;
    --overload-ms) OVERLOAD_MS=$2; shift ;;
    --skip-build) export SKIP_BUILD=1 ;;
    --keep) export KEEP_TMP=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) disco_die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
disco_need python3 dig setsid nsd nsd-checkconf dnsperf
discod=$(disco_find_discod)
disco_init

zonedir=$DISCO_TMP/zones
mkdir -p "$zonedir"
printf '$TTL 300\n@ SOA ns1 hostmaster 1 7200 900 1209600 60\n  NS ns1\nns1 A 127.0.0.1\nwww A 192.0.2.10\n' \
  >"$zonedir/overload.test.zone"
printf 'www.overload.test A\n' >"$DISCO_TMP/names.txt"

# Pinned (--busy-cpu): servers and the busy loop on CPU 0, the flood and the client on CPU 1.
pin() { if ((BUSY_CPU)); then DISCO_SPAWN_PREFIX=(taskset -c "$1"); else DISCO_SPAWN_PREFIX=(); fi; }

# run NAME PORT: the flood and the client at once; their output in $DISCO_TMP/NAME-*.txt
run() {
  local name=$1 port=$2 flood client
  pin 1
  disco_log "$name: flood ($OUTSTANDING in flight) and a client at 200 q/s for $DURATION s"
  disco_spawn "$DISCO_TMP/$name-flood.txt" dnsperf -s 127.0.0.1 -p "$port" -d "$DISCO_TMP/names.txt" \
    -l "$DURATION" -c 4 -q "$OUTSTANDING" -t 2
  flood=$DISCO_LAST_PID
  sleep 1  # the queue fills first: the client asks into an overloaded server
  disco_spawn "$DISCO_TMP/$name-client.txt" dnsperf -s 127.0.0.1 -p "$port" -d "$DISCO_TMP/names.txt" \
    -l "$((DURATION - 2))" -c 1 -Q 200 -t 2 -v
  client=$DISCO_LAST_PID
  wait "$flood" "$client" || disco_die "$name: dnsperf failed (see $DISCO_TMP)"
}

names=() ports=()
pin 0
port=$(disco_free_port)
DISCO_DNS_OVERLOAD_QUEUE_MILLISECONDS=$OVERLOAD_MS disco_discod_start "$discod" "$zonedir" "$port" 1
names+=("discod-overload-${OVERLOAD_MS}ms") ports+=("$port")
port=$(disco_free_port)
DISCO_DNS_OVERLOAD_QUEUE_MILLISECONDS=0 disco_discod_start "$discod" "$zonedir" "$port" 1
names+=("discod-overload-off") ports+=("$port")
port=$(disco_free_port)
disco_nsd_start "$zonedir" "$port"
names+=("NSD-$(disco_nsd_version)") ports+=("$port")

if ((BUSY_CPU)); then
  DISCO_SPAWN_PREFIX=(taskset -c 0 nice -n -5)
  disco_spawn "$DISCO_TMP/busy.txt" python3 -c 'while True: pass'
fi
for i in "${!names[@]}"; do
  run "${names[$i]}" "${ports[$i]}"
done

python3 - "$DISCO_TMP" "$DURATION" "$BUSY_CPU" "${names[@]}" <<'PY'
import re, sys
tmp, seconds, names = sys.argv[1], float(sys.argv[2]), sys.argv[4:]
share = "; each server on CPU 0 beside a busy loop at nice -5, flood and client on CPU 1" if sys.argv[3] == "1" else ""
def summary(text, field):
    m = re.search(field + r":\s+([\d.]+)", text)
    return float(m.group(1)) if m else 0.0
def pct(values, p):
    return values[min(len(values) - 1, int(len(values) * p / 100))] * 1000 if values else float("nan")
print(f"\nOverload, {seconds:g} s per server, one worker each; the client asks 200 q/s, 2 s timeout{share}\n")
header = ("server", "flood answered q/s", "flood lost", "client answered", "client p50", "client p99", "client p99.9")
rows = []
for name in names:
    flood = open(f"{tmp}/{name}-flood.txt").read()
    client = open(f"{tmp}/{name}-client.txt").read()
    sent, lost = summary(flood, "Queries sent"), summary(flood, "Queries lost")
    latencies = sorted(float(l.split()[-1]) for l in client.splitlines() if l.startswith("> ") and l.split()[1] != "T")
    asked = summary(client, "Queries sent")
    rows.append((name, f"{summary(flood, 'Queries per second'):,.0f}", f"{100 * lost / max(sent, 1):.1f}%",
                 f"{100 * len(latencies) / max(asked, 1):.1f}% of {asked:.0f}",
                 f"{pct(latencies, 50):.2f} ms", f"{pct(latencies, 99):.2f} ms", f"{pct(latencies, 99.9):.2f} ms"))
widths = [max(len(r[c]) for r in rows + [header]) for c in range(len(header))]
for r in [header] + rows:
    print("  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths))))
PY
