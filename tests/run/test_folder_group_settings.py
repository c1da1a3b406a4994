"""The folder keys data.groups, data.sources and data.source_pattern in a run: validated as
config, reaching the samplers of every split, shown by `mamlpp data info`, and absent from the
config of an older run without changing it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamlpp.cli.main import main
from mamlpp.errors import ConfigError, DataError
from mamlpp.run.datasource import load_splits
from mamlpp.run.episodes import episode_sampler
from mamlpp.run.experiment import build_config
from mamlpp.run.presets import resolve_config

GROUPED = (
    "data.dataset=folder",
    "data.image_size=16",
    "data.ways=3",
    "data.val_fraction=0.25",
    "data.test_fraction=0.25",
    "data.groups=folders",
)
BY_PERSON = ("data.sources=pattern", "data.source_pattern=^(.+?)_")


@pytest.fixture(scope="module")
def letters(tmp_path_factory) -> Path:
    """root/<alphabet>/<letter>/<person>_<n>.png: 4 alphabets of 4 letters, 3 people x 2."""
    root = tmp_path_factory.mktemp("letters")
    rng = np.random.default_rng(0)
    for g in range(4):
        for c in range(4):
            folder = root / f"alpha{g}" / f"letter{c}"
            folder.mkdir(parents=True)
            for person in ("ann", "bob", "cy"):
                for n in range(2):
                    pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{person}_{n}.png")
    return root


def samplers(root: Path, *overrides: str) -> dict:
    config = resolve_config("synthetic", None, [*GROUPED, *overrides])
    splits = load_splits(config.data, root, progress=False)
    return {role: episode_sampler(config, splits[role], role, seed=0) for role in splits}


def test_within_group_settings_reach_every_split(letters: Path) -> None:
    made = samplers(
        letters,
        *BY_PERSON,
        "data.train_episodes=within-group",
        "data.eval_episodes=within-group",
        "data.distinct_sources=true",
    )
    for role, sampler in made.items():
        assert sampler.within_group and sampler.distinct_sources, role
        split = sampler.split
        episodes = sampler.sample_indices(range(40))
        groups = split.class_groups[episodes.classes]
        assert (groups == groups[:, :1]).all()
        sources = split.image_sources[episodes.images]  # [40, 3, 2]: support, query
        assert (sources[..., 0] != sources[..., 1]).all()


def test_within_group_evaluation_of_a_folder_without_sources(letters: Path) -> None:
    made = samplers(letters, "data.eval_episodes=within-group")
    assert made["test"].within_group and not made["test"].distinct_sources
    assert not made["train"].within_group  # training stays random unless asked
    with pytest.raises(DataError, match="need image sources"):
        samplers(letters, "data.distinct_sources=true")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("data.source_pattern=^(.+?)_",), r'applies to data\.sources="pattern" only'),
        (("data.sources=pattern",), r'^data\.sources="pattern" needs data\.source_pattern'),
        (("data.sources=pattern", "data.source_pattern=(a)(b)"), "exactly one group"),
        (("data.sources=pattern", "data.source_pattern=(a"), "is not a regex"),
        (("data.groups=alphabets",), r"data\.groups"),
        (("data.dataset=omniglot", "data.groups=folders"), r"^data\.groups applies to "),
        (("data.dataset=omniglot", "data.sources=subfolders"), r"^data\.sources applies to "),
    ],
)
def test_bad_keys_are_one_line_config_errors(overrides, message) -> None:
    base = ("data.dataset=folder",) if "data.dataset=omniglot" not in overrides else ()
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_config("synthetic", None, [*base, *overrides])
    assert "\n" not in str(caught.value)


def test_the_keys_round_trip_and_an_older_config_is_unchanged() -> None:
    config = resolve_config("synthetic", None, [*GROUPED, *BY_PERSON])
    assert build_config(config.to_dict()) == config
    assert (config.data.groups, config.data.sources) == ("folders", "pattern")
    tree = resolve_config("synthetic", None, ["data.dataset=folder"]).to_dict()
    for key in ("groups", "sources", "source_pattern"):
        tree["data"].pop(key)  # a run made before these keys
    assert build_config(tree) == resolve_config("synthetic", None, ["data.dataset=folder"])


def test_data_info_shows_groups_and_sources(letters: Path, capsys) -> None:
    args = ["data", "info", "folder", "--data-dir", str(letters), "--set", "data.groups=folders"]
    assert (
        main([*args, "--set", "data.sources=pattern", "--set", "data.source_pattern=^(.+?)_"]) == 0
    )
    out = capsys.readouterr().out
    assert "groups: folders, sources: pattern '^(.+?)_'" in out
    assert "train: 8 classes, 48 images (1x28x28), 2 groups, 3 sources" in out
    assert main(["data", "info", "synthetic", "--set", "data.groups=folders"]) == 2
    assert "data.groups applies to data.dataset='folder' only" in capsys.readouterr().err


def test_a_short_run_trains_and_evaluates_within_groups(letters: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    settings = [*GROUPED, *BY_PERSON, "data.train_episodes=within-group"]
    settings += ["data.eval_episodes=within-group", "model.channels=4", "train.epochs=1"]
    settings += ["train.iterations_per_epoch=2", "train.tasks_per_batch=2", "train.log_every=1"]
    settings += ["eval.val_tasks=4", "eval.test_tasks=4", "eval.batch_size=4", "eval.top_k=1"]
    args = ["train", "--preset", "synthetic", "--data-dir", str(letters), "--out", str(run)]
    args += [part for setting in settings for part in ("--set", setting)]
    assert main([*args, "--device", "cpu", "--quiet"]) == 0
    assert 'groups = "folders"' in (run / "config.toml").read_text()
    evaluate = ["evaluate", str(run), "--data-dir", str(letters), "--device", "cpu"]
    assert main(evaluate) == 0
    own = json.loads((run / "eval-test-top1-4.json").read_text())
    assert own["within_group"]

    # The usual benchmark's tasks (classes from any alphabet) on the same model: another file.
    assert main([*evaluate, "--episodes", "random"]) == 0
    across = json.loads((run / "eval-test-top1-4-random.json").read_text())
    assert not across["within_group"]
    assert across["task_fingerprint"] != own["task_fingerprint"]
    # The run's own protocol asked by name is the run's own evaluation, in its own file.
    (run / "eval-test-top1-4.json").unlink()
    assert main([*evaluate, "--episodes", "within-group"]) == 0
    again = json.loads((run / "eval-test-top1-4.json").read_text())
    assert again["task_fingerprint"] == own["task_fingerprint"]
    assert again["accuracy"] == own["accuracy"]
