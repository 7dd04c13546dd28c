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
