"""Where ``mamlpp evaluate`` finds a run's data, and the data check it makes before loading.

* :func:`recorded_data_dir`: without ``--data-dir`` (and ``$MAMLPP_DATA``), the data folder the
  run recorded in data.json (:mod:`mamlpp.run.data_record`) is used, announced in a note, rather
  than the default cache (where a run trained with ``--data-dir`` would start a download); a
  recorded folder that is gone is named in the error.
* :func:`check_before_loading`: own images are checked against the run's record from their file
  listing alone, so other data is refused before its splits are built or a cache is written
  into it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mamlpp.data.files import ENV_VAR
from mamlpp.data.folder import split_listing
from mamlpp.data.grouping import Grouping
from mamlpp.data.table import dataset
from mamlpp.errors import ConfigError
from mamlpp.run.data_record import check_same_data, listed_record
from mamlpp.run.experiment import DataSection
from mamlpp.run.run_dir import RunDir


def recorded_data_dir(
    data: DataSection, given: str | None, run_data: Mapping[str, Any] | None
) -> tuple[str | None, str | None]:
    """(the data folder to load from, a note saying it came from data.json, or None)."""
    recorded = (run_data or {}).get("data_dir")
    if given or os.environ.get(ENV_VAR) or not isinstance(recorded, str):
        return given, None
    entry = dataset(data.dataset)
    if entry.files is None:  # generated in memory: no folder
        return given, None
    place = Path(recorded)
    if entry.own_images:
        if not place.is_dir():
            raise ConfigError(
                f"the run was trained on the images in {place} (data.json), which is not a "
                "folder any more: give their new place with --data-dir DIR"
            )
        return str(place), f"using the run's data folder {place} (recorded in data.json)"
    # A built-in dataset records the folder its files were found in; --data-dir names the
    # folder above it (DIR/omniglot, ...) or that folder itself.
    for root in (place, *list(place.parents)[:2]):
        if root.is_dir() and entry.files.locate(root) is not None:
            return str(root), f"using the run's data folder {root} (recorded in data.json)"
    return given, None


def check_before_loading(
    run: RunDir,
    data: DataSection,
    data_dir: str | None,
    run_data: Mapping[str, Any] | None,
    image_shape: list[int] | None,
    what_to_do: str,
) -> None:
    """Refuse own images that are not the run's (one line, exit code 2) from their listing,
    before anything is decoded or cached; other datasets are checked after loading."""
    entry = dataset(data.dataset)
    if not entry.own_images or run_data is None or not image_shape or not data_dir:
        return
    grouping = Grouping(data.groups, data.sources, data.source_pattern)
    listing = split_listing(
        data_dir, data.val_fraction, data.test_fraction, data.split_seed, grouping
    )
    root = str(Path(data_dir).expanduser().resolve())
    record = listed_record(entry.name, root, image_shape, listing)
    check_same_data(run, run_data, record, what_to_do)
