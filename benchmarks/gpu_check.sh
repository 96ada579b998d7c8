#!/usr/bin/env bash
# Every GPU check of the project in one run: the test suite (its device cases run, as they
# cannot in CI), the benchmarks of docs/benchmarks.md, and Nsight Compute profiles of slow
# quantize kernels.
#
#   benchmarks/gpu_check.sh [OUTDIR]          # from the repository's root; default $OUT or /tmp/gpu_check
#
# Made for a lent machine with a time budget (an H100 with CuPy, torch, numba and ncu, no
# network): each stage has its own time limit in seconds (below; together about 22 minutes,
# most stages ending well before theirs), and writes OUTDIR/<stage>.log; a stage that fails
# or runs out of time does not stop the next one, and the end prints each stage's exit
# status and seconds.  Where one command may run 10 minutes at most, split it, e.g.
# STAGES="env tests sweep" and then STAGES="ncu scaled stream" (vq, evaluate, quality and base when
# there is time); the limits are ceilings, not estimates, so with little device time run the
# first call alone and look at stages.txt before the second.
# Optional, set in the environment:
#   WHEELS=DIR      wheels to install first into /tmp/site (bitsandbytes for the `vs bnb`
#                   columns and the byte comparisons against it: `pip download --no-deps
#                   --only-binary=:all: --python-version 3.12 ... bitsandbytes` where pip works)
#   BASE=DIR        another checkout's root: the quantize sweep runs from it too, right
#                   after this tree's, so the two tables compare kernels in one run (for a
#                   lent machine: `git worktree add .base COMMIT` and `/.base/` in
#                   .git/info/exclude here, `.base` carried, BASE=$PWD/.base there)
#   STAGES="..."    the stages to run, of: env tests sweep base scaled stream vq evaluate quality ncu
#   LOG2N=N         values of the sweeps (default 28)
set -u
OUTDIR=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUTDIR"
LOG2N=${LOG2N:-28}
STAGES=${STAGES:-"env tests sweep base scaled stream vq evaluate quality ncu"}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ -n "${WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
HERE=$PWD
status=()

stage() {   # stage NAME SECONDS DIR COMMAND...: in DIR, with DIR's quantbook first on the
            # path, under its limit; logged, its status and seconds remembered
    local name=$1 limit=$2 dir=$3
    shift 3
    case " $STAGES " in *" $name "*) ;; *) return ;; esac
    echo "=== $name ($dir): $*"
    local t0=$SECONDS
    (cd "$dir" && PYTHONPATH=$dir${PYTHONPATH:+:$PYTHONPATH} timeout "$limit" "$@") > "$OUTDIR/$name.log" 2>&1
    local rc=$?
    tail -n 60 "$OUTDIR/$name.log"
    status+=("$name rc=$rc $((SECONDS - t0))s")
}

workers=$($PY -c 'import xdist' 2>/dev/null && echo "-n 8")   # pytest-xdist, where it is there

stage env 30 "$HERE" sh -c "nvidia-smi; $PY -c 'import sys, numpy, cupy, torch; print(sys.version); print(\"numpy\", numpy.__version__, \"cupy\", cupy.__version__, \"torch\", torch.__version__)'; $PY -c 'import bitsandbytes as b; print(\"bitsandbytes\", b.__version__)' || true"
stage tests 240 "$HERE" $PY -m pytest -q -p no:cacheprovider $workers -rs
stage sweep 240 "$HERE" $PY benchmarks/bench_quantize_gpu.py --log2n "$LOG2N"
if [ -n "${BASE:-}" ]; then
    stage base 150 "$BASE" $PY benchmarks/bench_quantize_gpu.py --log2n "$LOG2N" --no-bnb --check 0
fi
stage scaled 150 "$HERE" $PY benchmarks/bench_scaled_gpu.py --log2n "$LOG2N"
stage stream 40 "$HERE" $PY benchmarks/bench_stream_gpu.py
stage vq 60 "$HERE" $PY benchmarks/bench_quantize_vq.py --rotate hadamard --log2n 26
stage evaluate 90 "$HERE" $PY benchmarks/bench_evaluate_model.py --synthetic --backends cpu,gpu --rotate none,hadamard
# --task lm with the weights quantized on the GPU (handed to the model by DLPack) and on the host
stage quality 120 "$HERE" $PY benchmarks/bench_model_quality.py --synthetic --device cuda --backends gpu,cpu \
    --codebooks nf4,e2m1 --tokens 512 --context 256
# a quantize row of each kind below 0.85 of a copy in the last measured sweep (16-bit input):
# codes of a byte, 2-bit codes at B = 4096, NF4 at B = 16; the tables show bank conflicts
# (the stage fails when any of the three profiles does)
stage ncu 180 "$HERE" sh -c "rc=0; for c in 'float16 1024 8' 'bfloat16 4096 2' 'bfloat16 16 4'; do set -- \$c;
    ncu -k regex:qb_ -c 4 --section SpeedOfLight --section Occupancy --section WarpStateStats \
        --section MemoryWorkloadAnalysis_Tables \
        $PY benchmarks/bench_quantize_gpu.py --profile --dtypes \$1 --blocksizes \$2 --bits \$3 || rc=\$?; done; exit \$rc"

echo "=== stages"
printf '%s\n' "${status[@]}" | tee "$OUTDIR/stages.txt"
