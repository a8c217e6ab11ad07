#!/usr/bin/env bash
# Acceptance test: Unbound, as a resolver, reaches the server under test through
# stub-zones and gets the right answers.
#
# Usage: scripts/unbound-stub.sh [ZONES_DIR]     (ZONES_DIR defaults to Zones/)
# Environment: SERVER=discod|nsd (default discod; nsd checks this script itself),
#   DISCOD (default .build/release/discod; built with `swift build -c release
#   --product discod` when missing unless SKIP_BUILD=1), SERVER_PORT, UNBOUND_PORT
#   (default: free ports), KEEP_TMP=1 keeps the temp dir (configs, Unbound's log).
#
# Starts the server on one loopback port serving ZONES_DIR (which must hold
# example.com.zone and 2.0.192.in-addr.arpa.zone as in Zones/), and Unbound on
# another, with stub-zones for example.com., 2.0.192.in-addr.arpa. and the root
# pointing at the server (so that nothing is ever sent off this machine: names
# outside the zones are REFUSED by the server), the iterator only (no DNSSEC
# validation), outgoing queries bound to 127.0.0.1 and every other IPv4 address
# in do-not-query-address. Then asks Unbound for A, AAAA, MX, SRV, TXT, PTR, SOA,
# a CNAME chain, an in-zone DNAME, a wildcard, an empty non-terminal, NXDOMAIN and
# a 40-record RRset (Unbound's EDNS buffer is 512 bytes, so it gets TC over UDP
# and retries over TCP), checks each answer, checks from Unbound's log that it
# sent queries to the server's port only and used TCP, and prints
# "N passed, N failed". Exits 1 if any check failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

SERVER=${SERVER:-discod}
zonesdir=$(cd "${1:-$DISCO_ROOT/Zones}" && pwd)
[[ -f $zonesdir/example.com.zone && -f $zonesdir/2.0.192.in-addr.arpa.zone ]] ||
  disco_die "$zonesdir lacks example.com.zone or 2.0.192.in-addr.arpa.zone"
disco_need unbound unbound-checkconf dig python3 setsid
case $SERVER in
  discod) discod=$(disco_find_discod) ;;
  nsd) disco_need nsd nsd-checkconf ;;
  *) disco_die "SERVER must be discod or nsd" ;;
esac
disco_init

server_port=${SERVER_PORT:-$(disco_free_port)}
if [[ $SERVER == nsd ]]; then
  disco_nsd_start "$zonesdir" "$server_port"
  disco_log "NSD $(disco_nsd_version) on 127.0.0.1:$server_port"
else
  # A cluster of one, so the service registry answers disco. too.
  raft_port=$(disco_free_port) http_port=$(disco_free_port)
  disco_discod_start "$discod" "$zonesdir" "$server_port" 1 --node-id 1 --raft "127.0.0.1:$raft_port" \
    --http "127.0.0.1:$http_port" --server "1=127.0.0.1:$raft_port,127.0.0.1:$http_port" --data-dir "$DISCO_TMP/data"
  disco_log "discod on 127.0.0.1:$server_port ($discod), HTTP API on 127.0.0.1:$http_port"
  register() {
    local body=$1 i
    for i in $(seq 1 100); do
      curl -sf -X PUT --data "$body" "http://127.0.0.1:$http_port/v1/agent/service/register" && return 0
      sleep 0.1
    done
    disco_die "cannot register $body"
  }
  register '{"Name": "web", "ID": "web-1", "Address": "10.20.0.1", "Port": 8080, "Tags": ["v2"]}'
  register '{"Name": "web", "ID": "web-2", "Address": "10.20.0.2", "Port": 8081}'
fi

unbound_port=${UNBOUND_PORT:-$(disco_free_port)}
udir=$DISCO_TMP/unbound
mkdir -p "$udir"
cat >"$udir/unbound.conf" <<EOF
server:
    interface: 127.0.0.1@$unbound_port
    port: $unbound_port
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$udir"
    pidfile: "$udir/unbound.pid"
    use-syslog: no
    logfile: "$udir/unbound.log"
    # 4 logs every upstream query ("sending to target"), checked below.
    verbosity: 4
    num-threads: 1
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    do-not-query-localhost: no
    # Never leave loopback: bind upstream sockets to 127.0.0.1 and refuse every
    # other IPv4 address as a target (these prefixes cover all but 127.0.0.0/8).
    outgoing-interface: 127.0.0.1
    do-not-query-address: 0.0.0.0/2
    do-not-query-address: 64.0.0.0/3
    do-not-query-address: 96.0.0.0/4
    do-not-query-address: 112.0.0.0/5
    do-not-query-address: 120.0.0.0/6
    do-not-query-address: 124.0.0.0/7
    do-not-query-address: 126.0.0.0/8
    do-not-query-address: 128.0.0.0/1
    # Unbound serves the RFC 5737 reverse zones itself by default.
    local-zone: "2.0.192.in-addr.arpa." nodefault
    qname-minimisation: no
    prefetch: no
    minimal-responses: no
    cache-max-negative-ttl: 0
    # Small enough that the 40-record pool RRset is truncated over UDP and
    # fetched again over TCP: the server's TC and TCP paths, as a resolver uses them.
    edns-buffer-size: 512

stub-zone:
    name: "example.com."
    stub-addr: 127.0.0.1@$server_port
stub-zone:
    name: "2.0.192.in-addr.arpa."
    stub-addr: 127.0.0.1@$server_port
stub-zone:
    name: "disco."
    stub-addr: 127.0.0.1@$server_port
# The root too, instead of root hints: out-of-zone names go to the server
# (which refuses them), never to the Internet.
stub-zone:
    name: "."
    stub-addr: 127.0.0.1@$server_port

remote-control:
    control-enable: no
EOF
unbound-checkconf "$udir/unbound.conf" >/dev/null || disco_die "unbound-checkconf rejected $udir/unbound.conf"
disco_spawn "$udir/stdout.log" unbound -d -c "$udir/unbound.conf"
unbound_pid=$DISCO_LAST_PID
disco_wait_dns "$unbound_port" example.com "$unbound_pid" "$udir/unbound.log" +rec ||
  disco_die "Unbound did not answer"
disco_log "Unbound $(unbound -V | awk 'NR == 1 { print $2 }') on 127.0.0.1:$unbound_port"

passed=0 failed=0
indent() { sed 's/^/    /'; }

# check NAME TYPE RCODE [EXPECTED-LINE...]: Unbound's answer (dig +short lines, sorted)
# must equal the expected lines (sorted), with rcode RCODE and the RA flag set.
check() {
  local name=$1 type=$2 rcode=$3 out got want flags
  shift 3
  out=$(dig +time=5 +tries=1 -p "$unbound_port" @127.0.0.1 "$name" "$type" 2>&1 || true)
  got=$(dig +short +time=5 +tries=1 -p "$unbound_port" @127.0.0.1 "$name" "$type" 2>&1 | sort || true)
  want=$(if (($#)); then printf '%s\n' "$@"; fi | sort)
  flags=$(sed -n 's/^;; flags: \([^;]*\);.*/\1/p' <<<"$out")
  if [[ $out == *"status: $rcode,"* && " $flags " == *" ra "* && $got == "$want" ]]; then
    passed=$((passed + 1))
    printf 'ok    %s %s -> %s%s\n' "$name" "$type" "$rcode" "${got:+ ($(wc -l <<<"$got") records)}"
  else
    failed=$((failed + 1))
    printf 'FAIL  %s %s: want %s, flags with ra, answer:\n%s\n  got:\n%s\n' \
      "$name" "$type" "$rcode" "$(indent <<<"$want")" "$(indent <<<"$out")"
  fi
}

check example.com SOA NOERROR "ns1.example.com. hostmaster.example.com. 2024120101 7200 3600 1209600 300"
check host1.example.com A NOERROR 192.0.2.11
check mail.example.com AAAA NOERROR 2001:db8::25
check www.example.com A NOERROR web.example.com. host1.example.com. 192.0.2.11
check example.com MX NOERROR "10 mail.example.com." "20 mail2.example.com."
check _sip._udp.example.com SRV NOERROR "10 60 5060 sip1.example.com." "10 40 5060 sip2.example.com."
check info.example.com TXT NOERROR '"Disco test zone" "maintained by the DNS team"' \
  '"semicolon; inside and a \"quoted\" word"'
check www.oldcorp.example.com A NOERROR corp.example.com. www.corp.example.com. 192.0.2.110
check anything.wild.example.com TXT NOERROR '"wildcard match"'
check b.ent.example.com A NOERROR
check nope.example.com A NXDOMAIN
check 25.2.0.192.in-addr.arpa PTR NOERROR mail.example.com.
mapfile -t pool < <(for i in $(seq 1 40); do echo "198.51.100.$i"; done)
check pool.example.com A NOERROR "${pool[@]}"
check example.org A SERVFAIL # refused by the server, as nothing else is asked
if [[ $SERVER == discod ]]; then
  # The service registry through the resolver.
  check web.service.disco A NOERROR 10.20.0.1 10.20.0.2
  check v2.web.service.disco A NOERROR 10.20.0.1
  check _web._tcp.service.disco SRV NOERROR "1 1 8080 0a140001.addr.disco." "1 1 8081 0a140002.addr.disco."
  check nothere.service.disco A NXDOMAIN
  check disco-1.node.disco A NOERROR 127.0.0.1
fi

# Every upstream query went to the server under test.
targets=$(sed -n 's/.*sending to target: <[^>]*> \([^ ]*\).*/\1/p' "$udir/unbound.log" | sort -u)
if [[ -n $targets && $targets == "127.0.0.1#$server_port" ]]; then
  passed=$((passed + 1))
  echo "ok    Unbound queried only 127.0.0.1#$server_port"
else
  failed=$((failed + 1))
  printf 'FAIL  Unbound upstream targets, want only 127.0.0.1#%s, got:\n%s\n' "$server_port" "${targets:-    (none logged)}"
fi

# The pool answer did not fit Unbound's 512-byte EDNS buffer: it must have retried over TCP.
if grep -q 'initiate TCP query' "$udir/unbound.log"; then
  passed=$((passed + 1))
  echo "ok    Unbound retried a truncated answer over TCP"
else
  failed=$((failed + 1))
  echo "FAIL  Unbound never queried over TCP (was the pool answer not truncated at 512 bytes?)"
fi

echo "$passed passed, $failed failed"
((failed == 0))
