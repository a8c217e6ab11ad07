#!/usr/bin/env bash
# Write benchmark: a 3-server Disco cluster against a 3-member etcd 3.4 cluster (Debian
# etcd-server, fsync on), on loopback, in the same run, with the same client (wrk, keep-alive):
# PUTs of 60-byte values over HTTP at 1, 16 and 64 concurrent connections.
#
# Usage: scripts/bench/writes.sh [-d SECONDS] [--clients "1 16 64"] [--via leader|follower] [--no-etcd]
#                                [--keys 1000] [--value-bytes 60] [--slice SECONDS]
#   env DISCOD (default .build/release/discod, built if missing), DURATION, CLIENTS, VIA, ETCD=0, KEEP_TMP=1,
#   KEYS, VALUE_BYTES (keys written round-robin and value size: their product is the state's size),
#   SLICE (default 4): each system's -d seconds per point are run as slices of about this length,
#   Disco's and etcd's alternating (D E E D D E ...), and each system's slices are merged (requests
#   over time, latency histograms bucket by bucket), so both are measured in the same minutes of a
#   noisy host. --slice equal to -d is the older way: all of Disco's run, then all of etcd's.
#   WARMUP (default 3): seconds of 16-client writes to each system before the first point, not measured.
# Needs: apt-get install etcd-server wrk
#
# Disco: PUT /v1/kv/bench/<n> on the leader (found with /v1/status/leader), or with --via
# follower on a follower, which forwards each write to the leader (its forwarding pool). etcd: POST
# /v3/kv/put {"key","value"} (base64) on its leader too (found with /v3/maintenance/status), or
# with --via follower on a follower, which forwards. Prints writes/s, p50, p99 and p99.9 for both,
# the ratio, and the CPU time per write of each system's three servers.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-"1 16 64"}
VIA=${VIA:-leader}
ETCD=${ETCD:-1}
KEYS=${KEYS:-1000}
VALUE_BYTES=${VALUE_BYTES:-60}
SLICE=${SLICE:-4}
WARMUP=${WARMUP:-3}
while (($#)); do
  case $1 in
    -d) DURATION=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --via) VIA=$2; shift ;;
    --no-etcd) ETCD=0 ;;
    --keys) KEYS=$2; shift ;;
    --value-bytes) VALUE_BYTES=$2; shift ;;
    --slice) SLICE=$2; shift ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "writes.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
DISCOD=${DISCOD:-.build/release/discod}
[ -x "$DISCOD" ] || swift build -c release --product discod
case $VIA in leader | follower) ;; *) echo "writes.sh: --via leader or follower" >&2; exit 2 ;; esac
((DURATION >= 1 && SLICE >= 1)) || { echo "writes.sh: -d and --slice are whole seconds, at least 1" >&2; exit 2; }
for tool in $([ "$ETCD" = 1 ] && echo etcd) wrk python3; do command -v $tool >/dev/null || { echo "writes.sh: needs $tool (apt-get install etcd-server wrk)" >&2; exit 2; }; done

tmp=$(mktemp -d /tmp/disco-writes-XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP_TMP:-0}" = 1 ] && echo "kept $tmp" || rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

read -r -a ports < <(python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
ports = []
while len(ports) < 12:
    p = random.randrange(low - 12000, low)
    if p in ports: continue
    with socket.socket() as s:
        try: s.bind(("127.0.0.1", p))
        except OSError: continue
    ports.append(p)
print(" ".join(map(str, ports)))
PY
)

# Disco: 3 servers.
mkdir -p "$tmp/zones"
printf '$TTL 60\n@ SOA ns h 1 2 3 4 5\n NS ns\nns A 192.0.2.1\n' >"$tmp/zones/bench.test.zone"
servers=()
for i in 1 2 3; do servers+=(--server "$i=127.0.0.1:${ports[$((i - 1))]},127.0.0.1:${ports[$((i + 2))]}"); done
# Write admission (429 beyond 2,000 writes/s by default) is off: this measures how many writes
# the cluster can commit, as etcd (which has no such limit) is measured.
export DISCO_HTTP_WRITE_LIMIT_MODE=disabled
for i in 1 2 3; do
  "$DISCOD" --zones "$tmp/zones" --dns 127.0.0.1:0 --workers 1 --node-id $i --raft "127.0.0.1:${ports[$((i - 1))]}" \
    --http "127.0.0.1:${ports[$((i + 2))]}" --data-dir "$tmp/disco$i" --log-level warning "${servers[@]}" \
    >"$tmp/disco$i.log" 2>&1 &
  pids+=($!)
done
# etcd: 3 members, fsync on (the default).
[ "$ETCD" = 1 ] && {
cluster=""
for i in 1 2 3; do cluster+="${cluster:+,}e$i=http://127.0.0.1:${ports[$((i + 5))]}"; done
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$tmp/etcd$i" --listen-client-urls "http://127.0.0.1:${ports[$((i + 8))]}" \
    --advertise-client-urls "http://127.0.0.1:${ports[$((i + 8))]}" --listen-peer-urls "http://127.0.0.1:${ports[$((i + 5))]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ports[$((i + 5))]}" --initial-cluster "$cluster" \
    --initial-cluster-state new --initial-cluster-token disco-bench --log-level error >"$tmp/etcd$i.log" 2>&1 &
  pids+=($!)
done
}

value=$(head -c "$VALUE_BYTES" /dev/zero | tr '\0' v)
deadline=$((SECONDS + 30))
disco_leader=""
while [ -z "$disco_leader" ] && ((SECONDS < deadline)); do
  for i in 1 2 3; do
    raft=$(curl -s "http://127.0.0.1:${ports[$((i + 2))]}/v1/status/leader" | tr -d '"') || true
    for j in 1 2 3; do [ "$raft" = "127.0.0.1:${ports[$((j - 1))]}" ] && disco_leader="127.0.0.1:${ports[$((j + 2))]}"; done
    [ -n "$disco_leader" ] && break
  done
  sleep 0.2
done
[ -n "$disco_leader" ] || { echo "writes.sh: no Disco leader" >&2; exit 1; }
disco_target=$disco_leader
if [ "$VIA" = follower ]; then
  for i in 1 2 3; do
    [ "127.0.0.1:${ports[$((i + 2))]}" != "$disco_leader" ] && { disco_target="127.0.0.1:${ports[$((i + 2))]}"; break; }
  done
fi
etcd_url="http://127.0.0.1:${ports[9]}"
[ "$ETCD" = 1 ] && until curl -sf -X POST "$etcd_url/v3/kv/put" -d '{"key":"d2FybQ==","value":"d2FybQ=="}' >/dev/null; do
  ((SECONDS < deadline)) || { echo "writes.sh: etcd did not start" >&2; tail "$tmp"/etcd1.log >&2; exit 1; }
  sleep 0.2
done
# etcd's client goes where Disco's does: to its leader, or with --via follower to a follower.
# A member that is not the leader forwards each write (at one client 10-15% fewer writes/s
# than at the leader), and which member wins the election is chance.
etcd_role() { # member's client URL -> leader or follower
  curl -s -X POST "$1/v3/maintenance/status" -d '{}' |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print("leader" if d["header"]["member_id"] == d["leader"] else "follower")'
}
if [ "$ETCD" = 1 ]; then
  etcd_url=""
  while [ -z "$etcd_url" ] && ((SECONDS < deadline)); do
    for i in 1 2 3; do
      url="http://127.0.0.1:${ports[$((i + 8))]}"
      [ "$(etcd_role "$url" 2>/dev/null)" = "$VIA" ] && { etcd_url=$url; break; }
    done
    [ -n "$etcd_url" ] || sleep 0.2
  done
  [ -n "$etcd_url" ] || { echo "writes.sh: no etcd $VIA found" >&2; exit 1; }
fi

# wrk scripts: KEYS keys, VALUE_BYTES-byte values; etcd's body is JSON with base64.
cat >"$tmp/disco.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  return wrk.format("PUT", "/v1/kv/bench/" .. (n % $KEYS), nil, "$value")
end
LUA
# When a slice is done, both scripts print its summary and its whole latency histogram
# (microsecond buckets, wrk's own: latency(i) is the i-th non-empty one), to merge the slices.
tail_lua='
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("slice %d %d %d %d\n", summary.requests, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout))
  for i = 1, #latency do
    local us, count = latency(i)
    io.write(string.format("bucket %d %d\n", us, count))
  end
end'
echo "$tail_lua" >>"$tmp/disco.lua"
python3 - "$tmp/etcd.lua" "$value" "$KEYS" <<'PY'
import base64, sys
path, value, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
v = base64.b64encode(value.encode()).decode()
keys = ",".join('"%s"' % base64.b64encode(("bench/%d" % i).encode()).decode() for i in range(count))
open(path, "w").write("""local keys = {%s}
local n = 0
wrk.method = "POST"
request = function()
  n = n + 1
  return wrk.format("POST", "/v3/kv/put", nil, '{"key":"' .. keys[(n %% %d) + 1] .. '","value":"%s"}')
end
""" % (keys, count, v))
PY
echo "$tail_lua" >>"$tmp/etcd.lua"

# CPU time (user + system, ms) of one system's three servers so far, from /proc: far steadier
# than writes/s on a shared host, so it shows what a change saves at one client too.
hz=$(getconf CLK_TCK)
cpu_ms() { # name -> ms
  local first=$([ "$1" = etcd ] && echo 3 || echo 0) total=0 t
  for pid in "${pids[@]:first:3}"; do
    t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo $((total * 1000 / hz))
}
slice() { # name url script clients seconds index: one wrk run, its output kept for merge
  local threads=$(($4 < 2 ? 1 : 2)) cpu_before
  cpu_before=$(cpu_ms "$1")
  wrk -t$threads -c"$4" -d"${5}s" --latency -s "$3" "$2" >"$tmp/$1-$4-$6.txt" 2>&1
  echo "cpu_ms $(($(cpu_ms "$1") - cpu_before))" >>"$tmp/$1-$4-$6.txt"
}
merge() { # name clients -> "writes/s p50 p99 p99.9 errors cpu-ms-per-write" over all of that point's slices
  python3 - "$tmp" "$1" "$2" <<'PY'
import glob, sys
tmp, name, clients = sys.argv[1:]
requests = duration = status = socket = cpu = 0
buckets = {}
for path in glob.glob("%s/%s-%s-*.txt" % (tmp, name, clients)):
    for line in open(path):
        f = line.split()
        if f[:1] == ["slice"]:
            requests += int(f[1]); duration += int(f[2]); status += int(f[3]); socket += int(f[4])
        elif f[:1] == ["cpu_ms"]:
            cpu += int(f[1])
        elif f[:1] == ["bucket"]:
            buckets[int(f[1])] = buckets.get(int(f[1]), 0) + int(f[2])
total = sum(buckets.values())
if not duration or not total:
    sys.exit("writes.sh: no wrk summary in %s/%s-%s-*.txt" % (tmp, name, clients))
def pct(p):  # wrk's stats_percentile: the first bucket whose running count reaches the rank
    rank = round(p / 100 * total + 0.5)
    seen = 0
    for v in sorted(buckets):
        seen += buckets[v]
        if seen >= rank:
            return v / 1000
    return 0.0
print("%.0f %.2f %.2f %.2f %d%s %.3f" % (requests / (duration / 1e6), pct(50), pct(99), pct(99.9), status, "+" if socket else "",
                                     cpu / requests if requests else 0))
PY
}
# A point's seconds as slices: n of them, about SLICE long each, summing to DURATION. Without
# etcd there is nothing to alternate with: one piece (a 60 s run is 60 s of unbroken load).
slices=$(((DURATION + SLICE / 2) / SLICE)); ((slices >= 1 && ETCD == 1)) || slices=1
slice_seconds() { echo $((DURATION / slices + ($1 < DURATION % slices ? 1 : 0))); }

order=$( ((slices > 1)) && echo ", Disco's and etcd's alternating" || true)
printf '\n3 servers each, loopback, %ss per point in %s slice(s)%s, after a %ss warm-up, %s-byte values to %s keys, wrk keep-alive, Disco and etcd each via its %s\n' \
  "$DURATION" "$slices" "$order" "$WARMUP" "$VALUE_BYTES" "$KEYS" "$VIA"
printf '%-8s %10s %7s %7s %8s %6s   %10s %7s %7s %8s %6s   %6s %s\n' clients "disco w/s" "p50 ms" "p99 ms" "p99.9 ms" errors "etcd w/s" "p50 ms" "p99 ms" "p99.9 ms" errors ratio "disco terms"
term() { curl -s "http://$disco_leader/metrics" | awk '$1 == "disco_raft_term" { print $2 }'; }
# The leader's stage histograms (issue 16): sums and counts, to print the means of one run.
stages() { curl -s "http://$disco_leader/metrics" | awk '
  $1 ~ /^disco_raft_(persist_duration|proposal_queue|proposal_commit|proposal_apply)_seconds_(sum|count)$/ ||
  $1 ~ /^disco_http_request_duration_seconds_(sum|count)\{route="\/v1\/kv"\}$/ { printf "%s=%s ", $1, $2 }'; }
# The followers' fsyncs are half of every write's latency: their persist histograms, summed.
follower_stages() {
  for i in 1 2 3; do
    api="127.0.0.1:${ports[$((i + 2))]}"
    [ "$api" = "$disco_leader" ] && continue
    curl -s "http://$api/metrics" | awk -v s="$i" '$1 ~ /^disco_raft_persist_duration_seconds_(sum|count)$/ { printf "%s%s=%s ", $1, s, $2 }'
  done; }
stage_means() { # before after [followers_before followers_after] -> the stage means over the run, in ms
  python3 - "$@" <<'PY'
import sys
def parse(text):
    return {k: float(v) for k, v in (item.rsplit("=", 1) for item in text.split())}
before, after = parse(sys.argv[1]), parse(sys.argv[2])
def mean(prefix):
    s = [k for k in after if k.startswith(prefix) and "_sum" in k]
    c = [k for k in after if k.startswith(prefix) and "_count" in k]
    if not s or not c:
        return "-"
    n = after[c[0]] - before.get(c[0], 0)
    return "%.2f" % (1000 * (after[s[0]] - before.get(s[0], 0)) / n) if n else "-"
if len(sys.argv) > 3:
    fb, fa = parse(sys.argv[3]), parse(sys.argv[4])
    n = sum(fa[k] - fb.get(k, 0) for k in fa if "_count" in k)
    t = sum(fa[k] - fb.get(k, 0) for k in fa if "_sum" in k)
    follower = "%.2f" % (1000 * t / n) if n else "-"
else:
    follower = "-"
print("leader stage means (ms): persist (per Ready) %s (followers' %s), queue for the Raft loop %s, propose->commit %s, commit->applied %s, HTTP request %s" % (
    mean("disco_raft_persist_duration"), follower, mean("disco_raft_proposal_queue"), mean("disco_raft_proposal_commit"), mean("disco_raft_proposal_apply"),
    mean("disco_http_request_duration")))
PY
}
# Warm-up, not measured: each system's first writes (connections, caches, the first log
# segment or WAL pages) are not in the first point's figures.
slice warmup-disco "http://$disco_target" "$tmp/disco.lua" 16 "$WARMUP" 0
if [ "$ETCD" = 1 ]; then slice warmup-etcd "$etcd_url" "$tmp/etcd.lua" 16 "$WARMUP" 0; fi
for c in $CLIENTS; do
  # A leader change during the run shows as a term that moved (PreVote: no spurious bumps).
  term_before=$(term)
  stages_before=$(stages) followers_before=$(follower_stages)
  for ((i = 0; i < slices; i++)); do
    # D E, E D, D E, ...: neither system always follows the other's load.
    for who in $( ((i % 2 == 0)) && echo "disco etcd" || echo "etcd disco"); do
      case $who in
        disco) slice disco "http://$disco_target" "$tmp/disco.lua" "$c" "$(slice_seconds $i)" $i ;;
        etcd) if [ "$ETCD" = 1 ]; then slice etcd "$etcd_url" "$tmp/etcd.lua" "$c" "$(slice_seconds $i)" $i; fi ;;
      esac
    done
  done
  # Disco's metrics move only in its own slices: etcd's leave them alone.
  term_after=$(term)
  stages_after=$(stages) followers_after=$(follower_stages)
  read -r dw dp50 dp99 dp999 derr dcpu < <(merge disco "$c")
  if [ "$ETCD" = 1 ]; then
    read -r ew ep50 ep99 ep999 eerr ecpu < <(merge etcd "$c")
    ratio=$(python3 -c "print('%.2fx' % ($dw / $ew))")
  else
    ew=- ep50=- ep99=- ep999=- eerr=- ratio=- ecpu=-
  fi
  printf '%-8s %10s %7s %7s %8s %6s   %10s %7s %7s %8s %6s   %6s %s\n' "$c" "$dw" "$dp50" "$dp99" "$dp999" "$derr" "$ew" "$ep50" "$ep99" "$ep999" "$eerr" "$ratio" "$term_before->${term_after:-gone}"
  printf '         %s\n' "$(stage_means "$stages_before" "$stages_after" "$followers_before" "$followers_after")"
  printf '         CPU per write, three servers together (ms): Disco %s, etcd %s\n' "$dcpu" "$ecpu"
  if [ "$VIA" = follower ]; then
    # What forwarding cost in connections: opened by the follower so far (a build with the
    # pool reports it), and sockets to the leader's HTTP port in TIME_WAIT now (kept 60 s).
    opened=$(curl -s "http://$disco_target/metrics" | awk '$1 == "disco_http_forward_connections_opened_total" { print $2 }')
    time_wait=$(ss -Htan state time-wait "( dport = :${disco_leader##*:} or sport = :${disco_leader##*:} )" | wc -l)
    printf '         follower: %s forwarding connections opened in total, %s in TIME_WAIT to the leader\n' "${opened:-(not reported)}" "$time_wait"
  fi
done
# Readies that held a Raft thread 100 ms or more (each server logs them, at most one line per
# 10 s with the count in between): what a heartbeat waited for.
slow=$(cat "$tmp"/disco?.log | python3 -c '
import re, sys
n = 0
for line in sys.stdin:
    if "a Raft Ready held the Raft thread" in line:
        m = re.search(r"raft.slow_since_last_log=(\d+)", line)
        n += 1 + (int(m.group(1)) if m else 0)
print(n)')
printf 'Disco Readies that held a Raft thread >= 100 ms: %s\n' "$slow"
