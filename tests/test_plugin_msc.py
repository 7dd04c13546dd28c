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
    "amdnet": {"cbva": False, "tome_proportional": False},
    "meanpool": {"cbva": False, "tome": False},
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
    # the defaults (every part on, proportional attention) on the backbones that lack something: one line
    # naming every part that cannot run and every setting that switches it off
    ("amdnet", {}, r"msc\.cbva needs frame_tokens .*; msc\.tome needs clip_key_bias .*which amdnet does not have"
                   r".*set msc\.cbva: false and msc\.tome_proportional: false$"),
    ("meanpool", {}, r"msc\.cbva needs clip_tokens .*; msc\.tome needs clip_key_bias .* and clip_tokens .*which "
                     r"meanpool does not have.*set msc\.cbva: false and msc\.tome: false$"),
    ("meanpool", {"cbva": False, "tome": True}, r"msc\.tome needs .*clip_tokens .*which meanpool does not have"),
    ("amdnet", {"cbva": False, "tome": True},
     r"msc\.tome needs clip_key_bias .*which amdnet does not have.*set msc\.tome_proportional: false"),
    ("mssl", {"tcpl": False, "cbva": False, "tome": False},
     r"at least one of msc\.tcpl, msc\.cbva, msc\.tome must be on"),
    ("mssl", {"cbva": False, "adaptive": True}, r"adaptive .*needs cbva on"),
    ("mssl", {"teacher": "cls"}, r"teacher must be one of last_valid, mean, first, external"),
    ("mssl", {"tome_input": "unit"}, r"tome_input must be one of raw, normalized, got 'unit'"),
    ("mssl", {"pad_frames": "zeros"}, r"pad_frames must be one of repeat, mask, got 'zeros'"),
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
    # the input transforms (tome, pad_frames: repeat; on by default) off: only the training-only parts
    with_msc = TrainConfig.from_dict(_msc_config(backbone, adaptive=True, tome=False, pad_frames="mask")
                                     ).build_model(tiny.dims).eval()
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
    model = TrainConfig.from_dict(_msc_config("gmmformer", pad_frames="mask")).build_model(tiny.dims)
    plugin = model.plugins["msc"]
    batch = next(iter(train_loader(tiny.train, 4)))
    inputs = VideoInputs.from_batch(batch)
    out = plugin.transform_videos(inputs)
    # the release's merge input: the loader's normalised frames times what it divided them by
    merged = op_tome(batch["frame_video_features"] * batch["frame_scales"][..., None], batch["videos_mask"])
    expected = merged.tokens / (merged.tokens.norm(dim=-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(out.clips, expected)
    torch.testing.assert_close(out.clip_key_bias, merged.sizes.log())
    assert out.frames is inputs.frames and out.frames_mask is inputs.frames_mask
    off = TrainConfig.from_dict(_msc_config("gmmformer", tome_proportional=False)).build_model(tiny.dims)
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


# ----------------------------------------------------------------------------------------------- release defaults

def _raw_frames(lengths: tuple[int, ...], dim: int = 6, seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Un-normalised frames (norms spread over 0.2 .. 5, as raw features before any L2 norm), zero-padded."""
    g = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    frames = torch.randn(len(lengths), longest, dim, generator=g, dtype=torch.float64)
    frames = frames * (0.2 + 4.8 * torch.rand(len(lengths), longest, 1, generator=g, dtype=torch.float64))
    mask = torch.zeros(len(lengths), longest, dtype=torch.float64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        frames[b, n:] = 0
    return frames, mask


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + 1e-5)


def _inputs(frames: torch.Tensor, mask: torch.Tensor) -> VideoInputs:
    return VideoInputs(torch.zeros(len(frames), 32, frames.shape[2], dtype=frames.dtype), frames, mask)


def _plugin(**settings):
    dims = Dims(6, 5)
    return TrainConfig.from_dict(_msc_config("gmmformer2", **settings)).build_model(dims).plugins["msc"]


def test_default_tome_merges_the_raw_128_bin_means_then_normalises_as_released():
    """data_provider.py: average_to_fixed_length(raw, 128), token_merge 128 -> 80 -> 52 -> 32 on those
    un-normalised means, then l2_normalize_np_array; the model adds log(merge_size) to the branch logits."""
    lengths = (50, 128, 97, 7)
    frames, mask = _raw_frames(lengths)
    raw_out = _plugin().transform_videos(_inputs(frames, mask))
    normalized_out = _plugin(tome_input="normalized").transform_videos(_inputs(frames, mask))
    differ = 0
    for b, n in enumerate(lengths):
        uniform = _naive_uniform(frames[b, :n], n)
        tokens, sizes, labels = _naive_tome(uniform)  # the released loop on the un-normalised means
        # (the plugin merges in float32)
        torch.testing.assert_close(raw_out.clips[b], _unit(tokens), rtol=1e-5, atol=1e-6)
        assert raw_out.clip_key_bias[b].tolist() == pytest.approx([math.log(s) for s in sizes], abs=1e-6)
        tokens_n, sizes_n, labels_n = _naive_tome(_unit(uniform))  # named variant: cosine-scored merges
        torch.testing.assert_close(normalized_out.clips[b], _unit(tokens_n), rtol=1e-5, atol=1e-6)
        assert normalized_out.clip_key_bias[b].tolist() == pytest.approx([math.log(s) for s in sizes_n], abs=1e-6)
        differ += labels != labels_n
    assert differ >= 2  # the two inputs give different merges on raw features: the test tells them apart


def test_default_frame_input_is_the_release_128_uniform_bins_and_mask_keeps_the_protocol_frames():
    """data_provider.py builds the frame branch with average_to_fixed_length(frames, 128): a short video
    repeats frames (bin i = frame min(round(i n / 128), n - 1)), every video has 128 valid frames."""
    lengths = (50, 128, 7, 93)
    frames, mask = _raw_frames(lengths, seed=12)
    out = _plugin().transform_videos(_inputs(frames, mask))
    assert out.frames.shape == (4, 128, 6) and out.frames_mask.tolist() == [[1.0] * 128] * 4
    for b, n in enumerate(lengths):
        for i in range(128):  # a short video: each bin is a single frame, picked by the release's rounding
            j = min(round(i / 128 * n), n - 1)
            assert torch.equal(out.frames[b, i], frames[b, j]), (n, i)
        if n == 128:
            assert torch.equal(out.frames[b], frames[b])
    clean = _plugin(pad_frames="mask", tome=False).transform_videos(_inputs(frames, mask))
    assert clean.frames is frames and clean.frames_mask is mask
    kept = _plugin(pad_frames="mask").transform_videos(_inputs(frames, mask))  # tome on, frames untouched
    assert kept.frames is frames and kept.frames_mask is mask
    with_frames = _plugin(tome=False).transform_videos(_inputs(frames, mask))  # repeat without tome
    torch.testing.assert_close(with_frames.frames, out.frames, rtol=0, atol=0)
    assert with_frames.clip_key_bias is None


def test_default_teacher_is_the_last_valid_token_as_released():
    """MSC_PRVR encode_clip_query: the teacher of query q is its input token at position sum(mask_q) - 1."""
    g = torch.Generator().manual_seed(13)
    lengths = [5, 2, 7, 1, 4, 6]
    tokens = torch.randn(6, 7, 5, generator=g)
    mask = torch.zeros(6, 7)
    for q, n in enumerate(lengths):
        mask[q, :n] = 1
        tokens[q, n:] = 0
    student = torch.randn(6, 32, generator=g)
    batch = {"text_feat": tokens, "text_mask": mask}
    expected_teacher = torch.stack([tokens[q, n - 1] for q, n in enumerate(lengths)])
    torch.testing.assert_close(_plugin().teacher(batch), expected_teacher, rtol=0, atol=0)
    terms = _plugin(cbva=False)._losses({"query": student}, batch)  # the RKD terms alone (no video features)
    distance, angle = _naive_rkd(student, expected_teacher)
    assert terms["rkd_distance"].item() == pytest.approx(15.0 * distance, rel=1e-4)
    assert terms["rkd_angle"].item() == pytest.approx(30.0 * angle, rel=1e-4)
    mean = torch.stack([tokens[q, :n].mean(0) for q, n in enumerate(lengths)])
    assert not torch.allclose(mean, expected_teacher)  # the former default would give other terms


def test_default_tome_merges_the_raw_means_even_when_the_loader_normalised_the_frames():
    """On an L2-normalised dataset (the MS-SL layout) the loader keeps what it divided each frame by, and
    OP-ToMe merges the restored raw frames: the same tokens and merge sizes as the release's loop on the raw
    features, through the real loader's batches at training (collate_train) and at inference
    (collate_videos); pad_frames=repeat bins the scales with the frames, so CBVA re-merges identically."""
    from trainables.data.loader import EvalVideos, TrainVideos, collate_train, collate_videos, prepare_split
    from trainables.data.protocol import Protocol
    from trainables.data.store import RawSplit

    lengths = (50, 128, 97, 7, 200)  # 200 > 128: the protocol pools to 128 bins before normalising
    g = torch.Generator().manual_seed(21)
    videos = [torch.randn(n, 6, generator=g, dtype=torch.float64) * (0.2 + 4.8 * torch.rand(n, 1, generator=g,
                                                                                             dtype=torch.float64))
              for n in lengths]
    raw = RawSplit(name="train", video_ids=[f"v{i}" for i in range(len(lengths))],
                   frames=torch.cat(videos).float().numpy(),
                   frame_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   query_ids=[f"q{i}" for i in range(len(lengths))], query_text=[""] * len(lengths),
                   query_video=np.arange(len(lengths), dtype=np.int64),
                   tokens=torch.randn(3 * len(lengths), 5, generator=g).numpy(),
                   token_offsets=np.arange(0, 3 * len(lengths) + 1, 3, dtype=np.int64))
    split = prepare_split(raw, Protocol(l2_normalize=True))
    expected = []
    for i, n in enumerate(lengths):
        video = videos[i].float()
        if n > 128:  # the protocol's 128-bin means of the raw frames (its pooling is tested on its own)
            video = torch.from_numpy(pooling_matrix(n, 128, Protocol().exclude_last_frame)).float() @ video
        # what the plugin sees, times what the loader kept, is the raw feature (up to float32 rounding)
        restored = torch.from_numpy(split.video_frames(i)).double() * \
            torch.from_numpy(split.video_frame_scales(i)).double()[:, None]
        torch.testing.assert_close(restored, video.double(), rtol=1e-5, atol=1e-5)
        expected.append(_naive_tome(_naive_uniform(video.double(), len(video))))
    plugin = _plugin()
    train_batch = collate_train([TrainVideos(split)[i] for i in range(len(lengths))])
    order = train_batch["video_index"].tolist()
    eval_batch = collate_videos([EvalVideos(split)[i] for i in range(len(lengths))])
    for batch, rows in ((train_batch, order), (eval_batch, list(range(len(lengths))))):
        out = plugin.transform_videos(VideoInputs.from_batch(batch))
        for b, i in enumerate(rows):
            tokens, sizes, labels = expected[i]
            torch.testing.assert_close(out.clips[b].double(), _unit(tokens), rtol=1e-4, atol=1e-5)
            assert out.clip_key_bias[b].tolist() == pytest.approx([math.log(s) for s in sizes], abs=1e-6)
        # CBVA merges the transformed (128-bin) frames again: the same merge sizes from the binned scales
        again = plugin._merge(out.frames, out.frames_mask, out.frame_scales)
        torch.testing.assert_close(again.sizes.log(), out.clip_key_bias, rtol=0, atol=1e-6)
    # the evaluator hands the scales on too: its encodings are those of the raw-feature merge above
    from trainables.evaluation.evaluate import encode_videos

    model = TrainConfig.from_dict(_msc_config("gmmformer2")).build_model(Dims(6, 5)).eval()
    with torch.no_grad():
        encoded = encode_videos(model, split, torch.device("cpu"), 8)
        reference = model._encode_videos(model.transform_videos(VideoInputs.from_batch(eval_batch)))
    for key, value in reference.items():
        torch.testing.assert_close(encoded[key], value, rtol=1e-5, atol=1e-6)
