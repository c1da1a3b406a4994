"""The benchmark problems of ``mamlpp bench``: the paper's four shapes, the generic path on the
same networks, ResNet-12, first-order variants and tiny CI problems; and the options of one run
(no torch needed for either, so ``mamlpp bench --help`` stays light)."""

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


@dataclass(frozen=True)
class BenchOptions:
    """What one run of :func:`mamlpp.studies.bench.run` measures; ``mamlpp bench`` builds it
    from its command line, whose defaults are these. Names are checked by the run (one-line
    errors)."""

    configs: tuple[str, ...] = ("omniglot-20w1s",)  # names in CONFIGS
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"
    # Execution paths (mamlpp.studies.bench.PATHS; the "graph" ones on CUDA only) and
    # precision modes ("fp32", "tf32" on CUDA only, "bf16"), each measured against each.
    paths: tuple[str, ...] = ("batched", "loop")
    modes: tuple[str, ...] = ("fp32",)
    iters: int = 20  # timed meta-iterations per path and mode (the median is reported)
    warmup: int = 3  # untimed meta-iterations before timing
    grad_check: bool = True  # each path's meta-gradients against the float64 loop path
    memory: bool = False  # peak memory per path (CPU: in fresh processes)
    memory_sweep: str | None = None  # a config: peak memory over steps x tasks (CUDA)
    eval_tasks: int = 0  # also time the evaluation of this many tasks of eval_config
    eval_config: str = "omniglot-20w1s"
    threads: int | None = None  # torch CPU threads (set by mamlpp.studies.bench.main)
    json: str | None = None  # the file main writes the report to
    dry_run: bool = False  # main checks the options and prints the plan, measuring nothing
