#!/usr/bin/env bash
# Benchmarks oras-fs (push, pull, mount) against its peers on a private local registry,
# on loopback and at an injected round-trip time, and writes BENCHMARKS.md.
#
#   scripts/bench.sh [--smoke] [--runs N] [--big SIZE] [--huge SIZE]
#                    [--small-count N] [--small-size SIZE] [--delay-ms MS] [--no-rtt]
#                    [--fio-runtime S] [--creates N] [--sync-count N] [--only GROUPS]
#                    [--lazy-size SIZE] [--lazy-files N] [--old-bin PATH]
#                    [--model-size SIZE] [--fio-rtt-runtime S]
#                    [--tree-count N] [--tree-size SIZE]
#                    [--drop-caches] [--bin PATH] [--out FILE]
#
#   --smoke        tiny sizes, 1 run, report to a temp file (CI: scripts/test.sh)
#   --runs N       runs of every workload, interleaved (default 3)
#   --big SIZE     the "512 MiB" file (default 512M)      env BENCH_BIG
#   --huge SIZE    the "1 GiB" file (default 1G)           env BENCH_HUGE
#   --small-count N / --small-size SIZE  (256 / 64K)      env BENCH_SMALL_COUNT/_SIZE
#   --delay-ms MS  one-way delay of the latency proxy (10 = 20 ms RTT); --no-rtt skips it
#   --fio-runtime S  seconds of the fio randread job (default 5)
#   --fio-rtt-runtime S  seconds of the same job at the injected RTT (default 30)
#   --model-size SIZE  the safetensors-layout file of the model rows (default 2G)  env BENCH_MODEL_SIZE
#   --tree-count N / --tree-size SIZE  the tree rows' files, one layer each, in one
#                  directory (5000 / 4K)                               env BENCH_TREE_COUNT/_SIZE
#   --creates N    empty files created in one directory of a writable mount, in 5 batches,
#                  then removed with rm -rf (default 10000)             env BENCH_CREATES
#   --sync-count N   4 KiB files written into a writable mount and synced, against
#                  `oras-fs push` of the same files (default 2000)      env BENCH_SYNC_COUNT
#   --lazy-size SIZE  total size of the directory of the lazy rows (default 1G)  env BENCH_LAZY_SIZE
#   --lazy-files N    its number of files (default 2000)                      env BENCH_LAZY_FILES
#   --old-bin PATH    an oras-fs from before seekable layers (it pushes plain tar.gz directory
#                  layers): the plain side of the lazy push row; without it, that side is
#                  `tar -czf` of the directory + `oras-fs push` of the file     env BENCH_OLD_BIN
#   --only GROUPS  run only these workload groups (comma-separated): pull, push, mount, fio,
#                  rtt, staging (the creates, rm -rf and small-file sync rows), lazy (issue
#                  #14: a directory as a seekable layer and as a plain tar.gz, an image built
#                  from this machine's files: ls -R, one-file reads, cp -r, index, push), tls
#                  (issue #16: a TLS registry, HTTP/1.1 against HTTP/2, on loopback and at 20 and
#                  50 ms RTT; rows in OUT's .tls.md), model
#                  (a model file mmapped from a mount at the RTT: 10% of its tensors at random,
#                  then all in order, against pull then the same load), tree (a directory
#                  of small files, one layer each, walked through a fresh mount by `cat DIR/*`,
#                  `cp -r` and `grep -r`, on loopback and at the RTT, against pull). The report
#                  then goes to a temp file unless --out is given: BENCHMARKS.md's generated
#                  region holds a full run.
#   --drop-caches  drop the page cache before every timed command (needs root; slow)
#   --registry-on-disk  keep the registry's storage under /tmp rather than in /dev/shm
#   --bin PATH     the oras-fs binary (default: target/release, built if stale)
#   --out FILE     where to write the report (default BENCHMARKS.md; temp file in --smoke)
#
# Peers: the Python ORAS SDK (.venv), curl (one streaming GET / POST+PUT: the raw HTTP
# limit), and, for the mount, `oras-fs pull`/`push` of the same data. Exits non-zero only
# when something is broken (a command fails or returns wrong bytes), never for a missed
# target. Starts and stops its own registry, proxy and mounts; cleans up on any exit.
set -euo pipefail
export LC_ALL=C

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
START=$SECONDS
say() { printf 'bench.sh: [%3d s] %s\n' $((SECONDS - START)) "$*" >&2; }

usage() {
    sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

die() {
    echo "bench.sh: $*" >&2
    exit 1
}

# --- Options ------------------------------------------------------------------------------
MODE=full
for a in "$@"; do [[ $a == --smoke ]] && MODE=smoke; done
if [[ $MODE == smoke ]]; then
    RUNS=1 BIG=4M HUGE=8M SMALL_COUNT=16 SMALL_SIZE=4K FIO_RUNTIME=1 CMD_TIMEOUT=60
    FIO_RTT_RUNTIME=1 MODEL=8M TREE_COUNT=40 TREE_SIZE=4K
    CREATES=200 SYNC_COUNT=100 LAZY_SIZE=8M LAZY_FILES=40 IMG_LIB=4M IMG_BIN=1M
else
    RUNS=${BENCH_RUNS:-3}
    BIG=${BENCH_BIG:-512M}
    HUGE=${BENCH_HUGE:-1G}
    SMALL_COUNT=${BENCH_SMALL_COUNT:-256}
    SMALL_SIZE=${BENCH_SMALL_SIZE:-64K}
    FIO_RUNTIME=${BENCH_FIO_RUNTIME:-5}
    FIO_RTT_RUNTIME=${BENCH_FIO_RTT_RUNTIME:-30}
    MODEL=${BENCH_MODEL_SIZE:-2G}
    TREE_COUNT=${BENCH_TREE_COUNT:-5000}
    TREE_SIZE=${BENCH_TREE_SIZE:-4K}
    CREATES=${BENCH_CREATES:-10000}
    SYNC_COUNT=${BENCH_SYNC_COUNT:-2000}
    LAZY_SIZE=${BENCH_LAZY_SIZE:-1G}
    LAZY_FILES=${BENCH_LAZY_FILES:-2000}
    # The image of the lazy rows: this much of /usr/lib/x86_64-linux-gnu (layer 1) and of
    # /usr/bin (layer 2, with /etc).
    IMG_LIB=${BENCH_IMAGE_LIB:-160M}
    IMG_BIN=${BENCH_IMAGE_BIN:-40M}
    CMD_TIMEOUT=600
fi
DELAY_MS=${BENCH_DELAY_MS:-10}
RTT=1
DROP=0
REG_ON_DISK=0
BIN=${ORAS_FS_BIN:-}
OLD_BIN=${BENCH_OLD_BIN:-}
OUT=""
ONLY=""
while (($#)); do
    case $1 in
    --smoke) shift ;;
    --runs) RUNS=${2:?}; shift 2 ;;
    --big) BIG=${2:?}; shift 2 ;;
    --huge) HUGE=${2:?}; shift 2 ;;
    --small-count) SMALL_COUNT=${2:?}; shift 2 ;;
    --small-size) SMALL_SIZE=${2:?}; shift 2 ;;
    --delay-ms) DELAY_MS=${2:?}; shift 2 ;;
    --no-rtt) RTT=0; shift ;;
    --fio-runtime) FIO_RUNTIME=${2:?}; shift 2 ;;
    --fio-rtt-runtime) FIO_RTT_RUNTIME=${2:?}; shift 2 ;;
    --model-size) MODEL=${2:?}; shift 2 ;;
    --tree-count) TREE_COUNT=${2:?}; shift 2 ;;
    --tree-size) TREE_SIZE=${2:?}; shift 2 ;;
    --creates) CREATES=${2:?}; shift 2 ;;
    --sync-count) SYNC_COUNT=${2:?}; shift 2 ;;
    --only) ONLY=${2:?}; shift 2 ;;
    --lazy-size) LAZY_SIZE=${2:?}; shift 2 ;;
    --lazy-files) LAZY_FILES=${2:?}; shift 2 ;;
    --old-bin) OLD_BIN=${2:?}; shift 2 ;;
    --drop-caches) DROP=1; shift ;;
    --registry-on-disk) REG_ON_DISK=1; shift ;;
    --bin) BIN=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    *) echo "bench.sh: unknown option $1" >&2; usage ;;
    esac
done

to_bytes() {
    local s=${1^^} n mult=1
    s=${s%IB}
    s=${s%B}
    case $s in
    *K) mult=1024; n=${s%K} ;;
    *M) mult=$((1 << 20)); n=${s%M} ;;
    *G) mult=$((1 << 30)); n=${s%G} ;;
    *) n=$s ;;
    esac
    [[ $n =~ ^[0-9]+$ ]] || die "bad size '$1'"
    echo $((n * mult))
}
BIG_B=$(to_bytes "$BIG")
HUGE_B=$(to_bytes "$HUGE")
SMALL_B=$(to_bytes "$SMALL_SIZE")
LAZY_B=$(to_bytes "$LAZY_SIZE")
IMG_LIB_B=$(to_bytes "$IMG_LIB")
IMG_BIN_B=$(to_bytes "$IMG_BIN")
MODEL_B=$(to_bytes "$MODEL")
TREE_B=$(to_bytes "$TREE_SIZE")
[[ $TREE_COUNT =~ ^[1-9][0-9]*$ ]] || die "bad --tree-count '$TREE_COUNT'"
((TREE_B > 0)) || die "bad --tree-size '$TREE_SIZE'"
[[ $LAZY_FILES =~ ^[1-9][0-9]*$ ]] && ((LAZY_FILES >= 2)) || die "bad --lazy-files '$LAZY_FILES'"
((LAZY_B >= (1 << 20) + LAZY_FILES)) || die "--lazy-size too small: one file of 1 MiB and a byte per other file"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "bad --runs '$RUNS'"
[[ $SMALL_COUNT =~ ^[1-9][0-9]*$ ]] || die "bad --small-count '$SMALL_COUNT'"
# Creates go in 5 equal batches (creates/s at 5 tree sizes).
CREATE_BATCHES=5
[[ $CREATES =~ ^[1-9][0-9]*$ ]] && ((CREATES % CREATE_BATCHES == 0)) ||
    die "bad --creates '$CREATES' (a positive multiple of $CREATE_BATCHES)"
[[ $SYNC_COUNT =~ ^[1-9][0-9]*$ ]] || die "bad --sync-count '$SYNC_COUNT'"
GROUPS_ALL=(pull push mount fio rtt staging lazy tls model tree)
if [[ -n $ONLY ]]; then
    IFS=, read -ra only_list <<<"$ONLY"
    for g in "${only_list[@]}"; do
        [[ " ${GROUPS_ALL[*]} " == *" $g "* ]] || die "bad --only group '$g' (one of: ${GROUPS_ALL[*]})"
    done
fi
# want GROUP: the group is selected (all are, without --only).
want() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }
((BIG_B >= 4096 && HUGE_B >= 4096 && SMALL_B > 0)) || die "sizes too small"
if [[ -z $OUT ]]; then
    if [[ $MODE == smoke ]]; then
        OUT="${TMPDIR:-/tmp}/oras-fs-bench-smoke.md"
    elif [[ -n $ONLY ]]; then
        OUT="${TMPDIR:-/tmp}/oras-fs-bench-only.md"
    else
        OUT="$REPO/BENCHMARKS.md"
    fi
fi

# --- Tools --------------------------------------------------------------------------------
PY="${ORAS_FS_PYTHON:-$REPO/.venv/bin/python}"
for cmd in docker-registry curl python3 fusermount3 timeout; do
    command -v "$cmd" >/dev/null 2>&1 || die "$cmd not found (run scripts/setup.sh)"
done
"$PY" -c 'import oras.client' 2>/dev/null || die "$PY cannot import oras (run scripts/setup.sh)"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing: the mount workloads need FUSE"
HAVE_TIME=0
[[ -x /usr/bin/time ]] && HAVE_TIME=1
HAVE_FIO=0
command -v fio >/dev/null 2>&1 && HAVE_FIO=1

# A binary is stale when a source file is newer.
stale() {
    [[ ! -x $1 ]] && return 0
    [[ -n $(find src Cargo.toml Cargo.lock -newer "$1" -print -quit 2>/dev/null) ]]
}
if [[ -z $BIN ]]; then
    if ! stale target/release/oras-fs; then
        BIN=$REPO/target/release/oras-fs
    elif [[ $MODE == smoke && -x target/debug/oras-fs ]]; then
        # scripts/test.sh has just built the debug binary. The smoke run checks the harness
        # and must stay quick, so it never waits for a build when a binary exists.
        BIN=$REPO/target/debug/oras-fs
        if stale "$BIN"; then
            echo "bench.sh: note: $BIN is older than the sources (run cargo build)" >&2
        fi
    elif [[ $MODE == smoke ]]; then
        echo "bench.sh: building oras-fs (debug)" >&2
        cargo build --quiet --bin oras-fs >&2
        BIN=$REPO/target/debug/oras-fs
    else
        echo "bench.sh: building oras-fs (release)" >&2
        cargo build --quiet --release --bin oras-fs >&2
        BIN=$REPO/target/release/oras-fs
    fi
fi
# Absolute: the mount daemon re-executes itself by this path, and is found by it.
BIN=$(realpath -m "$BIN")
[[ -x $BIN ]] || die "no oras-fs binary at $BIN"

# --- Scratch space and cleanup ------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/oras-fs-bench.XXXXXX")
DATA=$WORK/data
mkdir -p "$DATA" "$WORK/xdg"
# The mount daemon logs under $XDG_CACHE_HOME/oras-fs/logs: keep it in the scratch dir.
export XDG_CACHE_HOME=$WORK/xdg
# Pulls measure the network, as every peer's do: not copies out of the blob cache that the
# previous run filled.
export ORAS_FS_NO_CACHE=1
SAMPLES=$WORK/samples.tsv
META=$WORK/meta.env
: >"$SAMPLES"
: >"$META"
REG_NAME="bench-$$-$RANDOM"
REG_STATE=""
REG_BASE=""
SHM_WORK=""
PROXY_PID=""
MOUNTS=()
TLS_NAME="" TLS_STATE="" TLS_PROXY_PIDS=()
DAEMONS=()

is_mounted() {
    local _src mnt _rest
    while read -r _src mnt _rest; do
        [[ $(printf '%b' "$mnt") == "$1" ]] && return 0
    done </proc/mounts
    return 1
}

# True if PID is alive and is an oras-fs process (never signal a recycled pid).
is_orasfs() {
    local argv=()
    [[ $1 =~ ^[0-9]+$ ]] || return 1
    mapfile -d '' argv 2>/dev/null <"/proc/$1/cmdline" || return 1
    ((${#argv[@]} > 0)) && [[ ${argv[0]##*/} == oras-fs || ${argv[0]} == "$BIN" ]]
}

# shellcheck disable=SC2329 # invoked via trap
cleanup() {
    local status=$? m p ok=1
    set +e
    for m in "${MOUNTS[@]}"; do
        if is_mounted "$m"; then
            fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
        fi
    done
    for p in "${DAEMONS[@]}"; do
        is_orasfs "$p" && kill -TERM "$p" 2>/dev/null
    done
    if [[ -n $PROXY_PID ]]; then
        kill -TERM "$PROXY_PID" 2>/dev/null
        wait "$PROXY_PID" 2>/dev/null
    fi
    "$REPO/scripts/registry.sh" stop --name "$REG_NAME" >/dev/null 2>&1
    for p in "${TLS_PROXY_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    if [[ -n $TLS_NAME ]]; then
        "$REPO/scripts/registry.sh" stop --name "$TLS_NAME" >/dev/null 2>&1
        [[ -n $TLS_STATE && ${TLS_STATE##*/} == "$TLS_NAME" && -d $TLS_STATE ]] && rm -rf "$TLS_STATE"
    fi
    # Only the state directory of the registry this script named (never anything else).
    [[ -n $REG_STATE && ${REG_STATE##*/} == "$REG_NAME" && -d $REG_STATE ]] && rm -rf "$REG_STATE"
    [[ -n $REG_BASE ]] && rmdir "$REG_BASE" 2>/dev/null
    # Never rm -rf through a mount that is still there.
    for m in "${MOUNTS[@]}"; do is_mounted "$m" && ok=0; done
    if ((ok)); then
        rm -rf "$WORK"
        [[ -n $SHM_WORK && $SHM_WORK == /dev/shm/oras-fs-bench-work.* ]] && rm -rf "$SHM_WORK"
    else
        echo "bench.sh: a mount under $WORK is still there; leaving $WORK" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
    echo "bench.sh: FAILED: $*" >&2
    local f
    for f in "$WORK/last.err" "$WORK/mount.log"; do
        if [[ -s $f ]]; then
            echo "--- tail of ${f##*/}:" >&2
            tail -n 20 "$f" >&2
        fi
    done
    local logs=("$XDG_CACHE_HOME"/oras-fs/logs/*.log)
    if [[ -e ${logs[0]} ]]; then
        echo "--- tail of the last mount daemon log:" >&2
        # shellcheck disable=SC2012 # our own log names: mount-PID.log
        tail -n 20 "$(ls -t "${logs[@]}" | head -n1)" >&2
    fi
    exit 1
}

# --- Measuring ----------------------------------------------------------------------------
now_us() { echo "${EPOCHREALTIME/./}"; }
secs() { printf '%d.%06d' $(($1 / 1000000)) $(($1 % 1000000)); }
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$SAMPLES"; }

REG_LOG=""
REG_PID=""
log_size() { stat -c %s "$REG_LOG"; }
# CPU time (user+sys) the registry has used so far, in clock ticks.
reg_ticks() {
    local st f
    st=$(<"/proc/$REG_PID/stat") || { echo 0; return; }
    st=${st##*) }
    read -ra f <<<"$st"
    echo $((f[11] + f[12]))
}
HZ=$(getconf CLK_TCK)
ticks_since() { awk -v a="$1" -v b="$(reg_ticks)" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz }'; }
# Bytes of response bodies the registry logged since log offset $1 (waits for the log to
# settle: the registry writes a line after the response is sent).
served_since() {
    local a b
    a=$(log_size)
    while sleep 0.02; b=$(log_size); [[ $a != "$b" ]]; do a=$b; done
    tail -c +"$(($1 + 1))" "$REG_LOG" | grep -o '"http.response.written":[0-9]*' |
        awk -F: '{ s += $2 } END { print s + 0 }'
}

maybe_drop_caches() {
    if ((DROP)); then
        sync
        echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    fi
}

# timed WORKLOAD TOOL RUN CMD...: runs CMD (output to $WORK/last.*), records wall time,
# user/sys CPU, peak RSS and the bytes the registry served.
timed() {
    local w=$1 t=$2 run=$3
    shift 3
    maybe_drop_caches
    local off rc=0 t0 t1 r0
    off=$(log_size)
    r0=$(reg_ticks)
    if ((HAVE_TIME)); then
        t0=$(now_us)
        /usr/bin/time -f '%e %U %S %M' -o "$WORK/rusage" timeout -k 5 "$CMD_TIMEOUT" "$@" \
            >"$WORK/last.out" 2>"$WORK/last.err" || rc=$?
        t1=$(now_us)
    else
        # No GNU time: sample the peak RSS (VmHWM) of the command (timeout's child).
        local pid c k v _u hwm=0
        t0=$(now_us)
        timeout -k 5 "$CMD_TIMEOUT" "$@" >"$WORK/last.out" 2>"$WORK/last.err" &
        pid=$!
        local st
        while st=$(<"/proc/$pid/stat") 2>/dev/null && st=${st##*) } && [[ ${st:0:1} != Z ]]; do
            local kids=()
            read -ra kids <"/proc/$pid/task/$pid/children" 2>/dev/null || true
            for c in "${kids[@]}"; do
                while read -r k v _u; do
                    if [[ $k == VmHWM: ]] && ((v > hwm)); then hwm=$v; fi
                done <"/proc/$c/status" 2>/dev/null || true
            done
            sleep 0.01
        done
        wait "$pid" || rc=$?
        t1=$(now_us)
        echo "0 - - $hwm" >"$WORK/rusage"
    fi
    ((rc == 0)) || fail "$w/$t run $run: '$*' exited with status $rc"
    record "$w" "$t" "$run" wall "$(secs $((t1 - t0)))"
    local _e u s m
    read -r _e u s m < <(tail -n1 "$WORK/rusage")
    [[ $u != - ]] && record "$w" "$t" "$run" user "$u"
    [[ $s != - ]] && record "$w" "$t" "$run" sys "$s"
    record "$w" "$t" "$run" rss "$m"
    record "$w" "$t" "$run" bytes "$(served_since "$off")"
    record "$w" "$t" "$run" reg_cpu "$(ticks_since "$r0")"
}

# Tools of a workload in an order that rotates with the run, so no tool always goes first.
rotate() {
    local run=$1
    shift
    local n=$# i
    local a=("$@")
    for ((i = 0; i < n; i++)); do echo "${a[(i + run) % n]}"; done
}

same_file() { cmp -s "$1" "$2" || fail "$3: $2 differs from $1"; }
same_dir() { diff -rq "$1" "$2" >/dev/null || fail "$3: $2 differs from $1"; }

# Layers of a manifest in the registry, as "digest title" lines.
layers_of() {
    curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://$REG/v2/$1/manifests/$2" |
        python3 -c 'import json,sys
for l in json.load(sys.stdin)["layers"]:
    print(l["digest"], (l.get("annotations") or {}).get("org.opencontainers.image.title", ""))'
}
expect_layers() {
    local layers n
    layers=$(layers_of "$1" "$2") || fail "$3: no manifest $1:$2"
    n=$(grep -c . <<<"$layers")
    ((n == $4)) || fail "$3: $1:$2 has $n layers, expected $4"
}

# --- Mount helpers ------------------------------------------------------------------------
daemon_pid() {
    local d argv=() a has_mount has_mnt
    for d in /proc/[0-9]*; do
        mapfile -d '' argv 2>/dev/null <"$d/cmdline" || continue
        ((${#argv[@]} > 2)) || continue
        [[ ${argv[0]##*/} == oras-fs ]] || continue
        has_mount=0 has_mnt=0
        for a in "${argv[@]}"; do
            [[ $a == mount ]] && has_mount=1
            [[ $a == "$1" ]] && has_mnt=1
        done
        if ((has_mount && has_mnt)); then
            echo "${d#/proc/}"
            return 0
        fi
    done
    return 1
}

MOUNT_PID=""
# do_mount REF CACHE MNT [ARGS...]: mounts in the background (as users do) and finds the
# daemon's pid, for its RSS and CPU time.
do_mount() {
    local ref=$1 cache=$2 mnt=$3
    shift 3
    MOUNTS+=("$mnt")
    timeout -k 5 "$CMD_TIMEOUT" "$BIN" mount --cache-dir "$cache" "$@" "$ref" "$mnt" \
        >>"$WORK/mount.log" 2>&1 || fail "mounting $ref on $mnt"
    MOUNT_PID=$(daemon_pid "$mnt") || fail "no mount daemon found for $mnt"
    DAEMONS+=("$MOUNT_PID")
}

do_unmount() {
    local mnt=$1 pid=$2 i
    timeout -k 5 "$CMD_TIMEOUT" "$BIN" unmount "$mnt" >>"$WORK/mount.log" 2>&1 ||
        fail "unmounting $mnt"
    for ((i = 0; i < 400; i++)); do
        is_orasfs "$pid" || break
        sleep 0.05
    done
    is_orasfs "$pid" && fail "mount daemon $pid still running after unmount of $mnt"
    is_mounted "$mnt" && fail "$mnt still mounted after unmount"
    return 0
}

# Daemon CPU time (user+sys, seconds) so far.
cpu_of() {
    local stat f
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    read -ra f <<<"$stat"
    # After the comm field: state is f[0]; utime, stime are fields 14, 15 of the line.
    awk -v u="${f[11]}" -v s="${f[12]}" -v hz="$HZ" 'BEGIN { printf "%.2f", (u + s) / hz }'
}

hwm_of() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

fresh_dirs() {
    CACHE=$(mktemp -d "$WORK/cache.XXXXXX")
    MNT=$(mktemp -d "$WORK/mnt.XXXXXX")
}

# --- Machine and versions -----------------------------------------------------------------
meta() { printf '%s=%s\n' "$1" "$2" >>"$META"; }
meta MODE "$MODE"
meta DATE "$(date -u '+%Y-%m-%d %H:%M UTC')"
meta NPROC "$(nproc)"
meta MEM "$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
meta KERNEL "$(uname -sr)"
meta CPU "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
meta SHA_EXT "$(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)"
meta LOAD_BEFORE "$(cut -d' ' -f1-3 /proc/loadavg)"
meta BIN "${BIN#"$REPO"/}"
meta GIT "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes in src/')"
meta V_ORASFS "$("$BIN" --version 2>/dev/null | head -n1)"
meta V_PYORAS "$("$PY" -c 'import oras.version; print(oras.version.__version__)')"
meta V_PYTHON "$("$PY" -c 'import platform; print(platform.python_version())')"
meta V_CURL "$(curl --version | head -n1 | cut -d' ' -f1-2)"
meta V_REGISTRY "$(docker-registry --version 2>/dev/null | head -n1)"
meta V_FIO "$(if ((HAVE_FIO)); then fio --version; else echo 'not installed: fio rows skipped'; fi)"
meta RUNS "$RUNS"
meta BIG "$BIG_B"
meta HUGE "$HUGE_B"
meta SMALL_COUNT "$SMALL_COUNT"
meta SMALL_SIZE "$SMALL_B"
meta FIO_RUNTIME "$FIO_RUNTIME"
meta FIO_RTT_RUNTIME "$FIO_RTT_RUNTIME"
meta CREATES "$CREATES"
meta CREATE_BATCHES "$CREATE_BATCHES"
meta SYNC_COUNT "$SYNC_COUNT"
meta SYNC_SIZE 4096
meta ONLY "$ONLY"
meta LAZY_SIZE "$LAZY_B"
meta LAZY_FILES "$LAZY_FILES"
meta TREE_COUNT "$TREE_COUNT"
meta TREE_SIZE "$TREE_B"
meta MEMORY_CACHE $((64 << 20)) # oras-fs mount's default --memory-cache
if ((HAVE_TIME)); then
    # shellcheck disable=SC2016 # Markdown backticks
    meta RUSAGE '`/usr/bin/time -f "%e %U %S %M"`'
else
    meta RUSAGE 'sampling /proc/PID/status VmHWM every 10 ms (no /usr/bin/time: no CPU times)'
fi
if ((DROP)); then
    meta CACHE_NOTE "dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed command, so the registry and the uploading tools read from disk."
elif [[ -w /proc/sys/vm/drop_caches ]]; then
    meta CACHE_NOTE "not dropped (dropping works here as root, but the machine is shared and the targets are about network and CPU; --drop-caches does it): source files and registry blobs are in the page cache for every tool alike, so no workload waits for the disk. Cold means a fresh --cache-dir and a fresh mount."
else
    meta CACHE_NOTE "not dropped (not permitted here): source files and registry blobs are in the page cache for every tool alike. Cold means a fresh --cache-dir and a fresh mount."
fi
py_import=()
for _ in 1 2 3; do
    t0=$(now_us)
    "$PY" -c 'import oras.client'
    py_import+=($(($(now_us) - t0)))
done
meta PY_IMPORT "$(printf '%s\n' "${py_import[@]}" | sort -n | sed -n 2p | awk '{ printf "%.0f ms", $1 / 1000 }')"

# --- Registry, proxy, data ----------------------------------------------------------------
# The big, huge and small files serve every group but staging.
NEED_FILES=0
for g in pull push mount fio rtt; do want "$g" && NEED_FILES=1; done
# The TLS group has RTT rows of its own (unless --no-rtt).
TLS_RTT=$RTT
# The fio, model and tree groups have rows at the RTT too.
want rtt || want fio || want model || want tree || RTT=0
say "$MODE run${ONLY:+ (only $ONLY)}, $RUNS run(s); big $BIG_B B, huge $HUGE_B B, $SMALL_COUNT x $SMALL_B B; $CREATES creates, $SYNC_COUNT x 4 KiB synced; binary $BIN"
# Distribution fsyncs every blob and link file it writes: on a disk that sets the pace of
# small-file pushes for every tool alike and hides the clients' differences, which are what
# is measured here. So the registry's storage is in memory when there is room.
need=$((2 * (BIG_B + HUGE_B) + 256 * 1024 * 1024))
# The lazy rows store the directory as a seekable layer and twice as a plain tar.gz, and an image.
want lazy && need=$((need + 4 * LAZY_B + 2 * (IMG_LIB_B + IMG_BIN_B)))
want model && need=$((need + MODEL_B))
want tree && need=$((need + TREE_COUNT * TREE_B))
if ((!REG_ON_DISK)) && [[ -d /dev/shm && -w /dev/shm ]] &&
    (($(df -B1 --output=avail /dev/shm | tail -n1) > need)); then
    REG_BASE=/dev/shm/oras-fs-bench-$$
    export ORAS_FS_REGISTRY_STATE=$REG_BASE
    meta REG_STORAGE "tmpfs (/dev/shm): Distribution fsyncs every blob and link file it writes, and on this VM's disk that, not the clients, set the pace of small-file pushes (2-3x slower for every tool; --registry-on-disk keeps it on disk)"
else
    meta REG_STORAGE "disk (${ORAS_FS_REGISTRY_STATE:-/tmp/oras-fs-registry}): every blob and link file the registry writes is fsynced"
fi
# The mount-shm rows of the staging workload keep their --cache-dir in memory.
if want staging && [[ -d /dev/shm && -w /dev/shm ]]; then
    SHM_WORK=$(mktemp -d /dev/shm/oras-fs-bench-work.XXXXXX)
fi
reg_env=$("$REPO/scripts/registry.sh" start --name "$REG_NAME" 2>"$WORK/registry-start.err") ||
    { cat "$WORK/registry-start.err" >&2; die "could not start the registry"; }
eval "$reg_env"
REG=$ORAS_FS_TEST_REGISTRY
REG_LOG=$ORAS_FS_TEST_REGISTRY_LOG
REG_PID=$ORAS_FS_TEST_REGISTRY_PID
REG_STATE=$(dirname "$ORAS_FS_TEST_REGISTRY_DIR")

PROXY=""
if ((RTT)); then
    python3 "$REPO/scripts/latency_proxy.py" --listen 127.0.0.1:0 --target "$REG" \
        --delay-ms "$DELAY_MS" >"$WORK/proxy.port" 2>"$WORK/proxy.err" &
    PROXY_PID=$!
    for _ in $(seq 100); do
        [[ -s $WORK/proxy.port ]] && break
        kill -0 "$PROXY_PID" 2>/dev/null || break
        sleep 0.05
    done
    port=$(head -n1 "$WORK/proxy.port")
    [[ $port =~ ^[0-9]+$ ]] || { cat "$WORK/proxy.err" >&2; die "latency proxy did not start"; }
    PROXY=127.0.0.1:$port
    meta RTT_MS $((2 * DELAY_MS))
    meta RTT_NOTE "RTT rows: clients talk to scripts/latency_proxy.py, which holds every chunk $DELAY_MS ms in each direction (a $((2 * DELAY_MS)) ms round trip, and a new connection's first bytes wait for an emulated TCP handshake) without serializing transfers."
else
    meta RTT_NOTE "No RTT rows (--no-rtt or --only)."
fi

say "generating test data"
echo seed >"$DATA/seed.txt"
# split -d -a DIGITS: f000, f001, ... (at least 3 digits).
split_into() {
    local dir=$1 count=$2 size=$3 digits
    mkdir -p "$dir"
    digits=$(((${#count} > 3) ? ${#count} : 3))
    head -c $((count * size)) /dev/urandom | (cd "$dir" && split -b "$size" -d -a "$digits" - f)
}
orasfs() { "$BIN" "$@" --no-tty; }
seed() { (cd "$1" && shift && orasfs push "$@" >/dev/null 2>>"$WORK/seed.log"); }
if ((NEED_FILES)); then
    head -c "$BIG_B" /dev/urandom >"$DATA/big"
    head -c "$HUGE_B" /dev/urandom >"$DATA/huge"
    split_into "$DATA/small" "$SMALL_COUNT" "$SMALL_B"
    mapfile -t SMALL_FILES < <(cd "$DATA/small" && ls)
    ((${#SMALL_FILES[@]} == SMALL_COUNT)) || die "made ${#SMALL_FILES[@]} small files, wanted $SMALL_COUNT"

    say "seeding the registry"
    seed "$DATA" "$REG/bench/big:v1" big || die "seeding big: $(tail -n3 "$WORK/seed.log")"
    seed "$DATA" "$REG/bench/huge:v1" huge || die "seeding huge: $(tail -n3 "$WORK/seed.log")"
    seed "$DATA/small" "$REG/bench/small:v1" "${SMALL_FILES[@]}" ||
        die "seeding small: $(tail -n3 "$WORK/seed.log")"
    BIG_DIGEST=$(layers_of bench/big v1 | awk '{ print $1 }')
    [[ $BIG_DIGEST == sha256:* ]] || die "no digest for bench/big"
fi
if want model; then
    say "model: a safetensors-layout file of about $MODEL_B B"
    mkdir -p "$DATA/model"
    python3 "$REPO/scripts/model.py" make "$DATA/model/model.safetensors" --size "$MODEL_B" ||
        die "model: making the file"
    seed "$DATA/model" "$REG/bench/model:v1" model.safetensors ||
        die "seeding model: $(tail -n3 "$WORK/seed.log")"
    meta MODEL_FILE "$(stat -c %s "$DATA/model/model.safetensors")"
fi
TREE_NEEDLE=oras-fs-tree-needle
if want tree; then
    say "tree: $TREE_COUNT files of $TREE_B B in one directory, one layer each"
    ((TREE_B > ${#TREE_NEEDLE})) || die "--tree-size must be more than ${#TREE_NEEDLE} bytes"
    # Text (base64 lines), so grep reads every file whole; every 50th file starts with the
    # needle line grep looks for (base64 has no '-', so it is found nowhere else).
    TREE_NEEDLES=$(python3 - "$DATA/tree/dir" "$TREE_COUNT" "$TREE_B" "$TREE_NEEDLE" <<'PY'
import base64, os, sys
d, count, size, needle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.makedirs(d)
digits = max(4, len(str(count - 1)))
n = 0
for i in range(count):
    data = base64.encodebytes(os.urandom(size))[:size]
    if i % 50 == 0:
        data = (needle + "\n").encode() + data[len(needle) + 1:]
        n += 1
    with open(os.path.join(d, f"f{i:0{digits}}"), "wb") as f:
        f.write(data)
print(n)
PY
    ) || die "tree: generating the files"
    mapfile -t TREE_FILES < <(cd "$DATA/tree" && find dir -type f | sort)
    ((${#TREE_FILES[@]} == TREE_COUNT)) || die "tree: made ${#TREE_FILES[@]} files, wanted $TREE_COUNT"
    seed "$DATA/tree" "$REG/bench/tree:v1" "${TREE_FILES[@]}" ||
        die "seeding tree: $(tail -n3 "$WORK/seed.log")"
    meta TREE_MANIFEST "$(curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://$REG/v2/bench/tree/manifests/v1" | wc -c)"
fi
if want staging; then
    split_into "$DATA/sync4k" "$SYNC_COUNT" 4096
    mapfile -t SYNC_FILES < <(cd "$DATA/sync4k" && ls)
    ((${#SYNC_FILES[@]} == SYNC_COUNT)) || die "made ${#SYNC_FILES[@]} 4 KiB files, wanted $SYNC_COUNT"
fi

# curl's upload: POST for a session, then one streaming PUT with the digest (no
# Expect: 100-continue round trip, as the raw HTTP limit).
cat >"$WORK/curl_push.sh" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
base=$1 repo=$2 file=$3 digest=$4
loc=$(curl -sSf -X POST -D - -o /dev/null "$base/v2/$repo/blobs/uploads/" |
    tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }')
[[ -n $loc ]] || { echo "no Location" >&2; exit 1; }
[[ $loc == http* ]] || loc="$base$loc"
if [[ $loc == *\?* ]]; then url="$loc&digest=$digest"; else url="$loc?digest=$digest"; fi
code=$(curl -sS -X PUT -H 'Content-Type: application/octet-stream' -H 'Expect:' \
    --upload-file "$file" -o /dev/null -w '%{http_code}' "$url")
[[ $code == 201 ]] || { echo "PUT answered $code" >&2; exit 1; }
EOF

OUTD=$WORK/out
fresh_out() {
    rm -rf "$OUTD"
    mkdir -p "$OUTD"
}

# --- Workloads ----------------------------------------------------------------------------
wl_pull_big() {
    local run=$1 t
    for t in $(rotate "$run" oras-fs curl python sha256); do
        fresh_out
        case $t in
        oras-fs) timed pull_big "$t" "$run" "$BIN" pull --no-tty "$REG/bench/big:v1" -o "$OUTD" ;;
        curl) timed pull_big "$t" "$run" curl -sSf -o "$OUTD/big" "http://$REG/v2/bench/big/blobs/$BIG_DIGEST" ;;
        python) timed pull_big "$t" "$run" "$PY" "$REPO/benches/oras_py.py" pull "$REG" "$REG/bench/big:v1" "$OUTD" ;;
        # Hashing the file alone (OpenSSL's assembly): what verifying a download costs here.
        sha256) timed pull_big "$t" "$run" openssl dgst -sha256 "$DATA/big" ;;
        esac
        [[ $t == sha256 ]] || same_file "$DATA/big" "$OUTD/big" "pull_big/$t"
    done
    rm -rf "$OUTD"
}

wl_pull_huge() {
    local run=$1
    fresh_out
    timed pull_huge oras-fs "$run" "$BIN" pull --no-tty "$REG/bench/huge:v1" -o "$OUTD"
    same_file "$DATA/huge" "$OUTD/huge" pull_huge
    rm -rf "$OUTD"
}

# wl_pull_small RUN ENDPOINT SUFFIX
wl_pull_small() {
    local run=$1 ep=$2 sfx=$3 t
    for t in $(rotate "$run" oras-fs python); do
        fresh_out
        case $t in
        oras-fs) timed "pull_small$sfx" "$t" "$run" "$BIN" pull --no-tty "$ep/bench/small:v1" -o "$OUTD" ;;
        python) timed "pull_small$sfx" "$t" "$run" "$PY" "$REPO/benches/oras_py.py" pull "$ep" "$ep/bench/small:v1" "$OUTD" ;;
        esac
        same_dir "$DATA/small" "$OUTD" "pull_small$sfx/$t"
    done
    rm -rf "$OUTD"
}

wl_push_small() {
    local run=$1 ep=$2 sfx=$3 t repo
    for t in $(rotate "$run" oras-fs python); do
        # A new repository each time: blob existence checks are per repository, so every
        # tool uploads everything.
        repo="bench/push-small-$t-$run${sfx:+-rtt}"
        case $t in
        oras-fs) timed "push_small$sfx" "$t" "$run" env -C "$DATA/small" "$BIN" push --no-tty "$ep/$repo:v1" "${SMALL_FILES[@]}" ;;
        python) timed "push_small$sfx" "$t" "$run" "$PY" "$REPO/benches/oras_py.py" push "$ep" "$ep/$repo:v1" "$DATA/small" "${SMALL_FILES[@]}" ;;
        esac
        expect_layers "$repo" v1 "push_small$sfx/$t" "$SMALL_COUNT"
    done
}

wl_push_big() {
    local run=$1 t repo
    for t in $(rotate "$run" oras-fs curl python); do
        repo="bench/push-big-$t-$run"
        case $t in
        oras-fs)
            timed push_big "$t" "$run" env -C "$DATA" "$BIN" push --no-tty "$REG/$repo:v1" big
            expect_layers "$repo" v1 push_big/oras-fs 1
            ;;
        curl)
            timed push_big "$t" "$run" bash "$WORK/curl_push.sh" "http://$REG" "$repo" "$DATA/big" "$BIG_DIGEST"
            curl -sSf -I -o /dev/null "http://$REG/v2/$repo/blobs/$BIG_DIGEST" ||
                fail "push_big/curl: blob not in $repo"
            ;;
        python)
            timed push_big "$t" "$run" "$PY" "$REPO/benches/oras_py.py" push "$REG" "$REG/$repo:v1" "$DATA" big
            expect_layers "$repo" v1 push_big/python 1
            ;;
        esac
    done
}

# Mount, read 4 KiB at a random offset, unmount. Wall = mount + read (the bytes in hand).
wl_mount_rand4k() {
    local run=$1 ep=$2 sfx=$3 off t0 t1 t2 blk
    local w="mount_rand4k$sfx"
    blk=$(((RANDOM * 32768 + RANDOM) % (HUGE_B / 4096)))
    fresh_dirs
    maybe_drop_caches
    off=$(log_size)
    t0=$(now_us)
    do_mount "$ep/bench/huge:v1" "$CACHE" "$MNT" --read-only
    t1=$(now_us)
    timeout -k 5 "$CMD_TIMEOUT" dd if="$MNT/huge" of="$WORK/4k" bs=4096 skip="$blk" count=1 status=none ||
        fail "$w: dd from the mount"
    t2=$(now_us)
    do_unmount "$MNT" "$MOUNT_PID"
    record "$w" mount "$run" wall "$(secs $((t2 - t0)))"
    record "$w" mount "$run" read "$(secs $((t2 - t1)))"
    record "$w" mount "$run" bytes "$(served_since "$off")"
    dd if="$DATA/huge" bs=4096 skip="$blk" count=1 status=none | cmp -s - "$WORK/4k" ||
        fail "$w: wrong bytes at block $blk"
    rm -rf "$CACHE" "$MNT"
}

# Time to first byte of a fresh mount (and the mount itself).
wl_mount_ttfb() {
    local run=$1 ep=$2 sfx=$3 t0 t1 t2 off
    local w="mount_ttfb$sfx"
    fresh_dirs
    maybe_drop_caches
    off=$(log_size)
    t0=$(now_us)
    do_mount "$ep/bench/big:v1" "$CACHE" "$MNT" --read-only
    t1=$(now_us)
    timeout -k 5 "$CMD_TIMEOUT" head -c 1 "$MNT/big" >"$WORK/1b" || fail "$w: head from the mount"
    t2=$(now_us)
    do_unmount "$MNT" "$MOUNT_PID"
    record "$w" mount "$run" wall "$(secs $((t2 - t1)))"
    record "$w" mount "$run" mount "$(secs $((t1 - t0)))"
    record "$w" mount "$run" bytes "$(served_since "$off")"
    head -c 1 "$DATA/big" | cmp -s - "$WORK/1b" || fail "$w: wrong first byte"
    rm -rf "$CACHE" "$MNT"
}

# cat of the big file: cold (fresh cache and mount), again in the same mount, and after a
# remount on the same (now warm) cache directory.
wl_mount_cat() {
    local run=$1 t0 t1 off c0 r0
    fresh_dirs
    do_mount "$REG/bench/big:v1" "$CACHE" "$MNT" --read-only
    maybe_drop_caches
    off=$(log_size)
    r0=$(reg_ticks)
    c0=$(cpu_of "$MOUNT_PID")
    t0=$(now_us)
    timeout -k 5 "$CMD_TIMEOUT" cat "$MNT/big" >/dev/null || fail "mount_cat_cold: cat"
    t1=$(now_us)
    record mount_cat_cold mount "$run" wall "$(secs $((t1 - t0)))"
    record mount_cat_cold mount "$run" bytes "$(served_since "$off")"
    record mount_cat_cold mount "$run" reg_cpu "$(ticks_since "$r0")"
    record mount_cat_cold mount "$run" cpu "$(awk -v a="$c0" -v b="$(cpu_of "$MOUNT_PID")" 'BEGIN { print b - a }')"
    t0=$(now_us)
    timeout -k 5 "$CMD_TIMEOUT" cat "$MNT/big" >/dev/null || fail "mount_cat_warm: cat"
    t1=$(now_us)
    record mount_cat_warm mount "$run" wall "$(secs $((t1 - t0)))"
    same_file "$DATA/big" "$MNT/big" mount_cat
    do_unmount "$MNT" "$MOUNT_PID"

    do_mount "$REG/bench/big:v1" "$CACHE" "$MNT" --read-only
    off=$(log_size)
    t0=$(now_us)
    timeout -k 5 "$CMD_TIMEOUT" cat "$MNT/big" >/dev/null || fail "mount_cat_remount: cat"
    t1=$(now_us)
    record mount_cat_remount mount "$run" wall "$(secs $((t1 - t0)))"
    record mount_cat_remount mount "$run" bytes "$(served_since "$off")"
    do_unmount "$MNT" "$MOUNT_PID"
    rm -rf "$CACHE" "$MNT"
}

# Peak RSS of the mount daemon while the huge file is read through it.
wl_mount_rss() {
    local run=$1 t0 t1 hwm
    fresh_dirs
    do_mount "$REG/bench/huge:v1" "$CACHE" "$MNT" --read-only
    t0=$(now_us)
    timeout -k 5 "$CMD_TIMEOUT" cat "$MNT/huge" >/dev/null || fail "mount_rss_huge: cat"
    t1=$(now_us)
    hwm=$(hwm_of "$MOUNT_PID")
    do_unmount "$MNT" "$MOUNT_PID"
    record mount_rss_huge mount "$run" wall "$(secs $((t1 - t0)))"
    record mount_rss_huge mount "$run" rss "$hwm"
    rm -rf "$CACHE" "$MNT"
}

# cp the big file into a writable mount of a fresh tag, then `oras-fs sync`.
wl_mount_cp_sync() {
    local run=$1
    local repo="bench/rw-$run" t0 t1 t2 r0 c0
    seed "$DATA" "$REG/$repo:v1" seed.txt || fail "seeding $repo"
    fresh_dirs
    do_mount "$REG/$repo:v1" "$CACHE" "$MNT"
    maybe_drop_caches
    r0=$(reg_ticks)
    c0=$(cpu_of "$MOUNT_PID")
    t0=$(now_us)
    timeout -k 5 "$CMD_TIMEOUT" cp "$DATA/big" "$MNT/big" || fail "mount_cp_sync: cp"
    t1=$(now_us)
    timeout -k 5 "$CMD_TIMEOUT" "$BIN" sync "$MNT" >>"$WORK/mount.log" 2>&1 || fail "mount_cp_sync: sync"
    t2=$(now_us)
    record mount_cp_sync mount "$run" cpu "$(awk -v a="$c0" -v b="$(cpu_of "$MOUNT_PID")" 'BEGIN { print b - a }')"
    record mount_cp_sync mount "$run" reg_cpu "$(ticks_since "$r0")"
    do_unmount "$MNT" "$MOUNT_PID"
    record mount_cp_sync mount "$run" wall "$(secs $((t2 - t0)))"
    record mount_cp_sync mount "$run" cp "$(secs $((t1 - t0)))"
    record mount_cp_sync mount "$run" sync "$(secs $((t2 - t1)))"
    local layers
    layers=$(layers_of "$repo" v1) || fail "mount_cp_sync: no manifest $repo:v1"
    [[ $'\n'$layers$'\n' == *$'\n'"$BIG_DIGEST big"$'\n'* ]] || fail "mount_cp_sync: $repo:v1 lacks big"
    rm -rf "$CACHE" "$MNT"
}

# Bytes of the staging journal of the (only) mount on cache directory $1.
journal_bytes() {
    local f n=0
    for f in "$1"/staging/*/journal.log; do
        [[ -f $f ]] && n=$((n + $(stat -c %s "$f")))
    done
    echo "$n"
}

# CREATES empty files made in one new directory of a writable mount of a fresh tag, with one
# `touch` of CREATES/CREATE_BATCHES new names per batch: creates/s as the tree grows (the
# journal is an append-only log, so a create should cost the same at any tree size). Then
# `rm -rf` of the directory. Three tools, batch by batch in a rotating order:
#   mount      the mount, its --cache-dir (staged files and journal) on $WORK's filesystem
#   mount-shm  the same with the --cache-dir in /dev/shm (the mount's own cost, without disk)
#   plain      the same touch and rm -rf in a plain directory on $WORK's filesystem: every
#              create in the mount creates a staged file there, so this bounds it
# The wall of mount_creates is the sum of the batches.
wl_mount_creates() {
    local run=$1 per=$((CREATES / CREATE_BATCHES)) b i t t0 t1 n dir repo names
    local -A mnt=() pid=() cache=() c0=() total=()
    local tools=(mount plain)
    [[ -n $SHM_WORK ]] && tools=(mount mount-shm plain)
    for t in "${tools[@]}"; do
        total[$t]=0
        if [[ $t == plain ]]; then
            dir=$(mktemp -d "$WORK/plain.XXXXXX")
            mkdir "$dir/many"
            mnt[$t]=$dir
            continue
        fi
        repo="bench/creates-$t-$run"
        seed "$DATA" "$REG/$repo:v1" seed.txt || fail "seeding $repo"
        fresh_dirs
        if [[ $t == mount-shm ]]; then
            rmdir "$CACHE"
            CACHE=$(mktemp -d "$SHM_WORK/cache.XXXXXX")
        fi
        do_mount "$REG/$repo:v1" "$CACHE" "$MNT"
        mnt[$t]=$MNT cache[$t]=$CACHE pid[$t]=$MOUNT_PID
        mkdir "$MNT/many" || fail "mount_creates/$t: mkdir in the mount"
        c0[$t]=$(cpu_of "$MOUNT_PID")
    done
    for ((b = 1; b <= CREATE_BATCHES; b++)); do
        names=()
        for ((i = (b - 1) * per; i < b * per; i++)); do names+=("f$i"); done
        for t in $(rotate $((run + b)) "${tools[@]}"); do
            t0=$(now_us)
            timeout -k 5 "$CMD_TIMEOUT" env -C "${mnt[$t]}/many" touch -- "${names[@]}" \
                >"$WORK/last.out" 2>"$WORK/last.err" || fail "mount_creates/$t: touch of batch $b"
            t1=$(now_us)
            record mount_creates "$t" "$run" "batch$b" "$(secs $((t1 - t0)))"
            total[$t]=$((total[$t] + t1 - t0))
        done
    done
    for t in "${tools[@]}"; do
        record mount_creates "$t" "$run" wall "$(secs "${total[$t]}")"
        if [[ $t != plain ]]; then
            record mount_creates "$t" "$run" cpu "$(awk -v a="${c0[$t]}" -v b="$(cpu_of "${pid[$t]}")" 'BEGIN { print b - a }')"
            record mount_creates "$t" "$run" journal "$(journal_bytes "${cache[$t]}")"
        fi
        n=$(find "${mnt[$t]}/many" -mindepth 1 -maxdepth 1 -type f -size 0 | wc -l)
        ((n == CREATES)) || fail "mount_creates/$t: $n files in the directory, expected $CREATES"
    done

    for t in $(rotate "$run" "${tools[@]}"); do
        [[ $t != plain ]] && c0[$t]=$(cpu_of "${pid[$t]}")
        t0=$(now_us)
        timeout -k 5 "$CMD_TIMEOUT" rm -rf "${mnt[$t]}/many" || fail "mount_rm/$t: rm -rf"
        t1=$(now_us)
        [[ -e ${mnt[$t]}/many ]] && fail "mount_rm/$t: ${mnt[$t]}/many is still there"
        record mount_rm "$t" "$run" wall "$(secs $((t1 - t0)))"
        if [[ $t != plain ]]; then
            record mount_rm "$t" "$run" cpu "$(awk -v a="${c0[$t]}" -v b="$(cpu_of "${pid[$t]}")" 'BEGIN { print b - a }')"
            record mount_rm "$t" "$run" journal "$(journal_bytes "${cache[$t]}")"
        fi
    done
    for t in "${tools[@]}"; do
        if [[ $t == plain ]]; then
            rm -rf "${mnt[$t]}"
            continue
        fi
        t0=$(now_us)
        do_unmount "${mnt[$t]}" "${pid[$t]}"
        t1=$(now_us)
        record mount_rm "$t" "$run" unmount "$(secs $((t1 - t0)))"
        # Nothing is left to push: the tag still holds seed.txt alone.
        expect_layers "bench/creates-$t-$run" v1 "mount_rm/$t" 1
        rm -rf "${cache[$t]}" "${mnt[$t]}"
    done
}

# SYNC_COUNT new 4 KiB files: `cp` into a writable mount of a fresh tag, then `oras-fs sync`
# (timed), against `oras-fs push` of the same files to a fresh repository, in rotating order.
wl_sync_small() {
    local run=$1 t repo t0 t1 t2 c0 r0
    for t in $(rotate "$run" mount oras-fs); do
        case $t in
        oras-fs)
            repo="bench/push-4k-$run"
            # push writes a progress line per file to stderr without a TTY: timed keeps it in
            # $WORK/last.err.
            timed push_4k oras-fs "$run" env -C "$DATA/sync4k" "$BIN" push --no-tty \
                "$REG/$repo:v1" "${SYNC_FILES[@]}"
            expect_layers "$repo" v1 push_4k "$SYNC_COUNT"
            ;;
        mount)
            repo="bench/sync-4k-$run"
            seed "$DATA" "$REG/$repo:v1" seed.txt || fail "seeding $repo"
            fresh_dirs
            do_mount "$REG/$repo:v1" "$CACHE" "$MNT"
            t0=$(now_us)
            timeout -k 5 "$CMD_TIMEOUT" env -C "$DATA/sync4k" cp -t "$MNT" -- "${SYNC_FILES[@]}" ||
                fail "mount_sync_4k: cp into the mount"
            t1=$(now_us)
            record mount_sync_4k mount "$run" cp "$(secs $((t1 - t0)))"
            maybe_drop_caches
            r0=$(reg_ticks)
            c0=$(cpu_of "$MOUNT_PID")
            t1=$(now_us)
            timeout -k 5 "$CMD_TIMEOUT" "$BIN" sync "$MNT" >>"$WORK/mount.log" 2>&1 ||
                fail "mount_sync_4k: sync"
            t2=$(now_us)
            record mount_sync_4k mount "$run" cpu "$(awk -v a="$c0" -v b="$(cpu_of "$MOUNT_PID")" 'BEGIN { print b - a }')"
            record mount_sync_4k mount "$run" reg_cpu "$(ticks_since "$r0")"
            record mount_sync_4k mount "$run" wall "$(secs $((t2 - t1)))"
            do_unmount "$MNT" "$MOUNT_PID"
            expect_layers "$repo" v1 mount_sync_4k $((SYNC_COUNT + 1))
            rm -rf "$CACHE" "$MNT"
            ;;
        esac
    done
}

fio_json() {
    python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]["read"]
pct = j.get("clat_ns", {}).get("percentile", {})
print(j["bw_bytes"], j["iops"], pct.get("50.000000", 0) / 1000, pct.get("99.000000", 0) / 1000, j["io_bytes"])' "$1"
}

wl_fio_seq() {
    local run=$1 off bw iops p50 p99 io
    fresh_dirs
    do_mount "$REG/bench/big:v1" "$CACHE" "$MNT" --read-only
    maybe_drop_caches
    off=$(log_size)
    timeout -k 5 "$CMD_TIMEOUT" fio --name=seq --filename="$MNT/big" --rw=read --bs=1M \
        --size="$BIG_B" --readonly --ioengine=psync --output-format=json \
        --output="$WORK/fio.json" >"$WORK/last.out" 2>"$WORK/last.err" || fail "fio seq on the mount"
    read -r bw iops p50 p99 io < <(fio_json "$WORK/fio.json")
    record fio_seq mount "$run" bw "$bw"
    record fio_seq mount "$run" bytes "$(served_since "$off")"
    do_unmount "$MNT" "$MOUNT_PID"
    ((io == BIG_B)) || fail "fio seq read $io bytes, expected $BIG_B"
    rm -rf "$CACHE" "$MNT"
}

# wl_fio_rand RUN ENDPOINT SUFFIX SECONDS [FIO_ARGS...]
wl_fio_rand() {
    local run=$1 ep=$2 sfx=$3 secs=$4 off bw iops p50 p99 io
    local w="fio_rand$sfx"
    shift 4
    fresh_dirs
    do_mount "$ep/bench/huge:v1" "$CACHE" "$MNT" --read-only
    maybe_drop_caches
    off=$(log_size)
    timeout -k 5 "$CMD_TIMEOUT" fio --name=rand --filename="$MNT/huge" --rw=randread --bs=4k \
        --size="$HUGE_B" --readonly --ioengine=psync --norandommap --randseed="$run" \
        --runtime="$secs" --time_based --output-format=json "$@" \
        --output="$WORK/fio.json" >"$WORK/last.out" 2>"$WORK/last.err" || fail "$w on the mount"
    read -r bw iops p50 p99 io < <(fio_json "$WORK/fio.json")
    record "$w" mount "$run" iops "$iops"
    record "$w" mount "$run" p50_us "$p50"
    record "$w" mount "$run" p99_us "$p99"
    record "$w" mount "$run" read_bytes "$io"
    record "$w" mount "$run" bytes "$(served_since "$off")"
    do_unmount "$MNT" "$MOUNT_PID"
    ((io > 0)) || fail "$w read nothing"
    rm -rf "$CACHE" "$MNT"
}

# --- Tree walks (issue #16): a directory of small files, one layer each -------------------
# Registry requests (responses logged) since log offset $1.
requests_since() {
    served_since "$1" >/dev/null # waits for the log to settle
    tail -c +"$(($1 + 1))" "$REG_LOG" | grep -c '"msg":"response completed"'
}
# The walks, in the orders their tools read: `cat DIR/*` in the glob's order (LC_ALL=C: byte
# order, as readdir's), `grep -r` in readdir order, `cp -r` in inode order (GNU cp sorts a
# directory's entries by inode number before copying them).
tree_cat() { timeout -k 5 "$CMD_TIMEOUT" cat "$1"/dir/* >/dev/null; }
tree_cp() { timeout -k 5 "$CMD_TIMEOUT" cp -r "$1/dir" "$WORK/tree-out"; }
tree_grep() { timeout -k 5 "$CMD_TIMEOUT" grep -r "$TREE_NEEDLE" "$1/dir"; }

# wl_tree RUN ENDPOINT SUFFIX: each walk on a fresh mount with a fresh --cache-dir, against
# `oras-fs pull` of the same artifact (ORAS_FS_NO_CACHE: it downloads every file), in a
# rotating order.
wl_tree() {
    local run=$1 ep=$2 sfx=$3 t off n
    local ref=$ep/bench/tree:v1
    for t in $(rotate "$run" pull cat cp grep); do
        off=$(log_size)
        case $t in
        pull)
            fresh_out
            timed "tree_pull$sfx" oras-fs "$run" "$BIN" pull --no-tty -o "$OUTD" "$ref"
            same_dir "$DATA/tree/dir" "$OUTD/dir" "tree_pull$sfx"
            rm -rf "$OUTD"
            ;;
        cat) in_mount "tree_cat$sfx" "$run" "$ref" /blobs/ tree_cat ;;
        cp)
            rm -rf "$WORK/tree-out"
            in_mount "tree_cp$sfx" "$run" "$ref" /blobs/ tree_cp
            same_dir "$DATA/tree/dir" "$WORK/tree-out" "tree_cp$sfx"
            rm -rf "$WORK/tree-out"
            ;;
        grep)
            in_mount "tree_grep$sfx" "$run" "$ref" /blobs/ tree_grep
            n=$(grep -c "$TREE_NEEDLE" "$WORK/last.out")
            ((n == TREE_NEEDLES)) || fail "tree_grep$sfx: $n lines found, expected $TREE_NEEDLES"
            ;;
        esac
        [[ $t == pull ]] && n=oras-fs || n=mount
        record "tree_$t$sfx" "$n" "$run" requests "$(requests_since "$off")"
    done
}

# --- Model loading: mmap of a safetensors-layout file (issue #16) ---------------------------
# model_load WORKLOAD TOOL RUN FILE ARGS...: scripts/model.py load; records its figures and
# keeps its CRC in $WORK/model.<workload>.<tool>.
model_load() {
    local w=$1 t=$2 run=$3 f=$4 out n b secs crc
    shift 4
    out=$(timeout -k 5 "$CMD_TIMEOUT" python3 "$REPO/scripts/model.py" load "$f" "$@" \
        2>"$WORK/last.err") || fail "$w/$t: loading $f: $(tail -n3 "$WORK/last.err")"
    read -r n b secs crc < <(python3 -c 'import json, sys
j = json.loads(sys.argv[1]); print(j["tensors"], j["bytes"], j["seconds"], j["crc"])' "$out")
    record "$w" "$t" "$run" load "$secs"
    record "$w" "$t" "$run" touched "$b"
    echo "$crc" >"$WORK/model.$w.$t"
}

# wl_model RUN ENDPOINT SUFFIX: per load (10% of the tensors at random, seeded by the run; all
# in file order), a fresh mount and the load from it, against pull then the same load.
wl_model() {
    local run=$1 ep=$2 sfx=$3 kind t w off t0 t1 t2 args
    local ref=$ep/bench/model:v1
    for kind in random all; do
        w="model_$kind$sfx"
        args=()
        [[ $kind == random ]] && args=(--fraction 0.1 --seed "$run")
        for t in $(rotate "$run" mount pull); do
            fresh_dirs
            maybe_drop_caches
            off=$(log_size)
            t0=$(now_us)
            case $t in
            mount)
                do_mount "$ref" "$CACHE" "$MNT" --read-only
                t1=$(now_us)
                model_load "$w" mount "$run" "$MNT/model.safetensors" "${args[@]}"
                t2=$(now_us)
                do_unmount "$MNT" "$MOUNT_PID"
                ;;
            pull)
                fresh_out
                timeout -k 5 "$CMD_TIMEOUT" "$BIN" pull --no-tty -o "$OUTD" "$ref" \
                    >"$WORK/last.out" 2>"$WORK/last.err" || fail "$w: pull of $ref"
                t1=$(now_us)
                model_load "$w" pull "$run" "$OUTD/model.safetensors" "${args[@]}"
                t2=$(now_us)
                rm -rf "$OUTD"
                ;;
            esac
            record "$w" "$t" "$run" wall "$(secs $((t2 - t0)))"
            record "$w" "$t" "$run" bytes "$(served_since "$off")"
            rm -rf "$CACHE" "$MNT"
        done
        cmp -s "$WORK/model.$w.mount" "$WORK/model.$w.pull" ||
            fail "$w: the mount's tensors differ from the pulled file's"
    done
}

# --- Lazy directory layers and images (issue #14) -----------------------------------------
# Bytes of the registry log since offset $1 whose request URI matches the ERE $2 (a layer's
# digest, or several joined with |): what one blob cost, apart from manifests and indexes.
served_matching() {
    served_since "$1" >/dev/null # waits for the log to settle
    tail -c +"$(($1 + 1))" "$REG_LOG" | grep -E "\"http.request.uri\":\"[^\"]*($2)" |
        grep -o '"http.response.written":[0-9]*' | awk -F: '{ s += $2 } END { print s + 0 }'
}

# First layer of a manifest: "digest size".
first_layer() {
    curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://$REG/v2/$1/manifests/$2" |
        python3 -c 'import json,sys; l = json.load(sys.stdin)["layers"][0]; print(l["digest"], l["size"])'
}

skopeo_copy() { skopeo --insecure-policy copy --quiet --src-tls-verify=false --dest-tls-verify=false "$@"; }

# lazy_tree DIR TOTAL COUNT: COUNT files of TOTAL bytes under DIR, in nested directories:
# mib/m*.bin of exactly 1 MiB (up to 8), the rest of log-uniform sizes (~1/4000 to ~8x the
# mean), alternately random (incompressible) and base64 text (compresses to ~3/4).
lazy_tree() {
    python3 - "$@" <<'PY'
import base64, math, os, random, sys
root, total, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(14)
n_mib = max(1, min(8, total // (64 << 20), count // 2))
rest, others = total - n_mib * (1 << 20), count - n_mib
weights = [math.exp(rng.uniform(0, math.log(4096))) for _ in range(others)]
sizes = [int(rest * w / sum(weights)) for w in weights]
sizes[-1] += rest - sum(sizes)
pool = min(64 << 20, max(sizes + [1 << 20]) * 2)
rand = os.urandom(pool)
text = base64.encodebytes(os.urandom(pool * 3 // 4))
def put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
for k in range(n_mib):
    put(f"{root}/mib/m{k}.bin", os.urandom(1 << 20))
for i, n in enumerate(sizes):
    src = rand if i % 2 else text
    off = rng.randrange(0, max(1, len(src) - n))
    ext = "bin" if i % 2 else "txt"
    put(f"{root}/d{i % 16:02}/s{i % 3}/f{i:04}.{ext}", src[off:off + n])
print(n_mib)
PY
}

# lazy_layout DIR MODE GZ...: an OCI image layout at DIR (tag v1) of the gzip layers GZ (hard
# linked into it). MODE artifact:TITLE:TAR_DIGEST makes the directory layer oras-go and older
# oras-fs push (unpack annotations); image:DIFF_ID,... an image with those diff_ids.
lazy_layout() {
    python3 - "$@" <<'PY'
import hashlib, json, os, sys
out, mode, files = sys.argv[1], sys.argv[2], sys.argv[3:]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
def blob(mt, path=None, data=None):
    h = hashlib.sha256()
    if data is None:
        with open(path, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        size = os.path.getsize(path)
    else:
        h.update(data)
        size = len(data)
    dst = os.path.join(blobs, h.hexdigest())
    if not os.path.exists(dst):
        if data is None:
            os.link(path, dst)
        else:
            with open(dst, "wb") as f:
                f.write(data)
    return {"mediaType": mt, "digest": "sha256:" + h.hexdigest(), "size": size}
layers = [blob("application/vnd.oci.image.layer.v1.tar+gzip", path=f) for f in files]
kind, _, arg = mode.partition(":")
if kind == "artifact":
    title, tar_digest = arg.split(":", 1)
    layers[0]["annotations"] = {"org.opencontainers.image.title": title,
                                "io.deis.oras.content.unpack": "true",
                                "io.deis.oras.content.digest": tar_digest}
    config = blob("application/vnd.oci.empty.v1+json", data=b"{}")
else:
    cfg = {"architecture": "amd64", "os": "linux", "config": {},
           "rootfs": {"type": "layers", "diff_ids": arg.split(",")}}
    config = blob("application/vnd.oci.image.config.v1+json", data=json.dumps(cfg).encode())
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": layers}
desc = blob(manifest["mediaType"], data=json.dumps(manifest).encode())
desc["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [desc]}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
PY
}

# gz_layer TAR: TAR.gz (gzip -6, as GNU tar -z), TAR removed; prints the tar's sha256.
gz_layer() {
    local d
    d=sha256:$(sha256sum "$1" | cut -d' ' -f1)
    gzip -6 -n "$1"
    echo "$d"
}

# A file list for tar: regular files and symlinks directly in /$1, sorted, skipping files
# larger than a quarter of the budget, until $2 bytes.
host_files() {
    find "/$1" -maxdepth 1 \( -type f -o -type l \) -printf '%P\t%s\n' | sort |
        awk -F'\t' -v dir="$1" -v max="$2" '$2 <= max / 4 && s < max { s += $2; print dir "/" $1 }'
}

LAZY=$WORK/lazy
LAZY_MIB=1
LAZY_OS_RELEASE=""
IMG_LAYERS=""
lazy_setup() {
    say "lazy: generating a directory of $LAZY_FILES files, $LAZY_B B"
    mkdir -p "$LAZY/src"
    LAZY_MIB=$(lazy_tree "$LAZY/src/lazydir" "$LAZY_B" "$LAZY_FILES") || die "lazy: generating the tree"
    local n
    n=$(find "$LAZY/src/lazydir" -type f | wc -l)
    ((n == LAZY_FILES)) || die "lazy: made $n files, wanted $LAZY_FILES"

    # The same directory as a plain tar.gz layer (GNU tar), as oras-go and older oras-fs push it.
    say "lazy: plain tar.gz layout"
    tar -C "$LAZY/src" -cf "$LAZY/plain.tar" lazydir
    local tar_digest
    tar_digest=$(gz_layer "$LAZY/plain.tar")
    lazy_layout "$LAZY/plain-layout" "artifact:lazydir:$tar_digest" "$LAZY/plain.tar.gz" ||
        die "lazy: plain layout"
    meta LAZY_PLAIN_GZ "$(stat -c %s "$LAZY/plain.tar.gz")"

    # An image of this machine's files: layer 1 libraries, layer 2 /etc and programs, layer 3
    # a new /etc/os-release and a whiteout of one program.
    say "lazy: image layout ($IMG_LIB_B B of libraries, $IMG_BIN_B B of programs)"
    local img=$LAZY/img d1 d2 d3 gone
    mkdir -p "$img/l3/etc" "$img/l3/usr/bin"
    { printf '%s\n' usr usr/lib usr/lib/x86_64-linux-gnu; host_files usr/lib/x86_64-linux-gnu "$IMG_LIB_B"; } >"$img/l1.list"
    { (cd / && find etc); printf '%s\n' usr usr/bin; host_files usr/bin "$IMG_BIN_B"; } >"$img/l2.list"
    gone=$(sed -n 's|^usr/bin/||p; T; q' "$img/l2.list")
    [[ -n $gone ]] || die "lazy: no program for the whiteout"
    LAZY_OS_RELEASE="PRETTY_NAME=\"oras-fs bench image (layer 3 of 3)\""
    echo "$LAZY_OS_RELEASE" >"$img/l3/etc/os-release"
    : >"$img/l3/usr/bin/.wh.$gone"
    printf '%s\n' etc etc/os-release usr usr/bin "usr/bin/.wh.$gone" >"$img/l3.list"
    local l rc
    for l in 1 2 3; do
        local from=/
        [[ $l == 3 ]] && from=$img/l3
        rc=0
        # 1: a file changed as it was read (/etc of a live machine): the tar is still whole.
        tar -C "$from" --no-recursion -cf "$img/l$l.tar" -T "$img/l$l.list" 2>"$img/tar.err" || rc=$?
        ((rc <= 1)) || { cat "$img/tar.err" >&2; die "lazy: tar of image layer $l"; }
    done
    d1=$(gz_layer "$img/l1.tar") d2=$(gz_layer "$img/l2.tar") d3=$(gz_layer "$img/l3.tar")
    lazy_layout "$img/layout" "image:$d1,$d2,$d3" "$img/l1.tar.gz" "$img/l2.tar.gz" "$img/l3.tar.gz" ||
        die "lazy: image layout"
    IMG_LAYERS=$(for l in 1 2 3; do sha256sum "$img/l$l.tar.gz" | cut -d' ' -f1; done | paste -sd'|')
    meta LAZY_IMAGE_LAYERS "$(for l in 1 2 3; do stat -c %s "$img/l$l.tar.gz"; done | paste -sd' ')"
    meta LAZY_IMAGE_FILES "$(cat "$img"/l[12].list | wc -l)"
    meta LAZY_PUSH_PLAIN "$(if [[ -n $OLD_BIN ]]; then echo "old binary: $OLD_BIN ($("$OLD_BIN" --version 2>/dev/null | head -n1))"; else echo 'tar -czf of the directory + oras-fs push of the file'; fi)"
}

# in_mount WORKLOAD RUN REF LAYERS FUNC: a fresh mount (fresh cache) of REF, FUNC MNT in it.
# Records wall (mount + FUNC), read (FUNC alone), bytes (all the registry sent) and
# layer_bytes (what requests for the blobs matching the ERE LAYERS sent).
in_mount() {
    local w=$1 run=$2 ref=$3 layers=$4 f=$5 off t0 t1 t2
    fresh_dirs
    maybe_drop_caches
    off=$(log_size)
    t0=$(now_us)
    do_mount "$ref" "$CACHE" "$MNT" --read-only
    t1=$(now_us)
    "$f" "$MNT" >"$WORK/last.out" 2>"$WORK/last.err" || fail "$w: $f in the mount of $ref"
    t2=$(now_us)
    record "$w" mount "$run" wall "$(secs $((t2 - t0)))"
    record "$w" mount "$run" read "$(secs $((t2 - t1)))"
    record "$w" mount "$run" cpu "$(cpu_of "$MOUNT_PID")"
    record "$w" mount "$run" rss "$(hwm_of "$MOUNT_PID")"
    do_unmount "$MNT" "$MOUNT_PID"
    record "$w" mount "$run" bytes "$(served_since "$off")"
    record "$w" mount "$run" layer_bytes "$(served_matching "$off" "$layers")"
    rm -rf "$CACHE" "$MNT"
}
lazy_ls() { timeout -k 5 "$CMD_TIMEOUT" ls -R "$1" >/dev/null; }
LAZY_FILE=""
lazy_cat() { timeout -k 5 "$CMD_TIMEOUT" cat "$1/$LAZY_FILE" >"$WORK/lazy.cat"; }
lazy_cp() { timeout -k 5 "$CMD_TIMEOUT" cp -r "$1/lazydir" "$LAZY/out"; }

# pull of REF into a fresh directory, checked against the source tree.
lazy_pull() {
    local w=$1 run=$2 ref=$3
    rm -rf "$LAZY/out"
    mkdir "$LAZY/out"
    timed "$w" oras-fs "$run" "$BIN" pull --no-tty -o "$LAZY/out" "$ref"
    same_dir "$LAZY/src/lazydir" "$LAZY/out/lazydir" "$w"
    rm -rf "$LAZY/out"
}

wl_lazy_push() {
    local run=$1 t repo
    for t in $(rotate "$run" seekable plain); do
        repo=bench/lazy-push-$t-$run
        case $t in
        seekable)
            timed lazy_push seekable "$run" env -C "$LAZY/src" "$BIN" push --no-tty "$REG/$repo:v1" lazydir
            ;;
        plain)
            if [[ -n $OLD_BIN ]]; then
                timed lazy_push plain "$run" env -C "$LAZY/src" "$OLD_BIN" push --no-tty "$REG/$repo:v1" lazydir
            else
                rm -f "$LAZY/push.tar.gz"
                timed lazy_push plain "$run" bash -c 'tar -C "$1" -czf "$2/push.tar.gz" lazydir &&
                    cd "$2" && "$3" push --no-tty "$4" push.tar.gz' _ "$LAZY/src" "$LAZY" "$BIN" "$REG/$repo:v1"
            fi
            ;;
        esac
        local _d size
        read -r _d size < <(first_layer "$repo" v1) || fail "lazy_push/$t: no layer in $repo:v1"
        record lazy_push "$t" "$run" layer_size "$size"
    done
}

# Row 1: the seekable layer this run pushed (and its TOC).
wl_lazy_seekable() {
    local run=$1 ref=$REG/bench/lazy-push-seekable-$run:v1 digest size t
    read -r digest size < <(first_layer "bench/lazy-push-seekable-$run" v1) ||
        fail "lazy_seek: no layer in bench/lazy-push-seekable-$run:v1"
    # The eStargz footer (last 51 bytes) holds the TOC's offset: TOC + footer = size - offset.
    local toc_off
    toc_off=$(curl -sSf -r -51 "http://$REG/v2/bench/lazy-push-seekable-$run/blobs/$digest" |
        grep -ao '[0-9a-f]\{16\}STARGZ' | head -c 16) || fail "lazy: no eStargz footer in $digest"
    record lazy_seek layer "$run" toc_bytes $((size - 16#$toc_off))
    record lazy_seek layer "$run" layer_size "$size"
    LAZY_FILE=lazydir/mib/m$((run % LAZY_MIB)).bin
    for t in $(rotate "$run" pull ls cat cp); do
        case $t in
        pull) lazy_pull lazy_seek_pull "$run" "$ref" ;;
        ls) in_mount lazy_seek_ls "$run" "$ref" "$digest" lazy_ls ;;
        cat)
            in_mount lazy_seek_cat "$run" "$ref" "$digest" lazy_cat
            same_file "$LAZY/src/$LAZY_FILE" "$WORK/lazy.cat" lazy_seek_cat
            ;;
        cp)
            rm -rf "$LAZY/out"
            in_mount lazy_seek_cp "$run" "$ref" "$digest" lazy_cp
            same_dir "$LAZY/src/lazydir" "$LAZY/out" lazy_seek_cp
            rm -rf "$LAZY/out"
            ;;
        esac
    done
}

# Row 2: the plain tar.gz, copied by skopeo to a fresh repository each run (an index is
# attached to one manifest, and the first rows need none).
wl_lazy_plain() {
    local run=$1 repo=bench/lazy-plain-$run digest size t
    local ref=$REG/$repo:v1
    skopeo_copy "oci:$LAZY/plain-layout:v1" "docker://$ref" || fail "lazy: skopeo copy of the plain layout"
    read -r digest size < <(first_layer "$repo" v1) || fail "lazy_plain: no layer in $repo:v1"
    record lazy_plain layer "$run" layer_size "$size"
    LAZY_FILE=lazydir/mib/m$((run % LAZY_MIB)).bin
    for t in $(rotate "$run" pull cat); do
        case $t in
        pull) lazy_pull lazy_plain_pull "$run" "$ref" ;;
        cat) in_mount lazy_plain_cat "$run" "$ref" "$digest" lazy_cat ;;
        esac
    done
    same_file "$LAZY/src/$LAZY_FILE" "$WORK/lazy.cat" lazy_plain_cat
    timed lazy_plain_index oras-fs "$run" "$BIN" index "$ref"
    in_mount lazy_plain_cat_indexed "$run" "$ref" "$digest" lazy_cat
    same_file "$LAZY/src/$LAZY_FILE" "$WORK/lazy.cat" lazy_plain_cat_indexed
}

lazy_img_cat() { timeout -k 5 "$CMD_TIMEOUT" cat "$1/etc/os-release" >"$WORK/lazy.cat"; }
lazy_img_check() {
    [[ $(<"$WORK/lazy.cat") == "$LAZY_OS_RELEASE" ]] || fail "$1: /etc/os-release is not layer 3's"
}

# Row 3: the image, copied to a fresh repository each run.
wl_lazy_image() {
    local run=$1 repo=bench/lazy-image-$run t
    local ref=$REG/$repo:v1
    skopeo_copy "oci:$LAZY/img/layout:v1" "docker://$ref" || fail "lazy: skopeo copy of the image layout"
    for t in $(rotate "$run" skopeo ls cat); do
        case $t in
        skopeo)
            rm -rf "$LAZY/imgdir"
            timed lazy_img_copy skopeo "$run" skopeo --insecure-policy copy --quiet \
                --src-tls-verify=false "docker://$ref" "dir:$LAZY/imgdir"
            rm -rf "$LAZY/imgdir"
            ;;
        ls) in_mount lazy_img_ls "$run" "$ref" "$IMG_LAYERS" lazy_ls ;;
        cat)
            in_mount lazy_img_cat "$run" "$ref" "$IMG_LAYERS" lazy_img_cat
            lazy_img_check lazy_img_cat
            ;;
        esac
    done
    timed lazy_img_index oras-fs "$run" "$BIN" index "$ref"
    for t in $(rotate "$run" ls cat); do
        case $t in
        ls) in_mount lazy_img_ls_indexed "$run" "$ref" "$IMG_LAYERS" lazy_ls ;;
        cat)
            in_mount lazy_img_cat_indexed "$run" "$ref" "$IMG_LAYERS" lazy_img_cat
            lazy_img_check lazy_img_cat_indexed
            ;;
        esac
    done
}

# The lazy rows and their targets, as Markdown (report.py knows the other groups only).
lazy_report() {
    python3 - "$SAMPLES" "$META" <<'PY'
import collections, statistics, sys
data = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    p = line.rstrip("\n").split("\t")
    if len(p) == 5 and p[0].startswith("lazy_"):
        try:
            data[(p[0], p[1], p[3])][int(p[2])] = float(p[4])
        except ValueError:
            pass
meta = dict(l.rstrip("\n").split("=", 1) for l in open(sys.argv[2]) if "=" in l)
MIB = 1 << 20
def v(w, t, m="wall"):
    return data.get((w, t, m), {})
def med(w, t, m="wall"):
    x = list(v(w, t, m).values())
    return statistics.median(x) if x else None
def spread(w, t, m, f):
    x = sorted(v(w, t, m).values())
    if not x:
        return "n/a"
    s = f(statistics.median(x))
    return s if len(x) == 1 else f"{s} ({f(x[0])}–{f(x[-1])})"
def ts(x):
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"
def bs(x):
    for u, n in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1024)):
        if x >= n:
            return f"{x / n:.2f} {u}"
    return f"{x:.0f} B"
def ratio(a, b, m_a="wall", m_b="wall"):
    ra, rb = v(*a, m_a), v(*b, m_b)
    r = [ra[k] / rb[k] for k in sorted(ra) if k in rb and rb[k] > 0]
    return statistics.median(r) if r else None
rows = []
missed = []
def row(label, ours, peer, value, target, ok):
    res = "info" if ok is None else ("**met**" if ok else "**missed**")
    if ok is False:
        missed.append(label)
    rows.append(f"| {label} | {ours} | {peer} | {value} | {target} | {res} |")
layer = med("lazy_seek", "layer", "layer_size")
toc = med("lazy_seek", "layer", "toc_bytes")
pull = ("lazy_seek_pull", "oras-fs")
if layer:
    b = med("lazy_seek_ls", "mount", "bytes")
    row("seekable: `ls -R` of a fresh mount", spread("lazy_seek_ls", "mount", "wall", ts),
        f"layer {bs(layer)}, TOC {bs(toc)}", f"{spread('lazy_seek_ls', 'mount', 'bytes', bs)} fetched = {100 * b / layer:.2f}% of the layer",
        "≤ 1% of the layer", b <= 0.01 * layer)
    lb = med("lazy_seek_cat", "mount", "layer_bytes")
    row("seekable: `cat` of one 1 MiB file (fresh mount)", spread("lazy_seek_cat", "mount", "wall", ts),
        f"all requests: {spread('lazy_seek_cat', 'mount', 'bytes', bs)}",
        f"layer bytes {spread('lazy_seek_cat', 'mount', 'layer_bytes', bs)}",
        f"≤ 2 MiB + TOC ({bs(2 * MIB + toc)})", lb <= 2 * MIB + toc)
    r = ratio(("lazy_seek_cat", "mount"), pull)
    row("seekable: the same `cat` (mount + read) vs `oras-fs pull` of the directory",
        spread("lazy_seek_cat", "mount", "wall", ts), f"pull: {spread(*pull, 'wall', ts)}",
        f"{r:.3f}× (1/{1 / r:.0f}); the `cat` alone {ratio(('lazy_seek_cat', 'mount'), pull, 'read'):.3f}×",
        "≤ 1/20 of pull", r <= 0.05)
    r = ratio(("lazy_seek_cp", "mount"), pull, "read")
    row("seekable: `cp -r` of the directory out of a fresh mount", spread("lazy_seek_cp", "mount", "read", ts),
        f"pull: {spread(*pull, 'wall', ts)}", f"{r:.2f}×", "≤ 1.3 × pull", r <= 1.3)
pl = med("lazy_plain", "layer", "layer_size")
if pl:
    r = ratio(("lazy_plain_cat", "mount"), ("lazy_plain_pull", "oras-fs"))
    row("plain tar.gz: first `cat` of one file (no index, fresh cache: whole layer + local index)",
        spread("lazy_plain_cat", "mount", "wall", ts), f"pull: {spread('lazy_plain_pull', 'oras-fs', 'wall', ts)}",
        f"{r:.2f}×; {spread('lazy_plain_cat', 'mount', 'layer_bytes', bs)} of a {bs(pl)} layer", "≤ 1.2 × pull", r <= 1.2)
    row("plain tar.gz: `oras-fs index REF`", spread("lazy_plain_index", "oras-fs", "wall", ts),
        f"pull: {spread('lazy_plain_pull', 'oras-fs', 'wall', ts)}",
        f"{ratio(('lazy_plain_index', 'oras-fs'), ('lazy_plain_pull', 'oras-fs')):.2f}× of pull; {spread('lazy_plain_index', 'oras-fs', 'bytes', bs)} fetched", "", None)
    lb = med("lazy_plain_cat_indexed", "mount", "layer_bytes")
    row("plain tar.gz, indexed: `cat` of one 1 MiB file (fresh cache)", spread("lazy_plain_cat_indexed", "mount", "wall", ts),
        f"all requests: {spread('lazy_plain_cat_indexed', 'mount', 'bytes', bs)}",
        f"layer bytes {spread('lazy_plain_cat_indexed', 'mount', 'layer_bytes', bs)}",
        "≤ 4 MiB span + the file (5 MiB)", lb <= 5 * MIB)
if v("lazy_img_copy", "skopeo"):
    sk = ("lazy_img_copy", "skopeo")
    peer = f"skopeo copy to dir: {spread(*sk, 'wall', ts)}, {spread(*sk, 'bytes', bs)}"
    for w, what in (("lazy_img_ls", "`ls -R /mnt`"), ("lazy_img_cat", "`cat /mnt/etc/os-release`"),
                    ("lazy_img_ls_indexed", "indexed: `ls -R /mnt`"), ("lazy_img_cat_indexed", "indexed: `cat /mnt/etc/os-release`")):
        r = ratio((w, "mount"), sk)
        row(f"image (3 layers, {meta.get('LAZY_IMAGE_FILES', '?')} files): {what}, fresh cache", spread(w, "mount", "wall", ts), peer,
            f"{r:.2f}× the time; {spread(w, 'mount', 'bytes', bs)} fetched", "", None)
    row("image: `oras-fs index REF`", spread("lazy_img_index", "oras-fs", "wall", ts), peer,
        f"{spread('lazy_img_index', 'oras-fs', 'bytes', bs)} fetched", "", None)
if v("lazy_push", "seekable"):
    r = ratio(("lazy_push", "seekable"), ("lazy_push", "plain"))
    row("push of the directory: seekable vs plain tar.gz, time", spread("lazy_push", "seekable", "wall", ts),
        f"plain ({meta.get('LAZY_PUSH_PLAIN', '?')}): {spread('lazy_push', 'plain', 'wall', ts)}", f"{r:.2f}×", "≤ 1.15×", r <= 1.15)
    r = ratio(("lazy_push", "seekable"), ("lazy_push", "plain"), "layer_size", "layer_size")
    row("… layer size", spread("lazy_push", "seekable", "layer_size", bs), f"plain: {spread('lazy_push', 'plain', 'layer_size', bs)}",
        f"{r:.4f}×", "≤ 1.05×", r <= 1.05)
print("| Row | oras-fs | Peer / context | Measured | Target | Result |")
print("|---|---|---|---|---|---|")
print("\n".join(rows))
print()
print("Missed: " + "; ".join(missed) + "." if missed else "All lazy targets met.")
PY
}

# --- Run ----------------------------------------------------------------------------------
# --- TLS group (issue #16): HTTP/2 against HTTP/1.1 over TLS, on loopback and at RTT --------
# A second registry serves TLS with a certificate made at run time (registry.sh --tls); it
# speaks HTTP/2 to clients that offer it. Its rows go to ${OUT%.md}.tls.md. The proxies in
# front of it count the connections each tool opens.
TLS_NAME="$REG_NAME-tls"
TLS_SAMPLES=$WORK/tls-samples.tsv
TLS_PROXY_PIDS=()
# tls_timed: `timed` against the TLS registry's log and CPU, into the TLS samples.
tls_timed() {
    local REG_LOG=$TLS_LOG REG_PID=$TLS_PID SAMPLES=$TLS_SAMPLES
    timed "$@"
}
tls_record() {
    local SAMPLES=$TLS_SAMPLES
    record "$@"
}
# proxy_conns PID STATS: connections the proxy has accepted so far.
proxy_conns() {
    rm -f "$2"
    kill -USR1 "$1" 2>/dev/null || { echo 0; return; }
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $2 ]] && break
        sleep 0.02
    done
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["connections"])' "$2" 2>/dev/null || echo 0
}
# tls_proxy DELAY_MS NAME: a latency proxy in front of the TLS registry; sets P_HOST, P_PID.
tls_proxy() {
    python3 "$REPO/scripts/latency_proxy.py" --listen 127.0.0.1:0 --target "$TLS_REG" \
        --delay-ms "$1" --stats "$WORK/$2.stats" >"$WORK/$2.port" 2>"$WORK/$2.err" &
    P_PID=$!
    TLS_PROXY_PIDS+=("$P_PID")
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $WORK/$2.port ]] && break
        sleep 0.05
    done
    P_HOST=127.0.0.1:$(head -n1 "$WORK/$2.port")
    [[ $P_HOST =~ :[0-9]+$ ]] || { cat "$WORK/$2.err" >&2; die "TLS latency proxy did not start"; }
}
# tls_curl_config EP: a curl config fetching every small blob to its title under $OUTD.
tls_curl_config() {
    local d title
    while read -r d title; do
        printf 'url = "https://%s/v2/tls/small/blobs/%s"\noutput = "%s/%s"\n' "$1" "$d" "$OUTD" "$title"
    done <"$WORK/tls-small.layers"
}
tls_setup() {
    say "TLS group: starting a TLS registry"
    local env
    env=$("$REPO/scripts/registry.sh" start --name "$TLS_NAME" --tls 2>"$WORK/tls-start.err") ||
        { cat "$WORK/tls-start.err" >&2; die "could not start the TLS registry"; }
    TLS_REG=$(sed -n "s/^export ORAS_FS_TEST_REGISTRY=//p" <<<"$env")
    TLS_LOG=$(sed -n "s/^export ORAS_FS_TEST_REGISTRY_LOG=//p" <<<"$env")
    TLS_PID=$(sed -n "s/^export ORAS_FS_TEST_REGISTRY_PID=//p" <<<"$env")
    TLS_CA=$(sed -n "s/^export ORAS_FS_TEST_REGISTRY_CA=//p" <<<"$env")
    TLS_STATE=$(dirname "$(sed -n "s/^export ORAS_FS_TEST_REGISTRY_DIR=//p" <<<"$env")")
    [[ -n $TLS_REG && -f $TLS_CA ]] || die "TLS registry: no address or CA"
    [[ -f $DATA/big ]] || head -c "$BIG_B" /dev/urandom >"$DATA/big"
    if [[ ! -d $DATA/small ]]; then
        split_into "$DATA/small" "$SMALL_COUNT" "$SMALL_B"
        mapfile -t SMALL_FILES < <(cd "$DATA/small" && ls)
    fi
    seed "$DATA" "$TLS_REG/tls/big:v1" big --ca-file "$TLS_CA" ||
        die "seeding TLS big: $(tail -n3 "$WORK/seed.log")"
    seed "$DATA/small" "$TLS_REG/tls/small:v1" "${SMALL_FILES[@]}" --ca-file "$TLS_CA" ||
        die "seeding TLS small: $(tail -n3 "$WORK/seed.log")"
    tls_layers tls/small v1 >"$WORK/tls-small.layers"
    TLS_BIG_DIGEST=$(tls_layers tls/big v1 | awk '{ print $1 }')
    [[ $TLS_BIG_DIGEST == sha256:* ]] || die "no digest for tls/big"
    TLS_RTTS=()
    if ((TLS_RTT)); then
        tls_proxy 10 tls-rtt20
        TLS_P20=$P_HOST TLS_P20_PID=$P_PID
        tls_proxy 25 tls-rtt50
        TLS_P50=$P_HOST TLS_P50_PID=$P_PID
    fi
    meta TLS_NOTE "TLS rows: Distribution with a certificate made at run time (scripts/registry.sh --tls), which serves HTTP/2 to clients that offer it (ALPN). oras-fs-h1 is oras-fs with ORAS_FS_HTTP1=1; oras-fs-h2 is the default; curl-h2 is curl --http2 --parallel --parallel-max 64 of the same blobs, the protocol's limit; RTT rows go through scripts/latency_proxy.py (10 and 25 ms each way), which also counts the connections each tool opens."
}
tls_layers() {
    curl -sSf --cacert "$TLS_CA" -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "https://$TLS_REG/v2/$1/manifests/$2" |
        python3 -c 'import json,sys
for l in json.load(sys.stdin)["layers"]:
    print(l["digest"], (l.get("annotations") or {}).get("org.opencontainers.image.title", ""))'
}
# tls_conns_since W T RUN PROXY_PID STATS C0: records the connections a command opened.
tls_conns_since() {
    [[ -n $4 ]] || return 0
    tls_record "$1" "$2" "$3" conns $(($(proxy_conns "$4" "$5") - $6))
}

# wl_tls_pull_small RUN EP SFX [PROXY_PID STATS]
wl_tls_pull_small() {
    local run=$1 ep=$2 sfx=$3 ppid=${4:-} pstats=${5:-} t c0=0 w
    w="tls_pull_small$sfx"
    for t in $(rotate "$run" oras-fs-h1 oras-fs-h2 python curl-h2); do
        fresh_out
        [[ -n $ppid ]] && c0=$(proxy_conns "$ppid" "$pstats")
        case $t in
        oras-fs-h1) tls_timed "$w" "$t" "$run" env ORAS_FS_HTTP1=1 "$BIN" pull --no-tty --ca-file "$TLS_CA" "$ep/tls/small:v1" -o "$OUTD" ;;
        oras-fs-h2) tls_timed "$w" "$t" "$run" "$BIN" pull --no-tty --ca-file "$TLS_CA" "$ep/tls/small:v1" -o "$OUTD" ;;
        python) tls_timed "$w" "$t" "$run" env ORAS_PY_HTTPS=1 REQUESTS_CA_BUNDLE="$TLS_CA" "$PY" "$REPO/benches/oras_py.py" pull "$ep" "$ep/tls/small:v1" "$OUTD" ;;
        curl-h2)
            tls_curl_config "$ep" >"$WORK/tls-curl.cfg"
            tls_timed "$w" "$t" "$run" curl -sSf --http2 --parallel --parallel-max 64 --cacert "$TLS_CA" -K "$WORK/tls-curl.cfg"
            ;;
        esac
        tls_conns_since "$w" "$t" "$run" "$ppid" "$pstats" "$c0"
        same_dir "$DATA/small" "$OUTD" "$w/$t"
    done
    rm -rf "$OUTD"
}

# wl_tls_push_small RUN EP SFX [PROXY_PID STATS]
wl_tls_push_small() {
    local run=$1 ep=$2 sfx=$3 ppid=${4:-} pstats=${5:-} t c0=0 w repo n
    w="tls_push_small$sfx"
    for t in $(rotate "$run" oras-fs-h1 oras-fs-h2 python); do
        repo="tls/push-small-$t-$run${sfx:+-${sfx#@}}"
        [[ -n $ppid ]] && c0=$(proxy_conns "$ppid" "$pstats")
        case $t in
        oras-fs-h1) tls_timed "$w" "$t" "$run" env -C "$DATA/small" ORAS_FS_HTTP1=1 "$BIN" push --no-tty --ca-file "$TLS_CA" "$ep/$repo:v1" "${SMALL_FILES[@]}" ;;
        oras-fs-h2) tls_timed "$w" "$t" "$run" env -C "$DATA/small" "$BIN" push --no-tty --ca-file "$TLS_CA" "$ep/$repo:v1" "${SMALL_FILES[@]}" ;;
        python) tls_timed "$w" "$t" "$run" env ORAS_PY_HTTPS=1 REQUESTS_CA_BUNDLE="$TLS_CA" "$PY" "$REPO/benches/oras_py.py" push "$ep" "$ep/$repo:v1" "$DATA/small" "${SMALL_FILES[@]}" ;;
        esac
        tls_conns_since "$w" "$t" "$run" "$ppid" "$pstats" "$c0"
        n=$(tls_layers "$repo" v1 | grep -c .) || fail "$w/$t: no manifest $repo:v1"
        ((n == SMALL_COUNT)) || fail "$w/$t: $repo:v1 has $n layers, expected $SMALL_COUNT"
    done
}

wl_tls_pull_big() {
    local run=$1 t w=tls_pull_big url="https://$TLS_REG/v2/tls/big/blobs/$TLS_BIG_DIGEST"
    for t in $(rotate "$run" oras-fs-h1 oras-fs-h2 curl-h1 curl-h2 sha256); do
        fresh_out
        case $t in
        oras-fs-h1) tls_timed "$w" "$t" "$run" env ORAS_FS_HTTP1=1 "$BIN" pull --no-tty --ca-file "$TLS_CA" "$TLS_REG/tls/big:v1" -o "$OUTD" ;;
        oras-fs-h2) tls_timed "$w" "$t" "$run" "$BIN" pull --no-tty --ca-file "$TLS_CA" "$TLS_REG/tls/big:v1" -o "$OUTD" ;;
        curl-h1) tls_timed "$w" "$t" "$run" curl -sSf --http1.1 --cacert "$TLS_CA" -o "$OUTD/big" "$url" ;;
        curl-h2) tls_timed "$w" "$t" "$run" curl -sSf --http2 --cacert "$TLS_CA" -o "$OUTD/big" "$url" ;;
        sha256) tls_timed "$w" "$t" "$run" openssl dgst -sha256 "$DATA/big" ;;
        esac
        [[ $t == sha256 ]] || same_file "$DATA/big" "$OUTD/big" "$w/$t"
    done
    rm -rf "$OUTD"
}

# Time to the first byte of a fresh mount, from `mount` returning; and the connections the
# first read opened (0: it used the one the mount resolved the manifest on).
wl_tls_mount_ttfb() {
    local run=$1 ep=$2 sfx=$3 ppid=$4 pstats=$5 t t1 t2 c1 w h1
    w="tls_mount_ttfb$sfx"
    for t in $(rotate "$run" oras-fs-h1 oras-fs-h2); do
        h1=0
        [[ $t == oras-fs-h1 ]] && h1=1
        fresh_dirs
        ORAS_FS_HTTP1=$h1 do_mount "$ep/tls/big:v1" "$CACHE" "$MNT" --read-only --ca-file "$TLS_CA"
        c1=$(proxy_conns "$ppid" "$pstats")
        t1=$(now_us)
        timeout -k 5 "$CMD_TIMEOUT" head -c 1 "$MNT/big" >"$WORK/1b" || fail "$w: head from the mount"
        t2=$(now_us)
        tls_conns_since "$w" "$t" "$run" "$ppid" "$pstats" "$c1"
        do_unmount "$MNT" "$MOUNT_PID"
        tls_record "$w" "$t" "$run" wall "$(secs $((t2 - t1)))"
        head -c 1 "$DATA/big" | cmp -s - "$WORK/1b" || fail "$w: wrong first byte"
        rm -rf "$CACHE" "$MNT"
    done
}

wl_tls() {
    local run=$1
    wl_tls_pull_small "$run" "$TLS_REG" ""
    wl_tls_push_small "$run" "$TLS_REG" ""
    wl_tls_pull_big "$run"
    if ((TLS_RTT)); then
        wl_tls_pull_small "$run" "$TLS_P20" "@rtt20" "$TLS_P20_PID" "$WORK/tls-rtt20.stats"
        wl_tls_push_small "$run" "$TLS_P20" "@rtt20" "$TLS_P20_PID" "$WORK/tls-rtt20.stats"
        wl_tls_pull_small "$run" "$TLS_P50" "@rtt50" "$TLS_P50_PID" "$WORK/tls-rtt50.stats"
        wl_tls_push_small "$run" "$TLS_P50" "@rtt50" "$TLS_P50_PID" "$WORK/tls-rtt50.stats"
        wl_tls_mount_ttfb "$run" "$TLS_P50" "@rtt50" "$TLS_P50_PID" "$WORK/tls-rtt50.stats"
    fi
}

# The TLS table: medians (min-max) of wall seconds and connections per tool, and the targets.
tls_report() {
    python3 - "$TLS_SAMPLES" <<'EOF'
import collections, statistics, sys
s = collections.defaultdict(list)
for line in open(sys.argv[1]):
    w, t, _run, metric, v = line.rstrip("\n").split("\t")
    try:
        s[(w, t, metric)].append(float(v))
    except ValueError:
        pass
def med(w, t, m="wall"):
    v = s.get((w, t, m))
    return statistics.median(v) if v else None
def cell(w, t):
    v = s.get((w, t, "wall"))
    if not v:
        return "–"
    txt = f"{statistics.median(v):.2f} s"
    if len(v) > 1:
        txt += f" ({min(v):.2f}–{max(v):.2f})"
    c = s.get((w, t, "conns"))
    if c:
        txt += f", {statistics.median(c):.0f} conn"
    return txt
tools = ["oras-fs-h1", "oras-fs-h2", "python", "curl-h1", "curl-h2", "sha256"]
rows = [
    ("tls_pull_small", "pull small files, loopback", None),
    ("tls_push_small", "push small files, loopback", None),
    ("tls_pull_big", "pull 1 big file, loopback", "big"),
    ("tls_pull_small@rtt20", "pull small files, 20 ms RTT", None),
    ("tls_push_small@rtt20", "push small files, 20 ms RTT", None),
    ("tls_pull_small@rtt50", "pull small files, 50 ms RTT", "pull50"),
    ("tls_push_small@rtt50", "push small files, 50 ms RTT", "push50"),
    ("tls_mount_ttfb@rtt50", "mount: first byte after `mount` returns, 50 ms RTT", "ttfb"),
]
print("| workload | " + " | ".join(tools) + " | target | result |")
print("| --- |" + " --- |" * (len(tools) + 2))
for w, label, target in rows:
    if not any(k[0] == w for k in s):
        continue
    h2 = med(w, "oras-fs-h2")
    goal, res = "", ""
    if target == "pull50":
        curl = med(w, "curl-h2")
        conns = med(w, "oras-fs-h2", "conns")
        goal = "oras-fs-h2 ≤ 1.15 × curl-h2, ≤ 2 connections"
        if h2 and curl:
            ok = h2 <= 1.15 * curl and (conns or 0) <= 2
            res = f"{h2 / curl:.2f}×, {conns:.0f} conn: {'**met**' if ok else '**missed**'}"
    elif target == "push50":
        goal = "oras-fs-h2 ≥ 1.5× faster than 2.5 s (≤ 1.67 s)"
        if h2:
            res = f"{2.5 / h2:.2f}× faster: {'**met**' if h2 <= 2.5 / 1.5 else '**missed**'}"
    elif target == "big":
        curls = [c for c in (med(w, "curl-h1"), med(w, "curl-h2")) if c]
        sha = med(w, "sha256")
        goal = "oras-fs-h2 ≤ 1.1 × max(fastest curl, sha256)"
        if h2 and curls and sha:
            limit = max(min(curls), sha)
            res = f"{h2 / limit:.2f}× of {limit:.2f} s: {'**met**' if h2 <= 1.1 * limit else '**missed**'}"
    elif target == "ttfb":
        goal = "≤ 3 RTT (150 ms), no new connection"
        conns = med(w, "oras-fs-h2", "conns")
        if h2 is not None:
            ok = h2 <= 0.150 and (conns or 0) == 0
            res = f"{h2 * 1000:.0f} ms, {conns or 0:.0f} new conn: {'**met**' if ok else '**missed**'}"
    print(f"| {label} | " + " | ".join(cell(w, t) for t in tools) + f" | {goal} | {res} |")
EOF
}

step() { say "run $1/$RUNS: $2"; }
want lazy && lazy_setup
want tls && tls_setup
for ((run = 1; run <= RUNS; run++)); do
    if want pull; then
        step "$run" "pull"
        wl_pull_big "$run"
        wl_pull_huge "$run"
        wl_pull_small "$run" "$REG" ""
    fi
    if want push; then
        step "$run" "push"
        wl_push_small "$run" "$REG" ""
        wl_push_big "$run"
    fi
    if want mount; then
        step "$run" "mount"
        wl_mount_rand4k "$run" "$REG" ""
        wl_mount_ttfb "$run" "$REG" ""
        wl_mount_cat "$run"
        wl_mount_rss "$run"
        wl_mount_cp_sync "$run"
    fi
    if want staging; then
        step "$run" "staging: $CREATES creates, rm -rf, sync of $SYNC_COUNT x 4 KiB"
        wl_mount_creates "$run"
        wl_sync_small "$run"
    fi
    if ((HAVE_FIO)) && want fio; then
        step "$run" "fio"
        wl_fio_seq "$run"
        wl_fio_rand "$run" "$REG" "" "$FIO_RUNTIME"
        if ((RTT)); then
            wl_fio_rand "$run" "$PROXY" "@rtt" "$FIO_RTT_RUNTIME"
            # The same job with reads in flight at once: at iodepth 1 every cold read waits
            # one round trip (1/RTT = 50 IOPS at most). 8 processes each blocked in pread put
            # 8 FUSE reads in flight. `--ioengine=io_uring --iodepth=16` does too, but less
            # well: FUSE has no non-blocking buffered read, so io_uring hands each read to an
            # io-wq worker thread, at most 4 per CPU (8 here); measured under load: 76 IOPS
            # against 107 for 8 jobs (and 18 at iodepth 1) in the same run.
            wl_fio_rand "$run" "$PROXY" "_jobs8@rtt" "$FIO_RTT_RUNTIME" --numjobs=8 --group_reporting
        fi
    fi
    if want lazy; then
        step "$run" "lazy directory layers and images"
        wl_lazy_push "$run"
        wl_lazy_seekable "$run"
        wl_lazy_plain "$run"
        wl_lazy_image "$run"
    fi
    if want tree; then
        step "$run" "tree: $TREE_COUNT files walked by cat, cp -r and grep -r, against pull"
        wl_tree "$run" "$REG" ""
        if ((RTT)); then wl_tree "$run" "$PROXY" "@rtt"; fi
    fi
    if want model; then
        step "$run" "model: mmap 10% of the tensors at random, then all in order"
        wl_model "$run" "${PROXY:-$REG}" "${PROXY:+@rtt}"
    fi
    if want rtt && ((RTT)); then
        step "$run" "$((2 * DELAY_MS)) ms RTT"
        wl_pull_small "$run" "$PROXY" "@rtt"
        wl_push_small "$run" "$PROXY" "@rtt"
        wl_mount_rand4k "$run" "$PROXY" "@rtt"
        wl_mount_ttfb "$run" "$PROXY" "@rtt"
    fi
    if want tls; then
        step "$run" "TLS: HTTP/1.1 and HTTP/2"
        wl_tls "$run"
    fi
done

meta LOAD_AFTER "$(cut -d' ' -f1-3 /proc/loadavg)"
if [[ $MODE == smoke ]]; then
    cp "$SAMPLES" "${OUT%.md}.samples.tsv" 2>/dev/null || true
fi
python3 "$REPO/benches/report.py" "$SAMPLES" "$META" "$OUT" || die "report failed"
if want lazy; then
    {
        echo "Lazy rows ($MODE run, $(date -u '+%Y-%m-%d %H:%M UTC'); $RUNS run(s); directory of $LAZY_FILES files, $LAZY_B B)."
        echo "Machine: $(sed -n 's/^CPU=//p' "$META"), $(nproc) cores, SHA extensions $(sed -n 's/^SHA_EXT=//p' "$META"); load average before / after: $(sed -n 's/^LOAD_BEFORE=//p' "$META") / $(sed -n 's/^LOAD_AFTER=//p' "$META")."
        echo
        lazy_report
        echo
        echo '```env'
        cat "$META"
        echo '```'
    } >"${OUT%.md}.lazy.md" || die "lazy report failed"
    cat "${OUT%.md}.lazy.md" >&2
    say "wrote ${OUT%.md}.lazy.md"
fi
if want tls; then
    {
        echo "TLS rows ($MODE run, $(date -u '+%Y-%m-%d %H:%M UTC'); $RUNS run(s); $SMALL_COUNT x $SMALL_B B small files, $BIG_B B big file)."
        echo "Machine: $(sed -n 's/^CPU=//p' "$META"), $(nproc) cores, SHA extensions $(sed -n 's/^SHA_EXT=//p' "$META"); load average before / after: $(sed -n 's/^LOAD_BEFORE=//p' "$META") / $(sed -n 's/^LOAD_AFTER=//p' "$META")."
        echo
        tls_report
        echo
        echo "$(sed -n 's/^TLS_NOTE=//p' "$META")"
    } >"${OUT%.md}.tls.md" || die "TLS report failed"
    cat "${OUT%.md}.tls.md" >&2
    say "wrote ${OUT%.md}.tls.md"
fi
say "wrote $OUT"
