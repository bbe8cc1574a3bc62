#!/usr/bin/env bash
# The recovery runs of docs/BENCHMARKS.md: C clients of a group with
# history on one node of a two-node cluster lose that node (SIGKILL) and
# recover on the other, through Redis and through NATS (JetStream), in one
# session. Starts its own redis-server and nats-server (-js) on free
# loopback ports.
#
#   scripts/recover-bench.sh [recover options...]   (default: -c 5000 -r 200)
#
# Prints one JSON report per run (roomcast bench --json) to stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(-c 5000 -r 200)
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
run --spawn --nodes 2 --broker-pid "$RPID" --server-arg="--broker=redis://127.0.0.1:$RPORT" \
    --server-arg=--history-size=1000 recover "${ARGS[@]}"
run --spawn --nodes 2 --broker-pid "$NPID" --server-arg="--broker=nats://127.0.0.1:$NPORT" \
    --server-arg=--history-size=1000 recover "${ARGS[@]}"
