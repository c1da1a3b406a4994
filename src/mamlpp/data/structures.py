"""The two containers the data layer hands to the rest of the project.

``FewShotSplit`` is one split (train/val/test) of a dataset held entirely in memory as uint8, and
``TaskBatch`` (defined in :mod:`mamlpp.core.types`, the layer that computes with it) is a batch
of episodes already in the float32 layout ``MAMLpp.meta_loss`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from mamlpp.core.types import TaskBatch

Device = torch.device | str | None

__all__ = ["Device", "FewShotSplit", "TaskBatch", "build_class_index"]


@dataclass(frozen=True)
class FewShotSplit:
    """One split of a few-shot dataset, fully in memory.

    Images stay uint8 (mini-ImageNet train would be 3.2 GB as float32); the sampler converts only
    the images of a batch with ``(images / 255 - mean) / std``.
    """

    name: str  # "train", "val" or "test"
    images: torch.Tensor  # uint8 [num_images, C, H, W]
    class_images: torch.Tensor  # int64 [num_classes, max_per_class]; row c = image ids, padded -1
    class_counts: torch.Tensor  # int64 [num_classes]; valid entries at the start of each row
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, applied after scaling pixels to [0, 1]
    std: tuple[float, ...]
    rotate: bool = False  # per-class random k*90 degree rotation in episodes (Omniglot train)
    meta: dict[str, str] = field(default_factory=dict, compare=False)  # dataset, source, cache
    # Fine-grained episodes (optional): the group of each class (an Omniglot alphabet, a
    # DIR/<group>/<class>/ folder) and the source of each image (an Omniglot drawer, a
    # sub-folder or file-name pattern). See EpisodeSampler(within_group=, distinct_sources=).
    class_groups: torch.Tensor | None = None  # int64 [num_classes], ids into group_names
    group_names: tuple[str, ...] = ()
    image_sources: torch.Tensor | None = None  # int64 [num_images], any ids >= 0

    def __post_init__(self) -> None:
        # Shapes are checked once here so the sampler's hot path can trust them.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        num_classes = self.class_images.shape[0]
        if self.class_counts.shape != (num_classes,) or len(self.class_names) != num_classes:
            raise ValueError(
                "class_images, class_counts and class_names disagree on the class count"
            )
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values (one per channel)")
        groups, sources = self.class_groups, self.image_sources
        if groups is not None and (
            groups.shape != (num_classes,)
            or (
                groups.numel()
                and not 0 <= int(groups.min()) <= int(groups.max()) < len(self.group_names)
            )
        ):
            raise ValueError("class_groups must be [num_classes] ids into group_names")
        if sources is not None and (
            sources.shape != (self.images.shape[0],) or (sources.numel() and int(sources.min()) < 0)
        ):
            raise ValueError("image_sources must be [num_images] non-negative ids")

    @property
    def num_classes(self) -> int:
        return int(self.class_images.shape[0])

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: Device) -> FewShotSplit:
        """A copy whose tensors live on ``device`` (the same object if they already do)."""
        device = torch.device(device) if device is not None else self.device
        if device == self.device:
            return self
        return replace(
            self,
            images=self.images.to(device),
            class_images=self.class_images.to(device),
            class_counts=self.class_counts.to(device),
            class_groups=None if self.class_groups is None else self.class_groups.to(device),
            image_sources=None if self.image_sources is None else self.image_sources.to(device),
        )

    def describe(self) -> str:
        c, h, w = self.image_shape
        return (
            f"{self.name}: {self.num_classes} classes, {self.num_images} images "
            f"({c}x{h}x{w}){', rotated per class' if self.rotate else ''}"
            f"{f', {len(self.group_names)} groups' if self.class_groups is not None else ''}"
            f"{f', {self.num_sources} sources' if self.image_sources is not None else ''}"
        )

    @property
    def num_sources(self) -> int:
        """Distinct image sources of this split (0 without sources)."""
        sources = self.image_sources
        return 0 if sources is None else int(torch.unique(sources).numel())


def build_class_index(
    image_classes: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a per-image class id [num_images] into (class_images [C, max], class_counts [C]).

    Image ids within a class keep their ascending order; unused slots hold -1.
    """
    image_classes = image_classes.to(torch.int64)
    counts = torch.bincount(image_classes, minlength=num_classes)
    order = torch.argsort(image_classes, stable=True)  # image ids grouped by class
    starts = torch.cumsum(counts, 0) - counts
    # Position of each sorted image inside its class row.
    sorted_classes = image_classes[order]
    slot = torch.arange(order.numel()) - starts[sorted_classes]
    width = int(counts.max()) if num_classes else 0
    table = torch.full((num_classes, width), -1, dtype=torch.int64)
    table[sorted_classes, slot] = order
    return table, counts
