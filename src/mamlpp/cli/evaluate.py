"""``mamlpp evaluate``: score a run's top-k ensemble on fixed validation or test tasks."""

from __future__ import annotations

import argparse

from mamlpp.cli.options import add_data_options
from mamlpp.errors import ConfigError
from mamlpp.util.format import plural


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a run's top-k checkpoint ensemble on fixed tasks",
        description="Mean accuracy and a 95% confidence interval over fixed tasks, averaging "
        "the logits of the top-k checkpoints by validation accuracy. Writes "
        "RUN_DIR/eval-<split>-top<k>-<tasks>.json.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument(
        "--tasks",
        type=int,
        help="number of fixed tasks (default: the run's eval setting, 600 in the paper presets)",
    )
    parser.add_argument(
        "--top-k", type=int, help="checkpoints in the ensemble (default: the run's eval.top_k)"
    )
    add_data_options(parser)
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from mamlpp.data import EpisodeSampler
    from mamlpp.run.build import build_learner, resolve_device
    from mamlpp.run.datasource import load_splits
    from mamlpp.run.evaluate import ensemble_paths, evaluate, load_member
    from mamlpp.run.run_dir import read_run_config, require_run_dir, write_json

    run = require_run_dir(args.run_dir)
    config = read_run_config(run)
    e, d = config.eval, config.data
    tasks = (
        args.tasks
        if args.tasks is not None
        else (e.test_tasks if args.split == "test" else e.val_tasks)
    )
    top_k = args.top_k if args.top_k is not None else e.top_k
    if tasks < 1 or top_k < 1:
        raise ConfigError(f"--tasks and --top-k must be >= 1, got {tasks} and {top_k}")
    device = resolve_device(args.device)
    paths = ensemble_paths(run, top_k)
    splits = load_splits(d, args.data_dir, download=not args.no_download, progress=False)
    split = splits[args.split]
    seed = e.test_seed if args.split == "test" else e.val_seed
    sampler = EpisodeSampler(split, d.ways, d.shots, d.targets, seed, device)
    template = build_learner(config, split.image_shape[0], device)
    members = [load_member(template, p, device) for p in paths]
    threads = torch.get_num_threads()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    try:
        result = evaluate(members, sampler, tasks, e.batch_size)
    finally:
        torch.set_num_threads(threads)
    names = ", ".join(p.name for p in paths)
    if len(paths) < top_k:
        print(f"note: only {plural(len(paths), 'checkpoint')} kept in {run.checkpoints}")
    print(f"{args.split}: {result.describe()} [{names}]")
    out = run.root / f"eval-{args.split}-top{top_k}-{tasks}.json"
    write_json(
        out,
        {
            "split": args.split,
            "accuracy": result.accuracy,
            "ci95": result.ci95,
            "loss": result.loss,
            "num_tasks": result.num_tasks,
            "ensemble_size": result.ensemble_size,
            "checkpoints": [p.name for p in paths],
            "per_task_accuracies": result.per_task_accuracies,
        },
    )
    return 0
