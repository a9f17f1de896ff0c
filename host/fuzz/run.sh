#!/usr/bin/env bash
# Fuzzes wsplug-ws and wsplug-cluster-proto: installs what is missing, builds every fuzz
# target, runs each one.
#
#   host/fuzz/run.sh SECONDS [TARGET...]
#
# SECONDS is the time per target (the default targets are the six in fuzz_targets/).
# Exits non-zero if any target finds a failing input, after printing where the input
# is and how to reproduce it. Environment:
#   FUZZ_SANITIZER  address (default) or none (about twice the executions per second)
#   FUZZ_TOOLS      where cargo-fuzz is installed (default: <repo>/target/tools)
#
# cargo-fuzz drives libFuzzer with nightly-only rustc flags (-Zsanitizer=address,
# sanitizer coverage options); only stable Rust is installed, so RUSTC_BOOTSTRAP=1
# lets the stable compiler take them. The stable toolchain ships the ASan runtime.
# Builds go to host/fuzz/target (gitignored), apart from the workspace's target/.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(frame protocol protocol_deflate handshake deflate_negotiate cluster_wire)

usage() {
    echo "usage: $0 SECONDS [TARGET...]   targets: ${ALL_TARGETS[*]}" >&2
    exit 2
}
[[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -gt 0 ]] || usage
SECONDS_PER_TARGET=$1
shift
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=("${ALL_TARGETS[@]}")
for t in "${TARGETS[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || usage
done

FUZZ_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$FUZZ_DIR/../.." && pwd)
TOOLS=${FUZZ_TOOLS:-$ROOT/target/tools}
SANITIZER=${FUZZ_SANITIZER:-address}
CARGO_FUZZ=$TOOLS/bin/cargo-fuzz

# --- Install ---------------------------------------------------------------------

# libfuzzer-sys compiles libFuzzer (C++) with the cc crate.
if ! command -v c++ >/dev/null || ! command -v cc >/dev/null; then
    echo "run.sh: installing g++ (libFuzzer is C++)" >&2
    apt-get update -qq && apt-get install -y -qq g++ >/dev/null
fi

if [[ "$("$CARGO_FUZZ" fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "run.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS" >&2
    start=$(date +%s)
    # Its own temporary build directory, whatever CARGO_TARGET_DIR the caller exports.
    env -u CARGO_TARGET_DIR cargo install --quiet --locked --force --root "$TOOLS" "cargo-fuzz@$CARGO_FUZZ_VERSION"
    echo "run.sh: installed cargo-fuzz in $(($(date +%s) - start)) s" >&2
fi

# --- Build -----------------------------------------------------------------------

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=$FUZZ_DIR/target
cd "$FUZZ_DIR"
# cargo fuzz SUBCOMMAND [ARGS...], with this directory and the sanitizer.
fuzz() {
    local sub=$1
    shift
    "$CARGO_FUZZ" fuzz "$sub" --fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER" "$@"
}

start=$(date +%s)
fuzz build
echo "run.sh: built the fuzz targets in $(($(date +%s) - start)) s (sanitizer: $SANITIZER)"

# --- Run -------------------------------------------------------------------------

LOGS=$CARGO_TARGET_DIR/fuzz-logs
mkdir -p "$LOGS"
failed=()
for t in "${TARGETS[@]}"; do
    # New inputs go to a working corpus under target/; the committed seeds stay as they are.
    work=$CARGO_TARGET_DIR/corpus/$t
    artifacts=$FUZZ_DIR/artifacts/$t
    mkdir -p "$work" "$artifacts"
    case $t in
        handshake | deflate_negotiate | cluster_wire) dict=$FUZZ_DIR/dict/$t.dict ;;
        *) dict=$FUZZ_DIR/dict/protocol.dict ;;
    esac
    # One log per run (another run.sh may be fuzzing the same target); kept if it fails.
    log=$LOGS/$t.$$.log
    echo "run.sh: fuzzing $t for $SECONDS_PER_TARGET s (log: $log)"
    status=0
    fuzz run "$t" "$work" "$FUZZ_DIR/corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -dict="$dict" -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    # (|| true: under pipefail a grep that finds nothing would end the script. A crash
    # prints no final stats: its runs are counted from libFuzzer's progress lines.)
    execs=$(grep -ao 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s += $2} END {print s + 0}' || true)
    [[ ${execs:-0} -gt 0 ]] || execs=$(grep -ao '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
    rate=$(grep -ao 'stat::average_exec_per_sec: *[0-9]*' "$log" | awk '{s += $2} END {print s + 0}' || true)
    cov=$(grep -ao 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1 || true)
    if [[ $status -eq 0 ]]; then
        echo "run.sh:   $t: ok, $execs runs, $rate exec/s, $cov, corpus $(ls "$work" | wc -l) files"
        rm -f "$log"
    else
        failed+=("$t")
        echo "run.sh:   $t: FAILED (exit $status) after $execs runs:" >&2
        # The panic (message up to its backtrace), or the sanitizer's or libFuzzer's verdict.
        { grep -a -A4 'panicked at' "$log" | sed '/^stack backtrace/,$d' || true; grep -aE '^==[0-9]+==ERROR|^SUMMARY' "$log" || true; } | head -20 >&2
        echo "run.sh:   log: $log" >&2
        for input in $(grep -ao "Test unit written to [^ ]*" "$log" | awk '{print $5}' || true); do
            echo "run.sh:   failing input: $input" >&2
            echo "run.sh:   reproduce: RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$CARGO_TARGET_DIR $CARGO_FUZZ fuzz run --fuzz-dir $FUZZ_DIR --sanitizer $SANITIZER $t $input" >&2
            echo "run.sh:   or without libFuzzer: cargo run --manifest-path $FUZZ_DIR/Cargo.toml --example replay -- $t $input" >&2
        done
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "run.sh: failing inputs found by: ${failed[*]} (in $FUZZ_DIR/artifacts/)" >&2
    exit 1
fi
echo "run.sh: ${#TARGETS[@]} targets fuzzed for $SECONDS_PER_TARGET s each, no failing input"
