"""Paired CPU cost of the batch-norm modes: seconds per meta-iteration and per evaluated task.

The modes run in interleaved rounds (mode A, mode B, ..., then again), so that a machine shared
with other jobs slows them alike; the median over rounds is reported. Random 28x28 episodes of
the Omniglot 5-way 1-shot shape (1 target per class, 8 tasks), conv4 with 32 filters: the shape
of the runs in docs/results/per-step-bn.md.

    PYTHONPATH=src python benchmarks/bn_mode_cost.py --modes transductive,support,per_step_query
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mamlpp import Conv4, MAMLpp, MetaConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="transductive,support,per_step_query")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3, help="meta-iterations per round")
    parser.add_argument("--epoch", type=int, default=0, help="0: first order; 60: second order")
    parser.add_argument("--eval-tasks", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)

    g = torch.Generator().manual_seed(0)
    sx, qx = (torch.rand(8, 5, 1, 28, 28, generator=g) for _ in range(2))
    sy = qy = torch.arange(5).repeat(8, 1)
    ex, ey = (
        torch.rand(args.eval_tasks, 5, 1, 28, 28, generator=g),
        sy[:1].repeat(args.eval_tasks, 1),
    )
    learners = {}
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        config = MetaConfig(bn_mode=mode)
        learner = MAMLpp(Conv4(5, channels=32), config)
        learners[mode] = (learner, learner.make_optimizer())
    train_s: dict[str, list[float]] = {m: [] for m in learners}
    eval_s: dict[str, list[float]] = {m: [] for m in learners}
    for _ in range(args.rounds):
        for mode, (learner, optimizer) in learners.items():
            start = time.perf_counter()
            for _ in range(args.iters):
                learner.meta_step(optimizer, sx, sy, qx, qy, args.epoch)
            train_s[mode].append((time.perf_counter() - start) / args.iters)
            start = time.perf_counter()
            learner.adapt_and_predict(ex, ey, ex)
            eval_s[mode].append((time.perf_counter() - start) / len(ex))
    base = next(iter(learners))
    for mode in learners:
        t, e = statistics.median(train_s[mode]), statistics.median(eval_s[mode])
        ratio = t / statistics.median(train_s[base])
        print(
            f"{mode:16s} {t:.3f} s/meta-iteration ({ratio:.2f}x {base}), "
            f"{1000 * e:.1f} ms/evaluated task (median of {args.rounds} rounds)"
        )


if __name__ == "__main__":
    main()
