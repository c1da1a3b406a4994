"""Which data a run was trained on, and the checks that keep a run on it.

Every run records its data in ``RUN_DIR/data.json`` (written when training starts) and in every
checkpoint (key ``"data"``)::

    dataset       data.dataset ("omniglot", "folder", ...)
    data_dir      the folder the files were read from, resolved to an absolute path (a generated
                  dataset: its description, e.g. "procedural (seed 0)")
    fingerprint   16 hex digits: a hash of the per-split fingerprints
    splits        {"train": {"classes", "images", "fingerprint"}, "val": ..., "test": ...}; a
                  split's fingerprint hashes its image shape, class names and per-class image
                  counts, in order
    preprocessing own images only: the preparation the loader applied (size, channels as
                  found, normalisation), which ``adapt``, ``export`` and ``serve`` then apply

The fingerprint names the classes and counts, not the pixels: the same data in another folder
(moved, copied, another download) is the same data, and a decoder upgrade that changes a pixel
does not make a run unusable; an image replaced in place under the same name is not noticed.

``mamlpp evaluate``, ``mamlpp train --resume`` and the ensemble of ``mamlpp adapt`` /
``mamlpp export`` compare against the run's record (:func:`run_record`). A run from before the
record existed has none: it is not checked, with a note (evaluate also compares the test tasks
with summary.json's ``test_fingerprint``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mamlpp.data import FewShotSplit
from mamlpp.errors import ConfigError
from mamlpp.run.run_dir import RunDir, read_json

SPLITS = ("train", "val", "test")


def data_record(dataset: str, splits: Mapping[str, FewShotSplit]) -> dict[str, Any]:
    """The record of the data ``splits`` (loaded for ``dataset``): see the module docstring."""
    listing = {n: (splits[n].class_names, splits[n].class_counts.tolist()) for n in SPLITS}
    record = listed_record(dataset, _where(splits["train"]), splits["train"].image_shape, listing)
    used = splits["train"].meta.get("preprocessing")  # own images: what the loader applied
    if used:
        record["preprocessing"] = json.loads(used)
    return record


def listed_record(
    dataset: str,
    data_dir: str | None,
    image_shape: Sequence[int],
    listing: Mapping[str, tuple[Sequence[str], Sequence[int]]],
) -> dict[str, Any]:
    """The record of data whose splits hold ``listing[split] = (class names, images per
    class)`` of ``image_shape`` images: the same as :func:`data_record` of those splits loaded,
    so a folder's data can be checked from its file listing before anything is decoded."""
    per_split = {}
    for name in SPLITS:
        names, counts = listing[name]
        identity = [name, list(image_shape), list(names), [int(c) for c in counts]]
        per_split[name] = {
            "classes": len(names),
            "images": int(sum(counts)),
            "fingerprint": _hash(json.dumps(identity)),
        }
    whole = _hash(json.dumps([per_split[n]["fingerprint"] for n in SPLITS]))
    return {"dataset": dataset, "data_dir": data_dir, "fingerprint": whole, "splits": per_split}


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _where(split: FewShotSplit) -> str | None:
    source = split.meta.get("source")
    if not source:
        return None
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def run_record(run: RunDir, state: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The run's data record: ``data.json`` when it holds a valid one, else that of checkpoint
    ``state`` (a run whose data.json was lost, emptied or overwritten: every checkpoint keeps
    the record too), else None (a run from before mamlpp recorded its data)."""
    for record in (read_json(run.data), None if state is None else state.get("data")):
        if isinstance(record, Mapping) and is_record(record):
            return dict(record)
    return None


def is_record(record: Any) -> bool:
    """Whether ``record`` is a data record (:func:`data_record`): a fingerprint of 16 hex digits
    and the three splits'. ``{}`` or any other JSON is not, and never disables a data check."""
    if not isinstance(record, Mapping) or not _is_fingerprint(record.get("fingerprint")):
        return False
    splits = record.get("splits")
    return isinstance(splits, Mapping) and all(
        isinstance(splits.get(n), Mapping) and _is_fingerprint(splits[n].get("fingerprint"))
        for n in SPLITS
    )


def _is_fingerprint(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 16 and all(c in "0123456789abcdef" for c in value)
    )


def same_data(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.get("fingerprint") == b.get("fingerprint")


def describe(record: Mapping[str, Any]) -> str:
    """``folder data in /x (fingerprint 0123...)``."""
    where = f" in {record['data_dir']}" if record.get("data_dir") else ""
    return f"{record.get('dataset')} data{where} (fingerprint {record.get('fingerprint')})"


def differences(run: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """Which splits differ, e.g. ``test differs: 6 classes and 120 images, the run's 6 and
    118``."""
    parts = []
    mine, theirs = run.get("splits", {}), other.get("splits", {})
    for name in SPLITS:
        a, b = mine.get(name, {}), theirs.get(name, {})
        if a.get("fingerprint") == b.get("fingerprint"):
            continue
        counts = f"{b.get('classes')} classes and {b.get('images')} images"
        same_counts = (a.get("classes"), a.get("images")) == (b.get("classes"), b.get("images"))
        if same_counts:
            parts.append(f"{name} has other classes ({counts}, as many as the run's)")
        else:
            parts.append(f"{name} has {counts}, the run's {a.get('classes')} and {a.get('images')}")
    return "; ".join(parts) if parts else "another dataset"


def check_same_data(
    run: RunDir, run_data: Mapping[str, Any], record: Mapping[str, Any], what_to_do: str
) -> None:
    """Refuse (one line, exit code 2) data ``record`` that is not the run's ``run_data``."""
    if same_data(run_data, record):
        return
    raise ConfigError(
        f"{run.root} was trained on {describe(run_data)}, not on {describe(record)} "
        f"({differences(run_data, record)}); {what_to_do}"
    )


def check_members(
    run: RunDir, run_data: Mapping[str, Any] | None, members: Sequence[tuple[Path, Mapping]]
) -> None:
    """Refuse an ensemble with a checkpoint trained on other data than the run's (a file
    copied in from another run): every member must come from the run's data."""
    if run_data is None:
        return
    for path, state in members:
        data = state.get("data")
        if isinstance(data, Mapping) and not same_data(run_data, data):
            raise ConfigError(
                f"checkpoint {path} was trained on {describe(data)}, but {run.root} on "
                f"{describe(run_data)}: an ensemble takes the run's own checkpoints only; "
                "move the foreign file away"
            )


def evaluation_data(
    run: RunDir,
    run_data: Mapping[str, Any] | None,
    record: Mapping[str, Any],
    task_check: tuple[str, str] | None,
    allow_other: bool,
) -> tuple[bool | None, list[str]]:
    """Whether ``mamlpp evaluate`` scores the run on its own data: True, False (other data,
    allowed by ``allow_other``) or None (unknown: a run without a data record whose test tasks
    cannot be compared), and the notes to print. Other data without ``allow_other`` is refused
    (one line, exit code 2).

    ``task_check`` is (summary.json's ``test_fingerprint``, the fingerprint of the tasks about
    to be scored) when they are comparable (the test split, as many tasks as the run's test):
    for a run without a data record it is the check; for one with a record a mismatch on the
    same data is only noted (another mamlpp version may sample tasks differently)."""
    allow = "pass --allow-other-data to score it on this data anyway"
    notes = []
    if run_data is not None:
        if not allow_other:
            check_same_data(run, run_data, record, allow)
        own = same_data(run_data, record)
        if own and task_check is not None and task_check[0] != task_check[1]:
            notes.append(
                f"the test tasks differ from those summary.json was scored on (fingerprint "
                f"{task_check[1]}, summary.json's {task_check[0]}): the same data, sampled "
                "differently (another mamlpp version?)"
            )
    elif task_check is not None:
        own = task_check[0] == task_check[1]
        if not own and not allow_other:
            raise ConfigError(
                f"{run.root} was tested on other tasks: summary.json's test_fingerprint is "
                f"{task_check[0]}, the test tasks of {describe(record)} give {task_check[1]} "
                f"(the run has no data record, so its test tasks are the check); {allow}"
            )
    else:
        own = None
        notes.append(
            f"{run.root} has no record of the data it was trained on (a run from before mamlpp "
            "recorded it): the data is not checked"
        )
    if own is False:
        notes.append(f"scoring on other data than the run's: {describe(record)}")
    return own, notes
