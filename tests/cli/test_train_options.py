"""`mamlpp train`'s options: what the handler hands to `run`, and what the launcher of
`--nproc` hands to each rank (the same options, with the run folder fixed)."""

from __future__ import annotations

import pytest

from mamlpp.cli.launch import _forwarded
from mamlpp.cli.main import build_parser
from mamlpp.errors import ConfigError
from mamlpp.run.training import TrainOptions, resolve_options


def _options(argv: list[str]) -> TrainOptions:
    """The TrainOptions the handler builds from ``mamlpp train ARGV``."""
    args = build_parser().parse_args(["train", *argv])
    return TrainOptions(
        preset=args.preset,
        config_file=args.config,
        overrides=tuple(args.set),
        out=args.out,
        resume=args.resume,
        quiet=args.quiet,
        device=args.device,
        data_dir=args.data_dir,
        download=not args.no_download,
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--preset", "quickstart", "--set", "train.epochs=2", "--set", "data.ways=3"],
        ["--config", "exp.toml", "--resume", "--quiet", "--no-download", "--data-dir", "d"],
        ["--device", "cpu", "--out", "runs/x"],
    ],
)
def test_each_rank_gets_the_same_options_with_the_run_folder_fixed(argv: list[str]) -> None:
    given = _options(argv)
    rank = _options(["--out", "runs/fixed", *_forwarded(given)])
    assert rank == TrainOptions(**{**given.__dict__, "out": "runs/fixed"})


def test_resume_needs_a_run_folder() -> None:
    with pytest.raises(ConfigError, match="--resume needs --out"):
        resolve_options(TrainOptions(resume=True))


def test_options_resolve_to_the_config_and_the_device(tmp_path) -> None:
    config, device, run = resolve_options(
        TrainOptions(preset="quickstart", overrides=("train.epochs=2",), device="cpu")
    )
    assert (config.preset, config.train.epochs, device.type, run) == ("quickstart", 2, "cpu", None)
    _, _, run = resolve_options(TrainOptions(out=str(tmp_path / "r"), device="cpu"))
    assert run is not None and run.root == tmp_path / "r"
