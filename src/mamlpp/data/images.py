"""How one image becomes model input: a single recipe shared by training data, ``mamlpp adapt``
and exported models, so a prediction sees pixels prepared exactly as the training images were.

A :class:`Preprocessing` turns a file, bytes, a PIL image or a tensor into uint8 ``[C, S, S]``
(:meth:`Preprocessing.pixels`) and a batch of those into float32 model input
(:meth:`Preprocessing.normalise`: ``(u8 / 255 - mean) / std`` per channel, the rule the episode
sampler applies to a :class:`~mamlpp.data.FewShotSplit`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mamlpp.data import picture
from mamlpp.data.stats import IMAGENET_MEAN, IMAGENET_STD
from mamlpp.errors import DataError

# The normalisations a folder dataset can choose (data.normalize); "unit" keeps pixels in [0, 1]
# as Omniglot does, "half" maps them to [-1, 1], "imagenet" is the usual ImageNet mean/std.
NORMALISATIONS = ("unit", "half", "imagenet")
# "nearest-binary": Omniglot's rule (PIL's nearest neighbour, then 1 bit per pixel).
RESAMPLERS = ("bilinear", "bicubic", "nearest-binary")
_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,  # PIL widens the kernel when shrinking: antialiased
    "bicubic": Image.Resampling.BICUBIC,
}

ImageLike = str | os.PathLike | bytes | Image.Image | torch.Tensor


def normalisation(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of a named normalisation."""
    if name == "unit":
        return (0.0,) * channels, (1.0,) * channels
    if name == "half":
        return (0.5,) * channels, (0.5,) * channels
    if name == "imagenet":
        if channels != 3:
            raise DataError("the imagenet normalisation needs RGB images (data.channels=rgb)")
        return IMAGENET_MEAN, IMAGENET_STD
    raise DataError(f"unknown normalisation {name!r} (choose from {', '.join(NORMALISATIONS)})")


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to prepare an image for a trained model (stored in exported models).

    ``resize=False`` refuses any image that is not already ``image_size`` x ``image_size``
    (``data.resize = "never"``); otherwise images of any size are resized (aspect ratio not
    kept: the whole image is used). Colour images are converted to grey for a one-channel model
    (PIL's ITU-R 601 luma) and grey images are repeated for a three-channel one.
    """

    image_size: int
    channels: int  # 1 (grey) or 3 (RGB)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: str = "bilinear"
    resize: bool = True

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise DataError(f"images must have 1 or 3 channels, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"mean/std need {self.channels} values (one per channel)")
        if self.resample not in RESAMPLERS:
            raise DataError(f"unknown resampling {self.resample!r}")

    # -- storage -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        try:
            return cls(
                image_size=int(data["image_size"]),
                channels=int(data["channels"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                resample=str(data["resample"]),
                resize=bool(data["resize"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"invalid preprocessing record ({error})") from None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    # -- one image -> uint8 [C, S, S] --------------------------------------------------------------
    def pixels(
        self, image: ImageLike, name: str | None = None, *, converted: list[str] | None = None
    ) -> np.ndarray:
        """uint8 ``[C, S, S]`` of a file path, encoded bytes or PIL image, read as a person sees
        it by :func:`mamlpp.data.picture.read_picture` (upright, transparency on white).

        Tensors are checked, not resized: see :meth:`tensor_input`. ``name`` labels errors.
        Given a list ``converted``, the label of a colour image made grey for a one-channel
        model is appended to it (so a caller can say so; the check costs a conversion).
        """
        label = name or (str(image) if isinstance(image, str | os.PathLike) else "image")
        if isinstance(image, torch.Tensor):
            raise DataError(f"{label} is a tensor: tensors are model input (see tensor_input)")
        seen = picture.read_picture(image, label)  # the one reader (module attribute: tests)
        size = self.image_size
        if seen.size != (size, size) and not self.resize:
            w, h = seen.size
            raise DataError(
                f"image {label} is {w}x{h}, the model takes {size}x{size} and resizing is off "
                "(data.resize=never)"
            )
        if converted is not None and self.channels == 1 and picture.has_colour(seen):
            converted.append(label)
        if self.resample == "nearest-binary":
            return self._nearest_binary(seen)
        mode = "L" if self.channels == 1 else "RGB"
        seen = seen if seen.mode == mode else seen.convert(mode)
        if seen.size != (size, size):
            seen = seen.resize((size, size), _PIL_FILTERS[self.resample])
        array = np.array(seen, dtype=np.uint8)  # a writable copy
        return array[None] if self.channels == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))

    def _nearest_binary(self, image: Image.Image) -> np.ndarray:
        """Omniglot's rule: PIL nearest neighbour (source pixel floor((x + 0.5) * in / out)),
        then 1 bit per pixel (> 127 -> 255)."""
        grey = np.asarray(image.convert("L"))
        h, w = grey.shape
        rows = ((np.arange(self.image_size) + 0.5) * h / self.image_size).astype(np.int64)
        cols = ((np.arange(self.image_size) + 0.5) * w / self.image_size).astype(np.int64)
        binary = np.where(grey[np.ix_(rows, cols)] > 127, 255, 0).astype(np.uint8)
        return np.repeat(binary[None], self.channels, axis=0)

    # -- model input -------------------------------------------------------------------------------
    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., C, S, S]`` -> float32 ``(u8 / 255 - mean) / std``."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (pixels.to(torch.float32) / 255.0 - mean) / std

    def tensor_input(self, tensor: torch.Tensor, label: str) -> torch.Tensor:
        """A tensor image ``[C, S, S]`` as float32 model input.

        uint8 tensors are pixels 0..255; floating tensors are pixels in [0, 1] (what
        ``torchvision.transforms.ToTensor`` gives): values outside it (0..255 floats) or NaN
        are refused. Both are normalised with this model's mean/std; neither is resized.
        """
        if tuple(tensor.shape) != self.shape:
            raise DataError(
                f"{label} has shape {tuple(tensor.shape)}, the model takes "
                f"{self.shape} (channels, height, width); tensors are not resized"
            )
        if tensor.dtype == torch.uint8:
            return self.normalise(tensor.cpu())
        if not tensor.is_floating_point():
            raise DataError(
                f"{label} must be uint8 (0..255) or floating (0..1), got {tensor.dtype}"
            )
        values = tensor.detach().cpu().to(torch.float32)
        if not bool(torch.isfinite(values).all()):
            raise DataError(f"{label} holds NaN or infinite values; pixels are in [0, 1]")
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            hint = " (divide by 255, or give uint8)" if high > 1.0 else ""
            raise DataError(
                f"{label} has values from {low:g} to {high:g}; floating tensors are pixels in "
                f"[0, 1]{hint}"
            )
        return self.normalise(values * 255.0)

    def batch(
        self,
        images: Sequence[ImageLike],
        labels: Sequence[str],
        *,
        converted: list[str] | None = None,
    ) -> torch.Tensor:
        """float32 ``[len(images), C, S, S]`` model input; every image is checked first
        (``converted``: see :meth:`pixels`)."""
        out = []
        for image, label in zip(images, labels, strict=True):
            if isinstance(image, torch.Tensor):
                out.append(self.tensor_input(image, label))
            else:
                pixels = self.pixels(image, label, converted=converted)
                out.append(self.normalise(torch.from_numpy(pixels)))
        if not out:
            return torch.empty((0, *self.shape))
        return torch.stack(out)


def has_colour(image: Image.Image) -> bool:
    """Whether a PIL image holds colour once read as a person sees it (channels more than
    :data:`~mamlpp.data.picture.GREY_TOLERANCE` apart somewhere)."""
    return picture.has_colour(picture.read_picture(image))


def list_images(folder: Path, skipped: list[Path] | None = None) -> list[Path]:
    """Picture files (:data:`~mamlpp.data.picture.PICTURE_SUFFIXES`, any case) directly in
    ``folder``, sorted; hidden entries skipped silently, other files appended to ``skipped``
    (when given) so the caller can name them."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if picture.is_picture_file(path):
            found.append(path)
        elif skipped is not None:
            skipped.append(path)
    return found


def skipped_note(skipped: list[Path]) -> str | None:
    """One line naming the files a folder listing skipped (not pictures Pillow reads)."""
    if not skipped:
        return None
    count = len(skipped)
    shown = ", ".join(str(p) for p in skipped[:3]) + (f" and {count - 3} more" if count > 3 else "")
    what = "1 file was" if count == 1 else f"{count} files were"
    return f"{what} skipped, not being a picture format Pillow reads: {shown}"


def list_class_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` (one per class), sorted by name; hidden folders skipped."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
