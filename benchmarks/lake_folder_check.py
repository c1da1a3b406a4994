"""A cross-check of the ``omniglot-lake`` figures through the image-folder path.

Issue 27 opened with figures from a model trained on the 964 background characters as a plain
folder of classes (the quickstart's settings at 20 ways) and then tested on within-alphabet,
drawer-disjoint 20-way 1-shot tasks. This script redoes that trial with the library's own
commands, so its error can be set beside the built-in ``omniglot-lake`` protocol's:

``layout``: writes Omniglot's PNGs (from the zips or the subsets extracted), unchanged, as two
    folders under ``--out``: ``flat/<Alphabet>__<characterNN>/`` (the 964 background
    characters, nothing held out by alphabet: the trial's training folder) and
    ``lake/{train,val,test}/<Alphabet>/<characterNN>/`` (the ``omniglot-lake`` splits: 25 + 5
    background alphabets, the 20 evaluation alphabets).
``train``: ``mamlpp train`` on ``flat/`` (a folder dataset: 70% of its classes train, the
    quickstart's settings at 20 ways, 30 epochs of 50 iterations).
``score``: copies the run to ``RUN-lake``, points the copy's data settings at ``lake/`` (groups =
    alphabets, sources = drawers from the file names) and scores it with ``mamlpp evaluate
    --allow-other-data`` on the 600 fixed test tasks, one image at a time and as a batch: tasks
    within one alphabet (the challenge; the same tasks as ``omniglot-lake``'s test) and tasks of
    letters from any evaluation alphabet (``--episodes random``).
``table``: results.json and results.md in ``--out`` from the scored copies' records, one block
    of rows per run (the issue's trial had two: 1,500 and 5,000 iterations).

    python benchmarks/lake_folder_check.py layout --data-dir DIR --out FOLDERS
    python benchmarks/lake_folder_check.py train --folders FOLDERS --out RUN
    python benchmarks/lake_folder_check.py train --folders FOLDERS --out RUN2 --set train.epochs=100
    python benchmarks/lake_folder_check.py score --folders FOLDERS RUN
    python benchmarks/lake_folder_check.py score --folders FOLDERS RUN2
    python benchmarks/lake_folder_check.py table RUN RUN2 --out OUT
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from mamlpp.data.omniglot import drawings, find_omniglot, lake_alphabets
from mamlpp.run.run_dir import RunDir

EVALUATION = "images_evaluation"  # the 20 evaluation alphabets' subset
# The drawer of ``CCCC_DD.png`` (Lake et al.'s file names): the image's source.
DRAWER_PATTERN = r"_(\d+)\.png$"
# The trial's settings but its length, and the whole of them (30 epochs of 50: 1,500 iterations).
FIXED_SETTINGS = ["data.dataset=folder", "data.ways=20"]
TRAIN_SETTINGS = [*FIXED_SETTINGS, "train.epochs=30"]
# The challenge's tasks, and 20 letters from any evaluation alphabet (mamlpp evaluate --episodes).
PROTOCOLS = ("within-group", "random")


def _run(argv: list[str]) -> None:
    print("+ " + shlex.join(argv), flush=True)
    subprocess.run(argv, check=True)


def layout(data_dir: str, out: Path) -> None:
    source = find_omniglot(data_dir)
    if source is None:
        raise SystemExit(f"no Omniglot under {data_dir}")
    if out.exists():
        raise SystemExit(f"{out} exists: choose a new folder")
    files = list(drawings(source))  # (subset, "Alphabet/characterNN", file name, PNG bytes)
    names = sorted({character for _, character, _, _ in files})
    evaluation_set = {character for subset, character, _, _ in files if subset == EVALUATION}
    evaluation = np.array([name in evaluation_set for name in names])
    splits = lake_alphabets(names, evaluation)
    split_of = {alphabet: split for split, alphabets in splits.items() for alphabet in alphabets}
    for subset, character, name, data in files:
        alphabet, glyph = character.split("/")
        folders = [out / "lake" / split_of[alphabet] / alphabet / glyph]
        if subset != EVALUATION:
            folders.append(out / "flat" / f"{alphabet}__{glyph}")
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    print(f"wrote {out / 'flat'} and {out / 'lake'}")


def train(folders: Path, out: Path, extra: list[str]) -> None:
    sets = [arg for s in [*TRAIN_SETTINGS, *extra] for arg in ("--set", s)]
    _run(["mamlpp", "train", "--data-dir", str(folders / "flat"), *sets, "--out", str(out)])


def score(folders: Path, run: Path) -> None:
    scored = run.with_name(run.name + "-lake")
    if not scored.exists():
        shutil.copytree(run, scored)
        config_path = scored / "config.toml"
        config = tomllib.loads(config_path.read_text(encoding="utf-8"))
        config["data"].update(
            groups="folders",
            sources="pattern",
            source_pattern=DRAWER_PATTERN,
            eval_episodes="within-group",
        )
        config_path.write_text(tomli_w.dumps(config), encoding="utf-8")
    data = ["--data-dir", str(folders / "lake"), "--allow-other-data"]
    for episodes in PROTOCOLS:
        for single in (["--one-at-a-time"], []):
            argv = ["mamlpp", "evaluate", str(scored), "--split", "test", "--tasks", "600"]
            argv += ["--top-k", "3", "--episodes", episodes]
            _run([*argv, *single, *data])


def _error(scored: Path, episodes: str, single: bool) -> dict[str, Any] | None:
    """The error (%) and CI of one evaluation record, with its tasks' fingerprint."""
    other_episodes = None if episodes == "within-group" else episodes
    pattern = RunDir(scored).eval_record(
        "test", 3, 600, one_at_a_time=single, episodes=other_episodes, other_data="*"
    )
    records = sorted(scored.glob(pattern.name))
    if not records:
        return None
    record = json.loads(records[0].read_text(encoding="utf-8"))
    return {
        "error": 100 * (1 - record["accuracy"]),
        "ci95": 100 * record["ci95"],
        "task_fingerprint": record["task_fingerprint"],
    }


def _scored_run(run: Path) -> dict[str, Any]:
    """One trained and scored run: its training (the trial's settings, the epochs it ran) and
    its 4 test errors."""
    scored = run.with_name(run.name + "-lake")
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    config = tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))
    settings = [*FIXED_SETTINGS, f"train.epochs={config['train']['epochs']}"]
    return {
        "run": run.name,
        "training": {"settings": settings, "iterations": summary["iterations"]},
        "test_error": {
            f"{episodes}_{'single' if single else 'batch'}": _error(scored, episodes, single)
            for episodes in PROTOCOLS
            for single in (True, False)
        },
    }


def table(runs: list[Path], out: Path, conditions: str) -> None:
    """results.json and results.md: one block of rows per run, in the order given."""
    scored = [_scored_run(run) for run in runs]
    results = {"conditions": conditions, "runs": scored}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    def cell(scores: dict[str, Any], key: str) -> str:
        value = scores[key]
        return "—" if value is None else f"{value['error']:.2f} ± {value['ci95']:.2f}"

    lines = [
        "# Lake's Omniglot challenge through the image-folder path",
        "",
        "The 964 background characters as a folder of classes, `mamlpp train --set "
        f"{' --set '.join(FIXED_SETTINGS)} --set train.epochs=E`, "
        "scored on the 600 fixed 20-way 1-shot test tasks of the 20 evaluation alphabets "
        f"(error %, 95% CI, top-3 ensemble). {conditions}",
        "",
        "| training | test tasks | one image at a time | queries as a batch |",
        "|---|---|---|---|",
    ]
    for one in scored:
        scores, training = one["test_error"], one["training"]
        label = f"{training['iterations']} iterations (`{training['settings'][-1]}`)"
        lines += [
            f"| {label} | within one alphabet, support and query by other drawers (the "
            f"challenge) | {cell(scores, 'within-group_single')} "
            f"| {cell(scores, 'within-group_batch')} |",
            f"| {label} | letters from any evaluation alphabet | "
            f"{cell(scores, 'random_single')} | {cell(scores, 'random_batch')} |",
        ]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("layout", help="write the flat and Lake folders from the zips")
    make.add_argument("--data-dir", required=True, help="folder holding Omniglot's zips")
    make.add_argument("--out", type=Path, required=True)
    fit = commands.add_parser("train", help="the trial's training on flat/")
    fit.add_argument("--folders", type=Path, required=True)
    fit.add_argument("--out", type=Path, required=True)
    fit.add_argument("--set", action="append", default=[], help="more settings, KEY=VALUE")
    test = commands.add_parser("score", help="score a run on lake/'s test tasks")
    test.add_argument("--folders", type=Path, required=True)
    test.add_argument("run", type=Path)
    publish = commands.add_parser("table", help="results.json and results.md of scored runs")
    publish.add_argument("runs", type=Path, nargs="+", metavar="RUN")
    publish.add_argument("--out", type=Path, required=True)
    publish.add_argument("--conditions", default="", help="machine, versions, commit")
    args = parser.parse_args(argv)
    if args.command == "layout":
        layout(args.data_dir, args.out)
    elif args.command == "train":
        train(args.folders, args.out, args.set)
    elif args.command == "score":
        score(args.folders, args.run)
    else:
        table(args.runs, args.out, args.conditions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
