"""RAL: Robust Alignment Learning (Zhang et al., EMNLP'25 Findings; ``zhanglong-ustc/RAL-PRVR``).

Two parts (spec ``plugins.md`` section A), both fed by the plugin's own frame-branch query encoder (the
release's ``frame_branch_query_proj`` + ``frame_branch_query_encoder``, ``src/Models/RAL4gmmv2/model.py``):
projection (LayerNorm -> Dropout -> Linear -> ReLU) -> learned positions (+ LayerNorm, Dropout) -> one
post-LN Transformer layer (``components.PostLNLayer``: attention -> Dropout -> LayerNorm(residual) ->
feed-forward H -> 4H -> H -> Dropout -> LayerNorm(residual)), applied to the raw token features; it gives
(Nq, T, H) word tokens at every position, padding included.

* **MSRA** (training only, ``losses``): diagonal Gaussians for videos and queries, K proxies each.

  - Video Gaussian from the encoded frames F (+ mask): p_v = L2(masked mean of L2(F));
    mu = L2(LayerNorm(p_v + sigmoid(FC(attention pool(F))))) (PIENet with one embedding; the release's
    PIENet dropout is 0); log_sigma = FC(attention pool'(F)) + FC2(p_v) (UncertaintyModuleImage: a
    separate pool, unconstrained). The attention pools are softmax_tokens(W2 tanh(W1 x)) (no biases,
    hidden ``pool_hidden``, default d/2) over the token slots of ``msra_pooling`` (below).
  - Text Gaussian, ``unit = support_set`` (released): one per video, from the word tokens of all of the
    video's queries in the batch taken as one token set (p_t = masked mean of the set's valid words, not
    normalised); the set is never materialised: the pools are softmaxes over each video's tokens
    (segment softmax). ``unit = per_query``: one Gaussian per query from its own words; L_PM's positives
    of a video proxy are then the proxies of all its queries, and a query proxy's positives the K proxies
    of its video; the cross KL pairs each query with its video.
  - Proxies z = mu + exp(log_sigma) eps (K = ``k`` per Gaussian, not re-normalised); losses
    ``pm_weight * L_PM`` and ``da_weight * L_DA`` (``trainables/losses/probabilistic.py``; ``da_variant``
    ``as_released`` keeps the release's log-variance/log-std mix and sample means, ``clean`` uses mu and a
    log-std throughout). ``dim`` != hidden size projects the frame and word tokens (one Linear each).

  No inference cost: with ``csa`` off the plugin adds nothing to ``encode_queries``/``encode_videos``/
  ``score`` (and ``inference_needs`` is empty, so GMMFormer keeps no frame tokens at inference).
* **CSA** (``csa``, default on; training and inference, ``frame_score``): the backbone's frame-scale
  score becomes s(q, v) = sum_t g_t max_j sim(w_t, f_j) over valid words t and valid frames j (plus the
  floor of ``frame_padding_floor``), with confidences g = softmax_t(MLP(w_t) / ``gate_temperature``)
  over the valid words (MLP = Linear(H, gate_hidden) -> ReLU -> Linear(gate_hidden, 1));
  ``normalize=False`` gives the dot-product version (frame NCE), ``normalize=True`` the cosine one
  (frame triplet and inference). Scored in blocks of videos so (queries x videos x words x frames)
  never exists for a whole corpus.

Release behaviours and how this port treats them (default = the release; the clean variants are named
options):

* ``msra_pooling = padded`` (default, released): the release's MSRA attention pools run without a padding
  mask over zero-padded sets. A video's pools see ``max_ctx_l`` frame slots (the release pads every video
  to 128): its valid encoded frames, then zero vectors. A video's support set has ``support_slots`` x T
  word slots (26 x T, hard-coded in the release): each of its queries' T positions, the encoder's
  outputs at the query's padding positions included, then zero vectors. A zero slot has attention logit
  0 (the pools have no biases) and value 0, so it only adds exp(0) to the softmax's normaliser; it is
  counted, never materialised. Which lengths, for our batches: the frame slots are always the backbone's
  ``max_ctx_l`` whatever the batch's frame padding (so the video pools do not depend on the batch); T is
  the batch's query padding length (the loader pads a batch's queries to its longest, as the release's
  collate does), so the text pools depend on the batch's longest query, as released. A video with more
  than ``support_slots`` queries gets no zero slots (the release fails on it). With ``unit = per_query``
  (not in the release) a Gaussian pools its query's T positions, without zero slots. With ``dim`` !=
  hidden size the zero slots are zero vectors after the projection (the release has no projection).
  ``msra_pooling = valid`` (clean): the pools take the valid frames / words only, independent of padding.
  The means p_v and p_t are masked (valid tokens only) in both, as released.
* ``frame_padding_floor = true`` (default, released): the release multiplies CSA's similarities by the
  masks of its 128-frame padded videos, so padded frames join each word's max as 0: here a video with
  fewer valid frames than the backbone's ``max_ctx_l`` gets max(best valid similarity, 0) for each word,
  for the dot product (training) and the cosine (training and inference), whatever the batch's frame
  padding. ``false`` (clean): the max over valid frames only.
* ``gate_input = scored`` (default, released): the gate reads the tokens it scores, i.e. the
  L2-normalised words for the cosine score and the raw words for the dot-product score (the release calls
  one function on either); ``raw`` gates on the raw words in both.
* backbone option (``backbone_defaults``): on GMMFormer v2 the release fuses clip and frame scores
  0.5 / 0.5 (``src/Configs/tvr.py``: ``clip_scale_w``, ``frame_scale_w``), so ``gmmformer2`` + ``ral``
  gets ``alpha`` 0.5 unless ``alpha`` is set; other backbones keep their own default.
* deviation, not an option: the release's frame-branch query encoder shares the positional table
  (``query_pos_embed``: Embedding(max_desc_l, H) + LayerNorm) of the clip-branch query encoder, so the
  frame branch's gradients also train the backbone's table; the plugin's encoder has its own (a plugin has
  no access to the backbone's modules, and some backbones have no such table). That is 12,288 parameters
  more at TVR dims (30 x 384 + 2 x 384): ``gmmformer2`` + ``ral`` has 35,541,665 against the release's
  RAL4GMMV2 35,529,377 (every release parameter takes part in its forward pass).

MSRA reuses the word tokens CSA computed in the same training step's ``encode_queries`` (one encoder
pass, one dropout draw, as released): they reach ``losses`` in the training features' query part; with
``csa`` off MSRA runs the encoder itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from trainables.errors import InputError
from trainables.losses.probabilistic import (
    DA_VARIANTS,
    distribution_alignment_loss,
    proxy_matching_loss,
    sample_proxies,
)
from trainables.losses.terms import RAL_DISTRIBUTION_ALIGNMENT, RAL_PROXY_MATCHING, term_in_plugin
from trainables.models.base import BackboneConfig, Dims, LossContext, Tensors
from trainables.models.components import LinearLayer, PostLNLayer, TrainablePositionalEncoding, init_weights
from trainables.plugins.base import Plugin, PluginConfig, check_choice, check_range, register_plugin

if TYPE_CHECKING:
    from trainables.models.base import Backbone

UNITS = ("support_set", "per_query")
GATE_INPUTS = ("scored", "raw")
POOLINGS = ("padded", "valid")
#: largest (queries x words x videos x frames) block of similarities materialised at once by CSA
CSA_BLOCK = 1 << 23
#: what CSA reads from the video encodings (kept at inference) and needs from the backbone
CSA_NEEDS = frozenset({"frame_tokens", "frame_score"})
WORDS, WORDS_MASK = "ral_words", "ral_words_mask"


@dataclass(frozen=True)
class RALConfig(PluginConfig):
    """RAL's settings; defaults are the release's (``src/Configs/tvr.py`` and ``model.py``)."""

    #: proxies sampled per Gaussian (video = text)
    k: int = 6
    #: weights of L_PM and L_DA (hard-coded in the release; the README says 1e-3 for L_DA)
    pm_weight: float = 4e-3
    da_weight: float = 2.5e-4
    da_variant: str = "as_released"
    #: text Gaussian per video's query set (released) or per query
    unit: str = "support_set"
    #: Gaussian dimension (None = the backbone's hidden size; another goes through a learned projection)
    dim: int | None = None
    #: hidden size of the attention pools of the Gaussian heads (None = dim // 2)
    pool_hidden: int | None = None
    #: L_PM logits = proxy dot products / pm_temperature (released: 1, un-normalised); pm_cosine normalises
    pm_temperature: float = 1.0
    pm_cosine: bool = False
    #: L_DA parts: the two prior KLs and the cross-modal KL(text || video)
    da_prior: bool = True
    da_cross: bool = True
    #: confidence-gated set-to-set frame score (training and inference)
    csa: bool = True
    #: hidden size of the gate MLP (None = the backbone's hidden size)
    gate_hidden: int | None = None
    gate_temperature: float = 1.0
    gate_input: str = "scored"
    #: released: padded frames count as similarity 0 in CSA's max for videos shorter than max_ctx_l
    frame_padding_floor: bool = True
    #: MSRA attention pools over the release's zero-padded slots (``padded``) or the valid tokens (``valid``)
    msra_pooling: str = "padded"
    #: query slots of the release's zero-padded support set (``padded`` pooling; 26 in the release's code)
    support_slots: int = 26

    def validate(self) -> None:
        for key in ("k", "dim", "pool_hidden", "gate_hidden", "support_slots"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"{key} must be an integer, got {value!r}")
        for key in ("pm_weight", "da_weight", "pm_temperature", "gate_temperature"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"{key} must be a finite number, got {value!r}")
        for key in ("pm_cosine", "da_prior", "da_cross", "csa", "frame_padding_floor"):
            if not isinstance(getattr(self, key), bool):
                raise InputError(f"{key} must be true or false, got {getattr(self, key)!r}")
        check_range(self, "k", 1)
        check_range(self, "support_slots", 1)
        for key in ("dim", "pool_hidden", "gate_hidden"):
            if getattr(self, key) is not None:
                check_range(self, key, 1)
        check_range(self, "pm_weight", 0.0)
        check_range(self, "da_weight", 0.0)
        check_range(self, "pm_temperature", 0.0, low_open=True)
        check_range(self, "gate_temperature", 0.0, low_open=True)
        check_choice(self, "da_variant", DA_VARIANTS)
        check_choice(self, "unit", UNITS)
        check_choice(self, "gate_input", GATE_INPUTS)
        check_choice(self, "msra_pooling", POOLINGS)
        if self.da_weight > 0 and not (self.da_prior or self.da_cross):
            raise InputError("da_prior and da_cross are both false but da_weight > 0 (set da_weight 0 to drop L_DA)")


# ---------------------------------------------------------------------------------------- MSRA parts

def grouped_masked_mean(tokens: torch.Tensor, mask: torch.Tensor, group: torch.Tensor,
                        groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((G, d) mean of the valid tokens of all rows of each group, (G,) their count); ``tokens`` (N, T, d),
    ``mask`` (N, T) bool, ``group`` (N,) the group of each row. Empty groups give 0."""
    weights = mask.to(tokens.dtype)
    per_row = torch.einsum("nt,ntd->nd", weights, tokens)
    sums = per_row.new_zeros(groups, per_row.shape[-1]).index_add_(0, group, per_row)
    counts = per_row.new_zeros(groups).index_add_(0, group, weights.sum(dim=1).to(per_row.dtype))
    return sums / counts.clamp_min(1.0)[:, None], counts


class SetAttentionPool(nn.Module):
    """PIENet's one-head self-attention pooling, softmax over tokens of W2 tanh(W1 x) (no biases), taken
    over the tokens of every row of a group together (a row = a video or a query), plus optional zero
    slots: a zero vector has logit 0 and value 0, so ``zero_slots`` only add exp(0) each to the
    normaliser (the release's unmasked pooling over zero padding)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, 1, bias=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, group: torch.Tensor, groups: int,
                zero_slots: torch.Tensor | None = None) -> torch.Tensor:
        """(G, d) pooled tokens of ``tokens`` (N, T, d) where ``mask`` (N, T) is true, row n in group
        ``group[n]``, plus ``zero_slots`` (G,) zero vectors per group; a group with nothing gives 0."""
        logits = self.w2(torch.tanh(self.w1(tokens))).squeeze(-1)  # (N, T)
        neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
        row_max = torch.where(mask, logits, neg_inf).amax(dim=1).detach()
        group_max = logits.new_full((groups,), float("-inf")).scatter_reduce(0, group, row_max, "amax")
        if zero_slots is not None:  # the zero slots' logit 0 joins the max
            group_max = torch.where(zero_slots > 0, group_max.clamp_min(0.0), group_max)
        group_max = torch.where(torch.isfinite(group_max), group_max, torch.zeros_like(group_max))
        weights = (logits - group_max[group][:, None]).masked_fill(~mask, float("-inf")).exp()  # (N, T)
        per_row = torch.einsum("nt,ntd->nd", weights, tokens)
        pooled = per_row.new_zeros(groups, per_row.shape[-1]).index_add_(0, group, per_row)
        total = per_row.new_zeros(groups).index_add_(0, group, weights.sum(dim=1).to(per_row.dtype))
        if zero_slots is not None:
            total = total + zero_slots.to(total.dtype) * torch.exp(-group_max)
        return pooled / total.clamp_min(torch.finfo(total.dtype).tiny)[:, None]


class GaussianHead(nn.Module):
    """One modality's Gaussian: mean = L2(LayerNorm(p + sigmoid(FC(pool(x))))) (PIENet), log-sigma =
    FC(pool'(x)) + FC2(p) (UncertaintyModuleImage), with two separate attention pools."""

    def __init__(self, dim: int, pool_hidden: int) -> None:
        super().__init__()
        self.mean_pool = SetAttentionPool(dim, pool_hidden)
        self.mean_fc = nn.Linear(dim, dim)
        self.mean_norm = nn.LayerNorm(dim)
        self.sigma_pool = SetAttentionPool(dim, pool_hidden)
        self.sigma_fc = nn.Linear(dim, dim)
        self.sigma_fc_pooled = nn.Linear(dim, dim)

    def forward(self, pooled: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, group: torch.Tensor,
                zero_slots: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu (G, d), log_sigma (G, d)) for ``pooled`` (G, d) and the groups' pooled slots (``tokens``
        (N, T, d) where ``mask`` (N, T), plus ``zero_slots`` (G,) zero vectors per group)."""
        groups = pooled.shape[0]
        residual = torch.sigmoid(self.mean_fc(self.mean_pool(tokens, mask, group, groups, zero_slots)))
        mu = F.normalize(self.mean_norm(pooled + residual), dim=-1)
        log_sigma = self.sigma_fc(self.sigma_pool(tokens, mask, group, groups, zero_slots)) \
            + self.sigma_fc_pooled(pooled)
        return mu, log_sigma


# ----------------------------------------------------------------------------------------- CSA parts

def gate_weights(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(Nq, T) softmax of ``logits / temperature`` over the valid words (``mask`` bool); padding gets exactly
    0 (its logits never enter the softmax), a query without valid words all zeros."""
    masked = (logits / temperature).masked_fill(~mask, torch.finfo(logits.dtype).min)
    return masked.softmax(dim=-1) * mask.to(logits.dtype)


def set_to_set_score(words: torch.Tensor, weights: torch.Tensor, frames: torch.Tensor, frames_mask: torch.Tensor,
                     *, normalize: bool = True, padded_length: int | None = None,
                     block: int = CSA_BLOCK) -> torch.Tensor:
    """(Nq, V) sum_t weights[q, t] * max_j sim(words[q, t], frames[v, j]) over the valid frames.

    ``words`` (Nq, T, H), ``weights`` (Nq, T) (0 on padded words), ``frames`` (V, L, H), ``frames_mask``
    (V, L) bool; sim is the cosine (``normalize``) or the dot product. ``padded_length`` P: a video with
    fewer than P valid frames also has padded frames of similarity 0 in each max, i.e. max(..., 0) (the
    release pads every video to P and masks by multiplication); None: valid frames only. Videos are scored
    in blocks of at most ``block`` similarities; a video without valid frames scores 0.
    """
    if normalize:
        words = F.normalize(words, dim=-1)
    nq, length, hidden = words.shape
    nv, frames_len = frames.shape[:2]
    flat_words = words.reshape(-1, hidden)
    step = max(1, block // max(1, nq * length * frames_len))
    floored = None if padded_length is None else frames_mask.sum(dim=1) < padded_length  # (V,)
    parts = []
    for start in range(0, nv, step):
        chunk, chunk_mask = frames[start:start + step], frames_mask[start:start + step]
        if normalize:
            chunk = F.normalize(chunk, dim=-1)
        sims = (flat_words @ chunk.reshape(-1, hidden).t()).view(nq, length, len(chunk), frames_len)
        # max(...).values keeps only the argmax for backward, so each block is freed after its forward
        best = sims.masked_fill(~chunk_mask[None, None], float("-inf")).max(dim=-1).values  # (Nq, T, v)
        if floored is not None:
            best = torch.where(floored[start:start + step][None, None], best.clamp_min(0.0), best)
        best = best.masked_fill(~chunk_mask.any(dim=1)[None, None], 0.0)
        parts.append(torch.einsum("qtv,qt->qv", best, weights.to(best.dtype)))
    return torch.cat(parts, dim=1) if parts else words.new_zeros(nq, 0)


class ConfidenceGate(nn.Module):
    """Per-word confidence logit: Linear(H, hidden) -> ReLU -> Linear(hidden, 1)."""

    def __init__(self, hidden_size: int, gate_hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden_size, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, 1))

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        return self.mlp(words).squeeze(-1)


# ----------------------------------------------------------------------------------------- the encoder

class FrameQueryEncoder(nn.Module):
    """The release's frame-branch query encoder: LinearLayer(query_dim -> H) -> learned positions ->
    PostLNLayer (attention, FFN H -> 4H -> H); (Nq, T, query_dim) -> (Nq, T, H), every position encoded."""

    def __init__(self, in_size: int, hidden_size: int, num_heads: int, max_positions: int,
                 input_drop: float, drop: float) -> None:
        super().__init__()
        self.proj = LinearLayer(in_size, hidden_size, dropout=input_drop)
        self.pos = TrainablePositionalEncoding(max_positions, hidden_size, input_drop)
        self.layer = PostLNLayer(hidden_size, num_heads, drop, 4 * hidden_size)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` (Nq, T, D), ``mask`` (Nq, T) 1 = valid word (masks the attention keys only)."""
        x = self.pos(self.proj(tokens))
        return self.layer(x, x, mask)


# ------------------------------------------------------------------------------------------ the plugin

@register_plugin("ral")
class RAL(Plugin):
    """RAL: MSRA (training-only Gaussian proxy losses) + CSA (confidence-gated word-to-frame score)."""

    Config = RALConfig
    config: RALConfig
    #: floats per similarity block of ``frame_score`` (32 MB in float32)
    score_block: int = CSA_BLOCK
    #: the release's TVR fusion on GMMFormer v2: clip_scale_w = frame_scale_w = 0.5 (``src/Configs/tvr.py``)
    backbone_defaults = {"gmmformer2": {"alpha": 0.5}}

    def __init__(self, config: RALConfig, backbone: BackboneConfig, dims: Dims) -> None:
        super().__init__(config, backbone, dims)
        h = backbone.hidden_size
        dim = config.dim if config.dim is not None else h
        pool_hidden = config.pool_hidden if config.pool_hidden is not None else max(1, dim // 2)
        #: frame slots of the release's zero-padded videos (MSRA's padded pools, CSA's padding floor)
        self.padded_frames = backbone.max_ctx_l
        self.query_encoder = FrameQueryEncoder(dims.query_dim, h, backbone.n_heads, backbone.max_desc_l,
                                               backbone.input_drop, backbone.drop)
        self.video_proj: nn.Module = nn.Identity() if dim == h else nn.Linear(h, dim)
        self.text_proj: nn.Module = nn.Identity() if dim == h else nn.Linear(h, dim)
        self.video_gaussian = GaussianHead(dim, pool_hidden)
        self.text_gaussian = GaussianHead(dim, pool_hidden)
        self.gate = ConfidenceGate(h, config.gate_hidden if config.gate_hidden is not None else h) \
            if config.csa else None
        init_weights(self)  # the release re-initialises every Linear N(0, 0.02), zero bias

    # -- what it needs ------------------------------------------------------------------------------
    @classmethod
    def needs(cls, config: RALConfig) -> frozenset[str]:  # type: ignore[override]
        """MSRA reads the training features' frame tokens; CSA also replaces the frame score."""
        return CSA_NEEDS if config.csa else frozenset({"frame_tokens"})

    @classmethod
    def inference_needs(cls, config: RALConfig) -> frozenset[str]:  # type: ignore[override]
        """What the video encodings keep at inference: CSA's frame tokens; nothing with ``csa`` off."""
        return CSA_NEEDS if config.csa else frozenset()

    @classmethod
    def check(cls, config: RALConfig, backbone: type[Backbone]) -> None:  # type: ignore[override]
        name, has = backbone.name, backbone.features
        provides = ", ".join(sorted(has)) or "nothing"
        if "frame_tokens" not in has:
            raise InputError(f"plugin ral cannot run on backbone {name}: MSRA builds its video Gaussians from "
                             f"encoded frame tokens (frame_tokens), which {name} does not have ({name} provides: "
                             f"{provides})")
        if config.csa and "frame_score" not in has:
            raise InputError(f"plugin ral cannot run on backbone {name} with ral.csa true: CSA replaces the "
                             f"frame-scale score (frame_score), which {name} does not have; set ral.csa false "
                             f"to train with MSRA only")
        super().check(config, backbone)

    @property
    def replaces_frame_score(self) -> bool:
        return self.config.csa

    # -- CSA ----------------------------------------------------------------------------------------
    def query_features(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> Tensors:
        """{"ral_words": (Nq, T, H), "ral_words_mask": (Nq, T)} when CSA is on, else nothing."""
        if not self.config.csa:
            return {}
        return {WORDS: self.query_encoder(tokens, tokens_mask), WORDS_MASK: tokens_mask}

    def gate_weights(self, words: torch.Tensor, words_mask: torch.Tensor, normalize: bool) -> torch.Tensor:
        """(Nq, T) word confidences of the score with this ``normalize`` (the gate reads the scored tokens
        with ``gate_input = scored``)."""
        if self.gate is None:
            raise RuntimeError("ral.csa is off: the plugin has no confidence gate")
        read = F.normalize(words, dim=-1) if normalize and self.config.gate_input == "scored" else words
        return gate_weights(self.gate(read), words_mask > 0, self.config.gate_temperature)

    def frame_score(self, queries: Tensors, videos: Tensors, normalize: bool) -> torch.Tensor:
        words, words_mask = queries[WORDS], queries[WORDS_MASK]
        return set_to_set_score(words, self.gate_weights(words, words_mask, normalize), videos["frame_tokens"],
                                videos["frame_mask"] > 0, normalize=normalize,
                                padded_length=self.padded_frames if self.config.frame_padding_floor else None,
                                block=self.score_block)

    # -- MSRA ---------------------------------------------------------------------------------------
    def _words(self, features: Tensors, batch: Tensors) -> torch.Tensor:
        """This step's word tokens: CSA's (in the training features' query dict), else one encoder pass."""
        if WORDS in features:
            return features[WORDS]
        return self.query_encoder(batch["text_feat"], batch["text_mask"])

    def video_distribution(self, frames: torch.Tensor, frames_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_sigma), each (B, d), of each video's Gaussian from its encoded frames (B, L, H); the
        pools take the valid frames, plus ``max_ctx_l`` - valid zero slots with ``padded`` pooling."""
        tokens, mask = self.video_proj(frames), frames_mask > 0
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        mean, counts = grouped_masked_mean(F.normalize(tokens, dim=-1), mask, rows, tokens.shape[0])
        zero_slots = (self.padded_frames - counts).clamp_min(0.0) if self.config.msra_pooling == "padded" else None
        return self.video_gaussian(F.normalize(mean, dim=-1), tokens, mask, rows, zero_slots)

    def text_distribution(self, words: torch.Tensor, words_mask: torch.Tensor, labels: torch.Tensor,
                          num_videos: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, log_sigma, video of each Gaussian) of the text Gaussians of ``unit``, those without any
        valid word left out. ``words`` (Nq, T, H); the mean is over valid words; with ``padded`` pooling
        the pools take all T positions of each query plus, per support set, (``support_slots`` - its
        queries) x T zero slots."""
        tokens, mask = self.text_proj(words), words_mask > 0
        if self.config.unit == "support_set":
            group, groups = labels, num_videos
            owner = torch.arange(num_videos, device=labels.device)
        else:
            group, groups = torch.arange(tokens.shape[0], device=labels.device), tokens.shape[0]
            owner = labels
        pooled, counts = grouped_masked_mean(tokens, mask, group, groups)
        pool_mask, zero_slots = mask, None
        if self.config.msra_pooling == "padded":
            pool_mask = torch.ones_like(mask)
            if self.config.unit == "support_set":
                queries = torch.bincount(labels, minlength=num_videos).to(tokens.dtype)
                zero_slots = (self.config.support_slots - queries).clamp_min(0.0) * tokens.shape[1]
        mu, log_sigma = self.text_gaussian(pooled, tokens, pool_mask, group, zero_slots)
        keep = counts > 0
        return mu[keep], log_sigma[keep], owner[keep]

    def losses(self, features: Tensors, batch: Tensors, context: LossContext) -> Tensors:
        """{"pm": pm_weight * L_PM, "da": da_weight * L_DA} (terms with weight 0 are skipped)."""
        c = self.config
        if c.pm_weight == 0 and c.da_weight == 0:
            return {}
        words = self._words(features, batch)
        frames = features["frame_tokens"]
        video_mu, video_ls = self.video_distribution(frames, features["frame_mask"])
        text_mu, text_ls, text_video = self.text_distribution(words, batch["text_mask"], features["text_labels"],
                                                              frames.shape[0])
        video_mu, video_ls, text_mu, text_ls = (x.float() for x in (video_mu, video_ls, text_mu, text_ls))
        terms: Tensors = {}
        # the proxy logits and the exponentials of the KLs in float32, also under bf16 autocast
        with torch.autocast(device_type=video_mu.device.type, enabled=False):
            video_proxies = sample_proxies(video_mu, video_ls, c.k, context.generator)
            text_proxies = sample_proxies(text_mu, text_ls, c.k, context.generator)
            if c.pm_weight > 0:
                terms[term_in_plugin(RAL_PROXY_MATCHING)] = c.pm_weight * proxy_matching_loss(
                    video_proxies, text_proxies, text_video, temperature=c.pm_temperature, cosine=c.pm_cosine)
            if c.da_weight > 0:
                terms[term_in_plugin(RAL_DISTRIBUTION_ALIGNMENT)] = c.da_weight * distribution_alignment_loss(
                    video_mu, video_ls, video_proxies, text_mu, text_ls, text_proxies, text_video,
                    variant=c.da_variant, prior=c.da_prior, cross=c.da_cross)
        return terms


__all__ = ["RAL", "FrameQueryEncoder", "RALConfig", "gate_weights", "grouped_masked_mean", "set_to_set_score"]
