"""The ranges of the per-image random affine distortions of training episodes (Koch et al.
2015 style); :mod:`mamlpp.data.distort` applies them to tensors. This module imports no torch:
the ``[data]`` section of a configuration takes its ``augment_*`` ranges from these fields.

The sampler draws five uniform numbers in [0, 1) per image from its counter-based stream, so a
task's distortions are a pure function of (seed, task id), like everything else in a task:

    u = (u_rot, u_shear, u_scale, u_x, u_y)  [n, 5]
    angle   = rotation * (2 u_rot - 1)        degrees, in [-rotation, rotation]
    shear   = shear * (2 u_shear - 1)         degrees (x sheared along y)
    scale   = 1 + scale * (2 u_scale - 1)     both axes
    shift   = translate * (2 (u_x, u_y) - 1)  fraction of the side, along x and y

Off by default: an :class:`Augment` whose ranges are all 0 is inactive, and the sampler then
does not touch its images at all (bitwise the same batches as without augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mamlpp.util.fields import check_fields


@dataclass(frozen=True)
class Augment:
    """Ranges of the random affine distortion; each 0 turns that part off. The ranges are stated
    here once (the ``data.augment_*`` keys take them from these fields)."""

    rotation: float = field(default=0.0, metadata={"min": 0.0, "finite": True})  # max degrees
    shear: float = field(default=0.0, metadata={"min": 0.0, "lt": 90.0})  # max degrees
    scale: float = field(default=0.0, metadata={"min": 0.0, "lt": 1.0})  # in [1 - s, 1 + s]
    translate: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})  # of the side

    def __post_init__(self) -> None:
        check_fields(self, "augment.")  # a one-line ConfigError naming the range

    @property
    def active(self) -> bool:
        return any((self.rotation, self.shear, self.scale, self.translate))
