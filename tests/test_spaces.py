"""Search spaces: conditional settings, the at-least-one rule, fixed values, overrides and validation."""

from __future__ import annotations

import optuna
import pytest

from spaces import build_space, space_names
from spaces.ranges import load_ranges
from trainables.models.base import Dims
from trainables.training.config import TrainConfig

DIMS = Dims(video_dim=24, query_dim=16)


@pytest.mark.parametrize("name", space_names())
def test_every_space_validates_and_its_configs_are_trial_configs(name):
    space = build_space(name, fixed={"hidden_size": 16, "n_heads": 4})
    assert space.validate(DIMS, count=60) >= 1
    for config in space.sample(30, seed=1):
        TrainConfig.from_dict(config)  # would raise on a bad config
        assert config["hidden_size"] == 16


def test_plugin_settings_exist_exactly_when_the_plugin_and_its_switches_are_on():
    configs = build_space("full").sample(300, seed=2)
    for config in configs:
        for plugin in ("ral", "msc", "moment"):
            assert any(k.startswith(f"{plugin}.") for k in config) == (config.get(plugin) is True)
        assert ("ral.gate_temperature" in config) == (config.get("ral.csa") is True)
        assert ("msc.sim_thr" in config) == (config.get("msc.adaptive") is True)
        if config.get("msc"):
            assert any(config.get(f"msc.{part}") for part in ("tcpl", "cbva", "tome"))
    assert any(c.get("ral") for c in configs) and any(not c.get("ral") for c in configs)
    assert any(c.get("msc.tome") and not c.get("msc.tcpl") and not c.get("msc.cbva") for c in configs)
    # amdnet cannot run ral/moment at all: those switches are never sampled for it
    assert all(not c.get("ral") and not c.get("moment") for c in configs if c["backbone"] == "amdnet")


def test_fixed_values_are_not_sampled():
    space = build_space("ral", fixed={"lr": 1e-4, "ral.k": 3, "ral.csa": False})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    config = space(trial)
    assert config["lr"] == 1e-4 and config["ral.k"] == 3 and config["ral.csa"] is False
    assert {"lr", "ral.k", "ral.csa", "ral.gate_temperature"}.isdisjoint(trial.params)


def test_space_restricted_to_backbones_that_run_its_plugin():
    assert build_space("moment").backbones == ("mssl", "gmmformer")
    assert build_space("moment", backbones=["gmmformer2", "amdnet", "mssl"]).backbones == ("gmmformer2", "mssl")
    with pytest.raises(ValueError, match="space ral: none of the backbones amdnet can run plugin ral"):
        build_space("ral", backbones=["amdnet"])


@pytest.mark.parametrize(("text", "message"), [
    ("nosuch:\n  a: {type: fixed, value: 1}\n", "unknown group 'nosuch'"),
    ("ral:\n  nosuch: {type: fixed, value: 1}\n", "unknown setting ral.nosuch"),
    ("training:\n  lr: {type: float, low: 1.0, high: 0.5}\n", "range training.lr: low 1.0 is above high 0.5"),
    ("training:\n  lr: {type: float, low: 0.0, high: 0.5, log: true}\n", "a log range needs low > 0"),
    ("training:\n  lr: {type: gaussian}\n", "type one of float, int, categorical, fixed"),
    ("training:\n  lr: {type: float, low: 0.1, high: 0.5, choices: [1]}\n", "unknown key 'choices'"),
    ("ral:\n  k: {type: categorical, choices: []}\n", "choices must be a non-empty list"),
    ("ral:\n  k: [1, 2\n", "not valid YAML"),
])
def test_bad_overrides_name_the_problem(tmp_path, text, message):
    path = tmp_path / "o.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_ranges(path)


def test_overrides_replace_single_entries(tmp_path):
    path = tmp_path / "o.yaml"
    path.write_text("ral:\n  k: {type: categorical, choices: [3]}\nbackbone:\n  backbone: {type: fixed, value: mssl}\n")
    space = build_space("ral", overrides=str(path))
    assert space.backbones == ("mssl",)
    configs = space.sample(20)
    assert {c["ral.k"] for c in configs} == {3} and {c["backbone"] for c in configs} == {"mssl"}
    assert len({c["lr"] for c in configs}) == 20  # the rest is still sampled


def test_a_plugin_registered_in_a_test_alone_is_searched_once_it_has_ranges(tmp_path, monkeypatch):
    """A new plugin is one registered class: without ranges it is simply not searched (every space still
    builds); with a ranges group (here in an overrides file) it is its own space and one of ``full``'s
    toggles, and a config sampled from ``--space toy`` trains with the plugin's loss."""
    from dataclasses import dataclass

    from trainables.data.datasets import resolve_dataset
    from trainables.plugins.base import PLUGINS, Plugin, PluginConfig, check_range
    from trainables.training.loop import load_data, train

    @dataclass(frozen=True)
    class ToyConfig(PluginConfig):
        weight: float = 1.0

        def validate(self) -> None:
            check_range(self, "weight", 0.0)

    class Toy(Plugin):
        """An extra loss on the pooled query vectors."""

        Config = ToyConfig
        requires = frozenset({"query"})

        def losses(self, features, batch, context):
            return {"toy": self.config.weight * features["query"].pow(2).mean()}

    PLUGINS.register("toy")(Toy)
    try:
        assert "toy" not in space_names()
        assert "toy" not in build_space("full", backbones=["mssl"]).toggled
        with pytest.raises(ValueError, match="unknown space 'toy'"):
            build_space("toy")
        overrides = tmp_path / "toy.yaml"
        overrides.write_text("toy:\n  weight: {type: float, low: 0.1, high: 2.0}\n")
        assert "toy" in space_names(str(overrides))
        assert "toy" in build_space("full", backbones=["mssl"], overrides=str(overrides)).toggled
        space = build_space("toy", backbones=["mssl"], overrides=str(overrides),
                            fixed={"hidden_size": 16, "n_heads": 2, "epochs": 1})
        assert space.validate(DIMS, count=10) >= 1
        configs = space.sample(10, seed=3)
        assert all(c["toy"] is True and 0.1 <= c["toy.weight"] <= 2.0 for c in configs)

        monkeypatch.setenv("PRVR_DATA_DIR", str(tmp_path / "data"))
        reports = []
        train(configs[0], load_data(resolve_dataset("tiny")), on_epoch=reports.append)
        assert reports[0].train_loss["toy.toy"] > 0  # the plugin's loss term, named <plugin>.<term>
    finally:
        PLUGINS._classes.pop("toy", None)


# ---------------------------------------------------------------- settings counted in epochs (below: epochs)


def test_a_setting_counted_in_epochs_is_sampled_below_the_runs_epochs():
    """hard_negative_start_epoch (0-30 in ranges.yaml) in a 3-epoch run: only starts that act, all of them."""
    import yaml

    from spaces.ranges import DEFAULT_RANGES

    written = yaml.safe_load(DEFAULT_RANGES.read_text())["training"]["hard_negative_start_epoch"]
    assert (written["low"], written["high"], written["below"]) == (0, 30, "epochs")
    for name in ("base", "full"):
        starts = [c["hard_negative_start_epoch"] for c in build_space(name, fixed={"epochs": 3}).sample(500, seed=4)]
        assert set(starts) == {0, 1, 2}, name  # epochs 0, 1, 2 exist; a start at 3 or later never acts
    # the recorded space (the parent run's space.json) is the clipped one
    import dataclasses

    entry = dataclasses.asdict(build_space("base", fixed={"epochs": 3}).groups["training"]["hard_negative_start_epoch"])
    assert (entry["low"], entry["high"], entry["below"]) == (0, 2, "epochs")
    # a run longer than the range: the range as written; no epochs (the backbone's own): as written
    assert build_space("base", fixed={"epochs": 100}).groups["training"]["hard_negative_start_epoch"].high == 30
    assert build_space("base").groups["training"]["hard_negative_start_epoch"].high == 30


def test_overrides_keep_below_and_an_empty_clipped_range_is_one_line(tmp_path):
    from trainables.errors import InputError

    kept = tmp_path / "kept.yaml"
    kept.write_text("training:\n  hard_negative_start_epoch: {type: int, low: 1, high: 10, step: 3}\n")
    entry = build_space("base", overrides=str(kept), fixed={"epochs": 6}).groups["training"][
        "hard_negative_start_epoch"]
    assert (entry.low, entry.high, entry.below) == (1, 4, "epochs")  # 1, 4 (7 and 10 >= 6); on the step grid
    starts = {c["hard_negative_start_epoch"] for c in build_space("base", overrides=str(kept),
                                                                  fixed={"epochs": 6}).sample(100)}
    assert starts == {1, 4}
    dropped = tmp_path / "dropped.yaml"
    dropped.write_text("training:\n  hard_negative_start_epoch: {type: int, low: 0, high: 10, below: null}\n")
    assert build_space("base", overrides=str(dropped), fixed={"epochs": 3}).groups["training"][
        "hard_negative_start_epoch"].high == 10

    late = tmp_path / "late.yaml"
    late.write_text("training:\n  hard_negative_start_epoch: {type: int, low: 5, high: 10}\n")
    with pytest.raises(InputError) as caught:
        build_space("base", overrides=str(late), fixed={"epochs": 3})
    assert str(caught.value) == (
        "range training.hard_negative_start_epoch: low 5 is not below epochs 3 (--max-epochs 3): it could never "
        "act in so short a run; lower its low or raise --max-epochs")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("training:\n  lr: {type: float, low: 0.001, high: 0.01, below: epochs}\n")
    with pytest.raises(InputError, match="range training.lr: unknown key 'below' for type float"):
        load_ranges(wrong)
    other = tmp_path / "other.yaml"
    other.write_text("training:\n  hard_negative_start_epoch: {type: int, low: 0, high: 9, below: patience}\n")
    with pytest.raises(InputError, match="range training.hard_negative_start_epoch: below must name epochs"):
        load_ranges(other)


def test_a_too_short_run_is_refused_before_ray_and_the_default_run_validates(tmp_path):
    """search/run.py as a user runs it: --max-epochs 3 with a start range from 5 is one error line (exit 2,
    before Ray); the default --max-epochs 2 space validates with starts 0-1 only."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    late = tmp_path / "late.yaml"
    late.write_text("training:\n  hard_negative_start_epoch: {type: int, low: 5, high: 10}\n")
    done = subprocess.run([sys.executable, "search/run.py", "--overrides", str(late), "--max-epochs", "3",
                           "--storage", str(tmp_path / "results")], cwd=root, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PRVR_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: range training.hard_negative_start_epoch: low 5 is not below epochs 3 (--max-epochs 3): it could "
        "never act in so short a run; lower its low or raise --max-epochs"]
    assert not (tmp_path / "results").exists()

    from search.run import _parser, build_preset_space, held_fixed

    args = _parser().parse_args(["--space", "full"])
    assert args.max_epochs == 2  # the default run
    fixed = {"epochs": args.max_epochs, "patience": args.patience, "seed": args.seed, **held_fixed(args)}
    space = build_preset_space(args, {**fixed, "hidden_size": 16, "n_heads": 4})
    assert space.validate(DIMS, count=args.validate_samples) >= 1
    assert {c["hard_negative_start_epoch"] for c in space.sample(args.validate_samples)} == {0, 1}
