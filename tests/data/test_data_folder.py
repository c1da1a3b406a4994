"""Folder datasets of the user's own images, built here from real Omniglot characters: both
layouts, counts, the seeded class split, the cache, and bad input."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from own_images_helpers import omniglot_characters, write_classes
from PIL import Image

import mamlpp.data.images as images_module
from mamlpp.data import EpisodeSampler
from mamlpp.data.folder import split_classes
from mamlpp.errors import ConfigError, DataError
from mamlpp.run.datasource import load_splits, preprocessing_for
from mamlpp.run.experiment import DataSection, build_config

GREY28 = preprocessing_for(DataSection(dataset="folder"), channels=1)


@pytest.fixture(scope="module")
def characters(omniglot_dir) -> dict[str, dict[str, bytes]]:
    return omniglot_characters(omniglot_dir / "images_background.zip", 30)


@pytest.fixture
def flat(tmp_path: Path, characters) -> Path:
    return write_classes(tmp_path / "flat", characters)


def _split_tree(root: Path, characters) -> Path:
    names = sorted(characters)
    for split, chosen in (("train", names[:20]), ("val", names[20:25]), ("test", names[25:])):
        write_classes(root / split, {n: characters[n] for n in chosen})
    return root


def _folder(root: Path, **data) -> dict:
    return load_splits(DataSection(dataset="folder", **data), root, progress=False)


def test_split_layout_keeps_the_given_splits(tmp_path: Path, characters) -> None:
    splits = _folder(_split_tree(tmp_path / "tree", characters))
    names = sorted(characters)
    assert splits["train"].class_names == names[:20]
    assert splits["val"].class_names == names[20:25]
    assert splits["test"].class_names == names[25:]
    for split in splits.values():
        assert split.image_shape == (1, 28, 28)  # grey Omniglot PNGs: channels "auto" -> 1
        assert split.class_counts.tolist() == [20] * split.num_classes
        assert split.num_images == 20 * split.num_classes
    # The images are the files' pixels, resized: class 0's first image, from the PNG itself.
    first = sorted(characters[names[0]])[0]
    expected = GREY28.pixels(characters[names[0]][first])
    assert np.array_equal(splits["train"].images[0].numpy(), expected)


def test_flat_layout_is_split_by_class_with_a_seed(flat: Path, characters) -> None:
    splits = _folder(flat, val_fraction=0.2, test_fraction=0.2, split_seed=3)
    counts = [splits[s].num_classes for s in ("train", "val", "test")]
    assert counts == [18, 6, 6]  # round(30 * 0.2) = 6 each, the rest train
    seen = [c for s in ("train", "val", "test") for c in splits[s].class_names]
    assert sorted(seen) == sorted(characters)  # every class once
    assert splits["test"].class_names == split_classes(list(characters), 0.2, 0.2, 3)["test"]
    other = split_classes(list(characters), 0.2, 0.2, 4)
    assert other["test"] != splits["test"].class_names  # the seed matters
    # Episodes come from the on-device sampler as for the built-in datasets.
    batch = EpisodeSampler(splits["train"], 5, 1, 2, seed=0).sample(range(3))
    assert batch.support_x.shape == (3, 5, 1, 28, 28)
    assert float(batch.support_x.min()) >= 0.0 and float(batch.support_x.max()) <= 1.0


def test_too_few_classes_for_the_fractions_is_one_line(tmp_path: Path, characters) -> None:
    root = write_classes(tmp_path / "few", dict(list(characters.items())[:3]))
    with pytest.raises(DataError, match="cannot be split into train/val/test"):
        _folder(root, val_fraction=0.1, test_fraction=0.1)


def test_second_load_reads_the_cache_only(flat: Path, monkeypatch) -> None:
    first = _folder(flat)
    cache = Path(first["train"].meta["cache"])
    assert cache.is_file() and cache.parent == flat and cache.name.startswith(".")

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded although the cache is current")

    monkeypatch.setattr(images_module.Preprocessing, "pixels", no_decoding)
    start = time.perf_counter()
    second = _folder(flat)
    assert time.perf_counter() - start < 5.0  # generous: the point is "no decoding"
    for name in ("train", "val", "test"):
        assert second[name].images.equal(first[name].images)
        assert second[name].class_names == first[name].class_names


def test_a_changed_file_rebuilds_the_cache(flat: Path) -> None:
    first = _folder(flat)
    victim = sorted((flat / first["train"].class_names[0]).iterdir())[0]
    Image.new("L", (105, 105), color=0).save(victim)  # all ink
    second = _folder(flat)
    assert second["train"].meta["cache"] != first["train"].meta["cache"]
    assert int(second["train"].images[0].max()) == 0


def test_empty_class_folder_is_refused(flat: Path) -> None:
    (flat / "zz_empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*zz_empty has no images"):
        _folder(flat)


def test_corrupt_image_is_named(flat: Path) -> None:
    bad = next((flat / sorted(p.name for p in flat.iterdir())[0]).iterdir())
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=f"unreadable image .*{bad.name}"):
        _folder(flat)


def _add_mixed_sizes(root: Path) -> Path:
    """A 60x40 RGB and a 28x28 grey image in an extra class (the rest are 105x105 grey)."""
    folder = root / "zz_mixed"
    folder.mkdir()
    Image.new("RGB", (60, 40), color=(255, 255, 255)).save(folder / "a.jpg")
    Image.new("L", (28, 28), color=0).save(folder / "b.png")
    return root


def test_mixed_sizes_are_resized_when_allowed(flat: Path) -> None:
    splits = _folder(_add_mixed_sizes(flat), channels="grey")
    assert {s.image_shape for s in splits.values()} == {(1, 28, 28)}
    assert sum(s.num_classes for s in splits.values()) == 31


def test_mixed_sizes_are_refused_when_resizing_is_off(flat: Path) -> None:
    with pytest.raises(DataError, match=r"is 105x105, the model takes 28x28 .*resize=never"):
        _folder(_add_mixed_sizes(flat), resize="never")


def test_colour_images_give_three_channels_and_chosen_normalisation(flat: Path) -> None:
    _add_mixed_sizes(flat)  # one RGB JPEG, but it is white (R = G = B): still grey
    assert _folder(flat)["train"].image_shape[0] == 1
    Image.new("RGB", (28, 28), color=(200, 10, 10)).save(flat / "zz_mixed" / "c.png")
    splits = _folder(flat, normalize="imagenet")
    assert splits["train"].image_shape == (3, 28, 28)
    assert splits["train"].mean == (0.485, 0.456, 0.406)
    rgb = _folder(flat, channels="rgb", normalize="half")
    assert rgb["val"].mean == (0.5, 0.5, 0.5)
    with pytest.raises(DataError, match="imagenet normalisation needs RGB"):
        _folder(flat, channels="grey", normalize="imagenet")


def test_preprocessing_is_stored_in_the_run_config() -> None:
    config = build_config(
        {"data": {"dataset": "folder", "channels": "rgb", "normalize": "half", "resize": "never"}}
    )
    assert config.to_dict()["data"]["normalize"] == "half"
    prep = preprocessing_for(config.data)
    assert (prep.channels, prep.mean, prep.resize) == (3, (0.5, 0.5, 0.5), False)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dataset": "omniglot", "channels": "rgb"}, "applies to data.dataset='folder' only"),
        ({"dataset": "folder", "val_fraction": 0.0}, "between 0 and 1"),
        ({"dataset": "folder", "val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
        ({"dataset": "folder", "resize": "sometimes"}, "data.resize must be one of"),
    ],
)
def test_folder_config_errors(data, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({"data": data})


def test_folder_needs_a_data_dir(monkeypatch) -> None:
    monkeypatch.delenv("MAMLPP_DATA", raising=False)
    with pytest.raises(ConfigError, match="needs --data-dir"):
        load_splits(DataSection(dataset="folder"), None, progress=False)


def test_decoded_bytes_match_a_file(tmp_path: Path) -> None:
    image = Image.new("RGB", (50, 30), color=(1, 2, 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (tmp_path / "x.png").write_bytes(buffer.getvalue())
    rgb = preprocessing_for(DataSection(dataset="folder", channels="rgb"))
    assert np.array_equal(rgb.pixels(buffer.getvalue()), rgb.pixels(tmp_path / "x.png"))
    assert np.array_equal(rgb.pixels(image), rgb.pixels(tmp_path / "x.png"))


# ------------------------------------------------------------------ the run's preprocessing


def test_builtin_preprocessing_matches_the_loaders(omniglot_dir, tmp_path: Path) -> None:
    """`mamlpp adapt` prepares a new image as the run's loader prepared its training images:
    Omniglot's 1-bit PNGs shrink with PIL's rule for mode "1" (nearest, as in the reference),
    or with data.resample=bilinear as PIL's antialiased bilinear on grey."""
    from mamlpp.data.miniimagenet import _decode_image

    binary = preprocessing_for(DataSection(dataset="omniglot"))
    grey = preprocessing_for(DataSection(dataset="omniglot-lake", resample="bilinear"))
    characters = omniglot_characters(omniglot_dir / "images_evaluation.zip", 2)
    for files in characters.values():
        for data in list(files.values())[:5]:
            with Image.open(io.BytesIO(data)) as image:
                nearest = np.asarray(image.resize((28, 28)), dtype=np.uint8) * 255
                averaged = np.asarray(image.convert("L").resize((28, 28), Image.BILINEAR))
            assert np.array_equal(binary.pixels(data)[0], nearest)
            assert np.array_equal(grey.pixels(data)[0], averaged)
            assert len(np.unique(averaged)) > 2  # grey edges: not the binary rule again
    mini = preprocessing_for(DataSection(dataset="mini-imagenet", image_size=84))
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(photo)
    assert np.array_equal(mini.pixels(photo), _decode_image(photo, 84))
    cifar = preprocessing_for(DataSection(dataset="cifar-fs", image_size=32))
    assert (cifar.channels, cifar.mean) == (3, (0.5071, 0.4865, 0.4409))


def test_data_info_shows_a_folder_dataset(flat: Path, capsys) -> None:
    from mamlpp.cli.main import main

    assert main(["data", "info", "folder", "--data-dir", str(flat)]) == 0
    out = capsys.readouterr().out
    assert "folder (flat layout)" in out and "train: 22 classes, 440 images (1x28x28)" in out


def test_runs_from_before_the_folder_keys_still_resume() -> None:
    from mamlpp.run.experiment import check_resumable

    new = build_config({}).to_dict()
    old = {**new, "data": {k: v for k, v in new["data"].items() if k not in ("channels", "resize")}}
    check_resumable(old, new)  # the missing keys take their defaults: nothing changed
    changed = {**new, "data": {**new["data"], "resize": "never"}}
    with pytest.raises(ConfigError, match="data.resize"):
        check_resumable(old, changed)
