"""Omniglot: official layout in, compact cache out, FewShotSplits for either standard split.

Source layout (the official zips, or those zips extracted)::

    <source>/images_background.zip | images_background/<Alphabet>/characterNN/XXXX_YY.png  (964)
    <source>/images_evaluation.zip | images_evaluation/<Alphabet>/characterNN/XXXX_YY.png  (659)

Preprocessing decodes the 32,460 PNGs once (straight from the zips) and resizes them. The default
rule, ``"nearest-binary"``, is the one the reference gets from PIL for 1-bit images (nearest
neighbour, strokes stay black or white); ``"bilinear"`` averages (antialiased grey), which keeps
thin strokes that nearest neighbour drops at small sizes. The images go to an ``.npz`` keyed by a
fingerprint of the source, so a changed source is rebuilt: bit-packed for the binary rule (about
3 MB at 28x28), one byte per pixel otherwise. Later loads read only that file. One rule decodes
these files and a user's new images (:class:`mamlpp.data.images.Preprocessing`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mamlpp.data.archive import member_parts, open_zip, read_member
from mamlpp.data.files import data_dir, make_dirs
from mamlpp.data.image_cache import CACHE_VERSION, cache_folder, file_stamp
from mamlpp.data.images import Preprocessing
from mamlpp.data.omniglot_splits import REFERENCE_SEED, reference_split, vinyals_split
from mamlpp.data.split_layout import SPLIT_NAMES
from mamlpp.data.stats import OMNIGLOT_MEAN, OMNIGLOT_STD
from mamlpp.data.structures import FewShotSplit, build_class_index
from mamlpp.data.table import Partial
from mamlpp.errors import DataError
from mamlpp.util.atomic import atomic_write
from mamlpp.util.progress import progress_bar

SUBSETS = {"images_background": 964, "images_evaluation": 659}  # characters per subset
DRAWERS = 20
# How the 105x105 drawings shrink to data.image_size (data.resample): the reference's 1-bit
# nearest neighbour (the default, BINARY) or antialiased bilinear (grey).
BINARY = "nearest-binary"
RESAMPLES = (BINARY, "bilinear")
# A zip member (the archive, the entry) or a file of an extracted subset.
PngHandle = tuple[zipfile.ZipFile, zipfile.ZipInfo] | Path


@dataclass(frozen=True)
class OmniglotArrays:
    """All 1623 characters, sorted by name; image i belongs to class ``image_class[i]``."""

    images: np.ndarray  # uint8 [32460, S, S], 0 = ink, 255 = background (grey between if averaged)
    image_class: np.ndarray  # int64 [32460], class-major, drawers in file-name order
    class_names: list[str]  # sorted "Alphabet/characterNN"
    cache_path: Path
    # bool [1623]: the character comes from images_evaluation (Lake's 20 evaluation alphabets),
    # else from images_background (the 30 background alphabets).
    evaluation: np.ndarray


def find_omniglot(root: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder among ``root``, ``root/omniglot``, ``root/omniglot-py`` holding both subsets
    (as zips or folders); ``root`` defaults to :func:`data_dir`."""
    base = data_dir(root)
    for candidate in (base, base / "omniglot", base / "omniglot-py"):
        if all(_subset_location(candidate, subset) for subset in SUBSETS):
            return candidate
    return None


def partial_omniglot(root: str | os.PathLike[str] | None = None) -> tuple[Path, list[str]] | None:
    """A folder among those :func:`find_omniglot` searches that holds one subset but not the
    other: ``(folder, [the missing subset])``; None if there is none."""
    base = data_dir(root)
    for candidate in (base, base / "omniglot", base / "omniglot-py"):
        missing = [s for s in SUBSETS if _subset_location(candidate, s) is None]
        if len(missing) == 1:
            return candidate, missing
    return None


def missing_part(root: str | os.PathLike[str] | None = None) -> Partial | None:
    """Omniglot found in part (see :func:`partial_omniglot`): the zip to fetch beside the other."""
    found = partial_omniglot(root)
    if found is None:
        return None
    folder, (subset,) = found
    return Partial(
        folder=folder,
        missing=f"missing {subset}.zip (or the folder {subset}/) in {folder}",
        fetching=f"{subset}.zip (md5-checked) beside the other",
    )


def _subset_location(source: Path, subset: str) -> Path | None:
    folder, archive = source / subset, source / f"{subset}.zip"
    if folder.is_dir():
        return folder
    if archive.is_file():
        return archive
    return None


def _resolve_source(source: str | os.PathLike[str]) -> Path:
    path = Path(source).expanduser()
    if path.is_file() and path.name in {f"{s}.zip" for s in SUBSETS}:
        path = path.parent
    if not path.is_dir():
        raise DataError(
            f"Omniglot folder {path} does not exist (run `mamlpp data download "
            "omniglot` or pass the folder holding images_background.zip)"
        )
    for subset in SUBSETS:
        if _subset_location(path, subset) is None:
            raise DataError(f"missing {subset}.zip (or the folder {subset}/) in {path}")
    return path


# ----------------------------------------------------------------------------- fingerprint / cache


def source_fingerprint(source: Path) -> str:
    """Hash of what the cache depends on: zip contents, or names, sizes and mtimes of the PNGs.

    Omniglot keeps its own cache file (pixels packed to 1 bit, with the class names: about 3 MB
    instead of 25), so its recipe tag differs from the decoded-image caches'; the version and
    the file stamps are theirs (:mod:`mamlpp.data.image_cache`).
    """
    digest = hashlib.sha256(f"omniglot-cache-v{CACHE_VERSION}".encode())
    for subset in SUBSETS:
        location = _subset_location(source, subset)
        assert location is not None
        if location.is_file():
            digest.update(f"zip:{subset}:".encode())
            with open(location, "rb") as handle:
                # The zip's bytes go into the same running digest: file_digest takes a
                # constructor, and this one hands it the digest so far (the fingerprint of an
                # existing cache stays the same).
                hashlib.file_digest(handle, lambda: digest)
        else:
            digest.update(f"dir:{subset}:".encode())
            for path in sorted(location.rglob("*.png")):
                stamp = file_stamp(path, path.relative_to(location).as_posix())
                digest.update(f"{stamp};".encode())
    return digest.hexdigest()


def default_cache_dir(source: Path) -> Path:
    """Beside the source when it is writable, else ``<data dir>/cache``."""
    return cache_folder(source, None)


def prepare_omniglot(
    source: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int = 28,
    progress: bool = False,
    resample: str = BINARY,
) -> OmniglotArrays:
    """Load the preprocessed cache, building it first if it is missing, stale or unreadable.

    ``resample`` is :data:`RESAMPLES`' rule for shrinking the 105x105 drawings."""
    root = _resolve_source(source)
    if image_size < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    if resample not in RESAMPLES:
        raise DataError(
            f"Omniglot resampling must be one of {', '.join(RESAMPLES)}, got {resample!r}"
        )
    key = source_fingerprint(root)[:16]
    folder = cache_folder(root, cache_dir)
    rule = "" if resample == BINARY else f"-{resample}"  # the binary cache keeps its old name
    cache_path = folder / f"omniglot-{image_size}px{rule}-{key}.npz"
    cached = _read_cache(cache_path, image_size, resample)
    if cached is not None:
        return cached
    decoding = Preprocessing(image_size, 1, OMNIGLOT_MEAN, OMNIGLOT_STD, resample=resample)
    images, image_class, class_names, evaluation = _decode_all(root, decoding, progress)
    meta = {
        "version": CACHE_VERSION,
        "image_size": image_size,
        "resample": resample,
        "source": str(root),
    }
    # Binary pixels are 0 or 255: 1 bit each (1 = background); averaged ones need their byte.
    pixels = {"packed": np.packbits(images > 127)} if resample == BINARY else {"pixels": images}
    try:
        make_dirs(cache_path.parent)
        with atomic_write(cache_path) as handle:
            np.savez(
                handle,
                **pixels,
                image_class=image_class.astype(np.int16),
                class_names=np.array(class_names),
                evaluation=evaluation,
                meta=np.array(json.dumps(meta)),
            )
    except (DataError, OSError) as error:
        # The data itself is fine; only later loads lose their speed-up.
        warnings.warn(f"could not write the Omniglot cache {cache_path}: {error}", stacklevel=2)
    return OmniglotArrays(images, image_class, class_names, cache_path, evaluation)


def _read_cache(path: Path, image_size: int, resample: str) -> OmniglotArrays | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            class_names = [str(name) for name in data["class_names"]]
            image_class = data["image_class"].astype(np.int64)
            # A cache written before the subsets were recorded lacks it: rebuilt (KeyError).
            evaluation = data["evaluation"].astype(bool)
            count = image_class.shape[0]
            shape = (count, image_size, image_size)
            if resample == BINARY:
                bits = np.unpackbits(data["packed"], count=count * image_size * image_size)
                images = (bits.reshape(shape) * np.uint8(255)).astype(np.uint8)
            else:
                images = data["pixels"].astype(np.uint8).reshape(shape)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return None  # unreadable cache (e.g. an old crash or a disk error): rebuild it
    if meta.get("version") != CACHE_VERSION or meta.get("image_size") != image_size:
        return None
    if meta.get("resample", BINARY) != resample:  # caches before the key were binary
        return None
    return OmniglotArrays(images, image_class, class_names, path, evaluation)


# ----------------------------------------------------------------------------- decoding


def _decode_png(data: bytes, name: str, decoding: Preprocessing) -> np.ndarray:
    """PNG bytes -> uint8 [S, S], 0 = ink and 255 = background, by the rule a user's new image
    of this dataset is prepared with (so `mamlpp adapt` sees what training saw)."""
    return decoding.pixels(data, name)[0]


def _list_pngs(
    location: Path, subset: str, stack: contextlib.ExitStack
) -> list[tuple[str, str, PngHandle]]:
    """(class name, file name, handle) for each PNG of a subset; handle reads the bytes."""
    entries: list[tuple[str, str, PngHandle]] = []
    if location.is_file():
        archive = stack.enter_context(open_zip(location))
        for info in archive.infolist():
            parts = member_parts(info.filename, location)
            if info.is_dir() or not parts or not parts[-1].lower().endswith(".png"):
                continue
            if len(parts) != 4 or parts[0] != subset:
                raise DataError(
                    f"unexpected entry {info.filename!r} in {location}: expected "
                    f"{subset}/<Alphabet>/<character>/<image>.png"
                )
            entries.append((f"{parts[1]}/{parts[2]}", parts[3], (archive, info)))
    else:
        for path in location.glob("*/*/*"):
            if path.suffix.lower() == ".png" and path.is_file():
                entries.append((f"{path.parent.parent.name}/{path.parent.name}", path.name, path))
    return entries


def drawings(
    source: str | os.PathLike[str],
) -> Iterator[tuple[str, str, str, bytes]]:
    """``(subset, "Alphabet/characterNN", file name, PNG bytes)`` of every drawing in
    ``source`` (the zips, or the subsets extracted), undecoded: for tools that lay Omniglot out
    in other forms, such as an image folder."""
    root = _resolve_source(source)
    with contextlib.ExitStack() as stack:  # closes the zips
        for subset in SUBSETS:
            location = _subset_location(root, subset)
            assert location is not None  # _resolve_source checked both subsets
            for class_name, file_name, handle in _list_pngs(location, subset, stack):
                yield subset, class_name, file_name, _read_bytes(handle)


def _read_bytes(handle: PngHandle) -> bytes:
    if isinstance(handle, Path):
        try:
            return handle.read_bytes()
        except OSError as error:
            raise DataError(f"cannot read {handle}: {error.strerror or error}") from None
    archive, info = handle
    return read_member(archive, info)


def _decode_all(root: Path, decoding: Preprocessing, progress: bool):
    with contextlib.ExitStack() as stack:  # closes the zips
        return _decode_all_open(root, decoding, progress, stack)


def _decode_all_open(
    root: Path, decoding: Preprocessing, progress: bool, stack: contextlib.ExitStack
):
    entries: list[tuple[str, str, PngHandle]] = []
    evaluation_classes: set[str] = set()
    for subset, expected in SUBSETS.items():
        location = _subset_location(root, subset)
        assert location is not None
        found = _list_pngs(location, subset, stack)
        if subset == "images_evaluation":
            evaluation_classes.update(class_name for class_name, _, _ in found)
        per_class: dict[str, int] = {}
        for class_name, _, _ in found:
            per_class[class_name] = per_class.get(class_name, 0) + 1
        if len(per_class) != expected:
            raise DataError(
                f"{location} has {len(per_class)} characters, expected {expected} "
                "(incomplete or wrong archive)"
            )
        short = {name: n for name, n in per_class.items() if n != DRAWERS}
        if short:
            name, n = sorted(short.items())[0]
            raise DataError(
                f"{location}: character {name} has {n} images, expected {DRAWERS} "
                f"({len(short)} characters affected)"
            )
        entries.extend(found)
    class_names = sorted({class_name for class_name, _, _ in entries})
    if len(class_names) != sum(SUBSETS.values()):
        raise DataError(f"{root}: character names repeat across subsets")
    evaluation = np.isin(class_names, sorted(evaluation_classes))
    index = {name: i for i, name in enumerate(class_names)}
    # Class-major order, drawers sorted by file name (XXXX_01 .. XXXX_20).
    entries.sort(key=lambda entry: (index[entry[0]], entry[1]))
    size = decoding.image_size
    images = np.empty((len(entries), size, size), dtype=np.uint8)
    bar = progress_bar(len(entries), "preprocessing Omniglot", "img", enabled=progress)
    try:
        for i, (class_name, file_name, handle) in enumerate(entries):
            images[i] = _decode_png(_read_bytes(handle), f"{class_name}/{file_name}", decoding)
            if i % 512 == 511:
                bar.update(512)
        bar.update(len(entries) - bar.n)  # the last partial block: the bar ends at 100%
    finally:
        bar.close()
    image_class = np.array([index[entry[0]] for entry in entries], dtype=np.int64)
    return images, image_class, class_names, evaluation


# ----------------------------------------------------------------------------- splits


def load_omniglot(
    source: str | os.PathLike[str],
    split: str = "mamlpp",
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int = 28,
    *,
    split_seed: int = REFERENCE_SEED,
    progress: bool = False,
    resample: str = BINARY,
) -> dict[str, FewShotSplit]:
    """Omniglot as ``{"train", "val", "test"}`` FewShotSplits.

    ``split="mamlpp"``: the MAML++ reference split of characters (1150/50/423, seed0 files;
    ``split_seed=985773`` gives the split the reference code actually draws), train episodes
    rotated per class. ``split="vinyals"``: 1028/172/423 characters x 4 rotations as classes.
    ``split="lake"``: Lake et al.'s one-shot challenge: train on the 30 background alphabets
    less :data:`LAKE_VAL_ALPHABETS` held out for validation, test on the 20 evaluation
    alphabets (nothing rotated; :func:`lake_alphabets`). ``resample``: see :data:`RESAMPLES`.

    Every split records each character's alphabet (``class_groups``) and each image's drawer
    (``image_sources``: the position of ``XXXX_DD.png`` among the character's 20 files), for
    within-alphabet, drawer-disjoint episodes (``EpisodeSampler(within_group=True,
    distinct_sources=True)``).
    """
    arrays = prepare_omniglot(source, cache_dir, image_size, progress, resample)
    images = torch.from_numpy(arrays.images).unsqueeze(1)  # uint8 [M, 1, S, S]
    table, counts = build_class_index(torch.from_numpy(arrays.image_class), len(arrays.class_names))
    if int(counts.min()) != DRAWERS or int(counts.max()) != DRAWERS:
        raise DataError(f"Omniglot cache {arrays.cache_path} is inconsistent; delete it")
    index = {name: i for i, name in enumerate(arrays.class_names)}
    meta = {
        "dataset": f"omniglot ({split} split)",
        "source": str(Path(source)),
        "cache": str(arrays.cache_path),
    }

    if split in ("mamlpp", "lake"):  # characters as classes; only reference train rotates
        if split == "mamlpp":
            names = reference_split(arrays.class_names, seed=split_seed)
        else:
            names = lake_split(arrays.class_names, arrays.evaluation)
            meta = {**meta, "dataset": "omniglot (Lake's one-shot challenge)"}
        return {
            name: _make_split(
                name,
                images,
                table,
                [(index[c], 0) for c in names[name]],
                names[name],
                rotate=split == "mamlpp" and name == "train",
                meta=meta,
            )
            for name in SPLIT_NAMES
        }
    if split == "vinyals":
        result = {}
        for name, entries in vinyals_split().items():
            missing = [c for c, _ in entries if c not in index]
            if missing:
                raise DataError(
                    f"Vinyals {name} split names {missing[0]}, which is not in "
                    f"the Omniglot source ({len(missing)} missing)"
                )
            classes = [(index[c], rot // 90) for c, rot in entries]
            labels = [f"{c}/rot{rot:03d}" for c, rot in entries]
            result[name] = _make_split(
                name, images, table, classes, labels, rotate=False, meta=meta
            )
        return result
    raise DataError(f"unknown Omniglot split {split!r} (choose 'mamlpp', 'vinyals' or 'lake')")


# Background alphabets held out of Lake-protocol training, for validation (choices of settings
# are made on them; the 20 evaluation alphabets are only ever tested on).
LAKE_VAL_ALPHABETS = 5
LAKE_VAL_SEED = 0


def alphabet_of(class_name: str) -> str:
    """``"Alphabet/characterNN[/rotDDD]"`` -> ``"Alphabet"``."""
    return class_name.split("/", 1)[0]


def lake_alphabets(class_names: list[str], evaluation: np.ndarray) -> dict[str, list[str]]:
    """Alphabets per split of the Lake protocol: the background alphabets sorted and shuffled
    with ``RandomState(LAKE_VAL_SEED)``, the first ``LAKE_VAL_ALPHABETS`` of them val, the rest
    train; test = the evaluation alphabets (sorted)."""
    background = sorted(
        {alphabet_of(c) for c, e in zip(class_names, evaluation, strict=True) if not e}
    )
    held_out = set(
        np.random.RandomState(LAKE_VAL_SEED).permutation(background)[:LAKE_VAL_ALPHABETS].tolist()
    )
    return {
        "train": [a for a in background if a not in held_out],
        "val": [a for a in background if a in held_out],
        "test": sorted({alphabet_of(c) for c, e in zip(class_names, evaluation, strict=True) if e}),
    }


def lake_split(class_names: list[str], evaluation: np.ndarray) -> dict[str, list[str]]:
    """Characters per split of the Lake protocol (sorted), see :func:`lake_alphabets`."""
    alphabets = lake_alphabets(class_names, evaluation)
    return {
        name: [c for c in sorted(class_names) if alphabet_of(c) in set(alphabets[name])]
        for name in SPLIT_NAMES
    }


def _make_split(
    name: str,
    images: torch.Tensor,
    table: torch.Tensor,
    classes: list[tuple[int, int]],
    class_names: list[str],
    rotate: bool,
    meta: dict[str, str],
) -> FewShotSplit:
    """Gather the images of ``classes`` = [(character, quarter turns)] into one contiguous block."""
    characters = torch.tensor([c for c, _ in classes], dtype=torch.int64)
    turns = torch.tensor([k for _, k in classes], dtype=torch.int64)
    rows = table[characters]  # [n, 20] image ids in the full set
    out = images[rows.reshape(-1)]  # [n*20, 1, S, S]
    # Rotation classes (Vinyals) are materialised: 4x the images, still only ~65 MB at 28x28.
    per_image_turns = turns.repeat_interleave(rows.shape[1])
    for k in (1, 2, 3):
        mask = per_image_turns == k
        if mask.any():
            out[mask] = torch.rot90(out[mask], k, dims=(-2, -1))
    n, width = rows.shape
    alphabets = sorted({alphabet_of(c) for c in class_names})
    group_id = {a: g for g, a in enumerate(alphabets)}
    return FewShotSplit(
        name=name,
        images=out.contiguous(),
        class_images=torch.arange(n * width, dtype=torch.int64).view(n, width),
        class_counts=torch.full((n,), width, dtype=torch.int64),
        class_names=list(class_names),
        mean=OMNIGLOT_MEAN,
        std=OMNIGLOT_STD,
        rotate=rotate,
        meta=dict(meta),
        class_groups=torch.tensor([group_id[alphabet_of(c)] for c in class_names]),
        group_names=tuple(alphabets),
        # Images are class-major with the drawers in file-name order: drawer = column.
        image_sources=torch.arange(width, dtype=torch.int64).repeat(n),
    )
