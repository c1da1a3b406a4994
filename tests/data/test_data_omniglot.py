"""Real Omniglot (../shared/data/omniglot): counts, splits, cache, rotation, and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mamlpp.data.omniglot as omniglot_module
from mamlpp.data import (
    REFERENCE_CODE_SEED,
    EpisodeSampler,
    extract_zip,
    find_omniglot,
    load_dataset,
    load_omniglot,
    prepare_omniglot,
    reference_split,
)
from mamlpp.data.omniglot_splits import SPLITS_DIR, packaged_reference_split
from mamlpp.errors import DataError

pytestmark = pytest.mark.slow  # decodes and caches the real Omniglot archives


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    # Never beside the real data: ../shared is read-only in CI.
    return tmp_path_factory.mktemp("omniglot-cache")


@pytest.fixture(scope="module")
def built(omniglot_dir, cache_dir):
    """The first preparation (it decodes every PNG), with its progress bar's output."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        arrays = prepare_omniglot(omniglot_dir, cache_dir=cache_dir, progress=True)
    return arrays, stderr.getvalue()


@pytest.fixture(scope="module")
def arrays(built):
    return built[0]


def test_the_preprocessing_bar_ends_at_100_percent(built):
    final = built[1].replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("preprocessing Omniglot: 100%") and "32460/32460" in final


@pytest.fixture(scope="module")
def reference(omniglot_dir, cache_dir, arrays):
    return load_omniglot(omniglot_dir, split="mamlpp", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def vinyals(omniglot_dir, cache_dir, arrays):
    return load_omniglot(omniglot_dir, split="vinyals", cache_dir=cache_dir)


def zip_characters(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        return {
            "/".join(name.split("/")[1:3]) for name in archive.namelist() if name.endswith(".png")
        }


def read_list(path: Path) -> list[str]:
    return path.read_text().split()


# ----------------------------------------------------------------------------- counts and pixels


def test_all_1623_characters_with_20_images(omniglot_dir, arrays):
    background = zip_characters(omniglot_dir / "images_background.zip")
    evaluation = zip_characters(omniglot_dir / "images_evaluation.zip")
    assert len(background) == 964 and len(evaluation) == 659
    assert arrays.class_names == sorted(background | evaluation)
    assert len(arrays.class_names) == 1623
    assert arrays.images.shape == (32460, 28, 28) and arrays.images.dtype == np.uint8
    assert np.array_equal(np.bincount(arrays.image_class), np.full(1623, 20))
    assert set(np.unique(arrays.images).tolist()) == {0, 255}
    # Strokes are thin: most pixels are background (255), as in the original 1-bit PNGs.
    assert 0.75 < (arrays.images == 255).mean() < 0.95


def test_pixels_match_pil_nearest_resize(omniglot_dir, arrays):
    """The reference resizes the 1-bit PNGs with PIL, which uses nearest for mode '1'."""
    with zipfile.ZipFile(omniglot_dir / "images_evaluation.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        for name in names[::2000]:
            _, alphabet, character, file_name = name.split("/")
            cls = arrays.class_names.index(f"{alphabet}/{character}")
            drawer = sorted(
                n for n in names if n.startswith(f"images_evaluation/{alphabet}/{character}/")
            ).index(name)
            with Image.open(io.BytesIO(archive.read(name))) as image:
                assert image.mode == "1"
                expected = np.asarray(image.resize((28, 28), Image.LANCZOS), dtype=np.uint8) * 255
            index = np.flatnonzero(arrays.image_class == cls)[drawer]
            assert np.array_equal(arrays.images[index], expected), name


# ----------------------------------------------------------------------------- splits


def test_reference_split_equals_shipped_seed0_files(shared_dir, arrays):
    shipped = shared_dir / "data" / "omniglot" / "splits" / "mamlpp"
    computed = reference_split(arrays.class_names)
    for name in ("train", "val", "test"):
        assert computed[name] == read_list(shipped / f"seed0_{name}.txt"), name
    assert packaged_reference_split() == computed
    # The class map of the reference repo is the sorted list we shuffle.
    mapping = json.loads((shipped / "map_to_label_name_omniglot_dataset.json").read_text())
    assert [mapping[str(i)] for i in range(1623)] == sorted(arrays.class_names)


def test_reference_code_seed_gives_another_split_of_the_same_sizes(arrays):
    seed0 = reference_split(arrays.class_names)
    code = reference_split(arrays.class_names, seed=REFERENCE_CODE_SEED)
    assert [len(code[n]) for n in ("train", "val", "test")] == [1150, 50, 423]
    assert set(code["test"]) != set(seed0["test"])
    assert REFERENCE_CODE_SEED == np.random.RandomState(0).randint(1, 999999)


def test_reference_split_sizes_and_rotation_flag(reference):
    sizes = {name: split.num_classes for name, split in reference.items()}
    assert sizes == {"train": 1150, "val": 50, "test": 423}
    for name, split in reference.items():
        assert split.name == name
        assert split.images.shape == (split.num_classes * 20, 1, 28, 28)
        assert split.images.dtype == torch.uint8
        assert bool((split.class_counts == 20).all())
        assert split.mean == (0.0,) and split.std == (1.0,)
        assert split.rotate == (name == "train")
    names = [set(split.class_names) for split in reference.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert len(names[0] | names[1] | names[2]) == 1623


def test_reference_split_images_belong_to_their_class(reference, arrays):
    split = reference["val"]
    for c in (0, 17, 49):
        cls = arrays.class_names.index(split.class_names[c])
        expected = arrays.images[arrays.image_class == cls]
        got = split.images[split.class_images[c]].squeeze(1).numpy()
        assert np.array_equal(got, expected)


def test_vinyals_split_sizes_and_rotations(shared_dir, vinyals, arrays):
    characters = {
        name: {c.rsplit("/", 1)[0] for c in split.class_names} for name, split in vinyals.items()
    }
    assert {n: len(c) for n, c in characters.items()} == {"train": 1028, "val": 172, "test": 423}
    assert {n: s.num_classes for n, s in vinyals.items()} == {
        "train": 4112,
        "val": 688,
        "test": 1692,
    }
    assert not any(split.rotate for split in vinyals.values())
    shipped = shared_dir / "data" / "omniglot" / "splits" / "vinyals"
    for name, split in vinyals.items():
        assert split.class_names == read_list(shipped / f"{name}.txt")
        assert (SPLITS_DIR / "omniglot" / "vinyals" / f"{name}.txt").read_text() == (
            shipped / f"{name}.txt"
        ).read_text()
    # rotDDD classes are the rot000 images turned counter-clockwise (PIL's rotate direction).
    test = vinyals["test"]
    index = {n: i for i, n in enumerate(test.class_names)}
    base_name = test.class_names[0].rsplit("/", 1)[0]
    base = test.images[test.class_images[index[f"{base_name}/rot000"]]]
    cls = arrays.class_names.index(base_name)
    assert np.array_equal(base.squeeze(1).numpy(), arrays.images[arrays.image_class == cls])
    for degrees in (90, 180, 270):
        turned = test.images[test.class_images[index[f"{base_name}/rot{degrees:03d}"]]]
        assert torch.equal(turned, torch.rot90(base, degrees // 90, dims=(-2, -1)))
        pil = np.asarray(Image.fromarray(base[3, 0].numpy()).rotate(degrees))
        assert np.array_equal(turned[3, 0].numpy(), pil)


# ----------------------------------------------------------------------------- episodes


def test_training_episodes_rotate_and_evaluation_episodes_do_not(reference):
    train = EpisodeSampler(reference["train"], ways=20, shots=1, targets=1, seed=0)
    episodes = train.sample_indices(range(16))
    assert set(episodes.rotations.unique().tolist()) == {0, 1, 2, 3}
    batch = train.sample(range(16))
    images = reference["train"].images
    for task in (0, 5):
        for slot in (0, 7):
            k = int(episodes.rotations[task, slot])
            original = images[episodes.images[task, slot, 0]].float() / 255
            assert torch.equal(batch.support_x[task, slot], torch.rot90(original, k, (-2, -1)))
    for name in ("val", "test"):
        sampler = EpisodeSampler(reference[name], ways=20, shots=1, targets=1, seed=0)
        assert not sampler.rotate
        assert bool((sampler.sample_indices(range(600)).rotations == 0).all())
        batch = sampler.sample(range(4))
        first = sampler.sample_indices([0]).images[0, 0, 0]
        assert torch.equal(batch.support_x[0, 0], reference[name].images[first].float() / 255)


def test_omniglot_error_when_ways_exceed_val_classes(reference):
    message = "60-way tasks need 60 classes but the val split has only 50$"
    with pytest.raises(DataError, match=message):
        EpisodeSampler(reference["val"], ways=60, shots=1, targets=1)
    with pytest.raises(DataError, match="15 shots \\+ 6 targets need 21 images per class"):
        EpisodeSampler(reference["train"], ways=5, shots=15, targets=6)


# ----------------------------------------------------------------------------- cache


def test_cached_load_is_fast_and_does_not_decode(omniglot_dir, cache_dir, arrays, monkeypatch):
    monkeypatch.setattr(omniglot_module, "_decode_all", _fail_decode)
    start = time.perf_counter()
    splits = load_omniglot(omniglot_dir, cache_dir=cache_dir)
    assert time.perf_counter() - start < 2.0
    assert splits["train"].meta["cache"] == str(arrays.cache_path)
    assert arrays.cache_path.parent == cache_dir
    assert arrays.cache_path.stat().st_size < 5_000_000  # bit-packed: ~3.6 MB
    assert not list(cache_dir.glob(".*.tmp"))


def _fail_decode(*args, **kwargs):
    raise AssertionError("decoded PNGs although a cache exists")


def test_bilinear_resampling_has_its_own_cache_of_grey_pixels(
    omniglot_dir, cache_dir, arrays, monkeypatch
):
    """data.resample=bilinear: the same images, shrunk with antialiasing (grey edges), cached in
    a file of their own; the binary cache is left as it was, and each reloads without decoding."""
    binary_bytes = arrays.cache_path.read_bytes()
    grey = prepare_omniglot(omniglot_dir, cache_dir=cache_dir, resample="bilinear")
    assert grey.cache_path != arrays.cache_path and "bilinear" in grey.cache_path.name
    assert arrays.cache_path.read_bytes() == binary_bytes
    assert grey.images.shape == arrays.images.shape
    assert np.array_equal(grey.image_class, arrays.image_class)
    assert grey.class_names == arrays.class_names
    between = (grey.images > 0) & (grey.images < 255)
    assert between.mean() > 0.01 and not ((arrays.images > 0) & (arrays.images < 255)).any()
    # The same drawings, aligned: thresholded, the grey images mostly equal the binary ones.
    assert ((grey.images > 127) == (arrays.images > 127)).mean() > 0.95
    monkeypatch.setattr(omniglot_module, "_decode_all", _fail_decode)
    again = load_omniglot(omniglot_dir, split="lake", cache_dir=cache_dir, resample="bilinear")
    assert again["test"].meta["cache"] == str(grey.cache_path)
    with pytest.raises(DataError, match="Omniglot resampling must be one of"):
        prepare_omniglot(omniglot_dir, cache_dir=cache_dir, resample="lanczos")


def test_corrupt_cache_is_rebuilt(omniglot_dir, tmp_path, arrays):
    cache = tmp_path / arrays.cache_path.name
    cache.write_bytes(b"not a zip")
    rebuilt = prepare_omniglot(omniglot_dir, cache_dir=tmp_path)
    assert rebuilt.cache_path == cache
    assert np.array_equal(rebuilt.images, arrays.images)


def test_unwritable_cache_dir_warns_but_loads(omniglot_dir, tmp_path, arrays):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="could not write the Omniglot cache"):
        loaded = prepare_omniglot(omniglot_dir, cache_dir=blocker / "cache")
    assert np.array_equal(loaded.images, arrays.images)


def test_default_cache_dir_avoids_read_only_source(tmp_path, monkeypatch, omniglot_dir):
    source = tmp_path / "ro"
    source.mkdir()
    source.chmod(0o555)
    data = tmp_path / "data"
    monkeypatch.setenv("MAMLPP_DATA", str(data))
    try:
        assert omniglot_module.default_cache_dir(source) == data / "cache"
        assert omniglot_module.default_cache_dir(tmp_path) == tmp_path
    finally:
        source.chmod(0o755)


def rewrite_zip(src: Path, dst: Path, change) -> None:
    """Copy a zip entry by entry; ``change(name, data)`` returns new bytes or None to drop it."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            data = old.read(info)
            data = change(info.filename, data)
            if data is not None:
                new.writestr(info.filename, data)


def copy_source(omniglot_dir: Path, folder: Path, change=None) -> Path:
    folder.mkdir()
    (folder / "images_background.zip").write_bytes(
        (omniglot_dir / "images_background.zip").read_bytes()
    )
    if change is None:
        (folder / "images_evaluation.zip").write_bytes(
            (omniglot_dir / "images_evaluation.zip").read_bytes()
        )
    else:
        rewrite_zip(
            omniglot_dir / "images_evaluation.zip", folder / "images_evaluation.zip", change
        )
    return folder


def test_changed_source_gets_a_new_cache(omniglot_dir, tmp_path, arrays):
    """Swap two drawers of one character: a new fingerprint, a rebuilt cache, new pixels."""
    with zipfile.ZipFile(omniglot_dir / "images_evaluation.zip") as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".png"))
        first, second = names[0], names[1]
        swapped = {first: archive.read(second), second: archive.read(first)}
    source = copy_source(omniglot_dir, tmp_path / "src", lambda n, d: swapped.get(n, d))
    changed = prepare_omniglot(source, cache_dir=tmp_path / "cache")
    assert changed.cache_path.name != arrays.cache_path.name
    differs = np.flatnonzero((changed.images != arrays.images).any(axis=(1, 2)))
    assert len(differs) == 2  # exactly the two swapped drawers, of one character
    assert arrays.image_class[differs[0]] == arrays.image_class[differs[1]]
    assert np.array_equal(changed.images[differs[0]], arrays.images[differs[1]])
    assert np.array_equal(changed.images[differs[1]], arrays.images[differs[0]])


def test_extracted_folders_give_the_same_data(omniglot_dir, tmp_path, arrays):
    source = tmp_path / "mixed"
    source.mkdir()
    extract_zip(omniglot_dir / "images_evaluation.zip", source)  # folder for one subset
    (source / "images_background.zip").symlink_to(omniglot_dir / "images_background.zip")
    assert find_omniglot(tmp_path) is None
    assert find_omniglot(source) == source
    mixed = prepare_omniglot(source, cache_dir=tmp_path / "cache")
    assert mixed.class_names == arrays.class_names
    assert np.array_equal(mixed.images, arrays.images)


# ----------------------------------------------------------------------------- bad input


def test_missing_subset_is_named(tmp_path, omniglot_dir):
    (tmp_path / "images_background.zip").symlink_to(omniglot_dir / "images_background.zip")
    with pytest.raises(DataError, match="missing images_evaluation.zip"):
        load_omniglot(tmp_path, cache_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_omniglot(tmp_path / "nowhere")


def test_corrupt_png_is_named_and_no_cache_is_written(omniglot_dir, tmp_path):
    with zipfile.ZipFile(omniglot_dir / "images_evaluation.zip") as archive:
        victim = sorted(n for n in archive.namelist() if n.endswith(".png"))[0]
    source = copy_source(
        omniglot_dir, tmp_path / "src", lambda n, d: b"\x89PNG garbage" if n == victim else d
    )
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="unreadable image .*" + victim.split("/", 2)[2]):
        prepare_omniglot(source, cache_dir=cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_incomplete_archive_is_reported(omniglot_dir, tmp_path):
    source = copy_source(
        omniglot_dir, tmp_path / "src", lambda n, d: None if "/character01/" in n else d
    )
    with pytest.raises(DataError, match="has 639 characters, expected 659"):
        prepare_omniglot(source, cache_dir=tmp_path)
    source2 = copy_source(
        omniglot_dir, tmp_path / "src2", lambda n, d: None if n.endswith("_20.png") else d
    )
    with pytest.raises(DataError, match="has 19 images, expected 20"):
        prepare_omniglot(source2, cache_dir=tmp_path)


def test_truncated_zip_is_reported(omniglot_dir, tmp_path):
    source = copy_source(omniglot_dir, tmp_path / "src")
    path = source / "images_evaluation.zip"
    path.write_bytes(path.read_bytes()[:1_000_000])
    with pytest.raises(DataError, match="not a readable zip"):
        prepare_omniglot(source, cache_dir=tmp_path)


def test_escaping_entry_in_source_zip_is_refused(omniglot_dir, tmp_path):
    source = copy_source(omniglot_dir, tmp_path / "src")
    with zipfile.ZipFile(source / "images_evaluation.zip", "a") as archive:
        archive.writestr("images_evaluation/../../evil.png", b"x")
    with pytest.raises(DataError, match="refusing zip entry .*escape"):
        prepare_omniglot(source, cache_dir=tmp_path)


def test_load_dataset_finds_omniglot_in_data_dir(shared_dir, cache_dir, arrays, tmp_path):
    splits = load_dataset("omniglot", shared_dir / "data", cache_dir=cache_dir)
    assert splits["val"].num_classes == 50
    omniglot = shared_dir / "data" / "omniglot"
    vinyals = load_dataset("omniglot-vinyals", omniglot, cache_dir=cache_dir)
    assert vinyals["val"].num_classes == 688
    with pytest.raises(DataError, match="Omniglot not found in .*mamlpp data download omniglot"):
        load_dataset("omniglot", tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar", tmp_path)
    with pytest.raises(DataError, match="unknown Omniglot split"):
        load_omniglot(shared_dir / "data" / "omniglot", split="lakes", cache_dir=cache_dir)
