#!/usr/bin/env bash
# Beyond one process (docs/BENCHMARKS.md): three nodes on this machine,
# each holding N idle connections (default 19,800: a process may open
# 20,000 files), all in one group, through a broker (redis or nats).
# A load process may open no more files than a node, so each node gets its
# own load process:
#   1. memory: three `bench connections` at once, one per node;
#   2. delivery: three `bench fanout` at once, one per node's subscribers;
#      only the first publishes (1 publication/s); the other two listen.
#      Payloads carry CLOCK_MONOTONIC timestamps, the same clock in every
#      process, so each process times the deliveries it sees; a
#      publication has reached everyone when the slowest of the three has
#      it.
#
#   scripts/cluster-60k.sh [redis|nats] [N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
KIND=${1:-redis}
N=${2:-19800}
BIN=target/release/roomcast
[ -x "$BIN" ] || cargo build --release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BPORT=$(free_port)
case "$KIND" in
    redis) redis-server --port "$BPORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & BURL="redis://127.0.0.1:$BPORT" ;;
    nats) nats-server -a 127.0.0.1 -p "$BPORT" >/dev/null 2>&1 & BURL="nats://127.0.0.1:$BPORT" ;;
    *) echo "usage: $0 [redis|nats] [N]" >&2; exit 2 ;;
esac
BPID=$!
PIDS=()
PORTS=()
cleanup() { kill "${PIDS[@]}" "$BPID" 2>/dev/null || true; }
trap cleanup EXIT
sleep 1
for i in 0 1 2; do
    p=$(free_port)
    "$BIN" serve --listen "127.0.0.1:$p" --broker "$BURL" --node-name "node-$i" \
        --message-rate 0 --connect-rate-per-ip 0 --max-connections-per-ip 0 --log-level warn &
    PIDS+=($!)
    PORTS+=("$p")
done
for p in "${PORTS[@]}"; do
    until curl -sf "http://127.0.0.1:$p/readyz" >/dev/null; do sleep 0.2; done
done
bench() { local i=$1; shift; "$BIN" bench --json --url "ws://127.0.0.1:${PORTS[$i]}/ws" --server-pid "${PIDS[$i]}" "$@"; }

echo "== memory: $N idle connections per node, one group, $KIND" >&2
RUNS=()
for i in 0 1 2; do bench "$i" connections -c "$N" -g 1 --hold 20s > "/tmp/60k-conn-$i.json" & RUNS+=($!); done
wait "${RUNS[@]}"
for i in 0 1 2; do cat "/tmp/60k-conn-$i.json"; done

echo "== delivery: one group of $((3 * N)) over three nodes, $KIND" >&2
bench 1 fanout -c "$N" -g 1 -p 0 -d 45s --drain 5s > /tmp/60k-fan-1.json &
L1=$!
bench 2 fanout -c "$N" -g 1 -p 0 -d 45s --drain 5s > /tmp/60k-fan-2.json &
L2=$!
sleep 15   # the listeners connect first
bench 0 fanout -c "$N" -g 1 -p 1 -r 1 -d 20s --drain 5s > /tmp/60k-fan-0.json
wait $L1 $L2
for i in 0 1 2; do cat "/tmp/60k-fan-$i.json"; done
