#!/usr/bin/env bash
# Run every cargo-fuzz target for SECONDS each (default 60) and exit
# non-zero if any of them finds a crash. See docs/fuzzing.md.
#
#   scripts/fuzz.sh [SECONDS]
#
# Environment:
#   FUZZ_TARGETS     targets to run (default: all four)
#   FUZZ_TOOLCHAIN   rustup toolchain (default: nightly if installed, else
#                    the default one with RUSTC_BOOTSTRAP=1)
#   FUZZ_SANITIZER   address (default) or none
#   FUZZ_TARGET_DIR  cargo target directory of the fuzz build
#                    (default: fuzz/target, ignored by git)
set -euo pipefail

SECS="${1:-60}"
if ! [[ "$SECS" =~ ^[0-9]+$ ]] || [[ "$SECS" -eq 0 ]]; then
    echo "usage: $0 [SECONDS]   (SECONDS per target, default 60)" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
read -r -a TARGETS <<< "${FUZZ_TARGETS:-frame_decoder frame_decoder_deflate protocol_text protocol_binary}"

if ! cargo fuzz --version > /dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 2
fi

# cargo-fuzz passes unstable (-Z) flags to rustc. Nightly takes them; on a
# stable toolchain RUSTC_BOOTSTRAP=1 lets it accept them too.
TOOLCHAIN=()
if [[ -n "${FUZZ_TOOLCHAIN:-}" ]]; then
    TOOLCHAIN=("+$FUZZ_TOOLCHAIN")
    [[ "$FUZZ_TOOLCHAIN" == nightly* ]] || export RUSTC_BOOTSTRAP=1
elif rustup toolchain list 2> /dev/null | grep -q '^nightly'; then
    TOOLCHAIN=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
OPTS=(--sanitizer "${FUZZ_SANITIZER:-address}" --target-dir "${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}")

echo "== building fuzz targets (toolchain ${TOOLCHAIN[*]:-default}${RUSTC_BOOTSTRAP:+ with RUSTC_BOOTSTRAP=1}, sanitizer ${FUZZ_SANITIZER:-address})"
cargo "${TOOLCHAIN[@]}" fuzz build "${OPTS[@]}"

# Seed corpora (fuzz/corpus is ignored by git; libFuzzer grows it).
seed() { # target name bytes(printf format)
    mkdir -p "corpus/$1"
    [[ -e "corpus/$1/$2" ]] || printf "$3" > "corpus/$1/$2"
}
# frame_decoder: limit byte, chunking seed, then client frames (zero mask keys).
seed frame_decoder text '\005\007\201\202\000\000\000\000hi'
seed frame_decoder fragments '\006\003\001\201\000\000\000\000a\211\200\001\002\003\004\200\201\000\000\000\000b\000\201\000\000\000\000c'
seed frame_decoder close '\005\001\210\205\000\000\000\000\003\350bye'
seed frame_decoder len16 '\007\011\202\376\000\200\000\000\000\000'
# frame_decoder_deflate: limit, chunking seed, parameters (16: compress the rest first), client bytes.
seed frame_decoder_deflate compressed '\007\005\033{"type":"publish","group":"g","data":"aaaaaaaaaaaaaaaaaaaaaaaaaaaa"}'
seed frame_decoder_deflate empty '\005\002\017\301\200\000\000\000\000\301\201\000\000\000\000\000'
seed protocol_text join '{"type":"join","group":"lobby","id":1}'
seed protocol_text publish '{"type":"publish","group":"g\\u00e9","data":{"x":[1,2.5,null,"s"]},"id":"q"}'
seed protocol_text send '{"type":"send","to":"17","data":"hi"}'
seed protocol_text ping '{"type":"ping"}'
seed protocol_binary join '\001\000\000\000lobby'
seed protocol_binary publish '\003\000\000\000\005lobbyhello'
seed protocol_binary leave '\002\000\000\000lobby'

LOGS="$ROOT/fuzz/artifacts/logs"
mkdir -p "$LOGS"
declare -A RUNS STATUS
failed=0
for t in "${TARGETS[@]}"; do
    echo "== fuzzing $t for ${SECS}s"
    args=(-max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [[ -f "dict/$t.dict" ]] && args+=(-dict="dict/$t.dict")
    [[ "$t" == frame_decoder* ]] && args+=(-max_len=8192)
    set +e
    cargo "${TOOLCHAIN[@]}" fuzz run "${OPTS[@]}" "$t" "corpus/$t" -- "${args[@]}" \
        > "$LOGS/$t.log" 2>&1
    rc=$?
    set -e
    RUNS[$t]="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$LOGS/$t.log" | grep -oE '[0-9]+$' | tail -1)"
    if [[ $rc -eq 0 ]]; then
        STATUS[$t]=ok
    else
        STATUS[$t]="FAILED (exit $rc)"
        failed=1
        tail -n 40 "$LOGS/$t.log"
    fi
    echo "$t: ${STATUS[$t]}, ${RUNS[$t]:-?} executions in ${SECS}s, corpus $(ls "corpus/$t" | wc -l) inputs (log: $LOGS/$t.log)"
done

echo "== summary"
for t in "${TARGETS[@]}"; do
    printf '%-16s %-18s %12s execs\n' "$t" "${STATUS[$t]}" "${RUNS[$t]:-?}"
done
if [[ $failed -ne 0 ]]; then
    echo "a target crashed: the input is in fuzz/artifacts/<target>/; reproduce with" \
        "cargo ${TOOLCHAIN[*]} fuzz run <target> fuzz/artifacts/<target>/<crash-file>" >&2
fi
exit $failed
