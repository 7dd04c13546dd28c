"""Loss weights, margins and targets: each default pinned to the release's value, and each loss term a
model or plugin reports equal to that weight times the unweighted loss recomputed here by a plain loop.

The unweighted losses are recomputed from the inputs the model hands to the loss functions (recorded by a
wrapper): the NCE, relevance, diversity, L_PM, L_DA and RKD terms by loops written in this file (or in
``test_plugin_msc``), the rest (query diversity, optimal matching, CBVA) by the recorded output of their
function, each checked against its own loop elsewhere (``test_gmmformer``, ``test_plugin_msc``). The
weights in the expected values are literals with the release file they come from, so a changed default
(e.g. RAL ``pm_weight`` x10, moment ``rel_margin`` x10, MSC ``alpha_d`` / 10, a swapped ``loss_factor``)
fails here. Not pinned here (another change sets them): ``msc.teacher``, ``msc.tome``,
``ral.frame_padding_floor`` and RAL's pooling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from test_plugin_msc import _naive_rkd
from test_ranking_reference import reference_clip_nce

from trainables.data.loader import train_loader
from trainables.data.synthetic import ensure_synthetic
from trainables.models.base import Dims, LossContext, create_backbone
from trainables.plugins.moment import MomentConfig
from trainables.plugins.msc import MSCConfig
from trainables.plugins.ral import RALConfig
from trainables.training.config import TrainConfig
from trainables.training.loop import DataSplits, load_data

SMALL = {"hidden_size": 32, "n_heads": 4}
REL = 1e-5


@pytest.fixture(scope="module")
def tiny() -> DataSplits:
    return load_data(ensure_synthetic("tiny"))


# --------------------------------------------------------------------------- pinned defaults

def test_backbone_loss_defaults_are_the_releases():
    dims = Dims(12, 10)
    mssl = create_backbone("mssl", dims, **SMALL).config
    # HuiGuanLab/ms-sl method/model.py:102,106 (0.02 * clip NCE, 0.04 * frame NCE); do_tvr.sh margin 0.1
    assert (mssl.clip_nce_weight, mssl.resolved_frame_nce_weight, mssl.margin) == (0.02, 0.04, 0.1)
    # HuiGuanLab/ms-sl-pp method/model.py:103,107 (0.02 / 0.03)
    pp = create_backbone("mssl", dims, cluster_num=5, **SMALL).config
    assert (pp.clip_nce_weight, pp.resolved_frame_nce_weight) == (0.02, 0.03)
    # huangmozhi9527/GMMFormer src/Configs/tvr.py:44 loss_factor [0.05, 0.04, 0.001]; margin 0.1
    g1 = create_backbone("gmmformer", dims, **SMALL).config
    assert (g1.loss_factor, g1.margin, g1.qdl_alpha, g1.qdl_delta) == ((0.05, 0.04, 0.001), 0.1, 32.0, 0.15)
    # huangmozhi9527/GMMFormer_v2 src/Configs/tvr.py:48 loss_factor [0.05, 0.04, 8e-5, 0.09]
    g2 = create_backbone("gmmformer2", dims, **SMALL).config
    assert (g2.loss_factor, g2.margin) == ((0.05, 0.04, 8e-5, 0.09), 0.1)
    # songpipi/AMDNet Configs/tvr.py:49 loss_factor [0.04, 1]; Losses/loss.py:32 lambda 0.15, :50 rank x 25;
    # Models/gmmformer/model.py:103 margin_1 = 0.02
    amd = create_backbone("amdnet", dims, **SMALL).config
    assert (amd.nce_weight, amd.div_weight, amd.div_target, amd.rel_weight, amd.rel_margin) == \
        (0.04, 1.0, 0.15, 25.0, 0.02)


def test_plugin_loss_defaults_are_the_releases():
    ral = RALConfig()
    # zhanglong-ustc/RAL-PRVR src/Losses/loss.py:100-101 (MIL_loss = 4e-3 *, vib_loss = 2.5e-4 *);
    # the README's "lambda3 = 0.001" for L_DA disagrees with the code: the code's value is the default
    assert (ral.pm_weight, ral.da_weight, ral.k, ral.da_variant) == (4e-3, 2.5e-4, 6, "as_released")
    assert (ral.pm_temperature, ral.pm_cosine) == (1.0, False)  # src/Models/RAL4gmmv2 MILNCELoss_BoF: raw dots
    moment = MomentConfig()
    # songpipi/AMDNet Losses/loss.py:32,50 and Models/gmmformer/model.py:103
    assert (moment.div_weight, moment.div_target, moment.rel_weight, moment.rel_margin) == (1.0, 0.15, 25.0, 0.02)
    msc = MSCConfig()
    # admins97/MSC_PRVR README.md:26 (tvr: --rkd_d_coef 15 --rkd_a_coef 30 --vl_coef 0.1 --sim_thr 0.8);
    # src/main.py:29-30 defaults 10 / 20 disagree: the README's commands are the released runs
    assert (msc.alpha_d, msc.alpha_a, msc.cbva_weight, msc.cbva_temperature, msc.sim_thr) == (15.0, 30.0, 0.1, 1.0, 0.8)


# --------------------------------------------------------------------------- recording the loss inputs

def record(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[tuple[tuple, dict, torch.Tensor]]:
    """Wrap ``module.name`` so that each call's (args, kwargs, output) is kept, in call order."""
    calls: list[tuple[tuple, dict, torch.Tensor]] = []
    original: Callable = getattr(module, name)

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((args, kwargs, out.detach()))
        return out

    monkeypatch.setattr(module, name, wrapper)
    return calls


def one_step(tiny: DataSplits, raw: dict, videos: int = 16) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = TrainConfig.from_dict({**SMALL, **raw}).build_model(tiny.dims).train()  # as in training: dropout on
    batch = next(iter(train_loader(tiny.train, videos, seed=0)))
    context = LossContext(epoch=0, hard_negatives=False, hard_pool_size=20, generator=torch.Generator().manual_seed(1),
                          plugin_generators={name: torch.Generator().manual_seed(2) for name in model.plugins})
    with torch.no_grad():
        return model, model.training_losses(batch, context)


def naive_frame_nce(logits: torch.Tensor) -> float:
    """mean_i [log sum over row i and column i (2N entries) of exp - Z_ii]."""
    z = logits.double().tolist()
    n = len(z)
    return sum(math.log(sum(math.exp(x) for x in z[i] + [z[j][i] for j in range(n)])) - z[i][i]
               for i in range(n)) / n


def naive_two_way_nce(logits: torch.Tensor) -> float:
    """mean_i [lse row i - Z_ii] + mean_i [lse column i - Z_ii]."""
    z = logits.double().tolist()
    n = len(z)
    rows = sum(math.log(sum(math.exp(x) for x in z[i])) - z[i][i] for i in range(n)) / n
    cols = sum(math.log(sum(math.exp(z[j][i]) for j in range(n))) - z[i][i] for i in range(n)) / n
    return rows + cols


def naive_nce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return sum(reference_clip_nce(logits.double().tolist(), labels.tolist()))


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a.double(), b.double()) / (a.double().norm() * b.double().norm()))


def naive_relevance(queries, global_video, moments, labels, margin: float) -> float:
    """AMDNet's relevance: mean_q max(0, margin + cos(q, global_y) - max_k cos(q, moment_y,k))."""
    total = 0.0
    for q, y in zip(queries, labels.tolist()):
        total += max(0.0, margin + cos(q, global_video[y]) - max(cos(q, m) for m in moments[y]))
    return total / len(queries)


def naive_diversity(masks: torch.Tensor, target: float) -> float:
    """mean_b sum_{k,l} (G_b G_b^T - target I)_{kl}^2 with each mask row normalised to sum 1."""
    total = 0.0
    for video in masks.double().tolist():
        rows = [[x / sum(r) for x in r] for r in video]
        for k, a in enumerate(rows):
            for j, b in enumerate(rows):
                total += (sum(x * y for x, y in zip(a, b)) - (target if k == j else 0.0)) ** 2
    return total / len(masks)


# --------------------------------------------------------------------------- backbones

def test_mssl_terms_are_the_release_weights_times_the_losses(tiny, monkeypatch):
    import trainables.models.mssl as mssl

    nce, fnce = record(monkeypatch, mssl, "clip_nce"), record(monkeypatch, mssl, "frame_nce")
    _, terms = one_step(tiny, {"backbone": "mssl"})
    (raw, labels), _, _ = nce[0]
    assert terms["clip_nce"].item() == pytest.approx(0.02 * naive_nce(raw, labels), rel=REL)
    assert terms["frame_nce"].item() == pytest.approx(0.04 * naive_frame_nce(fnce[0][0][0]), rel=REL)


def test_mssl_pp_terms_are_the_release_weights_times_the_losses(tiny, monkeypatch):
    import trainables.models.mssl as mssl

    nce, two_way = record(monkeypatch, mssl, "clip_nce"), record(monkeypatch, mssl, "two_way_nce")
    _, terms = one_step(tiny, {"backbone": "mssl", "cluster_num": 5})
    (raw, labels), _, _ = nce[0]
    assert terms["clip_nce"].item() == pytest.approx(0.02 * naive_nce(raw, labels), rel=REL)
    assert terms["frame_nce"].item() == pytest.approx(0.03 * naive_two_way_nce(two_way[0][0][0]), rel=REL)


def test_gmmformer_terms_are_the_loss_factor_times_the_losses(tiny, monkeypatch):
    import trainables.models.components as components
    import trainables.models.gmmformer as gmm

    nce, qdl = record(monkeypatch, components, "clip_nce"), record(monkeypatch, gmm, "query_diverse_loss")
    _, terms = one_step(tiny, {"backbone": "gmmformer"})
    assert len(nce) == 2  # clip branch first, then frame branch
    clip_loss, frame_loss = (naive_nce(*call[0]) for call in nce)
    assert clip_loss != pytest.approx(frame_loss, rel=1e-3)  # a swap of the two weights would show
    # huangmozhi9527/GMMFormer src/Configs/tvr.py:44 loss_factor [0.05, 0.04, 0.001]
    assert terms["clip_nce"].item() == pytest.approx(0.05 * clip_loss, rel=REL)
    assert terms["frame_nce"].item() == pytest.approx(0.04 * frame_loss, rel=REL)
    assert qdl[0][2].item() > 0 and terms["qdl"].item() == pytest.approx(0.001 * qdl[0][2].item(), rel=REL)


def test_gmmformer2_terms_are_the_loss_factor_times_the_losses(tiny, monkeypatch):
    import trainables.models.components as components
    import trainables.models.gmmformer2 as gmm2

    nce = record(monkeypatch, components, "clip_nce")  # ranking_terms, shared by v1 and v2
    qdl = record(monkeypatch, gmm2, "revamped_query_diverse_loss")
    om = record(monkeypatch, gmm2, "optimal_matching_loss")
    _, terms = one_step(tiny, {"backbone": "gmmformer2"})
    assert len(nce) == 2
    clip_loss, frame_loss = (naive_nce(*call[0]) for call in nce)
    assert clip_loss != pytest.approx(frame_loss, rel=1e-3)
    # huangmozhi9527/GMMFormer_v2 src/Configs/tvr.py:48 loss_factor [0.05, 0.04, 8e-5, 0.09]
    assert terms["clip_nce"].item() == pytest.approx(0.05 * clip_loss, rel=REL)
    assert terms["frame_nce"].item() == pytest.approx(0.04 * frame_loss, rel=REL)
    assert terms["qdl"].item() == pytest.approx(8e-5 * qdl[0][2].item(), rel=REL)
    assert terms["om"].item() == pytest.approx(0.09 * om[0][2].item(), rel=REL)


def test_amdnet_terms_are_the_release_weights_times_the_losses(monkeypatch):
    from test_amdnet import context, make_batch, small

    import trainables.models.amdnet as amd

    nce, div = record(monkeypatch, amd, "clip_nce"), record(monkeypatch, amd, "moment_diversity")
    rel = record(monkeypatch, amd, "moment_relevance")
    torch.manual_seed(0)
    model = small().eval()
    with torch.no_grad():
        terms = model.training_losses(make_batch(num_videos=4, per_video=3), context())
    (raw, labels), _, _ = nce[0]
    assert terms["clip_nce"].item() == pytest.approx(0.04 * naive_nce(raw, labels), rel=REL)
    assert terms["moment.div"].item() == pytest.approx(1.0 * naive_diversity(div[0][0][0], 0.15), rel=REL)
    q, global_video, moments, rel_labels = rel[0][0][:4]
    expected = naive_relevance(q, global_video, moments, rel_labels, 0.02)
    assert expected != pytest.approx(naive_relevance(q, global_video, moments, rel_labels, 0.2), rel=1e-3)
    assert terms["moment.rel"].item() == pytest.approx(25.0 * expected, rel=REL, abs=1e-7)


# --------------------------------------------------------------------------- plugins

def naive_bag_nce(logits: list[list[float]], positive: Callable[[int, int], bool]) -> float:
    """mean over rows with a positive of -(1/|P|) sum_{j in P} log softmax(row)_j."""
    losses = []
    for i, row in enumerate(logits):
        cols = [j for j in range(len(row)) if positive(i, j)]
        if cols:
            top = max(row)
            log_z = top + math.log(sum(math.exp(x - top) for x in row))
            losses.append(-sum(row[j] - log_z for j in cols) / len(cols))
    return sum(losses) / len(losses)


def naive_pm(video_proxies: torch.Tensor, text_proxies: torch.Tensor, text_video: list[int]) -> float:
    """RAL's L_PM: bag NCE of raw proxy dot products, video->text and text->video, averaged."""
    k_v, k_t = video_proxies.shape[1], text_proxies.shape[1]
    fv = video_proxies.reshape(-1, video_proxies.shape[-1]).double()
    ft = text_proxies.reshape(-1, text_proxies.shape[-1]).double()
    s = (fv @ ft.t()).tolist()
    s_t = [list(col) for col in zip(*s)]
    v2t = naive_bag_nce(s, lambda i, j: i // k_v == text_video[j // k_t])
    t2v = naive_bag_nce(s_t, lambda i, j: text_video[i // k_t] == j // k_v)
    return (v2t + t2v) / 2


def naive_da_as_released(mu_v, ls_v, z_v, mu_t, ls_t, z_t, text_video: list[int]) -> float:
    """RAL's L_DA as released (A.3): prior KLs with log-sigma as a log-variance on the proxies' mean,
    cross KL(text || its video) with sigma = exp(log-sigma) as a std; summed over dims, averaged."""
    ls_v, ls_t = ls_v.double().tolist(), ls_t.double().tolist()
    mv = z_v.double().mean(dim=1).tolist()
    mt = z_t.double().mean(dim=1).tolist()

    def prior(mean, ls):
        return sum(-0.5 * (1 + s - m * m - math.exp(s)) for m, s in zip(mean, ls))

    total = sum(prior(mv[b], ls_v[b]) for b in range(len(mv))) / len(mv)
    total += sum(prior(mt[g], ls_t[g]) for g in range(len(mt))) / len(mt)
    cross = 0.0
    for g, v in enumerate(text_video):
        for d in range(len(mt[g])):
            sv, st = math.exp(ls_v[v][d]), math.exp(ls_t[g][d])
            cross += ls_v[v][d] - ls_t[g][d] + (st ** 2 + (mt[g][d] - mv[v][d]) ** 2) / (2 * sv ** 2) - 0.5
    return total + cross / len(text_video)


def test_ral_terms_are_the_release_weights_times_the_losses(tiny, monkeypatch):
    import trainables.plugins.ral as ral

    pm = record(monkeypatch, ral, "proxy_matching_loss")
    da = record(monkeypatch, ral, "distribution_alignment_loss")
    _, terms = one_step(tiny, {"backbone": "mssl", "ral": True})
    video_proxies, text_proxies, text_video = pm[0][0][:3]
    # zhanglong-ustc/RAL-PRVR src/Losses/loss.py:100 MIL_loss = 4e-3 * L_PM
    assert terms["ral.pm"].item() == pytest.approx(4e-3 * naive_pm(video_proxies, text_proxies, text_video.tolist()),
                                                   rel=REL)
    mu_v, ls_v, z_v, mu_t, ls_t, z_t, tv = da[0][0][:7]
    # src/Losses/loss.py:101 vib_loss = 2.5e-4 * L_DA
    expected = naive_da_as_released(mu_v, ls_v, z_v, mu_t, ls_t, z_t, tv.tolist())
    assert terms["ral.da"].item() == pytest.approx(2.5e-4 * expected, rel=REL)


def test_moment_plugin_terms_are_the_release_weights_times_the_losses(tiny, monkeypatch):
    import trainables.plugins.moment as moment

    div, rel = record(monkeypatch, moment, "moment_diversity"), record(monkeypatch, moment, "moment_relevance")
    _, terms = one_step(tiny, {"backbone": "mssl", "moment": True})
    assert terms["moment.div"].item() == pytest.approx(1.0 * naive_diversity(div[0][0][0], 0.15), rel=REL)
    q, global_video, moments, labels = rel[0][0][:4]
    expected = naive_relevance(q, global_video, moments, labels, 0.02)  # AMDNet model.py:103 margin_1 = 0.02
    assert expected != pytest.approx(naive_relevance(q, global_video, moments, labels, 0.2), rel=1e-3)
    assert terms["moment.rel"].item() == pytest.approx(25.0 * expected, rel=REL, abs=1e-7)


def test_msc_terms_are_the_release_weights_times_the_losses(tiny, monkeypatch):
    import trainables.plugins.msc as msc

    dist, angle = record(monkeypatch, msc, "rkd_distance"), record(monkeypatch, msc, "rkd_angle")
    cbva: list[float] = []
    original = msc.MSC.cbva

    def recording_cbva(self, features, batch):
        out = original(self, features, batch)
        cbva.append(float(out))
        return out

    monkeypatch.setattr(msc.MSC, "cbva", recording_cbva)
    _, terms = one_step(tiny, {"backbone": "gmmformer", "msc": True}, videos=4)
    student, teacher = dist[0][0][:2]
    torch.testing.assert_close(angle[0][0][0], student)
    torch.testing.assert_close(angle[0][0][1], teacher)
    d, a = _naive_rkd(student, teacher)
    # admins97/MSC_PRVR README.md:26 --rkd_d_coef 15 --rkd_a_coef 30 --vl_coef 0.1
    assert terms["msc.rkd_distance"].item() == pytest.approx(15.0 * d, rel=1e-4)
    assert terms["msc.rkd_angle"].item() == pytest.approx(30.0 * a, rel=1e-4)
    assert cbva[0] > 0 and terms["msc.cbva"].item() == pytest.approx(0.1 * cbva[0], rel=REL)
