#!/usr/bin/env bash
# Service-answer selection benchmark: what per-query selection costs discod.
#
# Usage: scripts/bench/selection.sh [options]
#   -d, --duration S     seconds per throughput run (DURATION, default 10)
#   -c, --clients N      dnsperf -c (CLIENTS, default 4)
#   -q, --outstanding N  dnsperf -q (OUTSTANDING, default 100)
#   -w, --workers N      discod --workers (WORKERS, default 1)
#   --latency-qps N      rate of the per-query latency runs (LAT_QPS, default 20000)
#   --latency-duration S seconds of each latency run (LAT_DURATION, default 5)
#   --cpu-qps N          rate of the CPU-cost runs (CPU_QPS, default 50000)
#   --cpu-duration S     seconds of each CPU-cost run (CPU_DURATION, default 8)
#   --services N         10-instance services (SERVICES, default 100)
#   --large N            instances of the large service (LARGE, default 13000)
#   --rounds N           alternate the two sides of each comparison N times; medians (ROUNDS, default 3)
#   --only rotation|size run one of the two comparisons (ONLY, default both)
#   --skip-build         never build discod (SKIP_BUILD=1)
#   --keep               keep the temp dir (KEEP_TMP=1)
# Environment also: DISCOD (default .build/release/discod).
#
# What it does: starts two discod (clusters of one, release build) in temp dirs, one with
# dns.selection = "fixed", one with "shuffle" (the default), registers SERVICES services of 10
# instances each in both and one service of LARGE instances in the second, through the catalog
# API, waits out the slow start, then, alternating the two sides ROUNDS times (other load on the
# machine then hits both alike):
#  1. rotation on vs off: dnsperf over A queries for the 10-instance services against "fixed"
#     (the same answer every time, served from the response cache) and "shuffle" (a weighted
#     random order per query, never cached);
#  2. large vs small: with "shuffle", A queries for the LARGE-instance service against
#     queries for one 10-instance service, with and without EDNS (a 1232-byte UDP response
#     holds about 74 A records, 512 bytes about 30).
# Each comparison prints dnsperf throughput and per-query latency percentiles (from dnsperf -v,
# at a fixed LAT_QPS) and the server's CPU time per query at a fixed CPU_QPS (schedstat of
# every discod thread), second column over first. On a 2-CPU machine dnsperf and discod share
# the CPUs: the throughput rows are then capped by the load generator; the CPU rows are not.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$here/../lib.sh"

DURATION=${DURATION:-10} CLIENTS=${CLIENTS:-4} OUTSTANDING=${OUTSTANDING:-100} WORKERS=${WORKERS:-1}
LAT_QPS=${LAT_QPS:-20000} LAT_DURATION=${LAT_DURATION:-5} CPU_QPS=${CPU_QPS:-50000} CPU_DURATION=${CPU_DURATION:-8}
SERVICES=${SERVICES:-100} LARGE=${LARGE:-13000} ONLY=${ONLY:-} ROUNDS=${ROUNDS:-3}

while (($#)); do
  case $1 in
    -d | --duration) DURATION=$2; shift ;;
    -c | --clients) CLIENTS=$2; shift ;;
    -q | --outstanding) OUTSTANDING=$2; shift ;;
    -w | --workers) WORKERS=$2; shift ;;
    --latency-qps) LAT_QPS=$2; shift ;;
    --latency-duration) LAT_DURATION=$2; shift ;;
    --cpu-qps) CPU_QPS=$2; shift ;;
    --cpu-duration) CPU_DURATION=$2; shift ;;
    --services) SERVICES=$2; shift ;;
    --large) LARGE=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --skip-build) export SKIP_BUILD=1 ;;
    --keep) export KEEP_TMP=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) disco_die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
disco_need dnsperf dig curl python3 setsid
discod=$(disco_find_discod)
disco_init

mkdir -p "$DISCO_TMP/zones"
declare -A dns_port=() http_port=() pid=()

# start_discod SELECTION: a discod with dns.selection = SELECTION on its own data dir.
start_discod() {
  local raft_port log=$DISCO_TMP/discod-$1.log
  dns_port[$1]=$(disco_free_port) http_port[$1]=$(disco_free_port) raft_port=$(disco_free_port)
  DISCO_DNS_SELECTION=$1 disco_spawn "$log" "$discod" --zones "$DISCO_TMP/zones" \
    --dns "127.0.0.1:${dns_port[$1]}" --workers "$WORKERS" --node-id 1 --raft "127.0.0.1:$raft_port" \
    --http "127.0.0.1:${http_port[$1]}" --server "1=127.0.0.1:$raft_port,127.0.0.1:${http_port[$1]}" \
    --data-dir "$DISCO_TMP/data-$1" --log-level warning
  pid[$1]=$DISCO_LAST_PID
  disco_wait_dns "${dns_port[$1]}" disco. "${pid[$1]}" "$log" || disco_die "discod did not start"
  for ((i = 0; i < 150; i++)); do
    [[ $(curl -s "http://127.0.0.1:${http_port[$1]}/v1/status/leader" 2>/dev/null || true) == *:* ]] && return 0
    sleep 0.1
  done
  disco_die "discod ($1) elected no leader"
}

# register SELECTION SERVICES LARGE: 10 instances of each of SERVICES services, LARGE of `large`.
register() {
  python3 - "${http_port[$1]}" "$2" "$3" <<'PY'
import http.client, json, sys, threading, time
port, services, large = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
jobs = [(f"s{s}", f"s{s}-{i}", f"10.1.{s % 250}.{i + 1}") for s in range(services) for i in range(10)]
jobs += [("large", f"large-{i}", f"10.{2 + i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(large)]
lock = threading.Lock()
failed = []
def worker(part):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for name, id, address in part:
        body = json.dumps({"Node": id, "Address": address, "Service": {"Service": name, "ID": id, "Port": 80}})
        for attempt in range(20):  # 429/503 (admission, election) are retried
            c.request("PUT", "/v1/catalog/register", body=body)
            r = c.getresponse(); r.read()
            if r.status not in (429, 503):
                break
            time.sleep(0.1)
        if r.status != 200:
            with lock: failed.append(r.status)
threads = [threading.Thread(target=worker, args=(jobs[k::32],)) for k in range(32)]
for t in threads: t.start()
for t in threads: t.join()
if failed: sys.exit(f"{len(failed)} registrations failed: {failed[:5]}")
PY
}

# wait_answers SELECTION NAME: until NAME answers A over TCP with records.
wait_answers() {
  local i
  for ((i = 0; i < 600; i++)); do
    [[ -n $(dig +tcp +short +time=1 +tries=1 -p "${dns_port[$1]}" @127.0.0.1 "$2" A 2>/dev/null | head -1) ]] && return 0
    sleep 0.1
  done
  disco_die "$2 is not answered by the $1 server"
}

start_discod fixed
start_discod shuffle
disco_log "registering $SERVICES services x 10 instances in both, and large x $LARGE in the shuffle server"
started=$(date +%s)
register fixed "$SERVICES" 0
register shuffle "$SERVICES" "$LARGE"
disco_log "registered in $(($(date +%s) - started)) s"
wait_answers fixed "s$((SERVICES - 1)).service.disco"
wait_answers shuffle "s$((SERVICES - 1)).service.disco"
wait_answers shuffle large.service.disco
# Slow start (dns.slow_start_seconds, 30) thins new instances' weight: let it end.
disco_log "waiting 30 s for the registrations' slow start to end"
sleep 30

for ((s = 0; s < SERVICES; s++)); do echo "s$s.service.disco A"; done >"$DISCO_TMP/small.txt"
echo "s0.service.disco A" >"$DISCO_TMP/ten.txt"
echo "large.service.disco A" >"$DISCO_TMP/large.txt"

# run NAME SERVER QUERIES [dnsperf args...]: a throughput run, a latency run and a CPU-cost
# run against SERVER; their outputs are added to NAME's rounds.
declare -A summary=() latency=() cpu_ns=() cpu_queries=()
run() {
  local name=$1 server=$2 queries=$3 before after out
  shift 3
  local args=(-s 127.0.0.1 -p "${dns_port[$server]}" -d "$queries" -c "$CLIENTS" -q "$OUTSTANDING" "$@")
  out=$DISCO_TMP/$name-$round
  disco_log "round $round: $name: throughput ${DURATION} s, latency at $LAT_QPS q/s, CPU at $CPU_QPS q/s"
  dnsperf "${args[@]}" -l "$DURATION" >"$out-throughput.txt" 2>&1
  summary[$name]+="${summary[$name]:+,}$out-throughput.txt"
  dnsperf "${args[@]}" -l "$LAT_DURATION" -Q "$LAT_QPS" -v >"$out-latency.txt" 2>&1
  latency[$name]+="${latency[$name]:+,}$out-latency.txt"
  before=$(disco_server_cpu_ns "${pid[$server]}")
  dnsperf "${args[@]}" -l "$CPU_DURATION" -Q "$CPU_QPS" >"$out-cpu.txt" 2>&1
  after=$(disco_server_cpu_ns "${pid[$server]}")
  cpu_ns[$name]=$((${cpu_ns[$name]:-0} + after - before))
  cpu_queries[$name]=$((${cpu_queries[$name]:-0} + $(awk '/Queries completed:/ { print $3 }' "$out-cpu.txt")))
}

# report TITLE A B: dnsperf and CPU tables, B over A.
report() {
  echo
  python3 "$here/dnsperf_report.py" \
    --title "$1: throughput (dnsperf -c $CLIENTS -q $OUTSTANDING, $DURATION s, median of $ROUNDS)" \
    --latency-title "$1: latency at a fixed $LAT_QPS q/s, $LAT_DURATION s x $ROUNDS (dnsperf -v, nearest rank)" \
    --run "$2" "${summary[$2]}" "${latency[$2]}" --run "$3" "${summary[$3]}" "${latency[$3]}"
  echo "$1: server CPU at a fixed $CPU_QPS q/s, $CPU_DURATION s x $ROUNDS"
  python3 "$here/cpu_report.py" "$2" "${cpu_ns[$2]}" "${cpu_queries[$2]}" "$3" "${cpu_ns[$3]}" "${cpu_queries[$3]}"
}

for ((round = 1; round <= ROUNDS; round++)); do
  if [[ $ONLY != size ]]; then
    run fixed fixed "$DISCO_TMP/small.txt" -e
    run shuffle shuffle "$DISCO_TMP/small.txt" -e
  fi
  if [[ $ONLY != rotation ]]; then
    run ten-edns shuffle "$DISCO_TMP/ten.txt" -e
    run large-edns shuffle "$DISCO_TMP/large.txt" -e
    run ten shuffle "$DISCO_TMP/ten.txt"
    run large shuffle "$DISCO_TMP/large.txt"
  fi
done

echo
echo "discod $discod, $WORKERS worker(s), $(nproc) CPUs; $SERVICES services x 10 instances + large x $LARGE"
if [[ $ONLY != size ]]; then
  report "rotation on vs off ($SERVICES names of 10 instances, EDNS)" fixed shuffle
fi
if [[ $ONLY != rotation ]]; then
  report "large vs small service, EDNS 1232 (about 74 vs 10 A records)" ten-edns large-edns
  report "large vs small service, no EDNS (about 30 vs 10 A records)" ten large
fi
