"""AMDNet (IEEE TMM'25, ``songpipi/AMDNet``): learnable span anchors and masked multi-moment attention.

Architecture (``Models/gmmformer/model.py``, ``model_components_new.py`` of the release):

* **Query**: the input projection only, LinearLayer(Dq -> H), applied to the CLIP sentence vector.
  The release's data has one sentence vector per query (stored here as a 1-token query). For
  multi-token datasets (e.g. RoBERTa tokens) ``query_pooling`` says how one vector is formed from
  the projected tokens: ``"first"`` (the first token), ``"mean"`` (masked mean) or ``"attention"``
  (learned masked attention pooling, one extra Linear(H, 1)). With one token all three equal the
  release's projection of the sentence vector, and the parameter count is the release's unless
  ``"attention"`` is chosen.
* **Video**: 32 clips -> projection -> learned positional encoding = X (B, 32, H), then one block:
  1. span anchors: v = Linear(LayerNorm(mean over clips of X)) (the global video vector),
     [c_k, w_k] = sigmoid(Linear(v)) for k = 1..K (``event_size``);
  2. moment masks m_k(n) = Gaussian over linspace(0, 1, 32) with centre c_k and sigma = w_k / 9
     (w clamped at 0.01), divided by its maximum -> M (B, K, 32); moment features = M X (B, K, H),
     with the peak-1 masks as released (not renormalised; only cosines of them are used);
  3. masked multi-moment attention: o0 = BertAttention(X); o1 = BertAttention(o0) whose head k has its
     logits multiplied by m_k over the key axis (hence ``n_heads`` == ``event_size``);
     tokens = (o0 + o1) / 2.
* **Score** = max over the 32 tokens of cos(query, token). Clip-scale only: frames are ignored,
  ``alpha`` and ``margin`` are unused, and ``fused`` == ``clip``.
* **Loss** = nce_weight * clip_nce(max over tokens of the raw dot products)
  + div_weight * L_div(M, div_target) + rel_weight * L_rel(q, v, M X, margin=rel_margin), no triplet.

Release defects not reproduced: the missing ``NeXtVLAD`` import, the dead
``generate_gauss_weight(self.map_size, ...)`` line, the 6-vs-4 unpack in validation, hard-coded
``.cuda()``, and ``.squeeze()`` calls that drop the batch axis of a 1-video batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trainables.errors import InputError
from trainables.losses.moment import moment_diversity, moment_relevance
from trainables.losses.ranking import clip_nce
from trainables.losses.terms import CLIP_NCE, MOMENT_DIVERSITY, MOMENT_RELEVANCE
from trainables.models.base import Backbone, BackboneConfig, Dims, LossContext, Tensors, VideoInputs, register
from trainables.models.components import (
    AttentionPooling,
    BertAttention,
    LinearLayer,
    TrainablePositionalEncoding,
    init_weights,
)

if TYPE_CHECKING:
    from trainables.models.base import TrainingHooks

QUERY_POOLINGS = ("first", "mean", "attention")
MIN_WIDTH = 0.01  # the release clamps the sigmoid width at 1e-2 before dividing by 9
WIDTH_DIVISOR = 9.0  # sigma = width / 9, as in GMMFormer's Gaussian windows


def gaussian_moment_masks(centres: torch.Tensor, widths: torch.Tensor, length: int) -> torch.Tensor:
    """Peak-1 Gaussian masks over ``length`` positions linspace(0, 1): (..., K) centres/widths -> (..., K, length).

    Same values as the release (pdf divided by its max over the positions), computed in log space:
    the release's exp underflows to 0/0 = NaN when a very narrow Gaussian falls between two positions.
    """
    positions = torch.linspace(0.0, 1.0, length, device=centres.device, dtype=centres.dtype)
    sigma = widths.clamp(min=MIN_WIDTH).unsqueeze(-1) / WIDTH_DIVISOR
    log_pdf = -((positions - centres.unsqueeze(-1)) ** 2) / (2 * sigma**2)
    return (log_pdf - log_pdf.amax(dim=-1, keepdim=True)).exp()


class SpanAnchors(nn.Module):
    """Global video vector v = Linear(LayerNorm(mean of the tokens)) and K (centre, width) = sigmoid(Linear(v))."""

    def __init__(self, hidden_size: int, event_size: int):
        super().__init__()
        self.event_size = event_size
        self.norm = nn.LayerNorm(hidden_size)
        self.video = nn.Linear(hidden_size, hidden_size)
        self.anchors = nn.Linear(hidden_size, 2 * event_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(global (B, H), centres (B, K), widths (B, K)) of tokens ``x`` (B, L, H)."""
        global_video = self.video(self.norm(x.mean(dim=1)))
        # the release views the 2K outputs as K (centre, width) pairs: [c1, w1, c2, w2, ...]
        params = torch.sigmoid(self.anchors(global_video)).view(-1, self.event_size, 2)
        return global_video, params[..., 0], params[..., 1]


class MomentBlock(nn.Module):
    """The release's (misnamed) ``GMMBlock``: span anchors, moment masks/features, masked multi-moment attention."""

    def __init__(self, hidden_size: int, event_size: int, dropout: float):
        super().__init__()
        self.anchors = SpanAnchors(hidden_size, event_size)
        self.attn0 = BertAttention(hidden_size, event_size, dropout)
        self.attn1 = BertAttention(hidden_size, event_size, dropout)

    def forward(self, x: torch.Tensor) -> Tensors:
        """``x`` (B, L, H) -> clip_tokens (B, L, H), global (B, H), moments (B, K, H), moment_masks (B, K, L)."""
        global_video, centres, widths = self.anchors(x)
        masks = gaussian_moment_masks(centres.float(), widths.float(), x.shape[1]).to(x.dtype)
        moments = masks @ x  # peak-1 masks, not sum-normalised (as released)
        o0 = self.attn0(x)
        o1 = self.attn1(o0, logit_weights=masks.unsqueeze(2))  # head k's logits scaled by m_k over keys
        return {"clip_tokens": (o0 + o1) / 2, "global": global_video, "moments": moments, "moment_masks": masks}


def max_token_scores(queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(Nq, Nv) max over each video's tokens of query . token; ``queries`` (Nq, H), ``tokens`` (Nv, L, H).

    One (Nq, Nv * L) product, so memory is O(Nq x Nv x L).
    """
    nv, length, hidden = tokens.shape
    products = queries @ tokens.reshape(nv * length, hidden).t()
    return products.view(queries.shape[0], nv, length).amax(dim=-1)


@register("amdnet")
class AMDNet(Backbone):
    """AMDNet: sentence-vector query, one span-anchor / masked multi-moment block over 32 clips."""

    @dataclass(frozen=True)
    class Config(BackboneConfig):
        """AMDNet's TVR settings (``Configs/tvr.py``); ANet/Charades use hidden_size 256, nce_weight 0.02.

        ``alpha`` and ``margin`` are inherited but unused (clip score only, no triplet loss).
        ``rel_independent_dropout``: the release encodes the queries twice per step, so L_rel sees a
        different input-dropout draw than the NCE (True, as released); False reuses the NCE's queries.
        """

        hidden_size: int = 384
        n_heads: int = 4
        event_size: int = 4
        input_drop: float = 0.2
        drop: float = 0.2
        alpha: float = 1.0
        nce_weight: float = 0.04
        div_weight: float = 1.0
        div_target: float = 0.15
        rel_weight: float = 25.0
        rel_margin: float = 0.02
        rel_independent_dropout: bool = True
        query_pooling: str = "mean"

        def validate(self) -> None:
            if self.event_size < 1:
                raise InputError(f"event_size must be >= 1, got {self.event_size}")
            if self.n_heads != self.event_size:
                raise InputError(f"n_heads ({self.n_heads}) must equal event_size ({self.event_size}): "
                                 f"head k of the masked attention uses moment mask k")
            super().validate()
            for key in ("nce_weight", "div_weight", "div_target", "rel_weight", "rel_margin"):
                if getattr(self, key) < 0:
                    raise InputError(f"{key} must be >= 0, got {getattr(self, key)}")
            if self.query_pooling not in QUERY_POOLINGS:
                raise InputError(f"query_pooling must be one of {', '.join(QUERY_POOLINGS)}, "
                                 f"got {self.query_pooling!r}")
            if self.map_size > self.max_ctx_l:
                raise InputError(f"map_size {self.map_size} exceeds max_ctx_l {self.max_ctx_l} (positional table)")

    config: Config
    training_defaults: ClassVar[dict[str, Any]] = {
        "lr": 3e-4, "epochs": 200, "patience": 15, "hard_negative_start_epoch": 0, "seed": 9527, "batch_size": 128,
    }

    def __init__(self, config: Config, dims: Dims) -> None:
        super().__init__(config, dims)
        c = config
        self.query_proj = LinearLayer(dims.query_dim, c.hidden_size, dropout=c.input_drop)
        self.query_pool = AttentionPooling(c.hidden_size) if c.query_pooling == "attention" else None
        self.clip_proj = LinearLayer(dims.video_dim, c.hidden_size, dropout=c.input_drop)
        self.clip_pos = TrainablePositionalEncoding(c.max_ctx_l, c.hidden_size, c.input_drop)
        self.block = MomentBlock(c.hidden_size, c.event_size, c.drop)
        init_weights(self)

    # -- encoders ----------------------------------------------------------------------------------
    #: clip tokens, the global vector and the span-anchor moment masks; clip-only (no frame-scale score)
    features = frozenset({"query", "clip_tokens", "global", "moment_masks"})

    def _encode_videos(self, inputs: VideoInputs) -> Tensors:
        """32 clips -> clip_tokens (B, 32, H), global (B, H), moments (B, K, H), moment_masks (B, K, 32); frames
        unused."""
        return self.block(self.clip_pos(self.clip_proj(inputs.clips)))

    def _encode_queries(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> Tensors:
        """One vector per query (Nq, H): projected tokens pooled by ``query_pooling``."""
        projected = self.query_proj(tokens)  # (Nq, T, H)
        pooling = self.config.query_pooling
        if pooling == "first":
            query = projected[:, 0]
        elif pooling == "mean":
            mask = tokens_mask.to(projected.dtype).unsqueeze(-1)
            query = (projected * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        else:
            assert self.query_pool is not None
            query = self.query_pool(projected, tokens_mask.to(projected.dtype))
        return {"query": query}

    # -- scores and losses -------------------------------------------------------------------------
    def _score(self, queries: Tensors, videos: Tensors) -> Tensors:
        """Max over each video's 32 tokens of cos(query, token); ``fused`` is the same matrix."""
        clip = max_token_scores(F.normalize(queries["query"], dim=-1), F.normalize(videos["clip_tokens"], dim=-1))
        return {"clip": clip, "fused": clip}

    def _training_losses(self, batch: Tensors, context: LossContext, hooks: TrainingHooks
                         ) -> tuple[Tensors, Tensors]:
        """Weighted clip NCE, moment diversity and moment relevance (no triplet; ``context`` unused).

        Checked against ``Losses/loss.py`` / ``model.py`` of the release: the NCE uses the raw
        (un-normalised) query . token products maxed over the 32 tokens; L_div uses the peak-1 masks
        normalised to sum 1; L_rel uses cosines with the global vector and the moment features.
        """
        c = self.config
        videos = self._encode_videos(VideoInputs.from_batch(batch))
        queries = hooks.encode_queries(batch["text_feat"], batch["text_mask"])
        query, labels = queries["query"], batch["text_labels"]
        nce = clip_nce(max_token_scores(query, videos["clip_tokens"]).float(), labels)
        div = moment_diversity(videos["moment_masks"].float(), c.div_target)
        rel_query = self._encode_queries(batch["text_feat"], batch["text_mask"])["query"] \
            if c.rel_independent_dropout and self.training else query
        rel = moment_relevance(rel_query.float(), videos["global"].float(), videos["moments"].float(), labels,
                               c.rel_margin)
        terms = {CLIP_NCE: c.nce_weight * nce, MOMENT_DIVERSITY: c.div_weight * div,
                 MOMENT_RELEVANCE: c.rel_weight * rel}
        return terms, {**videos, **queries}
