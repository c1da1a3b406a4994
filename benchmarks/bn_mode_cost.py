"""Seconds per meta-iteration (``MAMLpp.meta_step``) and per evaluated meta-batch
(``adapt_and_predict``) for each batch-norm mode, on a ``mamlpp bench`` problem.

    PYTHONPATH=src python benchmarks/bn_mode_cost.py --config omniglot-5w1s \\
        --modes transductive,support --rounds 5 --threads 1

``mamlpp bench`` has no batch-norm switch; this builds its problem (synthetic episodes of the
real shapes, second order, MSL on), sets ``bn_mode`` on one learner per mode and times the modes
interleaved (one step of each per round, after one warm-up step), so that a change of load on a
shared machine touches every mode alike. Prints the median over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mamlpp.studies.bench import build_problem
from mamlpp.studies.bench_configs import CONFIGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="omniglot-5w1s", choices=sorted(CONFIGS))
    parser.add_argument("--modes", default="transductive,support")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modes = args.modes.split(",")
    problems = {}
    for mode in modes:
        learner, batch = build_problem(CONFIGS[args.config], torch.device("cpu"))
        learner.config = learner.config.replace(bn_mode=mode)
        optimizer = learner.make_optimizer()
        learner.meta_step(optimizer, batch)  # warm-up
        learner.adapt_and_predict(*batch[:3])
        problems[mode] = (learner, optimizer, batch)
    train: dict[str, list[float]] = {m: [] for m in modes}
    evaluate: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, (learner, optimizer, batch) in problems.items():
            start = time.perf_counter()
            learner.meta_step(optimizer, batch)
            train[mode].append(time.perf_counter() - start)
            start = time.perf_counter()
            learner.adapt_and_predict(*batch[:3])
            evaluate[mode].append(time.perf_counter() - start)
    base = statistics.median(train[modes[0]])
    print(f"{args.config}, {args.threads} thread(s), median of {args.rounds} rounds")
    print(f"{'bn_mode':<14} {'s/meta-step':>11} {'vs ' + modes[0]:>17} {'s/eval batch':>12}")
    for mode in modes:
        step = statistics.median(train[mode])
        print(
            f"{mode:<14} {step:>11.3f} {step / base:>16.2f}x "
            f"{statistics.median(evaluate[mode]):>12.3f}"
        )


if __name__ == "__main__":
    main()
