"""MSC plugin: RKD (TCPL), OP-ToMe and loss-side merging, adaptive segment counts, CBVA, settings and training.

References are independent: naive Python loops of the released formulas (``admins97/MSC_PRVR``), the
protocol's numpy pooling matrix, hand-built similarity patterns and union-find connectivity.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables.data.loader import TrainVideos, collate_train, load_split, train_loader
from trainables.data.protocol import pooling_matrix
from trainables.data.synthetic import ensure_synthetic
from trainables.losses.cbva import cbva_loss, cbva_terms, segment_counts
from trainables.losses.rkd import rkd_angle, rkd_distance
from trainables.models.base import Dims, LossContext, VideoInputs
from trainables.plugins.token_merging import (
    adjacent_merge_index,
    average_to_fixed_length,
    frame_bins,
    merge_to_counts,
    op_tome,
)
from trainables.training.config import TrainConfig
from trainables.training.loop import DataSplits, load_data, train

SMALL_MODEL = {"hidden_size": 32, "n_heads": 4}


@pytest.fixture(scope="module")
def tiny() -> DataSplits:
    return load_data(ensure_synthetic("tiny"))


def _context() -> LossContext:
    return LossContext(epoch=0, hard_negatives=False, hard_pool_size=20, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------------------------- RKD

def _smooth_l1(a: float, b: float) -> float:
    d = abs(a - b)
    return 0.5 * d * d if d < 1.0 else d - 0.5


def _naive_rkd(student: torch.Tensor, teacher: torch.Tensor) -> tuple[float, float]:
    """Distance and angle terms by plain loops over pairs and triplets (float64 Python arithmetic)."""
    s, t = student.double().tolist(), teacher.double().tolist()
    n = len(s)

    def dist(e, i, j):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(e[i], e[j])))

    def unit(e, i, j):  # (e_i - e_j) / ||.||, zero for a zero difference
        diff = [a - b for a, b in zip(e[i], e[j])]
        norm = math.sqrt(sum(x * x for x in diff))
        return [x / norm for x in diff] if norm > 0 else [0.0] * len(diff)

    def psi_d(e):
        d = [[dist(e, i, j) for j in range(n)] for i in range(n)]
        mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[x / mean for x in row] for row in d]

    ds, dt = psi_d(s), psi_d(t)
    distance = sum(_smooth_l1(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / n**2
    angle = 0.0
    for j in range(n):  # vertex
        for i in range(n):
            for k in range(n):
                cs = sum(a * b for a, b in zip(unit(s, i, j), unit(s, k, j)))
                ct = sum(a * b for a, b in zip(unit(t, i, j), unit(t, k, j)))
                angle += _smooth_l1(cs, ct)
    return distance, angle / n**3


def _rotation(dim: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_rkd_terms_equal_the_naive_loops():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, generator=g), torch.randn(6, 7, generator=g) * 3
    distance, angle = _naive_rkd(student, teacher)
    assert distance > 1e-3 and angle > 1e-3  # a random pair is not already aligned
    assert rkd_distance(student, teacher).item() == pytest.approx(distance, rel=1e-4)
    assert rkd_angle(student, teacher).item() == pytest.approx(angle, rel=1e-4)


def test_rkd_terms_are_invariant_to_rotation_and_scale_and_zero_for_a_rotated_copy():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(10, 8, generator=g, dtype=torch.float64), torch.randn(10, 6, generator=g,
                                                                                       dtype=torch.float64)
    moved_student, moved_teacher = 4.0 * student @ _rotation(8, 2), 0.3 * teacher @ _rotation(6, 3)
    for term in (rkd_distance, rkd_angle):
        base = term(student, teacher).item()
        assert base > 1e-3
        assert term(moved_student, moved_teacher).item() == pytest.approx(base, rel=1e-6)
        # student equal to the teacher up to a rotation and a scaling: nothing to distil
        assert term(2.5 * teacher @ _rotation(6, 4), teacher).item() == pytest.approx(0.0, abs=1e-9)


def test_rkd_angle_in_blocks_equals_the_unblocked_value_and_gradient():
    g = torch.Generator().manual_seed(5)
    teacher = torch.randn(13, 4, generator=g)
    values, grads = [], []
    for block in (10**9, 13 * 13 * 5, 1):  # one block, 3 blocks of 5 vertices (last partial), one vertex each
        student = torch.randn(13, 6, generator=torch.Generator().manual_seed(6)).requires_grad_()
        value = rkd_angle(student, teacher, block=block)
        value.backward()
        values.append(value.item())
        grads.append(student.grad)
    for value, grad in zip(values[1:], grads[1:]):
        assert value == pytest.approx(values[0], rel=1e-5)
        torch.testing.assert_close(grad, grads[0], rtol=1e-4, atol=1e-7)
    assert grads[0].abs().sum() > 0


# ----------------------------------------------------------------------------------------------- pooling rule

def test_frame_bins_and_uniform_averaging_follow_the_protocol_pooling_rule():
    for n in (1, 5, 31, 32, 33, 50, 128, 140):
        for bins in (32, 128):
            matrix = pooling_matrix(n, bins)  # (bins, n) the protocol's averaging matrix (numpy, independent)
            labels = frame_bins(torch.tensor([n]), bins, n + 3)[0]
            for f in range(n):
                if matrix[:, f].any():  # the frame enters some mean: its label is a bin averaging it
                    assert matrix[labels[f], f] > 0, (n, bins, f)
                else:  # only the last frame is left out of every mean: it goes to the last bin
                    assert f == n - 1 and labels[f] == bins - 1
            frames = torch.randn(1, n + 3, 4, dtype=torch.float64)
            mask = torch.zeros(1, n + 3)
            mask[0, :n] = 1
            expected = torch.from_numpy(matrix.astype(np.float64)) @ frames[0, :n]
            torch.testing.assert_close(average_to_fixed_length(frames, mask, bins)[0], expected)


# ----------------------------------------------------------------------------------------------- OP-ToMe

def _naive_uniform(frames: torch.Tensor, n: int, bins: int = 128) -> torch.Tensor:
    """The release's average_to_fixed_length, loop by loop."""
    idx = [min(round(i / bins * n), n - 1) for i in range(bins + 1)]
    return torch.stack([frames[idx[i]:idx[i + 1]].mean(dim=0) if idx[i] < idx[i + 1] else frames[idx[i]]
                        for i in range(bins)])


def _naive_tome(tokens: torch.Tensor, schedule=(80, 52, 32)) -> tuple[torch.Tensor, list[int], list[int]]:
    """The release's token_merge chain for one video: (tokens, sizes, label of each uniform token)."""
    sizes = [1.0] * len(tokens)
    groups = [[i] for i in range(len(tokens))]  # uniform tokens of each current token
    rows = list(tokens)
    for target in schedule:
        pairs = len(rows) // 2
        scores = [float((rows[2 * i] * rows[2 * i + 1]).sum()) for i in range(pairs)]
        chosen = set(sorted(range(pairs), key=lambda i: -scores[i])[: len(rows) - target])
        new_rows, new_sizes, new_groups = [], [], []
        for i in range(pairs):
            a, b = 2 * i, 2 * i + 1
            if i in chosen:
                w1, w2 = sizes[a], sizes[b]
                new_rows.append((rows[a] * w1 + rows[b] * w2) / (w1 + w2))
                new_sizes.append(w1 + w2)
                new_groups.append(groups[a] + groups[b])
            else:
                new_rows += [rows[a], rows[b]]
                new_sizes += [sizes[a], sizes[b]]
                new_groups += [groups[a], groups[b]]
        rows, sizes, groups = new_rows, new_sizes, new_groups
    labels = [0] * len(tokens)
    for token, members in enumerate(groups):
        for u in members:
            labels[u] = token
    return torch.stack(rows), [int(s) for s in sizes], labels


def test_op_tome_keeps_order_sizes_and_means_and_merges_the_most_similar_adjacent_pairs():
    g = torch.Generator().manual_seed(0)
    lengths = (128, 50, 200)
    frames = torch.randn(3, 200, 8, generator=g, dtype=torch.float64)
    mask = torch.zeros(3, 200)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    merged = op_tome(frames, mask)
    assert merged.tokens.shape == (3, 32, 8) and merged.labels.shape == (3, 128)
    for b, n in enumerate(lengths):
        labels = merged.labels[b]
        # temporal order: each merged token covers one contiguous run of uniform tokens, runs in order
        assert labels[0] == 0 and labels[-1] == 31
        assert set(labels.diff().tolist()) <= {0, 1}
        assert merged.sizes[b].sum() == 128
        torch.testing.assert_close(merged.sizes[b], torch.bincount(labels, minlength=32).double())
        uniform = _naive_uniform(frames[b, :n], n)
        for token in range(32):  # each merged token = mean of its uniform tokens (all of size 1)
            torch.testing.assert_close(merged.tokens[b, token], uniform[labels == token].mean(dim=0))
        tokens, sizes, naive_labels = _naive_tome(uniform)  # the released algorithm, loop by loop
        assert labels.tolist() == naive_labels and merged.sizes[b].tolist() == sizes
        torch.testing.assert_close(merged.tokens[b], tokens)


def test_adjacent_merge_step_picks_the_top_pairs_by_dot_product():
    tokens = torch.tensor([[[1.0], [1.0], [3.0], [2.0], [0.5], [0.1], [-2.0], [-2.0]]])  # pair scores 1, 6, .05, 4
    index = adjacent_merge_index(tokens, 6)  # 2 merges: pairs 1 and 3
    assert index.tolist() == [[0, 1, 2, 2, 3, 4, 5, 5]]
    assert adjacent_merge_index(tokens, 8).tolist() == [list(range(8))]
    with pytest.raises(ValueError, match="n/2 <= target <= n"):
        adjacent_merge_index(tokens, 3)


# ----------------------------------------------------------------------------------------------- adaptive CBVA

def _naive_count(clips: torch.Tensor, thr: float) -> int:
    """Segment count from union-find components of the graph cos > thr (rho = connected ordered pairs)."""
    unit = F.normalize(clips.double(), dim=-1)
    m = len(clips)
    parent = list(range(m))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(m):
        for j in range(m):
            if i != j and float(unit[i] @ unit[j]) > thr:
                parent[root(i)] = root(j)
    sizes: dict[int, int] = {}
    for i in range(m):
        sizes[root(i)] = sizes.get(root(i), 0) + 1
    rho = sum(s * (s - 1) for s in sizes.values()) / (m * (m - 1))
    return next((r for cut, r in ((0.8, 5), (0.6, 8), (0.4, 12), (0.2, 20)) if rho >= cut), 32)


def _blocks(*sizes: int) -> torch.Tensor:
    """32 one-hot clip features: a block of identical clips per size, every other clip its own direction."""
    ids = [b for b, s in enumerate(sizes) for _ in range(s)]
    ids += list(range(len(sizes), len(sizes) + 32 - len(ids)))
    return F.one_hot(torch.tensor(ids), 64).float()


def test_adaptive_segment_counts_on_hand_built_patterns():
    angles = torch.arange(32) * 0.5  # consecutive clips cos 0.88 > 0.8, two apart cos 0.54: a chain
    chain = torch.stack([angles.cos(), angles.sin()], dim=1)
    patterns = {
        "identical": (torch.ones(32, 16), 5),
        "orthogonal": (torch.eye(32), 32),
        "block of 29 (rho 0.82)": (_blocks(29), 5),
        "block of 25 (rho 0.60)": (_blocks(25), 8),
        "two blocks of 16 (rho 0.48)": (_blocks(16, 16), 12),
        "block of 15 (rho 0.21)": (_blocks(15), 20),
        "block of 14 (rho 0.18)": (_blocks(14), 32),
        "chain (transitive closure)": (chain, 5),
    }
    clips = torch.stack([torch.cat([p, torch.zeros(32, 64 - p.shape[1])], dim=1) for p, _ in patterns.values()])
    counts = segment_counts(clips, 0.8).tolist()
    for (name, (pattern, expected)), count in zip(patterns.items(), counts):
        assert count == expected == _naive_count(pattern, 0.8), name
    random = torch.randn(6, 32, 5, generator=torch.Generator().manual_seed(3))
    assert segment_counts(random, 0.3).tolist() == [_naive_count(c, 0.3) for c in random]


def _naive_bipartite(x, raw, sizes, labels, target):
    """The release's loss-side token_merge for one video (lists of rows, Python sort of all candidates)."""
    n = len(x)
    metric = F.normalize(raw, dim=-1)
    candidates = sorted(((float(metric[a] @ metric[b]), a, b) for a in range(0, n, 2) for b in range(1, n, 2)),
                        key=lambda c: -c[0])
    to_merge, used_a, used_b = {}, set(), set()
    for _, a, b in candidates:
        if len(to_merge) >= n - target:
            break
        if a not in used_a and b not in used_b:
            to_merge[a] = b
            used_a.add(a)
            used_b.add(b)
    new_x, new_raw, new_sizes, new_labels, position = [], [], [], list(labels), 0
    for i in range(n):
        if i in to_merge:
            j = to_merge[i]
            w1, w2 = sizes[i], sizes[j]
            new_x.append((x[i] * w1 + x[j] * w2) / (w1 + w2))
            new_raw.append((raw[i] * w1 + raw[j] * w2) / (w1 + w2))
            new_sizes.append(w1 + w2)
            new_labels = [position if old in (i, j) else new for old, new in zip(labels, new_labels)]
            position += 1
        elif i not in to_merge.values():
            new_x.append(x[i])
            new_raw.append(raw[i])
            new_sizes.append(sizes[i])
            new_labels = [position if old == i else new for old, new in zip(labels, new_labels)]
            position += 1
    return torch.stack(new_x), torch.stack(new_raw), new_sizes, new_labels


def test_loss_side_merging_equals_the_released_loop():
    g = torch.Generator().manual_seed(4)
    tokens = torch.randn(4, 32, 6, generator=g, dtype=torch.float64)
    raw = torch.randn(4, 32, 5, generator=g, dtype=torch.float64)
    sizes = torch.randint(1, 5, (4, 32), generator=g).double()
    frame_labels = torch.randint(0, 32, (4, 40), generator=g)
    counts = torch.tensor([32, 12, 5, 20])
    segments, segment_mask, groups = merge_to_counts(tokens, raw, sizes, counts)
    labels = groups.gather(1, frame_labels)
    for b, count in enumerate(counts.tolist()):
        x, r, s, lab = tokens[b], raw[b], sizes[b].tolist(), frame_labels[b].tolist()
        for target in (20, 12, 8, 5):
            if count == 32:
                break
            x, r, s, lab = _naive_bipartite(x, r, s, lab, target)
            if target == count:
                break
        assert segment_mask[b].tolist() == [i < count for i in range(32)]
        torch.testing.assert_close(segments[b, :count], x)
        assert labels[b].tolist() == lab


# ----------------------------------------------------------------------------------------------- CBVA

def _naive_cbva(frames, frame_mask, segments, segment_mask, labels, temperature=1.0):
    """The release's rank_contrastive_loss stage I, video by video, restricted to valid frames/segments."""
    total = 0.0
    for b in range(len(frames)):
        f = frames[b][frame_mask[b] > 0]
        c = segments[b][segment_mask[b] > 0]
        lab = labels[b][frame_mask[b] > 0]
        pos = lab[:, None] == torch.arange(len(c))[None, :]
        neg = ~pos
        sim = f @ c.t()
        sim = torch.exp((sim - sim.max(dim=1, keepdim=True).values) / temperature)
        p = (sim * pos).sum(1) / (pos.sum(1) + 1e-8)
        n = (sim * neg).sum(1) / (neg.sum(1) + 1e-8)
        f2c = -torch.log(p / (p + n + 1e-8)).mean()
        sim = f @ c.t()
        sim = torch.exp((sim - sim.max(dim=0, keepdim=True).values) / temperature)
        p = (sim * pos).sum(0) / (pos.sum(0) + 1e-8)
        n = (sim * neg).sum(0) / (neg.sum(0) + 1e-8)
        c2f = -torch.log(p / (p + n)).mean()
        total += f2c + c2f
    return total / len(frames)


def _cbva_example():
    g = torch.Generator().manual_seed(7)
    frames = torch.randn(3, 10, 4, generator=g, dtype=torch.float64)
    segments = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    frame_mask = torch.tensor([[1.0] * 10, [1.0] * 7 + [0.0] * 3, [1.0] * 9 + [0.0]])
    segment_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]])
    labels = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3, 4, 4], [0, 0, 1, 1, 1, 2, 2, 4, 4, 4],
                           [0, 1, 1, 2, 2, 2, 3, 3, 3, 0]])
    return frames, frame_mask, segments, segment_mask, labels


def test_cbva_equals_the_released_per_video_loop():
    example = _cbva_example()
    for temperature in (1.0, 0.5):
        expected = _naive_cbva(*example, temperature=temperature)
        assert expected > 0
        assert cbva_loss(*example, temperature=temperature).item() == pytest.approx(expected.item(), rel=1e-6)


def test_cbva_f2c_never_reaches_the_segments_and_c2f_never_the_frames():
    frames, frame_mask, segments, segment_mask, labels = _cbva_example()
    for term, moved, frozen in ((0, "frames", "segments"), (1, "segments", "frames")):
        inputs = {"frames": frames.clone().requires_grad_(), "segments": segments.clone().requires_grad_()}
        value = cbva_terms(inputs["frames"], frame_mask, inputs["segments"], segment_mask, labels)[term]
        value.sum().backward()
        assert inputs[frozen].grad is None or not inputs[frozen].grad.any()
        assert inputs[moved].grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- the plugin

def _msc_config(backbone: str, **settings) -> dict:
    return {"backbone": backbone, "epochs": 1, "batch_size": 16, "lr": 1e-3, "seed": 3, **SMALL_MODEL,
            "msc": True, **{f"msc.{k}": v for k, v in settings.items()}}


ACCEPTED = {  # every part each backbone accepts, switched on
    "mssl": {"tome": True, "adaptive": True, "sim_thr": 0.4},
    "gmmformer": {"tome": True, "adaptive": True, "sim_thr": 0.4},
    "gmmformer2": {"tome": True, "adaptive": True, "sim_thr": 0.4},
    "amdnet": {"cbva": False, "tome": True, "tome_proportional": False},
    "meanpool": {"cbva": False},
}


@pytest.mark.parametrize("backbone", sorted(ACCEPTED))
def test_one_epoch_on_tiny_with_every_accepted_part(tiny, backbone):
    config = _msc_config(backbone, **ACCEPTED[backbone])
    result = train(config, tiny)
    losses = result.history[0]["loss"]
    msc_terms = {k for k in losses if k.startswith("msc.")}
    expected = {"msc.rkd_distance", "msc.rkd_angle"} | ({"msc.cbva"} if ACCEPTED[backbone].get("cbva", True) else set())
    assert msc_terms == expected
    assert all(math.isfinite(v) for v in losses.values()) and all(losses[k] > 0 for k in msc_terms)
    # gradients of one batch reach the plugin's parameters (the CBVA projection) and stay finite
    torch.manual_seed(0)
    model = TrainConfig.from_dict(config).build_model(tiny.dims)
    model.train()
    batch = next(iter(train_loader(tiny.train, 16, seed=1)))
    terms = model.training_losses(batch, _context())
    torch.stack(list(terms.values())).sum().backward()
    params = list(model.plugins["msc"].parameters())
    assert bool(params) == ACCEPTED[backbone].get("cbva", True)
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


REJECTED = [
    ("amdnet", {}, r"msc\.cbva needs frame_tokens .*which amdnet does not have.*set msc\.cbva: false"),
    ("meanpool", {}, r"msc\.cbva needs clip_tokens .*which meanpool does not have"),
    ("meanpool", {"cbva": False, "tome": True}, r"msc\.tome needs .*clip_tokens .*which meanpool does not have"),
    ("amdnet", {"cbva": False, "tome": True},
     r"msc\.tome needs clip_key_bias .*which amdnet does not have.*set msc\.tome_proportional: false"),
    ("mssl", {"tcpl": False, "cbva": False}, r"at least one of msc\.tcpl, msc\.cbva, msc\.tome must be on"),
    ("mssl", {"cbva": False, "adaptive": True}, r"adaptive .*needs cbva on"),
    ("mssl", {"teacher": "cls"}, r"teacher must be one of mean, first, last_valid, external"),
    ("mssl", {"alpha_a": -1.0}, r"alpha_a must be in \[0"),
    ("mssl", {"cbva_temperature": 0.0}, r"cbva_temperature must be in \(0"),
    ("mssl", {"sim_thr": 1.5}, r"sim_thr must be in \[-1"),
    ("mssl", {"angle_block": 0}, r"angle_block must be in \[1"),
    ("mssl", {"tome": "yes"}, r"tome must be true or false"),
]


@pytest.mark.parametrize("backbone,settings,message", REJECTED)
def test_rejected_combinations_and_settings(backbone, settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(_msc_config(backbone, **settings))


@pytest.mark.parametrize("backbone", ["gmmformer", "gmmformer2", "mssl"])
def test_training_only_parts_leave_inference_unchanged(tiny, backbone):
    torch.manual_seed(0)
    with_msc = TrainConfig.from_dict(_msc_config(backbone, adaptive=True)).build_model(tiny.dims).eval()
    bare = TrainConfig.from_dict({"backbone": backbone, **SMALL_MODEL}).build_model(tiny.dims).eval()
    state = {k: v for k, v in with_msc.state_dict().items() if not k.startswith("plugins.")}
    bare.load_state_dict(state)
    batch = next(iter(train_loader(tiny.val, 8, shuffle=False)))
    with torch.no_grad():
        videos = [m.encode_videos(batch["clip_video_features"], batch["frame_video_features"], batch["videos_mask"])
                  for m in (with_msc, bare)]
        queries = [m.encode_queries(batch["text_feat"], batch["text_mask"]) for m in (with_msc, bare)]
        scores = [m.score(q, v) for m, q, v in zip((with_msc, bare), queries, videos)]
    for ours, theirs in ((videos[0], videos[1]), (queries[0], queries[1]), (scores[0], scores[1])):
        assert ours.keys() == theirs.keys()  # no training tensor kept for the plugin at inference
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


def test_tome_replaces_the_clip_input_with_normalised_merges_and_log_size_bias(tiny):
    model = TrainConfig.from_dict(_msc_config("gmmformer", tome=True)).build_model(tiny.dims)
    plugin = model.plugins["msc"]
    batch = next(iter(train_loader(tiny.train, 4)))
    inputs = VideoInputs.from_batch(batch)
    out = plugin.transform_videos(inputs)
    merged = op_tome(batch["frame_video_features"], batch["videos_mask"])
    expected = merged.tokens / (merged.tokens.norm(dim=-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(out.clips, expected)
    torch.testing.assert_close(out.clip_key_bias, merged.sizes.log())
    assert out.frames is inputs.frames and out.frames_mask is inputs.frames_mask
    off = TrainConfig.from_dict(_msc_config("gmmformer", tome=True, tome_proportional=False)).build_model(tiny.dims)
    assert off.plugins["msc"].transform_videos(inputs).clip_key_bias is None
    model.eval()
    with torch.no_grad():  # used at inference: the encoding differs from the unmerged input's
        clip = model.encode_videos(batch["clip_video_features"], batch["frame_video_features"],
                                   batch["videos_mask"])["clip_tokens"]
        own = model._encode_videos(inputs)["clip_tokens"]
    assert not torch.allclose(clip, own)


def test_teachers_and_external_sentence_features(make_dataset):
    folder, _, _ = make_dataset(sentence_dim=3, num_videos=5, queries_per_video=3)
    split = load_split(folder, "train")
    batch = collate_train([TrainVideos(split)[i] for i in range(split.num_videos)])
    assert torch.equal(batch["sentence_feat"], torch.from_numpy(split.sentence[batch["query_index"].numpy()]))
    config = {"backbone": "gmmformer", **SMALL_MODEL, "msc": True, "msc.cbva": False}
    dims = Dims(split.clips.shape[2], split.tokens.shape[1])
    tokens, mask = batch["text_feat"], batch["text_mask"]
    lengths = mask.sum(1).long()
    expected = {
        "mean": torch.stack([tokens[q, :n].mean(0) for q, n in enumerate(lengths)]),
        "first": tokens[:, 0],
        "last_valid": torch.stack([tokens[q, n - 1] for q, n in enumerate(lengths)]),
        "external": batch["sentence_feat"],
    }
    for teacher, vectors in expected.items():
        model = TrainConfig.from_dict({**config, "msc.teacher": teacher}).build_model(dims)
        torch.testing.assert_close(model.plugins["msc"].teacher(batch), vectors)
        assert torch.isfinite(model.training_losses(batch, _context())["msc.rkd_angle"])
    model = TrainConfig.from_dict({**config, "msc.teacher": "external"}).build_model(dims)
    without = {k: v for k, v in batch.items() if k != "sentence_feat"}
    with pytest.raises(ValueError, match="msc.teacher=external needs the dataset's sentence features"):
        model.training_losses(without, _context())
