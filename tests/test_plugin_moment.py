"""The ``moment`` plugin (AMDNet's moment diversity / relevance losses on other backbones), plus a generic
check that every registered plugin is either accepted or clearly rejected on every backbone."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.data.synthetic import ensure_synthetic
from trainables.models.amdnet import AMDNet
from trainables.models.base import Dims, LossContext, create_backbone
from trainables.plugins.moment import MomentConfig, MomentPlugin
from trainables.training.config import TrainConfig
from trainables.training.loop import DataSplits, Trainer, load_data

DIMS = Dims(video_dim=12, query_dim=10)
SMALL_MODEL = {"hidden_size": 16, "n_heads": 4}
CLIP_BACKBONES = ("mssl", "gmmformer", "gmmformer2")
CONTEXT = LossContext(epoch=0, hard_negatives=False, hard_pool_size=4, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny() -> DataSplits:
    return load_data(ensure_synthetic("tiny"))


def backbone_masks_plugin(**settings) -> MomentPlugin:
    """The plugin in "backbone masks" mode (as on a backbone with ``moment_masks``, K = event_size = 4)."""
    return MomentPlugin(MomentConfig(**settings), AMDNet.Config(hidden_size=16, n_heads=4, event_size=4), DIMS)


def anchor_plugin(**settings) -> MomentPlugin:
    """The plugin with its own K-anchor head (as on MS-SL / GMMFormer / GMMFormer v2)."""
    return MomentPlugin(MomentConfig(**settings), create_backbone("mssl", DIMS, **SMALL_MODEL).config, DIMS)


def naive_gaussian(centre: float, width: float, length: int) -> torch.Tensor:
    """AMDNet's mask, one position at a time: pdf over linspace(0, 1) with sigma = max(w, 0.01) / 9, over its max."""
    sigma = max(width, 0.01) / 9.0
    values = [math.exp(-((i / (length - 1) - centre) ** 2) / (2 * sigma**2)) for i in range(length)]
    top = max(values)
    return torch.tensor([v / top for v in values])


def naive_relevance(queries, global_video, moments, labels, margin) -> float:
    """mean_q max(0, margin + cos(q, g_y) - max_k cos(q, m_y,k)), one query at a time."""
    total = 0.0
    for q, y in zip(queries, labels.tolist()):
        global_cos = torch.dot(q, global_video[y]) / (q.norm() * global_video[y].norm())
        best = max(float(torch.dot(q, m) / (q.norm() * m.norm())) for m in moments[y])
        total += max(0.0, margin + float(global_cos) - best)
    return total / len(queries)


# -- the diversity loss ----------------------------------------------------------------------------------
def test_diversity_is_zero_at_the_target_overlap_and_positive_elsewhere():
    # 4 disjoint windows of 8 of the 32 positions: G G^T = I / 8, so target 1/8 gives exactly 0
    masks = torch.zeros(3, 4, 32)
    for k in range(4):
        masks[:, k, 8 * k: 8 * k + 8] = 1.0
    features = {"moment_masks": masks * 0.7, "clip_tokens": torch.randn(3, 32, 16)}  # any scale: sum-normalised
    at_target = backbone_masks_plugin(rel=False, div_target=1 / 8).losses(features, {}, CONTEXT)
    assert set(at_target) == {"div"}
    assert at_target["div"].item() == pytest.approx(0.0, abs=1e-12)
    # another target: only the diagonal is off, by (1/8 - 0.15) on each of the 4 entries; weight 3
    off = backbone_masks_plugin(rel=False, div_weight=3.0).losses(features, {}, CONTEXT)["div"]
    assert off.item() == pytest.approx(3.0 * 4 * (1 / 8 - 0.15) ** 2, rel=1e-5)
    # overlapping windows at their self-overlap target are still penalised (off-diagonal terms)
    overlapping = masks.clone()
    overlapping[:, 1, 4:8] = 1.0
    shifted = {**features, "moment_masks": overlapping}
    assert backbone_masks_plugin(rel=False, div_target=1 / 8).losses(shifted, {}, CONTEXT)["div"].item() > 1e-4


def test_diversity_matches_a_frobenius_norm_on_random_masks():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(5, 4, 32, generator=g, dtype=torch.float64)
    features = {"moment_masks": masks, "clip_tokens": torch.randn(5, 32, 16)}
    got = backbone_masks_plugin(rel=False, div_weight=2.0, div_target=0.3).losses(features, {}, CONTEXT)["div"]
    normalised = masks / masks.sum(dim=-1, keepdim=True)
    gram = normalised @ normalised.transpose(1, 2)
    expected = 2.0 * torch.linalg.matrix_norm(gram - 0.3 * torch.eye(4, dtype=torch.float64), ord="fro").pow(2).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


# -- the relevance loss ----------------------------------------------------------------------------------
def _relevance_features(generator: torch.Generator, videos: int = 4, queries: int = 9) -> dict:
    lengths = torch.tensor([5, 2, 7, 3])[:videos]
    frame_mask = (torch.arange(7) < lengths[:, None]).float()
    return {
        "query": torch.randn(queries, 16, generator=generator),
        "text_labels": torch.randint(0, videos, (queries,), generator=generator),
        "global": torch.randn(videos, 16, generator=generator),
        "moments": torch.randn(videos, 4, 16, generator=generator),
        "moment_masks": torch.rand(videos, 4, 32, generator=generator),
        "clip_tokens": torch.randn(videos, 32, 16, generator=generator),
        "frame_tokens": torch.randn(videos, 7, 16, generator=generator),
        "frame_mask": frame_mask,
    }


def test_relevance_matches_a_per_query_loop():
    f = _relevance_features(torch.Generator().manual_seed(2))
    # a large margin so that most hinges are active and the max over moments matters
    got = backbone_masks_plugin(div=False, rel_margin=0.3, rel_weight=25.0).losses(f, {}, CONTEXT)
    assert set(got) == {"rel"}
    expected = naive_relevance(f["query"], f["global"], f["moments"], f["text_labels"], 0.3)
    assert expected > 0
    assert got["rel"].item() == pytest.approx(25.0 * expected, rel=1e-5)


def test_relevance_global_vector_falls_back_to_frames_then_clips():
    f = _relevance_features(torch.Generator().manual_seed(3))
    plugin = backbone_masks_plugin(div=False, rel_margin=0.5, rel_weight=1.0)
    no_global = {k: v for k, v in f.items() if k != "global"}
    frame_means = torch.stack([f["frame_tokens"][v, : int(f["frame_mask"][v].sum())].mean(dim=0) for v in range(4)])
    got = plugin.losses(no_global, {}, CONTEXT)["rel"].item()
    assert got == pytest.approx(naive_relevance(f["query"], frame_means, f["moments"], f["text_labels"], 0.5), rel=1e-5)
    clips_only = {k: v for k, v in no_global.items() if k not in ("frame_tokens", "frame_mask")}
    clip_means = torch.stack([sum(f["clip_tokens"][v]) / 32 for v in range(4)])
    got = plugin.losses(clips_only, {}, CONTEXT)["rel"].item()
    assert got == pytest.approx(naive_relevance(f["query"], clip_means, f["moments"], f["text_labels"], 0.5), rel=1e-5)


def test_relevance_on_clip_tokens_needs_no_anchor_head():
    f = _relevance_features(torch.Generator().manual_seed(4))
    plugin = anchor_plugin(div=False, rel_moments="clips", rel_margin=0.5, rel_weight=2.0)
    assert plugin.anchors is None and not list(plugin.parameters())
    got = plugin.losses(f, {}, CONTEXT)
    assert set(got) == {"rel"}
    expected = naive_relevance(f["query"], f["global"], f["clip_tokens"], f["text_labels"], 0.5)
    assert got["rel"].item() == pytest.approx(2.0 * expected, rel=1e-5)


def test_backbone_masks_and_moments_are_used_and_k_must_match_event_size():
    f = _relevance_features(torch.Generator().manual_seed(5))
    plugin = backbone_masks_plugin()
    assert plugin.anchors is None and not list(plugin.parameters())
    masks, moments = plugin.moment_set(f)
    torch.testing.assert_close(masks, f["moment_masks"], rtol=0, atol=0)
    torch.testing.assert_close(moments, f["moments"], rtol=0, atol=0)
    _, derived = plugin.moment_set({k: v for k, v in f.items() if k != "moments"})  # no moments: masks @ clips
    torch.testing.assert_close(derived, torch.einsum("bkm,bmh->bkh", f["moment_masks"], f["clip_tokens"]))
    assert backbone_masks_plugin(k=4).k == 4
    with pytest.raises(ValueError, match=r"plugin moment: k \(6\) must equal the backbone's event_size \(4\)"):
        backbone_masks_plugin(k=6)


# -- the anchor head -------------------------------------------------------------------------------------
def test_anchor_head_masks_peak_at_their_centres_and_moments_are_masks_times_clips():
    torch.manual_seed(0)
    plugin = anchor_plugin(k=6)
    clips = torch.randn(3, 32, 16)
    # hand-set anchors: zero weights, biases put centre k on grid position 5k + 2, widths 0.1 + 0.1k
    head = plugin.anchors.anchors
    centres = torch.tensor([(5 * k + 2) / 31 for k in range(6)])
    widths = torch.tensor([0.1 + 0.1 * k for k in range(6)])
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.logit(torch.stack([centres, widths], dim=1).reshape(-1).double()).float())
    masks, moments = plugin.moment_set({"clip_tokens": clips})
    assert masks.shape == (3, 6, 32)
    for k in range(6):
        assert masks[:, k, 5 * k + 2].tolist() == pytest.approx([1.0] * 3, abs=1e-6)
        torch.testing.assert_close(masks[0, k], naive_gaussian(float(centres[k]), float(widths[k]), 32),
                                   rtol=1e-4, atol=1e-6)
    assert (masks.amax(dim=-1) <= 1.0 + 1e-6).all()
    for b in range(3):
        for k in range(6):
            expected = sum(masks[b, k, m] * clips[b, m] for m in range(32))
            torch.testing.assert_close(moments[b, k], expected, rtol=1e-5, atol=1e-5)


def test_anchor_head_with_learned_weights_gives_peak_one_gaussians():
    torch.manual_seed(1)
    plugin = anchor_plugin()
    assert plugin.k == 4  # k unset: AMDNet's event_size
    with torch.no_grad():
        for p in plugin.anchors.parameters():
            p.normal_(std=0.5)
    clips = torch.randn(2, 32, 16)
    with torch.no_grad():
        masks, _ = plugin.moment_set({"clip_tokens": clips})
        _, centres, widths = plugin.anchors(clips)
    for b in range(2):
        for k in range(4):
            reference = naive_gaussian(float(centres[b, k]), float(widths[b, k]), 32)
            torch.testing.assert_close(masks[b, k], reference, rtol=1e-4, atol=1e-6)
            assert float(masks[b, k].max()) == pytest.approx(1.0)


# -- no inference cost -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
def test_inference_equals_the_bare_backbone(backbone):
    torch.manual_seed(0)
    plugged = TrainConfig.from_dict({"backbone": backbone, "moment": True, **SMALL_MODEL}).build_model(DIMS).eval()
    bare = create_backbone(backbone, DIMS, **SMALL_MODEL).eval()
    own = {k: v for k, v in plugged.state_dict().items() if not k.startswith("plugins.")}
    bare.load_state_dict(own)  # strict: the plugin adds only its own parameters
    assert any(k.startswith("plugins.moment.anchors.") for k in plugged.state_dict())
    calls = []
    plugged.plugins["moment"].register_forward_hook(lambda *args: calls.append("plugin"))
    plugged.plugins["moment"].anchors.register_forward_hook(lambda *args: calls.append("anchors"))
    g = torch.Generator().manual_seed(1)
    clips = torch.randn(3, 32, DIMS.video_dim, generator=g)
    frames = torch.randn(3, 9, DIMS.video_dim, generator=g)
    frames_mask = (torch.arange(9) < torch.tensor([[9], [4], [6]])).float()
    tokens = torch.randn(5, 6, DIMS.query_dim, generator=g)
    tokens_mask = (torch.arange(6) < torch.tensor([[6], [3], [5], [1], [4]])).float()
    with torch.no_grad():
        outputs = []
        for model in (plugged, bare):
            videos = model.encode_videos(clips, frames, frames_mask)
            queries = model.encode_queries(tokens, tokens_mask)
            outputs.append((videos, queries, model.score(queries, videos)))
    for plugged_out, bare_out in zip(*outputs):
        assert plugged_out.keys() == bare_out.keys()
        for key in bare_out:
            torch.testing.assert_close(plugged_out[key], bare_out[key], rtol=0, atol=0)
    assert calls == []  # neither the plugin nor its anchor head ran


# -- training on the tiny preset -------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", CLIP_BACKBONES)
def test_one_epoch_trains_the_moment_losses(tiny, backbone):
    config = TrainConfig.from_dict({"backbone": backbone, "moment": True, "epochs": 1, "batch_size": 16,
                                    "lr": 1e-3, "seed": 3, "hidden_size": 32, "n_heads": 4})
    trainer = Trainer(config, tiny)
    losses = trainer.train_epoch(0)
    assert {"moment.div", "moment.rel"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values())
    assert losses["moment.div"] > 0  # random anchors overlap
    head = trainer.model.plugins["moment"].anchors
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("backbone", "message"), [
    ("meanpool", "plugin moment cannot run on backbone meanpool: it needs clip_tokens (the moments are soft spans "
                 "over the clip tokens), which meanpool does not have"),
    ("amdnet", "plugin moment cannot run on backbone amdnet: amdnet already trains with its moment losses; "
               "set div_weight/rel_weight on the backbone"),
])
def test_backbones_without_a_use_for_the_plugin_are_rejected(backbone, message):
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict({"backbone": backbone, "moment": True})
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(("settings", "message"), [
    ({"moment.k": 0}, "plugin moment: k must be an integer >= 1"),
    ({"moment.k": 2.5}, "plugin moment: k must be an integer >= 1"),
    ({"moment.div": False, "moment.rel": False}, "plugin moment: div and rel are both false"),
    ({"moment.div": "yes"}, "plugin moment: div must be true or false"),
    ({"moment.div_target": 1.5}, "plugin moment: div_target must be in [0.0, 1.0]"),
    ({"moment.div_weight": -1.0}, "plugin moment: div_weight must be in [0.0, inf]"),
    ({"moment.rel_weight": -1.0}, "plugin moment: rel_weight must be in [0.0, inf]"),
    ({"moment.rel_margin": 3.0}, "plugin moment: rel_margin must be in [0.0, 2.0]"),
    ({"moment.rel_moments": "frames"}, "plugin moment: rel_moments must be one of anchors, clips"),
])
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ValueError) as error:
        TrainConfig.from_dict({"backbone": "mssl", "moment": True, **settings})
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("k", [1, 2, 6, 8])
def test_k_sets_the_number_of_anchor_masks(k):
    plugin = TrainConfig.from_dict({"backbone": "gmmformer", "moment": True, "moment.k": k, **SMALL_MODEL}) \
        .build_model(DIMS).plugins["moment"]
    masks, moments = plugin.moment_set({"clip_tokens": torch.randn(2, 32, 16)})
    assert masks.shape == (2, k, 32) and moments.shape == (2, k, 16)
