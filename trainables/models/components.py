"""Building blocks shared by the PRVR backbones (the release code's ``model_components``).

* ``LinearLayer``: LayerNorm(in) -> Dropout -> Linear(in -> out) -> ReLU, the input projection.
* ``TrainablePositionalEncoding``: learned position table, x <- Dropout(LayerNorm(x + P[pos])).
* ``SelfAttention`` / ``BertAttention``: one multi-head self-attention (scaled dot product, additive
  -1e4 on padded keys, dropout on the probabilities) followed by Linear -> Dropout -> LayerNorm(residual).
  There is no feed-forward block (the release's ``intermediate_size`` is unused). Optional
  multiplicative ``logit_weights`` (broadcast to ``(batch, heads, Lq, L)``) scale the attention logits
  before masking, which is how GMMFormer's Gaussian windows and AMDNet's moment masks are applied;
  an optional additive ``key_bias`` (N, L) is added to the logits of every query over key ``j``
  (ToMe's proportional attention: ``log(merge_size)``).
* ``PostLNLayer``: the GMMFormer-v2 / RAL release's ``BertAttention`` (a post-LN Transformer layer):
  attention (no output projection) -> Dropout -> LayerNorm(residual) -> FFN (H -> F -> H, ReLU,
  Dropout) -> Dropout -> LayerNorm(residual).
* ``AttentionPooling``: Linear(H, 1, no bias) scores, masked softmax over tokens, weighted sum
  (the release's "modularized query").
* ``init_weights``: Linear/Embedding ~ N(0, 0.02), zero bias, LayerNorm (1, 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from trainables.errors import InputError
from trainables.losses.ranking import clip_nce, clip_triplet
from trainables.losses.terms import CLIP_NCE, CLIP_TRIPLET, FRAME_NCE, FRAME_TRIPLET
from trainables.models.base import LossContext, Tensors

MASK_VALUE = -1e4  # additive mask of padded keys in attention, as released
POOL_MASK_VALUE = -1e10  # mask of padded tokens in attention pooling, as released


class LinearLayer(nn.Module):
    """LayerNorm -> Dropout -> Linear -> ReLU (each norm/ReLU optional)."""

    def __init__(self, in_size: int, out_size: int, *, dropout: float, layer_norm: bool = True, relu: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(in_size) if layer_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_size, out_size)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(self.dropout(self.norm(x)))
        return F.relu(x) if self.relu else x


class TrainablePositionalEncoding(nn.Module):
    """x + a learned position embedding, then LayerNorm and Dropout."""

    def __init__(self, max_positions: int, hidden_size: int, dropout: float):
        super().__init__()
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        return self.dropout(self.norm(x + self.position_embeddings(positions)))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with optional multiplicative logit weights."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        if hidden_size % num_heads:
            raise InputError(f"hidden_size {hidden_size} is not a multiple of n_heads {num_heads}")
        self.num_heads, self.head_size = num_heads, hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.num_heads, self.head_size).transpose(1, 2)  # (N, h, L, d)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor | None = None,
        logit_weights: torch.Tensor | None = None,
        key_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``queries`` (N, Lq, H), ``keys`` (N, L, H) (also the values), ``mask`` (N, L) 1 = valid,
        ``key_bias`` (N, L) added to every query's logit over each key."""
        q, k, v = self._heads(self.query(queries)), self._heads(self.key(keys)), self._heads(self.value(keys))
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_size)  # (N, h, Lq, L)
        if logit_weights is not None:
            logits = logits * logit_weights
        if key_bias is not None:
            logits = logits + key_bias[:, None, None, :].to(logits.dtype)
        if mask is not None:
            logits = logits + (1.0 - mask[:, None, None, :].to(logits.dtype)) * MASK_VALUE
        probs = self.dropout(logits.softmax(dim=-1))
        out = (probs @ v).transpose(1, 2)  # (N, Lq, h, d)
        return out.reshape(*out.shape[:2], -1)


class BertAttention(nn.Module):
    """Self-attention followed by Linear -> Dropout -> LayerNorm(residual); no feed-forward block."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.attention = SelfAttention(hidden_size, num_heads, dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, logit_weights: torch.Tensor | None = None,
        key_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attended = self.attention(x, x, mask, logit_weights, key_bias)
        return self.norm(self.dropout(self.dense(attended)) + x)


class PostLNLayer(nn.Module):
    """Attention -> Dropout -> LN(residual) -> FFN (H -> F -> H, ReLU, Dropout) -> Dropout -> LN(residual)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, ffn_size: int):
        super().__init__()
        self.attention = SelfAttention(hidden_size, num_heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, ffn_size), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_size, hidden_size))
        self.norm1, self.norm2 = nn.LayerNorm(hidden_size), nn.LayerNorm(hidden_size)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None = None,
                logit_weights: torch.Tensor | None = None, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """(N, Lq, H): ``queries`` (N, Lq, H) attend to ``keys`` (N, L, H) (also the values), ``mask`` (N, L)."""
        x = self.norm1(queries + self.drop1(self.attention(queries, keys, mask, logit_weights, key_bias)))
        return self.norm2(x + self.drop2(self.ffn(x)))


class AttentionPooling(nn.Module):
    """One vector per sequence: softmax over tokens of a learned linear score, padding masked."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.score(x).squeeze(-1)  # (N, L)
        if mask is not None:
            scores = scores * mask + (1.0 - mask) * POOL_MASK_VALUE
        return torch.einsum("nl,nld->nd", scores.softmax(dim=-1), x)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The release initialisation: N(0, std) for Linear and Embedding weights, zero biases, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.data.normal_(mean=0.0, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.data.zero_()
        elif isinstance(m, nn.LayerNorm):
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All-pairs cosine similarity of the rows of ``a`` (..., M, H) and ``b`` (..., N, H)."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)


class TokenEncoder(nn.Module):
    """input projection -> positional encoding -> one BertAttention: the release's ``encode_input``."""

    def __init__(self, in_size: int, hidden_size: int, num_heads: int, max_positions: int,
                 input_drop: float, drop: float):
        super().__init__()
        self.proj = LinearLayer(in_size, hidden_size, dropout=input_drop)
        self.pos = TrainablePositionalEncoding(max_positions, hidden_size, input_drop)
        self.encoder = BertAttention(hidden_size, num_heads, drop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                key_bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(self.pos(self.proj(x)), mask, None, key_bias)


# -- shared by the GMMFormer family (gmmformer.py, gmmformer2.py) ------------------------------------------

#: largest (queries x videos x tokens) block of similarities materialised at once by ``max_token_score``
SCORE_BLOCK = 1 << 23
NORM_EPS = 1e-12  # as F.normalize


def gaussian_window(length: int, width: float, *, device: torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(length, length) Gaussian attention window of the GMMFormer release, each row peaking at 1.

    Row i is centred at i / length, positions are linspace(0, 1, length) (a single 0 when length is 1),
    sigma = max(width, 0.01) / 9. Computed in log space relative to the row maximum, which equals the
    release's density / row-max without its 0/0 when every entry of a row underflows.
    """
    centres = torch.arange(length, dtype=torch.float64) / length
    positions = torch.linspace(0.0, 1.0, length, dtype=torch.float64)
    sigma = max(width, 1e-2) / 9.0
    log_density = -((positions[None, :] - centres[:, None]) ** 2) / (2.0 * sigma**2)
    window = (log_density - log_density.max(dim=1, keepdim=True).values).exp()
    return window.to(device=device, dtype=dtype)


def max_token_score(queries: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None = None, *,
                    normalize: bool = True, block: int = SCORE_BLOCK) -> torch.Tensor:
    """(Nq, Nv) max over each video's tokens of cos(query, token) (or the raw dot product).

    ``tokens`` (Nv, L, H); ``mask`` (Nv, L) 1 = valid token, masked tokens never win. Videos are processed
    in blocks of at most ``block`` similarities, and cosines are raw dot products divided by the token norms
    (no normalised copy of the tokens), so memory stays O(block) for a whole corpus.
    """
    if normalize:
        queries = F.normalize(queries, dim=-1, eps=NORM_EPS)
    nq, (nv, length, hidden) = len(queries), tokens.shape
    step = max(1, block // max(1, nq * length))
    scores = []
    for start in range(0, nv, step):
        chunk = tokens[start:start + step]
        sims = (queries @ chunk.reshape(-1, hidden).t()).view(nq, len(chunk), length)
        if normalize:
            sims = sims.div_(chunk.norm(dim=-1).clamp_min(NORM_EPS))
        if mask is not None:
            sims = sims.masked_fill_(mask[None, start:start + step] == 0, float("-inf"))
        scores.append(sims.max(dim=-1).values)
    return torch.cat(scores, dim=1)


def windows(widths: Sequence[float | None], length: int, like: torch.Tensor) -> list[torch.Tensor | None]:
    """One Gaussian window per width (None for a global branch), on ``like``'s device and dtype."""
    return [None if w is None else gaussian_window(length, w, device=like.device, dtype=like.dtype) for w in widths]


def maybe_checkpoint(module: nn.Module, *args: torch.Tensor | None, enabled: bool) -> torch.Tensor:
    """``module(*args)``; when enabled and grad is on, its activations are recomputed in backward instead of
    stored (dropout draws are replayed), trading about a third more compute for much less memory."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def plugin_or(score: torch.Tensor | None, own: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A plugin's replacement frame score if there is one, else the backbone's own (computed only then)."""
    return own() if score is None else score


def ranking_terms(raw: Tensors, cos: Tensors, labels: torch.Tensor, nce_weights: Sequence[float], margin: float,
                  context: LossContext) -> Tensors:
    """Weighted clip-form NCE (raw scores) and triplet (cosines) of the clip and frame branches, as released."""
    terms: Tensors = {}
    names = {"clip": (CLIP_NCE, CLIP_TRIPLET), "frame": (FRAME_NCE, FRAME_TRIPLET)}
    for branch, weight in zip(("clip", "frame"), nce_weights):
        nce_name, triplet_name = names[branch]
        terms[nce_name] = weight * clip_nce(raw[branch], labels)
        terms[triplet_name] = clip_triplet(cos[branch], labels, margin, context.hard_negatives,
                                           context.hard_pool_size, context.generator)
    return terms


def as_float_tuple(config: Any, key: str, length: int | None = None) -> None:
    """Coerce a list option (e.g. from YAML) of a frozen config to a tuple of floats, checking its length."""
    value = tuple(float(v) for v in getattr(config, key))
    if length is not None and len(value) != length:
        raise InputError(f"{key} must have {length} values, got {len(value)}")
    object.__setattr__(config, key, value)


def check_gaussian_branches(config: Any, block: str) -> None:
    """The checks GMMFormer v1 and v2 share: loss weights, widths, and at least one branch per block."""
    if any(w < 0 for w in config.loss_factor):
        raise InputError(f"loss_factor must be >= 0, got {config.loss_factor}")
    if any(w <= 0 for w in config.widths):
        raise InputError(f"widths must be > 0, got {config.widths}")
    if not config.widths and not config.global_branch:
        raise InputError(f"a {block} needs at least one branch (widths or global_branch)")


