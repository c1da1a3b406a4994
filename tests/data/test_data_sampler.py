"""Episode sampler: purity, balance, disjointness, label range, rotation, normalisation, errors."""

from __future__ import annotations

import pytest
import torch

from mamlpp.data import EpisodeSampler, FewShotSplit, TaskBatch, make_synthetic
from mamlpp.errors import DataError


def indexed_split(
    counts: list[int], size: int = 4, rotate: bool = False, name: str = "train"
) -> FewShotSplit:
    """A split whose image i is recognisable from its pixels: pixel (0, 0) = i % 251 + 1 and
    pixel (0, 1) = i // 251, the rest 0, so rotations and gathers can be checked exactly."""
    total = sum(counts)
    images = torch.zeros(total, 1, size, size, dtype=torch.uint8)
    ids = torch.arange(total)
    images[:, 0, 0, 0] = (ids % 251 + 1).to(torch.uint8)
    images[:, 0, 0, 1] = (ids // 251).to(torch.uint8)
    width = max(counts)
    table = torch.full((len(counts), width), -1, dtype=torch.int64)
    start = 0
    for c, n in enumerate(counts):
        table[c, :n] = torch.arange(start, start + n)
        start += n
    return FewShotSplit(
        name=name,
        images=images,
        class_images=table,
        class_counts=torch.tensor(counts),
        class_names=[f"class{c}" for c in range(len(counts))],
        mean=(0.0,),
        std=(1.0,),
        rotate=rotate,
    )


def decode_ids(x: torch.Tensor) -> torch.Tensor:
    """Invert ``indexed_split`` for unrotated float images [..., 1, H, W] -> ids [...]."""
    raw = (x * 255).round().long()
    return (raw[..., 0, 0, 0] - 1) + 251 * raw[..., 0, 0, 1]


@pytest.fixture(scope="module")
def synthetic():
    return make_synthetic(classes=(60, 20, 20), samples_per_class=20, seed=1)


def test_batch_shapes_dtypes_and_labels(synthetic):
    sampler = EpisodeSampler(synthetic["train"], ways=5, shots=3, targets=4, seed=0)
    batch = sampler.sample(range(7))
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (7, 15, 1, 28, 28)
    assert batch.query_x.shape == (7, 20, 1, 28, 28)
    assert batch.support_x.dtype == batch.query_x.dtype == torch.float32
    assert batch.support_y.dtype == batch.query_y.dtype == torch.int64
    # Labels 0..N-1, class-major, K (support) and T (query) of each: class-balanced.
    expected_support = torch.arange(5).repeat_interleave(3)
    assert torch.equal(batch.support_y, expected_support.expand(7, -1))
    assert torch.equal(batch.query_y, torch.arange(5).repeat_interleave(4).expand(7, -1))
    assert batch.support_y.is_contiguous() and batch.query_y.is_contiguous()
    # Omniglot-style normalisation (mean 0, std 1): pixels stay exactly {0, 1}.
    assert set(batch.support_x.unique().tolist()) <= {0.0, 1.0}
    moved = batch.to("cpu")
    assert isinstance(moved, TaskBatch) and torch.equal(moved.query_x, batch.query_x)


def test_task_is_pure_function_of_split_id_and_seed(synthetic):
    sampler = EpisodeSampler(synthetic["train"], ways=5, shots=1, targets=2, seed=123)
    whole = sampler.sample(torch.arange(10))
    alone = sampler.sample([7])
    shuffled = sampler.sample([9, 7, 3])
    for field in range(4):
        assert torch.equal(alone[field][0], whole[field][7])
        assert torch.equal(shuffled[field][1], whole[field][7])
        assert torch.equal(shuffled[field][0], whole[field][9])
    # A fresh sampler (no hidden state) gives the same tasks; the global RNG plays no part.
    torch.manual_seed(999)
    again = EpisodeSampler(synthetic["train"], ways=5, shots=1, targets=2, seed=123).sample(
        torch.arange(10)
    )
    assert all(torch.equal(a, b) for a, b in zip(whole, again, strict=True))


def test_seed_and_task_id_change_the_task(synthetic):
    split = synthetic["train"]
    base = EpisodeSampler(split, 5, 1, 1, seed=0).sample_indices(range(50))
    other_seed = EpisodeSampler(split, 5, 1, 1, seed=1).sample_indices(range(50))
    assert not torch.equal(base.classes, other_seed.classes)
    # Distinct ids give distinct class lists (50 tasks of 5 out of 60 classes: no repeats).
    assert len({tuple(row) for row in base.classes.tolist()}) == 50


def test_large_task_ids_and_seeds_work(synthetic):
    sampler = EpisodeSampler(synthetic["train"], 5, 1, 1, seed=2**40 + 7)
    ids = torch.tensor([2**33 + 5, 2**33 + 5, 2**33 + 6, 3])
    episodes = sampler.sample_indices(ids)
    assert torch.equal(episodes.classes[0], episodes.classes[1])
    assert not torch.equal(episodes.classes[1], episodes.classes[2])
    with pytest.raises(DataError, match="non-negative"):
        sampler.sample([-1])


def test_classes_distinct_and_support_query_disjoint():
    split = indexed_split([20] * 30)
    sampler = EpisodeSampler(split, ways=10, shots=5, targets=15, seed=4)
    episodes = sampler.sample_indices(range(200))
    for classes in episodes.classes:
        assert len(set(classes.tolist())) == 10
    # All K+T picks of a class are distinct images of that class.
    for task in range(200):
        for slot in range(10):
            picks = episodes.images[task, slot].tolist()
            assert len(set(picks)) == 20
            cls = int(episodes.classes[task, slot])
            assert set(picks) <= set(range(cls * 20, cls * 20 + 20))
    # And the pixels really come from those images, in that order.
    batch = sampler.sample(range(200))
    support_ids = decode_ids(batch.support_x).view(200, 10, 5)
    query_ids = decode_ids(batch.query_x).view(200, 10, 15)
    assert torch.equal(support_ids, episodes.images[:, :, :5])
    assert torch.equal(query_ids, episodes.images[:, :, 5:])


def test_ragged_classes_never_use_padding():
    counts = [3, 7, 4, 20, 3, 5]
    split = indexed_split(counts)
    sampler = EpisodeSampler(split, ways=6, shots=1, targets=2, seed=0)
    episodes = sampler.sample_indices(range(300))
    assert int(episodes.images.min()) >= 0
    starts = torch.tensor([0, *torch.tensor(counts).cumsum(0)[:-1].tolist()])
    local = episodes.images - starts[episodes.classes].unsqueeze(-1)
    assert bool((local >= 0).all())
    assert bool((local < torch.tensor(counts)[episodes.classes].unsqueeze(-1)).all())
    # Every image of the big class is used eventually (positions past 3 are reachable).
    big = episodes.images[episodes.classes == 3]
    assert set(big.reshape(-1).tolist()) == set(range(14, 34))


def test_sampling_is_uniform():
    """Chi-square style bounds over 20,000 tasks: classes, label slots, images and rotations."""
    num_classes, tasks = 40, 20000
    split = indexed_split([10] * num_classes, rotate=True)
    episodes = EpisodeSampler(split, ways=5, shots=1, targets=1, seed=11).sample_indices(
        range(tasks)
    )

    def chi2(counts: torch.Tensor) -> float:
        counts = counts.double()
        expected = counts.sum() / counts.numel()
        return float(((counts - expected) ** 2 / expected).sum())

    # Degrees of freedom d: chi2 has mean d and sd sqrt(2d); allow mean + 6 sd.
    def bound(d: int) -> float:
        return d + 6 * (2 * d) ** 0.5

    class_freq = torch.bincount(episodes.classes.reshape(-1), minlength=num_classes)
    assert chi2(class_freq) < bound(num_classes - 1)
    first_slot = torch.bincount(episodes.classes[:, 0], minlength=num_classes)  # label 0
    assert chi2(first_slot) < bound(num_classes - 1)
    local = episodes.images[:, :, 0] % 10  # which of the 10 images is the support
    assert chi2(torch.bincount(local.reshape(-1), minlength=10)) < bound(9)
    assert chi2(torch.bincount(episodes.rotations.reshape(-1), minlength=4)) < bound(3)
    # Pairs of classes in the same task: no pair far more common than chance.
    pairs = torch.zeros(num_classes, num_classes)
    for a in range(5):
        for b in range(a + 1, 5):
            pairs.index_put_(
                (episodes.classes[:, a], episodes.classes[:, b]), torch.tensor(1.0), accumulate=True
            )
    symmetric = (pairs + pairs.T)[torch.triu_indices(num_classes, num_classes, 1).unbind()]
    assert chi2(symmetric) < bound(symmetric.numel() - 1)


def test_rotation_only_when_split_rotates():
    plain = indexed_split([20] * 12, size=6, rotate=False, name="val")
    turned = indexed_split([20] * 12, size=6, rotate=True, name="train")
    off = EpisodeSampler(plain, ways=5, shots=2, targets=3, seed=0)
    on = EpisodeSampler(turned, ways=5, shots=2, targets=3, seed=0)
    assert not off.rotate and on.rotate
    ids = range(64)
    episodes = on.sample_indices(ids)
    assert bool((off.sample_indices(ids).rotations == 0).all())
    assert set(episodes.rotations.unique().tolist()) == {0, 1, 2, 3}
    # Same tasks otherwise; the pixels of each class are its images turned by k * 90 degrees.
    batch_on, batch_off = on.sample(ids), off.sample(ids)
    for task in range(64):
        for slot in range(5):
            k = int(episodes.rotations[task, slot])
            rows = slice(slot * 2, slot * 2 + 2)
            expected = torch.rot90(batch_off.support_x[task, rows], k, dims=(-2, -1))
            assert torch.equal(batch_on.support_x[task, rows], expected)
            rows = slice(slot * 3, slot * 3 + 3)
            expected = torch.rot90(batch_off.query_x[task, rows], k, dims=(-2, -1))
            assert torch.equal(batch_on.query_x[task, rows], expected)
    # rotate= overrides the split's flag (e.g. to evaluate a rotating split without rotation).
    assert bool(
        (EpisodeSampler(turned, 5, 2, 3, rotate=False).sample_indices(ids).rotations == 0).all()
    )


def test_normalisation_uses_split_mean_and_std():
    images = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    split = FewShotSplit(
        name="test",
        images=images,
        class_images=torch.arange(6).view(3, 2),
        class_counts=torch.tensor([2, 2, 2]),
        class_names=["a", "b", "c"],
        mean=mean,
        std=std,
    )
    sampler = EpisodeSampler(split, ways=3, shots=1, targets=1, seed=0)
    batch = sampler.sample([0])
    episodes = sampler.sample_indices([0])
    raw = images[episodes.images[0, :, 0]].double() / 255
    expected = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(batch.support_x[0].double(), expected, atol=1e-5, rtol=1e-5)


def test_too_many_ways_or_images_is_a_clear_error():
    split = indexed_split([20] * 8 + [3], name="val")
    message = "20-way tasks need 20 classes but the val split has only 9$"
    with pytest.raises(DataError, match=message):
        EpisodeSampler(split, ways=20, shots=1, targets=1)
    with pytest.raises(DataError, match="need 4 images per class but class 'class8'.*only 3"):
        EpisodeSampler(split, ways=5, shots=1, targets=3)
    with pytest.raises(DataError, match="shots must be a positive integer"):
        EpisodeSampler(split, ways=5, shots=0, targets=1)
    for bad in (
        lambda: EpisodeSampler(split, ways=5, shots=1, targets=1.5),
        lambda: EpisodeSampler(split, ways=-1, shots=1, targets=1),
    ):
        with pytest.raises(DataError):
            bad()
    assert "\n" not in str(pytest.raises(DataError, EpisodeSampler, split, 20, 1, 1).value)


def test_batches_cover_fixed_evaluation_tasks(synthetic):
    sampler = EpisodeSampler(synthetic["test"], ways=5, shots=1, targets=1, seed=0)
    chunks = list(sampler.batches(range(600), batch_size=256))
    assert [c.support_x.shape[0] for c in chunks] == [256, 256, 88]
    whole = sampler.sample(range(600))
    assert torch.equal(torch.cat([c.query_x for c in chunks]), whole.query_x)


def test_split_to_device_and_sampler_device(synthetic):
    split = synthetic["val"]
    assert split.to("cpu") is split
    sampler = EpisodeSampler(split, 5, 1, 1, device="cpu")
    assert sampler.sample([0]).support_x.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tasks_identical_on_cuda(synthetic):
    cpu = EpisodeSampler(synthetic["train"], 5, 1, 2, seed=3)
    gpu = EpisodeSampler(synthetic["train"], 5, 1, 2, seed=3, device="cuda")
    a, b = cpu.sample(range(100)), gpu.sample(range(100))
    assert b.support_x.device.type == "cuda"
    assert all(torch.equal(x, y.cpu()) for x, y in zip(a, b, strict=True))
