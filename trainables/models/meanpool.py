"""Plain text-to-video retrieval baseline: one vector per video, one per query, cosine score.

The reference point for the PRVR backbones (it ignores that a query matches only part of a video):

* **Video**: frames -> projection -> learned positions -> one BertAttention (masked) -> masked mean
  over the valid frames (``pooling="mean"``) or attention pooling (``pooling="attention"``) -> v.
* **Query**: TokenEncoder + attention pooling -> q, as in MS-SL.
* **Score**: cos(q, v); ``score`` returns it as ``fused`` (the only branch).
* **Loss**: ``frame_triplet`` = the MS-SL clip-scale triplet loss on the cosine scores (random, then hard
  negatives) and ``frame_nce`` = nce_weight (0.02) x the multi-positive InfoNCE on the raw dot products
  q . v, i.e. exactly MS-SL's clip-branch objective with the 528 proposals replaced by one whole-video
  vector, so differences to MS-SL measure the multi-scale/partial-relevance modelling alone. They are
  named as frame-scale terms (``trainables.losses.terms``): v is pooled from the frame tokens, as
  GMMFormer v1's frame-branch vector, whose losses have the same form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from trainables.errors import InputError
from trainables.losses.ranking import clip_nce, clip_triplet
from trainables.losses.terms import FRAME_NCE, FRAME_TRIPLET
from trainables.models.base import Backbone, BackboneConfig, Dims, LossContext, Tensors, VideoInputs, register
from trainables.models.components import AttentionPooling, TokenEncoder, cosine, init_weights
from trainables.models.mssl import MSSL

if TYPE_CHECKING:
    from trainables.models.base import TrainingHooks

POOLINGS = ("mean", "attention")


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, H) mean of the valid tokens of (N, L, H) ``tokens`` under a 0/1 (N, L) ``mask``."""
    weights = mask.to(tokens.dtype)
    return torch.einsum("nl,nlh->nh", weights, tokens) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


@register("meanpool")
class MeanPool(Backbone):
    """Whole-video embedding baseline (see the module docstring)."""

    @dataclass(frozen=True)
    class Config(BackboneConfig):
        """MS-SL's TVR settings; ``alpha`` and ``map_size`` are unused (single branch)."""

        margin: float = 0.1
        nce_weight: float = 0.02
        pooling: str = "mean"

        def validate(self) -> None:
            super().validate()
            if self.nce_weight < 0:
                raise InputError(f"nce_weight must be >= 0, got {self.nce_weight}")
            if self.pooling not in POOLINGS:
                raise InputError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")

    training_defaults = MSSL.training_defaults  # MS-SL's training recipe: the baseline differs only in its model

    config: Config

    def __init__(self, config: Config, dims: Dims) -> None:
        super().__init__(config, dims)
        c, h = config, config.hidden_size
        self.query_encoder = TokenEncoder(dims.query_dim, h, c.n_heads, c.max_desc_l, c.input_drop, c.drop)
        self.query_pool = AttentionPooling(h)
        self.video_encoder = TokenEncoder(dims.video_dim, h, c.n_heads, c.max_ctx_l, c.input_drop, c.drop)
        self.video_pool = AttentionPooling(h) if c.pooling == "attention" else None
        init_weights(self)

    #: frame tokens, their mask and the whole-video vector; no clip tokens and no frame-scale score
    features = frozenset({"query", "frame_tokens", "global"})

    def _tokens(self, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoded frames (V, L, H), pooled video vector (V, H))."""
        tokens = self.video_encoder(frames, mask)
        return tokens, self.video_pool(tokens, mask) if self.video_pool is not None else masked_mean(tokens, mask)

    def _encode_videos(self, inputs: VideoInputs) -> Tensors:
        """{"video": (V, H)} one vector per video (the clip features are not used)."""
        return {"video": self._tokens(inputs.frames, inputs.frames_mask)[1]}

    def _encode_queries(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> Tensors:
        """{"query": (Nq, H)} attention-pooled query vectors."""
        return {"query": self.query_pool(self.query_encoder(tokens, tokens_mask), tokens_mask)}

    def _score(self, queries: Tensors, videos: Tensors) -> Tensors:
        """{"fused": (Nq, V) cosine scores}."""
        return {"fused": cosine(queries["query"], videos["video"])}

    def _training_losses(self, batch: Tensors, context: LossContext, hooks: TrainingHooks
                         ) -> tuple[Tensors, Tensors]:
        """{"frame_nce", "frame_triplet"} weighted loss terms of one batch."""
        tokens, v = self._tokens(batch["frame_video_features"], batch["videos_mask"])
        queries = hooks.encode_queries(batch["text_feat"], batch["text_mask"])
        q, labels = queries["query"], batch["text_labels"]
        trip = clip_triplet(cosine(q, v), labels, self.config.margin, context.hard_negatives,
                            context.hard_pool_size, context.generator)
        terms = {FRAME_NCE: self.config.nce_weight * clip_nce(q @ v.t(), labels), FRAME_TRIPLET: trip}
        return terms, {**queries, "frame_tokens": tokens, "frame_mask": batch["videos_mask"], "global": v}
