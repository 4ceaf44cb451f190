#!/bin/sh
# Build dbtrust as it was at a git ref, for test_memory.py's "show both" comparison:
#
#   tests/integration/build_old_dbtrust.sh <git ref> [output dir]
#   DBTRUST_OLD_BINARY=<output dir>/dbtrust /usr/bin/python3 tests/integration/test_memory.py \
#       --dbtrust build/dbtrust TestCgroup
#
# A detached `git worktree add` of the ref in a temp dir, cmake + build of the dbtrust target
# only, the binary copied to the output dir (default /tmp/dbtrust-old-<short hash>), then the
# worktree removed again (`git worktree remove` + prune): the repository keeps no trace. Prints
# the binary's path as its last line.
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 <git ref> [output dir]" >&2
    exit 2
fi
ref=$1
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse --verify "$ref^{commit}")
short=$(git -C "$repo" rev-parse --short "$commit")
out=${2:-/tmp/dbtrust-old-$short}
src=$(mktemp -d /tmp/dbtrust-old-src-XXXXXX)
rmdir "$src"  # git worktree add wants to create it

cleanup() {
    git -C "$repo" worktree remove --force "$src" >/dev/null 2>&1 || rm -rf "$src"
    git -C "$repo" worktree prune
}
trap cleanup EXIT INT TERM

git -C "$repo" worktree add --detach "$src" "$commit" >&2
cmake -S "$src" -B "$src/build" >/dev/null  # the project default: RelWithDebInfo
cmake --build "$src/build" -j"$(nproc)" --target dbtrust >&2
mkdir -p "$out"
cp "$src/build/dbtrust" "$out/dbtrust"
printf '%s\n' "$commit" >"$out/COMMIT"
echo "built dbtrust at $commit ($ref)" >&2
echo "$out/dbtrust"
