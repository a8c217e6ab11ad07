#!/usr/bin/env bash
# Reflection-flood benchmark: discod's RRL against NSD's, side by side in one run.
#
# Usage: scripts/bench/flood.sh [options]
#   -d, --duration S   seconds of flood per server (DURATION, default 10)
#   -w, --workers N    discod --workers and NSD server-count (WORKERS, default 1)
#   --attack-rate N    attacker queries/s (ATTACK_RATE, default 30000; 0: as fast as it can)
#   --rate N           RRL responses/s for both servers (RATE, default 200: NSD's default)
#   --slip N           RRL slip for both (SLIP, default 2)
#   --no-baseline      skip the discod run with RRL off
#   --skip-build       never build discod (SKIP_BUILD=1)
#   --keep             keep the temp dir (KEEP_TMP=1)
# Environment also: DISCOD (default .build/release/discod).
#
# What it does: a zone flood.test. with a ~1 KB TXT RRset at big.flood.test. (the answer a
# reflection attack wants: ~20x its query); each server in turn (discod with RRL, NSD with
# rrl-ratelimit/rrl-slip, and discod with RRL off as the baseline) serves it on a loopback
# port while, for DURATION seconds:
#   - an attacker sends queries for big.flood.test. TXT, ATTACK_RATE a second (below what
#     either server answers on this machine: the point is what RRL lets out, not overload;
#     0 floods as fast as one Python process can, and then drops in the servers' socket
#     buffers hit the legitimate clients too) from 8 sockets bound to 127.66.6.1-8: the
#     victim's /24. Every 127.0.0.0/8 address is
#     local, so the responses land on those sockets and are counted as the victim receives
#     them (a spoofed-source attack seen from the victim);
#   - a legitimate client in another /24 (127.0.0.1) asks the same question 20 times a second;
#   - a legitimate client inside the victim's /24 (127.66.6.250) does too: it is rate limited
#     with the attacker, and gets through by retrying over TCP after a truncated (slipped) answer.
# Both clients use UDP with EDNS, a 500 ms timeout, 2 UDP retries, and TCP after TC=1.
# Prints per server: queries and bytes the attacker sent, responses and bytes the victim
# received (amplification = victim bytes / attacker bytes: at most 1 with RRL), and the
# share of each legitimate client's queries answered. Traffic only on loopback; everything
# started is stopped and the temp dir removed on exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=../lib.sh
source "$here/../lib.sh"

DURATION=${DURATION:-10} WORKERS=${WORKERS:-1} RATE=${RATE:-200} SLIP=${SLIP:-2} ATTACK_RATE=${ATTACK_RATE:-30000}
baseline=1
while (($#)); do
  case $1 in
    -d | --duration) DURATION=$2; shift ;;
    -w | --workers) WORKERS=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --attack-rate) ATTACK_RATE=$2; shift ;;
    --slip) SLIP=$2; shift ;;
    --no-baseline) baseline=0 ;;
    --skip-build) export SKIP_BUILD=1 ;;
    --keep) export KEEP_TMP=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) disco_die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
disco_need python3 dig setsid nsd nsd-checkconf
discod=$(disco_find_discod)
disco_init

zonedir=$DISCO_TMP/zones
mkdir -p "$zonedir"
{
  printf '$TTL 300\n@ SOA ns1 hostmaster 1 7200 900 1209600 60\n  NS ns1\nns1 A 127.0.0.1\nwww A 192.0.2.10\n'
  printf 'big TXT'
  for i in 1 2 3 4; do printf ' "%s"' "$(printf "$i%.0s" {1..240})"; done
  printf '\n'
} >"$zonedir/flood.test.zone"

# run NAME PORT: the flood and both clients at once; their JSON in $DISCO_TMP/NAME-*.json
run() {
  local name=$1 port=$2 attack outside inside
  disco_log "$name: flood from 127.66.6.1-8 for $DURATION s, clients at 127.0.0.1 and 127.66.6.250"
  disco_spawn "$DISCO_TMP/$name-attack.json" python3 "$here/flood.py" attack --port "$port" --seconds "$DURATION" \
    --sources 127.66.6.1,127.66.6.2,127.66.6.3,127.66.6.4,127.66.6.5,127.66.6.6,127.66.6.7,127.66.6.8 \
    --name big.flood.test --type TXT --rate "$ATTACK_RATE"
  attack=$DISCO_LAST_PID
  disco_spawn "$DISCO_TMP/$name-outside.json" python3 "$here/flood.py" client --port "$port" --seconds "$DURATION" \
    --source 127.0.0.1 --name big.flood.test --type TXT --rate 20
  outside=$DISCO_LAST_PID
  disco_spawn "$DISCO_TMP/$name-inside.json" python3 "$here/flood.py" client --port "$port" --seconds "$DURATION" \
    --source 127.66.6.250 --name big.flood.test --type TXT --rate 20
  inside=$DISCO_LAST_PID
  wait "$attack" "$outside" "$inside" || disco_die "$name: a flood process failed (see $DISCO_TMP)"
}

names=() ports=()
discod_port=$(disco_free_port)
# Loopback is exempt from RRL by default (a local resolver forwards from it); the benchmark's
# victim and clients all live on loopback, so nothing is exempt here.
DISCO_DNS_RRL_ENABLED=true DISCO_DNS_RRL_RESPONSES_PER_SECOND=$RATE DISCO_DNS_RRL_SLIP=$SLIP DISCO_DNS_RRL_EXEMPT= \
  disco_discod_start "$discod" "$zonedir" "$discod_port" "$WORKERS"
names+=("discod") ports+=("$discod_port")
nsd_port=$(disco_free_port)
NSD_SERVER_COUNT=$WORKERS NSD_RRL_RATELIMIT=$RATE disco_nsd_start "$zonedir" "$nsd_port" \
  "    rrl-slip: $SLIP
    rrl-ipv4-prefix-length: 24
    rrl-ipv6-prefix-length: 56"
names+=("NSD-$(disco_nsd_version)") ports+=("$nsd_port")
if ((baseline)); then
  off_port=$(disco_free_port)
  DISCO_DNS_RRL_ENABLED=false disco_discod_start "$discod" "$zonedir" "$off_port" "$WORKERS"
  names+=("discod-rrl-off") ports+=("$off_port")
fi

for i in "${!names[@]}"; do
  run "${names[$i]}" "${ports[$i]}"
done

python3 - "$DISCO_TMP" "$DURATION" "$RATE" "$SLIP" "${names[@]}" <<'PY'
import json, sys
tmp, seconds, rate, slip, names = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
def load(name, part):
    with open(f"{tmp}/{name}-{part}.json") as f:
        return json.loads(f.read().strip().splitlines()[-1])
print(f"\nReflection flood, {seconds:g} s per server, RRL {rate} responses/s, slip {slip}\n")
header = ("server", "attack q/s", "attacker MB", "victim MB", "amplification", "victim resp/s", "TC", "outside answered", "inside answered (TCP)")
rows = []
for name in names:
    a, o, i = load(name, "attack"), load(name, "outside"), load(name, "inside")
    rows.append((name, f"{a['queries'] / seconds:,.0f}", f"{a['query_bytes'] / 1e6:.2f}", f"{a['response_bytes'] / 1e6:.2f}",
                 f"{a['response_bytes'] / max(a['query_bytes'], 1):.2f}", f"{a['responses'] / seconds:,.0f}", f"{a['truncated']:,}",
                 f"{100 * o['answered'] / max(o['asked'], 1):.1f}% of {o['asked']}",
                 f"{100 * i['answered'] / max(i['asked'], 1):.1f}% of {i['asked']} ({i['via_tcp']})"))
widths = [max(len(r[c]) for r in rows + [header]) for c in range(len(header))]
for r in [header] + rows:
    print("  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths))))
PY
