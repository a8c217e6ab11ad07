#!/usr/bin/env bash
# Compare discod's answers with NSD's on the same zone directory.
#
# Usage: scripts/compare-nsd.sh [options] [ZONES_DIR]      (ZONES_DIR defaults to Zones/)
#   --nsd-vs-nsd   compare NSD with a second NSD (checks this harness: expect 0 differ)
#   --show         also print NSD's normalized answer to every query
#   --queries FILE use these queries (`name type [dig options]` per line) instead of
#                  generating them
#   -h, --help     this text
# Environment: DISCOD (default .build/release/discod; built with `swift build -c release
#   --product discod` when missing unless SKIP_BUILD=1), NSD_PORT, DISCOD_PORT (default:
#   free ports), WORKERS (discod --workers, default 1), KEEP_TMP=1 keeps the temp dir.
#
# Starts NSD 4 and discod on two loopback ports serving every ZONES_DIR/<origin>.zone,
# generates a few hundred queries from NSD's AXFR of each zone (scripts/dnscompare.py:
# every owner name x its types + A/AAAA/TXT/MX/ANY, empty non-terminals, wildcard
# matches, names under delegations and DNAMEs, nonexistent and out-of-zone names,
# random case, +noedns, +bufsize=512, +dnssec, TCP, the largest RRsets with and without
# EDNS), runs each against both with dig and diffs the normalized output (header
# flags, rcode, EDNS/EDE lines, question verbatim, each section's records sorted;
# no ids, timings, server lines, cookies or NSID). Prints each difference and
# "N queries, M differ"; exits 1 if any differ, 2 on a set-up failure.
#
# NSD 4.6 behaviour that is a legitimate choice, where discod may differ and a
# difference is then reviewed rather than "fixed" blindly:
#  - minimal-responses defaults to no: positive answers carry the zone's apex NS
#    RRset in AUTHORITY and the NS addresses in ADDITIONAL (RFC 1034 §4.3.2 allows
#    both; many servers, and Unbound's minimal-responses, leave them out).
#  - ANY (RFC 8482): NSD answers one RRset, not all of them, over UDP and TCP alike
#    (the first in its internal order: SOA at the apex, A at a host), with no
#    AUTHORITY/ADDITIONAL. RFC 8482 also allows a synthesized HINFO, or every RRset.
#  - Additional-section processing for MX/SRV/NS targets adds A then AAAA of in-zone
#    targets only, does not follow a CNAME target, and adds nothing from another zone
#    NSD also serves (the reverse zone's NS names live in example.com).
#  - EDNS: NSD advertises a UDP payload size of 1232 and adds EDE 20 (Not
#    Authoritative) to REFUSED for names outside its zones, EDE 21 for class CH
#    queries other than version.bind/id.server. EDE is optional (RFC 8914).
#  - Names in answers come back in the query's case (compression into the question);
#    the normalizer lower-cases them, only the question line is compared verbatim.
#  - Out-of-zone names: REFUSED (not NOERROR/NXDOMAIN, not a root referral).
#  - A response that does not fit: TC=1 with an empty answer and authority.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

mode=discod show=0 queries="" zonesdir=""
while (($#)); do
  case $1 in
    --nsd-vs-nsd) mode=nsd ;;
    --show) show=1 ;;
    --queries) queries=$(realpath "$2"); shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) disco_die "unknown option $1 (see --help)" ;;
    *) zonesdir=$1 ;;
  esac
  shift
done
zonesdir=$(cd "${zonesdir:-$DISCO_ROOT/Zones}" && pwd)
disco_need nsd nsd-checkconf dig python3 setsid

if [[ $mode == discod ]]; then
  discod=$(disco_find_discod)
fi
disco_init
set -E
trap 'exit 2' ERR  # a failing set-up step is not "answers differ" (exit 1)

mapfile -t zones < <(disco_zone_names "$zonesdir")
((${#zones[@]})) || disco_die "no *.zone files in $zonesdir"

# The same identity and version for both (CH TXT id.server / version.bind).
identity=compare.test version=compare-1
nsd_identity=$(printf '    identity: "%s"\n    version: "%s"' "$identity" "$version")
nsd_port=${NSD_PORT:-$(disco_free_port)}
disco_nsd_start "$zonesdir" "$nsd_port" "$nsd_identity" "    provide-xfr: 127.0.0.1 NOKEY"
disco_log "NSD $(disco_nsd_version) on 127.0.0.1:$nsd_port"

other_port=${DISCOD_PORT:-$(disco_free_port)}
if [[ $mode == discod ]]; then
  DISCO_DNS_IDENTITY=$identity DISCO_DNS_VERSION=$version disco_discod_start "$discod" "$zonesdir" "$other_port" "${WORKERS:-1}"
  other=discod
  disco_log "discod on 127.0.0.1:$other_port ($discod)"
else
  disco_nsd_start "$zonesdir" "$other_port" "$nsd_identity"
  other=nsd2
  disco_log "second NSD on 127.0.0.1:$other_port"
fi

if [[ -z $queries ]]; then
  queries=$DISCO_TMP/queries.txt
  python3 "$here/dnscompare.py" queries --axfr-port "$nsd_port" "${zones[@]}" >"$queries"
fi
disco_log "$(wc -l <"$queries") queries over zones: ${zones[*]}"

if ((show)); then
  python3 "$here/dnscompare.py" show --a "nsd=$nsd_port" "$queries"
fi
trap - ERR
rc=0
python3 "$here/dnscompare.py" compare --a "nsd=$nsd_port" --b "$other=$other_port" "$queries" || rc=$?
exit "$rc"
