#!/usr/bin/env bash
# Fuzzes the INS protocol crate with cargo-afl (AFL++), on the stable toolchain.
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]    (default: 15 s each, every target)
# Builds the targets (fuzz/src/bin/), runs each from its seeds (fuzz/corpus/<target>/)
# for the time given, prints executions, paths found and crashes, and copies every
# crash into fuzz/regressions/<target>/: commit it, and the ordinary test suite
# replays it (kaching_ins::harness). Exits 1 when any target crashed.
# CI runs 15 s per target (a minute in all); a long run: fuzz/run.sh 3600.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-15}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(authenticate plaintext legacy hmac)

if ! command -v cargo-afl >/dev/null 2>&1; then
    echo "fuzz: installing cargo-afl (crates.io)"
    cargo install cargo-afl --locked --version 0.18.2
fi
# Builds AFL++ for this toolchain once; says so (and fails) when it already is.
cargo afl config --build >/dev/null 2>&1 || true
cargo afl build --release --locked --bins 2>&1 | tail -1

out=target/fuzz-out
crashed=0
for t in "${targets[@]}"; do
    rm -rf "${out:?}/$t"
    mkdir -p "$out"
    AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
        AFL_SUPPRESS_DEBUG_OUTPUT=1 \
        timeout $((secs + 60)) cargo afl fuzz -V "$secs" -i "corpus/$t" -o "$out/$t" \
        "target/release/$t" >"$out/$t.log" 2>&1 || {
        echo "fuzz: $t: afl-fuzz failed; see fuzz/$out/$t.log" >&2
        tail -20 "$out/$t.log" >&2
        exit 1
    }
    stats="$out/$t/default/fuzzer_stats"
    get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    crashes=$(get saved_crashes)
    printf 'fuzz: %-12s %10s executions (%s/s), %s inputs in the queue, coverage %s, %s crashes, %s hangs\n' \
        "$t" "$(get execs_done)" "$(get execs_per_sec)" "$(get corpus_count)" "$(get bitmap_cvg)" \
        "$crashes" "$(get saved_hangs)"
    if [ "${crashes:-0}" != 0 ]; then
        crashed=1
        mkdir -p "regressions/$t"
        for f in "$out/$t/default/crashes/id:"*; do
            name="crash-$(sha256sum "$f" | cut -c1-16)"
            cp "$f" "regressions/$t/$name"
            echo "fuzz: $t crashed on fuzz/regressions/$t/$name" >&2
        done
    fi
done
exit "$crashed"
