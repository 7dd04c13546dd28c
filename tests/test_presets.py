"""Release presets (trainables/presets.py): values against the release files, training on ``tiny``, and the
``train()`` / ``search/run.py --preset`` / ``search/ablate.py --preset`` entry points."""

from __future__ import annotations

import math

import pytest

from trainables.data.synthetic import ensure_synthetic
from trainables.presets import PRESETS, apply_preset, get_preset
from trainables.training.config import TrainConfig
from trainables.training.loop import load_data, train

# Independent table, typed here from the release files (path in each release repository):
#   ms-sl       method/config.py: seed 2018, lr 2.5e-4, bsz 128, n_epoch 100, max_es_cnt 10,
#               hard_negative_start_epoch 20, input_drop/drop 0.1, clip/frame_scale_w 0.7/0.3; do_tvr.sh margin 0.1
#   ms-sl-pp    do_tvr.sh: margin 0.1, map_size 32, --cluster --length_pos; README.md MODELDIR
#               tvr-pos-256_cluster-32 (cluster_num 32, length_dim 256)
#   GMMFormer   src/Configs/tvr.py: seed 9527, lr 3e-4, n_epoch 100, max_es_cnt 10, hard_negative_start_epoch 30,
#               clip_scale_w 0.7, loss_factor [0.05, 0.04, 0.001], input_drop/drop 0.2
#   GMMFormer_v2 src/Configs/tvr.py: n_epoch 100, max_es_cnt 10, hard_negative_start_epoch 20, clip_scale_w 0.7,
#               loss_factor [0.05, 0.04, 8e-5, 0.09], neg_factor [0.15, 32, 1], sft_factor 0.09
#   AMDNet      Configs/tvr.py: n_epoch 200, max_es_cnt 15, clip_scale_w 0.9, loss_factor [0.04, 1], event_size 4
#   RAL-PRVR    src/Configs/tvr.py: n_epoch 150, max_es_cnt 15, clip_scale_w 0.5, frame_scale_w 0.5; K = 6
#   MSC_PRVR    src/Configs/tvr.py: n_epoch 100, max_es_cnt 10, clip_scale_w 0.4, frame_scale_w 0.6, vl_coef 0.1,
#               max_desc_l 77
RELEASE = {
    "mssl-tvr": {"backbone": "mssl", "seed": 2018, "lr": 2.5e-4, "batch_size": 128, "epochs": 100, "patience": 10,
                 "hard_negative_start_epoch": 20, "input_drop": 0.1, "drop": 0.1, "alpha": 0.7, "margin": 0.1},
    "mssl++-tvr": {"backbone": "mssl", "margin": 0.1, "map_size": 32, "cluster_num": 32, "length_dim": 256,
                   "length_pos": True},
    "gmmformer-tvr": {"backbone": "gmmformer", "seed": 9527, "lr": 3e-4, "epochs": 100, "patience": 10,
                      "hard_negative_start_epoch": 30, "alpha": 0.7, "loss_factor": (0.05, 0.04, 0.001),
                      "input_drop": 0.2, "drop": 0.2},
    "gmmformer2-tvr": {"backbone": "gmmformer2", "epochs": 100, "patience": 10, "hard_negative_start_epoch": 20,
                       "alpha": 0.7, "loss_factor": (0.05, 0.04, 8e-5, 0.09), "qdl_delta": 0.15, "qdl_alpha": 32.0,
                       "qdl_gamma": 1.0, "sft_factor": 0.09},
    "amdnet-tvr": {"backbone": "amdnet", "epochs": 200, "patience": 15, "alpha": 0.9, "nce_weight": 0.04,
                   "div_weight": 1.0, "event_size": 4},
    "ral-gmmformer2-tvr": {"backbone": "gmmformer2", "epochs": 150, "patience": 15, "alpha": 0.5, "ral": True,
                           "ral.k": 6, "ral.frame_padding_floor": True},
    "msc-gmmformer2-tvr": {"backbone": "gmmformer2", "epochs": 100, "patience": 10, "alpha": 0.4, "msc": True,
                           "msc.cbva_weight": 0.1, "max_desc_l": 77, "msc.tome": True, "msc.teacher": "last_valid"},
}

#: only the sizes the tiny data needs: a small model, one epoch, small batches
TINY = {"epochs": 1, "batch_size": 8, "hidden_size": 32, "n_heads": 4, "eval_video_batch": 16}


@pytest.fixture(scope="module")
def tiny():
    return load_data(ensure_synthetic("tiny"))


def test_every_named_preset_is_registered():
    assert set(PRESETS) == set(RELEASE)


@pytest.mark.parametrize("name", sorted(RELEASE))
def test_preset_values_match_the_release_table(name):
    values = get_preset(name).values
    for key, expected in RELEASE[name].items():
        actual = values[key]
        if isinstance(expected, float):
            assert math.isclose(actual, expected, rel_tol=0, abs_tol=1e-12), (name, key, actual)
        else:
            assert actual == expected, (name, key, actual)


@pytest.mark.parametrize("name", sorted(RELEASE))
def test_preset_resolves_to_the_release_values_through_train_config(name):
    """What a run actually gets: TrainConfig's settings, backbone options and plugin settings."""
    config = TrainConfig.from_dict(apply_preset({"preset": name}))
    backbone = dataclass_dict(config.backbone_config())
    flat = {**{k: getattr(config, k) for k in ("seed", "lr", "batch_size", "epochs", "patience",
                                                 "hard_negative_start_epoch")}, **backbone}
    for name_, settings in config.plugins.items():
        flat[name_] = True
        flat.update({f"{name_}.{k}": v for k, v in settings.items()})
    flat["backbone"] = config.backbone
    for key, expected in RELEASE[name].items():
        assert flat[key] == pytest.approx(expected) if isinstance(expected, float) else flat[key] == expected, key


def dataclass_dict(obj) -> dict:
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def test_unknown_preset_is_one_line_error_listing_the_names():
    with pytest.raises(ValueError) as info:
        apply_preset({"preset": "nope"})
    message = str(info.value)
    assert "\n" not in message and "nope" in message
    assert all(name in message for name in RELEASE)


def test_explicit_keys_override_the_preset_and_switching_a_plugin_off_drops_its_settings():
    merged = apply_preset({"preset": "ral-gmmformer2-tvr", "epochs": 3, "ral.k": 2})
    assert merged["epochs"] == 3 and merged["ral.k"] == 2 and merged["patience"] == 15 and "preset" not in merged
    off = apply_preset({"preset": "ral-gmmformer2-tvr", "ral": False})
    assert off["ral"] is False and not [k for k in off if k.startswith("ral.")]
    TrainConfig.from_dict(off)  # valid: no setting of a switched-off plugin left


@pytest.mark.parametrize("name", sorted(RELEASE))
def test_each_preset_trains_one_epoch_on_tiny(name, tiny):
    result = train({"preset": name, **TINY}, tiny)
    assert len(result.history) == 1 and result.best_epoch == 1
    sums = [m["SumR"] for m in result.test.values()]
    assert sums and all(math.isfinite(v) for v in sums), result.test
    assert result.config.epochs == 1 and result.config.hard_negative_start_epoch == get_preset(name).values[
        "hard_negative_start_epoch"]


def test_train_uses_the_preset_values_not_the_backbone_defaults(tiny, monkeypatch):
    """train() with a preset builds the TrainConfig of the preset (alpha 0.4 and max_desc_l 77 of MSC's release
    differ from gmmformer2's defaults 0.7 / 30)."""
    from trainables.training import loop

    seen = {}
    real = loop.Trainer

    class Spy(real):
        def __init__(self, config, data):
            seen["config"] = config
            super().__init__(config, data)

    monkeypatch.setattr(loop, "Trainer", Spy)
    train({"preset": "msc-gmmformer2-tvr", **TINY}, tiny)
    options = seen["config"].backbone_config()
    assert options.alpha == 0.4 and options.max_desc_l == 77 and seen["config"].patience == 10
    assert seen["config"].plugins["msc"]["teacher"] == "last_valid"


def _run_args(*argv: str):
    from search.run import _parser

    return _parser().parse_args(list(argv))


def test_run_preset_is_the_base_under_sampled_settings_and_set():
    """search/run.py --preset: the preset's unsampled values join every trial; sampled settings, the budget
    flags and --set win over it."""
    from search.run import build_preset_space, sampled_keys
    from trainables.training.config import parse_assignments

    args = _run_args("--space", "ral", "--preset", "ral-gmmformer2-tvr", "--set", "hidden_size=32", "margin=0.3",
                     "--max-epochs", "2")
    fixed = {"epochs": args.max_epochs, "patience": args.patience, "seed": args.seed, **parse_assignments(args.set)}
    space = build_preset_space(args, fixed)
    assert space.backbones == ("gmmformer2",)  # the preset's backbone is the default of --backbones
    sampled = sampled_keys(space)
    preset = get_preset("ral-gmmformer2-tvr").values
    for config in space.sample(20, seed=1):
        assert config["hidden_size"] == 32 and config["margin"] == 0.3  # --set beats the preset (0.1 / 384)
        assert config["epochs"] == 2  # --max-epochs beats the preset's 150
        for key, value in preset.items():
            if key not in sampled and key not in fixed:
                assert config[key] == value, key
    # a setting the ral space samples is not pinned by the preset: over 20 samples it takes several values
    varied = [k for k in sampled if k.startswith("ral.") and k in preset and k not in fixed]
    assert varied, "the ral space samples none of the preset's ral settings"
    key = varied[0]
    assert len({repr(c.get(key)) for c in space.sample(20, seed=1)}) > 1, key


def test_run_unknown_preset_fails_before_ray_with_one_line(tmp_path, run_cli_without_ray):
    from search.run import main

    result = run_cli_without_ray(main, "--preset", "nope", "--data", "tiny", "--storage", str(tmp_path / "r"),
                                 cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and "unknown preset 'nope'" in lines[0], result.stderr[-1500:]


def test_ablate_preset_is_the_base_and_set_overrides_it():
    from search.ablate import _parser, base_config

    args = _parser().parse_args(["--preset", "amdnet-tvr", "--components", "rel_independent_dropout",
                                 "--set", "hidden_size=32", "epochs=1"])
    base = base_config(args, None)
    expected = {k: v for k, v in get_preset("amdnet-tvr").values.items() if k != "seed"}
    assert base == {**expected, "hidden_size": 32, "epochs": 1}


def test_ablate_base_yaml_may_name_a_preset(tmp_path):
    from search.ablate import _parser, base_config

    (tmp_path / "base.yaml").write_text("preset: gmmformer-tvr\nepochs: 2\n")
    args = _parser().parse_args(["--base", str(tmp_path / "base.yaml"), "--components", "global_branch"])
    base = base_config(args, None)
    assert base["epochs"] == 2 and base["patience"] == 10 and base["loss_factor"] == (0.05, 0.04, 0.001)
    assert "preset" not in base and "seed" not in base
