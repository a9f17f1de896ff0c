#!/usr/bin/env bash
# Profiles the release host under an echo load: `bench/profile.sh SIZE INFLIGHT [PLUGIN]`
# (after `make bench` or a release build of wsplug-host and wsplug-bench). Records the
# server with perf for 4 s of a 6 s `wsbench echo --conns 100` and prints wsbench's
# result, the share of each binary and the hottest symbols. HOST_ARGS adds host options
# (HOST_ARGS=--stateless).
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-20}
inflight=${2:-4}
plugin=${3:-target/wasm32-wasip2/release/echo.wasm}
out=$(mktemp -d)
trap 'kill "$host" 2>/dev/null; rm -rf "$out"' EXIT

target/release/host --listen 127.0.0.1:0 --plugin "$plugin" --log warn \
    --max-payload-size 16777216 ${HOST_ARGS:-} >"$out/host" 2>/dev/null &
host=$!
for _ in $(seq 100); do grep -q listening "$out/host" && break; sleep 0.1; done
addr=$(grep -o '127.0.0.1:[0-9]*' "$out/host")

target/release/wsbench --addr "$addr" --server-pid "$host" echo --conns 100 --size "$size" \
    --inflight "$inflight" --duration 6 >"$out/wsbench" 2>&1 &
load=$!
sleep 1 # let the connections open before recording
perf record -F 1999 -g -p "$host" -o "$out/perf.data" -- sleep 4 >/dev/null 2>&1
wait "$load"
grep RESULT "$out/wsbench"
perf report -i "$out/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | head -6
perf report -i "$out/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep '%' | head -25
