"""AMDNet backbone and its moment losses (trainables/models/amdnet.py, trainables/losses/moment.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainables.losses.moment import moment_diversity, moment_relevance
from trainables.models.amdnet import AMDNet, gaussian_moment_masks
from trainables.models.base import Dims, LossContext, count_parameters, create_backbone


def release_parameter_count(video_dim: int, query_dim: int, hidden: int, k: int = 4, max_ctx_l: int = 128) -> int:
    """Parameters of the release's GMMFormer_Net (AMDNet), module by module."""
    linear = lambda i, o: i * o + o  # noqa: E731
    layer_norm = lambda d: 2 * d  # noqa: E731
    pos_enc = max_ctx_l * hidden + layer_norm(hidden)
    projections = layer_norm(query_dim) + linear(query_dim, hidden) + layer_norm(video_dim) + linear(video_dim, hidden)
    bert_attention = 4 * linear(hidden, hidden) + layer_norm(hidden)  # Q, K, V, dense + LayerNorm
    anchors = layer_norm(hidden) + linear(hidden, hidden) + linear(hidden, 2 * k)
    return pos_enc + projections + 2 * bert_attention + anchors


SMALL_DIMS = Dims(12, 10)


def make_batch(num_videos: int = 3, per_video: int = 2, tokens: int = 1, dims: Dims = SMALL_DIMS,
               seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    nq = num_videos * per_video
    mask = torch.ones(nq, tokens)
    if tokens > 1:
        mask[0, tokens // 2:] = 0.0  # one padded query
    return {
        "clip_video_features": torch.randn(num_videos, 32, dims.video_dim, generator=g),
        "frame_video_features": torch.randn(num_videos, 7, dims.video_dim, generator=g),
        "videos_mask": torch.ones(num_videos, 7),
        "text_feat": torch.randn(nq, tokens, dims.query_dim, generator=g) * mask.unsqueeze(-1),
        "text_mask": mask,
        "text_labels": torch.arange(num_videos).repeat_interleave(per_video),
    }


def context(seed: int = 0) -> LossContext:
    return LossContext(epoch=0, hard_negatives=False, hard_pool_size=20, generator=torch.Generator().manual_seed(seed))


def small(**options) -> AMDNet:
    torch.manual_seed(0)
    return create_backbone("amdnet", Dims(12, 10), hidden_size=16, **options)


# -- size --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden, published", [(384, 1.78e6), (256, 0.89e6)])
def test_parameter_count_matches_release(hidden: int, published: float) -> None:
    model = create_backbone("amdnet", Dims(video_dim=512, query_dim=512), hidden_size=hidden)
    n = count_parameters(model)
    assert abs(n - published) / published < 0.01
    assert n == release_parameter_count(512, 512, hidden)  # 1,781,896 and 893,704


def test_defaults_and_validation() -> None:
    c = AMDNet.Config()
    assert (c.hidden_size, c.n_heads, c.event_size, c.input_drop, c.drop) == (384, 4, 4, 0.2, 0.2)
    assert (c.nce_weight, c.div_weight, c.rel_weight, c.rel_margin, c.div_target) == (0.04, 1.0, 25.0, 0.02, 0.15)
    assert AMDNet.training_defaults == {"lr": 3e-4, "epochs": 200, "patience": 15, "hard_negative_start_epoch": 0,
                                        "seed": 9527, "batch_size": 128}
    with pytest.raises(ValueError, match="n_heads"):
        create_backbone("amdnet", Dims(12, 10), n_heads=8)
    with pytest.raises(ValueError, match="event_size"):
        create_backbone("amdnet", Dims(12, 10), event_size=6, hidden_size=48)
    with pytest.raises(ValueError, match="query_pooling"):
        create_backbone("amdnet", Dims(12, 10), query_pooling="max")


# -- moment masks ------------------------------------------------------------------------------------
def test_moment_masks_are_peak_one_gaussians() -> None:
    centres = torch.tensor([[0.1, 0.5, 0.93, 0.0]])
    widths = torch.tensor([[0.3, 1.0, 0.05, 0.001]])  # last one is clamped to 0.01
    masks = gaussian_moment_masks(centres, widths, 32)
    assert masks.shape == (1, 4, 32)
    x = np.linspace(0, 1, 32)
    for k in range(4):
        c, w = float(centres[0, k]), max(float(widths[0, k]), 0.01)
        sigma = w / 9
        pdf = np.exp(-((x - c) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
        np.testing.assert_allclose(masks[0, k].numpy(), pdf / pdf.max(), rtol=1e-5, atol=1e-6)
        assert masks[0, k].max().item() == pytest.approx(1.0)


def test_narrow_mask_between_positions_is_finite() -> None:
    """The release's pdf underflows to 0/0 here; the log-space version keeps a peak of 1."""
    masks = gaussian_moment_masks(torch.tensor([0.5 / 31]), torch.tensor([0.0]), 32)
    assert torch.isfinite(masks).all() and masks.max().item() == pytest.approx(1.0)


def test_encoder_masks_and_moments_follow_anchors() -> None:
    model = small().eval()
    batch = make_batch()
    with torch.no_grad():
        x = model.clip_pos(model.clip_proj(batch["clip_video_features"]))
        out = model.encode_videos(batch["clip_video_features"], batch["frame_video_features"], batch["videos_mask"])
        _, centres, widths = model.block.anchors(x)
    assert out["clip_tokens"].shape == (3, 32, 16) and out["moments"].shape == (3, 4, 16)
    torch.testing.assert_close(out["moment_masks"], gaussian_moment_masks(centres, widths, 32))
    torch.testing.assert_close(out["moments"], out["moment_masks"] @ x)
    torch.testing.assert_close(out["moment_masks"].amax(dim=-1), torch.ones(3, 4))


# -- moment losses -----------------------------------------------------------------------------------
def test_moment_diversity_matches_loop() -> None:
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(3, 4, 9, generator=g)
    target = 0.15
    expected = 0.0
    for b in range(3):
        rows = [masks[b, k] / masks[b, k].sum() for k in range(4)]
        total = 0.0
        for i in range(4):
            for j in range(4):
                total += ((target if i == j else 0.0) - float(torch.dot(rows[i], rows[j]))) ** 2
        expected += total / 3
    assert moment_diversity(masks, target).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("width", [1, 3])
def test_moment_diversity_of_disjoint_windows(width: int) -> None:
    """Disjoint flat windows of ``width`` positions: Gram = I / width, loss = K (target - 1/width)^2."""
    k, target = 4, 0.15
    masks = torch.zeros(2, k, 16)
    for i in range(k):
        masks[:, i, i * width:(i + 1) * width] = 1.0
    assert moment_diversity(masks, target).item() == pytest.approx(k * (target - 1.0 / width) ** 2, rel=1e-6)
    if width == 1:
        assert moment_diversity(masks, target).item() == pytest.approx(k * (1 - target) ** 2, rel=1e-6)


def test_moment_relevance_matches_loop() -> None:
    g = torch.Generator().manual_seed(2)
    queries, global_video = torch.randn(5, 6, generator=g), torch.randn(3, 6, generator=g)
    moments, labels = torch.randn(3, 4, 6, generator=g), torch.tensor([0, 0, 1, 2, 2])
    cos = torch.nn.functional.cosine_similarity
    for margin in (0.02, 0.5):
        losses = []
        for q in range(5):
            v = int(labels[q])
            best = max(float(cos(queries[q], moments[v, k], dim=0)) for k in range(4))
            losses.append(max(0.0, margin + float(cos(queries[q], global_video[v], dim=0)) - best))
        expected = sum(losses) / 5
        assert moment_relevance(queries, global_video, moments, labels, margin).item() == pytest.approx(expected,
                                                                                                        rel=1e-5)
    # a masked-out moment cannot be the best one
    mask = torch.ones(3, 4)
    mask[:, 1:] = 0.0
    only_first = moment_relevance(queries, global_video, moments[:, :1], labels, 0.02)
    assert moment_relevance(queries, global_video, moments, labels, 0.02, moments_mask=mask).item() == \
        pytest.approx(only_first.item())


# -- scores ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["first", "mean", "attention"])
def test_score_is_max_token_cosine(pooling: str) -> None:
    model = small(query_pooling=pooling).eval()
    batch = make_batch(tokens=3)
    with torch.no_grad():
        videos = model.encode_videos(batch["clip_video_features"], batch["frame_video_features"], batch["videos_mask"])
        queries = model.encode_queries(batch["text_feat"], batch["text_mask"])
        scores = model.score(queries, videos)
    q, tokens = queries["query"], videos["clip_tokens"]
    expected = torch.empty(q.shape[0], tokens.shape[0])
    for i in range(q.shape[0]):
        for v in range(tokens.shape[0]):
            expected[i, v] = max(float(q[i] @ t) / float(q[i].norm() * t.norm()) for t in tokens[v])
    torch.testing.assert_close(scores["clip"], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(scores["fused"], scores["clip"])


def test_query_pooling_options() -> None:
    """With one token every pooling is the projection of the sentence vector; with more they differ as documented."""
    batch1, batch3 = make_batch(tokens=1), make_batch(tokens=3)
    results = {}
    for pooling in ("first", "mean", "attention"):
        model = small(query_pooling=pooling).eval()
        with torch.no_grad():
            one = model.encode_queries(batch1["text_feat"], batch1["text_mask"])["query"]
            torch.testing.assert_close(one, model.query_proj(batch1["text_feat"][:, 0]))
            results[pooling] = (model, model.encode_queries(batch3["text_feat"], batch3["text_mask"])["query"])
    model, first = results["first"]
    with torch.no_grad():
        projected = model.query_proj(batch3["text_feat"])
    torch.testing.assert_close(first, projected[:, 0])
    mean = results["mean"][1]
    torch.testing.assert_close(mean[0], projected[0, :1].mean(dim=0))  # padded tokens ignored
    torch.testing.assert_close(mean[1:], projected[1:].mean(dim=1))
    assert count_parameters(results["attention"][0]) == count_parameters(model) + 16


# -- training ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tokens", [1, 4])
def test_training_losses(tokens: int) -> None:
    model = small().train()
    batch = make_batch(tokens=tokens)
    torch.manual_seed(3)
    terms = model.training_losses(batch, context())
    assert set(terms) == {"clip_nce", "moment.div", "moment.rel"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    sum(terms.values()).backward()
    for param in model.block.anchors.anchors.parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0
    torch.manual_seed(3)
    again = model.training_losses(batch, context())
    for name in terms:
        assert again[name].item() == terms[name].item()


def test_training_losses_match_definitions() -> None:
    """In eval mode (no dropout) the terms equal the weighted losses recomputed from the encodings."""
    from trainables.losses.ranking import clip_nce

    model = small().eval()
    batch = make_batch(num_videos=4, per_video=3)
    c = model.config
    with torch.no_grad():
        terms = model.training_losses(batch, context())
        videos = model.encode_videos(batch["clip_video_features"], batch["frame_video_features"], batch["videos_mask"])
        q = model.encode_queries(batch["text_feat"], batch["text_mask"])["query"]
        raw = torch.einsum("qh,vlh->qvl", q, videos["clip_tokens"]).amax(dim=-1)
        labels = batch["text_labels"]
        expected = {
            "clip_nce": c.nce_weight * clip_nce(raw, labels),
            "moment.div": c.div_weight * moment_diversity(videos["moment_masks"], c.div_target),
            "moment.rel": c.rel_weight * moment_relevance(q, videos["global"], videos["moments"], labels, c.rel_margin),
        }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5)
