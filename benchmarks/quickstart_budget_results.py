"""Settings compared at equal wall time: which use of a fixed number of CPU minutes trains the
best model (the study behind the ``quickstart`` preset, docs/results/quickstart-10min).

Each candidate is a ``mamlpp ablate --time-budget SECONDS --variants maml++`` folder: the
ablation measures this machine's speed for the candidate's settings and gives it as many
meta-iterations as fit in SECONDS. A candidate is picked by validation accuracy (its checkpoint
ensemble scored by ``mamlpp evaluate --split val`` on 600 fixed validation tasks), never by
test accuracy. ``mamlpp train`` runs of the chosen preset (one per seed, timed from the command
line) and runs of a family of settings at other budgets (``NAME@SECONDS`` folders) complete the
study. :func:`collect` reads the folders into one JSON-ready dict; :func:`render` and
:func:`plot` draw ``results.md`` and the charts from that dict alone, so the publishing tool
(``tools/publish_results.py``, which loads this file by its path) can redraw them without the
run folders.

Not part of the library: it serves this one study, whose conditions its text states as facts
(a 2-core CPU, the top-3 ensemble, the reference being the previous ``quickstart``). A study
under other conditions needs its own text. ``benchmarks/quickstart_budget.py`` runs the study
and calls :func:`collect` and :func:`write`.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mamlpp.errors import MamlppError
from mamlpp.run.run_dir import RunDir, json_text, read_json, read_metrics
from mamlpp.studies import plots
from mamlpp.util.format import duration, markdown_table, percent

KIND = "time-budget"
PLOT = "test-accuracy-vs-minutes.png"
CURVES = "val-accuracy-vs-minutes.png"
# Sets every candidate shares (bookkeeping, not a setting under study): left out of the table.
BOOKKEEPING = ("train.checkpoint_every=", "train.log_every=")


def family_and_budget(name: str) -> tuple[str, str]:
    """``"c32-t1@120"`` -> ``("c32-t1", "120")``; a plain name is the study's own budget."""
    family, _, budget = name.partition("@")
    return family, budget


# The epoch line of train.log: "epoch 3/100: val 70.80% ... | 11 s".
EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+: val ([\d.]+)%.*\| (\d+) s$")


def val_curve(run: Path) -> list[list[float]]:
    """``[[minutes since the start, validation accuracy], ...]`` per epoch: from the metrics'
    ``wall_s``, or for runs older than that field from the seconds train.log prints."""
    records = [r for r in read_metrics(run / "metrics.jsonl") if r.get("kind") == "val"]
    if records and all("wall_s" in r for r in records):
        return [[r["wall_s"] / 60, r["accuracy"]] for r in records]
    log = run / "train.log"
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    matches = [m for m in map(EPOCH_LINE.match, lines) if m]
    return [[int(m[3]) / 60, float(m[2]) / 100] for m in matches]


def collect_candidate(folder: Path, val_tasks: int = 600) -> dict[str, Any]:
    """One ablation folder (a single ``maml++`` seed-0 run) as a row of the study."""
    plan = read_json(folder / "ablation.json")
    if plan is None:
        raise MamlppError(f"{folder} is not an ablation folder (no ablation.json)")
    run = folder / "mamlpp" / "seed0"
    summary = read_json(run / "summary.json")
    if summary is None:
        raise MamlppError(f"{run} has not finished (no summary.json)")
    top_k = summary["ensemble_size"]
    val = read_json(RunDir(run).eval_record("val", top_k, val_tasks))
    sets = [s for s in plan["sets"] if not s.startswith(BOOKKEEPING)]
    calibration = plan.get("calibration") or {}
    regimes = calibration.get("variants", {}).get("maml++", {}).get("regimes", {})
    curve = val_curve(run)
    return {
        "name": folder.name,
        "sets": sets,
        "time_budget_s": plan.get("time_budget_s"),
        "iterations": summary["iterations"],
        "epochs": summary["epochs"],
        "ms_per_iteration": {k: 1000 * v["s_per_it"] for k, v in regimes.items()},
        "val_accuracy": None if val is None else val["accuracy"],
        "val_ci95": None if val is None else val["ci95"],
        "val_tasks": None if val is None else val["num_tasks"],
        "best_val_accuracy_per_epoch": summary.get("best_val_accuracy"),
        "test_accuracy": summary["test_accuracy"],
        "test_ci95": summary["test_ci95"],
        "test_tasks": summary["test_tasks"],
        "ensemble_size": top_k,
        "fit_time_s": summary.get("fit_time_s"),
        "wall_time_s": summary["wall_time_s"],
        "command": (read_json(run / "ablate.json") or {}).get("command"),
        "val_curve": curve,
    }


def collect_seed_run(folder: Path) -> dict[str, Any]:
    """A ``mamlpp train`` run of the chosen preset: its summary and ``command.json`` (the
    command line as typed and its wall time, written by the script that ran it)."""
    summary = read_json(folder / "summary.json")
    command = read_json(folder / "command.json")
    if summary is None or command is None:
        raise MamlppError(f"{folder} needs summary.json and command.json")
    return {
        "seed": command["seed"],
        "command": command["command"],
        "command_wall_s": command["wall_s"],
        "commit": command.get("commit"),
        "iterations": summary["iterations"],
        "test_accuracy": summary["test_accuracy"],
        "test_ci95": summary["test_ci95"],
        "test_tasks": summary["test_tasks"],
    }


def choose(candidates: Sequence[dict[str, Any]], budget_s: float) -> dict[str, Any]:
    """The candidate at the study's budget with the best validation accuracy."""
    scored = [
        c for c in candidates if c["time_budget_s"] == budget_s and c["val_accuracy"] is not None
    ]
    if not scored:
        raise MamlppError(f"no candidate at {budget_s:g} s has a validation score")
    return max(scored, key=lambda c: c["val_accuracy"])


def collect(
    folders: Sequence[Path],
    *,
    budget_s: float,
    reference: str,
    seed_runs: Sequence[Path] = (),
    environment: dict[str, Any] | None = None,
    conditions: str = "",
) -> dict[str, Any]:
    """The study as one dict (what ``results.json`` holds); ``conditions``: a sentence on what
    else the machine did meanwhile."""
    candidates = [collect_candidate(folder) for folder in folders]
    names = {c["name"] for c in candidates}
    if reference not in names:
        raise MamlppError(f"the reference {reference!r} is not among {sorted(names)}")
    chosen = choose(candidates, budget_s)
    return {
        "kind": KIND,
        "budget_s": budget_s,
        "reference": reference,
        "chosen": chosen["name"],
        "candidates": candidates,
        "seed_runs": [collect_seed_run(folder) for folder in seed_runs],
        "environment": environment or {},
        "conditions": conditions,
    }


def _pp(value: float) -> str:
    return f"{100 * value:+.2f}"


def _settings(candidate: dict[str, Any]) -> str:
    return " ".join(f"`{s}`" for s in candidate["sets"]) or "(none)"


def _at_budget(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidates given the study's own budget (not the ``NAME@SECONDS`` ones)."""
    return [c for c in results["candidates"] if c["time_budget_s"] == results["budget_s"]]


def single_changes(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Pairs of candidates at the study's budget whose settings differ in one key (added or
    changed), with the validation and test gains of the change; largest validation gain first."""
    at_budget = _at_budget(results)

    def settings(c: dict[str, Any]) -> dict[str, str]:
        return dict(s.split("=", 1) for s in c["sets"])

    reference = settings(next(c for c in at_budget if c["name"] == results["reference"]))

    def distance(c: dict[str, Any]) -> tuple[int, float]:
        """Settings away from the reference; a tie goes to the better validation score."""
        own = settings(c)
        keys = set(own) | set(reference)
        return sum(own.get(k) != reference.get(k) for k in keys), -(c["val_accuracy"] or 0.0)

    changes = []
    for before in at_budget:
        for after in at_budget:
            old, new = settings(before), settings(after)
            differ = [k for k in new if old.get(k) != new[k]]
            if len(differ) != 1 or not set(old) <= set(new):
                continue
            if set(old) == set(new) and distance(before) > distance(after):
                continue  # each pair once, from the side nearer the reference
            changes.append(
                {
                    "from": before["name"],
                    "to": after["name"],
                    "change": f"{differ[0]}={new[differ[0]]}",
                    "val_gain": after["val_accuracy"] - before["val_accuracy"],
                    "test_gain": after["test_accuracy"] - before["test_accuracy"],
                }
            )
    return sorted(changes, key=lambda c: -c["val_gain"])


def finding(results: dict[str, Any]) -> str:
    """One sentence on what mattered most, from the numbers: the single change with the
    largest validation gain, and the chosen candidate against the reference."""
    at_budget = _at_budget(results)
    by_name = {c["name"]: c for c in at_budget}
    ref, best = by_name[results["reference"]], by_name[results["chosen"]]
    changes = single_changes(results)
    largest = ""
    if changes:
        top = changes[0]
        largest = (
            f"The largest gain from a single change was `{top['change']}` "
            f"(`{top['from']}` -> `{top['to']}`: {_pp(top['val_gain'])} pp validation, "
            f"{_pp(top['test_gain'])} pp test); "
        )
    return (
        f"{largest}all changes together (`{best['name']}`) reached {best['iterations']} "
        f"iterations in the time the reference used for {ref['iterations']}, and "
        f"{_pp(best['val_accuracy'] - ref['val_accuracy'])} pp validation accuracy "
        f"({_pp(best['test_accuracy'] - ref['test_accuracy'])} pp test)."
    )


def _change_lines(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"`{c['change']}`",
            f"`{c['from']}` -> `{c['to']}`",
            _pp(c["val_gain"]),
            _pp(c["test_gain"]),
        ]
        for c in single_changes(results)
    ]
    if not rows:
        return []
    cis = [c["val_ci95"] for c in _at_budget(results) if c["val_ci95"] is not None]
    return [
        "## One change at a time",
        "",
        *markdown_table(["change", "candidates", "Δ val (pp)", "Δ test (pp)"], rows),
        "",
        "One run (seed 0) per candidate: a difference inside the runs' 95% confidence "
        f"intervals over tasks (± {percent(min(cis))} to ± {percent(max(cis))} pp on "
        "validation) is not resolved.",
        "",
    ]


# The calibration's schedule regimes, in the order of training: MSL epochs (first order), the
# rest of the first-order epochs, the second-order epochs.
REGIMES = (
    "msl=True,second_order=False",
    "msl=False,second_order=False",
    "msl=False,second_order=True",
)


def _regime_costs(ms_per_iteration: dict[str, float]) -> str:
    cells = [ms_per_iteration.get(key) for key in REGIMES]
    return " / ".join("-" if v is None else f"{v:.0f}" for v in cells)


def _candidate_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    at_budget = _at_budget(results)
    for c in sorted(at_budget, key=lambda c: -(c["val_accuracy"] or 0.0)):
        mark = " (chosen)" if c["name"] == results["chosen"] else ""
        mark += " (reference)" if c["name"] == results["reference"] else ""
        rows.append(
            [
                f"`{c['name']}`{mark}",
                _settings(c),
                f"{c['iterations']} ({c['epochs']} epochs)",
                _regime_costs(c["ms_per_iteration"]),
                f"{percent(c['val_accuracy'])} ± {percent(c['val_ci95'])}",
                f"{percent(c['test_accuracy'])} ± {percent(c['test_ci95'])}",
                duration(c["fit_time_s"]),
                duration(c["wall_time_s"]),
            ]
        )
    return rows


def _seed_lines(results: dict[str, Any]) -> list[str]:
    runs = results["seed_runs"]
    if not runs:
        return []
    accuracies = [r["test_accuracy"] for r in runs]
    spread = statistics.stdev(accuracies) if len(accuracies) > 1 else math.nan
    rows = [
        [
            str(r["seed"]),
            f"`{r['command']}`",
            str(r["iterations"]),
            f"{percent(r['test_accuracy'])} ± {percent(r['test_ci95'])}",
            duration(r["command_wall_s"]),
        ]
        for r in runs
    ]
    return [
        "## The new `quickstart`: `mamlpp train`, one run per seed",
        "",
        *markdown_table(
            ["seed", "command", "iterations", "test % ± 95% CI", "command wall time"], rows
        ),
        "",
        f"Mean over {len(runs)} seeds: **{percent(statistics.mean(accuracies))}%** "
        f"(std {percent(spread)} pp); longest command "
        f"{duration(max(r['command_wall_s'] for r in runs))}"
        " (the whole command: start-up, data loading, training, validation and the test).",
        "",
    ]


def _families(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Candidates run at more than one budget, by family, shortest budget first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in results["candidates"]:
        groups.setdefault(family_and_budget(c["name"])[0], []).append(c)
    return {
        family: sorted(group, key=lambda c: c["time_budget_s"])
        for family, group in groups.items()
        if len(group) > 1
    }


def _family_lines(results: dict[str, Any]) -> list[str]:
    families = _families(results)
    if not families:
        return []
    rows = [
        [
            f"`{family}`",
            f"{c['time_budget_s'] / 60:g} min",
            str(c["iterations"]),
            f"{percent(c['test_accuracy'])} ± {percent(c['test_ci95'])}",
            duration(c["wall_time_s"]),
        ]
        for family, group in families.items()
        for c in group
    ]
    return [
        "## What more (or less) time buys",
        "",
        "The same settings given other budgets (`NAME@SECONDS` folders; the budget covers "
        "training and validation, the test comes after).",
        "",
        *markdown_table(["settings", "budget", "iterations", "test % ± 95% CI", "wall time"], rows),
        "",
    ]


def render(results: dict[str, Any]) -> str:
    """``results.md`` from the dict of :func:`collect`."""
    env = results.get("environment", {})
    machine = ", ".join(
        f"{prefix}{env[key]}{suffix}"
        for key, prefix, suffix in (
            ("cpu", "", ""),
            ("cpu_count", "", " CPUs"),
            ("torch", "torch ", ""),
        )
        if env.get(key) is not None
    )
    lines = [
        f"# Omniglot 5-way 1-shot in {duration(results['budget_s'])} of CPU: which settings",
        "",
        "Generated by `python benchmarks/quickstart_budget.py aggregate` from the run folders "
        "(`python tools/publish_results.py regenerate` redraws it from results.json); do not "
        "edit by hand.",
        "",
        f"* Every candidate is MAML++ (all six techniques on) trained by `mamlpp ablate "
        f"--time-budget {results['budget_s']:g} --variants maml++`: the machine's speed is "
        "measured for the candidate's settings and it gets as many meta-iterations as fit in "
        "the budget (training and validation; the test comes after).",
        "* Chosen by validation accuracy: the top-3 checkpoint ensemble on 600 fixed "
        "validation tasks (`mamlpp evaluate RUN --split val --tasks 600`); the test accuracy "
        "(600 fixed test tasks, the same in every run) was not used to choose.",
        f"* Reference `{results['reference']}`: the previous `quickstart` settings.",
        f"* Machine: {machine or 'not recorded'}. {results.get('conditions', '')}".rstrip(),
        "",
        f"**What mattered.** {finding(results)}",
        "",
        "## Candidates at equal wall time",
        "",
        *markdown_table(
            [
                "candidate",
                "settings over the omniglot-5w1s preset",
                "iterations reached",
                "ms / iteration: MSL / 1st order / 2nd order",
                "val % ± 95% CI (600 tasks)",
                "test % ± 95% CI (600 tasks)",
                "training + validation",
                "wall time with the test",
            ],
            _candidate_rows(results),
        ),
        "",
        "ms / iteration: the calibration's measurement at the start of each run, per schedule "
        "regime (the MSL epochs, in first order; the other first-order epochs; the "
        "second-order epochs); from it the budget's iterations are set, aiming at 90% of "
        "the budget. Training + validation: what the budget covers, as the run measured it; "
        "wall time: that and the test (`summary.json`), without start-up and data loading.",
        "",
        f"![test accuracy against CPU minutes]({PLOT})",
        "",
        f"![validation accuracy against minutes]({CURVES})",
        "",
        *_change_lines(results),
        *_seed_lines(results),
        *_family_lines(results),
        "## Commands",
        "",
        "Each candidate's `mamlpp train` command as `mamlpp ablate` ran it (with the iterations "
        "per epoch its calibration measured); `benchmarks/quickstart_budget.py` lists the "
        "candidates and runs them.",
        "",
        "```bash",
        *[c["command"] for c in results["candidates"] if c.get("command")],
        "```",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], folder: Path) -> list[Path]:
    """Two charts: test accuracy against the minutes each run took (families at several
    budgets as lines, the other candidates as points), and the validation curves of the
    candidates at the study's budget against minutes."""
    families = _families(results)
    in_family = {c["name"] for group in families.values() for c in group}
    roles = {results["reference"]: " (previous quickstart)", results["chosen"]: " (new quickstart)"}
    groups = [(family + roles.get(family, ""), group) for family, group in families.items()]
    groups += [(c["name"], [c]) for c in results["candidates"] if c["name"] not in in_family]
    series = [
        plots.Series(
            label,
            [c["wall_time_s"] / 60 for c in group],
            [100 * c["test_accuracy"] for c in group],
            markers=True,
        )
        for label, group in groups
    ]
    written = [
        plots.line_chart(
            folder / PLOT,
            series,
            "Omniglot 5-way 1-shot MAML++: test accuracy against CPU minutes",
            "minutes of training, validation and test (2-core CPU)",
            "test accuracy (%, 600 tasks)",
        )
    ]
    at_budget = _at_budget(results)
    curves = [
        plots.Series(
            c["name"], [p[0] for p in c["val_curve"]], [100 * p[1] for p in c["val_curve"]]
        )
        for c in sorted(at_budget, key=lambda c: -(c["val_accuracy"] or 0.0))
        if c["val_curve"]
    ]
    if curves:
        written.append(
            plots.line_chart(
                folder / CURVES,
                curves,
                "Validation accuracy (50 tasks per epoch) during training",
                "minutes since the start of training",
                "validation accuracy (%)",
            )
        )
    return written


def write(results: dict[str, Any], folder: Path) -> list[Path]:
    """results.json, results.md and the charts into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json_text(results, indent=2, sort_keys=False)  # strict: null for a non-finite number
    (folder / "results.json").write_text(text + "\n", encoding="utf-8")
    (folder / "results.md").write_text(render(results), encoding="utf-8")
    return [folder / "results.json", folder / "results.md", *plot(results, folder)]


def redraw(folder: Path) -> list[Path]:
    """results.md and the charts again from ``folder/results.json`` (the publishing tool)."""
    results = read_json(folder / "results.json")
    if results is None or results.get("kind") != KIND:
        raise MamlppError(f"{folder}/results.json is not a {KIND} study")
    return write(results, folder)


def section_lines(name: str, results: dict[str, Any], link: str) -> list[str]:
    """The study's subsection of the README's results section (``name``: its folder in
    docs/results): a heading, the chosen settings, the seeds' mean test accuracy and the
    reference at the same budget; ``link`` points at results.md."""
    by_name = {c["name"]: c for c in results["candidates"]}
    chosen, ref = by_name[results["chosen"]], by_name[results["reference"]]
    lines = [
        f"### {name}: the quickstart's settings",
        "",
        f"Omniglot 5-way 1-shot MAML++ with {duration(results['budget_s'])} for training and "
        f"validation on a 2-core CPU, settings chosen by validation accuracy among "
        f"{len(_at_budget(results))} "
        f"candidates. Details: [{link}]({link}).",
        "",
    ]
    rows = [
        [
            f"`{c['name']}`" + (" (the previous quickstart's)" if c is ref else " (chosen)"),
            _settings(c),
            str(c["iterations"]),
            f"{percent(c['val_accuracy'])}",
            f"{percent(c['test_accuracy'])} ± {percent(c['test_ci95'])}",
        ]
        for c in (ref, chosen)
    ]
    lines += markdown_table(
        ["settings", "overrides", "iterations", "val %", "test % ± 95% CI (seed 0)"], rows
    )
    runs = results["seed_runs"]
    if runs:
        accuracies = [r["test_accuracy"] for r in runs]
        lines += [
            "",
            f"`mamlpp train` (the new quickstart), {len(runs)} seeds: "
            f"**{percent(statistics.mean(accuracies))}%** mean test accuracy (per seed "
            + ", ".join(f"{percent(r['test_accuracy'])} ± {percent(r['test_ci95'])}" for r in runs)
            + f"), each command at most {duration(max(r['command_wall_s'] for r in runs))}.",
        ]
    for family, group in _families(results).items():
        name = "previous" if family == results["reference"] else "new"
        points = ", ".join(
            f"{c['time_budget_s'] / 60:g} min {percent(c['test_accuracy'])}%" for c in group
        )
        lines += [
            "",
            f"The {name} settings (`{family}`), test accuracy by the time given to training "
            f"and validation: {points}.",
        ]
    return lines
