"""Evaluate a finished run's test ensemble under other batch-norm modes (no retraining).

Answers "is it the evaluation rule or the training?" for docs/results/per-step-bn.md: the same
checkpoints (top-k by validation accuracy, as the run's own test) are adapted and scored on the
same fixed test tasks, with ``meta.bn_mode`` replaced at evaluation only.

    PYTHONPATH=src python benchmarks/bn_cross_eval.py RUN_DIR --data-dir DIR \
        --modes transductive,per_step,support

Prints one line per mode: accuracy +- 95% CI over tasks, and the seconds it took.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from mamlpp.data import EpisodeSampler
from mamlpp.datasource import load_splits
from mamlpp.evaluate import ensemble_paths, evaluate, load_member
from mamlpp.runs import read_run_config, require_run_dir
from mamlpp.train import build_learner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--modes", default="transductive,per_step,support")
    parser.add_argument("--tasks", type=int, help="default: the run's eval.test_tasks")
    parser.add_argument("--top-k", type=int, help="default: the run's eval.top_k")
    args = parser.parse_args()

    torch.set_num_threads(1)
    run = require_run_dir(args.run_dir)
    config = read_run_config(run)
    e, d = config.eval, config.data
    tasks = args.tasks or e.test_tasks
    paths = ensemble_paths(run, args.top_k or e.top_k)
    split = load_splits(d, args.data_dir, download=False, say=lambda _: None)["test"]
    print(f"{run.root}: trained with bn_mode={config.meta.bn_mode}, {len(paths)} checkpoints")
    for mode in args.modes.split(","):
        evaluated = dataclasses.replace(config, meta=config.meta.replace(bn_mode=mode))
        template = build_learner(evaluated, split.image_shape[0])
        members = [load_member(template, p) for p in paths]
        sampler = EpisodeSampler(split, d.ways, d.shots, d.targets, e.test_seed, "cpu")
        start = time.perf_counter()
        result = evaluate(members, sampler, tasks, e.batch_size)
        seconds = time.perf_counter() - start
        print(f"  evaluated as {mode:16s} {result.describe()}  ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
