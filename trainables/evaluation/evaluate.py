"""Full-corpus evaluation of a backbone on a split, as the release protocol does it.

Every video of the split is encoded once; queries are encoded and scored in chunks against **all**
videos of the split (one relevant video per query), branch by branch (``clip``, ``frame``, ``fused``,
...), and each chunk's scores become ranks right away, so peak memory is one chunk's scores plus the
video encodings, whatever the number of queries.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from trainables.data.loader import PreparedSplit, eval_loaders
from trainables.evaluation.metrics import ground_truth_ranks, metrics_from_ranks
from trainables.models.base import Backbone, Tensors


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def encode_videos(model: Backbone, split: PreparedSplit, device: torch.device, batch_size: int) -> Tensors:
    """Every video's encoding, concatenated in split order (frames padded to the split's longest)."""
    videos, _ = eval_loaders(split, video_batch=batch_size)
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in videos:
        batch = _to(batch, device)
        encoded = model.encode_videos(batch["clip_video_features"], batch["frame_video_features"], batch["videos_mask"],
                                      batch.get("frame_scales"))
        for key, value in encoded.items():
            parts.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in parts.items()}


@torch.no_grad()
def score_chunks(model: Backbone, split: PreparedSplit, videos: Tensors, device: torch.device,
                 chunk: int) -> Iterator[tuple[torch.Tensor, Tensors]]:
    """(ground-truth video index, {branch: scores}) for each chunk of ``chunk`` queries."""
    _, queries = eval_loaders(split, query_batch=chunk)
    for batch in queries:
        batch = _to(batch, device)
        encoded = model.encode_queries(batch["text_feat"], batch["text_mask"])
        yield batch["gt_video"], model.score(encoded, videos)


def evaluate(model: Backbone, split: PreparedSplit, device: torch.device | str = "cpu", *,
             video_batch: int | None = None, query_chunk: int = 100) -> dict[str, dict[str, float]]:
    """R@1/5/10/100, SumR, MedR and MeanR per score branch of ``model`` on ``split``; videos are encoded
    ``video_batch`` at a time (default: the backbone's ``eval_video_batch`` training default, else 256)."""
    ranks = evaluate_ranks(model, split, device, video_batch=video_batch, query_chunk=query_chunk)
    return {branch: metrics_from_ranks(values) for branch, values in ranks.items()}


@torch.no_grad()
def evaluate_ranks(model: Backbone, split: PreparedSplit, device: torch.device | str = "cpu", *,
                   video_batch: int | None = None, query_chunk: int = 100) -> dict[str, np.ndarray]:
    """Per score branch, the 1-based rank of each query's relevant video, in ``split.query_ids`` order
    (what per-query statistics, e.g. an ablation's paired bootstrap, are computed from)."""
    device = torch.device(device)
    if video_batch is None:
        video_batch = int(type(model).training_defaults.get("eval_video_batch", 256))
    was_training = model.training
    model.eval()
    try:
        videos = encode_videos(model, split, device, video_batch)
        ranks: dict[str, list[np.ndarray]] = {}
        first = 0
        for gt, scores in score_chunks(model, split, videos, device, query_chunk):
            for branch, matrix in scores.items():
                ranks.setdefault(branch, []).append(
                    ground_truth_ranks(matrix.float().cpu().numpy(), gt.cpu().numpy(), first_query=first))
            first += gt.shape[0]
    finally:
        model.train(was_training)
    return {branch: np.concatenate(parts) for branch, parts in ranks.items()}
