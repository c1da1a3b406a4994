"""One meta-iteration of a bench configuration with 1 task: wall time and peak memory growth.

Usage: python benchmarks/resnet12_probe.py CONFIG PATH  (PATH: batched or batched-ckpt); see
docs/results/bench-cpu-2026-11-26/resnet12.md. Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from mamlpp.engine.step_runner import MetaStepRunner
from mamlpp.studies.bench import CONFIGS, _status_kib, build_problem


def main() -> None:
    name, path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    config = dataclasses.replace(CONFIGS[name], tasks=1)
    learner, batch = build_problem(config, torch.device("cpu"))
    learner.checkpoint_steps = path == "batched-ckpt"
    step = MetaStepRunner(learner)
    base = _status_kib("VmRSS")
    start = time.perf_counter()
    step(batch, 0)
    seconds = time.perf_counter() - start
    extra_gb = (_status_kib("VmHWM") - base) / 1e6
    print(f"{name} {path} 1 task: {seconds:.1f} s, peak extra memory {extra_gb:.2f} GB")


if __name__ == "__main__":
    main()
