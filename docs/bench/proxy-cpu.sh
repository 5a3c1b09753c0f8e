#!/bin/bash
# The proxy's own CPU per request, measured as users run it: the release proxy
# example pinned to core 0, wrk pinned to core 1, GETs spread over 1,000
# objects fetched twice before (a miss, then a hit). CPU from /proc/PID/stat.
# A stopgap until `cargo xtask bench` has this section (the proxy issue).
#
#   cargo build --release --example proxy
#   docs/bench/proxy-cpu.sh LABEL BODY_BYTES -- PROXY_FLAGS...
#   docs/bench/proxy-cpu.sh memcache 16384 -- --storage memcache
#   docs/bench/proxy-cpu.sh memory   16384 -- --memory-mib 256 --durability none
#   docs/bench/proxy-cpu.sh disk     16384 -- --memory-mib 1 --promote-on-hit 0 --durability none
#
# Needs wrk and taskset; objects are fresh for 60 s, so a run must fit in it.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
LABEL=$1; SIZE=$2; shift 3
PORT=$((20000 + RANDOM % 20000))
DIR=$(mktemp -d /tmp/pb.XXXX)
taskset -c 0 "$ROOT"/target/release/examples/proxy --listen 127.0.0.1:$PORT --cache-dir $DIR "$@" >/tmp/pb_$LABEL.$PORT.log 2>&1 &
PID=$!
for i in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/bytes/1 && break; sleep 0.1; done
cat > /tmp/pb.lua <<LUA
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/bytes/$SIZE?k=" .. (counter % 1000))
end
LUA
# warm: every object fetched twice (a miss, then a hit)
for k in $(seq 0 999); do curl -s -o /dev/null "http://127.0.0.1:$PORT/bytes/$SIZE?k=$k"; done
for k in $(seq 0 999); do curl -s -o /dev/null "http://127.0.0.1:$PORT/bytes/$SIZE?k=$k"; done
if ! kill -0 $PID 2>/dev/null; then
  echo "$LABEL: the proxy exited before the load; its log: /tmp/pb_$LABEL.$PORT.log" >&2
  exit 1
fi
read -r -a S1 < /proc/$PID/stat
OUT=$(taskset -c 1 wrk -t1 -c16 -d8s --latency -s /tmp/pb.lua http://127.0.0.1:$PORT/ 2>&1)
read -r -a S2 < /proc/$PID/stat
REQS=$(echo "$OUT" | awk '/requests in/ {print $1}')
RPS=$(echo "$OUT" | awk '/Requests\/sec/ {print $2}')
P99=$(echo "$OUT" | awk '/ 99%/ {print $2}')
TICKS=$(( (${S2[13]} + ${S2[14]}) - (${S1[13]} + ${S1[14]}) ))
HZ=$(getconf CLK_TCK)
US=$(python3 -c "print(round($TICKS/$HZ*1e6/$REQS,1))")
TIERS=$(curl -s http://127.0.0.1:$PORT/metrics | grep -E 'event="hit_(disk|memory)"' | tr '\n' ' ' | head -c 400)
echo "$LABEL size=$SIZE reqs=$REQS rps=$RPS p99=$P99 cpu_us_per_req=$US"
echo "  $TIERS"
kill $PID; wait $PID 2>/dev/null; rm -rf $DIR /tmp/pb_$LABEL.$PORT.log
