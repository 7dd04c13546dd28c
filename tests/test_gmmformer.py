"""GMMFormer v1/v2: parameter counts, Gaussian windows, scores, GMMFormer-family losses, training step."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from trainables.losses.diversity import (
    optimal_assignment,
    optimal_matching_loss,
    query_diverse_loss,
    revamped_query_diverse_loss,
)
from trainables.models import Dims, LossContext, create_backbone
from trainables.models.base import count_parameters
from trainables.models.components import gaussian_window, max_token_score

TVR = Dims(video_dim=3072, query_dim=768)
SMALL = Dims(video_dim=12, query_dim=10)
SMALL_OPTIONS = {"hidden_size": 16, "n_heads": 2, "map_size": 8, "max_ctx_l": 16, "max_desc_l": 6}


def small(name: str, **options: object):
    return create_backbone(name, SMALL, **{**SMALL_OPTIONS, **options})


# ---------------------------------------------------------------- architecture

@pytest.mark.parametrize(("name", "official"), [("gmmformer", 12.85e6), ("gmmformer2", 32.27e6)])
def test_parameter_count_matches_official(name: str, official: float) -> None:
    model = create_backbone(name, TVR)
    assert abs(count_parameters(model) - official) / official < 0.01


def test_list_options_become_tuples_and_lengths_are_checked() -> None:
    model = create_backbone("gmmformer2", SMALL, **SMALL_OPTIONS, loss_factor=[1, 2, 3, 4], widths=[0.5])
    assert model.config.loss_factor == (1.0, 2.0, 3.0, 4.0) and model.config.widths == (0.5,)
    with pytest.raises(ValueError, match="loss_factor"):
        create_backbone("gmmformer", SMALL, loss_factor=[0.1, 0.2])
    with pytest.raises(ValueError, match="widths"):
        create_backbone("gmmformer", SMALL, widths=[0.0])


def _window_by_hand(length: int, width: float) -> list[list[float]]:
    sigma = width / 9
    rows = []
    for i in range(length):
        centre = i / length
        xs = [j / (length - 1) if length > 1 else 0.0 for j in range(length)]
        density = [math.exp(-((x - centre) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi)) for x in xs]
        rows.append([d / max(density) for d in density])
    return rows


# (2, 0.1) is left out: the density underflows to 0/0 even in double precision (see the edge cases)
@pytest.mark.parametrize(("length", "width"), [
    (length, width) for length in (1, 2, 5, 8) for width in (0.5, 1.0, 5.0, 0.1) if (length, width) != (2, 0.1)
])
def test_gaussian_window_matches_hand_formula(length: int, width: float) -> None:
    window = gaussian_window(length, width, dtype=torch.float64)
    expected = torch.tensor(_window_by_hand(length, width), dtype=torch.float64)
    torch.testing.assert_close(window, expected, rtol=1e-9, atol=1e-12)
    assert torch.allclose(window.max(dim=1).values, torch.ones(length, dtype=torch.float64))


def test_gaussian_window_edge_cases() -> None:
    assert gaussian_window(1, 0.5).tolist() == [[1.0]]
    narrow = gaussian_window(2, 0.1)  # row 1 is equidistant from both positions: both are the peak
    assert torch.isfinite(narrow).all() and narrow[1].tolist() == [1.0, 1.0]


# ---------------------------------------------------------------- scores

def _videos(model, lengths: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    clips = torch.randn(len(lengths), model.config.map_size, SMALL.video_dim, generator=g)
    frames = torch.randn(len(lengths), longest, SMALL.video_dim, generator=g)
    mask = torch.zeros(len(lengths), longest)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        frames[i, n:] = 0
    return clips, frames, mask


def _queries(model, n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, 5, SMALL.query_dim, generator=g)
    mask = torch.ones(n, 5)
    mask[0, 3:] = 0
    return model.encode_queries(tokens, mask)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("name", ["gmmformer", "gmmformer2"])
def test_score_fusion_and_clip_max(name: str) -> None:
    model = small(name, alpha=0.6).eval()
    with torch.no_grad():
        videos = model.encode_videos(*_videos(model, [3, 9, 5]))
        queries = _queries(model, 4)
        scores = model.score(queries, videos)
    torch.testing.assert_close(scores["fused"], 0.6 * scores["clip"] + 0.4 * scores["frame"])
    q, clips = queries["query"], videos["clip_tokens"]
    for i in range(len(q)):
        for v in range(len(clips)):
            best = max(_cos(q[i], token) for token in clips[v])
            assert abs(scores["clip"][i, v].item() - best) < 1e-5
    if name == "gmmformer":
        for i in range(len(q)):
            for v in range(len(clips)):
                assert abs(scores["frame"][i, v].item() - _cos(q[i], videos["global"][v])) < 1e-5


def test_v2_clean_frame_score_ignores_padding() -> None:
    model = small("gmmformer2", frame_padding_floor=False).eval()
    with torch.no_grad():
        videos = model.encode_videos(*_videos(model, [2, 7, 16]))
        queries = _queries(model, 3)
    assert videos["frame_tokens"].shape[1] == 16 and videos["frame_mask"].shape == (3, 16)
    assert videos["frame_tokens"][0, 2:].abs().sum() == 0  # padding zeroed
    # make every padding token the best possible match: it must still never win
    frames = videos["frame_tokens"].clone()
    q = queries["query"]
    frames[0, 2:] = q[0] * 10
    frames[1, 7:] = q[1]
    tampered = {**videos, "frame_tokens": frames}
    scores = model.score(queries, tampered)["frame"]
    for i in range(len(q)):
        for v in range(3):
            n = int(videos["frame_mask"][v].sum())
            best = max(_cos(q[i], token) for token in frames[v, :n])
            assert abs(scores[i, v].item() - best) < 1e-5


def test_v2_padding_floor_reproduces_release() -> None:
    model = small("gmmformer2", frame_padding_floor=True).eval()
    q = torch.tensor([[1.0] + [0.0] * 15])
    frames = torch.zeros(1, 16, 16)
    frames[0, :3, 0] = -1.0  # every valid frame anti-aligned with the query
    videos = {"clip_tokens": torch.randn(1, 8, 16), "frame_tokens": frames,
              "frame_mask": (torch.arange(16) < 3).float()[None]}
    assert model.score({"query": q}, videos)["frame"].item() == 0.0  # a zero padding frame wins
    clean = small("gmmformer2", frame_padding_floor=False).eval()
    assert clean.score({"query": q}, videos)["frame"].item() == pytest.approx(-1.0)


@pytest.mark.parametrize("name", ["gmmformer", "gmmformer2"])
def test_encoding_does_not_depend_on_extra_padding(name: str) -> None:
    model = small(name).eval()
    clips, frames, mask = _videos(model, [4, 6])
    with torch.no_grad():
        a = model.encode_videos(clips, frames, mask)
        b = model.encode_videos(clips, F.pad(frames, (0, 0, 0, 5)), F.pad(mask, (0, 5)))
    key = "global" if name == "gmmformer" else "frame_tokens"
    torch.testing.assert_close(a[key], b[key])


def test_max_token_score_blocks_and_mask() -> None:
    g = torch.Generator().manual_seed(3)
    q, tokens = torch.randn(5, 8, generator=g), torch.randn(7, 6, 8, generator=g)
    mask = (torch.rand(7, 6, generator=g) > 0.3).float()
    mask[:, 0] = 1
    whole = max_token_score(q, tokens, mask)
    torch.testing.assert_close(max_token_score(q, tokens, mask, block=13), whole)
    expected = torch.tensor([[max(_cos(q[i], tokens[v, t]) for t in range(6) if mask[v, t])
                              for v in range(7)] for i in range(5)])
    torch.testing.assert_close(whole, expected)
    raw = max_token_score(q, tokens, normalize=False, block=1)
    torch.testing.assert_close(raw, torch.einsum("qh,vlh->qvl", q, tokens).max(dim=-1).values)
    q64, t64 = q[:2, :3].double().requires_grad_(), tokens[:3, :4, :3].double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: max_token_score(a, b, mask[:3, :4], block=5), (q64, t64),
                                    fast_mode=True)


# ---------------------------------------------------------------- losses

LABELS = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])


def _pairs(labels: torch.Tensor):
    return [(i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j and labels[i] == labels[j]]


def test_query_diverse_loss_matches_loop() -> None:
    x = torch.randn(len(LABELS), 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    c = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).t()
    total = 0.0
    for j in range(len(LABELS)):
        inner = sum(math.exp(32 * (c[i, j].item() + 0.15)) for i in range(len(LABELS))
                    if i != j and LABELS[i] == LABELS[j])
        total += math.log(1 + inner)
    got = query_diverse_loss(x, LABELS, alpha=32, delta=0.15)
    assert got.item() == pytest.approx(total / len(LABELS), rel=1e-9)


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_revamped_query_diverse_loss_matches_loop(gamma: float) -> None:
    x = torch.randn(len(LABELS), 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    c = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).t()
    total = sum((1 + c[i, j].item()) ** gamma * math.log(1 + math.exp(32 * (c[i, j].item() + 0.15)))
                for i, j in _pairs(LABELS))
    got = revamped_query_diverse_loss(x, LABELS, alpha=32, delta=0.15, gamma=gamma)
    assert got.item() == pytest.approx(total / len(LABELS), rel=1e-9)


def test_optimal_assignment_is_brute_force_optimum() -> None:
    g = torch.Generator().manual_seed(6)
    sims = torch.rand(len(LABELS), 5, generator=g, dtype=torch.float64)
    rows, cols = optimal_assignment(sims, LABELS)
    assert 1 not in LABELS[rows].tolist()  # the single-query video is skipped
    for video in (0, 2, 3):
        members = (LABELS == video).nonzero().flatten().tolist()
        best = max(sum(sims[q, t].item() for q, t in zip(members, perm))
                   for perm in itertools.permutations(range(5), len(members)))
        picked = [(r, c) for r, c in zip(rows.tolist(), cols.tolist()) if r in members]
        assert sorted(r for r, _ in picked) == members and len({c for _, c in picked}) == len(members)
        assert sum(sims[r, c].item() for r, c in picked) == pytest.approx(best)


def test_optimal_matching_loss_matches_loop_and_has_grad() -> None:
    g = torch.Generator().manual_seed(7)
    q = torch.randn(len(LABELS), 6, generator=g, dtype=torch.float64, requires_grad=True)
    clips = torch.randn(4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    loss = optimal_matching_loss(q, clips, LABELS)
    matched = []
    for video in (0, 2, 3):
        members = (LABELS == video).nonzero().flatten().tolist()
        cos = [[_cos(q[m].detach(), clips[video, t].detach()) for t in range(5)] for m in members]
        best = max(itertools.permutations(range(5), len(members)),
                   key=lambda perm: sum(cos[k][t] for k, t in enumerate(perm)))
        matched += [cos[k][t] for k, t in enumerate(best)]
    assert loss.item() == pytest.approx(1 - sum(matched) / len(matched), rel=1e-9)
    loss.backward()
    assert q.grad is not None and clips.grad is not None and q.grad[3].abs().sum() == 0  # video 1 has one query
    single = optimal_matching_loss(q[:1], clips[:1], torch.tensor([0]))
    assert single.item() == 0.0


# ---------------------------------------------------------------- training step

def _batch(model, per_video=(2, 3, 1, 2)):
    clips, frames, mask = _videos(model, [5, 11, 3, 8], seed=8)
    labels = torch.repeat_interleave(torch.arange(len(per_video)), torch.tensor(per_video))
    g = torch.Generator().manual_seed(9)
    text = torch.randn(len(labels), 6, SMALL.query_dim, generator=g)
    text_mask = torch.ones(len(labels), 6)
    text_mask[1, 4:] = 0
    return {"clip_video_features": clips, "frame_video_features": frames, "videos_mask": mask,
            "text_feat": text, "text_mask": text_mask, "text_labels": labels}


def _losses(model, batch, hard: bool, seed: int = 0):
    torch.manual_seed(seed)
    context = LossContext(epoch=1, hard_negatives=hard, hard_pool_size=2,
                          generator=torch.Generator().manual_seed(seed))
    return model.training_losses(batch, context)


@pytest.mark.parametrize(("name", "keys"), [
    ("gmmformer", {"clip_nce", "clip_triplet", "frame_nce", "frame_triplet", "qdl"}),
    ("gmmformer2", {"clip_nce", "clip_triplet", "frame_nce", "frame_triplet", "qdl", "om"}),
])
def test_training_losses(name: str, keys: set[str]) -> None:
    torch.manual_seed(0)
    model = small(name).train()
    batch = _batch(model)
    for hard in (False, True):
        terms = _losses(model, batch, hard)
        assert set(terms) == keys and all(torch.isfinite(t) and t.dim() == 0 for t in terms.values())
        again = _losses(model, batch, hard)
        assert all(terms[k].item() == again[k].item() for k in keys)
    model.zero_grad()
    sum(_losses(model, batch, False).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("name", ["gmmformer", "gmmformer2"])
def test_checkpointed_branches_give_same_losses_and_grads(name: str) -> None:
    torch.manual_seed(0)
    plain = small(name).train()
    recomputed = small(name, checkpoint_branches=True).train()
    recomputed.load_state_dict(plain.state_dict())
    batch = _batch(plain)
    grads = []
    for model in (plain, recomputed):
        terms = _losses(model, batch, hard=False)
        sum(terms.values()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
        assert terms["clip_nce"].item() == pytest.approx(_losses(plain, batch, hard=False)["clip_nce"].item())
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- proportional attention (OP-ToMe key bias)

def _post_ln_by_hand(layer, queries, keys, window, bias):
    """A post-LN layer from its parameters: attention (logits * window + key bias) -> LN(residual) ->
    FFN -> LN(residual); eval mode (no dropout). ``queries`` (N, Lq, H), ``keys`` (N, L, H), ``bias`` (N, L)."""
    att, heads = layer.attention, layer.attention.num_heads
    n, lq, h = queries.shape
    d = h // heads

    def split(x):  # (N, L, H) -> (N, heads, L, d)
        return x.view(x.shape[0], x.shape[1], heads, d).permute(0, 2, 1, 3)

    q = split(queries @ att.query.weight.T + att.query.bias)
    k = split(keys @ att.key.weight.T + att.key.bias)
    v = split(keys @ att.value.weight.T + att.value.bias)
    logits = torch.einsum("nhqd,nhkd->nhqk", q, k) / math.sqrt(d)
    if window is not None:
        logits = logits * window
    if bias is not None:
        logits = logits + bias[:, None, None, :]
    context = torch.einsum("nhqk,nhkd->nhqd", logits.softmax(dim=-1), v).permute(0, 2, 1, 3).reshape(n, lq, h)
    x = F.layer_norm(queries + context, (h,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    first, second = layer.ffn[0], layer.ffn[3]
    ffn = torch.relu(x @ first.weight.T + first.bias) @ second.weight.T + second.bias
    return F.layer_norm(x + ffn, (h,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)


def _dygmm_by_hand(block, x, weight_token, bias, consolidation_bias):
    """DyGMMBlock output (N, L, H) with the key bias in every branch self-attention and, only when
    ``consolidation_bias``, also in the weight token's cross-attention over each branch output."""
    n, length, h = x.shape
    outputs = []
    for layer, width in zip(block.branches, block.widths):
        window = None if width is None else torch.tensor(_window_by_hand(length, width), dtype=x.dtype)
        outputs.append(_post_ln_by_hand(layer, x, x, window, bias))
    head_in, head_out = block.weight_head[0], block.weight_head[3]
    logits = []
    for out in outputs:
        token = _post_ln_by_hand(block.consolidation, weight_token.expand(n, 1, h), out, None,
                                 bias if consolidation_bias else None)[:, 0]  # (N, H)
        logits.append(torch.relu(token @ head_in.weight.T + head_in.bias) @ head_out.weight.T + head_out.bias)
    weights = (torch.stack(logits, dim=1) / block.sft_factor).softmax(dim=1)  # (N, K, L)
    return sum(weights[:, i, :, None] * out for i, out in enumerate(outputs))


def test_dygmm_key_bias_reaches_the_branches_but_not_the_consolidation() -> None:
    """The release adds OP-ToMe's log(merge size) in the branch self-attentions only (MSC_PRVR
    ``DyGMMBlock.forward``: the cross-attention ``ca`` gets no merge sizes)."""
    from trainables.models.gmmformer2 import DyGMMBlock

    torch.manual_seed(0)
    block = DyGMMBlock(16, 2, 0.0, (0.5, 5.0), 8, 0.09).double().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 16, generator=g, dtype=torch.float64)
    weight_token = torch.randn(1, 1, 16, generator=g, dtype=torch.float64)
    bias = torch.randint(1, 7, (3, 8), generator=g).double().log()
    with torch.no_grad():
        ours = block(x, None, weight_token, bias)
        expected = _dygmm_by_hand(block, x, weight_token, bias, consolidation_bias=False)
        both = _dygmm_by_hand(block, x, weight_token, bias, consolidation_bias=True)
        unbiased = _dygmm_by_hand(block, x, weight_token, None, consolidation_bias=False)
    assert (both - expected).abs().max() > 1e-3  # the consolidation bias would change the output
    assert (unbiased - expected).abs().max() > 1e-3  # and the branch bias does change it
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-10)
