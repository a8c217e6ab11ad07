#!/usr/bin/env bash
# DNS benchmark: discod against NSD 4 on the same zone and the same queries, in one run.
#
# Usage: scripts/bench/dns.sh [options]
#   -d, --duration S     seconds per throughput run (DURATION, default 20)
#   -c, --clients N      dnsperf -c, client sockets (CLIENTS, default 4)
#   -T, --threads N      dnsperf -T, send/receive thread pairs (THREADS, default dnsperf's)
#   -q, --outstanding N  dnsperf -q, queries in flight (OUTSTANDING, default 100)
#   -w, --workers N      discod --workers (WORKERS, default 1); NSD gets server-count: N too
#   -Q, --qps N          cap the throughput runs at N queries/s (QPS, default none)
#   --mode udp|tcp       dnsperf transport (MODE, default udp)
#   --no-edns            queries without EDNS (EDNS=0; default EDNS=1, dnsperf -e)
#   --rounds N           alternate NSD/discod N times, report medians (ROUNDS, default 1)
#   --latency-qps N      rate of the per-query latency runs (LAT_QPS, default 20000)
#   --latency-duration S seconds of each latency run (LAT_DURATION, default 5; 0 = skip)
#   --warmup S           unmeasured run before each server's first run (WARMUP, default 2)
#   --cpu-qps N          rate of the CPU-cost runs (CPU_QPS, default 100000)
#   --cpu-duration S     seconds of each CPU-cost run (CPU_DURATION, default 10; 0 = skip)
#   --services N, --nodes N   zone size (SERVICES 2000, NODES 1000: ~33,000 records)
#   --nsd-only           benchmark NSD alone (no discod needed)
#   --discod-only        benchmark discod alone
#   --skip-build         never build discod (SKIP_BUILD=1)
#   --pin                with 1 worker: NSD/discod on CPU 0, dnsperf on CPU 1 (PIN=1)
#   --keep               keep the temp dir (zone, queries, raw dnsperf output) (KEEP_TMP=1)
# Environment also: DISCOD (default .build/release/discod; built with
#   `swift build -c release --product discod` when missing), NSD_PORT, DISCOD_PORT.
#
# What it does: scripts/bench/genzone.py writes the zone bench.disco. (services with
# A and SRV records, nodes with A) and 10,000 queries (A, SRV, node A, AAAA NODATA,
# NXDOMAIN); NSD (server-count = workers, rrl-ratelimit: 0) and discod (--workers)
# each serve that zone from a temp dir on a loopback port; dnsperf runs the same
# queries against each for DURATION seconds, then once more at a fixed LAT_QPS rate
# with -v so that latency percentiles come from per-query latencies (dnsperf 2.10
# prints only average/stddev/min/max). Prints one table, discod/NSD in the last
# column. Everything started is stopped and the temp dir removed on exit.
#
# Then a CPU-cost run at a fixed CPU_QPS rate: the server's CPU time (every thread of
# every process of its session, from /proc/*/task/*/schedstat) divided by the queries
# answered, and its inverse, queries per CPU-second: the server's capacity per core.
#
# Note: on a 2-core machine dnsperf and the server share the CPUs, and dnsperf itself
# saturates a core near 180,000 queries/s: the throughput row is then capped by the load
# generator, not the server; the CPU-cost row measures the server alone.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$here/../lib.sh"

DURATION=${DURATION:-20} CLIENTS=${CLIENTS:-4} THREADS=${THREADS:-} OUTSTANDING=${OUTSTANDING:-100}
WORKERS=${WORKERS:-1} QPS=${QPS:-} MODE=${MODE:-udp} EDNS=${EDNS:-1} ROUNDS=${ROUNDS:-1}
LAT_QPS=${LAT_QPS:-20000} LAT_DURATION=${LAT_DURATION:-5} WARMUP=${WARMUP:-2}
CPU_QPS=${CPU_QPS:-100000} CPU_DURATION=${CPU_DURATION:-10}
SERVICES=${SERVICES:-2000} NODES=${NODES:-1000} PIN=${PIN:-0}
run_nsd=1 run_discod=1

while (($#)); do
  case $1 in
    -d | --duration) DURATION=$2; shift ;;
    -c | --clients) CLIENTS=$2; shift ;;
    -T | --threads) THREADS=$2; shift ;;
    -q | --outstanding) OUTSTANDING=$2; shift ;;
    -w | --workers) WORKERS=$2; shift ;;
    -Q | --qps) QPS=$2; shift ;;
    --mode) MODE=$2; shift ;;
    --no-edns) EDNS=0 ;;
    --rounds) ROUNDS=$2; shift ;;
    --latency-qps) LAT_QPS=$2; shift ;;
    --latency-duration) LAT_DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --cpu-qps) CPU_QPS=$2; shift ;;
    --cpu-duration) CPU_DURATION=$2; shift ;;
    --services) SERVICES=$2; shift ;;
    --nodes) NODES=$2; shift ;;
    --nsd-only) run_discod=0 ;;
    --discod-only) run_nsd=0 ;;
    --skip-build) export SKIP_BUILD=1 ;;
    --pin) PIN=1 ;;
    --keep) export KEEP_TMP=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) disco_die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
((run_nsd || run_discod)) || disco_die "--nsd-only and --discod-only exclude each other"
[[ $MODE == udp || $MODE == tcp ]] || disco_die "--mode must be udp or tcp"
disco_need dnsperf dig python3 setsid
((run_nsd)) && disco_need nsd nsd-checkconf

if ((run_discod)); then
  discod=$(disco_find_discod)
fi
disco_init

server_cpu=() client_cpu=()
if ((PIN)); then
  disco_need taskset
  ((WORKERS == 1)) || disco_die "--pin only with 1 worker"
  (($(nproc) >= 2)) || disco_die "--pin needs 2 CPUs"
  server_cpu=(taskset -c 0) client_cpu=(taskset -c 1)
fi

zonedir=$DISCO_TMP/zones
mkdir -p "$zonedir"
python3 "$here/genzone.py" --services "$SERVICES" --nodes "$NODES" \
  "$zonedir/bench.disco.zone" "$DISCO_TMP/queries.txt"

perf_args=(-s 127.0.0.1 -d "$DISCO_TMP/queries.txt" -c "$CLIENTS" -q "$OUTSTANDING" -m "$MODE")
[[ -n $THREADS ]] && perf_args+=(-T "$THREADS")
((EDNS)) && perf_args+=(-e)

# dnsperf_run PORT SECONDS OUTFILE [EXTRA ARGS...]
dnsperf_run() {
  local port=$1 seconds=$2 out=$3
  shift 3
  # In the background and waited for, so that a signal to this script is handled
  # at once (bash defers traps until a foreground child exits); cleanup kills it.
  disco_spawn "$out" "${client_cpu[@]}" dnsperf "${perf_args[@]}" -p "$port" -l "$seconds" "$@"
  wait "$DISCO_LAST_PID" || {
    disco_log "dnsperf failed; its output:"
    tail -n 20 "$out" >&2
    return 1
  }
}

names=() ports=() pids=()
DISCO_SPAWN_PREFIX=("${server_cpu[@]}") # servers (and NSD's forked children) on CPU 0
if ((run_nsd)); then
  nsd_port=${NSD_PORT:-$(disco_free_port)}
  # NSD gets as many serving processes as discod gets workers.
  NSD_SERVER_COUNT=$WORKERS disco_nsd_start "$zonedir" "$nsd_port"
  nsd_version=$(disco_nsd_version)
  names+=("NSD-$nsd_version") ports+=("$nsd_port") pids+=("$NSD_PID")
  disco_log "NSD $nsd_version on 127.0.0.1:$nsd_port (server-count $WORKERS)"
fi
if ((run_discod)); then
  discod_port=${DISCOD_PORT:-$(disco_free_port)}
  disco_discod_start "$discod" "$zonedir" "$discod_port" "$WORKERS"
  names+=(discod) ports+=("$discod_port") pids+=("$DISCOD_PID")
  disco_log "discod on 127.0.0.1:$discod_port (--workers $WORKERS, $discod)"
fi

DISCO_SPAWN_PREFIX=()

qps_args=()
[[ -n $QPS ]] && qps_args=(-Q "$QPS")
declare -A summaries=() latencies=() cpu_ns=() cpu_queries=()
for ((round = 1; round <= ROUNDS; round++)); do
  for i in "${!names[@]}"; do
    name=${names[$i]} port=${ports[$i]}
    if ((round == 1 && WARMUP > 0)); then
      dnsperf_run "$port" "$WARMUP" "$DISCO_TMP/warmup-$name.txt"
    fi
    out=$DISCO_TMP/throughput-$name-$round.txt
    disco_log "round $round/$ROUNDS: $name, $DURATION s, $CLIENTS clients, $MODE"
    dnsperf_run "$port" "$DURATION" "$out" "${qps_args[@]}"
    summaries[$name]+="${summaries[$name]:+,}$out"
    if ((LAT_DURATION > 0)); then
      out=$DISCO_TMP/latency-$name-$round.txt
      disco_log "round $round/$ROUNDS: $name, per-query latency at $LAT_QPS queries/s for $LAT_DURATION s"
      dnsperf_run "$port" "$LAT_DURATION" "$out" -Q "$LAT_QPS" -v
      latencies[$name]+="${latencies[$name]:+,}$out"
    fi
    if ((CPU_DURATION > 0)); then
      out=$DISCO_TMP/cpu-$name-$round.txt
      disco_log "round $round/$ROUNDS: $name, server CPU time at $CPU_QPS queries/s for $CPU_DURATION s"
      before=$(disco_server_cpu_ns "${pids[$i]}")
      dnsperf_run "$port" "$CPU_DURATION" "$out" -Q "$CPU_QPS"
      after=$(disco_server_cpu_ns "${pids[$i]}")
      completed=$(awk '/Queries completed:/ { print $3 }' "$out")
      cpu_ns[$name]=$((${cpu_ns[$name]:-0} + after - before))
      cpu_queries[$name]=$((${cpu_queries[$name]:-0} + completed))
    fi
  done
done

report_args=()
for name in "${names[@]}"; do
  report_args+=(--run "$name" "${summaries[$name]}" "${latencies[$name]:--}")
done
edns_text=$([[ $EDNS == 1 ]] && echo "EDNS" || echo "no EDNS")
echo
echo "zone bench.disco.: $(grep -c ' IN ' "$zonedir/bench.disco.zone") records, $SERVICES services, $NODES nodes;" \
  "$(wc -l <"$DISCO_TMP/queries.txt") queries (40% service A, 25% SRV, 15% node A, 10% AAAA NODATA, 10% NXDOMAIN)"
echo "machine: $(nproc) CPUs; server workers $WORKERS; pinned: $([[ $PIN == 1 ]] && echo yes || echo no)"
python3 "$here/dnsperf_report.py" \
  --title "throughput: dnsperf $MODE, $edns_text, -c $CLIENTS -q $OUTSTANDING${THREADS:+ -T $THREADS}${QPS:+ -Q $QPS}, ${DURATION} s, median of $ROUNDS round(s)" \
  --latency-title "latency at a fixed $LAT_QPS queries/s, ${LAT_DURATION} s per round (percentiles from dnsperf -v per-query times, nearest rank)" \
  "${report_args[@]}"

if ((CPU_DURATION > 0)); then
  echo
  echo "server CPU cost at a fixed $CPU_QPS queries/s, ${CPU_DURATION} s per round, summed over $ROUNDS round(s) (schedstat of every server thread)"
  args=()
  for name in "${names[@]}"; do args+=("$name" "${cpu_ns[$name]}" "${cpu_queries[$name]}"); done
  python3 "$here/cpu_report.py" "${args[@]}"
fi
