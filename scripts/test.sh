#!/usr/bin/env bash
# The project's one test command: installs prerequisites, builds, starts a
# throwaway registry, runs every test (and the bench smoke run), and always
# cleans up the registry and any FUSE mounts the tests left behind.
#
#   scripts/test.sh [ARGS...]   # ARGS go to the test binaries, after `--`
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

# Lazily unmount leftover oras-fs FUSE mounts under the temp dirs, so a
# crashed test can't leave a dead mount that hangs later `ls`/rm -rf.
unmount_leftovers() {
    local src mnt fstype _rest tmp
    local roots=(/tmp)
    tmp="${TMPDIR:-/tmp}"
    tmp="${tmp%/}"
    if [[ -n $tmp && $tmp != /tmp ]]; then roots+=("$tmp"); fi
    local mounts=()
    while read -r src mnt fstype _rest; do
        # Ours: FUSE with source (fsname) or subtype "oras-fs".
        [[ $fstype == fuse || $fstype == fuse.* ]] || continue
        [[ $src == oras-fs || $fstype == fuse.oras-fs ]] || continue
        mnt=$(printf '%b' "$mnt") # /proc/mounts escapes spaces etc. as \040
        local r
        for r in "${roots[@]}"; do
            if [[ $mnt == "$r"/* ]]; then mounts+=("$mnt"); fi
        done
    done </proc/mounts
    local i
    # Innermost first (later in /proc/mounts).
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        echo "test.sh: unmounting leftover FUSE mount ${mounts[i]}" >&2
        fusermount3 -uz "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" 2>/dev/null || true
    done
}

# shellcheck disable=SC2329 # invoked via trap
cleanup() {
    unmount_leftovers || true
    "$REPO/scripts/registry.sh" stop || true
}

scripts/setup.sh
cargo build --all-targets

trap cleanup EXIT
# Make INT/TERM go through the EXIT trap too (bash skips it on a fatal signal).
trap 'exit 130' INT
trap 'exit 143' TERM
unmount_leftovers
# Assign first: `eval "$(cmd)"` would hide a failing start from set -e.
registry_env=$(scripts/registry.sh start)
eval "$registry_env"

export ORAS_FS_PYTHON="$REPO/.venv/bin/python"
export ORAS_FS_SCRIPTS="$REPO/scripts"
# Tests skip (and pass) without a registry under a plain `cargo test`; here a missing
# registry must fail them instead, so a broken setup cannot pass silently.
export ORAS_FS_REQUIRE_REGISTRY=1

status=0
cargo test --all-targets -- --test-threads=4 "$@" || status=$?

# Bench smoke run only when the tests passed (a broken build would just
# fail again, more slowly); its failure fails the run too.
if ((status == 0)) && [[ -x scripts/bench.sh ]]; then
    scripts/bench.sh --smoke || status=$?
fi

exit "$status"
