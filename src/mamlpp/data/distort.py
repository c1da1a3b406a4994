"""Per-image random affine distortions of episode images, on tensors: the ranges of an
:class:`~mamlpp.data.augment.Augment` and five uniform numbers per image in, one
``grid_sample`` per batch out (the formulas are in :mod:`mamlpp.data.augment`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mamlpp.data.augment import Augment

UNIFORMS_PER_IMAGE = 5  # what draw_affine takes for one image


def draw_affine(augment: Augment, uniform: torch.Tensor) -> torch.Tensor:
    """Affine matrices ``[n, 2, 3]`` (float64) for ``grid_sample`` from ``uniform [n, 5]``.

    ``grid_sample`` maps each OUTPUT pixel to the input point ``theta @ (x, y, 1)`` in
    normalised coordinates, so the matrix here is the inverse of the distortion the picture
    undergoes: content rotated by +angle, scaled by s and moved by +shift."""
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
    b, n, c, h, w = images.shape
    flat = images.reshape(b * n, c, h, w)
    grid = _sampling_grid(theta.reshape(b * n, 2, 3), h, w)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(b, n, c, h, w)


def _sampling_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """What ``F.affine_grid(theta, [m, C, h, w], align_corners=False)`` returns, ``[m, h, w, 2]``,
    by broadcasting instead of m tiny matrix products (several times faster on a CPU)."""
    dtype, device = theta.dtype, theta.device
    xs = (torch.arange(w, dtype=dtype, device=device) * 2 + 1) / w - 1  # pixel centres [w]
    ys = (torch.arange(h, dtype=dtype, device=device) * 2 + 1) / h - 1  # [h]
    t = theta.view(-1, 2, 3, 1, 1)
    x = t[:, :, 0] * xs.view(1, 1, 1, w) + t[:, :, 1] * ys.view(1, 1, h, 1) + t[:, :, 2]
    return x.permute(0, 2, 3, 1)  # [m, 2, h, w] -> [m, h, w, 2]
