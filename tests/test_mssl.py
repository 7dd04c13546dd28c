"""MS-SL / MS-SL++ / mean-pool baseline: shapes, parameter counts, exactness of the vectorised scoring
against straightforward loop references, losses, k-medoids, memory of ``score``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_chunked_evaluation_matches_full
from torch import nn

from trainables.losses.ranking import clip_nce, clip_triplet, diagonal_triplet, frame_nce
from trainables.models.base import Dims, LossContext, count_parameters, create_backbone
from trainables.models.kmedoids import batch_kmedoids, batch_kmedoids_gram
from trainables.models.meanpool import MeanPool
from trainables.models.mssl import MSSL, span_average_matrix, two_way_nce

TINY = Dims(video_dim=6, query_dim=5)
TINY_OPTS = dict(hidden_size=8, n_heads=2, max_ctx_l=16, max_desc_l=7)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: one intra-op thread avoids OpenMP spin/wait overhead (100x on a busy box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def token_encoder_params(n_in: int, h: int, positions: int) -> int:
    projection = 2 * n_in + linear(n_in, h)  # LayerNorm(in) + Linear(in, h)
    position = positions * h + 2 * h  # table + LayerNorm
    bert = 4 * linear(h, h) + 2 * h  # Q, K, V, output dense + LayerNorm (no FFN)
    return projection + position + bert


def reference_proposals(clip_tokens: torch.Tensor) -> torch.Tensor:
    """The release's proposals: AvgPool1d(k, stride 1) for k = 1..M over the clips, concatenated."""
    x = clip_tokens.transpose(1, 2)
    pooled = [nn.AvgPool1d(k, stride=1)(x).transpose(1, 2) for k in range(1, clip_tokens.shape[1] + 1)]
    return torch.cat(pooled, dim=1)


def reference_kcga(model: MSSL, query: torch.Tensor, proposals: torch.Tensor, frames: torch.Tensor,
                   valid: int) -> tuple[float, float, int]:
    """(clip score, frame score, key index) of one query and one video, the plain way."""
    cos = F.normalize(proposals, dim=-1) @ F.normalize(query, dim=-1)
    key = int(cos.argmax())
    f = frames[:valid]
    attention = torch.softmax(model.key_proj(f) @ proposals[key], dim=0)
    vector = attention @ model.value_proj(f)
    return float(cos.max()), float(F.cosine_similarity(query, vector, dim=0)), key


def tiny_inputs(videos: int = 5, queries: int = 4, clips: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([16, 3, 9, 1, 12, 7, 16, 5])[:videos]
    frames = torch.randn(videos, int(lengths.max()), TINY.video_dim, generator=g)
    mask = (torch.arange(frames.shape[1])[None] < lengths[:, None]).float()
    clip_feats = torch.randn(videos, clips, TINY.video_dim, generator=g)
    tokens = torch.randn(queries, 6, TINY.query_dim, generator=g)
    token_mask = (torch.arange(6)[None] < torch.tensor([6, 2, 4, 5, 3, 6, 1, 2])[:queries, None]).float()
    return clip_feats, frames, mask, lengths, tokens, token_mask


def tiny_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """5 videos with 3, 2, 2, 1, 2 queries (contiguous blocks, as ``collate_train`` builds them)."""
    clip_feats, frames, mask, _, _, _ = tiny_inputs(videos=5, seed=seed)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 4, 4])
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randn(len(labels), 6, TINY.query_dim, generator=g)
    token_mask = (torch.arange(6)[None] < torch.randint(1, 7, (len(labels), 1), generator=g)).float()
    return {"clip_video_features": clip_feats, "frame_video_features": frames, "videos_mask": mask,
            "text_feat": tokens, "text_mask": token_mask, "text_labels": labels}


def context(hard: bool = False, seed: int = 0) -> LossContext:
    return LossContext(epoch=0, hard_negatives=hard, hard_pool_size=3, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- parameters and config

def test_parameter_count_tvr_dims_matches_release_and_hand_count():
    model = create_backbone("mssl", Dims(video_dim=3072, query_dim=768))
    h = 384
    parts = {
        "query_encoder": token_encoder_params(768, h, 30),
        "query_pool": h,
        "clip_encoder": token_encoder_params(3072, h, 128),  # release: clip table has max_ctx_l rows
        "frame_encoder": token_encoder_params(3072, h, 128),
        "key_proj": h * h,
        "value_proj": h * h,
    }
    for name, expected in parts.items():
        assert count_parameters(getattr(model, name)) == expected, name
    total = count_parameters(model)
    print(f"MS-SL TVR parameters: {total:,} (hand count {sum(parts.values()):,})")
    assert total == sum(parts.values()) == 4_852_992
    assert abs(total - 4.85e6) / 4.85e6 < 0.01
    plus = create_backbone("mssl", Dims(3072, 768), cluster_num=32)  # the length embedding is a fixed buffer
    assert count_parameters(plus) == total
    clean = create_backbone("mssl", Dims(3072, 768), clip_positions=32)
    assert total - count_parameters(clean) == (128 - 32) * h


def test_config_validation_and_variant_defaults():
    with pytest.raises(ValueError, match=r"cluster_num must be in 1\.\.528, got 600"):
        create_backbone("mssl", TINY, cluster_num=600)
    with pytest.raises(ValueError, match="cluster_num"):
        MSSL.Config(cluster_num=0)
    with pytest.raises(ValueError, match=r"cluster_num must be in 1\.\.10, got 11"):
        MSSL.Config(map_size=4, cluster_num=11)
    with pytest.raises(ValueError, match="frame_nce"):
        MSSL.Config(frame_nce="bogus")
    with pytest.raises(ValueError, match="unknown option 'clusters'"):
        create_backbone("mssl", TINY, clusters=3)
    ms = MSSL.Config()
    assert (ms.margin, ms.alpha, ms.clip_nce_weight, ms.resolved_frame_nce_weight, ms.resolved_frame_nce) == (
        0.1, 0.7, 0.02, 0.04, "joint")
    pp = MSSL.Config(cluster_num=32)
    assert (pp.resolved_frame_nce_weight, pp.resolved_frame_nce) == (0.03, "two_way")
    assert MSSL.Config(cluster_num=32, frame_nce_weight=0.05, frame_nce="joint").resolved_frame_nce_weight == 0.05
    assert MSSL.training_defaults == {"lr": 2.5e-4, "epochs": 100, "patience": 10,
                                      "hard_negative_start_epoch": 20, "seed": 2018, "batch_size": 128}


# --------------------------------------------------------------------------- proposals and scoring

def test_proposals_equal_avgpool_reference_in_release_order():
    clips = torch.randn(3, 32, 7)
    expected = reference_proposals(clips)
    assert expected.shape == (3, 528, 7)
    torch.testing.assert_close(span_average_matrix(32) @ clips, expected)
    model = create_backbone("mssl", TINY, **TINY_OPTS).eval()
    clip_feats, frames, mask, *_ = tiny_inputs(videos=3)
    with torch.no_grad():
        videos = model.encode_videos(clip_feats, frames, mask)
        torch.testing.assert_close(model.proposals(videos), reference_proposals(videos["clip_tokens"]))


@pytest.mark.parametrize("block_floats", [1 << 21, 1])  # one block / one video per block
def test_vectorised_scores_equal_per_pair_loop(block_floats: int):
    torch.manual_seed(0)
    model = create_backbone("mssl", TINY, **TINY_OPTS).eval()
    model.score_block_floats = block_floats
    clip_feats, frames, mask, lengths, tokens, token_mask = tiny_inputs()
    with torch.no_grad():
        videos = model.encode_videos(clip_feats, frames, mask)
        queries = model.encode_queries(tokens, token_mask)
        scores = model.score(queries, videos)
        proposals = reference_proposals(videos["clip_tokens"])
        for i, q in enumerate(queries["query"]):
            for v in range(len(lengths)):
                clip, frame, _ = reference_kcga(model, q, proposals[v], videos["frame_tokens"][v], int(lengths[v]))
                assert scores["clip"][i, v].item() == pytest.approx(clip, abs=1e-5)
                assert scores["frame"][i, v].item() == pytest.approx(frame, abs=1e-5)
    torch.testing.assert_close(scores["fused"], 0.7 * scores["clip"] + 0.3 * scores["frame"])
    assert set(scores) == {"clip", "frame", "fused"}


def test_mssl_with_cluster_num_uses_only_the_medoid_proposals():
    torch.manual_seed(0)
    model = create_backbone("mssl", TINY, cluster_num=6, **TINY_OPTS).eval()
    clip_feats, frames, mask, lengths, tokens, token_mask = tiny_inputs()
    with torch.no_grad():
        videos = model.encode_videos(clip_feats, frames, mask)
        queries = model.encode_queries(tokens, token_mask)
        scores = model.score(queries, videos)
        every = reference_proposals(videos["clip_tokens"])  # (V, 528, H)
        # the clustering features: proposal ++ sinusoidal embedding of its span length (256-d)
        span_length = torch.cat([torch.full((33 - k,), k) for k in range(1, 33)])
        i = torch.arange(0, 256, 2, dtype=torch.float32)
        angle = (span_length - 1).float()[:, None] / torch.pow(10000.0, i / 256)
        table = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(528, 256)
        features = torch.cat([every, table.expand(len(every), -1, -1)], dim=-1)
        index = batch_kmedoids(features.double(), 6).medoids
    torch.testing.assert_close(videos["proposal_index"], index)
    kept = torch.stack([every[v, index[v]] for v in range(len(every))])
    torch.testing.assert_close(model.proposals(videos), kept, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        for i, q in enumerate(queries["query"]):
            for v in range(len(lengths)):
                clip, frame, _ = reference_kcga(model, q, kept[v], videos["frame_tokens"][v], int(lengths[v]))
                assert scores["clip"][i, v].item() == pytest.approx(clip, abs=1e-5)
                assert scores["frame"][i, v].item() == pytest.approx(frame, abs=1e-5)


# --------------------------------------------------------------------------- training losses

def reference_losses(model: MSSL, batch: dict[str, torch.Tensor], ctx: LossContext) -> dict[str, torch.Tensor]:
    """The release's loss computation, written plainly (explicit proposals, per-query loops)."""
    c = model.config
    clips = model.clip_encoder(batch["clip_video_features"])
    frames = model.frame_encoder(batch["frame_video_features"], batch["videos_mask"])
    proposals = reference_proposals(clips)
    index = model.select_proposals(clips)
    if index is not None:
        proposals = torch.stack([proposals[b, index[b]] for b in range(len(proposals))])
    q = model.query_pool(model.query_encoder(batch["text_feat"], batch["text_mask"]), batch["text_mask"])
    labels = batch["text_labels"]
    cos = torch.einsum("bph,qh->qbp", F.normalize(proposals, dim=-1), F.normalize(q, dim=-1))
    clip_cos, key = cos.max(dim=2)
    clip_raw = torch.einsum("bph,qh->qbp", proposals, q).max(dim=2).values
    vectors = []
    for i, v in enumerate(labels.tolist()):
        valid = int(batch["videos_mask"][v].sum())
        f = frames[v, :valid]
        attention = torch.softmax(model.key_proj(f) @ proposals[v, key[i, v]], dim=0)
        vectors.append(attention @ model.value_proj(f))
    vectors = torch.stack(vectors)
    frame_cos = F.normalize(q, dim=-1) @ F.normalize(vectors, dim=-1).t()
    nce = frame_nce if c.resolved_frame_nce == "joint" else two_way_nce
    return {
        "clip_nce": c.clip_nce_weight * clip_nce(clip_raw, labels),
        "clip_triplet": clip_triplet(clip_cos, labels, c.margin, ctx.hard_negatives, ctx.hard_pool_size, ctx.generator),
        "frame_nce": c.resolved_frame_nce_weight * nce(q @ vectors.t()),
        "frame_triplet": diagonal_triplet(frame_cos, c.margin, ctx.hard_negatives, ctx.hard_pool_size, ctx.generator),
    }


@pytest.mark.parametrize("cluster_num", [None, 5])
@pytest.mark.parametrize("hard", [False, True])
def test_training_losses_equal_plain_reference(cluster_num: int | None, hard: bool):
    torch.manual_seed(0)
    model = create_backbone("mssl", TINY, cluster_num=cluster_num, **TINY_OPTS).eval()  # no dropout
    batch = tiny_batch()
    losses = model.training_losses(batch, context(hard, seed=3))
    expected = reference_losses(model, batch, context(hard, seed=3))
    assert set(losses) == {"clip_nce", "clip_triplet", "frame_nce", "frame_triplet"}
    for name in losses:
        torch.testing.assert_close(losses[name], expected[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cluster_num", [None, 7])
def test_training_losses_finite_with_gradients_everywhere(cluster_num: int | None):
    torch.manual_seed(0)
    model = create_backbone("mssl", TINY, cluster_num=cluster_num, **TINY_OPTS).train()
    batch = tiny_batch()
    for hard in (False, True):
        model.zero_grad()
        losses = model.training_losses(batch, context(hard))
        assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
        sum(losses.values()).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_same_generator_seed_gives_same_loss():
    model = create_backbone("mssl", TINY, **TINY_OPTS).train()
    batch = tiny_batch()
    runs = []
    for _ in range(2):
        torch.manual_seed(7)  # dropout
        runs.append(model.training_losses(batch, context(seed=11)))
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


def test_two_way_nce_is_row_plus_column_cross_entropy():
    logits = torch.randn(6, 6)
    target = torch.arange(6)
    expected = F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
    torch.testing.assert_close(two_way_nce(logits), expected)


@pytest.mark.parametrize("name,options", [("mssl", {}), ("mssl", {"cluster_num": 6}),
                                          ("meanpool", {}), ("meanpool", {"pooling": "attention"})])
def test_a_few_steps_reduce_the_loss(name: str, options: dict):
    torch.manual_seed(0)
    model = create_backbone(name, TINY, **{**TINY_OPTS, "hidden_size": 16}, input_drop=0.0, drop=0.0, **options)
    batch = tiny_batch()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    totals = []
    for _ in range(25):
        total = sum(model.training_losses(batch, context(seed=0)).values())
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        totals.append(total.item())
    assert totals[-1] < 0.7 * totals[0]


# --------------------------------------------------------------------------- k-medoids

def reference_kmedoids(points: torch.Tensor, k: int, iters: int = 60) -> list[int]:
    """Loop-based k-medoids of one point set: KKZ init, nearest-medoid assignment, medoid update."""
    d = torch.cdist(points[None], points[None])[0].tolist()
    n = len(d)
    for i in range(n):
        d[i][i] = -1.0
    medoids = [int(points.norm(dim=-1).argmax())]
    while len(medoids) < k:
        nearest = [min(d[i][m] for m in medoids) for i in range(n)]
        medoids.append(max(range(n), key=lambda i: (nearest[i], -i)))
    for _ in range(iters):
        assignment = [min(range(k), key=lambda c: (d[i][medoids[c]], c)) for i in range(n)]
        moved = []
        for c in range(k):
            members = [i for i in range(n) if assignment[i] == c]
            moved.append(min(members, key=lambda i: (sum(d[i][j] for j in members), i)))
        if moved == medoids:
            break
        medoids = moved
    return sorted(medoids)


def test_kmedoids_matches_loop_reference_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(6, 40, 3, generator=g, dtype=torch.float64)
    result = batch_kmedoids(points, 5)
    assert result.medoids.shape == (6, 5) and result.assignment.shape == (6, 40)
    for b in range(len(points)):
        assert result.medoids[b].tolist() == reference_kmedoids(points[b], 5)
    again = batch_kmedoids(points, 5, chunk_size=4)
    assert torch.equal(again.medoids, result.medoids) and torch.equal(again.assignment, result.assignment)


def test_kmedoids_medoids_are_distinct_member_points_and_optimal_in_their_cluster():
    g = torch.Generator().manual_seed(1)
    points = torch.randn(4, 30, 5, generator=g)
    points[0, 10:20] = points[0, 0]  # many coincident points
    result = batch_kmedoids(points, 8)
    distances = torch.cdist(points, points)
    distances.diagonal(dim1=1, dim2=2).zero_()  # cdist's matmul path leaves ~1e-3 on the diagonal
    for b in range(len(points)):
        medoids, assignment = result.medoids[b], result.assignment[b]
        assert len(set(medoids.tolist())) == 8 and medoids.tolist() == sorted(medoids.tolist())
        for c, m in enumerate(medoids.tolist()):
            assert assignment[m] == c  # a medoid is an actual point of its own cluster
            members = (assignment == c).nonzero().flatten()
            sums = distances[b][members][:, members].sum(dim=1)
            assert sums.min() >= distances[b, m, members].sum() - 1e-4
    assert batch_kmedoids(points, 30).medoids.tolist() == [list(range(30))] * 4


def test_kmedoids_toy_blobs():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    offsets = torch.tensor([[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0], [0.0, 0.5], [0.0, -0.5]])
    points = (centres[:, None] + offsets[None]).reshape(1, 15, 2)
    result = batch_kmedoids(points, 3)
    assert result.medoids.tolist() == [[0, 5, 10]]  # each blob's central point
    assert result.assignment.tolist() == [[0] * 5 + [1] * 5 + [2] * 5]
    with pytest.raises(ValueError, match="k must be in 1..15"):
        batch_kmedoids(points, 16)


# --------------------------------------------------------------------------- memory of score()

def test_score_memory_stays_within_the_chunk_bound():
    """50 queries x 300 videos x 528 proposals x 128 frames: no single op allocates more than a
    block's (P + L) x queries x videos floats (the O(Nq Nv (P + L)) budget, here per video block)."""
    torch.manual_seed(0)
    model = create_backbone("mssl", Dims(video_dim=16, query_dim=8)).eval()  # H = 384
    nq, nv, length, p = 50, 300, 128, 528
    block = max(1, model.score_block_floats // (nq * (p + length)))
    with torch.no_grad():
        videos = model.encode_videos(torch.randn(nv, 32, 16), torch.randn(nv, length, 16), torch.ones(nv, length))
        queries = model.encode_queries(torch.randn(nq, 10, 8), torch.ones(nq, 10))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            scores = model.score(queries, videos)
    assert scores["fused"].shape == (nq, nv)
    largest = max(event.cpu_memory_usage for event in prof.events())
    print(f"largest single allocation in score(): {largest / 2**20:.1f} MiB")
    assert 0 < largest <= 4 * nq * min(block, nv) * (p + length)
    assert largest <= 4 * nq * nv * (p + length)  # the budget the evaluator relies on


# --------------------------------------------------------------------------- mean-pool baseline

def test_meanpool_scores_are_cosines_of_pooled_vectors():
    torch.manual_seed(0)
    model = create_backbone("meanpool", TINY, **TINY_OPTS).eval()
    clip_feats, frames, mask, lengths, tokens, token_mask = tiny_inputs()
    with torch.no_grad():
        videos = model.encode_videos(clip_feats, frames, mask)
        scores = model.score(model.encode_queries(tokens, token_mask), videos)
        tokens_v = model.video_encoder(frames, mask)
        for v, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(videos["video"][v], tokens_v[v, :n].mean(dim=0))
    assert set(scores) == {"fused"} and scores["fused"].shape == (4, 5)
    assert scores["fused"].abs().max() <= 1 + 1e-6
    with pytest.raises(ValueError, match="pooling"):
        create_backbone("meanpool", TINY, pooling="max")
    assert MeanPool.training_defaults == MSSL.training_defaults


def test_meanpool_losses_finite_with_gradients():
    model = create_backbone("meanpool", TINY, pooling="attention", **TINY_OPTS).train()
    losses = model.training_losses(tiny_batch(), context(hard=True))
    assert set(losses) == {"frame_nce", "frame_triplet"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# --------------------------------------------------------------------------- with the evaluator

@pytest.mark.parametrize("options", [{}, {"cluster_num": 16}])
def test_batched_evaluation_equals_one_full_score_matrix(options: dict):
    """Videos encoded in batches of 5 (padded to the split's longest) and queries scored in chunks
    of 7 give the metrics of one score() call on everything."""
    from trainables.data.loader import load_split
    from trainables.data.synthetic import ensure_synthetic

    split = load_split(ensure_synthetic("tiny"), "test")
    torch.manual_seed(0)
    model = create_backbone("mssl", Dims(split.clips.shape[-1], split.query_tokens(0).shape[-1]),
                            hidden_size=16, n_heads=4, **options).eval()
    assert assert_chunked_evaluation_matches_full(model, split) == {"clip", "frame", "fused"}


def test_kmedoids_from_inner_products_equals_from_points():
    g = torch.Generator().manual_seed(2)
    points = torch.randn(5, 60, 7, generator=g, dtype=torch.float64) + 3.0
    from_points = batch_kmedoids(points, 6)
    from_gram = batch_kmedoids_gram(points @ points.transpose(1, 2), 6, chunk_size=2, distance_dtype=torch.float32)
    assert torch.equal(from_points.medoids, from_gram.medoids)
    assert torch.equal(from_points.assignment, from_gram.assignment)
