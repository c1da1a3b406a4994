"""The dataset table (``mamlpp.data.table``) is the one list of datasets.

Every consumer reads it: ``load_dataset``, the run's data source (``load_splits``,
``preprocessing_for``), the config check of ``data.dataset``, ``mamlpp data download|info`` and
the ablation grid (``mamlpp ablate --dataset``). So an entry added to the table (a fake one
here, with its own finder, downloader and loader) is accepted by all of them, and an entry taken
out is refused by all of them. Also: every entry is complete, the table loads without numpy or
torch, and the decoded-image caches share one version and one fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamlpp.cli.main import main
from mamlpp.data import table
from mamlpp.data.files import data_dir
from mamlpp.data.images import RESAMPLERS
from mamlpp.data.table import TABLE, Dataset, Files, ImageSpec, load_dataset, resolve
from mamlpp.errors import ConfigError, DataError
from mamlpp.run.datasource import load_splits, preprocessing_for
from mamlpp.run.experiment import DataSection, build_config
from mamlpp.studies.ablate import plan

SRC = Path(__file__).resolve().parents[2] / "src" / "mamlpp"
FAKE = "fake-strokes"


# ------------------------------------------------------------------ a fake dataset's functions


def find_fake(root: Path) -> Path | None:
    folder = Path(root) / "fake"
    return folder if (folder / "ready").is_file() else None


def download_fake(root, progress: bool = True) -> Path:
    folder = data_dir(root) / "fake"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ready").write_text("fetched")
    return folder


def load_fake(source: Path, *, image_size: int = 28, progress: bool = False, classes=(6, 5, 5)):
    from mamlpp.data.synthetic import make_synthetic

    splits = make_synthetic(classes=classes, samples_per_class=4, image_size=image_size)
    for split in splits.values():
        split.meta.update(dataset=FAKE, source=str(source))
    return splits


@pytest.fixture
def fake(monkeypatch) -> Dataset:
    """A new table entry, with nothing but the entry (and its functions above) added."""
    files = Files(
        name=FAKE,
        title="Fake strokes",
        folder="fake",
        looked_for="fake/ready",
        find=f"{__name__}:find_fake",
        download=f"{__name__}:download_fake",
        download_note="it (no network)",
    )
    entry = Dataset(
        FAKE,
        "a fake entry of the tests",
        f"{__name__}:load_fake",
        files,
        ImageSpec(1, 28, (0.5,), (0.25,), "bilinear"),
        aliases=("fake",),
        loader_options={"classes": (6, 5, 5)},
        ablation=True,
    )
    monkeypatch.setitem(TABLE, FAKE, entry)
    return entry


# ------------------------------------------------------------------ every entry is complete


def test_every_entry_is_complete_and_its_names_resolve() -> None:
    spellings: dict[str, str] = {}
    for name, entry in TABLE.items():
        assert name == entry.name
        assert entry.description and "\n" not in entry.description
        for spelling in (entry.name, *entry.aliases):
            assert spellings.setdefault(spelling, name) == name, f"{spelling} names two datasets"
            assert table.dataset(spelling) is entry
            assert table.dataset(f" {spelling.upper()} ") is entry
        assert callable(resolve(entry.loader))
        if entry.files is not None:
            assert callable(resolve(entry.files.find))
            if entry.files.partial is not None:
                assert callable(resolve(entry.files.partial))
        spec = entry.preprocessing
        if spec is not None:
            assert spec.channels in (1, 3) and spec.resample in RESAMPLERS
            assert len(spec.mean) == len(spec.std) == spec.channels
    assert [e.name for e in TABLE.values() if e.own_images] == ["folder"]
    assert tuple(plan.DATASETS) == (
        "omniglot",
        "omniglot-vinyals",
        "omniglot-lake",
        "mini-imagenet",
        "synthetic",
    )


def test_every_downloadable_entry_has_a_downloader_or_a_hint(tmp_path: Path) -> None:
    names = table.download_names()
    assert set(names) == {
        "omniglot",
        "omniglot-vinyals",
        "omniglot-lake",
        "mini-imagenet",
        "cifar-fs",
        "fc100",
        "cifar-100",
        "tiered-imagenet",
    }
    for name in names:
        files = table.download_files(name)
        if files.download is not None:
            assert callable(files.downloader())
        else:  # one line saying how to get the files by hand, and where to put them
            hint = files.how_to_get(tmp_path / files.folder)
            assert "\n" not in hint and str(tmp_path / files.folder) in hint
    with pytest.raises(DataError, match="nothing to download for 'synthetic'"):
        table.download_files("synthetic")


def test_unknown_names_are_one_line_with_a_suggestion() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("omniglott")
    message = str(info.value)
    assert message.startswith("unknown dataset 'omniglott' (choose from omniglot, ")
    assert message.endswith("(did you mean 'omniglot'?)") and "\n" not in message
    with pytest.raises(ConfigError, match=r"got 'tieredimagenet' \(did you mean 'tiered-imagenet'"):
        build_config({"data": {"dataset": "tieredimagenet"}})  # aliases load, configs name


def test_loaders_and_run_preprocessing_agree_with_the_table() -> None:
    from mamlpp.data import cifar, miniimagenet, omniglot

    loader_stats = {
        "omniglot": omniglot.OMNIGLOT_MEAN,
        "mini-imagenet": miniimagenet.IMAGENET_MEAN,
        "tiered-imagenet": miniimagenet.IMAGENET_MEAN,
        "cifar-fs": cifar.CIFAR100_MEAN,
    }
    for name, mean in loader_stats.items():
        spec = TABLE[name].preprocessing
        assert spec is not None and spec.mean == mean
    for entry in TABLE.values():
        spec = entry.preprocessing
        if spec is None:
            continue
        prep = preprocessing_for(DataSection(dataset=entry.name, image_size=spec.image_size))
        assert (prep.channels, prep.mean, prep.std, prep.resample) == (
            spec.channels,
            spec.mean,
            spec.std,
            spec.resample,
        )
    synthetic = load_dataset("synthetic", classes=(3, 3, 3))["train"]
    spec = TABLE["synthetic"].preprocessing
    assert spec is not None
    assert synthetic.image_shape == (spec.channels, spec.image_size, spec.image_size)
    assert (synthetic.mean, synthetic.std) == (spec.mean, spec.std)


# ------------------------------------------------------------------ every consumer reads it


def test_a_new_entry_is_accepted_everywhere(fake: Dataset, tmp_path: Path, capsys) -> None:
    # the config check, and the run's preprocessing
    config = build_config({"data": {"dataset": FAKE}})
    assert config.data.dataset == FAKE
    assert preprocessing_for(config.data).mean == (0.5,)
    # the run's data source: found, or downloaded (announced), through the entry's functions
    with pytest.raises(DataError, match=f"Fake strokes is not in {re.escape(str(tmp_path))} and"):
        load_splits(config.data, tmp_path, download=False)
    said: list[str] = []
    splits = load_splits(config.data, tmp_path, say=said.append, progress=False)
    announced = f"Fake strokes is not in {tmp_path}; downloading it (no network) to "
    assert said == [announced + str(tmp_path / "fake")]
    assert splits["train"].num_classes == 6 and splits["train"].meta["dataset"] == FAKE
    assert load_dataset("FAKE", tmp_path)["test"].num_classes == 5  # by its alias
    # mamlpp data download | info
    elsewhere = tmp_path / "elsewhere"
    assert main(["data", "download", FAKE, "--data-dir", str(elsewhere)]) == 0
    assert f"{FAKE} is ready in {elsewhere / 'fake'}" in capsys.readouterr().out
    assert main(["data", "info", FAKE, "--data-dir", str(elsewhere)]) == 0
    out = capsys.readouterr().out
    assert f"dataset: {FAKE}" in out and "train: 6 classes, 24 images (1x28x28)" in out
    with pytest.raises(SystemExit):
        main(["data", "info", "--help"])
    assert re.search(rf"{FAKE} +a fake entry of the tests", capsys.readouterr().out)
    # the ablation grid: its dataset list, the --dataset help, and a (dry) run of it
    assert FAKE in plan.DATASETS
    with pytest.raises(SystemExit):
        main(["ablate", "--help"])
    assert FAKE in capsys.readouterr().out
    out_dir = tmp_path / "ablation"
    args = ["ablate", "--dataset", FAKE, "--variants", "maml", "--seeds", "0", "--dry-run"]
    assert main([*args, "--data-dir", str(tmp_path), "--out", str(out_dir)]) == 0
    assert f"--dataset {FAKE}" in capsys.readouterr().out


def test_an_entry_taken_out_is_refused_everywhere(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.delitem(TABLE, "fc100")
    monkeypatch.delitem(TABLE, "synthetic")
    with pytest.raises(ConfigError, match="data.dataset must be one of .*got 'fc100'"):
        build_config({"data": {"dataset": "fc100", "image_size": 32}})
    with pytest.raises(DataError, match="unknown dataset 'fc100'"):
        load_dataset("fc100", tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'synthetic'"):
        load_splits(DataSection(dataset="synthetic"))
    assert "fc100" not in table.download_names() and "synthetic" not in plan.DATASETS
    with pytest.raises(SystemExit):
        main(["data", "info", "fc100"])
    assert "invalid choice: 'fc100'" in capsys.readouterr().err
    assert main(["ablate", "--dataset", "synthetic", "--dry-run", "--out", str(tmp_path)]) == 2
    assert (
        "--dataset must be one of omniglot, omniglot-vinyals, omniglot-lake, mini-imagenet, got"
        in (capsys.readouterr().err)
    )


def test_the_config_reads_a_dataset_s_fixed_image_size_from_the_table(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="mini-imagenet images are 84x84; data.image_size=28"):
        build_config({"data": {"dataset": "mini-imagenet", "image_size": 28}})
    mini = TABLE["mini-imagenet"]
    assert mini.preprocessing is not None
    unfixed = dataclasses.replace(mini.preprocessing, fixed_size=False)
    monkeypatch.setitem(TABLE, "mini-imagenet", dataclasses.replace(mini, preprocessing=unfixed))
    assert build_config({"data": {"dataset": "mini-imagenet", "image_size": 28}})


# ------------------------------------------------------------------ start-up cost


@pytest.mark.slow
def test_the_table_and_the_data_commands_load_without_numpy_or_torch() -> None:
    code = (
        "import sys; import mamlpp.data.table, mamlpp.cli.data, mamlpp.cli.ablate; "
        "heavy = [m for m in ('numpy', 'torch') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ one image cache


def test_one_cache_version_for_every_loader() -> None:
    declared = [
        path.name
        for path in sorted((SRC / "data").glob("*.py"))
        if re.search(r"^CACHE_VERSION\s*=", path.read_text(encoding="utf-8"), re.MULTILINE)
    ]
    assert declared == ["image_cache.py"]


def test_folder_cache_keeps_its_name(tmp_path: Path) -> None:
    """The shared fingerprint names a folder cache as the folder loader's own one did."""
    from mamlpp.data.folder import load_folder_dataset
    from mamlpp.data.picture import READER_VERSION

    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    paths = []
    for c in range(6):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(2):
            path = root / f"class{c}" / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)
            paths.append(path)
    prep = preprocessing_for(DataSection(dataset="folder", channels="rgb", image_size=16))
    splits = load_folder_dataset(root, prep, val_fraction=0.2, test_fraction=0.2)
    cache = Path(splits["train"].meta["cache"])
    # The picture reader's version joined the recipe when reading changed (EXIF, transparency).
    recipe = {**prep.to_dict(), "auto_channels": False, "version": 1, "reader": READER_VERSION}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for path in paths:  # the fingerprint before the cache was shared
        stat = path.stat()
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    assert cache.name == f".mamlpp-folder-16px-{digest.hexdigest()[:16]}.npz"


# ------------------------------------------------------------------ data.resample


def test_resample_reaches_the_preprocessing_of_the_datasets_that_allow_it() -> None:
    """data.resample overrides the dataset's rule where the table allows it; "auto" keeps it."""
    lake = build_config({"data": {"dataset": "omniglot-lake", "resample": "bilinear"}}).data
    assert preprocessing_for(lake).resample == "bilinear"
    assert preprocessing_for(DataSection(dataset="omniglot-lake")).resample == "nearest-binary"
    folder = DataSection(dataset="folder", resample="bicubic")
    assert preprocessing_for(folder, channels=3).resample == "bicubic"
    assert preprocessing_for(DataSection(dataset="folder"), channels=3).resample == "bilinear"


@pytest.mark.parametrize(
    ("dataset", "rule", "allowed"),
    [
        ("mini-imagenet", "bilinear", "'auto'"),
        ("omniglot", "bicubic", "'auto', 'nearest-binary', 'bilinear'"),
        ("folder", "nearest-binary", "'auto', 'bilinear', 'bicubic'"),
    ],
)
def test_a_resample_rule_the_dataset_does_not_take_is_one_line(dataset, rule, allowed) -> None:
    settings = {"dataset": dataset, "resample": rule}
    if dataset == "mini-imagenet":
        settings["image_size"] = 84
    message = f"data.resample for {dataset} must be {allowed}, got '{rule}'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config({"data": settings})
