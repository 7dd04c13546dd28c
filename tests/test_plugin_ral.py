"""The ``ral`` plugin (RAL: MSRA proxy/KL losses + CSA confidence-gated frame score) against closed forms,
naive loop references, and the backbones it plugs into."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_chunked_evaluation_matches_full
from torch.distributions import Independent, Normal, kl_divergence

from trainables.data.loader import train_loader
from trainables.data.synthetic import ensure_synthetic
from trainables.losses.probabilistic import (
    distribution_alignment_loss,
    gaussian_kl,
    prior_kl,
    proxy_matching_loss,
    sample_proxies,
)
from trainables.models.base import BackboneConfig, Dims, LossContext
from trainables.plugins.ral import RAL, RALConfig, gate_weights, set_to_set_score
from trainables.training.config import TrainConfig
from trainables.training.loop import load_data, train

SMALL = {"hidden_size": 32, "n_heads": 4}
DIMS = Dims(video_dim=12, query_dim=10)
BACKBONE_OPTIONS = {"mssl": {}, "gmmformer": {}, "gmmformer2": {"max_ctx_l": 32}, "meanpool": {}}


@pytest.fixture(scope="module")
def tiny():
    return load_data(ensure_synthetic("tiny"))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def _diag(mu: torch.Tensor, log_std: torch.Tensor) -> Independent:
    return Independent(Normal(mu, log_std.exp()), 1)


# ------------------------------------------------------------------------------ L_DA

def test_clean_kl_terms_match_torch_distributions():
    g = _gen(0)
    mu, ls = _randn(g, 5, 7), _randn(g, 5, 7, scale=0.5)
    standard = _diag(torch.zeros_like(mu), torch.zeros_like(ls))
    torch.testing.assert_close(prior_kl(mu, ls), kl_divergence(_diag(mu, ls), standard))
    mu2, ls2 = _randn(g, 5, 7), _randn(g, 5, 7, scale=0.5)
    torch.testing.assert_close(gaussian_kl(mu, ls, mu2, ls2), kl_divergence(_diag(mu, ls), _diag(mu2, ls2)))

    # the whole clean L_DA: priors of 3 videos and 5 per-query text Gaussians + KL(text || its video)
    video_mu, video_ls = mu[:3], ls[:3]
    text_video = torch.tensor([0, 0, 1, 2, 2])
    standard_video = _diag(torch.zeros_like(video_mu), torch.zeros_like(video_ls))
    expected = (kl_divergence(_diag(video_mu, video_ls), standard_video).mean()
                + kl_divergence(_diag(mu2, ls2), standard).mean()
        + kl_divergence(_diag(mu2, ls2), _diag(video_mu[text_video], video_ls[text_video])).mean())
    proxies_v, proxies_t = _randn(g, 3, 4, 7), _randn(g, 5, 4, 7)
    got = distribution_alignment_loss(video_mu, video_ls, proxies_v, mu2, ls2, proxies_t, text_video, variant="clean")
    torch.testing.assert_close(got, expected)
    # clean uses mu, not the proxies
    again = distribution_alignment_loss(video_mu, video_ls, 5 + proxies_v, mu2, ls2, proxies_t - 3, text_video,
                                        variant="clean")
    torch.testing.assert_close(again, expected)


def test_as_released_terms_match_the_release_formulas():
    """A.3 transcribed: prior -1/2 sum(1 + ls - m^2 - e^ls) (ls as log-variance), cross KL with sigma = e^ls
    as a std, m = sample mean of the K proxies; each summed over dims, averaged over Gaussians."""
    g = _gen(1)
    b, k, d = 4, 6, 5
    mu_v, ls_v = _randn(g, b, d), _randn(g, b, d, scale=0.3)
    mu_t, ls_t = _randn(g, b, d), _randn(g, b, d, scale=0.3)
    z_v, z_t = _randn(g, b, k, d), _randn(g, b, k, d)
    expected = 0.0
    for i in range(b):
        mv, mt = z_v[i].sum(0) / k, z_t[i].sum(0) / k
        for dim in range(d):
            expected += -0.5 * (1 + ls_v[i, dim] - mv[dim] ** 2 - math.exp(ls_v[i, dim])) / b
            expected += -0.5 * (1 + ls_t[i, dim] - mt[dim] ** 2 - math.exp(ls_t[i, dim])) / b
            sigma_v, sigma_t = math.exp(ls_v[i, dim]), math.exp(ls_t[i, dim])
            expected += (ls_v[i, dim] - ls_t[i, dim] + (sigma_t ** 2 + (mt[dim] - mv[dim]) ** 2) / (2 * sigma_v ** 2)
                         - 0.5) / b
    got = distribution_alignment_loss(mu_v, ls_v, z_v, mu_t, ls_t, z_t, torch.arange(b), variant="as_released")
    assert got.item() == pytest.approx(float(expected), rel=1e-10)
    clean = distribution_alignment_loss(mu_v, ls_v, z_v, mu_t, ls_t, z_t, torch.arange(b), variant="clean")
    assert abs(clean.item() - got.item()) > 1e-3  # the variants really differ
    only_cross = distribution_alignment_loss(mu_v, ls_v, z_v, mu_t, ls_t, z_t, torch.arange(b), prior=False)
    cross = sum(float(gaussian_kl(z_t[i].mean(0), ls_t[i], z_v[i].mean(0), ls_v[i])) for i in range(b)) / b
    assert only_cross.item() == pytest.approx(cross, rel=1e-10)


def test_proxies_are_reparameterised_samples():
    mu, ls = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.0, -1.0, 0.7]])
    z = sample_proxies(mu, ls, 40000, _gen(2))
    assert z.shape == (1, 40000, 3)
    torch.testing.assert_close(z.mean(1), mu, atol=0.04, rtol=0)
    torch.testing.assert_close(z.std(1), ls.exp(), atol=0.04, rtol=0)
    torch.testing.assert_close(sample_proxies(mu, ls, 5, _gen(3)), sample_proxies(mu, ls, 5, _gen(3)))


# ------------------------------------------------------------------------------ L_PM

def _naive_bag_nce(logits: list[list[float]], positive) -> float:
    losses = []
    for i, row in enumerate(logits):
        cols = [j for j in range(len(row)) if positive(i, j)]
        if not cols:
            continue
        log_z = math.log(sum(math.exp(x) for x in row))
        losses.append(-sum(row[j] - log_z for j in cols) / len(cols))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("text_video", [[0, 1, 2], [0, 0, 1, 2, 2], [2, 0, 0]])
@pytest.mark.parametrize("cosine, temperature", [(False, 1.0), (True, 0.1)])
def test_proxy_matching_matches_a_naive_loop(text_video, cosine, temperature):
    """[0, 1, 2]: one text Gaussian per video (Kronecker positives); [0, 0, 1, 2, 2]: per query;
    [2, 0, 0]: video 1 has no text (its rows have no positive and are left out)."""
    g = _gen(4)
    k_v, k_t, d = 2, 3, 4
    zv, zt = _randn(g, 3, k_v, d), _randn(g, len(text_video), k_t, d)
    fv, ft = zv.reshape(-1, d), zt.reshape(-1, d)
    if cosine:
        fv, ft = F.normalize(fv, dim=-1), F.normalize(ft, dim=-1)
    s = [[float(fv[i] @ ft[j]) / temperature for j in range(len(ft))] for i in range(len(fv))]
    s_t = [list(col) for col in zip(*s)]
    v2t = _naive_bag_nce(s, lambda i, j: i // k_v == text_video[j // k_t])
    t2v = _naive_bag_nce(s_t, lambda i, j: text_video[i // k_t] == j // k_v)
    got = proxy_matching_loss(zv, zt, torch.tensor(text_video), temperature=temperature, cosine=cosine)
    assert got.item() == pytest.approx((v2t + t2v) / 2, rel=1e-10)


# ------------------------------------------------------------------------------ CSA

def _plugin(max_ctx_l: int = 128, **settings) -> RAL:
    torch.manual_seed(0)
    return RAL(RALConfig(**settings), BackboneConfig(hidden_size=16, n_heads=4, max_ctx_l=max_ctx_l), DIMS).eval()


def _masks(lengths: list[int], size: int) -> torch.Tensor:
    return (torch.arange(size)[None] < torch.tensor(lengths)[:, None]).float()


def test_gate_weights_are_a_softmax_over_valid_words():
    g = _gen(5)
    logits, mask = torch.randn(3, 6, generator=g), _masks([6, 2, 4], 6) > 0
    for temperature in (1.0, 0.5):
        w = gate_weights(logits, mask, temperature)
        torch.testing.assert_close(w.sum(1), torch.ones(3))
        assert (w[~mask] == 0).all() and (w[mask] > 0).all()
        for q in range(3):
            valid = logits[q][mask[q]] / temperature
            torch.testing.assert_close(w[q][mask[q]], valid.exp() / valid.exp().sum())
    changed = logits.masked_fill(~mask, 50.0)  # padded logits never matter
    torch.testing.assert_close(gate_weights(changed, mask), gate_weights(logits, mask))


def _csa_inputs(seed: int = 6):
    g = _gen(seed)
    words, words_mask = torch.randn(3, 5, 16, generator=g), _masks([5, 2, 3], 5)
    frames, frames_mask = torch.randn(4, 7, 16, generator=g), _masks([7, 1, 4, 6], 7)
    return words, words_mask, frames, frames_mask


def _naive_csa(plugin: RAL, words, words_mask, frames, frames_mask, normalize: bool, floor: int | None = None):
    """sum_t g_t max_j sim(w_t, f_j), g = softmax over valid words of gate(w) (the gate reads the scored
    tokens), by explicit loops over queries, videos, words and frames. ``floor`` P: the release's video
    zero-padded to P frames, i.e. P - valid extra frames of similarity 0 join the max."""
    out = torch.zeros(len(words), len(frames), dtype=torch.float64)
    for q in range(len(words)):
        valid_words = [t for t in range(words.shape[1]) if words_mask[q, t] > 0]
        tokens = {t: F.normalize(words[q, t], dim=0) if normalize else words[q, t] for t in valid_words}
        logits = {t: float(plugin.gate(tokens[t][None])[0]) for t in valid_words}
        z = sum(math.exp(x) for x in logits.values())
        for v in range(len(frames)):
            total = 0.0
            for t in valid_words:
                best = -math.inf
                valid = [j for j in range(frames.shape[1]) if frames_mask[v, j] > 0]
                for j in valid:
                    f = F.normalize(frames[v, j], dim=0) if normalize else frames[v, j]
                    best = max(best, float(tokens[t] @ f))
                if floor is not None and len(valid) < floor:
                    best = max(best, 0.0)
                if not valid:
                    best = 0.0
                total += math.exp(logits[t]) / z * best
            out[q, v] = total
    return out


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("floor, max_ctx_l", [(False, 128), (True, 128), (True, 7)])
def test_csa_score_matches_a_naive_loop(normalize, floor, max_ctx_l):
    """max_ctx_l 7: video 0 has all 7 frames (no floor), the others fewer; 128: every video is floored."""
    plugin = _plugin(max_ctx_l=max_ctx_l, frame_padding_floor=floor)
    words, words_mask, frames, frames_mask = _csa_inputs()
    with torch.no_grad():
        got = plugin.frame_score({"ral_words": words, "ral_words_mask": words_mask},
                                 {"frame_tokens": frames, "frame_mask": frames_mask}, normalize)
        expected = _naive_csa(plugin, words, words_mask, frames, frames_mask, normalize,
                              max_ctx_l if floor else None)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_frame_padding_floor_is_the_default_and_follows_max_ctl_not_the_batch():
    """One word, one video whose every frame is anti-aligned with it: all similarities are negative.
    The release pads the video to 128 frames and multiplies by the mask, so its score is 0 (the padded
    zeros win the max), whatever the batch's padding; with the floor off, or a video as long as max_ctx_l,
    it is the best (negative) valid similarity."""
    assert RALConfig().frame_padding_floor is True
    word = torch.tensor([[[1.0, 2.0, 0.0, -1.0] * 4]])  # (1, 1, 16)
    frames = torch.stack([-word[0, 0] * s for s in (1.0, 0.5, 2.0)])[None]  # (1, 3, 16), no padding in the batch
    frames_mask = torch.ones(1, 3)
    inputs = ({"ral_words": word, "ral_words_mask": torch.ones(1, 1)},
              {"frame_tokens": frames, "frame_mask": frames_mask})
    best_dot = -0.5 * float(word[0, 0] @ word[0, 0])  # the least negative dot product
    with torch.no_grad():
        for normalize, best in ((True, -1.0), (False, best_dot)):
            assert _plugin().frame_score(*inputs, normalize).item() == 0.0  # default: floored (3 < 128)
            floored_off = _plugin(frame_padding_floor=False).frame_score(*inputs, normalize).item()
            assert floored_off == pytest.approx(best, rel=1e-5)
            full_length = _plugin(max_ctx_l=3).frame_score(*inputs, normalize).item()  # nothing padded in the release
            assert full_length == pytest.approx(best, rel=1e-5)


def test_csa_padding_has_no_weight_and_no_effect():
    plugin = _plugin()
    words, words_mask, frames, frames_mask = _csa_inputs()
    with torch.no_grad():
        weights = plugin.gate_weights(words, words_mask, normalize=True)
        torch.testing.assert_close(weights.sum(1), torch.ones(3))
        assert (weights[words_mask == 0] == 0).all()
        g = _gen(7)
        noisy_words = torch.where(words_mask[..., None] > 0, words, 100 * torch.randn(words.shape, generator=g))
        noisy_frames = torch.where(frames_mask[..., None] > 0, frames, 100 * torch.randn(frames.shape, generator=g))
        for normalize in (True, False):
            clean = plugin.frame_score({"ral_words": words, "ral_words_mask": words_mask},
                                       {"frame_tokens": frames, "frame_mask": frames_mask}, normalize)
            noisy = plugin.frame_score({"ral_words": noisy_words, "ral_words_mask": words_mask},
                                       {"frame_tokens": noisy_frames, "frame_mask": frames_mask}, normalize)
            torch.testing.assert_close(noisy, clean, rtol=0, atol=1e-6)


def test_csa_chunked_scoring_equals_unchunked():
    words, words_mask, frames, frames_mask = _csa_inputs()
    weights = torch.softmax(torch.randn(3, 5, generator=_gen(8)), -1) * words_mask
    frames = torch.cat([frames, frames.flip(0), frames[:1]])  # 9 videos
    frames_mask = torch.cat([frames_mask, frames_mask.flip(0), frames_mask[:1]]) > 0
    full = set_to_set_score(words, weights, frames, frames_mask, block=1 << 30)
    for block in (1, 3 * 5 * 7 * 2, 3 * 5 * 7 * 4):  # 1, 2 and 4 videos per block
        torch.testing.assert_close(set_to_set_score(words, weights, frames, frames_mask, block=block), full,
                                   rtol=0, atol=1e-6)


def test_valid_pooling_gaussians_equal_the_explicit_concatenated_sets():
    """``msra_pooling = valid``: the segment-softmax pools over a video's queries equal pooling the
    explicitly concatenated valid word tokens of its queries (the release's support set, without its
    padding); per_query pools each query; the video pools take the valid frames."""
    g = _gen(9)
    words, words_mask = torch.randn(5, 4, 16, generator=g), _masks([4, 2, 3, 1, 4], 4)
    labels = torch.tensor([1, 0, 1, 1, 0])
    frames, frames_mask = torch.randn(2, 6, 16, generator=g), _masks([6, 3], 6)

    def head_on_set(head, pooled: torch.Tensor, x: torch.Tensor):
        def pool(p):
            a = torch.softmax(p.w2(torch.tanh(p.w1(x))).squeeze(-1), dim=0)
            return (a[:, None] * x).sum(0)
        mu = F.normalize(head.mean_norm(pooled + torch.sigmoid(head.mean_fc(pool(head.mean_pool)))), dim=0)
        return mu, head.sigma_fc(pool(head.sigma_pool)) + head.sigma_fc_pooled(pooled)

    for unit in ("support_set", "per_query"):
        plugin = _plugin(unit=unit, msra_pooling="valid")
        with torch.no_grad():
            mu, ls, owner = plugin.text_distribution(words, words_mask, labels, 2)
            groups = [[1, 4], [0, 2, 3]] if unit == "support_set" else [[q] for q in range(5)]
            assert owner.tolist() == ([0, 1] if unit == "support_set" else labels.tolist())
            for row, queries in enumerate(groups):
                x = torch.cat([words[q][words_mask[q] > 0] for q in queries])
                exp_mu, exp_ls = head_on_set(plugin.text_gaussian, x.mean(0), x)
                torch.testing.assert_close(mu[row], exp_mu, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(ls[row], exp_ls, rtol=1e-5, atol=1e-6)
            vmu, vls = plugin.video_distribution(frames, frames_mask)
            for v in range(2):
                x = frames[v][frames_mask[v] > 0]
                pooled = F.normalize(F.normalize(x, dim=-1).mean(0), dim=0)
                exp_mu, exp_ls = head_on_set(plugin.video_gaussian, pooled, x)
                torch.testing.assert_close(vmu[v], exp_mu, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(vls[v], exp_ls, rtol=1e-5, atol=1e-6)


def _loop_pool(pool, slots: list[torch.Tensor]) -> torch.Tensor:
    """softmax_j(w2 tanh(w1 x_j)) weighted sum over the given slot vectors, by a plain loop (float64)."""
    w1, w2 = pool.w1.weight.double(), pool.w2.weight.double()
    logits = [float(w2 @ torch.tanh(w1 @ x.double())) for x in slots]
    top = max(logits)
    weights = [math.exp(v - top) for v in logits]
    return sum(w * x.double() for w, x in zip(weights, slots)) / sum(weights)


def _loop_head(head, pooled: torch.Tensor, slots: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """PIENet mean and UncertaintyModuleImage log-sigma, from their weights, over explicit slots."""
    def linear(layer, x):
        return layer.weight.double() @ x + layer.bias.double()
    pooled = pooled.double()
    residual = torch.sigmoid(linear(head.mean_fc, _loop_pool(head.mean_pool, slots)))
    norm = head.mean_norm
    x = pooled + residual
    x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + norm.eps) * norm.weight.double() + norm.bias.double()
    return F.normalize(x, dim=0), linear(head.sigma_fc, _loop_pool(head.sigma_pool, slots)) \
        + linear(head.sigma_fc_pooled, pooled)


def _perturbed(plugin: RAL) -> RAL:
    """Random LayerNorm and bias values too, so that no parameter sits at a value that hides a mistake."""
    g = _gen(21)
    with torch.no_grad():
        for parameter in plugin.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=g))
    return plugin


@pytest.mark.parametrize("support_slots", [26, 2])
def test_padded_pooling_equals_the_release_zero_padded_sets(support_slots):
    """The release's MSRA pools, transcribed: a video is zero-padded to max_ctx_l frames (padding frames are
    zero vectors) and pooled without a mask; a video's support set is the concatenation of its queries'
    full T-position encodings (padding positions included, as encoded) zero-filled to support_slots x T
    rows, pooled without a mask. The means stay masked. support_slots 2: video 1 has 3 queries, so no
    zero rows (the release would fail there)."""
    g = _gen(20)
    max_ctx_l, t = 9, 4
    words, words_mask = torch.randn(5, t, 16, generator=g), _masks([4, 2, 3, 1, 4], t)
    labels = torch.tensor([1, 0, 1, 1, 0])
    frames, frames_mask = torch.randn(2, 6, 16, generator=g), _masks([6, 3], 6)  # noise at the padding
    plugin = _perturbed(_plugin(max_ctx_l=max_ctx_l, support_slots=support_slots))
    assert plugin.config.msra_pooling == "padded"  # the default
    zero = torch.zeros(16)
    with torch.no_grad():
        mu, ls, owner = plugin.text_distribution(words, words_mask, labels, 2)
        assert owner.tolist() == [0, 1]
        for video, queries in enumerate([[1, 4], [0, 2, 3]]):
            rows = [words[q, j] for q in queries for j in range(t)]
            rows += [zero] * max(0, support_slots * t - len(rows))
            valid = [words[q, j] for q in queries for j in range(t) if words_mask[q, j] > 0]
            exp_mu, exp_ls = _loop_head(plugin.text_gaussian, sum(valid) / len(valid), rows)
            torch.testing.assert_close(mu[video].double(), exp_mu, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ls[video].double(), exp_ls, rtol=1e-5, atol=1e-6)
        vmu, vls = plugin.video_distribution(frames, frames_mask)
        for v in range(2):
            valid = [frames[v, j] for j in range(6) if frames_mask[v, j] > 0]
            slots = valid + [zero] * (max_ctx_l - len(valid))
            pooled = F.normalize(sum(F.normalize(x, dim=0) for x in valid) / len(valid), dim=0)
            exp_mu, exp_ls = _loop_head(plugin.video_gaussian, pooled, slots)
            torch.testing.assert_close(vmu[v].double(), exp_mu, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(vls[v].double(), exp_ls, rtol=1e-5, atol=1e-6)
        # per_query (not released): each query's T positions, no zero rows
        per_query = _perturbed(_plugin(max_ctx_l=max_ctx_l, unit="per_query"))
        mu, ls, _ = per_query.text_distribution(words, words_mask, labels, 2)
        for q in range(5):
            valid = [words[q, j] for j in range(t) if words_mask[q, j] > 0]
            exp_mu, exp_ls = _loop_head(per_query.text_gaussian, sum(valid) / len(valid), list(words[q]))
            torch.testing.assert_close(mu[q].double(), exp_mu, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ls[q].double(), exp_ls, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ the frame-branch encoder

def _layer_norm(x: torch.Tensor, norm) -> torch.Tensor:
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps) \
        * norm.weight.detach().double() + norm.bias.detach().double()


def test_query_encoder_is_the_release_post_ln_layer():
    """From the weights, by hand (eval mode, float64): LN -> Linear -> ReLU projection, + position table,
    LN; 4-head attention (softmax of q.k / sqrt(d) - 1e4 on padded keys, no output projection);
    x1 = LN1(x + attention); out = LN2(x1 + W2 ReLU(W1 x1 + b1) + b2) with W1: H -> 4H."""
    plugin = _perturbed(_plugin())
    enc = plugin.query_encoder
    g = _gen(22)
    tokens, mask = torch.randn(3, 5, DIMS.query_dim, generator=g), _masks([5, 2, 3], 5)
    assert enc.layer.ffn[0].weight.shape == (64, 16) and enc.layer.ffn[3].weight.shape == (16, 64)

    def linear(layer, x):
        return x @ layer.weight.detach().double().t() + layer.bias.detach().double()

    x = torch.relu(linear(enc.proj.linear, _layer_norm(tokens.double(), enc.proj.norm)))
    x = _layer_norm(x + enc.pos.position_embeddings.weight.detach().double()[:5], enc.pos.norm)
    attention = enc.layer.attention
    q, k, v = linear(attention.query, x), linear(attention.key, x), linear(attention.value, x)
    out = torch.zeros_like(x)
    for n in range(3):
        for head in range(4):
            cols = slice(4 * head, 4 * head + 4)
            for i in range(5):
                logits = [float(q[n, i, cols] @ k[n, j, cols]) / 2.0 + (0.0 if mask[n, j] > 0 else -1e4)
                          for j in range(5)]
                top = max(logits)
                weights = [math.exp(a - top) for a in logits]
                out[n, i, cols] = sum(w * v[n, j, cols] for j, w in enumerate(weights)) / sum(weights)
    x1 = _layer_norm(x + out, enc.layer.norm1)
    expected = _layer_norm(x1 + linear(enc.layer.ffn[3], torch.relu(linear(enc.layer.ffn[0], x1))), enc.layer.norm2)
    with torch.no_grad():
        torch.testing.assert_close(enc(tokens, mask).double(), expected, rtol=1e-5, atol=1e-5)


def test_gmmformer2_with_ral_parameter_count_at_tvr_dims():
    """Counted from the module shapes (video 3072, query 768, hidden 384, 30 words, 128 frames, 32 clips).
    Reference: the release's RAL4GMMV2 at these dims has 35,529,377 parameters (counted on
    ``zhanglong-ustc/RAL-PRVR`` ``src/Models/RAL4gmmv2/model.py`` built with ``src/Configs/tvr.py``);
    ours has exactly its frame-branch query encoder's own position table more (30 x 384 + LayerNorm 768 =
    12,288; the release shares the clip branch's), i.e. 0.035 % more."""
    h, video, query, words, frames, clips = 384, 3072, 768, 30, 128, 32

    def linear(a: int, b: int) -> int:
        return a * b + b

    def norm(a: int) -> int:
        return 2 * a

    def projection(a: int) -> int:  # LinearLayer: LayerNorm(a) + Linear(a, H)
        return norm(a) + linear(a, h)

    def positions(length: int) -> int:
        return length * h + norm(h)

    def post_ln(ffn: int) -> int:  # q, k, v + FFN + 2 LayerNorms
        return 3 * linear(h, h) + linear(h, ffn) + linear(ffn, h) + 2 * norm(h)

    def dygmm_block(length: int) -> int:  # 8 branches (FFN 4H), consolidation (FFN H), weight head
        return 8 * post_ln(4 * h) + post_ln(h) + linear(h, h) + linear(h, length)

    backbone = (projection(query) + positions(words) + post_ln(4 * h) + h  # query branch + pooling score
                + projection(video) + positions(frames) + dygmm_block(clips)
                + projection(video) + positions(frames) + dygmm_block(frames) + h)  # + the weight token
    gaussian_head = 2 * (h * (h // 2) + (h // 2)) + 3 * linear(h, h) + norm(h)  # 2 pools, 3 FCs, LayerNorm
    ral = (projection(query) + positions(words) + post_ln(4 * h)) + 2 * gaussian_head \
        + linear(h, h) + linear(h, 1)  # + the confidence gate
    model = TrainConfig.from_dict({"backbone": "gmmformer2", "ral": True}).build_model(
        Dims(video_dim=video, query_dim=query), seed=0)
    assert sum(p.numel() for p in model.parameters()) == backbone + ral
    assert sum(p.numel() for p in model.plugins["ral"].parameters()) == ral
    release = 35_529_377
    assert backbone + ral - positions(words) == release
    assert abs(backbone + ral - release) / release < 1e-3


# ------------------------------------------------------------------------------ on the backbones

def _build(backbone: str, dims: Dims, plugin: dict | None, seed: int = 0, **options):
    raw = {"backbone": backbone, **SMALL, **BACKBONE_OPTIONS[backbone], **options}
    if plugin is not None:
        raw.update({"ral": True, **{f"ral.{k}": v for k, v in plugin.items()}})
    torch.manual_seed(seed)
    return TrainConfig.from_dict(raw).build_model(dims).eval()


def _eval_inputs(dims: Dims):
    g = _gen(10)
    lengths, tokens = [20, 9, 14, 3], [6, 2, 5]
    frames_mask, text_mask = _masks(lengths, max(lengths)), _masks(tokens, max(tokens))
    clips = torch.randn(len(lengths), 32, dims.video_dim, generator=g)
    frames = torch.randn(len(lengths), max(lengths), dims.video_dim, generator=g) * frames_mask[..., None]
    text = torch.randn(len(tokens), max(tokens), dims.query_dim, generator=g) * text_mask[..., None]
    return clips, frames, frames_mask, text, text_mask


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.parametrize("backbone", ["mssl", "gmmformer", "gmmformer2", "meanpool"])
def test_msra_adds_nothing_at_inference(backbone):
    # the same fusion weight (ral's release default alpha on gmmformer2 is 0.5, see test_plugins.py)
    plain, with_ral = _build(backbone, DIMS, None, alpha=0.6), _build(backbone, DIMS, {"csa": False}, alpha=0.6)
    state = with_ral.state_dict()
    for key, value in plain.state_dict().items():  # same seed -> same backbone weights
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    clips, frames, frames_mask, text, text_mask = _eval_inputs(DIMS)
    with torch.no_grad():
        videos = plain.encode_videos(clips, frames, frames_mask)
        videos_ral = with_ral.encode_videos(clips, frames, frames_mask)
        queries, queries_ral = plain.encode_queries(text, text_mask), with_ral.encode_queries(text, text_mask)
        _assert_same(videos, videos_ral)
        _assert_same(queries, queries_ral)
        _assert_same(plain.score(queries, videos), with_ral.score(queries_ral, videos_ral))


@pytest.mark.parametrize("backbone", ["mssl", "gmmformer", "gmmformer2"])
def test_csa_is_the_frame_branch_at_inference(backbone):
    plain, model = _build(backbone, DIMS, None), _build(backbone, DIMS, {})
    plugin = model.plugins["ral"]
    clips, frames, frames_mask, text, text_mask = _eval_inputs(DIMS)
    with torch.no_grad():
        videos, queries = model.encode_videos(clips, frames, frames_mask), model.encode_queries(text, text_mask)
        scores = model.score(queries, videos)
        words = plugin.query_encoder(text, text_mask)
        torch.testing.assert_close(queries["ral_words"], words)
        expected = _naive_csa(plugin, words, text_mask, videos["frame_tokens"], videos["frame_mask"], normalize=True,
                              floor=model.config.max_ctx_l)  # the default floor, at the release's padding
        torch.testing.assert_close(scores["frame"].double(), expected, rtol=1e-5, atol=1e-5)
        own = plain.score(plain.encode_queries(text, text_mask), plain.encode_videos(clips, frames, frames_mask))
        torch.testing.assert_close(scores["clip"], own["clip"], rtol=0, atol=0)
        alpha = model.config.alpha
        torch.testing.assert_close(scores["fused"], alpha * scores["clip"] + (1 - alpha) * scores["frame"])


@pytest.mark.parametrize("backbone", [
    "mssl",
    "gmmformer",  # v1 cuts frames to each batch's longest video: its kept frame tokens are padded back
    "gmmformer2",
])
def test_chunked_evaluation_with_csa_equals_one_full_matrix(tiny, backbone):
    model = _build(backbone, tiny.dims, {})
    assert "frame" in assert_chunked_evaluation_matches_full(model, tiny.val)


@pytest.mark.parametrize("backbone, settings", [
    ("mssl", {}),
    ("gmmformer", {"unit": "per_query", "da_variant": "clean"}),
    ("gmmformer2", {"dim": 16, "gate_input": "raw"}),
    ("meanpool", {"csa": False}),
])
def test_training_losses_and_gradients(tiny, backbone, settings):
    model = _build(backbone, tiny.dims, settings).train()
    plugin = model.plugins["ral"]
    calls = []
    plugin.query_encoder.register_forward_hook(lambda *args: calls.append(1))
    batch = next(iter(train_loader(tiny.train, 16, seed=0)))
    context = LossContext(epoch=0, hard_negatives=False, hard_pool_size=20, generator=_gen(11))
    terms = model.training_losses(batch, context)
    assert {"ral.pm", "ral.da"} <= terms.keys()
    assert all(torch.isfinite(v) for v in terms.values())
    assert len(calls) == 1  # CSA and MSRA share one pass of the word encoder (MSRA alone: its own pass)
    assert not any(isinstance(v, torch.Tensor) for v in vars(plugin).values())  # nothing kept after the step
    torch.stack(list(terms.values())).sum().backward()
    for name, parameter in plugin.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    if settings.get("csa", True):
        assert plugin.gate is not None
    else:
        assert plugin.gate is None and not plugin.replaces_frame_score


@pytest.mark.parametrize("backbone", ["mssl", "gmmformer", "gmmformer2"])
def test_one_epoch_on_tiny(tiny, backbone):
    config = {"backbone": backbone, "ral": True, "epochs": 1, "batch_size": 16, "lr": 1e-3, "seed": 3,
              **SMALL, **BACKBONE_OPTIONS[backbone]}
    result = train(config, tiny)
    losses = result.history[0]["loss"]
    assert {"ral.pm", "ral.da", "frame_nce"} <= losses.keys()
    assert all(math.isfinite(v) for v in losses.values())
    assert losses["ral.pm"] > 0 and losses["ral.da"] > 0
    assert math.isfinite(result.test["fused"]["SumR"])


# ------------------------------------------------------------------------------ configs

def test_backbones_without_what_ral_needs_are_rejected():
    with pytest.raises(ValueError, match=r"plugin ral cannot run on backbone amdnet: MSRA builds its video Gaussians "
                                         r"from encoded frame tokens \(frame_tokens\), which amdnet does not have"):
        TrainConfig.from_dict({"backbone": "amdnet", "ral": True, "ral.csa": False})
    with pytest.raises(ValueError, match=r"plugin ral cannot run on backbone meanpool with ral.csa true: CSA replaces "
                                         r"the frame-scale score \(frame_score\), which meanpool does not have; "
                                         r"set ral.csa false to train with MSRA only"):
        TrainConfig.from_dict({"backbone": "meanpool", "ral": True})
    TrainConfig.from_dict({"backbone": "meanpool", "ral": True, "ral.csa": False})  # MSRA only is fine


def test_needs_follow_csa():
    assert RAL.needs(RALConfig()) == {"frame_tokens", "frame_score"}
    assert RAL.needs(RALConfig(csa=False)) == {"frame_tokens"}  # MSRA, training features only
    assert RAL.inference_needs(RALConfig()) == {"frame_tokens", "frame_score"}
    assert RAL.inference_needs(RALConfig(csa=False)) == frozenset()


@pytest.mark.parametrize("key, value, message", [
    ("k", 0, r"plugin ral: k must be in \[1, inf\], got 0"),
    ("k", 2.5, r"plugin ral: k must be an integer, got 2.5"),
    ("pm_weight", -1e-3, r"plugin ral: pm_weight must be in \[0.0, inf\]"),
    ("pm_weight", "1e-3", r"plugin ral: pm_weight must be a finite number, got '1e-3'"),
    ("gate_temperature", float("nan"), r"plugin ral: gate_temperature must be a finite number"),
    ("da_weight", -1.0, r"plugin ral: da_weight must be in \[0.0, inf\]"),
    ("gate_temperature", 0.0, r"plugin ral: gate_temperature must be in \(0.0, inf\]"),
    ("pm_temperature", -1.0, r"plugin ral: pm_temperature must be in \(0.0, inf\]"),
    ("da_variant", "code_faithful", r"plugin ral: da_variant must be one of as_released, clean, got 'code_faithful'"),
    ("unit", "video", r"plugin ral: unit must be one of support_set, per_query, got 'video'"),
    ("gate_input", "x", r"plugin ral: gate_input must be one of scored, raw"),
    ("dim", 0, r"plugin ral: dim must be in \[1, inf\]"),
    ("csa", "yes", r"plugin ral: csa must be true or false, got 'yes'"),
    ("msra_pooling", "masked", r"plugin ral: msra_pooling must be one of padded, valid, got 'masked'"),
    ("support_slots", 0, r"plugin ral: support_slots must be in \[1, inf\], got 0"),
    ("support_slots", 2.0, r"plugin ral: support_slots must be an integer, got 2.0"),
    ("da_prior", False, None),
])
def test_bad_settings_name_the_key(key, value, message):
    raw = {"backbone": "mssl", "ral": True, f"ral.{key}": value}
    if message is None:  # one part of L_DA off is fine, both off with a weight is not
        TrainConfig.from_dict(raw)
        with pytest.raises(ValueError, match=r"da_prior and da_cross are both false"):
            TrainConfig.from_dict({**raw, "ral.da_cross": False})
        TrainConfig.from_dict({**raw, "ral.da_cross": False, "ral.da_weight": 0.0})
        return
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(raw)
