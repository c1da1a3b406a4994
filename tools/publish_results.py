"""Publishing measured results: provenance, copies of ablation outputs, the "Results" section.

A documentation tool, not part of the library: used by ``benchmarks/cpu_study.sh`` (and by hand
after ``benchmarks/gpu_repro.sh``); nothing here trains. ``python tools/publish_results.py
publish`` copies each study's generated files (``results.md``,
``results.json``, plots, ``report/``) from its ablation folder into ``docs/results/<name>/``,
writes ``docs/results/PROVENANCE.md`` (commands, git commit, versions, hardware, wall times)
and ``docs/results/RESULTS.md`` (the Results section: numbers next to the paper's, speed next
to the authors' code, commands), and can fill that section into a Markdown file between the
markers ``<!-- results:begin -->`` and ``<!-- results:end -->``.
Every number in these files is read from the studies' ``results.json``; none is typed in.
Nothing published names a folder of the machine it ran on: the study folder becomes
``STUDY_DIR``, the data folder ``DATA_DIR`` and the home folder ``~`` (:func:`portable`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from mamlpp.errors import ConfigError, MamlppError
from mamlpp.studies.ablate.render import findings
from mamlpp.util.format import duration, markdown_table, percent


def _script(relative: str) -> ModuleType:
    """A file of this repository outside the library (benchmarks/), loaded as a module by its
    path: the library never imports benchmarks/, a tool may."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise MamlppError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The time-budget study behind the quickstart preset (docs/results/quickstart-10min): the script
# that ran it also draws its results.md, charts and Results subsection.
budget = _script("benchmarks/quickstart_budget_results.py")

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
TABLE_HEADER = [
    "variant",
    "techniques",
    "seeds",
    "test % (mean ± std over seeds)",
    "Δ vs MAML (pp)",
    "95% CI over tasks",
    "it/s",
    "published (MAML: Finn et al.; MAML++: the paper)",
]

# Spec section 4 (test accuracy %, 5 inner steps, 50,000 iterations): MAML (Finn et al. 2017)
# and MAML++ (the paper), keyed by (dataset, ways, shots).
PAPER = {
    ("omniglot", 5, 1): {"maml": "98.7 ± 0.4", "maml++": "99.47"},
    ("omniglot", 5, 5): {"maml": "99.9 ± 0.1", "maml++": "99.93"},
    ("omniglot", 20, 1): {"maml": "95.8 ± 0.3", "maml++": "97.65"},
    ("omniglot", 20, 5): {"maml": "98.9 ± 0.2", "maml++": "99.33"},
    ("mini-imagenet", 5, 1): {"maml": "48.70 ± 1.84", "maml++": "52.15 ± 0.26"},
    ("mini-imagenet", 5, 5): {"maml": "63.11 ± 0.92", "maml++": "68.32 ± 0.44"},
}
# Spec section 5: the authors' code, seconds per meta-iteration on one H100 (torch 2.11).
REFERENCE_S_PER_IT = {("omniglot", 5, 1): 0.454, ("omniglot", 20, 1): 0.459}


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment() -> dict[str, Any]:
    """The machine's description (versions, hardware) plus the git commit, for provenance."""
    from mamlpp.studies.ablate import environment as machine

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        **machine(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


# ------------------------------------------------------------------------------ publishing


_OUT_VALUE = re.compile(r"--out[ =](/[^\s`'\"]+)")
_STUDY_SCRIPT = re.compile(r"cpu_study\.sh (/[^\s`'\"]+)")
_DATA_DIR = re.compile(r"(--data-dir[ =])[^\s`'\"]+")


def study_roots(commands: Sequence[str]) -> list[str]:
    """The folders the studies were written under: the parents of ``--out`` folders and the
    argument of ``cpu_study.sh``, keeping only the outermost of nested ones."""
    found = {m for line in commands for m in _STUDY_SCRIPT.findall(line)}
    found |= {str(Path(m).parent) for line in commands for m in _OUT_VALUE.findall(line)}
    outer = [r for r in found if not any(r != o and r.startswith(o + "/") for o in found)]
    return sorted(outer, key=len, reverse=True)


def portable(text: str, roots: Sequence[str]) -> str:
    """``text`` without this machine's folders: study roots -> ``STUDY_DIR``, ``--data-dir X``
    -> ``--data-dir DATA_DIR``, the home folder -> ``~``."""
    text = _DATA_DIR.sub(r"\1DATA_DIR", text)
    for root in roots:
        text = text.replace(root, "STUDY_DIR")
    return text.replace(str(Path.home()) + "/", "~/")


def make_portable(dest: Path, roots: Sequence[str]) -> None:
    """Rewrite every published text file under ``dest`` with :func:`portable`."""
    for path in sorted(dest.rglob("*")):
        if path.is_file() and path.suffix in (".md", ".json", ".txt"):
            text = path.read_text(encoding="utf-8")
            if portable(text, roots) != text:
                path.write_text(portable(text, roots), encoding="utf-8")


def copy_study(source: Path, dest: Path) -> list[Path]:
    """Copy an ablation folder's generated files (not its runs) into ``dest``."""
    if not (source / "results.json").is_file():
        raise MamlppError(f"{source} has no results.json (run `mamlpp ablate` there first)")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and (
            path.name in ("results.md", "results.json") or path.suffix in (".png", ".txt")
        ):
            shutil.copy2(path, dest / path.name)
            copied.append(dest / path.name)
    if (source / "report").is_dir():
        shutil.copytree(source / "report", dest / "report")
        copied.append(dest / "report")
    return copied


def load_study(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise MamlppError(f"cannot read {folder / 'results.json'}: {error}") from None


def _acc(row: dict[str, Any]) -> str:
    mean, std = row.get("mean_test_accuracy"), row.get("std_test_accuracy")
    if mean is None:
        return "-"
    return percent(mean) + (f" ± {percent(std)}" if std is not None else "")


def _delta(name: str, delta: float | None) -> str:
    if name == "maml":
        return "(reference)"
    return "-" if delta is None else f"{100 * delta:+.2f}"


def _device_of(study: dict[str, Any]) -> str:
    devices = {r.get("device") for v in study["variants"] for r in v["runs"] if r.get("device")}
    return ", ".join(sorted(devices)) or "-"


def results_section(
    studies: dict[str, dict[str, Any]],
    benches: Sequence[dict[str, Any]],
    commands: Sequence[str],
    base: str = "docs/results/",
    compact: bool = False,
    budget_studies: dict[str, dict[str, Any]] | None = None,
) -> str:
    """The README's "Results" section, generated from the studies' results.json; ``base`` is
    the link prefix from the including file to the docs/results folder. ``compact`` (the
    README, which is kept short) ends after the GPU outcome with a link to the full section's
    speed figures and commands."""
    lines = [
        "## Results",
        "",
        f"Generated by `python tools/publish_results.py publish` from the files in [{base or './'}]"
        f"({base or './'}); every number below was measured with this repository's code at the "
        f"commit PROVENANCE.md gives for its study (only the paper's column is quoted). "
        f"Commands, versions and hardware: [{base}PROVENANCE.md]({base}PROVENANCE.md).",
    ]
    for name, results in (budget_studies or {}).items():
        lines += ["", *budget.section_lines(name, results, f"{base}{name}/results.md")]
    for name, study in studies.items():
        s = study["settings"]
        key = (s["dataset"], s["ways"], s["shots"])
        paper = PAPER.get(key, {})
        lines += [
            "",
            f"### {name}: {s['dataset']} {s['ways']}-way {s['shots']}-shot, "
            f"{s['budget']} meta-iterations per run",
            "",
            f"{s['epochs']} epochs x {s['iterations_per_epoch']} iterations x "
            f"{s['tasks_per_batch']} tasks (the paper: 100 x 500), {s['val_tasks']} validation "
            f"tasks per epoch, top-{s['top_k']} ensemble on {study['test_tasks']['count']} fixed "
            f"test tasks, device {_device_of(study)}. Details: "
            f"[{base}{name}/results.md]({base}{name}/results.md).",
            "",
        ]
        rows = []
        for row in study["variants"]:
            ci = row.get("mean_test_ci95")
            its = row.get("mean_iterations_per_second")
            rows.append(
                [
                    f"`{row['name']}`",
                    row["label"],
                    f"{len(row['seeds_complete'])}/{row['seeds_requested']}",
                    _acc(row),
                    _delta(row["name"], row.get("delta_vs_maml")),
                    "-" if not ci else f"± {percent(ci)}",
                    "-" if its is None else f"{its:.2f}",
                    paper.get(row["name"], "-"),
                ]
            )
        lines += markdown_table(TABLE_HEADER, rows)
        sentences = _study_findings(study)
        if sentences:
            lines += ["", *sentences]
    lines += ["", "### GPU reproduction", "", *_gpu_lines(studies)]
    if compact:
        lines += [
            "",
            f"Speed figures and the commands behind every study: [{base}RESULTS.md]"
            f"({base}RESULTS.md) and [docs/reproduce.md](docs/reproduce.md).",
        ]
        return "\n".join(lines) + "\n"
    lines += ["", "### Speed", ""]
    lines += _speed_lines(studies, benches)
    lines += [
        "",
        "### Reproduce",
        "",
        "```bash",
        *commands,
        "```",
        "",
        "The paper's full runs (100 epochs x 500 iterations, 600 validation and test tasks, "
        "top-5 ensemble), one per preset and seed, e.g.:",
        "",
        "```bash",
        "mamlpp train --preset omniglot-5w1s --set train.seed=0 --out runs/omniglot-5w1s-s0",
        "mamlpp train --preset omniglot-5w1s-maml --set train.seed=0 "
        "--out runs/omniglot-5w1s-maml-s0",
        "mamlpp ablate --dataset omniglot --ways 5 --shots 1 --seeds 0,1,2   # full grid, "
        "paper budget",
        "```",
        "",
        "`docs/reproduce.md` explains every setting of these studies and their cost.",
    ]
    return "\n".join(lines) + "\n"


def _study_findings(study: dict[str, Any]) -> list[str]:
    """The sentences `mamlpp ablate` writes in results.md, and a warning if the runs were tested
    on different tasks."""
    out = findings(study)
    if not study["test_tasks"].get("identical", True):
        out.append("**WARNING: the runs of this study were tested on different tasks.**")
    return out


# Omniglot N-way 1-shot MAML++ on a GPU: N -> (target of benchmarks/gpu_repro.sh, the paper).
GPU_TARGETS = {5: (0.994, 0.9947), 20: (0.970, 0.9765)}


def _gpu_lines(studies: dict[str, dict[str, Any]]) -> list[str]:
    """Each GPU reproduction's outcome against its target, or that none has run."""
    out = []
    for name, study in studies.items():
        rows = {r["name"]: r for r in study["variants"]}
        plus = rows.get("maml++")
        if plus is None or "cuda" not in _device_of(study) or plus["mean_test_accuracy"] is None:
            continue
        s = study["settings"]
        target, paper = GPU_TARGETS.get(s["ways"], (None, None))
        acc, ci = plus["mean_test_accuracy"], plus["mean_test_ci95"]
        limit = s.get("time_budget_s")
        within = f" (time budget {limit:g} s of training)" if limit else ""
        verdict = (
            f" Target >= {percent(target)}%: {'met' if acc >= target else 'NOT met'}. The paper: "
            f"{percent(paper)}% after 50,000 iterations."
            if target is not None
            else ""
        )
        out.append(
            f"{name}: Omniglot {s['ways']}-way {s['shots']}-shot MAML++ on "
            f"{study['environment'].get('gpu') or 'cuda'}, {s['budget']} meta-iterations{within}: "
            f"test {percent(acc)}% ± {percent(ci)} (95% CI over {study['test_tasks']['count']} "
            f"tasks).{verdict}"
        )
    return out or [
        "`benchmarks/gpu_repro.sh` (Omniglot 5-way and 20-way 1-shot MAML++, 4 minutes of "
        "training each on one GPU, then 600 test tasks; targets >= 99.4% and >= 97.0%) has not "
        "been run for these results: no GPU was available."
    ]


def _speed_lines(
    studies: dict[str, dict[str, Any]], benches: Sequence[dict[str, Any]]
) -> list[str]:
    lines = []
    for name, study in studies.items():
        s = study["settings"]
        rows = {r["name"]: r for r in study["variants"]}
        for variant in ("maml++", "maml", "fomaml"):
            row = rows.get(variant)
            if row is None or not row.get("mean_iterations_per_second"):
                continue
            its = row["mean_iterations_per_second"]
            device = _device_of(study)
            ref = REFERENCE_S_PER_IT.get((s["dataset"], s["ways"], s["shots"]))
            text = (
                f"* {name}, `{variant}` on {device}: {its:.2f} meta-iterations/s "
                f"({1000 / its:.0f} ms each, {s['tasks_per_batch']} tasks, mean over the "
                "whole schedule)"
            )
            if ref is not None and variant == "maml++" and "cuda" in device:
                text += (
                    f"; the authors' code: {ref} s/iteration on one H100 (docs/performance.md), "
                    f"{ref * its:.1f}x slower (different GPUs: compare with care)"
                )
            lines.append(text + ".")
    for bench in benches:
        for result in bench.get("results", []):
            paths = result.get("paths", {})
            loop = next((v for k, v in paths.items() if k.startswith("loop/")), None)
            fast = {k: v for k, v in paths.items() if not k.startswith("loop/")}
            if loop is None or not fast:
                continue
            best_name, best = min(fast.items(), key=lambda item: item[1]["median_s"])
            lines.append(
                f"* `mamlpp bench` on {bench.get('device')} ({result['config']['name']}, "
                f"synthetic episodes of the real shapes, second order, MSL on): {best_name} "
                f"{best['median_s']:.3f} s/iteration vs {loop['median_s']:.3f} s for the loop "
                f"path that runs tasks one by one as the authors' code does "
                f"({loop['median_s'] / best['median_s']:.1f}x)."
            )
    if not lines:
        lines.append("* No speed measurement published yet.")
    return lines


def provenance(
    studies: dict[str, dict[str, Any]],
    commands: Sequence[str],
    env: dict[str, Any],
    action: str = "Published",
) -> str:
    """``action``: "Published" (studies copied in now) or "Regenerated" (the text rewritten
    from the studies already here; the machine below is the one that rewrote it, each study's
    own environment is in its section)."""
    lines = [
        "# Provenance of docs/results",
        "",
        "Generated by `python tools/publish_results.py publish` or `regenerate`; do not edit by "
        "hand.",
        "",
        f"* {action}: {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"* git commit: {env.get('git_commit')}"
        + (" (working tree had uncommitted changes)" if env.get("git_dirty") else ""),
        f"* mamlpp {env['mamlpp']}, torch {env['torch']}, numpy {env['numpy']}, Python "
        f"{env['python']}",
        f"* Platform: {env['platform']}",
        f"* CPU: {env['cpu']}, {env['cpu_count']} logical CPUs ({env['cpus_usable']} usable)",
        f"* GPU: {env.get('gpu') or 'none'}",
        "",
        "## Commands",
        "",
        "```bash",
        *commands,
        "```",
        "",
        "## Studies",
    ]
    for name, study in studies.items():
        total = sum(v["total_wall_time_s"] for v in study["variants"])
        runs = [r for v in study["variants"] for r in v["runs"]]
        done = sum(r["status"] == "complete" for r in runs)
        senv = study.get("environment", {})
        lines += [
            "",
            f"### {name}",
            "",
            f"* `{study['command']}`",
            f"* {done}/{len(runs)} runs complete; wall time {duration(total)} summed over "
            f"runs, {duration(study['elapsed_s'])} elapsed over "
            f"{len(study['sessions'])} session(s)",
            f"* Aggregated with mamlpp {senv.get('mamlpp')}, torch {senv.get('torch')} on "
            f"{senv.get('cpu')} ({senv.get('cpu_count')} CPUs), git {senv.get('git_commit')}",
        ]
        for session in study["sessions"]:
            lines.append(
                f"* session {session.get('started')}: {session.get('elapsed_s')} s, jobs "
                f"{session.get('jobs')}, device {session.get('device')}, threads "
                f"{session.get('threads')}"
            )
        lines.append("* Per-run commands (`mamlpp train` equivalents):")
        for variant in study["variants"]:
            for run in variant["runs"]:
                if run.get("command"):
                    wall = run.get("wall_time_s")
                    when = f" ({duration(wall)})" if wall else f" ({run['status']})"
                    lines.append(f"  * `{run['command']}`{when}")
    return "\n".join(lines) + "\n"


def fill(path: Path, section: str) -> None:
    """Replace the text between the results markers of ``path`` with ``section``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise MamlppError(f"cannot read {path}: {error.strerror or error}") from None
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise MamlppError(f"{path} has no {BEGIN} ... {END} markers")
    body = f"{BEGIN}\n{section.rstrip()}\n{END}"
    path.write_text(pattern.sub(lambda _: body, text, count=1), encoding="utf-8")


def publish(
    dest: Path,
    studies: Sequence[tuple[str, Path]],
    commands: Sequence[str],
    bench: Path | None = None,
    fill_files: Sequence[Path] = (),
    dry_run: bool = False,
) -> dict[str, Path]:
    """Copy the studies into ``dest/<name>/`` (with ``commands.txt`` and the bench report),
    then regenerate PROVENANCE.md and RESULTS.md from every study folder in ``dest``."""
    if dry_run:
        for name, source in studies:
            print(f"would copy {source}/results.md, results.json, *.png, report/ -> {dest / name}")
        print(f"would write {dest / 'PROVENANCE.md'} and {dest / 'RESULTS.md'}")
        for path in fill_files:
            print(f"would fill the Results section of {path}")
        return {}
    for index, (name, source) in enumerate(studies):
        copy_study(source, dest / name)
        (dest / name / "commands.txt").write_text("\n".join(commands) + "\n", encoding="utf-8")
        if index == 0 and bench is not None and bench.is_file():
            shutil.copy2(bench, dest / name / "bench.json")
    return regenerate(dest, fill_files, action="Published")


def _kind(folder: Path) -> str | None:
    """The kind of a published study folder: ``"ablation"`` (the generated tables), or another
    study's own (e.g. ``"distributed-quality"``, which keeps its own results.md, and
    ``"time-budget"``, redrawn from its results.json); None when not a study."""
    path = folder / "results.json"
    if not path.is_file():
        return None
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind", "ablation")
    except (OSError, ValueError):
        return "ablation"  # let the reader report it
    return str(kind)


def regenerate(
    dest: Path, fill_files: Sequence[Path] = (), action: str = "Regenerated"
) -> dict[str, Path]:
    """PROVENANCE.md and RESULTS.md from the study folders in ``dest``; fill ``fill_files``."""
    budget_studies = {}
    for folder in sorted(p for p in dest.iterdir() if _kind(p) == budget.KIND):
        # A time-budget study: results.md and charts redrawn from its results.json.
        budget.redraw(folder)
        budget_studies[folder.name] = json.loads((folder / "results.json").read_text("utf-8"))
    folders = sorted(p for p in dest.iterdir() if _kind(p) == "ablation")
    if not folders:
        raise MamlppError(f"{dest} holds no published study (no */results.json)")
    commands: list[str] = []
    benches = []
    for folder in folders:
        listed = folder / "commands.txt"
        if listed.is_file():
            for line in listed.read_text(encoding="utf-8").splitlines():
                if line.strip() and line not in commands:
                    commands.append(line)
    roots = study_roots(commands)
    make_portable(dest, roots)
    commands = [portable(line, roots) for line in commands]
    loaded = {folder.name: load_study(folder) for folder in folders}
    for folder in folders:
        if (folder / "bench.json").is_file():
            benches.append(json.loads((folder / "bench.json").read_text(encoding="utf-8")))
    env = environment()
    text = provenance(loaded, commands, env, action=action)
    (dest / "PROVENANCE.md").write_text(text, encoding="utf-8")
    section = results_section(loaded, benches, commands, base="", budget_studies=budget_studies)
    (dest / "RESULTS.md").write_text(section, encoding="utf-8")
    for path in fill_files:
        base = os.path.relpath(dest.resolve(), Path(path).resolve().parent)
        base = "" if base == "." else base.replace(os.sep, "/") + "/"
        compact = Path(path).name == "README.md"
        section = results_section(
            loaded, benches, commands, base=base, compact=compact, budget_studies=budget_studies
        )
        fill(Path(path), section)
    return {"provenance": dest / "PROVENANCE.md", "results": dest / "RESULTS.md"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/publish_results.py")
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="copy studies into docs/results and write the section")
    pub.add_argument("--dest", default="docs/results")
    pub.add_argument("--study", action="append", default=[], metavar="NAME=DIR")
    pub.add_argument(
        "--command",
        action="append",
        default=[],
        dest="commands",
        help="a command that produced the studies (repeatable)",
    )
    pub.add_argument("--bench", help="a `mamlpp bench --json` report to include")
    pub.add_argument("--fill", action="append", default=[], help="Markdown file with markers")
    pub.add_argument("--dry-run", action="store_true")
    reg = sub.add_parser("regenerate", help="rewrite RESULTS.md/PROVENANCE.md from DEST")
    reg.add_argument("--dest", default="docs/results")
    reg.add_argument("--fill", action="append", default=[], help="Markdown file with markers")
    env = sub.add_parser("env", help="print the environment as JSON")
    env.add_argument("--out")
    args = parser.parse_args(argv)
    try:
        if args.command == "env":
            text = json.dumps(environment(), indent=2)
            if args.out:
                Path(args.out).write_text(text + "\n", encoding="utf-8")
            print(text)
            return 0
        if args.command == "regenerate":
            written = regenerate(Path(args.dest), [Path(p) for p in args.fill])
            for path in written.values():
                print(f"wrote {path}")
            return 0
        studies = []
        for item in args.study:
            name, sep, folder = item.partition("=")
            if not sep or not name or not folder or "/" in name:
                raise ConfigError(f"--study expects NAME=DIR, got {item!r}")
            studies.append((name, Path(folder)))
        if not studies:
            raise ConfigError("publish needs at least one --study NAME=DIR")
        written = publish(
            Path(args.dest),
            studies,
            args.commands,
            Path(args.bench) if args.bench else None,
            [Path(p) for p in args.fill],
            args.dry_run,
        )
        for path in written.values():
            print(f"wrote {path}")
    except MamlppError as error:
        print(f"mamlpp: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
