"""Release presets: each paper's TVR configuration in this project's flat config keys.

A preset is plain data: a name, the release repository it reproduces, and a dict of flat trial keys
(training settings, backbone options, plugin switches and ``plugin.setting`` keys) with each value's
release file cited next to it (paths inside the release repository). Explicit keys always win over the
preset (``apply_preset``), so a preset is a base that a user, a search space or an ablation overrides.

    train({"preset": "ral-gmmformer2-tvr", "epochs": 3}, data)   # the preset, epochs overridden
    python search/run.py --space ral --preset ral-gmmformer2-tvr   # the fixed base under the space
    python search/ablate.py --preset msc-gmmformer2-tvr --components msc

Settings of a release that no key here expresses are listed in each preset's ``not_reproduced`` (the
input features themselves are a property of the data, never of a preset). The plugins' own release values
(RAL's loss weights, MSC's TCPL/CBVA coefficients) were pinned, with citations, in the plugin modules; a
preset restates them so that a later change of a plugin default does not change a preset.

Release settings common to every release here and not reproduced by any preset: ``num_workers`` /
``pin_memory`` (data loading), ``initializer_range`` 0.02 (the backbones' init scheme is fixed in code),
``max_position_embeddings`` 300 (the positional tables are sized by ``max_ctx_l``/``max_desc_l``),
``eval_query_bsz`` / ``eval_context_bsz`` (evaluation chunking: no effect on the metrics; the project's
memory-sized defaults are kept) and ``use_hard_negative`` False (a flag the training loops do not read:
the hard-negative start is ``hard_negative_start_epoch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainables.errors import InputError

#: the key of a flat config dict that names a preset (``train({"preset": ...})``)
PRESET_KEY = "preset"


@dataclass(frozen=True)
class Preset:
    """A release's TVR configuration: ``values`` are flat config keys (see ``TrainConfig.from_dict``)."""

    name: str
    #: the release repository (owner/name on GitHub) the values come from
    source: str
    values: dict[str, Any]
    #: release settings with no key in this project (or deliberately not set), each with the reason
    not_reproduced: tuple[str, ...] = field(default=())


# Training settings shared by the GMMFormer-family TVR configs (``src/Configs/tvr.py`` of GMMFormer,
# GMMFormer_v2, RAL-PRVR and MSC_PRVR; AMDNet's ``Configs/tvr.py``): lr_warmup_proportion 0.01, wd 0.01,
# hard_pool_size 20, batchsize 128, lr 3e-4.
def _common_optimiser() -> dict[str, Any]:
    return {"lr": 3e-4, "batch_size": 128, "warmup_proportion": 0.01, "weight_decay": 0.01, "hard_pool_size": 20}


# Model sizes shared by the GMMFormer-family TVR configs (``src/Configs/tvr.py`` of GMMFormer, GMMFormer_v2;
# AMDNet's ``Configs/tvr.py``): hidden_size 384, n_heads 4, input_drop 0.2, drop 0.2, max_desc_l 30,
# max_ctx_l 128.
def _family_model() -> dict[str, Any]:
    return {"hidden_size": 384, "n_heads": 4, "input_drop": 0.2, "drop": 0.2, "max_desc_l": 30, "max_ctx_l": 128}


MSSL_TVR = Preset(
    name="mssl-tvr",
    source="HuiGuanLab/ms-sl",
    values={
        "backbone": "mssl",
        "seed": 2018,                       # method/config.py (--seed default)
        "lr": 2.5e-4,                       # method/config.py (--lr)
        "batch_size": 128,                  # method/config.py (--bsz)
        "epochs": 100,                      # method/config.py (--n_epoch)
        "patience": 10,                     # method/config.py (--max_es_cnt)
        "hard_negative_start_epoch": 20,    # method/config.py (--hard_negative_start_epoch)
        "hard_pool_size": 20,               # method/config.py (--hard_pool_size)
        "warmup_proportion": 0.01,          # method/config.py (--lr_warmup_proportion)
        "weight_decay": 0.01,               # method/config.py (--wd)
        "margin": 0.1,                      # do_tvr.sh (margin=0.1)
        "map_size": 32,                     # do_tvr.sh (map_size=32)
        "alpha": 0.7,                       # method/config.py (--clip_scale_w 0.7, --frame_scale_w 0.3)
        # method/model.py (loss weights are constants of the model; values as pinned in trainables/models/mssl.py)
        "clip_nce_weight": 0.02,
        "frame_nce_weight": 0.04,
        "frame_nce": "joint",               # method/model.py (MS-SL's frame NCE over row and column together)
        "hidden_size": 384,                 # method/config.py (--hidden_size)
        "n_heads": 4,                       # method/config.py (--n_heads)
        "input_drop": 0.1,                  # method/config.py (--input_drop default 0.1; do_tvr.sh sets none)
        "drop": 0.1,                        # method/config.py (--drop default 0.1)
        "max_desc_l": 30,                   # method/config.py (--max_desc_l)
        "max_ctx_l": 128,                   # method/config.py (--max_ctx_l)
    },
    not_reproduced=(
        "visual_feature i3d_resnet / q_feat_size 768 (the dataset's features; dims come from the data)",
        "grad_clip -1 (no global gradient clipping, as here; BertAdam's per-parameter max_grad_norm 1.0 is kept)",
        "max_sub_l 50, use_sub False, train_span_start_epoch (subtitle and span options the TVR run does not use)",
    ),
)

MSSLPP_TVR = Preset(
    name="mssl++-tvr",
    source="HuiGuanLab/ms-sl-pp",
    values={
        # MS-SL++ is the ``mssl`` backbone with ``cluster_num`` set (trainables/models/mssl.py): there is no
        # separate backbone; the frame NCE (two_way, 0.03) follows from cluster_num unless set.
        **MSSL_TVR.values,
        # method/config.py of ms-sl-pp (max_es_cnt 20; as stated in trainables/models/mssl.py, not re-read here);
        # the other MS-SL settings are taken as ms-sl's method/config.py (ms-sl-pp's not re-read)
        "patience": 20,
        "margin": 0.1,                      # do_tvr.sh (margin=0.1)
        "map_size": 32,                     # do_tvr.sh (map_size=32)
        "cluster_num": 32,                  # README.md (released TVR run: MODELDIR tvr-pos-256_cluster-32-...;
        #                                     do_tvr.sh takes it as $2)
        "length_pos": True,                 # do_tvr.sh (--length_pos)
        "length_dim": 256,                  # README.md (MODELDIR tvr-pos-256_...)
        "frame_nce": "two_way",             # method/model.py (plain two-way InfoNCE in MS-SL++)
        "frame_nce_weight": 0.03,           # method/model.py (frame NCE weight 0.03 in MS-SL++, as pinned in mssl.py)
    },
    not_reproduced=("visual_feature i3d_resnet / q_feat_size 768 (the dataset's features)",),
)

GMMFORMER_TVR = Preset(
    name="gmmformer-tvr",
    source="huangmozhi9527/GMMFormer",
    values={
        "backbone": "gmmformer",
        "seed": 9527,                       # src/Configs/tvr.py (seed)
        **_common_optimiser(),  # src/Configs/tvr.py (lr, batchsize, lr_warmup_proportion, wd, hard_pool_size)
        "epochs": 100,                      # src/Configs/tvr.py (n_epoch)
        "patience": 10,                     # src/Configs/tvr.py (max_es_cnt)
        "hard_negative_start_epoch": 30,    # src/Configs/tvr.py (hard_negative_start_epoch)
        "margin": 0.1,                      # src/Configs/tvr.py (margin)
        "map_size": 32,                     # src/Configs/tvr.py (map_size)
        "alpha": 0.7,                       # src/Configs/tvr.py (clip_scale_w 0.7, frame_scale_w 0.3)
        "loss_factor": (0.05, 0.04, 0.001),  # src/Configs/tvr.py (loss_factor)
        "qdl_delta": 0.15,                  # src/Configs/tvr.py (neg_factor[0])
        "qdl_alpha": 32.0,                  # src/Configs/tvr.py (neg_factor[1])
        **_family_model(),  # src/Configs/tvr.py (hidden_size, n_heads, input_drop, drop, max_desc_l, max_ctx_l)
    },
    not_reproduced=("visual_feature i3d_resnet / q_feat_size 768 (the dataset's features)",),
)

GMMFORMER2_TVR = Preset(
    name="gmmformer2-tvr",
    source="huangmozhi9527/GMMFormer_v2",
    values={
        # src/Configs/tvr.py keeps GMMFormer's seed, n_epoch, max_es_cnt, margin, map_size, clip/frame_scale_w,
        # neg_factor[0:2], optimiser and model sizes (checked one by one), and changes:
        **GMMFORMER_TVR.values,
        "backbone": "gmmformer2",
        "hard_negative_start_epoch": 20,    # src/Configs/tvr.py (hard_negative_start_epoch)
        "sft_factor": 0.09,                 # src/Configs/tvr.py (sft_factor)
        "loss_factor": (0.05, 0.04, 8e-5, 0.09),  # src/Configs/tvr.py (loss_factor)
        "qdl_gamma": 1.0,                   # src/Configs/tvr.py (neg_factor[2])
    },
    not_reproduced=("visual_feature i3d_resnet / sub_feat_size, q_feat_size 768 (the dataset's features)",),
)

AMDNET_TVR = Preset(
    name="amdnet-tvr",
    source="songpipi/AMDNet",
    values={
        "backbone": "amdnet",
        "seed": 9527,                       # Configs/tvr.py (seed)
        **_common_optimiser(),              # Configs/tvr.py (lr, batchsize, lr_warmup_proportion, wd, hard_pool_size)
        "epochs": 200,                      # Configs/tvr.py (n_epoch)
        "patience": 15,                     # Configs/tvr.py (max_es_cnt)
        # Configs/tvr.py (hard_negative_start_epoch 30); AMDNet has no triplet loss, so it has no effect
        "hard_negative_start_epoch": 30,
        "margin": 0.1,                      # Configs/tvr.py (margin; unused: no triplet loss)
        "alpha": 0.9,                       # Configs/tvr.py (clip_scale_w 0.9 / frame 0.1; unused: clip score only)
        "map_size": 32,                     # Configs/tvr.py (map_size)
        "event_size": 4,                    # Configs/tvr.py (event_size)
        "nce_weight": 0.04,                 # Configs/tvr.py (loss_factor[0])
        "div_weight": 1.0,                  # Configs/tvr.py (loss_factor[1])
        **_family_model(),  # Configs/tvr.py (hidden_size, n_heads, input_drop, drop, max_desc_l, max_ctx_l)
    },
    not_reproduced=(
        "visual_feature i3d_resnet with visual_feat_dim / q_feat_size 512 (the dataset's features)",
        "neg_factor [0.15, 32] (a QDL setting: AMDNet trains no QDL; div_target 0.15, rel_weight 25, rel_margin "
        "0.02 are the backbone's pinned defaults, not re-read for this preset)",
    ),
)

RAL_GMMFORMER2_TVR = Preset(
    name="ral-gmmformer2-tvr",
    source="zhanglong-ustc/RAL-PRVR",
    values={
        **GMMFORMER2_TVR.values,
        "seed": 9527,                       # src/Configs/tvr.py (seed)
        "epochs": 150,                      # src/Configs/tvr.py (n_epoch)
        "patience": 15,                     # src/Configs/tvr.py (max_es_cnt)
        "hard_negative_start_epoch": 20,    # src/Configs/tvr.py (hard_negative_start_epoch)
        "alpha": 0.5,                       # src/Configs/tvr.py (clip_scale_w 0.5, frame_scale_w 0.5)
        "loss_factor": (0.05, 0.04, 8e-5, 0.09),  # src/Configs/tvr.py (loss_factor)
        "ral": True,
        "ral.k": 6,                         # src/Models/RAL4gmmv2/model.py (n_video_samples = n_text_samples = 6)
        "ral.pm_weight": 4e-3,              # src/Models/RAL4gmmv2/model.py (L_PM weight; plugin's pinned value)
        "ral.da_weight": 2.5e-4,            # src/Models/RAL4gmmv2/model.py (L_DA weight; README differs)
        "ral.da_variant": "as_released",    # src/Models/RAL4gmmv2/prob_models/until_loss.py (L_DA as coded)
        "ral.csa": True,                    # src/Models/RAL4gmmv2/model.py (CSA frame score at inference)
        "ral.frame_padding_floor": True,    # src/Models/RAL4gmmv2/model.py (CSA frame similarity floored at 0)
        "ral.msra_pooling": "padded",       # src/Models/RAL4gmmv2/model.py (Gaussians pooled over padded slots)
        "ral.support_slots": 26,            # src/Models/RAL4gmmv2/model.py (support set: up to 26 queries)
    },
    not_reproduced=("visual_feature i3d_resnet / sub_feat_size, q_feat_size 768 (the dataset's features)",),
)

MSC_GMMFORMER2_TVR = Preset(
    name="msc-gmmformer2-tvr",
    source="admins97/MSC_PRVR",
    values={
        **GMMFORMER2_TVR.values,
        "seed": 9527,                       # src/Configs/tvr.py (seed)
        "epochs": 100,                      # src/Configs/tvr.py (n_epoch)
        "patience": 10,                     # src/Configs/tvr.py (max_es_cnt)
        "hard_negative_start_epoch": 20,    # src/Configs/tvr.py (hard_negative_start_epoch)
        "alpha": 0.4,                       # src/Configs/tvr.py (clip_scale_w 0.4, frame_scale_w 0.6)
        "loss_factor": (0.05, 0.04, 8e-5, 0.09),  # src/Configs/tvr.py (loss_factor)
        "max_desc_l": 77,                   # src/Configs/tvr.py (max_desc_l: CLIP text tokens)
        "msc": True,
        "msc.tome": True,                   # src/Models (clip input always built by OP-ToMe in the release)
        "msc.tome_input": "raw",            # src/Datasets/data_provider.py (OP-ToMe on the un-normalised 128-bin means)
        "msc.teacher": "last_valid",        # src/Models (TCPL teacher: last valid token)
        "msc.tcpl": True,
        "msc.alpha_d": 15.0,                # TCPL distance coefficient (plugin's pinned release value)
        "msc.alpha_a": 30.0,                # TCPL angle coefficient (plugin's pinned release value)
        "msc.cbva": True,
        "msc.cbva_weight": 0.1,             # src/Configs/tvr.py (vl_coef)
        "msc.sim_thr": 0.8,                 # README.md (TVR command: sim_thr 0.8; src/Configs/tvr.py says 0.5)
        "msc.pad_frames": "repeat",         # src/Models (short videos' frame branch padded to 128 repeated frames)
    },
    not_reproduced=(
        "visual_feature clip / visual_feat_dim, q_feat_size 768 (CLIP features: a property of the dataset)",
        "map_size 128 of src/Configs/tvr.py (the release's frame-token count; here map_size is the clip count, "
        "32, which OP-ToMe and the adaptive counts need)",
        "sim_thr: src/Configs/tvr.py has 0.5, the README's TVR command 0.8; the preset follows the README",
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (
    MSSL_TVR, MSSLPP_TVR, GMMFORMER_TVR, GMMFORMER2_TVR, AMDNET_TVR, RAL_GMMFORMER2_TVR, MSC_GMMFORMER2_TVR)}


def list_presets() -> list[str]:
    """The preset names, in registry order."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset ``name``; an unknown name is a one-line InputError listing the available ones."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r} (available: {', '.join(PRESETS)})")
    return PRESETS[name]


def apply_preset(config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """``config`` on top of a preset: the preset named by ``name`` or by ``config["preset"]`` (removed),
    every explicit key of ``config`` overriding the preset's. Without a preset, ``config`` unchanged.

    A plugin switched off explicitly (``"ral": False``) also drops the preset's ``ral.*`` settings.
    """
    config = dict(config)
    name = config.pop(PRESET_KEY, None) if name is None else name
    config.pop(PRESET_KEY, None)
    if name is None:
        return config
    if not isinstance(name, str):
        raise InputError(f"{PRESET_KEY} must be a preset name, got {name!r} (available: {', '.join(PRESETS)})")
    base = dict(get_preset(name).values)
    for key, value in config.items():
        if value is False and base.get(key) is True:  # a preset's plugin switched off
            base = {k: v for k, v in base.items() if not k.startswith(f"{key}.")}
    return {**base, **config}
