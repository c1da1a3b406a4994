"""Nothing of a run is overwritten by accident.

Two guards, both cheap and run before anything is read or written:

* :func:`check_new_run_folder`: ``train --out DIR`` starts a run only in a folder that does not
  exist, is empty, or already is a run folder (``--resume`` and the "already holds a run"
  refusal take it from there). A folder of the user's own files (say a ``config.toml`` and a
  ``summary.json`` of theirs) is refused, so that training never replaces them.
* :func:`check_output_path`: the file that ``export`` or ``adapt --out`` writes must not be one
  of a run folder's records (config.toml, metrics.jsonl, summary.json, data.json, eval-*.json,
  .lock) nor lie inside its ``checkpoints/`` or ``tensorboard/``. Paths are compared resolved
  (symbolic links followed, ``..`` removed), so a link into a run folder is caught too.
"""

from __future__ import annotations

import re
from pathlib import Path

from mamlpp.errors import ConfigError
from mamlpp.run.run_dir import RunDir

# The records a run folder keeps at its top level (see mamlpp.run.run_dir), and the folders
# whose every file is the run's.
_RECORDS = ("config.toml", "metrics.jsonl", "summary.json", "data.json", ".lock")
_EVAL_RECORD = re.compile(r"eval-.*\.json")
_RUN_FOLDERS = ("checkpoints", "tensorboard")
# What mamlpp's studies (ablate, the budget study) write into a run folder before they start its
# training there: the run's command and status, and its log. Not the user's own files.
STUDY_FILES = frozenset({"ablate.json", "train.log"})


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is (the start of) a mamlpp run: training has touched it (its lock,
    metrics or checkpoints folder exist), not merely a folder holding a config.toml."""
    run = RunDir(folder)
    return run.metrics.is_file() or run.checkpoints.is_dir() or (folder / ".lock").is_file()


def check_new_run_folder(run: RunDir) -> None:
    """Refuse ``train --out`` into a non-empty folder that is not a run (one line, exit 2)."""
    if not run.root.is_dir() or is_run_folder(run.root):
        return
    entries = sorted(p.name for p in run.root.iterdir() if p.name not in STUDY_FILES)
    if not entries:
        return
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise ConfigError(
        f"--out {run.root} is not empty ({shown}) and is not a mamlpp run folder: training "
        "would write config.toml, summary.json and more into it; choose a new or empty folder"
    )


def run_file_of(path: str | Path) -> tuple[Path, str] | None:
    """(the run folder, what of it) when ``path`` (resolved) is one of a run folder's records or
    lies in its checkpoints/ or tensorboard/; else None."""
    target = Path(path).expanduser().resolve()
    for folder in target.parents:
        if not (folder / "config.toml").is_file() or not is_run_folder(folder):
            continue
        parts = target.relative_to(folder).parts
        if len(parts) == 1 and (parts[0] in _RECORDS or _EVAL_RECORD.fullmatch(parts[0])):
            return folder, f"its record {parts[0]}"
        if parts[0] in _RUN_FOLDERS:
            return folder, f"its {parts[0]}/ folder"
    return None


def check_output_path(path: str | Path, option: str) -> None:
    """Refuse an output file that would replace a run's record or checkpoint (one line, exit
    2); ``option`` names where the path came from, e.g. ``"--out"``."""
    found = run_file_of(path)
    if found is None:
        return
    folder, what = found
    raise ConfigError(
        f"{option} {path} would overwrite {what} of the run {folder}; write it outside the "
        "run's records and checkpoints (e.g. beside the run folder)"
    )
