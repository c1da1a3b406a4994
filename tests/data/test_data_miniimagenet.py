"""mini-ImageNet loaders on small generated fixtures in each accepted format."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mamlpp.data.miniimagenet as mini
from mamlpp.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EpisodeSampler,
    find_mini_imagenet,
    load_dataset,
    load_mini_imagenet,
)
from mamlpp.data.omniglot_splits import SPLITS_DIR
from mamlpp.errors import DataError

CLASSES = {"train": 4, "val": 3, "test": 3}
PER_CLASS = 6


def wnid(split: str, c: int) -> str:
    return f"n{['train', 'val', 'test'].index(split)}{c:07d}"


def smooth_image(rng: np.random.Generator, size=(84, 84)) -> np.ndarray:
    """Low-frequency colour images survive JPEG well and differ clearly between samples."""
    h, w = size
    base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))


@pytest.fixture(scope="module")
def pickle_source(tmp_path_factory):
    """mini-imagenet-cache-*.pkl with shuffled rows, so class_dict really matters."""
    root = tmp_path_factory.mktemp("pickles")
    rng = np.random.default_rng(0)
    expected = {}
    for split, n in CLASSES.items():
        total = n * PER_CLASS
        data = rng.integers(0, 256, (total, 84, 84, 3), dtype=np.uint8)
        rows = rng.permutation(total)
        class_dict = {
            wnid(split, c): rows[c * PER_CLASS : (c + 1) * PER_CLASS].tolist()
            for c in reversed(range(n))
        }  # unsorted keys on purpose
        name = "validation" if split == "val" else split
        with open(root / f"mini-imagenet-cache-{name}.pkl", "wb") as handle:
            pickle.dump({"image_data": data, "class_dict": class_dict}, handle, protocol=4)
        expected[split] = (data, class_dict)
    return root, expected


def test_pickle_caches_load_as_uint8_nchw(pickle_source):
    root, expected = pickle_source
    splits = load_mini_imagenet(root)
    assert {name: s.num_classes for name, s in splits.items()} == CLASSES
    for name, split in splits.items():
        data, class_dict = expected[name]
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 84, 84)
        assert split.class_names == sorted(class_dict)
        assert split.mean == IMAGENET_MEAN and split.std == IMAGENET_STD and not split.rotate
        for c, class_name in enumerate(split.class_names):
            got = split.images[split.class_images[c, : split.class_counts[c]]]
            want = torch.from_numpy(data[class_dict[class_name]]).permute(0, 3, 1, 2)
            assert sorted(map(bytes, got.numpy())) == sorted(map(bytes, want.numpy()))
    assert splits["train"].meta["format"] == "pickle"


@pytest.mark.parametrize("protocol", [2, 3])
def test_older_pickle_protocols_load(tmp_path, protocol):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (2 * PER_CLASS, 84, 84, 3), dtype=np.uint8)
    class_dict = {"n0": list(range(PER_CLASS)), "n1": list(range(PER_CLASS, 2 * PER_CLASS))}
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as handle:
        pickle.dump({"image_data": data, "class_dict": class_dict}, handle, protocol=protocol)
    split = load_mini_imagenet(tmp_path, splits=("train",))["train"]
    assert split.class_names == ["n0", "n1"]
    assert torch.equal(split.images[0], torch.from_numpy(data[0]).permute(2, 0, 1))


def test_pickle_episodes_are_imagenet_normalised(pickle_source):
    root, _ = pickle_source
    split = load_mini_imagenet(root, splits=("train",))["train"]
    sampler = EpisodeSampler(split, ways=4, shots=1, targets=5, seed=0)
    batch = sampler.sample([0, 1])
    assert batch.query_x.shape == (2, 20, 3, 84, 84)
    image_id = sampler.sample_indices([1]).images[0, 2, 1]  # slot 2, first target (K=1)
    raw = split.images[image_id].double() / 255
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    torch.testing.assert_close(
        batch.query_x[1, 2 * 5].double(), (raw - mean) / std, atol=1e-5, rtol=1e-5
    )


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as handle:
        pickle.dump({"image_data": _Evil(str(target)), "class_dict": {}}, handle)
    with pytest.raises(DataError, match="not a valid mini-ImageNet pickle .*refusing to load"):
        load_mini_imagenet(tmp_path, splits=("train",))
    assert not target.exists()


def test_bad_pickles_are_reported(tmp_path):
    path = tmp_path / "mini-imagenet-cache-train.pkl"
    cases = [
        ({"image_data": np.zeros((2, 84, 84, 3), np.uint8)}, "lacks the keys"),
        ({"image_data": np.zeros((2, 84, 84), np.uint8), "class_dict": {}}, "should be uint8"),
        (
            {"image_data": np.zeros((2, 84, 84, 3), np.float32), "class_dict": {"a": [0]}},
            "should be uint8, got float32",
        ),
        (
            {"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"a": [0, 5]}},
            "class a lists rows outside image_data",
        ),
    ]
    for content, message in cases:
        path.write_bytes(pickle.dumps(content))
        with pytest.raises(DataError, match=message):
            load_mini_imagenet(tmp_path, splits=("train",))
    path.write_bytes(pickle.dumps(cases[0][0])[:100])
    with pytest.raises(DataError, match="not a valid mini-ImageNet pickle"):
        load_mini_imagenet(tmp_path, splits=("train",))
    with pytest.raises(DataError, match="missing mini-imagenet-cache-val.pkl"):
        load_mini_imagenet(tmp_path, splits=("val",))


def write_folders(root: Path, seed: int = 0) -> dict[str, dict[str, list[Path]]]:
    rng = np.random.default_rng(seed)
    files: dict[str, dict[str, list[Path]]] = {}
    for split, n in CLASSES.items():
        files[split] = {}
        for c in range(n):
            folder = root / split / wnid(split, c)
            folder.mkdir(parents=True)
            paths = []
            for i in range(PER_CLASS):
                path = folder / f"{wnid(split, c)}{i + 1:08d}.jpg"
                Image.fromarray(smooth_image(rng)).save(path, quality=95)
                paths.append(path)
            files[split][wnid(split, c)] = paths
    return files


def decoded(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def test_split_folders_load_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "mini"
    files = write_folders(root)
    odd = files["test"][wnid("test", 0)][0]  # one image of another size: resized to 84x84
    Image.fromarray(smooth_image(np.random.default_rng(9), (100, 90))).save(odd, quality=95)
    cache = tmp_path / "cache"
    splits = load_mini_imagenet(root, cache_dir=cache)
    assert {name: s.num_classes for name, s in splits.items()} == CLASSES
    train = splits["train"]
    assert train.class_names == sorted(files["train"])
    for c, name in enumerate(train.class_names):
        for slot, path in enumerate(files["train"][name]):
            assert np.array_equal(train.images[train.class_images[c, slot]].numpy(), decoded(path))
    assert splits["test"].images.shape[1:] == (3, 84, 84)
    assert len(list(cache.glob("miniimagenet-*-84px-*.npz"))) == 3
    assert train.meta["format"] == "folders"

    # The second load reads the cache only.
    monkeypatch.setattr(mini, "_decode_image", _no_decode)
    again = load_mini_imagenet(root, cache_dir=cache)
    assert torch.equal(again["train"].images, train.images)
    # A changed file changes the fingerprint, so that split is decoded again.
    Image.fromarray(smooth_image(np.random.default_rng(5))).save(
        files["val"][wnid("val", 1)][2], quality=80
    )
    with pytest.raises(AssertionError, match="decoded"):
        load_mini_imagenet(root, cache_dir=cache, splits=("val",))
    monkeypatch.undo()
    fresh = load_mini_imagenet(root, cache_dir=cache, splits=("val",))["val"]
    assert np.array_equal(
        fresh.images[fresh.class_images[1, 2]].numpy(), decoded(files["val"][wnid("val", 1)][2])
    )


def _no_decode(*args):
    raise AssertionError("decoded an image although a cache exists")


def test_flat_folder_with_csvs(tmp_path):
    root = tmp_path / "flat"
    files = write_folders(tmp_path / "staging")
    (root / "images").mkdir(parents=True)
    for split, classes in files.items():
        lines = ["filename,label"]
        for name, paths in classes.items():
            for path in paths:
                path.rename(root / "images" / path.name)
                lines.append(f"{path.name},{name}")
        # Rows in reverse order: the loader must not depend on the CSV's order.
        (root / f"{split}.csv").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    splits = load_mini_imagenet(root, cache_dir=tmp_path / "cache")
    assert {name: s.num_classes for name, s in splits.items()} == CLASSES
    val = splits["val"]
    assert val.meta["format"] == "flat"
    for c, name in enumerate(val.class_names):
        expected = sorted(p.name for p in files["val"][name])
        for slot, file_name in enumerate(expected):
            image = val.images[val.class_images[c, slot]].numpy()
            assert np.array_equal(image, decoded(root / "images" / file_name))

    missing = root / "images" / sorted(p.name for p in files["test"][wnid("test", 2)])[0]
    missing.unlink()
    with pytest.raises(DataError, match=f"missing image .*{missing.name} named in test.csv"):
        load_mini_imagenet(root, cache_dir=tmp_path / "cache", splits=("test",))
    (root / "val.csv").write_text("file,class\n")
    with pytest.raises(DataError, match="header 'filename,label'"):
        load_mini_imagenet(root, cache_dir=tmp_path / "cache", splits=("val",))


def test_corrupt_jpeg_is_named_and_nothing_cached(tmp_path):
    root = tmp_path / "mini"
    files = write_folders(root)
    bad = files["val"][wnid("val", 0)][1]
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match=f"corrupt image .*{bad.name}"):
        load_mini_imagenet(root, cache_dir=tmp_path / "cache", splits=("val",))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_packaged_ravi_csvs_equal_the_shared_ones(shared_dir):
    for split, classes in (("train", 64), ("val", 16), ("test", 20)):
        packaged = gzip.decompress(
            (SPLITS_DIR / "miniimagenet" / "ravi" / f"{split}.csv.gz").read_bytes()
        )
        shared = shared_dir / "data" / "miniimagenet" / "splits" / "ravi" / f"{split}.csv"
        assert packaged == shared.read_bytes()
        rows = mini._read_csv(Path("/nonexistent"), split)  # falls back to the packaged copy
        assert len(rows) == classes * 600 and len({label for _, label in rows}) == classes


def test_find_and_load_by_name(pickle_source, tmp_path):
    root, _ = pickle_source
    data = tmp_path / "data"
    (data / "miniimagenet").mkdir(parents=True)
    for path in root.iterdir():
        (data / "miniimagenet" / path.name).symlink_to(path)
    assert find_mini_imagenet(data) == data / "miniimagenet"
    splits = load_dataset("mini-imagenet", data, splits=("val",))
    assert list(splits) == ["val"] and splits["val"].num_classes == 3
    assert find_mini_imagenet(tmp_path / "empty") is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no mini-ImageNet found in"):
        load_mini_imagenet(tmp_path / "empty")
    with pytest.raises(DataError, match="mini-ImageNet not found in .*mamlpp data download"):
        load_dataset("mini-imagenet", tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_mini_imagenet(tmp_path / "nowhere")
