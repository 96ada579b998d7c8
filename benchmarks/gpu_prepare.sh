#!/usr/bin/env bash
# Prepares this checkout for benchmarks/gpu_check.sh on a lent GPU machine, which reaches no
# network: run it here, where pip reaches the package index, before the machine is asked for.
#
#   benchmarks/gpu_prepare.sh [BASE_COMMIT]      # from anywhere in the checkout
#
# It makes, each only once and each listed in git's info/exclude (so it travels only where
# the lent machine's `carry` names it):
#   .whl/    the bitsandbytes wheel for that machine (CPython 3.12, x86-64 manylinux), for
#            the `vs bnb` columns and the byte comparisons against it (about 43 MB);
#   .base/   a worktree of BASE_COMMIT (default: the tree of the last measured sweep), for
#            gpu_check.sh's `base` stage, which runs that tree's sweep in the same session.
# and prints the bytes the working tree and the two folders come to (the lent machine takes
# 64 MiB a call) and the call to make there.  Optional, in the environment:
#   BNB=SPEC        what pip downloads (default bitsandbytes==0.50.2, the version measured)
#   PIP="..."       the pip command (default: python3 -m pip)
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
BASE_COMMIT=${1:-403cbc6}
BNB=${BNB:-bitsandbytes==0.50.2}
PIP=${PIP:-python3 -m pip}

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
for path in /.whl/ /.base/; do
    grep -qxF "$path" "$exclude" || echo "$path" >> "$exclude"
done

if ! ls .whl/bitsandbytes-*.whl > /dev/null 2>&1; then
    platforms=""
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
             manylinux2014_x86_64; do
        platforms="$platforms --platform $p"
    done
    # shellcheck disable=SC2086  # the platforms are separate words
    $PIP download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
        -d .whl "$BNB"
fi
if [ ! -e .base ]; then
    git worktree add --detach .base "$BASE_COMMIT"
fi

# what travels: the tracked and untracked-not-ignored files, and the carried folders whole
# (a file listed but gone, or a dangling link, counts 0 rather than stopping the count)
tree=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 cat 2> /dev/null || true) | wc -c)
extra=$(du -sb .whl | cut -f1)
base=$(du -sb .base | cut -f1)
total=$((tree + extra + base))
echo "working tree $tree bytes, .whl $extra, .base $base: $total of the 67108864 a call may carry"
if [ "$total" -gt 67108864 ]; then
    echo "too much to carry: drop .base (no base stage) or the wheel (no bitsandbytes columns)" >&2
    exit 1
fi
echo 'then, on the lent machine: carry [".whl", ".base"], timeout_s 590, command'
echo '  WHEELS=.whl BASE=.base bash benchmarks/gpu_check.sh'
