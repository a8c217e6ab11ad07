#!/usr/bin/env bash
# Large-zone start-up: time from exec to the first answer, and memory, for discod and NSD
# on the same generated zone (README "Large zones"); then discod's SIGHUP reload of it.
#
# Usage: scripts/bench/zoneload.sh [--services N] [--nodes N] [--runs N]
#   defaults: 60,000 services on 30,000 nodes (about 991,000 records, 44 MB), 3 runs each
# Environment: DISCOD (default .build/release/discod, built when missing unless SKIP_BUILD=1).
#
# "first answer": the first correct answer for the file's last record (owner, type, data),
# from exec, polled every 20 ms by one light process for both servers, then checked with dig.
# RSS: the server's resident memory a second after it answers (NSD: its largest process, the
# one holding the zone; the serving children share it copy-on-write); peak RSS: its VmHWM then,
# the most it held at once while loading. Reload: discod gets SIGHUP
# with a new serial in the file; the time until the new serial is answered, and discod's
# peak resident memory (VmHWM) over the run, which covers both versions held at once.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

services=60000 nodes=30000 runs=3
while (($#)); do
  case $1 in
    --services) services=$2; shift ;;
    --nodes) nodes=$2; shift ;;
    --runs) runs=$2; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) disco_die "unknown option $1" ;;
  esac
  shift
done
disco_need nsd nsd-checkconf dig bc
disco_init
DISCOD=$(disco_find_discod)
zonedir="$DISCO_TMP/zones"
mkdir -p "$zonedir"
python3 "$DISCO_ROOT/scripts/bench/genzone.py" --services "$services" --nodes "$nodes" --queries 10 \
  "$zonedir/bench.disco.zone" "$DISCO_TMP/queries.txt"
records=$(grep -cv '^[;$]' "$zonedir/bench.disco.zone" || true)
read -r last_owner _ last_type last_data < <(tail -1 "$zonedir/bench.disco.zone")
last_data=${last_data##* }
bytes=$(stat -c %s "$zonedir/bench.disco.zone")

now() { date +%s.%N; }
# poll PORT PID NAME TYPE: queries NAME TYPE every 20 ms from one light process (no dig per poll:
# a process per poll would take CPU from the server starting) until a NOERROR answer with data
# arrives; 60 s at most. Exit status 1 if PID exits first or time runs out.
poll() {
  python3 - "$@" <<'PY'
import os, socket, struct, sys, time
port, pid, name, qtype = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
types = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "TXT": 16, "AAAA": 28, "SRV": 33}
q = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
# With EDNS (4096 bytes): the last record's RRset may not fit 512 bytes.
packet = (struct.pack(">HHHHHH", 0x1234, 0, 1, 0, 0, 1) + q + struct.pack(">HH", types[qtype], 1)
          + b"\0" + struct.pack(">HHIH", 41, 4096, 0, 0))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.02)
deadline = time.time() + 60
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    s.sendto(packet, ("127.0.0.1", port))
    try:
        while True:
            reply = s.recv(65535)
            if reply[:2] == b"\x12\x34" and reply[3] & 0x0F == 0 and struct.unpack(">H", reply[6:8])[0] > 0:
                sys.exit(0)
    except socket.timeout:
        pass
sys.exit(1)
PY
}
# wait_answer PORT PID [SERIAL]: until the last record is answered with its data (SERIAL: until
# the SOA carries that serial instead); then checked once with dig.
wait_answer() {
  local port=$1 pid=$2 serial=${3:-} out i
  for ((i = 0; i < 50; i++)); do
    if [[ -n $serial ]]; then
      poll "$port" "$pid" bench.disco. SOA || return 1
      out=$(dig +norec +time=1 +tries=1 +short -p "$port" @127.0.0.1 bench.disco. SOA 2>&1 || true)
      [[ $out == *" $serial 3600 "* ]] && return 0
    else
      poll "$port" "$pid" "$last_owner.bench.disco." "$last_type" || return 1
      out=$(dig +norec +time=1 +tries=1 +short -p "$port" @127.0.0.1 "$last_owner.bench.disco." "$last_type" 2>&1 || true)
      [[ $out == *"$last_data"* ]] && return 0
      echo "zoneload.sh: wrong answer for the last record: $out" >&2
      return 1
    fi
    sleep 0.02
  done
  return 1
}
rss_mib() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
hwm_mib() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
# largest_mib SID FIELD: the largest VmRSS or VmHWM among the processes of session SID.
largest_mib() {
  local best=0 pid r
  for pid in $(ps -o pid= -s "$1"); do
    r=$(awk -v f="$2:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    ((r > best)) && best=$r
  done
  awk -v k="$best" 'BEGIN { printf "%.0f", k / 1024 }'
}

declare -a d_time d_rss d_hwm n_time n_rss n_hwm r_time r_hwm
for ((run = 1; run <= runs; run++)); do
  port=$(disco_free_port)
  start=$(now)
  DISCO_DNS_RRL_ENABLED=false disco_spawn "$DISCO_TMP/discod-$run.log" "$DISCOD" --dev --zones "$zonedir" \
    --dns "127.0.0.1:$port" --http "127.0.0.1:$(disco_free_port)" --raft "127.0.0.1:$(disco_free_port)" --data-dir "$DISCO_TMP/data-$run" --workers 1
  pid=$DISCO_LAST_PID
  wait_answer "$port" "$pid" || { sed 's/^/  | /' "$DISCO_TMP/discod-$run.log" >&2; disco_die "discod did not answer"; }
  d_time+=("$(echo "$(now) - $start" | bc)")
  # Settled: what it holds once the load's temporary memory has gone back (a second on).
  sleep 1
  d_rss+=("$(rss_mib "$pid")")
  d_hwm+=("$(hwm_mib "$pid")")
  # Reload with a new serial.
  sed -i "0,/ ( [0-9]* 3600 / s// ( $((run + 100)) 3600 /" "$zonedir/bench.disco.zone"
  start=$(now)
  kill -HUP "$pid"
  wait_answer "$port" "$pid" "$((run + 100))" || disco_die "discod did not answer the reloaded zone"
  r_time+=("$(echo "$(now) - $start" | bc)")
  r_hwm+=("$(hwm_mib "$pid")")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  sed -i "0,/ ( [0-9]* 3600 / s// ( 1 3600 /" "$zonedir/bench.disco.zone"

  port=$(disco_free_port)
  # Timed from NSD's exec (after its configuration is written and checked), as discod's is.
  NSD_NO_WAIT=1 NSD_SERVER_COUNT=1 disco_nsd_start "$zonedir" "$port" >/dev/null
  wait_answer "$port" "$NSD_PID" || disco_die "NSD did not answer the last record"
  n_time+=("$(echo "$(now) - $NSD_SPAWN_TIME" | bc)")
  sleep 1
  n_rss+=("$(largest_mib "$(ps -o sid= -p "$NSD_PID" | tr -d ' ')" VmRSS)")
  n_hwm+=("$(largest_mib "$(ps -o sid= -p "$NSD_PID" | tr -d ' ')" VmHWM)")
  kill -- -"$(ps -o sid= -p "$NSD_PID" | tr -d ' ')" 2>/dev/null || true
  sleep 0.5
done

printf '\nzone: %s records, %s bytes (genzone.py --services %s --nodes %s); %s runs each\n' \
  "$records" "$bytes" "$services" "$nodes" "$runs"
printf '%-28s %12s %10s %10s\n' "server" "first answer" "RSS" "peak RSS"
for ((i = 0; i < runs; i++)); do
  printf '%-28s %10.2f s %6s MiB %6s MiB\n' "discod (run $((i + 1)))" "${d_time[$i]}" "${d_rss[$i]}" "${d_hwm[$i]}"
  printf '%-28s %10.2f s %6s MiB %6s MiB\n' "NSD $(disco_nsd_version) (run $((i + 1)))" "${n_time[$i]}" "${n_rss[$i]}" "${n_hwm[$i]}"
done
for ((i = 0; i < runs; i++)); do
  printf 'discod SIGHUP reload (run %d): new serial answered after %.2f s, peak RSS %s MiB\n' \
    "$((i + 1))" "${r_time[$i]}" "${r_hwm[$i]}"
done
