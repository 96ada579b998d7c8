#!/usr/bin/env bash
# Every GPU check of the project in one run: the test files with device cases (CI cannot run
# them), the benchmarks of docs/benchmarks.md, and Nsight Compute profiles of slow quantize
# kernels.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]     # from the repository's root; default $OUT or /tmp/gpu_check
#
# Made for a lent machine with a small time budget (an H100 with CuPy, torch, numba and ncu,
# no network).  The stages run in the order below, most wanted first; each has a ceiling in
# seconds, and the whole run keeps within BUDGET seconds: a stage gets at most what is left,
# and one that would get under 20 s is skipped.  The first stage, env, stops the run when
# CuPy sees no usable GPU.  Everything goes to OUTDIR/check.log (stage by stage, behind a
# `=== NAME` line) and standard output, and each stage's exit status and seconds to
# OUTDIR/stages.txt as it ends: two files, whatever is asked (a lent machine returns eight).
# A stage is stopped with SIGINT, so pytest and the benchmarks print what they have.
# Optional, set in the environment:
#   BUDGET=S        seconds for the whole run (default 540: a 10-minute command with room to
#                   spare); a second call on the warm machine can run the skipped stages
#   STAGES="..."    the stages to run, of: env sweep base tests ncu scaled stream quality evaluate vq
#   WHEELS=DIR      wheels to install first into /tmp/site (bitsandbytes for the `vs bnb`
#                   columns and the byte comparisons against it; benchmarks/gpu_prepare.sh)
#   BASE=DIR        another checkout's root (absolute or relative): the quantize sweep runs
#                   from it too, right after this tree's, so the two tables compare kernels
#                   on one machine (benchmarks/gpu_prepare.sh makes .base)
#   BASE_FIRST=1    base runs before the sweep, not after it: on the H200 the same kernels
#                   measured second ran up to 0.05 of a copy faster (float32 rows), so a
#                   comparison alternates the order between calls
#   LOG2N=N         values of the sweeps (default 28)
set -u
set -o pipefail
OUTDIR=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUTDIR"
LOG2N=${LOG2N:-28}
ALL="env sweep base tests ncu scaled stream quality evaluate vq"
STAGES=${STAGES:-$ALL}
BUDGET=${BUDGET:-540}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
for s in $STAGES; do
    case " $ALL " in *" $s "*) ;; *) echo "gpu_check: unknown stage '$s' (the stages: $ALL)" >&2; exit 2 ;; esac
done
case " $STAGES " in *" base "*)
    if [ -z "${BASE:-}" ]; then
        echo "gpu_check: the base stage needs BASE=DIR (leave base out of STAGES otherwise)" >&2
        exit 2
    fi
    BASE=$(cd "$BASE" && pwd) || { echo "gpu_check: BASE=$BASE is not a folder" >&2; exit 2; } ;;
esac
if [ -n "${WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || { echo "gpu_check: installing the wheels in $WHEELS failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
HERE=$PWD
LOG=$OUTDIR/check.log
: > "$LOG"
: > "$OUTDIR/stages.txt"

stage() {   # stage NAME SECONDS DIR COMMAND...: in DIR, with DIR's quantbook first on the path,
            # under its ceiling and what is left of the budget; its status goes to stages.txt
    local name=$1 limit=$2 dir=$3
    shift 3
    case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
    local left=$((BUDGET - SECONDS - 5))
    if [ "$left" -lt 20 ]; then
        echo "$name skipped: ${left}s of the budget left" | tee -a "$OUTDIR/stages.txt"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name ($dir, at most ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS
    (cd "$dir" && PYTHONPATH=$dir${PYTHONPATH:+:$PYTHONPATH} timeout -s INT -k 15 "$limit" "$@") 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUTDIR/stages.txt"
    return "$rc"
}

if ! stage env 60 "$HERE" $PY benchmarks/gpu_env.py; then
    echo "gpu_check: stopped after env (no usable GPU, see above)" | tee -a "$OUTDIR/stages.txt"
    exit 1
fi
base() { stage base 150 "${BASE:-$HERE}" $PY benchmarks/bench_quantize_gpu.py --log2n "$LOG2N" --no-bnb --check 0; }
[ "${BASE_FIRST:-0}" = 1 ] && base
stage sweep 240 "$HERE" $PY benchmarks/bench_quantize_gpu.py --log2n "$LOG2N"
[ "${BASE_FIRST:-0}" = 1 ] || base
# the test files with device cases; the rest of the suite is CI's
# pytest-xdist where it is there; without it, the project's addopts (-n auto) would be refused
workers=$($PY -c 'import xdist' 2>/dev/null && echo "-n 8" || echo "-o addopts=-ra")
per_test=$($PY -c 'import pytest_timeout' 2>/dev/null && echo "--timeout=120")
stage tests 240 "$HERE" $PY -m pytest -q -p no:cacheprovider $workers $per_test -rs \
    tests/test_gpu_device.py tests/test_gpu_scaled.py tests/test_vq_gpu.py tests/test_gpu_host.py \
    tests/test_conformance.py tests/test_layouts_torchao.py tests/test_bulk_bnb.py tests/test_export.py \
    tests/test_model_quality.py
# a quantize row of each kind below 0.85 of a copy in the last measured sweep (16-bit input):
# codes of a byte, 2-bit codes at B = 4096, NF4 at B = 16; the tables show bank conflicts
# (the stage fails when any of the three profiles does)
stage ncu 180 "$HERE" sh -c "rc=0; for c in 'float16 1024 8' 'bfloat16 4096 2' 'bfloat16 16 4'; do set -- \$c;
    ncu --clock-control none -k regex:qb_ -c 4 --section SpeedOfLight --section Occupancy --section WarpStateStats \
        --section MemoryWorkloadAnalysis_Tables \
        $PY benchmarks/bench_quantize_gpu.py --profile --dtypes \$1 --blocksizes \$2 --bits \$3 || rc=\$?; \
    done; exit \$rc"
stage scaled 150 "$HERE" $PY benchmarks/bench_scaled_gpu.py --log2n "$LOG2N"
stage stream 40 "$HERE" $PY benchmarks/bench_stream_gpu.py
# --task lm with the weights quantized on the GPU (handed to the model by DLPack) and on the host
stage quality 120 "$HERE" $PY benchmarks/bench_model_quality.py --synthetic --device cuda --backends gpu,cpu \
    --codebooks nf4,e2m1 --tokens 512 --context 256
stage evaluate 90 "$HERE" $PY benchmarks/bench_evaluate_model.py --synthetic --backends cpu,gpu --rotate none,hadamard
stage vq 60 "$HERE" $PY benchmarks/bench_quantize_vq.py --rotate hadamard --log2n 26

echo "=== stages"
cat "$OUTDIR/stages.txt"
