"""Groups and sources of the user's own image folders (data.groups, data.sources,
data.source_pattern): read from the layout or the file names, used by within-group and
source-disjoint episodes, and the plain folder left exactly as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mamlpp.data import EpisodeSampler
from mamlpp.data.folder import split_classes
from mamlpp.errors import DataError
from mamlpp.run.datasource import load_splits
from mamlpp.run.experiment import DataSection

FRACTIONS = {"val_fraction": 0.2, "test_fraction": 0.2}


def write_images(folder: Path, names: list[str], seed: int) -> None:
    """One random 16x16 grey PNG per name in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


def alphabets(root: Path, groups: int = 5, classes: int = 6, people: int = 3) -> Path:
    """root/<alphabet>/<letter>/<person>_<n>.png: every person draws every letter twice."""
    for g in range(groups):
        for c in range(classes):
            names = [f"p{p}_{n}.png" for p in range(people) for n in range(2)]
            write_images(root / f"alpha{g}" / f"letter{c}", names, seed=g * 100 + c)
    return root


def load(root: Path, **data) -> dict:
    section = DataSection(dataset="folder", image_size=16, **{**FRACTIONS, **data})
    return load_splits(section, root, progress=False)


def group_of(split) -> list[str]:
    assert split.class_groups is not None
    return [split.group_names[g] for g in split.class_groups.tolist()]


def test_group_folders_group_the_classes_and_a_flat_folder_is_split_by_group(tmp_path):
    splits = load(alphabets(tmp_path / "letters"), groups="folders", split_seed=1)
    expected = split_classes([f"alpha{g}" for g in range(5)], 0.2, 0.2, 1, "groups")
    for name, split in splits.items():
        # Class names are "group/class", unique although every alphabet has a "letter0".
        assert len(set(split.class_names)) == split.num_classes == 6 * len(expected[name])
        assert group_of(split) == [c.split("/")[0] for c in split.class_names]
        assert list(split.group_names) == expected[name]  # whole groups go to one split
        assert split.image_sources is None
    assert "groups: folders" in splits["train"].meta["dataset"]


def test_within_group_tasks_stay_in_one_group(tmp_path):
    train = load(alphabets(tmp_path / "letters"), groups="folders")["train"]
    sampler = EpisodeSampler(train, 5, 1, 1, seed=3, within_group=True)
    classes = sampler.sample_indices(range(200)).classes  # [200, 5]
    groups = train.class_groups[classes]
    assert (groups == groups[:, :1]).all()
    assert len(set(groups[:, 0].tolist())) == len(train.group_names)  # every group is drawn
    plain = EpisodeSampler(train, 5, 1, 1, seed=3).sample_indices(range(200)).classes
    mixed = train.class_groups[plain]
    assert not (mixed == mixed[:, :1]).all()  # the check above can fail


def test_split_folders_take_groups_inside_each_split(tmp_path):
    root = tmp_path / "tree"
    for split, groups in (("train", ("a", "b")), ("val", ("c",)), ("test", ("d",))):
        for group in groups:
            for c in range(3):
                write_images(root / split / group / f"x{c}", ["1.png", "2.png"], seed=c)
    splits = load(root, groups="folders")
    assert splits["train"].class_names == ["a/x0", "a/x1", "a/x2", "b/x0", "b/x1", "b/x2"]
    assert splits["train"].class_groups.tolist() == [0, 0, 0, 1, 1, 1]
    assert splits["train"].group_names == ("a", "b")
    assert splits["test"].class_names == ["d/x0", "d/x1", "d/x2"]


def test_sources_from_sub_folders(tmp_path):
    root = tmp_path / "people"
    for c in range(10):
        for person in ("ann", "bob", "cy"):
            write_images(root / f"letter{c}" / person, ["1.png", "2.png"], seed=c)
    splits = load(root, sources="subfolders")
    for split in splits.values():
        assert split.class_counts.tolist() == [6] * split.num_classes
        # One id per person in every class (ids into the folder's sorted names).
        per_class = split.image_sources[split.class_images[0]].tolist()
        assert per_class == [0, 0, 1, 1, 2, 2]
        assert split.num_sources == 3
        assert "3 sources" in split.describe()
    assert "sources: subfolders" in splits["train"].meta["dataset"]
    assert_distinct_sources(splits["train"], shots=1, targets=2)


def test_sources_from_a_file_name_pattern_and_the_cache_does_not_keep_them(tmp_path):
    root = alphabets(tmp_path / "letters", groups=1, classes=10)
    flat = root / "alpha0"
    by_person = load(flat, sources="pattern", source_pattern="^(.+?)_")
    by_number = load(flat, sources="pattern", source_pattern=r"_(\d+)\.png$")
    plain = load(flat)
    assert len(list(flat.glob(".mamlpp-folder-*.npz"))) == 1  # one cache: pixels only
    for name, split in by_person.items():
        ids = split.image_sources[split.class_images[0]].tolist()
        assert ids == [0, 0, 1, 1, 2, 2]  # p0_0, p0_1, p1_0, ...
        assert by_number[name].image_sources[split.class_images[0]].tolist() == [0, 1] * 3
        assert torch.equal(split.images, plain[name].images)
        assert split.class_names == plain[name].class_names
    assert_distinct_sources(by_person["train"], shots=2, targets=2)


def assert_distinct_sources(split, shots: int, targets: int) -> None:
    sampler = EpisodeSampler(split, 3, shots, targets, seed=5, distinct_sources=True)
    images = sampler.sample_indices(range(100)).images  # [100, 3, K+T]
    sources = split.image_sources[images]
    support, query = sources[..., :shots], sources[..., shots:]
    assert not (support.unsqueeze(-1) == query.unsqueeze(-2)).any()
    free = EpisodeSampler(split, 3, shots, targets, seed=5).sample_indices(range(100)).images
    free_sources = split.image_sources[free]
    shared = free_sources[..., :shots].unsqueeze(-1) == free_sources[..., shots:].unsqueeze(-2)
    assert shared.any()  # without the option they do share: the check above can fail


def test_groups_and_sources_together(tmp_path):
    splits = load(
        alphabets(tmp_path / "letters"),
        groups="folders",
        sources="pattern",
        source_pattern="^(p[0-9])_",
    )
    train = splits["train"]
    assert train.num_sources == 3 and len(train.group_names) == 3
    sampler = EpisodeSampler(train, 5, 1, 1, seed=0, within_group=True, distinct_sources=True)
    episodes = sampler.sample_indices(range(50))
    groups = train.class_groups[episodes.classes]
    assert (groups == groups[:, :1]).all()
    sources = train.image_sources[episodes.images]
    assert (sources[..., 0] != sources[..., 1]).all()


def test_a_plain_folder_is_unchanged(tmp_path):
    root = alphabets(tmp_path / "letters", groups=1, classes=10) / "alpha0"
    splits = load(root)
    assert splits["train"].meta["dataset"] == "folder (flat layout)"
    for name, split in splits.items():
        assert split.class_groups is None and split.image_sources is None
        assert split.group_names == ()
        assert (
            split.class_names == split_classes([f"letter{c}" for c in range(10)], 0.2, 0.2, 0)[name]
        )


def one_line_error(match: str, root: Path, **data) -> None:
    with pytest.raises(DataError, match=match) as caught:
        load(root, **data)
    assert "\n" not in str(caught.value)


def test_bad_layouts_and_names_are_one_line_errors(tmp_path):
    letters = alphabets(tmp_path / "letters", groups=2, classes=3)
    one_line_error(r"^2 groups cannot be split into train/val/test", letters, groups="folders")
    flat = letters / "alpha0"
    one_line_error(r"^group folder .*letter0 holds images itself", flat, groups="folders")
    one_line_error(r"^class folder .*letter0 holds images itself", flat, sources="subfolders")
    (letters / "alpha1" / "empty").mkdir()
    one_line_error(r"^class folder .*empty has no images", letters, groups="folders")
    write_images(flat / "letter1", ["oops.png"], seed=0)
    one_line_error(
        r"letter1/oops\.png does not match data\.source_pattern '\^\(p\[0-9\]\)_'",
        flat,
        sources="pattern",
        source_pattern="^(p[0-9])_",
    )
    with pytest.raises(DataError, match=r"^data\.source_pattern needs exactly one group"):
        load(flat, sources="pattern", source_pattern="p[0-9]_")


def test_too_few_sources_for_source_disjoint_tasks_is_one_line(tmp_path):
    root = tmp_path / "one-person"
    for c in range(10):
        write_images(root / f"letter{c}" / "ann", ["1.png", "2.png"], seed=c)
    train = load(root, sources="subfolders")["train"]
    with pytest.raises(DataError, match=r"too few sources for 1 support and 1 query"):
        EpisodeSampler(train, 3, 1, 1, distinct_sources=True)
