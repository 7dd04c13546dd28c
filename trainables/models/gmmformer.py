"""GMMFormer (Wang et al., AAAI'24): Gaussian-window attention for implicit clip modelling.

Reference: huangmozhi9527/GMMFormer, ``src/Models/gmmformer/`` and ``src/Losses/loss.py``.

* Text: projection -> positional encoding -> one BertAttention -> attention pooling (as MS-SL).
* GMMBlock: parallel BertAttention layers on the same input, averaged: one global and one per Gaussian
  width w, whose scaled attention logits are multiplied by a Gaussian window (``components.gaussian_window``)
  before masking and softmax.
* Clip branch: 32 clips -> projection -> positional encoding -> 2 GMMBlocks -> 32 tokens;
  S_c = max over tokens of cos(query, token).
* Frame branch: frames -> projection -> positional encoding -> 2 masked GMMBlocks -> attention pooling
  -> one vector per video; S_f = cos(query, vector).
* Losses: lambda1 NCE_c + Trip_c + lambda2 NCE_f + Trip_f + lambda3 QDL. Both branches use the clip-form
  (query x video) NCE on raw dot products and triplet on cosines.

Release behaviours kept: the Gaussian windows of the frame branch are built for the padded length of the
batch, i.e. its longest video (``encode_videos`` cuts any extra padding, so the encoding depends on the
batch's longest video as in the release, not on an evaluator's padding); QDL is computed on a second,
independent forward pass of the query encoder (its own dropout draw, ``second_query_pass``).
``checkpoint_branches`` recomputes the attention branches in backward (less memory, same numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trainables.errors import InputError
from trainables.losses.diversity import query_diverse_loss
from trainables.losses.terms import QUERY_DIVERSITY
from trainables.models.base import Backbone, BackboneConfig, Dims, LossContext, Tensors, VideoInputs, fuse, register
from trainables.models.components import (
    AttentionPooling,
    BertAttention,
    LinearLayer,
    TokenEncoder,
    TrainablePositionalEncoding,
    as_float_tuple,
    check_gaussian_branches,
    cosine,
    init_weights,
    max_token_score,
    maybe_checkpoint,
    plugin_or,
    ranking_terms,
    windows,
)

if TYPE_CHECKING:
    from trainables.models.base import TrainingHooks


class GMMBlock(nn.Module):
    """Mean of a global BertAttention and one Gaussian-windowed BertAttention per width."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, widths: Sequence[float],
                 global_branch: bool = True, checkpoint_branches: bool = False):
        super().__init__()
        self.widths: tuple[float | None, ...] = ((None,) if global_branch else ()) + tuple(widths)
        self.branches = nn.ModuleList(BertAttention(hidden_size, num_heads, dropout) for _ in self.widths)
        self.checkpoint_branches = checkpoint_branches

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        outputs = [maybe_checkpoint(branch, x, mask, window, key_bias, enabled=self.checkpoint_branches)
                   for branch, window in zip(self.branches, windows(self.widths, x.shape[1], x))]
        return torch.stack(outputs).mean(dim=0)


class GMMEncoder(nn.Module):
    """Projection -> positional encoding -> a stack of GMMBlocks."""

    def __init__(self, in_size: int, config: GMMFormer.Config):
        super().__init__()
        h = config.hidden_size
        self.proj = LinearLayer(in_size, h, dropout=config.input_drop)
        self.pos = TrainablePositionalEncoding(config.max_ctx_l, h, config.input_drop)
        self.blocks = nn.ModuleList(
            GMMBlock(h, config.n_heads, config.drop, config.widths, config.global_branch, config.checkpoint_branches)
            for _ in range(config.n_blocks)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pos(self.proj(x))
        for block in self.blocks:
            x = block(x, mask, key_bias)
        return x


@register("gmmformer")
class GMMFormer(Backbone):
    """GMMFormer: Gaussian-window clip and frame branches, pooled frame vector, query diverse loss."""

    @dataclass(frozen=True)
    class Config(BackboneConfig):
        """TVR defaults of the release (``src/Configs/tvr.py``)."""

        input_drop: float = 0.2
        drop: float = 0.2
        margin: float = 0.1
        #: weights of (clip NCE, frame NCE, query diverse loss); the triplets have weight 1
        loss_factor: tuple[float, ...] = (0.05, 0.04, 0.001)
        qdl_alpha: float = 32.0
        qdl_delta: float = 0.15
        #: Gaussian widths of the windowed branches of every GMMBlock
        widths: tuple[float, ...] = (0.5, 1.0, 5.0)
        #: whether each GMMBlock also has an unconstrained (global) branch
        global_branch: bool = True
        #: GMMBlocks per branch
        n_blocks: int = 2
        #: release: QDL on a second query-encoder pass (own dropout); False reuses the scoring pass
        second_query_pass: bool = True
        #: recompute each attention branch in backward instead of storing its activations (memory knob)
        checkpoint_branches: bool = False

        def __post_init__(self) -> None:
            as_float_tuple(self, "loss_factor", 3)
            as_float_tuple(self, "widths")
            super().__post_init__()

        def validate(self) -> None:
            super().validate()
            check_gaussian_branches(self, "GMMBlock")
            if self.n_blocks < 1:
                raise InputError(f"n_blocks must be >= 1, got {self.n_blocks}")
            if self.qdl_alpha <= 0:
                raise InputError(f"qdl_alpha must be > 0, got {self.qdl_alpha}")

    training_defaults: ClassVar[dict[str, Any]] = {
        "lr": 3e-4, "epochs": 100, "patience": 10, "hard_negative_start_epoch": 30, "seed": 9527, "batch_size": 128,
    }

    def __init__(self, config: GMMFormer.Config, dims: Dims) -> None:
        super().__init__(config, dims)
        h = config.hidden_size
        self.query_encoder = TokenEncoder(dims.query_dim, h, config.n_heads, config.max_desc_l,
                                          config.input_drop, config.drop)
        self.query_pool = AttentionPooling(h)
        self.clip_encoder = GMMEncoder(dims.video_dim, config)
        self.frame_encoder = GMMEncoder(dims.video_dim, config)
        self.frame_pool = AttentionPooling(h)
        init_weights(self)

    #: frame tokens are kept in the video encoding only when a plugin reads them (CSA at inference)
    features = frozenset({"query", "clip_tokens", "frame_tokens", "global", "clip_key_bias", "frame_score"})

    def _encode_videos(self, inputs: VideoInputs) -> Tensors:
        """{"clip_tokens": (B, 32, H), "global": (B, H) pooled frame vector} (+ "frame_tokens", "frame_mask"
        in training or when a plugin needs them).

        Frames are first cut to the longest valid video of the batch: the frame Gaussian windows depend on
        the sequence length, and the release pads each batch to its longest video, so extra padding (an
        evaluator padding to the split's longest video) must not change the encoding.
        """
        longest = max(1, int(inputs.frames_mask.sum(dim=1).max().item()))
        frames, frames_mask = inputs.frames[:, :longest], inputs.frames_mask[:, :longest]
        encoded_frames = self.frame_encoder(frames, frames_mask)
        out = {"clip_tokens": self.clip_encoder(inputs.clips, None, inputs.clip_key_bias),
               "global": self.frame_pool(encoded_frames, frames_mask)}
        if self.training or self.plugin_needs("frame_tokens"):  # padded back: evaluator batches concatenate
            extra = inputs.frames.shape[1] - longest
            out.update(frame_tokens=F.pad(encoded_frames * frames_mask[..., None].to(encoded_frames.dtype),
                                          (0, 0, 0, extra)),
                       frame_mask=inputs.frames_mask)
        return out

    def _encode_queries(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> Tensors:
        """{"query": (Nq, H)} attention-pooled query vectors."""
        return {"query": self.query_pool(self.query_encoder(tokens, tokens_mask), tokens_mask)}

    def _score(self, queries: Tensors, videos: Tensors) -> Tensors:
        q = queries["query"]
        return fuse(max_token_score(q, videos["clip_tokens"]), cosine(q, videos["global"]), self.config.alpha)

    def _training_losses(self, batch: Tensors, context: LossContext, hooks: TrainingHooks
                         ) -> tuple[Tensors, Tensors]:
        cfg: GMMFormer.Config = self.config  # type: ignore[assignment]
        videos = self._encode_videos(VideoInputs.from_batch(batch))
        queries = hooks.encode_queries(batch["text_feat"], batch["text_mask"])
        query, labels = queries["query"], batch["text_labels"]
        raw = {"clip": max_token_score(query, videos["clip_tokens"], normalize=False),
               "frame": plugin_or(hooks.frame_score(queries, videos, normalize=False),
                                  lambda: query @ videos["global"].t())}
        cos = {"clip": max_token_score(query, videos["clip_tokens"]),
               "frame": plugin_or(hooks.frame_score(queries, videos), lambda: cosine(query, videos["global"]))}
        terms = ranking_terms(raw, cos, labels, cfg.loss_factor[:2], cfg.margin, context)
        diverse = self._encode_queries(batch["text_feat"], batch["text_mask"])["query"] if cfg.second_query_pass \
            else query
        terms[QUERY_DIVERSITY] = cfg.loss_factor[2] * query_diverse_loss(diverse, labels, alpha=cfg.qdl_alpha,
                                                                delta=cfg.qdl_delta)
        return terms, {**videos, **queries}


__all__ = ["GMMBlock", "GMMEncoder", "GMMFormer"]
