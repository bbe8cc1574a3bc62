#!/usr/bin/env bash
# The history runs of docs/BENCHMARKS.md: the cost of keeping history per
# publication, on the memory broker, Redis and NATS (JetStream), each run
# with no history and with --history-size, alternately, in one session so
# the figures compare. One node per run (the broker's work per publication
# is what changes); starts its own redis-server and nats-server (-js) on
# free loopback ports and passes their pids, so broker CPU is measured.
#
#   scripts/history-bench.sh [fanout options...]   (default: -c 1000 -g 100 -p 4 -r 20000 -d 10s)
#
# HISTORY_SIZE (default 100) is the size kept. Prints one JSON report per
# run (roomcast bench --json) to stdout, each preceded on stderr by its
# command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(-c 1000 -g 100 -p 4 -r 20000 -d 10s)
SIZE=${HISTORY_SIZE:-100}
BIN=target/release/roomcast
[ -x "$BIN" ] || cargo build --release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port); NPORT=$(free_port)
STORE=$(mktemp -d)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --protected-mode no >/dev/null &
RPID=$!
nats-server -a 127.0.0.1 -p "$NPORT" -js -sd "$STORE" >/dev/null 2>&1 &
NPID=$!
trap 'kill $RPID $NPID 2>/dev/null || true; rm -rf "$STORE"' EXIT
sleep 1
run() { echo "== $*" >&2; "$BIN" bench --json "$@"; }
for history in 0 "$SIZE"; do
    run --spawn --server-arg="--history-size=$history" fanout "${ARGS[@]}"
    run --spawn --broker-pid "$RPID" --server-arg="--broker=redis://127.0.0.1:$RPORT" \
        --server-arg="--history-size=$history" fanout "${ARGS[@]}"
    run --spawn --broker-pid "$NPID" --server-arg="--broker=nats://127.0.0.1:$NPORT" \
        --server-arg="--history-size=$history" fanout "${ARGS[@]}"
done
