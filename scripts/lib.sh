# shellcheck shell=bash
# Shared helpers for scripts/*.sh: free ports, temp dirs, starting NSD / discod /
# Unbound as reaped children, waiting for a DNS server to answer.
#
# Usage (from a script that has `set -euo pipefail`):
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   # or ../lib.sh
#   disco_init                 # makes $DISCO_TMP, installs the EXIT/INT/TERM traps
#   port=$(disco_free_port)
#   disco_nsd_start "$zonesdir" "$port"
#   disco_discod_start "$DISCOD" "$zonesdir" "$port2" 1
#
# Every process started here runs in its own process group (setsid) and is
# killed, group and all, on exit; $DISCO_TMP is removed unless KEEP_TMP=1.

DISCO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DISCO_PIDS=()
DISCO_SPAWN_PREFIX=() # e.g. (taskset -c 0): put before every command disco_spawn starts
DISCO_TMP=""

disco_log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
disco_die() { disco_log "error: $*"; exit 2; }

# Running (not a zombie waiting for `wait`): a process, or any process of a group.
disco_alive() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $s != Z* ]]; }
# shellcheck disable=SC2009 # pgrep cannot tell zombies apart
disco_group_alive() { (($(ps -o stat= -g "$1" 2>/dev/null | grep -cv '^Z') > 0)); }

disco_cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  # SIGTERM to each leader first, so that it stops and reaps its own children
  # (NSD's xfrd and server processes); then whatever is left of its group.
  for pid in "${DISCO_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${DISCO_PIDS[@]}"; do
    for ((i = 0; i < 50; i++)); do
      disco_alive "$pid" || break
      sleep 0.1
    done
    if disco_alive "$pid"; then
      disco_log "pid $pid ignored SIGTERM for 5 s; sending SIGKILL"
    fi
    for ((i = 0; i < 20; i++)); do
      disco_group_alive "$pid" || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$DISCO_TMP" && -d "$DISCO_TMP" ]]; then
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
      disco_log "kept $DISCO_TMP"
    else
      rm -rf -- "$DISCO_TMP"
    fi
  fi
  exit "$rc"
}

disco_init() {
  DISCO_TMP=$(mktemp -d "${TMPDIR:-/tmp}/disco-${0##*/}.XXXXXX")
  trap disco_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

disco_need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 ||
      disco_die "$tool not found (Debian: apt-get install -y nsd dnsperf dnsutils knot-dnsutils unbound python3)"
  done
}

# A loopback port free for both UDP and TCP at the time of asking. The kernel
# picks it (port 0), so parallel runs do not collide in practice.
disco_free_port() {
  python3 - <<'EOF'
import socket
for _ in range(100):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close()
        continue
    u.close(); t.close()
    print(port)
    break
else:
    raise SystemExit("no free port")
EOF
}

# Start a command in its own process group, output to a log file; records the pid.
# disco_spawn LOGFILE CMD ARGS...   (sets DISCO_LAST_PID)
disco_spawn() {
  local log=$1
  shift
  setsid "${DISCO_SPAWN_PREFIX[@]}" "$@" >"$log" 2>&1 </dev/null &
  DISCO_LAST_PID=$!
  DISCO_PIDS+=("$DISCO_LAST_PID")
}

# Wait until a server on 127.0.0.1:PORT answers SOA for ZONE with NOERROR.
# disco_wait_dns PORT ZONE PID LOGFILE [+rec]   (+rec for a resolver)
disco_wait_dns() {
  local port=$1 zone=$2 pid=$3 log=$4 rec=${5:-+norec} i out
  for ((i = 0; i < 150; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      disco_log "server (pid $pid) exited during start-up; its log:"
      sed 's/^/  | /' "$log" >&2 || true
      return 1
    fi
    out=$(dig "$rec" +time=1 +tries=1 -p "$port" @127.0.0.1 "$zone" SOA 2>&1 || true)
    [[ $out == *"status: NOERROR"* ]] && return 0
    sleep 0.1
  done
  disco_log "server on port $port did not answer SOA $zone within 15 s; its log:"
  sed 's/^/  | /' "$log" >&2 || true
  return 1
}

# The zones of a Disco zone directory: one origin per DIR/<origin>.zone.
disco_zone_names() {
  local f
  for f in "$1"/*.zone; do
    [[ -e "$f" ]] || continue
    f=${f##*/}
    printf '%s\n' "${f%.zone}"
  done
}

# The first zone of a zone directory (the one start-up waits for); dies if none.
disco_first_zone() {
  local zones
  mapfile -t zones < <(disco_zone_names "$1")
  ((${#zones[@]} > 0)) || disco_die "no *.zone files in $1"
  printf '%s\n' "${zones[0]}"
}

# Start NSD 4 on 127.0.0.1:PORT serving every ZONESDIR/<origin>.zone.
# zonesdir is NSD's working directory, so a relative $INCLUDE resolves against
# the zone directory as Disco resolves it (against the including file's directory).
# disco_nsd_start ZONESDIR PORT [EXTRA_SERVER_LINES [EXTRA_ZONE_LINES]]
#   (sets NSD_PID, NSD_LOG; extra lines are indented nsd.conf lines;
#   NSD_SERVER_COUNT sets server-count, default 1, with reuseport when above 1;
#   NSD_RRL_RATELIMIT sets rrl-ratelimit, default 0: RRL off)
disco_nsd_start() {
  local zonesdir port extra zextra dir zone first
  zonesdir=$(cd "$1" && pwd)
  port=$2
  extra=${3:-}
  zextra=${4:-}
  dir="$DISCO_TMP/nsd-$port"
  mkdir -p "$dir"
  {
    cat <<EOF
server:
    ip-address: 127.0.0.1@$port
    do-ip6: no
    server-count: ${NSD_SERVER_COUNT:-1}
    reuseport: $( ((${NSD_SERVER_COUNT:-1} > 1)) && echo yes || echo no)
    username: ""
    chroot: ""
    zonesdir: "$zonesdir"
    database: ""
    zonelistfile: "$dir/zone.list"
    xfrdfile: "$dir/xfrd.state"
    xfrdir: "$dir"
    pidfile: "$dir/nsd.pid"
    logfile: "$dir/nsd.log"
    verbosity: 1
    rrl-ratelimit: ${NSD_RRL_RATELIMIT:-0}
    zonefiles-write: 0
$extra
remote-control:
    control-enable: no
EOF
    while read -r zone; do
      printf 'zone:\n    name: "%s"\n    zonefile: "%s/%s.zone"\n%s\n' \
        "$zone" "$zonesdir" "$zone" "$zextra"
    done < <(disco_zone_names "$zonesdir")
  } >"$dir/nsd.conf"
  first=$(disco_first_zone "$zonesdir")
  nsd-checkconf "$dir/nsd.conf" || disco_die "nsd-checkconf rejected $dir/nsd.conf"
  NSD_LOG="$dir/nsd.log"
  : >"$NSD_LOG"
  NSD_SPAWN_TIME=$(date +%s.%N)
  disco_spawn "$dir/stdout.log" nsd -d -c "$dir/nsd.conf"
  NSD_PID=$DISCO_LAST_PID
  # NSD_NO_WAIT=1: return at once (the caller waits for its answer itself; start-up timing).
  [[ ${NSD_NO_WAIT:-} == 1 ]] && return 0
  disco_wait_dns "$port" "$first" "$NSD_PID" "$NSD_LOG" || {
    sed 's/^/  | /' "$dir/stdout.log" >&2
    disco_die "NSD did not start"
  }
}

disco_nsd_version() { nsd -v 2>&1 | awk 'NR == 1 { print $3 }'; }

# Start discod on 127.0.0.1:PORT serving ZONESDIR.
# disco_discod_start BINARY ZONESDIR PORT WORKERS [EXTRA-ARG...]   (sets DISCOD_PID, DISCOD_LOG)
#   (RRL off unless DISCO_DNS_RRL_ENABLED=true)
disco_discod_start() {
  local bin=$1 zonesdir=$2 port=$3 workers=$4 first
  shift 4
  DISCOD_LOG="$DISCO_TMP/discod-$port.log"
  first=$(disco_first_zone "$zonesdir")
  # RRL off unless the caller says otherwise, as NSD runs with rrl-ratelimit: 0 here: the
  # comparisons measure answering, and dnsperf from one address is far above RRL's rate.
  DISCO_DNS_RRL_ENABLED=${DISCO_DNS_RRL_ENABLED:-false} \
    disco_spawn "$DISCOD_LOG" "$bin" --zones "$zonesdir" --dns "127.0.0.1:$port" --workers "$workers" "$@"
  DISCOD_PID=$DISCO_LAST_PID
  disco_wait_dns "$port" "$first" "$DISCOD_PID" "$DISCOD_LOG" || disco_die "discod did not start"
}

# Resolve $DISCOD (default .build/release/discod), building it when missing
# unless SKIP_BUILD=1. Prints the absolute path.
disco_find_discod() {
  local bin=${DISCOD:-$DISCO_ROOT/.build/release/discod}
  if [[ ! -x "$bin" ]]; then
    if [[ "${SKIP_BUILD:-0}" == 1 ]]; then
      disco_die "discod not found at $bin (SKIP_BUILD=1; set DISCOD=/path/to/discod)"
    fi
    disco_log "building discod: swift build -c release --product discod"
    (cd "$DISCO_ROOT" && swift build -c release --product discod >&2)
    bin=$DISCO_ROOT/.build/release/discod
    [[ -x "$bin" ]] || disco_die "build did not produce $bin"
  fi
  (cd "$(dirname "$bin")" && printf '%s/%s\n' "$(pwd)" "$(basename "$bin")")
}

# disco_server_cpu_ns SID: CPU nanoseconds used so far by every thread of every process of
# session SID (from /proc/*/task/*/schedstat).
disco_server_cpu_ns() {
  local total=0 pid file t rest
  for pid in $(ps -o pid= -s "$1"); do
    for file in /proc/"$pid"/task/*/schedstat; do
      read -r t rest <"$file" 2>/dev/null || continue
      total=$((total + t))
    done
  done
  echo "$total"
}
