"""Per-image random affine distortions of episode images (Koch et al. 2015 style), on tensors.

The sampler draws five uniform numbers in [0, 1) per image from its counter-based stream, so a
task's distortions are a pure function of (seed, task id), like everything else in a task. This
module turns them into affine matrices and applies them with one ``grid_sample`` per batch:

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
from typing import TYPE_CHECKING

from mamlpp.util.fields import check_fields

if TYPE_CHECKING:  # torch is imported where it is used: the [data] section reads the ranges
    import torch


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


UNIFORMS_PER_IMAGE = 5  # what draw_affine takes for one image


def draw_affine(augment: Augment, uniform: torch.Tensor) -> torch.Tensor:
    """Affine matrices ``[n, 2, 3]`` (float64) for ``grid_sample`` from ``uniform [n, 5]``.

    ``grid_sample`` maps each OUTPUT pixel to the input point ``theta @ (x, y, 1)`` in
    normalised coordinates, so the matrix here is the inverse of the distortion the picture
    undergoes: content rotated by +angle, scaled by s and moved by +shift."""
    import torch

    signed = 2.0 * uniform.to(torch.float64) - 1.0  # [n, 5] in [-1, 1)
    angle = torch.deg2rad(augment.rotation * signed[:, 0])
    shear = torch.tan(torch.deg2rad(augment.shear * signed[:, 1]))
    scale = 1.0 + augment.scale * signed[:, 2]
    # Normalised coordinates span 2 per side: a shift of f sides is 2 f.
    shift = 2.0 * augment.translate * signed[:, 3:5]  # [n, 2]
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Forward map A = R(angle) @ Shear @ S: [[c, -s], [s, c]] @ [[1, k], [0, 1]] * scale.
    a = torch.stack(
        [
            torch.stack([cos, cos * shear - sin], dim=-1),
            torch.stack([sin, sin * shear + cos], dim=-1),
        ],
        dim=-2,
    ) * scale.view(-1, 1, 1)  # [n, 2, 2]
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]  # > 0: |shear| < 90, scale > 0
    inverse = torch.stack(
        [torch.stack([a[:, 1, 1], -a[:, 0, 1]], -1), torch.stack([-a[:, 1, 0], a[:, 0, 0]], -1)],
        dim=-2,
    ) / det.view(-1, 1, 1)  # [n, 2, 2]
    return torch.cat(
        [inverse, -inverse @ shift.unsqueeze(-1)], dim=-1
    )  # output point -> input point


def distort(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``images [b, n, C, H, W]`` resampled through ``theta [b, n, 2, 3]`` (bilinear; outside
    the picture repeats its border, the background of a character on a blank page)."""
    import torch.nn.functional as F

    b, n, c, h, w = images.shape
    flat = images.reshape(b * n, c, h, w)
    grid = _sampling_grid(theta.reshape(b * n, 2, 3), h, w)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(b, n, c, h, w)


def _sampling_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """What ``F.affine_grid(theta, [m, C, h, w], align_corners=False)`` returns, ``[m, h, w, 2]``,
    by broadcasting instead of m tiny matrix products (several times faster on a CPU)."""
    import torch

    dtype, device = theta.dtype, theta.device
    xs = (torch.arange(w, dtype=dtype, device=device) * 2 + 1) / w - 1  # pixel centres [w]
    ys = (torch.arange(h, dtype=dtype, device=device) * 2 + 1) / h - 1  # [h]
    t = theta.view(-1, 2, 3, 1, 1)
    x = t[:, :, 0] * xs.view(1, 1, 1, w) + t[:, :, 1] * ys.view(1, 1, h, 1) + t[:, :, 2]
    return x.permute(0, 2, 3, 1)  # [m, 2, h, w] -> [m, h, w, 2]
