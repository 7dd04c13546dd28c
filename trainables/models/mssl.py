"""MS-SL (Dong et al., ACM MM'22) and MS-SL++ (TPAMI extension) for partially relevant video retrieval.

Self-contained re-implementation of ``ms-sl:method/model.py`` and ``ms-sl-pp:method/model.py``
(see ``/work/shared/specs/backbones.md`` sections 2.1, 2.2, 3).

Architecture (hidden size H, ``map_size`` M = 32 clips, P = M(M+1)/2 = 528 proposals):

* **Query**: TokenEncoder (projection, learned positions, one BertAttention) + attention pooling -> q.
* **Clip scale**: TokenEncoder on the M clips (no mask) -> clip tokens C (M x H). The proposals are
  the means of every contiguous span of clips (AvgPool1d(k, stride 1) for k = 1..M), ordered by span
  length then start as released: p = A C with a fixed (P x M) averaging matrix A. S_c(q, v) = max_p
  cos(q, p); its argmax is the *key clip*.
* **Frame scale**: TokenEncoder on the frames (masked) -> F. Key-clip-guided attention (KCGA):
  a_j = softmax_j((W_k f_j) . p*) over valid frames (padding filled with -1e9, no 1/sqrt(d), one
  head), v_f = sum_j a_j W_v f_j, S_f = cos(q, v_f). Fused score alpha S_c + (1 - alpha) S_f.
* **MS-SL++** (``cluster_num`` set): each proposal is concatenated with a fixed sinusoidal embedding
  of its span length (256-d) and a batched k-medoids (KKZ init, Euclidean, <= 60 rounds, no gradient,
  ``trainables.models.kmedoids``) keeps ``cluster_num`` medoid proposals per video; only those are
  used for S_c and KCGA, in training and inference.

Efficient scoring. Everything is computed from the M clip tokens instead of the P proposals:
q . p = (A C q)_p, so the proposal dot products cost one (V M x H) @ (H x Q) matmul plus a batched
(P x M) @ (M x Q) product per video; KCGA logits are (W_k F C^T) A_{p*}^T; q . v_f = sum_j a_j
(W_v^T q) . f_j; and |v_f|^2 = a^T G a with the per-video Gram matrix G = (W_v F)(W_v F)^T. The video
cache is then C, the proposal norms, F, W_k F C^T and G (686 MiB for TVR's 2,179 videos x 128
frames, F being 428 MiB of it; the 528 proposals alone would take 1.7 GiB), and scoring Q queries
against V videos needs O(Q V (P + L)) floats, processed in video blocks of about
``score_block_floats`` floats (about 8 MB), i.e. ~43 GFLOP for 100 queries x 2,179 TVR videos
instead of ~131 GFLOP for the release's formulation.

Training (per batch of B videos, Nq queries, ``text_labels`` = each query's video):
clip cosine scores (Nq x B) and key clips as above; the frame vector is computed once per query
from its own video, guided by its key clip, and scored against every query (Nq x Nq, diagonal =
positives). Loss terms (weights as released):

* ``clip_nce``      = clip_nce_weight (0.02) x multi-positive InfoNCE on max-over-proposals raw dot products,
* ``clip_triplet``  = MS-SL triplet loss on the clip cosine scores,
* ``frame_nce``     = frame_nce_weight x diagonal InfoNCE on raw q . v_f (MS-SL 0.04, MS-SL++ 0.03),
* ``frame_triplet`` = diagonal triplet loss on the frame cosine scores

(the names of ``trainables.losses.terms``, shared with the other backbones).

Release behaviours kept by default, with options for the clean variant:

* ``clip_positions``: the clip positional table has ``max_ctx_l`` (128) rows although only M are used
  (None = as released, counts 128 x H parameters); set it to ``map_size`` for the minimal table.
* ``frame_nce``: MS-SL normalises each diagonal entry over its row and column *together* ("joint",
  the diagonal counted twice); MS-SL++ uses a plain two-way InfoNCE (row softmax + column softmax,
  "two_way"). None picks "joint" for MS-SL and "two_way" for MS-SL++; ``frame_nce_weight`` None
  picks 0.04 / 0.03 likewise (see ``MSSL.Config.resolved_frame_nce``/``resolved_frame_nce_weight``).
* ``cluster_dropout``: MS-SL++ applies dropout (``input_drop``) to the clustering features during
  training (the release does it in its ``LengthPositionalEncoding``; here ``cluster_dropout`` in
  ``select_proposals``), so medoids are chosen from a noisy copy; False clusters the
  clean features. ``length_pos`` False clusters the proposals without the length embedding.
* The frame branch in training treats the other queries of the same video as negatives (as released).

MS-SL++'s own training default differing from MS-SL's is early-stopping patience 20 (``max_es_cnt``):
set ``patience: 20`` with ``cluster_num`` to reproduce its TVR run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from trainables.errors import InputError
from trainables.losses.ranking import clip_nce, clip_triplet, diagonal_triplet, frame_nce
from trainables.losses.terms import CLIP_NCE, CLIP_TRIPLET, FRAME_NCE, FRAME_TRIPLET
from trainables.models.base import Backbone, BackboneConfig, Dims, LossContext, Tensors, VideoInputs, fuse, register
from trainables.models.components import AttentionPooling, TokenEncoder, cosine, init_weights
from trainables.models.kmedoids import batch_kmedoids, batch_kmedoids_gram

if TYPE_CHECKING:
    from trainables.models.base import TrainingHooks

EPS = 1e-12  # F.normalize's norm floor
KCGA_MASK_VALUE = -1e9  # padded frames in key-clip-guided attention, as released
FRAME_NCE_FORMS = ("joint", "two_way")


# --------------------------------------------------------------------------- multi-scale proposals

def num_proposals(map_size: int) -> int:
    """Number of contiguous spans of ``map_size`` clips: M (M + 1) / 2."""
    return map_size * (map_size + 1) // 2


def span_index(map_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lengths, starts) of every span in the release order (by length 1..M, then start)."""
    lengths = torch.repeat_interleave(torch.arange(1, map_size + 1), torch.arange(map_size, 0, -1))
    first_of_length = torch.cumsum(torch.arange(map_size, 0, -1), 0) - torch.arange(map_size, 0, -1)
    starts = torch.arange(lengths.numel()) - first_of_length[lengths - 1]
    return lengths, starts


def span_average_matrix(map_size: int) -> torch.Tensor:
    """(P, M) matrix whose row p averages the clips of span p: proposals = A @ clips."""
    lengths, starts = span_index(map_size)
    positions = torch.arange(map_size)
    inside = (positions >= starts[:, None]) & (positions < (starts + lengths)[:, None])
    return inside.float() / lengths[:, None].float()


def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    """(positions, dim) fixed sinusoidal embeddings (sin on even, cos on odd channels)."""
    position = torch.arange(positions, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(positions, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


def proposal_norms(clips: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, P) L2 norms of the proposals ``weights @ clips`` without forming them (via C C^T)."""
    gram = clips @ clips.transpose(1, 2)  # (B, M, M)
    squared = (torch.bmm(weights, gram) * weights).sum(-1)
    return squared.clamp_min(0.0).sqrt()


def clip_dots(queries: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
    """(B, M, Nq) dot products of every query with every clip token of B videos (one matmul)."""
    b, m, h = clips.shape
    return (clips.reshape(b * m, h) @ queries.t()).view(b, m, -1)


def best_proposals(per_clip: torch.Tensor, weights: torch.Tensor, norms: torch.Tensor,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Nq) indices of the proposal with the largest raw dot product and of the one with the
    largest cosine, from ``per_clip`` (B, M, Nq), ``weights`` (B, P, M), ``norms`` (B, P); no gradient
    (the (B, P, Nq) products are only needed to pick the maxima)."""
    with torch.no_grad():
        raw = torch.bmm(weights, per_clip)  # (B, P, Nq) q . p
        by_raw = raw.max(dim=1).indices  # max().indices: first maximum, and faster than argmax on CPU
        by_cos = raw.div_(norms.clamp_min(EPS)[..., None]).max(dim=1).indices  # |q| is constant along P
    return by_raw, by_cos


def selected_dots(per_clip: torch.Tensor, weights: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, Nq) q . p for the proposal ``index`` (B, Nq) of each pair, differentiably."""
    chosen = weights.gather(1, index[..., None].expand(-1, -1, weights.shape[-1]))  # (B, Nq, M)
    return (chosen * per_clip.transpose(1, 2)).sum(dim=-1)


def two_way_nce(logits: torch.Tensor) -> torch.Tensor:
    """MS-SL++ frame InfoNCE of a square matrix: row softmax and column softmax around the diagonal."""
    diagonal = logits.diagonal()
    return (logits.logsumexp(dim=1) - diagonal).mean() + (logits.logsumexp(dim=0) - diagonal).mean()


# --------------------------------------------------------------------------- key-clip-guided attention

def kcga_pairwise(queries: torch.Tensor, query_values: torch.Tensor, clips: torch.Tensor, weights: torch.Tensor,
                  norms: torch.Tensor, keys_on_clips: torch.Tensor, gram: torch.Tensor, frames: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip and frame cosine scores (Nq, V) of Nq queries against a block of V encoded videos.

    ``queries`` (Nq, H); ``query_values`` = W_v^T q (Nq, H); ``clips`` (V, M, H); ``weights`` the
    averaging weights of the kept proposals, shared (P, M) or per video (V, P, M); ``norms`` (V, P)
    the proposal norms; ``keys_on_clips`` = (W_k F) C^T (V, L, M); ``gram`` = (W_v F)(W_v F)^T
    (V, L, L); ``frames`` F (V, L, H); ``mask`` (V, L). Largest intermediates: (V, Nq, P) and a few
    (V, Nq, L); every product is a matmul or a batched matmul with a contiguous reduction axis.
    """
    v, m, h = clips.shape
    length = frames.shape[1]
    q_norm = queries.norm(dim=-1).clamp_min(EPS)  # (Nq,)
    unit = weights.transpose(-1, -2) / norms.clamp_min(EPS)[:, None, :]  # (V, M, P): unit proposals = C^T unit
    per_clip = (queries @ clips.reshape(v * m, h).t()).view(-1, v, m).transpose(0, 1).contiguous()  # (V, Nq, M)
    best, key = torch.bmm(per_clip, unit).max(dim=-1)  # (V, Nq): max_p cos(q, p) * |q|, key proposal
    key_weights = weights[key] if weights.dim() == 2 else weights.gather(1, key[..., None].expand(-1, -1, m))
    logits = torch.bmm(key_weights, keys_on_clips.transpose(1, 2))  # (V, Nq, L): (W_k f_j) . p*
    attention = logits.masked_fill_(mask[:, None, :] == 0, KCGA_MASK_VALUE).softmax(dim=-1)
    value_dots = (query_values @ frames.reshape(v * length, h).t()).view(-1, v, length).transpose(0, 1)
    numerator = (attention * value_dots).sum(dim=-1)  # q . v_f
    squared = (attention * torch.bmm(attention, gram)).sum(dim=-1)  # |v_f|^2 = a G a^T (G symmetric)
    frame = numerator / (squared.clamp_min(0.0).sqrt().clamp_min(EPS) * q_norm)
    return (best / q_norm).t(), frame.t()


# --------------------------------------------------------------------------- model

@register("mssl")
class MSSL(Backbone):
    """MS-SL (and MS-SL++ when ``cluster_num`` is set): clip-scale proposals + key-clip-guided frames."""

    @dataclass(frozen=True)
    class Config(BackboneConfig):
        """MS-SL TVR defaults (``ms-sl:do_tvr.sh``, ``method/config.py``); MS-SL++ via ``cluster_num``."""

        margin: float = 0.1
        clip_nce_weight: float = 0.02
        frame_nce_weight: float | None = None  # None: 0.04 (MS-SL) / 0.03 (MS-SL++)
        frame_nce: str | None = None  # "joint" | "two_way"; None: joint (MS-SL) / two_way (MS-SL++)
        clip_positions: int | None = None  # rows of the clip position table; None: max_ctx_l (release)
        cluster_num: int | None = None  # MS-SL++: medoid proposals kept per video (1..P)
        length_pos: bool = True  # MS-SL++: concatenate the span-length embedding before clustering
        length_dim: int = 256
        cluster_dropout: bool = True  # MS-SL++: dropout on the clustering features in training (release)
        kmedoids_iters: int = 60

        def validate(self) -> None:
            super().validate()
            total = num_proposals(self.map_size)
            if self.cluster_num is not None and not 1 <= self.cluster_num <= total:
                raise InputError(f"cluster_num must be in 1..{total}, got {self.cluster_num}")
            for key in ("clip_nce_weight", "frame_nce_weight"):
                value = getattr(self, key)
                if value is not None and value < 0:
                    raise InputError(f"{key} must be >= 0, got {value}")
            if self.frame_nce is not None and self.frame_nce not in FRAME_NCE_FORMS:
                raise InputError(f"frame_nce must be one of {FRAME_NCE_FORMS} or None, got {self.frame_nce!r}")
            if self.clip_positions is not None and self.clip_positions < self.map_size:
                raise InputError(f"clip_positions must be >= map_size {self.map_size}, got {self.clip_positions}")
            if self.length_dim < 2 or self.length_dim % 2:
                raise InputError(f"length_dim must be a positive even number, got {self.length_dim}")
            if self.kmedoids_iters < 1:
                raise InputError(f"kmedoids_iters must be >= 1, got {self.kmedoids_iters}")

        @property
        def clustered(self) -> bool:
            return self.cluster_num is not None

        @property
        def resolved_frame_nce_weight(self) -> float:
            if self.frame_nce_weight is not None:
                return self.frame_nce_weight
            return 0.03 if self.clustered else 0.04

        @property
        def resolved_frame_nce(self) -> str:
            if self.frame_nce is not None:
                return self.frame_nce
            return "two_way" if self.clustered else "joint"

    training_defaults = {"lr": 2.5e-4, "epochs": 100, "patience": 10, "hard_negative_start_epoch": 20,
                         "seed": 2018, "batch_size": 128}
    #: floats per (videos x queries x (proposals + frames)) block in ``score``: about 8 MB keeps the
    #: intermediates cache-sized (100 queries x 528 proposals x 128 frames -> blocks of 31 videos)
    score_block_floats: int = 1 << 21
    #: videos clustered together in MS-SL++: (chunk, P, P) float64 distances, 18 MB at 8 (small
    #: buffers are recycled by the allocator instead of page-faulting in fresh memory: ~1.5x faster)
    kmedoids_chunk: int = 8

    config: Config
    #: buffers (``register_buffer`` in ``__init__``): (P, M) span averaging weights, (P, length_dim) embeddings
    #: of the span lengths
    span_weights: torch.Tensor
    length_embedding: torch.Tensor

    def __init__(self, config: Config, dims: Dims) -> None:
        super().__init__(config, dims)
        c, h = config, config.hidden_size
        self.query_encoder = TokenEncoder(dims.query_dim, h, c.n_heads, c.max_desc_l, c.input_drop, c.drop)
        self.query_pool = AttentionPooling(h)
        clip_positions = c.clip_positions if c.clip_positions is not None else max(c.max_ctx_l, c.map_size)
        self.clip_encoder = TokenEncoder(dims.video_dim, h, c.n_heads, clip_positions, c.input_drop, c.drop)
        self.frame_encoder = TokenEncoder(dims.video_dim, h, c.n_heads, c.max_ctx_l, c.input_drop, c.drop)
        self.key_proj = nn.Linear(h, h, bias=False)  # W_k of KCGA
        self.value_proj = nn.Linear(h, h, bias=False)  # W_v of KCGA
        lengths, _ = span_index(c.map_size)
        self.register_buffer("span_weights", span_average_matrix(c.map_size), persistent=False)
        self.register_buffer("length_embedding", sinusoidal_table(c.map_size, c.length_dim)[lengths - 1],
                             persistent=False)
        self.cluster_dropout = nn.Dropout(c.input_drop)
        init_weights(self)

    # ------------------------------------------------------------------ encoders

    #: no global video vector; the 32 clip tokens are the base of the proposals
    features = frozenset({"query", "clip_tokens", "frame_tokens", "clip_key_bias", "frame_score"})

    def _clips(self, clips: torch.Tensor, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.clip_encoder(clips, None, key_bias)  # (B, M, H), no mask as released

    def _frames(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.frame_encoder(frames, mask)  # (B, L, H)

    def _encode_queries(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> Tensors:
        """{"query": (Nq, H)} attention-pooled query vectors."""
        return {"query": self.query_pool(self.query_encoder(tokens, tokens_mask), tokens_mask)}

    def select_proposals(self, clip_tokens: torch.Tensor) -> torch.Tensor | None:
        """(B, cluster_num) ascending indices of the medoid proposals of each video (MS-SL++), or
        None when every proposal is kept (MS-SL). Features = proposal ++ span-length embedding; as
        released, dropout (``input_drop``) hits the features in training (``cluster_dropout``)."""
        c = self.config
        if c.cluster_num is None:
            return None
        with torch.no_grad():
            if c.cluster_dropout and self.training and self.cluster_dropout.p > 0:
                features = torch.matmul(self.span_weights, clip_tokens)  # explicit (B, P, H [+ 256])
                if c.length_pos:
                    features = torch.cat([features, self.length_embedding.expand(len(features), -1, -1)], dim=-1)
                return batch_kmedoids(self.cluster_dropout(features), c.cluster_num, max_iter=c.kmedoids_iters,
                                      chunk_size=self.kmedoids_chunk).medoids
            # proposals are A C, so their inner products are A (C C^T) A^T (+ the fixed length part);
            # float64 keeps the small distances between overlapping spans exact (float32 cancellation
            # would blur them, as torch.cdist does in the release); the iterations then run in float32
            weights = self.span_weights.double()
            lengths = self.length_embedding.double() @ self.length_embedding.double().t() if c.length_pos else None
            parts = []
            for tokens in clip_tokens.double().split(self.kmedoids_chunk):
                gram = torch.matmul(weights, tokens @ tokens.transpose(1, 2)) @ weights.t()
                if lengths is not None:
                    gram += lengths
                parts.append(batch_kmedoids_gram(gram, c.cluster_num, max_iter=c.kmedoids_iters,
                                                 distance_dtype=torch.float32).medoids)
            return torch.cat(parts)

    def retrieval_spans(self) -> torch.Tensor:
        """(P, M) the averaging weights of every proposal over the clip tokens (MS-SL++ keeps a subset per
        video: the best of all P spans bounds its kept ones from above)."""
        return self.span_weights

    def _weights(self, clip_tokens: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """(B, P', M) averaging weights of the kept proposals of each video."""
        if index is None:
            return self.span_weights.expand(clip_tokens.shape[0], -1, -1)
        return self.span_weights[index]

    def _encode_videos(self, inputs: VideoInputs) -> Tensors:
        """Per-video tensors for ``score`` (see the module docstring for why these and not proposals):

        clip_tokens (V, M, H); proposal_norms (V, P') norms of the kept proposals; proposal_index
        (V, P') their span indices (MS-SL++ only; MS-SL keeps all P in order); frame_tokens (V, L, H);
        keys_on_clips (V, L, M) = (W_k F) C^T; frame_gram (V, L, L) = (W_v F)(W_v F)^T; frame_mask (V, L).
        """
        frames_mask = inputs.frames_mask
        c_tokens = self._clips(inputs.clips, inputs.clip_key_bias)
        f_tokens = self._frames(inputs.frames, frames_mask)
        index = self.select_proposals(c_tokens)
        weights = self._weights(c_tokens, index)
        norms = proposal_norms(c_tokens, weights)
        values = self.value_proj(f_tokens)
        out = {
            "clip_tokens": c_tokens,
            "proposal_norms": norms,
            "frame_tokens": f_tokens,
            "keys_on_clips": self.key_proj(f_tokens) @ c_tokens.transpose(1, 2),
            "frame_gram": values @ values.transpose(1, 2),
            "frame_mask": frames_mask,
        }
        if index is not None:
            out["proposal_index"] = index
        return out

    def _video_weights(self, videos: Tensors) -> torch.Tensor:
        """Averaging weights of the kept proposals: shared (P, M), or (V, P', M) with ``proposal_index``."""
        index = videos.get("proposal_index")
        return self.span_weights if index is None else self.span_weights[index]

    def proposals(self, videos: Tensors) -> torch.Tensor:
        """(V, P', H) the kept proposal vectors of encoded ``videos`` (for inspection and plugins)."""
        return torch.matmul(self._video_weights(videos), videos["clip_tokens"])

    # ------------------------------------------------------------------ scoring

    def _score(self, queries: Tensors, videos: Tensors) -> Tensors:
        """{"clip", "frame", "fused"} (Nq, V) scores; KCGA for every (query, video) pair, in video blocks."""
        q = queries["query"]
        q_values = q @ self.value_proj.weight  # W_v^T q, so q . (W_v f) = q_values . f
        index = videos.get("proposal_index")
        per_video = max(1, q.shape[0] * (videos["proposal_norms"].shape[1] + videos["frame_mask"].shape[1]))
        block = max(1, self.score_block_floats // per_video)
        clip_parts, frame_parts = [], []
        for start in range(0, videos["clip_tokens"].shape[0], block):
            rows = slice(start, start + block)
            weights = self.span_weights if index is None else self.span_weights[index[rows]]
            clip, frame = kcga_pairwise(
                q, q_values, videos["clip_tokens"][rows], weights,
                videos["proposal_norms"][rows], videos["keys_on_clips"][rows], videos["frame_gram"][rows],
                videos["frame_tokens"][rows], videos["frame_mask"][rows])
            clip_parts.append(clip)
            frame_parts.append(frame)
        clip = torch.cat(clip_parts, dim=1) if clip_parts else q.new_zeros(q.shape[0], 0)
        frame = torch.cat(frame_parts, dim=1) if frame_parts else q.new_zeros(q.shape[0], 0)
        return fuse(clip, frame, self.config.alpha)

    # ------------------------------------------------------------------ training

    def _frame_vectors(self, q_clips: torch.Tensor, key_weights: torch.Tensor, q_frames: torch.Tensor,
                       q_mask: torch.Tensor) -> torch.Tensor:
        """(Nq, H) KCGA output of each query on its own video: ``q_clips`` (Nq, M, H) its clip tokens,
        ``key_weights`` (Nq, M) its key proposal's averaging weights, ``q_frames`` (Nq, L, H)."""
        key_clip = torch.einsum("qm,qmh->qh", key_weights, q_clips)  # p*
        guide = key_clip @ self.key_proj.weight  # W_k^T p*, so (W_k f) . p* = f . guide
        logits = torch.einsum("qlh,qh->ql", q_frames, guide).masked_fill(q_mask == 0, KCGA_MASK_VALUE)
        pooled = torch.einsum("ql,qlh->qh", logits.softmax(dim=-1), q_frames)
        return self.value_proj(pooled)  # sum_j a_j W_v f_j

    def _training_losses(self, batch: Tensors, context: LossContext, hooks: TrainingHooks
                         ) -> tuple[Tensors, Tensors]:
        """{"clip_nce", "clip_triplet", "frame_nce", "frame_triplet"} weighted loss terms of one batch."""
        c = self.config
        labels = batch["text_labels"]
        c_tokens = self._clips(batch["clip_video_features"], batch.get("clip_key_bias"))
        f_tokens = self._frames(batch["frame_video_features"], batch["videos_mask"])
        weights = self._weights(c_tokens, self.select_proposals(c_tokens))  # (B, P', M)
        queries = hooks.encode_queries(batch["text_feat"], batch["text_mask"])
        q = queries["query"]
        features = {**queries, "clip_tokens": c_tokens, "frame_tokens": f_tokens, "frame_mask": batch["videos_mask"]}

        # max over proposals of q . p (NCE) and of cos(q, p) (triplet; argmax = key clip), as released;
        # the maxima are picked without gradient, then only the chosen entries are recomputed with it
        per_clip = clip_dots(q, c_tokens)  # (B, M, Nq)
        norms = proposal_norms(c_tokens, weights)  # (B, P')
        by_raw, key = best_proposals(per_clip, weights, norms)
        clip_raw = selected_dots(per_clip, weights, by_raw).t()  # (Nq, B)
        scale = norms.gather(1, key).clamp_min(EPS) * q.norm(dim=-1).clamp_min(EPS)
        clip_cos, key = (selected_dots(per_clip, weights, key) / scale).t(), key.t()

        hard, pool, gen = context.hard_negatives, context.hard_pool_size, context.generator
        terms = {
            CLIP_NCE: c.clip_nce_weight * clip_nce(clip_raw, labels),
            CLIP_TRIPLET: clip_triplet(clip_cos, labels, c.margin, hard, pool, gen),
        }
        replaced = hooks.frame_score(queries, features, normalize=False)
        if replaced is not None:  # a plugin's (query x video) frame score: the clip-form losses
            terms[FRAME_NCE] = c.resolved_frame_nce_weight * clip_nce(replaced, labels)
            normalized = hooks.frame_score(queries, features)
            assert normalized is not None  # the plugin that gave ``replaced`` scores this too
            terms[FRAME_TRIPLET] = clip_triplet(normalized, labels, c.margin, hard, pool, gen)
            return terms, features

        rows = torch.arange(q.shape[0], device=q.device)
        key_weights = weights[labels, key[rows, labels]]  # (Nq, M)
        frame_vec = self._frame_vectors(c_tokens[labels], key_weights, f_tokens[labels], batch["videos_mask"][labels])
        frame_cos = cosine(q, frame_vec)  # (Nq, Nq), diagonal = positive pairs
        frame_raw = q @ frame_vec.t()
        nce = frame_nce if c.resolved_frame_nce == "joint" else two_way_nce
        terms[FRAME_NCE] = c.resolved_frame_nce_weight * nce(frame_raw)
        terms[FRAME_TRIPLET] = diagonal_triplet(frame_cos, c.margin, hard, pool, gen)
        return terms, features


__all__ = ["MSSL", "best_proposals", "clip_dots", "kcga_pairwise", "num_proposals",
           "proposal_norms", "selected_dots", "sinusoidal_table", "span_average_matrix", "span_index",
           "two_way_nce"]
