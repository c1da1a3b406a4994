#!/usr/bin/env bash
# Every GPU measurement of the performance work in one run: at most 3 minutes on an H100
# (each part has its own time limit; together they stay under 180 s of measuring).
# Usage, from the repository root on a machine with a CUDA GPU and PyTorch:
#     bash benchmarks/gpu_check.sh [OUT_DIR]
# Writes JSON reports and log.txt to OUT_DIR (default: $OUT if set, else runs/gpu_check) and
# prints readable tables. Nothing is installed: the package is used from src/ via PYTHONPATH.
# DRY_RUN=1 checks every invocation's arguments on any machine without measuring anything.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if [ "${DRY_RUN:-0}" = 1 ]; then
    bench() { "$py" -m mamlpp bench --device cuda --dry-run "${@:2}"; }
else
    # A part that runs out of time is reported and the next part still runs.
    bench() { timeout "$1" "$py" -m mamlpp bench --device cuda "${@:2}" || echo "(part timed out or failed: $?)"; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    "$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
        | tee -a "$out/gpu.txt"
fi
main_configs=omniglot-20w1s,omniglot-5w1s,mini-imagenet-5w1s,mini-imagenet-5w5s

# 1. Speed (fp32, the default precision; second order, MSL): each execution inside the CUDA graph (the candidates the
#    trainer chooses from), the eager batched path and the per-task loop (the reference's shape);
#    peak memory of each against the reference's 2.1 / 0.6 / 5.5 / 7.4 GB.
echo "== 1. speed and memory: executions inside the graph vs eager ==" | tee -a "$out/log.txt"
bench 95 --configs "$main_configs" --paths graph,graph-loop,graph-vmap,batched,loop \
    --modes fp32 --iters 10 --warmup 3 --no-grad-check --memory \
    --json "$out/bench_speed.json" 2>&1 | tee -a "$out/log.txt"
# 2. Precision: meta-gradient error per parameter group and cosine against the float64 loop
#    path, for fp32 / TF32 / bf16 in the graph (the numbers behind train.precision's default).
echo "== 2. precision ==" | tee -a "$out/log.txt"
bench 45 --configs omniglot-20w1s,mini-imagenet-5w1s --paths graph --modes fp32,tf32,bf16 \
    --iters 5 --warmup 3 --json "$out/bench_precision.json" 2>&1 | tee -a "$out/log.txt"
# 3. First order, and the time to evaluate 600 tasks (target <= 2 s).
echo "== 3. first order and evaluation ==" | tee -a "$out/log.txt"
bench 35 --configs omniglot-20w1s-fo,mini-imagenet-5w1s-fo --paths graph --modes fp32 \
    --iters 10 --warmup 3 --no-grad-check --eval-tasks 600 \
    --json "$out/bench_fo_eval.json" 2>&1 | tee -a "$out/log.txt"
echo "gpu_check done; reports in $out" | tee -a "$out/log.txt"
