"""How a trained model's accuracy depends on the other query images it is given.

For each run folder, its top-k ensemble is scored on the run's fixed test tasks three ways:

* ``batch``: all query images of a task predicted together, as training evaluates them;
* ``one at a time``: each query image predicted alone, as an application that classifies one
  photo at a time does (with transductive batch norm a batch of one normalises itself);
* ``support statistics``: the run's weights with ``bn_mode="support"`` at evaluation (each query
  normalised with the support set's statistics: batch-independent).

For a run trained with ``bn_mode="support"`` the three are the same by construction.

    python benchmarks/bn_single_image.py RUN_DIR [RUN_DIR ...] --data-dir DIR [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

from mamlpp.core.learner import MAMLpp
from mamlpp.data import EpisodeSampler
from mamlpp.run.datasource import load_splits
from mamlpp.run.evaluate import evaluate
from mamlpp.run.predictor import FewShotPredictor
from mamlpp.run.run_dir import read_run_config, require_run_dir


class OneAtATime:
    """A learner that predicts each query image of a task on its own: logits ``[B, Q, N]``."""

    def __init__(self, learner: MAMLpp) -> None:
        self.learner = learner

    def adapt_and_predict(
        self, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor
    ) -> torch.Tensor:
        parts = [
            self.learner.adapt_and_predict(sx, sy, qx[:, j : j + 1]) for j in range(qx.shape[1])
        ]
        return torch.cat(parts, dim=1)


def with_bn_mode(learner: MAMLpp, mode: str) -> MAMLpp:
    """The same weights, evaluated with another ``bn_mode`` (no parameter depends on it)."""
    other = copy.deepcopy(learner)
    other.config = learner.config.replace(bn_mode=mode)
    return other


def score_run(run_dir: Path, data_dir: str, tasks: int | None, top_k: int | None) -> dict[str, Any]:
    run = require_run_dir(run_dir)
    config = read_run_config(run)
    d, e = config.data, config.eval
    splits = load_splits(d, data_dir, download=False, progress=False)
    sampler = EpisodeSampler(splits["test"], d.ways, d.shots, d.targets, e.test_seed, "cpu")
    members = FewShotPredictor.from_run(run_dir, top_k or e.top_k).members
    count = tasks or e.test_tasks
    modes = {
        "batch": members,
        "one at a time": [OneAtATime(m) for m in members],
        "support statistics": [with_bn_mode(m, "support") for m in members],
    }
    row: dict[str, Any] = {"run": str(run_dir), "bn_mode": config.meta.bn_mode, "tasks": count}
    for name, models in modes.items():
        result = evaluate(models, sampler, count, e.batch_size)  # type: ignore[arg-type]
        row[name] = {"accuracy": result.accuracy, "ci95": result.ci95}
        print(f"{run_dir} [{config.meta.bn_mode}] {name}: {result.describe()}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--tasks", type=int, help="test tasks (default: the run's)")
    parser.add_argument("--top-k", type=int, help="ensemble size (default: the run's)")
    parser.add_argument("--json", metavar="FILE", help="write the rows here")
    args = parser.parse_args(argv)
    rows = [score_run(Path(r), args.data_dir, args.tasks, args.top_k) for r in args.runs]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
