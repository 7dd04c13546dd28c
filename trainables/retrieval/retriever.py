"""Two-stage text-to-video retrieval over a corpus index, and the exhaustive full score it is checked against.

* **Stage 1** (candidates): inner products with every video's K stage-1 unit vectors
  (``corpus_index.stage1_vectors``); a query's unit vector (the backbone's ``query`` encoding) scores a
  video by the max over its vectors (with every token kept and a backbone with ``retrieval_spans``, MS-SL:
  by its best proposal span, its clip score). ``Flat`` (the default) is exact: one BLAS product per block of videos;
  any other faiss index factory string builds an approximate faiss index (``HNSW32``, ``HNSW32,SQfp16``
  (float16), ``IVF1024,Flat``, ...), with search parameters such as ``efSearch=256`` or ``nprobe=32``.
  The exact stage 1 is not faiss's flat index, which would copy the vectors and return vectors, not videos:
  a video's score needs its best vector (or span), so every vector is scored anyway. An approximate index
  finds a pool of ``POOL`` x ``candidates`` videos, rescored with the exact stage-1 score (float32, from the
  shards' stage-1 arrays). The best ``candidates`` videos go on.
* **Stage 2** (rerank): the model's own full score (``Backbone.score``'s fused branch: clip and frame
  scales, plugins included) on the candidates' encodings, read from the index's memory-mapped shards.
  Only the stage-1 vectors stay in memory.

:meth:`Retriever.exhaustive` scores every video with the full score (shard by shard): the reference the
two-stage result is measured against (``benchmarks/serving.py``, ``tests/test_retrieval.py``). Equal scores
rank in index order, in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainables.data.loader import collate_queries
from trainables.data.protocol import prepare_query
from trainables.errors import InputError
from trainables.models.base import Tensors
from trainables.retrieval.corpus_index import NORM_EPS, SPAN_NORMS, STAGE1_KEY, TOKEN_NORMS, CorpusIndex
from trainables.retrieval.defaults import DEFAULT_CANDIDATES, DEFAULT_STAGE1

#: at most this many candidate videos' encodings gathered at once while reranking a batch of queries
RERANK_BLOCK = 512
#: the exact stage 1 (``Flat``) scores at most this many videos, and about this many floats, per block
STAGE1_BLOCK, STAGE1_FLOATS = 4096, 1 << 22
#: an approximate stage 1 pools this many times the candidates, rescored exactly, and asks faiss for this
#: many vectors per pooled video (at most K)
POOL, APPROXIMATE_OVERSAMPLE = 4, 4
#: an approximate index that needs training (IVF, PQ) is trained on at most this many stage-1 vectors
TRAIN_SAMPLE = 200_000
EXACT = "Flat"


@dataclass(frozen=True)
class Ranking:
    """One query's answer: video ids from best to worst, with their full (fused) scores."""

    video_ids: list[str]
    scores: list[float]


def query_batch(query_tokens: Sequence[Any], query_dim: int, protocol: Any) -> dict[str, torch.Tensor]:
    """Raw query token features, each (tokens x query_dim), as one padded batch through the protocol
    (L2 norm if it says so, token cap) exactly as the data loader prepares queries."""
    from trainables.export import feature_matrix

    if len(query_tokens) == 0:
        raise InputError("a request needs at least one query")
    tokens = [prepare_query(feature_matrix(t, query_dim, f"queries[{i}]"), protocol)
              for i, t in enumerate(query_tokens)]
    return collate_queries([{"query_index": i, "tokens": t, "video": 0} for i, t in enumerate(tokens)])


class Retriever:
    """Answers queries against ``index`` with ``loaded`` (a ``trainables.export.LoadedModel``), which must
    be the model the index was built with."""

    def __init__(self, loaded: Any, index: CorpusIndex, *, candidates: int = DEFAULT_CANDIDATES,
                 stage1: str = DEFAULT_STAGE1, search_params: str | None = None) -> None:
        import faiss

        index.check_model(loaded)
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise InputError(f"candidates must be a whole number >= 1, got {candidates!r}")
        self.loaded, self.index, self.candidates = loaded, index, candidates
        self.k = index.vectors_per_video
        self.search_params = search_params
        self.exact: np.ndarray | None = None
        self.spans: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # (P, T) span weights when the backbone has them and the index stored their norms (every token kept)
        weights = loaded.model.retrieval_spans()
        self.span_weights = (weights.float().cpu().numpy() if weights is not None and index.manifest["stage1"].get(
            "spans") and weights.shape[1] == self.k else None)
        if stage1 == EXACT:
            if search_params:
                raise InputError(f"the exact stage 1 ({EXACT}) takes no search parameters, got {search_params!r}")
            # exact: one BLAS product per block of videos and a max over each video's vectors (a faiss flat
            # index would copy the vectors, and must return every vector of a video to rank videos)
            vectors = index.stage1()
            self.stage1_bytes = int(vectors.nbytes)
            self.exact = vectors.reshape(index.num_videos, self.k, -1)
            norms = index.stage1_spans()
            if self.span_weights is not None and norms is not None:
                # (P, T) span weights, token norms (N, T), 1 / span norms (N, P): the best span cosine
                self.spans = (self.span_weights, norms[0], 1.0 / norms[1])
                self.stage1_bytes += int(norms[0].nbytes + norms[1].nbytes)
            return
        # approximate: faiss holds its own (maybe compressed) copy; it is trained on a sample and filled shard
        # by shard, so the float32 vectors are never all in memory at once
        first = index.shards[0].stage1_maps[STAGE1_KEY]
        try:
            self.stage1 = faiss.index_factory(first.shape[-1], stage1, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise InputError(f"stage-1 index {stage1!r} is not a faiss index factory string "
                             f"({str(exc).strip().splitlines()[-1][:200]})") from None
        if not self.stage1.is_trained:
            self.stage1.train(index.stage1_sample(TRAIN_SAMPLE))
        for shard in index.shards:
            vectors = shard.stage1_maps[STAGE1_KEY]
            self.stage1.add(np.ascontiguousarray(vectors.reshape(-1, vectors.shape[-1]), dtype=np.float32))
        self.stage1_bytes = _faiss_bytes(self.stage1)
        if search_params:
            try:
                faiss.ParameterSpace().set_index_parameters(self.stage1, search_params)  # type: ignore[arg-type]
            except RuntimeError as exc:
                raise InputError(f"stage-1 search parameters {search_params!r}: "
                                 f"{str(exc).strip().splitlines()[-1][:200]}") from None

    # ------------------------------------------------------------------ queries

    def encode(self, query_tokens: Sequence[Any]) -> Tensors:
        """The model's query encodings of raw token features (see :func:`query_batch`)."""
        from trainables.export import inference_mode

        config = self.loaded.config
        batch = query_batch(query_tokens, config.query_dim, self.loaded.protocol)
        with inference_mode(self.loaded.model, config) as device:
            return self.loaded.model.encode_queries(batch["text_feat"].to(device), batch["text_mask"].to(device))

    def _full_scores(self, queries: Tensors, videos: Tensors) -> np.ndarray:
        from trainables.export import RANKING_BRANCH, inference_mode

        with inference_mode(self.loaded.model, self.loaded.config) as device:
            videos = {k: v.to(device) for k, v in videos.items()}
            return self.loaded.model.score(queries, videos)[RANKING_BRANCH].float().cpu().numpy()

    def _ranking(self, rows: np.ndarray, scores: np.ndarray, top_k: int) -> Ranking:
        order = np.lexsort((rows, -scores))[:top_k]  # best score first, ties in index order
        return Ranking([self.index.video_ids[r] for r in rows[order]], [float(s) for s in scores[order]])

    # ------------------------------------------------------------------ the two stages

    def stage1_candidates(self, queries: Tensors) -> list[np.ndarray]:
        """Per query, its ``candidates`` best index rows by stage-1 score (best first, ties in index order)."""
        q = np.ascontiguousarray(F.normalize(queries["query"].float(), dim=-1, eps=NORM_EPS).cpu().numpy())
        wanted = min(self.candidates, self.index.num_videos)
        if self.exact is not None:
            rows = np.arange(self.index.num_videos)
            return [_best(rows, row, wanted) for row in self._exact_scores(q)]
        # an approximate index: its best vectors, a video counted at its best one, give a pool of POOL x
        # `wanted` videos (videos have K vectors: a few vectors per pooled video hold them in practice), which
        # the exact stage-1 score (best vector or span, float32 from the shards) cuts to `wanted`
        pool = min(self.index.num_videos, wanted * POOL)
        n = min(pool * min(self.k, APPROXIMATE_OVERSAMPLE), self.stage1.ntotal)
        if hasattr(self.stage1, "hnsw"):
            self.stage1.hnsw.efSearch = max(self.stage1.hnsw.efSearch, n)
        _, ids = self.stage1.search(q, n)
        out = []
        for query, row in zip(q, ids):
            videos = row[row >= 0] // self.k
            _, first = np.unique(videos, return_index=True)
            out.append(self._rescored(query, videos[np.sort(first)][:pool], wanted))
        return out

    def _exact_scores(self, q: np.ndarray) -> np.ndarray:
        """(Nq, N) every video's exact stage-1 score for unit queries ``q`` (Nq, H), block by block."""
        assert self.exact is not None
        n, out = len(self.exact), []
        per_video = len(q) * (self.k if self.spans is None else self.spans[0].shape[0])
        step = max(1, min(STAGE1_BLOCK, STAGE1_FLOATS // per_video))
        for start in range(0, n, step):
            rows = slice(start, start + step)
            out.append(stage1_scores(q, self.exact[rows], *(() if self.spans is None else
                                     (self.spans[0], self.spans[1][rows], self.spans[2][rows]))))
        return np.concatenate(out, axis=1)

    def _rescored(self, q: np.ndarray, pool: np.ndarray, wanted: int) -> np.ndarray:
        """The ``wanted`` best of the ``pool`` rows an approximate stage 1 found for unit query ``q`` (H,), by
        their exact stage-1 score, read from the index's stage-1 arrays (best first, ties in index order)."""
        arrays = self.index.stage1_rows(pool)
        spans = () if self.span_weights is None else (
            self.span_weights, arrays[TOKEN_NORMS], 1.0 / arrays[SPAN_NORMS])
        return _best(pool, stage1_scores(q[None], arrays[STAGE1_KEY], *spans)[0], wanted)

    def search(self, query_tokens: Sequence[Any], top_k: int = 10) -> list[Ranking]:
        """Per query, its ``top_k`` videos: stage-1 candidates reranked by the full score."""
        from trainables.export import check_top_k

        top_k = check_top_k(top_k)
        queries = self.encode(query_tokens)
        candidates = self.stage1_candidates(queries)
        answers: list[Ranking | None] = [None] * len(candidates)
        start = 0
        while start < len(candidates):  # queries in groups whose candidates fit one gather
            stop, union = start, np.empty(0, dtype=np.int64)
            while stop < len(candidates):
                grown = np.union1d(union, candidates[stop])
                if stop > start and len(grown) > RERANK_BLOCK:
                    break
                union, stop = grown, stop + 1
            scores = self._full_scores({k: v[start:stop] for k, v in queries.items()}, self.index.encodings(union))
            for i in range(start, stop):
                own = np.searchsorted(union, candidates[i])
                answers[i] = self._ranking(candidates[i], scores[i - start, own], top_k)
            start = stop
        return [a for a in answers if a is not None]

    def exhaustive(self, query_tokens: Sequence[Any], top_k: int = 10) -> list[Ranking]:
        """Per query, its ``top_k`` videos by the full score of every video of the index."""
        from trainables.export import check_top_k

        top_k = check_top_k(top_k)
        queries = self.encode(query_tokens)
        scores = np.concatenate([self._full_scores(queries, self.index.shard_encodings(s))
                                 for s in range(len(self.index.shards))], axis=1)
        rows = np.arange(self.index.num_videos)
        return [self._ranking(rows, row, top_k) for row in scores]


def _faiss_bytes(index: Any) -> int:
    """The size of a faiss index in memory (its serialised size)."""
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def stage1_scores(q: np.ndarray, unit: np.ndarray, weights: np.ndarray | None = None,
                  token_norms: np.ndarray | None = None, inverse_span_norms: np.ndarray | None = None) -> np.ndarray:
    """(Nq, V) stage-1 scores of unit queries ``q`` (Nq, H) for videos of unit stage-1 vectors ``unit``
    (V, K, H): each video's best inner product; with span ``weights`` (P, K) and the videos' token norms
    (V, K) and inverse span norms (V, P), its best span cosine (W (s * (U q)))_p / |W_p C|."""
    dots = (unit.reshape(-1, unit.shape[2]) @ q.T).reshape(len(unit), unit.shape[1], len(q))  # (V, K, Nq)
    if weights is None:
        return dots.max(axis=1).T
    assert token_norms is not None and inverse_span_norms is not None
    spans = np.matmul(weights, dots * token_norms[:, :, None])  # (V, P, Nq)
    return (spans * inverse_span_norms[:, :, None]).max(axis=1).T


def _best(rows: np.ndarray, scores: np.ndarray, wanted: int) -> np.ndarray:
    """The ``wanted`` rows of best ``scores`` (best first, ties in row order)."""
    top = np.argpartition(-scores, wanted - 1)[:wanted] if wanted < len(scores) else np.arange(len(scores))
    return rows[top[np.lexsort((rows[top], -scores[top]))]]


def agreement(two_stage: Sequence[Ranking], exhaustive: Sequence[Ranking], k: int) -> dict[str, float]:
    """How the two-stage answers match the exhaustive ones at ``k``: the share of queries whose top-k
    ids are identical (in order), and the recall of the exhaustive top-k in the two-stage top-k."""
    same = [a.video_ids[:k] == b.video_ids[:k] for a, b in zip(two_stage, exhaustive)]
    recall = [len(set(a.video_ids[:k]) & set(b.video_ids[:k])) / max(1, len(b.video_ids[:k]))
              for a, b in zip(two_stage, exhaustive)]
    return {"identical_top_k": float(np.mean(same)), "recall_at_k": float(np.mean(recall)), "queries": len(same)}


__all__ = ["Ranking", "Retriever", "agreement", "query_batch"]
