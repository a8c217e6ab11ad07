#!/usr/bin/env bash
# Health checks at steady state: N instances with 1 s HTTP checks against N local endpoints (one
# port each, an asyncio responder), on a --dev discod. Prints probes/s, log entries written in
# the window (expected 0: only transitions are replicated) and discod's CPU.
# Usage: scripts/bench/health-probes.sh [N=300] [SECONDS=10]   (DISCOD=path to the binary)
set -euo pipefail
n=${1:-300}; window=${2:-10}
discod=${DISCOD:-.build/release/discod}
dir=$(mktemp -d)
cat > "$dir/endpoints.py" <<'PY'
import asyncio, sys
base, n = int(sys.argv[1]), int(sys.argv[2])
async def handle(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    for i in range(n):
        await asyncio.start_server(handle, "127.0.0.1", base + i)
    await asyncio.Event().wait()
asyncio.run(main())
PY
python3 "$dir/endpoints.py" 19000 "$n" >/dev/null 2>&1 & endpoints=$!
"$discod" --dev --dns 127.0.0.1:18753 --http 127.0.0.1:18750 --raft 127.0.0.1:18751 --data-dir "$dir/data" \
  --zones Zones >"$dir/log" 2>&1 & daemon=$!
trap 'kill $daemon $endpoints 2>/dev/null; wait $daemon $endpoints 2>/dev/null; rm -rf "$dir"' EXIT
sleep 3
for i in $(seq 0 $((n - 1))); do
  curl -s -X PUT localhost:18750/v1/agent/service/register -d "{\"Name\":\"web\",\"ID\":\"web-$i\",\"Address\":\"10.9.$((i / 250)).$((i % 250 + 1))\",\"Port\":80,\"Check\":{\"HTTP\":\"http://127.0.0.1:$((19000 + i))/health\",\"Interval\":\"1s\",\"Timeout\":\"1s\"}}" >/dev/null
done
sleep 8
metric() { curl -s localhost:18750/metrics | awk -v k="$1" '$1 == k { print $2 }'; }
p0=$(metric disco_health_probes_total); c0=$(metric disco_raft_commit_index); t0=$(cut -d' ' -f14-15 /proc/$daemon/stat)
sleep "$window"
p1=$(metric disco_health_probes_total); c1=$(metric disco_raft_commit_index); t1=$(cut -d' ' -f14-15 /proc/$daemon/stat)
ticks=$(( $(echo "$t1" | awk '{print $1+$2}') - $(echo "$t0" | awk '{print $1+$2}') ))
echo "checks: $n, probes/s: $(( (p1 - p0) / window )), log entries in ${window}s: $((c1 - c0)), discod CPU: $(( ticks / window ))% of a core"
echo "answered in DNS: $(dig +short @127.0.0.1 -p 18753 web.service.disco | wc -l)"
