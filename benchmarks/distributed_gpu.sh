#!/usr/bin/env bash
# Data-parallel scaling on 1..G GPUs of one machine (NCCL, one process per GPU, CUDA graphs).
# Usage, from the repository root on a machine with CUDA GPUs and PyTorch:
#     bash benchmarks/distributed_gpu.sh [OUT_DIR] [MAX_GPUS]
# For each paper preset, times the outer step with 1, 2, 4, ... up to MAX_GPUS (default: all
# visible GPUs) processes; writes OUT_DIR/scaling-<preset>.json (default OUT_DIR: $OUT if set,
# else runs/distributed_gpu) and prints one line per process count. Each measurement keeps the
# preset's meta-batch (train.tasks_per_batch), so G processes hold B/G tasks each; a G that does
# not divide B is skipped. A 2-rank training run checks on the side that the GPUs' result is the
# one-GPU result (metrics and parameters), as tests/e2e/test_distributed_cli.py does on the CPU.
# GRAPH_SYNC=in-graph|after-replay|auto (default auto: NCCL collectives inside the CUDA graph)
# sets train.graph_sync: after-replay replays two graphs around eager collectives.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-runs/distributed_gpu}}"
gpus="${2:-$(python3 -c 'import torch; print(torch.cuda.device_count())')}"
sync="${GRAPH_SYNC:-auto}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

counts() {  # 1 2 4 ... up to $gpus that divide the meta-batch $1
    local g=1 list=""
    while [ "$g" -le "$gpus" ]; do
        if [ $(( $1 % g )) -eq 0 ]; then list="${list:+$list,}$g"; fi
        g=$(( g * 2 ))
    done
    echo "$list"
}

for preset in omniglot-20w1s omniglot-5w1s mini-imagenet-5w1s mini-imagenet-5w5s; do
    batch=$("$py" -c "from mamlpp.run.presets import resolve_config as r; print(r('$preset').train.tasks_per_batch)")
    echo "== $preset: strong scaling at its meta-batch of $batch ==" | tee -a "$out/log.txt"
    timeout 240 "$py" benchmarks/distributed_scaling.py --preset "$preset" --device cuda \
        --nprocs "$(counts "$batch")" --iters 20 --warmup 5 --set "train.graph_sync=$sync" \
        --json "$out/scaling-$preset.json" 2>&1 | tee -a "$out/log.txt" || echo "(failed: $?)"
done

echo "== correctness: 2 GPUs vs 1 GPU, synthetic, 3 epochs ==" | tee -a "$out/log.txt"
if [ "$gpus" -ge 2 ]; then
    common=(--preset synthetic --quiet --device cuda --set train.epochs=3 --set train.tasks_per_batch=4
            --set "train.graph_sync=$sync")
    "$py" -m mamlpp train "${common[@]}" --out "$out/check-1gpu" | tee -a "$out/log.txt"
    "$py" -m mamlpp train "${common[@]}" --out "$out/check-2gpu" --nproc 2 | tee -a "$out/log.txt"
    "$py" - "$out" <<'PY' | tee -a "$out/log.txt"
import json, sys, torch
out = sys.argv[1]
a = torch.load(f"{out}/check-1gpu/checkpoints/latest.pt", weights_only=True)["model"]
b = torch.load(f"{out}/check-2gpu/checkpoints/latest.pt", weights_only=True)["model"]
def dead(k):  # conv biases before batch norm and the running means holding them (docs/distributed.md)
    parts = k.split(".")
    conv_bias = len(parts) >= 2 and parts[-2].startswith("conv") and parts[-1] == "bias"
    return conv_bias or parts[-1] == "running_mean"
live = [k for k in a if not dead(k)]
print("max |1 GPU - 2 GPUs| over parameters and running variances:",
      max(float((a[k].double() - b[k].double()).abs().max()) for k in live))
for name in ("check-1gpu", "check-2gpu"):
    s = json.load(open(f"{out}/{name}/summary.json"))
    print(name, "test", s["test_accuracy"], "+-", s["test_ci95"], "path", s["training_path"]["path"],
          "collectives", s["training_path"].get("graph_sync"))
PY
else
    echo "(needs 2 GPUs)" | tee -a "$out/log.txt"
fi
echo "distributed_gpu done; reports in $out" | tee -a "$out/log.txt"
