#!/usr/bin/env bash
# The cluster runs of docs/BENCHMARKS.md: one group of C subscribers on one
# node (in-memory broker), then split over 2 and 3 nodes through Redis and
# through NATS, publishers on the first node, all in one session so the
# figures compare. Starts its own redis-server and nats-server on free
# loopback ports and passes their pids, so broker CPU is measured too.
#
#   scripts/cluster-bench.sh [fanout options...]     (default: -c 10000 -r 40 -d 10s)
#
# Prints one JSON report per run (roomcast bench --json) to stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(-c 10000 -r 40 -d 10s)
BIN=target/release/roomcast
[ -x "$BIN" ] || cargo build --release
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port); NPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no --protected-mode no >/dev/null &
RPID=$!
nats-server -a 127.0.0.1 -p "$NPORT" >/dev/null 2>&1 &
NPID=$!
trap 'kill $RPID $NPID 2>/dev/null || true' EXIT
sleep 1
run() { echo "== $*" >&2; "$BIN" bench --json "$@"; }
run --spawn fanout "${ARGS[@]}"
for nodes in 2 3; do
    run --spawn --nodes "$nodes" --broker-pid "$RPID" --server-arg="--broker=redis://127.0.0.1:$RPORT" fanout "${ARGS[@]}"
    run --spawn --nodes "$nodes" --broker-pid "$NPID" --server-arg="--broker=nats://127.0.0.1:$NPORT" fanout "${ARGS[@]}"
done
