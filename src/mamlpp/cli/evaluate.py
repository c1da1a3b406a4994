"""``mamlpp evaluate``: score a run's top-k ensemble on fixed validation or test tasks."""

from __future__ import annotations

import argparse
import dataclasses

from mamlpp.cli.options import add_data_options
from mamlpp.errors import ConfigError
from mamlpp.util.format import plural


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a run's top-k checkpoint ensemble on fixed tasks",
        description="Mean accuracy and a 95% confidence interval over fixed tasks, averaging "
        "the logits of the top-k checkpoints by validation accuracy. Writes "
        "RUN_DIR/eval-<split>-top<k>-<tasks>.json. The data must be the run's own (data.json): "
        "other data is refused unless --allow-other-data is given.",
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
    parser.add_argument(
        "--allow-other-data",
        action="store_true",
        help="score the run on data other than its own (refused otherwise); the result goes to "
        "eval-<split>-top<k>-<tasks>-otherdata-<fingerprint>.json and says so",
    )
    parser.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="predict each query image on its own, normalised with the support set's batch-norm "
        "statistics (what mamlpp adapt and serve do for one image; the same as the batch for a "
        "bn_mode=support run); the result goes to eval-<split>-top<k>-<tasks>-single.json",
    )
    parser.add_argument(
        "--episodes",
        choices=("random", "within-group"),
        help="the tasks' protocol: random (classes from anywhere, the usual few-shot benchmark) "
        "or within-group (every class of a task from one group, support and query from "
        "different sources where the data has them, as in Lake's Omniglot challenge); default: "
        "the run's data.eval_episodes. A protocol other than the run's scores other tasks: the "
        "result goes to eval-<split>-top<k>-<tasks>[-single]-<episodes>.json",
    )
    add_data_options(parser)
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from mamlpp.run.build import build_learner, resolve_device
    from mamlpp.run.data_place import check_before_loading, recorded_data_dir
    from mamlpp.run.data_record import check_members, data_record, evaluation_data, run_record
    from mamlpp.run.datasource import load_splits
    from mamlpp.run.episodes import episode_sampler, fine_grained_evaluation
    from mamlpp.run.evaluate import evaluate, member_from_state, task_fingerprint
    from mamlpp.run.predictor import with_bn_mode
    from mamlpp.run.run_dir import (
        RunCheckpoints,
        read_json,
        read_run_config,
        require_run_dir,
        write_json,
    )

    run = require_run_dir(args.run_dir)
    config = read_run_config(run)
    e, d = config.eval, config.data
    # Another protocol scores other tasks: they get a file of their own and no comparison with
    # the fingerprint of the run's own test tasks.
    other_episodes: str | None = None
    if args.episodes is not None:
        asked = dataclasses.replace(d, eval_episodes=args.episodes)
        if fine_grained_evaluation(asked) != fine_grained_evaluation(d):
            other_episodes = args.episodes
            config = dataclasses.replace(config, data=asked)
    tasks = (
        args.tasks
        if args.tasks is not None
        else (e.test_tasks if args.split == "test" else e.val_tasks)
    )
    top_k = args.top_k if args.top_k is not None else e.top_k
    if tasks < 1 or top_k < 1:
        raise ConfigError(f"--tasks and --top-k must be >= 1, got {tasks} and {top_k}")
    device = resolve_device(args.device)
    checkpoints = RunCheckpoints(run)
    ensemble = checkpoints.ensemble(top_k)
    newest = checkpoints.newest()
    run_data = run_record(run, newest.state if newest is not None else None)
    check_members(run, run_data, [(m.path, m.state) for m in ensemble])
    where, place_note = recorded_data_dir(d, args.data_dir, run_data)
    if place_note is not None:
        print(f"note: {place_note}")
    if not args.allow_other_data:  # own images: refused from their listing, nothing written
        shape = newest.state.get("shape") if newest is not None else None
        allow = "pass --allow-other-data to score it on this data anyway"
        check_before_loading(run, d, where, run_data, shape, allow)
    splits = load_splits(d, where, download=not args.no_download, progress=False)
    record = data_record(d.dataset, splits)
    split = splits[args.split]
    seed = e.test_seed if args.split == "test" else e.val_seed
    sampler = episode_sampler(config, split, args.split, seed, device)
    fingerprint = task_fingerprint(sampler, tasks)
    summary = read_json(run.summary) or {}
    comparable = args.split == "test" and summary.get("test_tasks") == tasks and not other_episodes
    stored = summary.get("test_fingerprint") if comparable else None
    task_check = (stored, fingerprint) if stored else None
    own, notes = evaluation_data(run, run_data, record, task_check, args.allow_other_data)
    template = build_learner(config, split.image_shape[0], device)
    members = [member_from_state(template, m.state["model"], m.path, device) for m in ensemble]
    if args.one_at_a_time:
        # Support-set statistics make each query's logits depend on it and the support alone:
        # one image at a time, computed for all queries in one batched call.
        members = [with_bn_mode(member, "support") for member in members]
    names = [m.path.name for m in ensemble]
    del ensemble, newest  # the checkpoints' optimiser states are not needed any more
    threads = torch.get_num_threads()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    try:
        result = evaluate(members, sampler, tasks, e.batch_size)
    finally:
        torch.set_num_threads(threads)
    for note in notes:
        print(f"note: {note}")
    if len(names) < top_k:
        print(f"note: only {plural(len(names), 'checkpoint')} kept in {run.checkpoints}")
    how = " (one query image at a time)" if args.one_at_a_time else ""
    how += f" ({args.episodes} tasks)" if other_episodes else ""
    print(f"{args.split}{how}: {result.describe()} [{', '.join(names)}]")
    # Scores on other data never replace the run's own: they get a name of their own.
    out = run.eval_record(
        args.split,
        top_k,
        tasks,
        one_at_a_time=args.one_at_a_time,
        episodes=other_episodes,
        other_data=record["fingerprint"][:8] if own is False else None,
    )
    write_json(
        out,
        {
            "split": args.split,
            "accuracy": result.accuracy,
            "ci95": result.ci95,
            "loss": result.loss,
            "num_tasks": result.num_tasks,
            "one_at_a_time": bool(args.one_at_a_time),
            "within_group": sampler.within_group,
            "ensemble_size": result.ensemble_size,
            "checkpoints": names,
            "per_task_accuracies": result.per_task_accuracies,
            "task_fingerprint": fingerprint,
            # The data scored on; own_data: true (the run's), false (--allow-other-data) or
            # null (a run without a data record: not known).
            "data": record,
            "own_data": own,
            **({"run_data": run_data} if own is False else {}),
        },
    )
    print(f"written to {out}")
    return 0
