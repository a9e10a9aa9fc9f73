#!/usr/bin/env bash
# The README's quick start: set up a fresh machine, start a local registry, push a file,
# pull it back, mount the artifact and read it through the mount, then clean up.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

scripts/setup.sh
cargo build --quiet --bin oras-fs
ORAS_FS="$REPO/target/debug/oras-fs"

work=$(mktemp -d)
mnt="$work/mnt"
cleanup() {
    if grep -q " $mnt fuse" /proc/mounts 2>/dev/null; then
        "$ORAS_FS" unmount "$mnt" || fusermount3 -uz "$mnt" || true
    fi
    "$REPO/scripts/registry.sh" stop --name quickstart >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

registry_env=$(scripts/registry.sh start --name quickstart)
eval "$registry_env"
ref="$ORAS_FS_TEST_REGISTRY/hello:v1"

cd "$work"
echo "hello world" > hi.txt
echo "== oras-fs push $ref hi.txt"
"$ORAS_FS" push "$ref" hi.txt --no-tty
echo "== oras-fs pull $ref -o out"
"$ORAS_FS" pull "$ref" -o out --no-tty
echo "== cat out/hi.txt"
cat out/hi.txt
mkdir -p "$mnt"
echo "== oras-fs mount $ref $mnt"
"$ORAS_FS" mount "$ref" "$mnt" --cache-dir "$work/cache"
ls -l "$mnt"
echo "== cat $mnt/hi.txt"
cat "$mnt/hi.txt"
"$ORAS_FS" unmount "$mnt"
echo "== done"
