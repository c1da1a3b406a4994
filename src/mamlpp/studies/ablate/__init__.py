"""``mamlpp ablate``: the paper's ablation grid, trained at equal budgets and aggregated.

One job per module: :mod:`.grid` (the variants as data), :mod:`.plan` (``OUT/ablation.json``
and each run's configuration and command), :mod:`.calibration` (``--time-budget`` measured on
``Trainer.train_step``), :mod:`.runner` (``mamlpp train ... --resume`` subprocesses under
:mod:`concurrent.futures`), :mod:`.aggregate` (``results.json``), :mod:`.render`
(``results.md`` and plots) and :mod:`.cli` (the command).

Every (variant, seed) run trains in ``OUT/<variant>/seed<k>/``, an ordinary run folder that
``mamlpp train --resume`` and ``mamlpp report`` understand; re-running skips finished runs and
resumes interrupted ones. ``--budget ITERS`` keeps the preset's number of epochs and shortens
the epoch (``iterations_per_epoch = ITERS / epochs``), so MSL, derivative-order and cosine
annealing act at the paper's fractions of training. All runs are tested on the same fixed tasks
(task ``j`` of the test split is a pure function of split, ``j`` and ``eval.test_seed``); each
run's summary records a fingerprint of its test tasks and the aggregation checks they agree.

Files::

    OUT/ablation.json          the settings, the variants and seeds asked for, the sessions
    OUT/<variant>/seed<k>/     a run folder plus ablate.json (command, status) and train.log
    OUT/results.md, results.json   mean and std over seeds, 95% CI over tasks, wall time, it/s
    OUT/test-accuracy.png, OUT/val-accuracy.png, OUT/report/   plots
"""

from __future__ import annotations

from mamlpp.studies.ablate.aggregate import aggregate, environment
from mamlpp.studies.ablate.calibration import calibrate
from mamlpp.studies.ablate.grid import GRID, TECHNIQUES, VARIANTS, Variant, parse_variants
from mamlpp.studies.ablate.plan import Plan, read_plan, run_config
from mamlpp.studies.ablate.runner import run_ablation

__all__ = [
    "GRID",
    "TECHNIQUES",
    "VARIANTS",
    "Plan",
    "Variant",
    "aggregate",
    "calibrate",
    "environment",
    "parse_variants",
    "read_plan",
    "run_ablation",
    "run_config",
]
