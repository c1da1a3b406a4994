"""CIFAR-FS, FC100 and tieredImageNet loaders on small fixtures generated here in exactly the
released formats (CIFAR-100 python pickles and tarball; tieredImageNet PNG pickles, npz and
folders), the shipped class splits, and the downloads."""

from __future__ import annotations

import functools
import http.server
import io
import pickle
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_download import (  # noqa: F401  (Server backs the `server` fixture)
    Server,
    md5,
    server,  # noqa: F401  (a fixture)
)

import mamlpp.data.sources as sources
from mamlpp.cli.main import main
from mamlpp.data import load_dataset
from mamlpp.data.cifar import class_split
from mamlpp.data.sources import RemoteFile
from mamlpp.errors import DataError
from mamlpp.run.datasource import load_splits
from mamlpp.run.experiment import DataSection
from mamlpp.run.presets import resolve_config

# CIFAR-100's superclasses (coarse labels 0..19) and their fine classes, the test's own oracle.
SUPERCLASSES = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
COARSE_NAMES = list(SUPERCLASSES)
COARSE_OF = {fine: i for i, c in enumerate(COARSE_NAMES) for fine in SUPERCLASSES[c].split()}
FINE_NAMES = sorted(COARSE_OF)  # CIFAR-100's meta lists them alphabetically
# Oreshkin et al. (TADAM): superclass indices per split.
FC100_SUPERCLASSES = {
    "train": {1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19},
    "val": {8, 11, 13, 16},
    "test": {0, 7, 12, 14},
}
PER_CLASS = {"train": 3, "test": 1}  # images per class in the fixture's train/test pickles


@pytest.fixture
def serve(tmp_path: Path):
    """``serve(data) -> url`` of a file on a local HTTP server (no network needed)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def url_of(data: bytes) -> str:
        (root / "cifar-100-python.tar.gz").write_bytes(data)
        return f"http://127.0.0.1:{httpd.server_address[1]}/cifar-100-python.tar.gz"

    yield url_of
    httpd.shutdown()
    httpd.server_close()


class _Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2's ``str`` (SHORT_BINSTRING / BINSTRING), as the official
    CIFAR-100 pickles (cPickle, protocol 2) store their keys, names and array data."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def _python2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _cifar_pickles() -> dict[str, bytes]:
    """``train``, ``test`` and ``meta`` as the official Python-2 pickles (bytes keys, protocol 2).
    Pixel 0 of the red plane = fine label, of the green plane = image number, of the blue = 201."""
    out = {}
    counter = 0
    for part, count in PER_CLASS.items():
        labels = [c for c in range(100) for _ in range(count)]
        data = np.zeros((len(labels), 3072), dtype=np.uint8)
        for row, label in enumerate(labels):
            data[row, 0] = label
            data[row, 1024] = counter % 256
            data[row, 2048] = 201  # blue plane, first pixel: checks the plane layout
            counter += 1
        batch = {
            b"batch_label": f"{part} batch".encode(),
            b"filenames": [f"img{i}.png".encode() for i in range(len(labels))],
            b"fine_labels": labels,
            b"coarse_labels": [COARSE_OF[FINE_NAMES[c]] for c in labels],
            b"data": data,
        }
        out[part] = _python2_pickle(batch)
    meta = {
        b"fine_label_names": [n.encode() for n in FINE_NAMES],
        b"coarse_label_names": [n.encode() for n in COARSE_NAMES],
    }
    out["meta"] = _python2_pickle(meta)
    return out


def _cifar_tarball(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, data in _cifar_pickles().items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_shipped_class_splits() -> None:
    fs = class_split("cifar-fs")
    assert [len(fs[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert sorted(fs["train"] + fs["val"] + fs["test"]) == FINE_NAMES
    assert "whale" in fs["test"] and "otter" in fs["val"]  # from Bertinetto et al.'s lists
    fc = class_split("fc100")
    assert [len(fc[s]) for s in ("train", "val", "test")] == [60, 20, 20]
    assert sorted(fc["train"] + fc["val"] + fc["test"]) == FINE_NAMES
    for split, superclasses in FC100_SUPERCLASSES.items():
        assert {COARSE_OF[c] for c in fc[split]} == superclasses  # whole superclasses only


@pytest.mark.parametrize("name", ["cifar-fs", "fc100"])
@pytest.mark.parametrize("form", ["tarball", "folder"])
def test_cifar_loaders_on_generated_pickles(name, form, tmp_path: Path) -> None:
    if form == "tarball":
        _cifar_tarball(tmp_path / "cifar100" / "cifar-100-python.tar.gz")
    else:
        folder = tmp_path / "cifar-100-python"
        folder.mkdir()
        for file_name, data in _cifar_pickles().items():
            (folder / file_name).write_bytes(data)
    splits = load_dataset(name, tmp_path)
    expected = class_split(name)
    for split_name, split in splits.items():
        assert split.class_names == expected[split_name]
        assert split.image_shape == (3, 32, 32)
        assert split.class_counts.tolist() == [4] * split.num_classes  # train + test pooled
        # Every image of class c carries CIFAR's fine label of c in its red plane.
        fine = [FINE_NAMES.index(c) for c in split.class_names]
        red = split.images[split.class_images, 0, 0, 0]  # [classes, 4]
        assert red.tolist() == [[f] * 4 for f in fine]
        assert (split.images[:, 2, 0, 0] == 201).all() and (split.images[:, 2, 0, 1] == 0).all()
        assert split.mean == (0.5071, 0.4865, 0.4409)


def test_cifar_resize_and_errors(tmp_path: Path) -> None:
    _cifar_tarball(tmp_path / "cifar-100-python.tar.gz")
    small = load_dataset("cifar-fs", tmp_path, image_size=16)
    assert small["test"].image_shape == (3, 16, 16)
    with pytest.raises(DataError, match="CIFAR-100 not found"):
        load_dataset("fc100", tmp_path / "empty")
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="cannot read CIFAR-100"):
        load_dataset("cifar-fs", tmp_path)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    pickles = _cifar_pickles()
    names = [n.encode() for n in FINE_NAMES]
    names[FINE_NAMES.index("whale")] = b"orca"
    pickles["meta"] = _python2_pickle({b"fine_label_names": names, b"coarse_label_names": []})
    for name, data in pickles.items():
        (folder / name).write_bytes(data)
    with pytest.raises(DataError, match="has no class 'whale'"):
        load_dataset("cifar-fs", tmp_path)


def test_cifar_download_is_md5_checked_and_then_loads(server, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    assert sources.CIFAR100_FILE.md5 == "eb9058c3a382ffc7106e4002c42a8d85"  # published md5
    assert sources.CIFAR100_FILE.urls[0].startswith("https://www.cs.toronto.edu/~kriz/")
    payload = _cifar_tarball(tmp_path / "src" / "c.tar.gz").read_bytes()
    server.files["/cifar-100-python.tar.gz"] = payload
    remote = RemoteFile("cifar-100-python.tar.gz", (server.url("/cifar-100-python.tar.gz"),))
    monkeypatch.setattr(
        sources, "CIFAR100_FILE", RemoteFile(remote.name, remote.urls, md5(payload))
    )
    data = tmp_path / "data"
    assert main(["data", "download", "fc100", "--data-dir", str(data)]) == 0
    splits = load_splits(DataSection(dataset="fc100", image_size=32), data, download=False)
    assert splits["val"].num_classes == 20
    monkeypatch.setattr(sources, "CIFAR100_FILE", RemoteFile(remote.name, remote.urls, "0" * 32))
    (data / "cifar100" / "cifar-100-python.tar.gz").unlink()
    assert main(["data", "download", "cifar-fs", "--data-dir", str(data)]) == 1  # bad md5


# ----------------------------------------------------------------------------- tieredImageNet

TIERED_CLASSES = {"train": 4, "val": 3, "test": 3}
TIERED_PER_CLASS = 3


def _colour(split: str, c: int, i: int) -> tuple[int, int, int]:
    return (40 * c + 10, 17 * i + 5, {"train": 1, "val": 2, "test": 3}[split])


def _tiered_images(split: str) -> tuple[list[np.ndarray], list[int], list[str]]:
    pixels, labels = [], []
    for c in range(TIERED_CLASSES[split]):
        for i in range(TIERED_PER_CLASS):
            pixels.append(np.full((84, 84, 3), _colour(split, c, i), dtype=np.uint8))
            labels.append(c)
    names = [f"n{split}{c:05d}" for c in range(TIERED_CLASSES[split])]
    return pixels, labels, names


def _write_tiered(root: Path, form: str) -> Path:
    root.mkdir(parents=True)
    for split in TIERED_CLASSES:
        pixels, labels, names = _tiered_images(split)
        if form == "folders":
            for array, label in zip(pixels, labels, strict=True):
                folder = root / split / names[label]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / f"{len(list(folder.iterdir())):04d}.png")
            continue
        record = {
            "label_specific": np.array(labels, dtype=np.int64),
            "label_general": np.zeros(len(labels), dtype=np.int64),
            "label_specific_str": names,
            "label_general_str": ["n00000000"],
        }
        (root / f"{split}_labels.pkl").write_bytes(_python2_pickle(record))
        if form == "png-pickle":
            encoded = []
            for array in pixels:
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="PNG")
                encoded.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
            (root / f"{split}_images_png.pkl").write_bytes(_python2_pickle(encoded))
        else:
            np.savez(root / f"{split}_images.npz", images=np.stack(pixels))
    return root


@pytest.mark.parametrize("form", ["png-pickle", "npz", "folders"])
def test_tiered_imagenet_formats(form, tmp_path: Path) -> None:
    _write_tiered(tmp_path / "tiered-imagenet", form)
    splits = load_dataset("tiered-imagenet", tmp_path)
    for name, split in splits.items():
        _, _, names = _tiered_images(name)
        assert split.class_names == names
        assert split.image_shape == (3, 84, 84)
        assert split.class_counts.tolist() == [TIERED_PER_CLASS] * TIERED_CLASSES[name]
        assert split.mean == (0.485, 0.456, 0.406)
        for c in range(split.num_classes):
            for i in range(TIERED_PER_CLASS):
                image = split.images[split.class_images[c, i]]
                assert image[:, 0, 0].tolist() == list(_colour(name, c, i))
    if form == "png-pickle":  # decoded once into a cache beside the pickles
        assert len(list((tmp_path / "tiered-imagenet").glob("tiered-imagenet-*.npz"))) == 3


def test_tiered_imagenet_missing_or_broken_explains(tmp_path: Path, capsys) -> None:
    with pytest.raises(DataError, match="no public download"):
        load_dataset("tiered-imagenet", tmp_path)
    assert main(["data", "download", "tiered-imagenet", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "tieredImageNet has no public download" in err and "\n" not in err
    root = _write_tiered(tmp_path / "tiered-imagenet", "npz")
    (root / "val_images.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read images from"):
        load_dataset("tiered-imagenet", tmp_path)


# ----------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    ("preset", "size"), [("cifar-fs-5w1s", 32), ("fc100-5w5s", 32), ("tiered-imagenet-5w1s", 84)]
)
def test_benchmark_presets(preset: str, size: int) -> None:
    plus, plain = resolve_config(preset), resolve_config(f"{preset}-maml")
    assert plus.data.dataset == preset.rsplit("-", 1)[0] and plus.data.image_size == size
    assert plus.techniques == ["MSL", "DA", "BNRS", "BNWB", "LSLR", "CA"] and not plain.techniques


def test_cifar_fs_preset_trains_on_the_fixture(tmp_path: Path, capsys) -> None:
    _cifar_tarball(tmp_path / "data" / "cifar-100-python.tar.gz")
    args = ["train", "--preset", "cifar-fs-5w1s", "--data-dir", str(tmp_path / "data")]
    args += ["--out", str(tmp_path / "run"), "--quiet", "--no-download"]
    for setting in (
        "data.targets=3",  # the fixture has 4 images per class
        "model.channels=8",
        "train.epochs=1",
        "train.iterations_per_epoch=2",
        "train.log_every=1",
        "train.checkpoint_every=0",
        "train.threads=1",
        "eval.val_tasks=4",
        "eval.test_tasks=4",
        "eval.top_k=1",
    ):
        args += ["--set", setting]
    assert main(args) == 0
    assert "test:" in capsys.readouterr().out
