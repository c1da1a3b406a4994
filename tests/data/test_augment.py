"""Affine augmentation of episode images: deterministic per (seed, task), off changes nothing,
and each transform does what its name says on a synthetic picture."""

from __future__ import annotations

import pytest
import torch

from mamlpp.data.augment import Augment
from mamlpp.data.distort import distort, draw_affine
from mamlpp.data.sampler import EpisodeSampler
from mamlpp.data.synthetic import make_synthetic
from mamlpp.errors import ConfigError

STRONG = Augment(rotation=15, shear=10, scale=0.15, translate=0.1)


@pytest.fixture(scope="module")
def split():
    return make_synthetic()["train"]


def test_deterministic_per_seed_and_task(split):
    sampler = EpisodeSampler(split, 5, 1, 2, seed=4, augment=STRONG)
    batch = sampler.sample(range(6))
    again = EpisodeSampler(split, 5, 1, 2, seed=4, augment=STRONG).sample(range(6))
    assert all(torch.equal(a, b) for a, b in zip(batch, again, strict=True))
    alone = sampler.sample([4])
    assert torch.equal(alone.query_x[0], batch.query_x[4])
    other_seed = EpisodeSampler(split, 5, 1, 2, seed=5, augment=STRONG).sample(range(6))
    assert not torch.equal(other_seed.support_x, batch.support_x)


def test_off_changes_nothing_bitwise(split):
    plain = EpisodeSampler(split, 5, 1, 2, seed=4).sample(range(6))
    for off in (None, Augment()):
        same = EpisodeSampler(split, 5, 1, 2, seed=4, augment=off).sample(range(6))
        assert all(torch.equal(a, b) for a, b in zip(plain, same, strict=True))


def test_on_distorts_every_image_differently(split):
    plain = EpisodeSampler(split, 5, 1, 2, seed=4).sample(range(6))
    augmented = EpisodeSampler(split, 5, 1, 2, seed=4, augment=STRONG).sample(range(6))
    assert torch.equal(plain.support_y, augmented.support_y)
    changed = (plain.query_x - augmented.query_x).flatten(2).abs().amax(-1) > 0.1  # [B, n]
    assert bool(changed.all())


def _picture() -> torch.Tensor:
    """A 1x1x1x16x16 picture: background 0, a bright 2x2 dot at rows 5-6, columns 6-7 (its centre
    (row 5.5, column 6.5) is (x, y) = (-1, -2) from the picture's centre (7.5, 7.5), y down)."""
    image = torch.zeros(1, 1, 1, 16, 16, dtype=torch.float64)
    image[..., 5:7, 6:8] = 1.0
    return image


def _centre(image: torch.Tensor) -> tuple[float, float]:
    weights = image[0, 0, 0]
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    total = weights.sum()
    return float((weights * rows.double()).sum() / total), float(
        (weights * cols.double()).sum() / total
    )


def _apply(augment: Augment, uniform: list[float]) -> torch.Tensor:
    theta = draw_affine(augment, torch.tensor([uniform], dtype=torch.float64))
    return distort(_picture(), theta.view(1, 1, 2, 3))


def test_translation_moves_the_picture():
    # u_x = 1 - 1/32 -> shift 0.25 * (2u - 1) = 0.234 sides = 3.75 px right; u_y = 0.5: none.
    moved = _apply(Augment(translate=0.25), [0.5, 0.5, 0.5, 1 - 1 / 32, 0.5])
    row, col = _centre(moved)
    assert (row, col) == pytest.approx((5.5, 6.5 + 3.75), abs=1e-6)


def test_rotation_turns_the_picture_about_its_centre():
    # u = 1 gives +90 degrees (the largest angle the range allows, approached from below).
    turned = _apply(Augment(rotation=90), [1.0, 0.5, 0.5, 0.5, 0.5])
    row, col = _centre(turned)
    # (x, y) = (-1, -2) goes to (2, -1): a quarter turn clockwise on screen.
    assert (row, col) == pytest.approx((6.5, 9.5), abs=1e-6)
    assert float(turned.sum()) == pytest.approx(4.0, abs=1e-6)  # nothing lost or added


def test_scale_enlarges_about_the_centre():
    grown = _apply(Augment(scale=0.5), [0.5, 0.5, 1.0, 0.5, 0.5])  # scale 1.5
    row, col = _centre(grown)
    assert (row, col) == pytest.approx((7.5 - 2 * 1.5, 7.5 - 1 * 1.5), abs=1e-6)
    assert float(grown.sum()) == pytest.approx(4.0 * 1.5**2, rel=0.05)  # area x s^2


def test_shear_slants_along_x_with_y():
    sheared = _apply(Augment(shear=45), [0.5, 1.0, 0.5, 0.5, 0.5])  # tan(45 deg) = 1
    row, col = _centre(sheared)
    # x' = x + y: the dot at y = -2 from the centre moves 2 px left, its row stays.
    assert (row, col) == pytest.approx((5.5, 6.5 - 2), abs=1e-6)


@pytest.mark.parametrize(
    "bad",
    [{"rotation": -1}, {"shear": 90}, {"scale": 1.0}, {"translate": 2}, {"rotation": float("nan")}],
)
def test_impossible_ranges_are_refused(bad):
    with pytest.raises(ConfigError, match=r"^augment\.\w+ must .*, got "):
        Augment(**bad)
