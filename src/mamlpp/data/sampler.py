"""Episode sampler: task j of a split is a pure function of (split, j, seed), built by tensor ops.

Randomness comes from a counter-based hash rather than a stateful generator: every random number
of task j is ``hash(seed, j, stream, counter)``. So a task never depends on which other tasks share
its batch, on the batch order, or on the device's RNG state, and a whole batch of tasks is drawn
with a handful of vectorised ops on the target device (no per-task Python, no workers).

Per task (N ways, K shots, T targets):
  classes   = the N classes with the largest hash keys (a uniform random ordered N-subset;
              episode label n = position n)
  images    = per class, the K+T images with the largest keys: first K support, last T target
              (distinct, hence disjoint)
  rotation  = per class k*90 degrees, k = key & 3, only when ``split.rotate`` (reference train)

Fine-grained episodes (Lake et al.'s Omniglot one-shot protocol, any split with groups):
  within_group     = one group is drawn first (uniformly among the groups with at least N
                     classes), then the N classes with the largest keys inside it
  distinct_sources = the T query images of a class are the largest-key images whose source
                     (the drawer, for Omniglot) is none of its K support images' sources
  augment          = every image its own random affine distortion (:mod:`mamlpp.data.augment`),
                     drawn from the same counter-based stream
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import torch

from mamlpp.core.types import TaskBatch
from mamlpp.data.augment import Augment
from mamlpp.data.distort import UNIFORMS_PER_IMAGE, distort, draw_affine
from mamlpp.data.structures import Device, FewShotSplit
from mamlpp.errors import DataError

_MASK32 = 0xFFFFFFFF
# Odd multipliers below 2**31, so a 32-bit value times one never overflows int64 (no reliance on
# wrap-around). Each mixing round is a bijection on 32-bit integers.
_MUL_A = 0x7FEB352D
_MUL_B = 0x5851F42D
_WEYL = 0x61C88647  # 2**32 - golden ratio constant: spreads consecutive counters apart
_STREAM_CLASSES, _STREAM_IMAGES, _STREAM_ROTATIONS = 0x1B873593, 0x2C1B3C6D, 0x3A8F05C5
_STREAM_GROUPS, _STREAM_AUGMENT = 0x4E67C6A7, 0x5D588B65
_CPU_CHUNK = 32  # tasks per internal step on CPU (see EpisodeSampler.sample)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Avalanche-mix int64 tensors holding 32-bit values (xor-shift / multiply rounds).

    The input is left alone; after the first op everything is in place, because on CPU the
    cost of large batches is dominated by allocating (and page-faulting) temporaries.
    """
    x = x ^ (x >> 16)
    x.mul_(_MUL_A).bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 15)
    x.mul_(_MUL_B).bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 16)
    x.mul_(_MUL_A).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 15)


def _mix32_int(x: int) -> int:
    return int(_mix32(torch.tensor([x & _MASK32], dtype=torch.int64))[0])


def task_keys(seed: int, task_ids: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per task [B]; distinct task ids below 2**32 give distinct keys."""
    seed &= (1 << 64) - 1
    base = _mix32_int(_mix32_int(seed & _MASK32) ^ (seed >> 32))
    low, high = task_ids & _MASK32, task_ids >> 32
    return _mix32(_mix32(low ^ base) ^ high)


def _random32(keys: torch.Tensor, stream: int, counters: torch.Tensor) -> torch.Tensor:
    """Uniform 32-bit values for every (task, counter): keys [B] x counters [...] -> [B, ...]."""
    stream_keys = _mix32(keys ^ stream).view(-1, *([1] * counters.dim()))
    return _mix32((stream_keys + counters * _WEYL).bitwise_and_(_MASK32))


def _top_positions(values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` largest values along the last dim, ties impossible.

    ``values * width + position`` makes every key unique, so the choice (and its order) is well
    defined on every device and for every topk algorithm. Overwrites ``values`` (a temporary).
    """
    width = values.shape[-1]
    position = torch.arange(width, device=values.device)
    keys = values.mul_(width).add_(position)
    return torch.topk(keys, count, dim=-1, sorted=True).indices


class Episodes(NamedTuple):
    """Which data a batch of tasks uses (before any pixels are touched)."""

    classes: torch.Tensor  # int64 [B, N] class ids of the split; episode label n = column n
    images: torch.Tensor  # int64 [B, N, K+T] image ids; [..., :K] support, [..., K:] target
    rotations: torch.Tensor  # int64 [B, N] quarter turns per class (all 0 unless rotating)


class EpisodeSampler:
    """N-way, K-shot episodes with T targets per class from one :class:`FewShotSplit`.

    ``sample(task_ids)`` returns a :class:`TaskBatch` on ``device`` (default: the split's).
    The trainer draws ids ``iteration * B + b`` with its training seed; evaluation uses fixed ids
    ``0..599`` with a fixed seed, so every evaluation sees the same tasks.
    """

    def __init__(
        self,
        split: FewShotSplit,
        ways: int,
        shots: int,
        targets: int,
        seed: int = 0,
        device: Device = None,
        rotate: bool | None = None,
        *,
        within_group: bool = False,
        distinct_sources: bool = False,
        augment: Augment | None = None,
    ) -> None:
        for label, value in (("ways", ways), ("shots", shots), ("targets", targets)):
            if int(value) != value or value < 1:
                raise DataError(f"{label} must be a positive integer, got {value!r}")
        if ways > split.num_classes:
            raise DataError(
                f"{ways}-way tasks need {ways} classes but the {split.name} split "
                f"has only {split.num_classes}"
            )
        smallest = int(torch.argmin(split.class_counts))
        if shots + targets > int(split.class_counts[smallest]):
            raise DataError(
                f"{shots} shots + {targets} targets need {shots + targets} images "
                f"per class but class {split.class_names[smallest]!r} of the "
                f"{split.name} split has only {int(split.class_counts[smallest])}"
            )
        _check_fine_grained(
            split, int(ways), int(shots), int(targets), within_group, distinct_sources
        )
        self.split = split
        self.ways, self.shots, self.targets, self.seed = int(ways), int(shots), int(targets), seed
        self.within_group, self.distinct_sources = within_group, distinct_sources
        self.augment = augment if augment is not None and augment.active else None
        self.rotate = split.rotate if rotate is None else rotate
        self.device = torch.device(device) if device is not None else split.device
        on_device = split.to(self.device)
        channels, height, width = split.image_shape
        if self.rotate and height != width:
            raise DataError(
                f"rotation needs square images, the {split.name} split has {height}x{width}"
            )
        images = on_device.images
        if self.rotate:
            # All four orientations precomputed once: a rotation is then just a row offset,
            # so an episode stays a single gather. [4 * M, C, H, W] uint8.
            images = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
        self._bank = images.reshape(images.shape[0], channels, height * width)  # [R, C, H*W]
        self._num_images = split.num_images
        self._class_images = on_device.class_images.clamp(min=0)  # padding never selected
        self._class_counts = on_device.class_counts
        self._width = split.class_images.shape[1]
        self._ragged = bool((split.class_counts != self._width).any())
        # (u8 / 255 - mean) / std  ==  u8 * scale + shift, one fused op per batch.
        std = torch.tensor(split.std, dtype=torch.float32)
        mean = torch.tensor(split.mean, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std)).view(channels, 1).to(self.device)
        self._shift = (-mean / std).view(channels, 1).to(self.device)
        self._image_shape = (channels, height, width)
        # Fine-grained episodes (checked by _check_fine_grained): the group of each class
        # [classes], the groups with >= N classes (bool [G]), the source of each image [M].
        empty = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._class_groups = empty if on_device.class_groups is None else on_device.class_groups
        sizes = torch.bincount(self._class_groups, minlength=len(split.group_names))
        self._eligible_groups = sizes >= self.ways
        self._image_sources = empty if on_device.image_sources is None else on_device.image_sources
        labels = torch.arange(self.ways, device=self.device)
        self._support_y = labels.repeat_interleave(self.shots)  # [N*K]
        self._query_y = labels.repeat_interleave(self.targets)  # [N*T]

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.split.name}, {self.ways}-way {self.shots}-shot, "
            f"{self.targets} targets, seed={self.seed}, rotate={self.rotate}, "
            f"{'within_group=True, ' if self.within_group else ''}"
            f"{'distinct_sources=True, ' if self.distinct_sources else ''}"
            f"{f'augment={self.augment}, ' if self.augment else ''}"
            f"device={self.device})"
        )

    def _ids(self, task_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(task_ids, dtype=torch.int64).reshape(-1)
        # Checked on the host only: ids already on a GPU are trusted, because reading them back
        # would synchronise the device on every meta-iteration.
        if ids.device.type == "cpu" and ids.numel() and int(ids.min()) < 0:
            raise DataError("task ids must be non-negative")
        return ids.to(self.device)

    def sample_indices(self, task_ids: Sequence[int] | torch.Tensor) -> Episodes:
        """Classes, image ids and rotations of each task; a pure function of (split, id, seed)."""
        ids = self._ids(task_ids)
        keys = task_keys(self.seed, ids)  # [B]
        num_classes, n, picks = self.split.num_classes, self.ways, self.shots + self.targets
        class_counter = torch.arange(num_classes, device=self.device)
        class_keys = _random32(keys, _STREAM_CLASSES, class_counter)  # [B, classes]
        if self.within_group:
            # One group per task, uniform among those with >= N classes; the others' classes
            # never win (keys -1 < every 32-bit key).
            groups = self._eligible_groups.numel()
            group_keys = _random32(keys, _STREAM_GROUPS, torch.arange(groups, device=self.device))
            group_keys = torch.where(self._eligible_groups, group_keys, -1)
            group = _top_positions(group_keys, 1)  # [B, 1]
            class_keys = torch.where(self._class_groups == group, class_keys, -1)
        classes = _top_positions(class_keys, n)  # [B, N]

        # Keys per (class slot, image position); positions past a class's count never win.
        slot_counter = torch.arange(n * self._width, device=self.device).view(n, self._width)
        image_keys = _random32(keys, _STREAM_IMAGES, slot_counter)  # [B, N, P]
        if self._ragged:
            valid = (
                torch.arange(self._width, device=self.device) < self._class_counts[classes, None]
            )
            image_keys = torch.where(valid, image_keys, -1)
        if self.distinct_sources:
            positions = self._source_disjoint_positions(classes, image_keys)  # [B, N, K+T]
        else:
            positions = _top_positions(image_keys, picks)  # [B, N, K+T]
        images = self._class_images[classes.unsqueeze(-1), positions]  # [B, N, K+T]

        if self.rotate:
            slots = torch.arange(n, device=self.device)
            rotations = _random32(keys, _STREAM_ROTATIONS, slots) & 3  # [B, N]
        else:
            rotations = torch.zeros_like(classes)
        return Episodes(classes, images, rotations)

    def _source_disjoint_positions(
        self, classes: torch.Tensor, image_keys: torch.Tensor
    ) -> torch.Tensor:
        """Support: the K largest keys; query: the T largest among the images of the class whose
        source is none of the support's. ``image_keys [B, N, P]`` -> positions ``[B, N, K+T]``."""
        support = _top_positions(image_keys.clone(), self.shots)  # [B, N, K]
        rows = self._class_images[classes]  # [B, N, P] image ids (padding clamped to 0)
        sources = self._image_sources[rows]  # [B, N, P]
        support_sources = sources.gather(-1, support)  # [B, N, K]
        taken = (sources.unsqueeze(-1) == support_sources.unsqueeze(-2)).any(-1)  # [B, N, P]
        query = _top_positions(torch.where(taken, -1, image_keys), self.targets)  # [B, N, T]
        return torch.cat([support, query], dim=-1)

    def sample(self, task_ids: Sequence[int] | torch.Tensor) -> TaskBatch:
        """The float32 batch for ``task_ids`` (shapes in :class:`TaskBatch`)."""
        ids = self._ids(task_ids)
        batch, (channels, height, width) = ids.numel(), self._image_shape
        support = torch.empty(
            (batch, self.ways * self.shots, channels, height, width),
            dtype=torch.float32,
            device=self.device,
        )
        query = torch.empty(
            (batch, self.ways * self.targets, channels, height, width),
            dtype=torch.float32,
            device=self.device,
        )
        # On CPU, large batches are built in chunks written straight into the outputs: the
        # temporaries then stay small enough to be reused by malloc instead of being mapped
        # and page-faulted afresh on every call (3x slower at 256 tasks per call).
        chunk = batch if self.device.type != "cpu" else _CPU_CHUNK
        for start in range(0, batch, max(chunk, 1)):
            part = slice(start, start + chunk)
            episodes = self.sample_indices(ids[part])
            rows = episodes.images  # [b, N, K+T]
            if self.rotate:
                rows = rows + episodes.rotations.unsqueeze(-1) * self._num_images  # bank offset
            self._pixels_into(rows[:, :, : self.shots], support[part])
            self._pixels_into(rows[:, :, self.shots :], query[part])
            if self.augment is not None:
                self._distort(task_keys(self.seed, ids[part]), support[part], query[part])
        return TaskBatch(
            support_x=support,
            support_y=self._support_y.expand(batch, -1).clone(),
            query_x=query,
            query_y=self._query_y.expand(batch, -1).clone(),
        )

    def _distort(self, keys: torch.Tensor, support: torch.Tensor, query: torch.Tensor) -> None:
        """Each image of the tasks of ``keys [b]`` its own affine distortion, in place.

        Counter c of a task's stream belongs to image c // 5 (support first, then query), so a
        task's distortions depend on (seed, task id) alone. Normalisation is per channel and
        affine, and border padding repeats the edge, so distorting after normalising equals
        normalising after distorting."""
        assert self.augment is not None
        n_support, n_query = support.shape[1], query.shape[1]
        counters = torch.arange((n_support + n_query) * UNIFORMS_PER_IMAGE, device=self.device)
        uniform = _random32(keys, _STREAM_AUGMENT, counters).to(torch.float64) / 2.0**32
        theta = draw_affine(self.augment, uniform.view(-1, UNIFORMS_PER_IMAGE))  # [b*n, 2, 3]
        theta = theta.to(support.dtype)
        theta = theta.view(keys.numel(), n_support + n_query, 2, 3)
        support.copy_(distort(support, theta[:, :n_support]))
        query.copy_(distort(query, theta[:, n_support:]))

    def _pixels_into(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        """Gather uint8 rows [b, N, k] of the bank; normalise into float32 out [b, N*k, C, H, W]."""
        picked = self._bank.index_select(0, rows.reshape(-1))  # [b*N*k, C, H*W] uint8
        # shift + u8 * scale in one fused op, written in place.
        torch.addcmul(self._shift, picked, self._scale, out=out.view(picked.shape))

    def batches(
        self, task_ids: Iterable[int] | torch.Tensor, batch_size: int
    ) -> Iterator[TaskBatch]:
        """Consecutive batches over ``task_ids`` (e.g. ``range(600)`` for evaluation)."""
        ids = self._ids(list(task_ids) if not isinstance(task_ids, torch.Tensor) else task_ids)
        for start in range(0, ids.numel(), batch_size):
            yield self.sample(ids[start : start + batch_size])


def _check_fine_grained(
    split: FewShotSplit,
    ways: int,
    shots: int,
    targets: int,
    within_group: bool,
    distinct_sources: bool,
) -> None:
    """One-line errors for fine-grained episodes a split cannot give (before any sampling)."""
    if within_group:
        if split.class_groups is None:
            raise DataError(
                f"within-group tasks need class groups, and the {split.name} split has none "
                "(Omniglot alphabets, or DIR/<group>/<class>/ folders)"
            )
        sizes = torch.bincount(split.class_groups.cpu(), minlength=len(split.group_names))
        if int(sizes.max()) < ways:
            raise DataError(
                f"{ways}-way within-group tasks need a group of {ways} classes, and the largest "
                f"group of the {split.name} split has {int(sizes.max())}"
            )
    if distinct_sources:
        if split.image_sources is None:
            raise DataError(
                f"support and query from different sources need image sources, and the "
                f"{split.name} split has none (Omniglot drawers, or a source per image)"
            )
        # Worst case per class: the K support images come from the K sources with the most
        # images of that class; T images of other sources must remain.
        sources = split.image_sources.cpu()
        for c in range(split.num_classes):
            ids = split.class_images[c, : int(split.class_counts[c])].cpu()
            per_source = torch.bincount(sources[ids]).sort(descending=True).values
            if int(per_source[shots:].sum()) < targets:
                raise DataError(
                    f"class {split.class_names[c]!r} of the {split.name} split has too few "
                    f"sources for {shots} support and {targets} query images from different "
                    f"sources ({int((per_source > 0).sum())} sources)"
                )
