"""Experiment configuration: presets from the paper, precedence, TOML round trip, --set parsing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mamlpp.core.config import MetaConfig
from mamlpp.errors import ConfigError
from mamlpp.run.experiment import build_config, check_resumable, parse_set, to_toml
from mamlpp.run.presets import PRESETS, resolve_config
from mamlpp.run.run_dir import default_run_dir

PAPER = [
    f"{data}-{ways}w{shots}s"
    for data, settings in (
        ("omniglot", ((5, 1), (5, 5), (20, 1), (20, 5))),
        ("mini-imagenet", ((5, 1), (5, 5))),
    )
    for ways, shots in settings
]


def test_every_paper_experiment_exists_as_mamlpp_and_as_maml() -> None:
    for name in PAPER:
        assert name in PRESETS and f"{name}-maml" in PRESETS
    assert {"quickstart", "synthetic"} <= set(PRESETS)


@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_follow_the_spec(name: str) -> None:
    config = resolve_config(name)
    d, m, t = config.data, config.meta, config.train
    assert (t.epochs, t.iterations_per_epoch, t.checkpoint_every) == (100, 500, 100)
    assert m.total_epochs == 100 and m.num_inner_steps == 5 and m.meta_lr == 1e-3
    assert config.eval.val_tasks == config.eval.test_tasks == 600
    if d.dataset == "omniglot":
        assert (d.image_size, config.model.channels, d.targets, t.tasks_per_batch) == (28, 64, 1, 8)
        assert (m.inner_lr, m.msl_epochs, m.meta_lr_min, m.grad_clip) == (0.1, 10, 1e-5, None)
    else:
        assert (d.image_size, config.model.channels, d.targets, t.tasks_per_batch) == (
            84,
            48,
            15,
            2,
        )
        assert (m.inner_lr, m.msl_epochs, m.grad_clip) == (0.01, 15, 10.0)
    assert config.techniques == ["MSL", "DA", "BNRS", "BNWB", "LSLR", "CA"]
    assert m.first_order_epochs == 50  # the paper's text (MetaConfig default)
    ways, shots = name.split("-")[-1].rstrip("s").split("w")
    assert (d.ways, d.shots) == (int(ways), int(shots))


@pytest.mark.parametrize("name", PAPER)
def test_maml_presets_differ_only_in_the_algorithm(name: str) -> None:
    plus, plain = resolve_config(name), resolve_config(f"{name}-maml")
    assert plain.techniques == []
    expected = MetaConfig.maml(
        inner_lr=plus.meta.inner_lr,
        msl_epochs=plus.meta.msl_epochs,
        meta_lr_min=plus.meta.meta_lr_min,
        grad_clip=plus.meta.grad_clip,
    )
    assert plain.meta == expected
    for section in ("data", "model", "train", "eval"):
        assert getattr(plain, section) == getattr(plus, section)


@pytest.mark.parametrize("name", list(PRESETS))
def test_resolved_config_round_trips_through_toml(name: str) -> None:
    config = resolve_config(name, None, ["meta.grad_clip=none"])
    text = to_toml(config, header="two\nlines")
    assert build_config(tomllib.loads(text)) == config


def test_precedence_preset_then_file_then_set(tmp_path: Path) -> None:
    file = tmp_path / "exp.toml"
    file.write_text("[train]\nepochs = 7\nseed = 3\n[meta]\ninner_lr = 0.2\n")
    config = resolve_config("omniglot-20w1s", file, ["train.seed=5"])
    assert config.data.ways == 20  # preset
    assert config.train.epochs == 7 and config.meta.total_epochs == 7  # file; tied
    assert config.meta.inner_lr == 0.2  # file
    assert config.train.seed == 5  # --set wins over the file
    # The file's preset key is the base when --preset is absent.
    file.write_text('preset = "synthetic"\n[train]\nepochs = 2\n')
    assert resolve_config(None, file).data.dataset == "synthetic"
    assert resolve_config(None, None).preset == "quickstart"


def test_set_values_are_toml_literals_with_a_string_fallback() -> None:
    assert parse_set("train.epochs=3") == ("train", "epochs", 3)
    assert parse_set("meta.meta_lr=1e-3") == ("meta", "meta_lr", 1e-3)
    assert parse_set("meta.msl = false") == ("meta", "msl", False)
    assert parse_set("data.dataset=omniglot") == ("data", "dataset", "omniglot")
    assert parse_set('data.dataset="synthetic"') == ("data", "dataset", "synthetic")
    config = resolve_config("synthetic", None, ["meta.inner_lr=1", "meta.grad_clip=5"])
    assert config.meta.inner_lr == 1.0 and isinstance(config.meta.inner_lr, float)
    assert config.meta.grad_clip == 5.0


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("data.wayz=5", "unknown key data.wayz in --set (did you mean 'ways'?)"),
        ("trian.epochs=5", "unknown section [trian]"),
        ("train.epochs=2.5", "train.epochs must be an integer"),
        ("train.epochs=true", "train.epochs must be an integer"),
        ("meta.msl=1", "meta.msl must be true or false"),
        ("meta.inner_lr=fast", "meta.inner_lr must be a number"),
        ("meta.bn_mode=batch", "meta.bn_mode must be one of"),
        ("data.dataset=cifar", "data.dataset must be one of"),
        ("meta.total_epochs=3", "set train.epochs"),
        ("data.ways=1", "data.ways must be >= 2"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("meta.adapt_bn_affine=true", "adapt_bn_affine=True needs per_step_bn_affine=False"),
        ("train.checkpoint_every=3", "must be a multiple of train.log_every"),
        ("data.image_size=8", "data.image_size must be >= 16"),
        ("epochs=3", "--set expects section.key=value"),
        ("train.epochs", "--set expects section.key=value"),
    ],
)
def test_bad_values_are_one_line_config_errors(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config("synthetic", None, [assignment])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_impossible_dataset_combination() -> None:
    with pytest.raises(ConfigError, match="84x84"):
        resolve_config("mini-imagenet-5w1s", None, ["data.image_size=28"])


def test_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(None, bad)
    bad.write_text("[model]\nchannel = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key model.channel in .*bad.toml"):
        resolve_config(None, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(None, tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown preset 'omniglot-5w1'"):
        resolve_config("omniglot-5w1")


def test_resume_compatibility() -> None:
    old = resolve_config("synthetic").to_dict()
    check_resumable(old, resolve_config("synthetic", None, ["eval.top_k=1"]).to_dict())
    with pytest.raises(ConfigError, match=r"meta.inner_lr \(0.1 -> 0.2\)"):
        check_resumable(old, resolve_config("synthetic", None, ["meta.inner_lr=0.2"]).to_dict())
    with pytest.raises(ConfigError, match="cannot resume"):
        check_resumable(old, resolve_config("synthetic", None, ["train.epochs=9"]).to_dict())


def test_default_run_folders_never_collide(tmp_path: Path) -> None:
    plus = default_run_dir("omniglot-5w1s", tmp_path, now=0)
    plain = default_run_dir("omniglot-5w1s-maml", tmp_path, now=0)
    assert plus != plain and plus.name.startswith("omniglot-5w1s-1970")
    plus.mkdir()
    assert default_run_dir("omniglot-5w1s", tmp_path, now=0) != plus
