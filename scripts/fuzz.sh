#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (reference, manifest, www_authenticate, tar_unpack,
# seekable_toc, gzip_index).
#
#   scripts/fuzz.sh --smoke              # each target for a few seconds (CI): they never rot
#   scripts/fuzz.sh [--time SECS] [TARGET...]   # longer runs (default 300 s each)
#   scripts/fuzz.sh --runs N [TARGET...]        # N runs each instead of a time limit
#
# Works on a stable toolchain: cargo-fuzz needs nightly-only rustc flags, which
# RUSTC_BOOTSTRAP=1 unlocks. The sanitizer is `none` by default (the code under test is safe
# Rust; libFuzzer's coverage guidance works without ASan, and the build is much faster);
# set FUZZ_SANITIZER=address to build with ASan.
#
# Seeds live in fuzz/seeds/TARGET (small, in git); what libFuzzer finds goes to
# fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET, output to fuzz/logs/TARGET.log (none
# of them in git). Inputs of known, still open bugs are in fuzz/regressions/ (see its README).
# Installs cargo-fuzz with `cargo install cargo-fuzz --locked` when missing (about 2 minutes).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$REPO/fuzz"
ALL_TARGETS=(reference manifest www_authenticate tar_unpack seekable_toc gzip_index)

time_limit=300
runs=""
smoke=0
targets=()
while (($#)); do
    case $1 in
    --smoke) smoke=1; time_limit=${FUZZ_SMOKE_SECS:-5}; shift ;;
    --time) time_limit=${2:?--time needs seconds}; shift 2 ;;
    --runs) runs=${2:?--runs needs a count}; shift 2 ;;
    -h | --help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
    esac
done
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-none}
cd "$FUZZ"

echo "fuzz.sh: building ${targets[*]} (sanitizer $sanitizer)" >&2
for t in "${targets[@]}"; do
    cargo fuzz build --sanitizer "$sanitizer" "$t"
done

status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t" logs
    args=(-max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    if [[ -n $runs ]]; then
        args+=(-runs="$runs")
    else
        args+=(-max_total_time="$time_limit")
    fi
    if [[ -n $runs ]]; then limit="$runs runs"; else limit="$time_limit s"; fi
    echo "fuzz.sh: running $t ($limit)" >&2
    log="$FUZZ/logs/$t.log"
    # New inputs go to corpus/ (first dir); seeds/ is read only.
    if cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" \
        >"$log" 2>&1; then
        runs_done=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
        echo "fuzz.sh: $t: no crash in $runs_done runs" >&2
    else
        status=1
        echo "fuzz.sh: $t FAILED; last lines of $log:" >&2
        tail -n 40 "$log" >&2
    fi
done
exit "$status"
