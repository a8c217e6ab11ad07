#!/usr/bin/env bash
# Acceptance test: ISC's DNS compliance tester (genreport, ../shared/tools/genreport) against
# discod serving Zones/, in its full (-f), common (-c) and type (-t) modes. Every test must
# print `ok`; `opcodeflg=reset` is accepted too (NSD 4.6.1 gets it; RFC 1035 leaves the flags
# of a NOTIMP answer open). Prints each mode's line and "N passed, N failed"; exits 1 if any
# test is not ok.
#
# Usage: scripts/genreport-check.sh
# Environment: DISCOD (default .build/release/discod; built with `swift build -c release
#   --product discod` when missing unless SKIP_BUILD=1), GENREPORT_DIR (default
#   ../shared/tools/genreport beside the repository), KEEP_TMP=1 keeps the temp dir.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"

tool_dir=${GENREPORT_DIR:-$DISCO_ROOT/../shared/tools/genreport}
[[ -x $tool_dir/build.sh ]] || disco_die "genreport not found at $tool_dir (set GENREPORT_DIR)"
disco_need cc dig setsid
discod=$(disco_find_discod)
genreport=$("$tool_dir/build.sh")
disco_init

# A cluster of one on free ports, serving the example zones.
dns_port=$(disco_free_port) raft_port=$(disco_free_port) http_port=$(disco_free_port)
disco_discod_start "$discod" "$DISCO_ROOT/Zones" "$dns_port" 1 --node-id 1 --raft "127.0.0.1:$raft_port" \
  --http "127.0.0.1:$http_port" --server "1=127.0.0.1:$raft_port,127.0.0.1:$http_port" --data-dir "$DISCO_TMP/data"
disco_log "discod on 127.0.0.1:$dns_port ($discod)"

passed=0 failed=0
for mode in -f -c -t; do
  line=$(echo "example.com ns1.example.com 127.0.0.1" | "$genreport" -P "$dns_port" "$mode" -s)
  echo "genreport $mode: $line"
  results=$(grep -o '[A-Za-z0-9@_-]*=[A-Za-z0-9,_-]*' <<<"$line" || true)
  [[ -n $results ]] || { echo "genreport $mode: no results" >&2; failed=$((failed + 1)); continue; }
  while read -r result; do
    case $result in
      *=ok | opcodeflg=reset) passed=$((passed + 1)) ;;
      *) echo "not ok: $result ($mode)" >&2; failed=$((failed + 1)) ;;
    esac
  done <<<"$results"
done
echo "$passed passed, $failed failed"
((failed == 0))
