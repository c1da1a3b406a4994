#!/usr/bin/env bash
# Every GPU measurement of the performance work in one run (budget: under 8 minutes on an H100).
# Usage, from the repository root on a machine with a CUDA GPU and PyTorch:
#     bash benchmarks/gpu_check.sh [OUT_DIR]
# Writes JSON reports and a log to OUT_DIR (default: $OUT if set, else runs/gpu_check) and prints
# the tables. Nothing is installed: the package is used from src/ via PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
# DRY_RUN=1 checks every invocation's arguments on any machine without measuring anything.
if [ "${DRY_RUN:-0}" = 1 ]; then
    bench() { "$py" -m mamlpp bench --device cuda --dry-run "${@:2}"; }
else
    bench() { timeout "$1" "$py" -m mamlpp bench --device cuda "${@:2}"; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    "$py" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
        | tee -a "$out/gpu.txt"
fi

main_configs=omniglot-20w1s,omniglot-5w1s,mini-imagenet-5w1s,mini-imagenet-5w5s
fo_configs=omniglot-20w1s-fo,omniglot-5w1s-fo,mini-imagenet-5w1s-fo,mini-imagenet-5w5s-fo

# 1. Second order, MSL on: CUDA graph vs batched eager in fp32 / TF32 / bf16, with the relative
#    error of each mode's meta-gradient against the fp32 loop path, and peak memory per path.
echo "== 1. main configurations ==" | tee -a "$out/log.txt"
bench 200 --configs "$main_configs" --paths graph,batched --modes fp32,tf32,bf16 \
    --iters 20 --memory --json "$out/bench_main.json" 2>&1 | tee -a "$out/log.txt"
# 2. The loop path (the reference's way of running tasks), fp32 only: batched vs loop side by side.
echo "== 2. loop path ==" | tee -a "$out/log.txt"
bench 120 --configs "$main_configs" --paths loop --modes tf32 --iters 20 --no-grad-check \
    --json "$out/bench_loop.json" 2>&1 | tee -a "$out/log.txt"
# 3. First-order variants.
echo "== 3. first order ==" | tee -a "$out/log.txt"
bench 60 --configs "$fo_configs" --paths graph,batched --modes tf32 --iters 20 \
    --no-grad-check --json "$out/bench_fo.json" 2>&1 | tee -a "$out/log.txt"
# 4. Memory against steps x tasks with and without checkpointing; 600-task evaluation time.
echo "== 4. memory sweep and evaluation ==" | tee -a "$out/log.txt"
bench 90 --configs omniglot-20w1s --paths batched-ckpt --modes tf32 --iters 5 \
    --memory-sweep omniglot-20w1s --eval-tasks 600 --json "$out/bench_memory_eval.json" \
    2>&1 | tee -a "$out/log.txt"
echo "gpu_check done; reports in $out" | tee -a "$out/log.txt"
