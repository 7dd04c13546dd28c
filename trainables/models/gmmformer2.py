"""GMMFormer v2: temporally consolidated Gaussian branches, revamped QDL and query-clip optimal matching.

Reference: huangmozhi9527/GMMFormer_v2, ``src/Models/gmmformerV2/`` and ``src/Losses/loss.py``.

* Layers are post-LN Transformer layers WITH a feed-forward block (``PostLNLayer``), including the text
  encoder's single layer; the attention output has no extra projection (as released).
* DyGMMBlock (paper: TC-GMMBlock): one global and 7 Gaussian-windowed layers in parallel; a learnable
  weight token cross-attends to each branch's output (attention + H->H feed-forward), an MLP maps each of
  the resulting tokens to one logit per position, a softmax over branches (temperature ``sft_factor``)
  weighs the branch outputs position by position. The MLP's output size fixes the sequence length:
  ``map_size`` for clips, ``max_ctx_l`` for frames (frames are zero-padded to it here, with the mask).
* One weight token is shared by the clip and frame blocks and keeps its N(0, 1) init (as released).
* Clip branch: 32 tokens; frame branch: ``max_ctx_l`` tokens, padding zeroed. S = max over tokens of cos.
* Losses: lambda1 NCE_c + Trip_c + lambda2 NCE_f + Trip_f + lambda3 QDL2 + lambda4 OM.

Release behaviours: QDL2 and OM use a second query-encoder pass (``second_query_pass``). In the release
the zeroed padding frames take part in the frame max, so a video shorter than ``max_ctx_l`` never scores
below 0 (cos and dot with a zero vector); ``frame_padding_floor=True`` (the default) reproduces that,
``False`` (the clean variant) takes the max over valid frames only. ``checkpoint_branches`` recomputes the branch
layers in
backward (TVR batch of 128 videos: peak memory about 16 GB -> 8 GB, same numbers, slower).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from trainables.errors import InputError
from trainables.losses.diversity import optimal_matching_loss, revamped_query_diverse_loss
from trainables.losses.terms import OPTIMAL_MATCHING, QUERY_DIVERSITY
from trainables.models.base import Backbone, BackboneConfig, Dims, LossContext, Tensors, VideoInputs, fuse, register
from trainables.models.components import (
    AttentionPooling,
    LinearLayer,
    PostLNLayer,
    TrainablePositionalEncoding,
    as_float_tuple,
    check_gaussian_branches,
    init_weights,
    max_token_score,
    maybe_checkpoint,
    plugin_or,
    ranking_terms,
    windows,
)

if TYPE_CHECKING:
    from trainables.models.base import TrainingHooks


class DyGMMBlock(nn.Module):
    """Parallel global / Gaussian-windowed layers fused by position-wise weights from a consolidation token."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, widths: Sequence[float], length: int,
                 sft_factor: float, global_branch: bool = True, checkpoint_branches: bool = False):
        super().__init__()
        self.widths: tuple[float | None, ...] = ((None,) if global_branch else ()) + tuple(widths)
        self.length, self.sft_factor, self.checkpoint_branches = length, sft_factor, checkpoint_branches
        self.branches = nn.ModuleList(
            PostLNLayer(hidden_size, num_heads, dropout, 4 * hidden_size) for _ in self.widths
        )
        self.consolidation = PostLNLayer(hidden_size, num_heads, dropout, hidden_size)
        self.weight_head = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Dropout(dropout),
                                         nn.Linear(hidden_size, length))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, weight_token: torch.Tensor,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (N, length, H), ``mask`` (N, length) or None, ``weight_token`` (1, 1, H), ``key_bias`` (N, length)
        added to every branch self-attention logit over each token (proportional attention of merged tokens);
        as released, the consolidation cross-attention of the weight token gets no key bias."""
        n, length, hidden = x.shape
        if length != self.length:
            raise ValueError(f"DyGMMBlock built for {self.length} tokens got {length}")
        outputs = torch.stack([
            maybe_checkpoint(branch, x, x, mask, window, key_bias, enabled=self.checkpoint_branches)
            for branch, window in zip(self.branches, windows(self.widths, length, x))
        ], dim=1)  # (N, K, L, H)
        k = outputs.shape[1]
        flat_mask = None if mask is None else mask.repeat_interleave(k, dim=0)
        tokens = self.consolidation(weight_token.to(x.dtype).expand(n * k, 1, hidden), outputs.flatten(0, 1), flat_mask)
        weights = (self.weight_head(tokens.view(n, k, hidden)) / self.sft_factor).softmax(dim=1)  # (N, K, L)
        return torch.einsum("nklh,nkl->nlh", outputs, weights)


@register("gmmformer2")
class GMMFormerV2(Backbone):
    """GMMFormer v2: DyGMMBlock clip (32) and frame (128) branches, max-over-token scores, QDL2 + OM losses."""

    @dataclass(frozen=True)
    class Config(BackboneConfig):
        """TVR defaults of the release (``src/Configs/tvr.py``)."""

        input_drop: float = 0.2
        drop: float = 0.2
        margin: float = 0.1
        #: weights of (clip NCE, frame NCE, revamped QDL, optimal matching); the triplets have weight 1
        loss_factor: tuple[float, ...] = (0.05, 0.04, 8e-5, 0.09)
        qdl_alpha: float = 32.0
        qdl_delta: float = 0.15
        qdl_gamma: float = 1.0
        #: Gaussian widths of the windowed branches of each DyGMMBlock (plus a global branch)
        widths: tuple[float, ...] = (0.5, 1.0, 5.0, 10.0, 3.0, 0.1, 8.0)
        global_branch: bool = True
        #: softmax temperature of the branch weights
        sft_factor: float = 0.09
        #: release: QDL2 and OM on a second query-encoder pass (own dropout); False reuses the scoring pass
        second_query_pass: bool = True
        #: release quirk (default): zeroed padding frames join the frame max (score floor 0); False = valid frames only
        frame_padding_floor: bool = True
        #: recompute each branch layer in backward instead of storing its activations (memory knob)
        checkpoint_branches: bool = False

        def __post_init__(self) -> None:
            as_float_tuple(self, "loss_factor", 4)
            as_float_tuple(self, "widths")
            super().__post_init__()

        def validate(self) -> None:
            super().validate()
            check_gaussian_branches(self, "DyGMMBlock")
            for key in ("sft_factor", "qdl_alpha"):
                if getattr(self, key) <= 0:
                    raise InputError(f"{key} must be > 0, got {getattr(self, key)}")
            if self.qdl_gamma < 0:
                raise InputError(f"qdl_gamma must be >= 0, got {self.qdl_gamma}")

    training_defaults: ClassVar[dict[str, Any]] = {
        "lr": 3e-4, "epochs": 100, "patience": 10, "hard_negative_start_epoch": 20, "seed": 9527, "batch_size": 128,
        # eight branch layers plus a consolidation pass over all of them: 64 videos at a time keeps a TVR-size
        # evaluation under 4 GB (256 at once peaks ~2.6 GB above the data)
        "eval_video_batch": 64,
    }

    config: Config

    def __init__(self, config: GMMFormerV2.Config, dims: Dims) -> None:
        super().__init__(config, dims)
        h, heads, drop = config.hidden_size, config.n_heads, config.drop
        self.query_proj = LinearLayer(dims.query_dim, h, dropout=config.input_drop)
        self.query_pos = TrainablePositionalEncoding(config.max_desc_l, h, config.input_drop)
        self.query_encoder = PostLNLayer(h, heads, drop, 4 * h)
        self.query_pool = AttentionPooling(h)
        self.clip_proj = LinearLayer(dims.video_dim, h, dropout=config.input_drop)
        self.clip_pos = TrainablePositionalEncoding(config.max_ctx_l, h, config.input_drop)
        self.clip_block = DyGMMBlock(h, heads, drop, config.widths, config.map_size, config.sft_factor,
                                     config.global_branch, config.checkpoint_branches)
        self.frame_proj = LinearLayer(dims.video_dim, h, dropout=config.input_drop)
        self.frame_pos = TrainablePositionalEncoding(config.max_ctx_l, h, config.input_drop)
        self.frame_block = DyGMMBlock(h, heads, drop, config.widths, config.max_ctx_l, config.sft_factor,
                                      config.global_branch, config.checkpoint_branches)
        self.weight_token = nn.Parameter(torch.randn(1, 1, h))  # shared by both blocks, N(0, 1) as released
        init_weights(self)  # modules only: the weight token keeps its N(0, 1) draw

    def _pad_frames(self, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero-pad frames and mask to exactly ``max_ctx_l`` positions (the frame block's fixed length)."""
        extra = self.config.max_ctx_l - frames.shape[1]
        if extra < 0:
            raise InputError(f"{frames.shape[1]} frames exceed max_ctx_l={self.config.max_ctx_l}")
        return F.pad(frames, (0, 0, 0, extra)), F.pad(mask, (0, extra))

    features = frozenset({"query", "clip_tokens", "frame_tokens", "clip_key_bias", "frame_score"})

    def _encode_videos(self, inputs: VideoInputs) -> Tensors:
        """{"clip_tokens": (B, 32, H), "frame_tokens": (B, max_ctx_l, H) with padding zeroed, "frame_mask"}."""
        clip = self.clip_block(self.clip_pos(self.clip_proj(inputs.clips)), None, self.weight_token,
                               inputs.clip_key_bias)
        frames, mask = self._pad_frames(inputs.frames, inputs.frames_mask)
        frame = self.frame_block(self.frame_pos(self.frame_proj(frames)), mask, self.weight_token)
        return {"clip_tokens": clip, "frame_tokens": frame * mask[..., None].to(frame.dtype), "frame_mask": mask}

    def _encode_queries(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> Tensors:
        """{"query": (Nq, H)} attention-pooled query vectors."""
        x = self.query_pos(self.query_proj(tokens))
        return {"query": self.query_pool(self.query_encoder(x, x, tokens_mask), tokens_mask)}

    def _frame_mask(self, videos: Tensors) -> torch.Tensor | None:
        return None if self.config.frame_padding_floor else videos["frame_mask"]

    def _score(self, queries: Tensors, videos: Tensors) -> Tensors:
        q = queries["query"]
        frame = max_token_score(q, videos["frame_tokens"], self._frame_mask(videos))
        return fuse(max_token_score(q, videos["clip_tokens"]), frame, self.config.alpha)

    def _training_losses(self, batch: Tensors, context: LossContext, hooks: TrainingHooks
                         ) -> tuple[Tensors, Tensors]:
        cfg: GMMFormerV2.Config = self.config
        videos = self._encode_videos(VideoInputs.from_batch(batch))
        queries = hooks.encode_queries(batch["text_feat"], batch["text_mask"])
        query, labels = queries["query"], batch["text_labels"]
        clips, frames, mask = videos["clip_tokens"], videos["frame_tokens"], self._frame_mask(videos)
        raw = {"clip": max_token_score(query, clips, normalize=False),
               "frame": plugin_or(hooks.frame_score(queries, videos, normalize=False),
                                  lambda: max_token_score(query, frames, mask, normalize=False))}
        cos = {"clip": max_token_score(query, clips),
               "frame": plugin_or(hooks.frame_score(queries, videos), lambda: max_token_score(query, frames,
                                                                                                      mask))}
        terms = ranking_terms(raw, cos, labels, cfg.loss_factor[:2], cfg.margin, context)
        diverse = self._encode_queries(batch["text_feat"], batch["text_mask"])["query"] if cfg.second_query_pass \
            else query
        terms[QUERY_DIVERSITY] = cfg.loss_factor[2] * revamped_query_diverse_loss(
            diverse, labels, alpha=cfg.qdl_alpha, delta=cfg.qdl_delta, gamma=cfg.qdl_gamma)
        terms[OPTIMAL_MATCHING] = cfg.loss_factor[3] * optimal_matching_loss(diverse, clips, labels)
        return terms, {**videos, **queries}


__all__ = ["DyGMMBlock", "GMMFormerV2", "PostLNLayer"]
