"""Plugins in a trial's config: switches and settings, every plugin on every backbone, all plugins at once,
and resuming a run with plugins."""

from __future__ import annotations

import pytest
import torch

from trainables.data.synthetic import ensure_synthetic
from trainables.models import list_backbones
from trainables.plugins import list_plugins
from trainables.training.checkpoint import load_checkpoint
from trainables.training.config import TrainConfig
from trainables.training.loop import DataSplits, load_data, train

SMALL_MODEL = {"hidden_size": 16, "n_heads": 4}
#: every plugin each backbone accepts, with the parts it cannot run switched off
ALL_PLUGINS = {
    "mssl": {"ral": True, "msc": True, "msc.tome": True, "moment": True},
    "gmmformer": {"ral": True, "msc": True, "msc.tome": True, "moment": True},
    "gmmformer2": {"ral": True, "msc": True, "msc.tome": True, "moment": True},
    "amdnet": {"msc": True, "msc.cbva": False, "msc.tome": True, "msc.tome_proportional": False},
    "meanpool": {"ral": True, "ral.csa": False, "msc": True, "msc.cbva": False, "msc.tome": False},
}


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def tiny() -> DataSplits:
    return load_data(ensure_synthetic("tiny"))


def _config(backbone: str, **extra) -> dict:
    return {"backbone": backbone, "epochs": 1, "batch_size": 16, "lr": 1e-3, "seed": 5, **SMALL_MODEL, **extra}


@pytest.mark.parametrize("backbone", list_backbones())
@pytest.mark.parametrize("plugin", list_plugins())
def test_every_plugin_is_accepted_or_clearly_rejected_on_every_backbone(plugin, backbone):
    try:
        config = TrainConfig.from_dict({"backbone": backbone, plugin: True})
    except ValueError as error:
        assert f"plugin {plugin}" in str(error) and backbone in str(error), str(error)
    else:
        assert plugin in config.plugins and config.backbone == backbone


@pytest.mark.parametrize(("raw", "message"), [
    ({"ral.k": 3}, r"ral\.k is set but plugin ral is off \(set ral: true to use it\)"),
    ({"ral": False, "ral.k": 3}, r"ral\.k is set but plugin ral is off"),
    ({"nosuch.k": 3}, r"unknown plugin 'nosuch' in key 'nosuch\.k' \(available: moment, msc, ral\)"),
    ({"ral": "yes"}, r"plugin switch ral must be true or false, got 'yes'"),
    ({"ral": True, "ral.nosuch": 1}, r"plugin ral: unknown setting ral\.nosuch \(known: .*\bk\b"),
    ({"ral": True, "ral.k": 0}, r"plugin ral: k must be"),
])
def test_bad_plugin_keys_fail_before_training_naming_the_key(raw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({"backbone": "mssl", **raw})


def test_plugin_settings_round_trip_through_the_flat_form():
    raw = {"backbone": "gmmformer2", "ral": True, "ral.k": 3, "msc": False, "moment": True, "moment.div": False}
    config = TrainConfig.from_dict(raw)
    assert config.plugins == {"ral": {"k": 3}, "moment": {"div": False}}  # msc off: not there at all
    flat = config.to_dict()
    assert {k: flat[k] for k in ("ral", "ral.k", "moment", "moment.div")} == \
        {"ral": True, "ral.k": 3, "moment": True, "moment.div": False}
    assert "msc" not in flat and TrainConfig.from_dict(flat) == config


@pytest.mark.parametrize("backbone", sorted(ALL_PLUGINS))
def test_all_accepted_plugins_at_once_train_an_epoch(tiny, backbone):
    """Every plugin the backbone accepts, on together: finite losses from each, and the parameters of
    every plugin that has some learn (their weights change in the epoch)."""
    config = TrainConfig.from_dict(_config(backbone, **ALL_PLUGINS[backbone]))
    torch.manual_seed(config.seed)
    initial = {k: v.clone() for k, v in config.build_model(tiny.dims).state_dict().items()}
    result = train(config.to_dict(), tiny)
    losses = result.history[0]["loss"]
    for plugin in config.plugins:
        assert any(term.startswith(f"{plugin}.") for term in losses), (plugin, sorted(losses))
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    plugin_state = {k: v for k, v in result.model.state_dict().items() if k.startswith("plugins.")}
    with_parameters = {k.split(".")[1] for k in plugin_state}
    # msc's only parameters are CBVA's projection (off on amdnet and meanpool)
    assert with_parameters == set(config.plugins) - ({"msc"} if backbone in ("amdnet", "meanpool") else set())
    changed = [k for k, v in plugin_state.items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert {k.split(".")[1] for k in changed} == with_parameters


def test_resume_with_plugins_equals_uninterrupted_run(tiny, tmp_path):
    """Plugin parameters and their sampling (RAL's proxies) resume exactly from a checkpoint."""
    raw = _config("mssl", epochs=3, **ALL_PLUGINS["mssl"])
    full = train(raw, tiny)

    def crash(report):
        if report.epoch == 2:
            report.save_checkpoint(tmp_path / "ckpt")
            raise Interrupt

    with pytest.raises(Interrupt):
        train(raw, tiny, on_epoch=crash)
    assert load_checkpoint(tmp_path / "ckpt")["epoch"] == 2
    resumed = train(raw, tiny, resume_from=tmp_path / "ckpt")
    assert resumed.history == full.history and resumed.test == full.test


# ------------------------------------------------------------------ plugins' release defaults of backbone options

def test_ral_on_gmmformer2_fuses_half_and_half_unless_alpha_is_set():
    """The release's RAL4GMMV2 TVR config: clip_scale_w = frame_scale_w = 0.5 (src/Configs/tvr.py), against
    gmmformer2's own 0.7. The default applies only while ral is on, only on gmmformer2, never over an
    explicit alpha, and is not written into the trial's options."""
    own = TrainConfig.from_dict({"backbone": "gmmformer2"}).backbone_config().alpha
    assert own == 0.7
    with_ral = TrainConfig.from_dict({"backbone": "gmmformer2", "ral": True})
    assert with_ral.backbone_config().alpha == 0.5
    assert "alpha" not in with_ral.options and "alpha" not in with_ral.to_dict()
    assert with_ral.build_model(ensure_dims()).config.alpha == 0.5
    for explicit in (0.7, 0.3):
        config = TrainConfig.from_dict({"backbone": "gmmformer2", "ral": True, "alpha": explicit})
        assert config.backbone_config().alpha == explicit
    for backbone in ("mssl", "gmmformer"):
        plain = TrainConfig.from_dict({"backbone": backbone}).backbone_config().alpha
        assert TrainConfig.from_dict({"backbone": backbone, "ral": True}).backbone_config().alpha == plain


def test_conflicting_plugin_defaults_name_the_option(monkeypatch):
    from trainables.plugins.base import plugin_class

    monkeypatch.setattr(plugin_class("moment"), "backbone_defaults", {"gmmformer2": {"alpha": 0.6}})
    with pytest.raises(ValueError, match=r"plugins ral and moment set different defaults of alpha on gmmformer2 "
                                         r"\(0\.5 and 0\.6\): set alpha explicitly"):
        TrainConfig.from_dict({"backbone": "gmmformer2", "ral": True, "moment": True})
    config = TrainConfig.from_dict({"backbone": "gmmformer2", "ral": True, "moment": True, "alpha": 0.4})
    assert config.backbone_config().alpha == 0.4
    monkeypatch.setattr(plugin_class("moment"), "backbone_defaults", {"gmmformer2": {"alpha": 0.5}})
    assert TrainConfig.from_dict({"backbone": "gmmformer2", "ral": True, "moment": True}).backbone_config().alpha == 0.5


def ensure_dims():
    from trainables.models.base import Dims

    return Dims(video_dim=12, query_dim=10)
