"""The benchmark problems of ``mamlpp bench``: the paper's four shapes, the generic path on the
same networks, ResNet-12, first-order variants and tiny CI problems (no torch needed to list
them, so ``mamlpp bench --help`` stays light)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark problem: a meta-batch of synthetic episodes with the real shapes."""

    name: str
    ways: int
    shots: int
    targets: int
    tasks: int
    image_size: int
    in_channels: int
    channels: int
    steps: int = 5
    second_order: bool = True
    msl: bool = True
    # "conv4": the built-in grouped-convolution Conv4; "conv4-module": the same network as a
    # plain nn.Sequential through the generic path (ModuleBackbone, vmap); "resnet12".
    backbone: str = "conv4"


def _configs() -> dict[str, BenchConfig]:
    base = {
        "omniglot-20w1s": BenchConfig("omniglot-20w1s", 20, 1, 1, 8, 28, 1, 64),
        "omniglot-5w1s": BenchConfig("omniglot-5w1s", 5, 1, 1, 8, 28, 1, 64),
        "mini-imagenet-5w1s": BenchConfig("mini-imagenet-5w1s", 5, 1, 15, 2, 84, 3, 48),
        "mini-imagenet-5w5s": BenchConfig("mini-imagenet-5w5s", 5, 5, 15, 2, 84, 3, 48),
        # The generic path on the same networks, and ResNet-12 (64-160-320-640).
        "omniglot-20w1s-module": BenchConfig(
            "omniglot-20w1s-module", 20, 1, 1, 8, 28, 1, 64, backbone="conv4-module"
        ),
        "omniglot-5w1s-module": BenchConfig(
            "omniglot-5w1s-module", 5, 1, 1, 8, 28, 1, 64, backbone="conv4-module"
        ),
        "mini-imagenet-5w1s-resnet12": BenchConfig(
            "mini-imagenet-5w1s-resnet12", 5, 1, 15, 2, 84, 3, 64, backbone="resnet12"
        ),
        "mini-imagenet-5w5s-resnet12": BenchConfig(
            "mini-imagenet-5w5s-resnet12", 5, 5, 15, 2, 84, 3, 64, backbone="resnet12"
        ),
        # Tiny problems for CI and smoke tests (their figures mean nothing).
        "tiny": BenchConfig("tiny", 3, 1, 1, 2, 16, 1, 4, steps=2),
        "tiny-resnet12": BenchConfig(
            "tiny-resnet12", 3, 1, 1, 2, 16, 1, 4, steps=2, backbone="resnet12"
        ),
    }
    configs = dict(base)
    for name, c in base.items():
        configs[f"{name}-fo"] = BenchConfig(
            **{**asdict(c), "name": f"{name}-fo", "second_order": False}
        )
    return configs


CONFIGS = _configs()
# The authors' public code, measured on one H100 (docs/performance.md): s/iteration, peak GB.
PAPER_REFERENCE = {
    "omniglot-20w1s": (0.459, 2.1),
    "omniglot-5w1s": (0.454, 0.6),
    "mini-imagenet-5w1s": (0.121, 5.5),
    "mini-imagenet-5w5s": (0.137, 7.4),
}
