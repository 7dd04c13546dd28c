"""What every layout shares: writing merged captions and their features into the store, and reading a
stored dataset back for export."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainables.data.errors import DatasetError
from trainables.data.importers.captions import Caption, CaptionSplits, format_caption_line, video_id_of
from trainables.data.split_overlap import carve_val
from trainables.data.store import FeatureStore
from trainables.data.writer import DatasetWriter


@contextmanager
def blamed_on(where: str | Path) -> Iterator[None]:
    """Re-raise a DatasetError that does not name a file yet with ``where`` in front of it."""
    try:
        yield
    except DatasetError as exc:
        raise DatasetError(f"{where}: {exc}") from None


# -- import ----------------------------------------------------------------------------------------
@dataclass
class ImportPlan:
    """A release dataset ready to convert: its captions, dims and how to read each record's features.

    ``video_frames(video_id, first_caption)`` and ``query_tokens(caption)`` return 2-D float arrays and
    raise DatasetErrors naming their source file; ``video_file`` and ``query_file`` are blamed for
    records the writer rejects (e.g. NaN features).
    """

    name: str
    captions: CaptionSplits
    video_dim: int
    query_dim: int
    l2_normalize: bool
    source: dict[str, Any]
    video_frames: Callable[[str, Caption], np.ndarray]
    query_tokens: Callable[[Caption], np.ndarray]
    video_file: Path
    query_file: Path


def splits_to_read(splits: Sequence[str], val_from_train: float | None) -> tuple[str, ...]:
    """The caption files to read: without ``val`` when val is carved out of train instead."""
    return tuple(s for s in splits if val_from_train is None or s != "val")


@dataclass(frozen=True)
class StoreOptions:
    """How an importer writes its store: the keyword options every ``import_*`` takes, with their defaults
    (``val_from_train``: the fraction of train's videos carved out as val, seeded by ``val_seed``)."""

    dtype: str = "float32"
    videos_per_shard: int = 1000
    queries_per_shard: int = 5000
    overwrite: bool = False
    val_from_train: float | None = None
    val_seed: int = 0


def caption_tokens(texts: Any) -> Callable[[Caption], np.ndarray]:
    """A plan's ``query_tokens``: each caption's token features from ``texts`` (a ``KeyedFeatures``), an
    error naming the caption's line."""
    return lambda caption: texts.read(caption.cap_id, "caption", f" (caption at {caption.where})")


def write_store(plan: ImportPlan, out_dir: str | Path, options: StoreOptions) -> Path:
    """Convert ``plan`` into a store at ``out_dir``: each referenced video once, each caption once.

    With ``options.val_from_train`` that fraction of train's videos (seeded by ``val_seed``) becomes the val
    split, each video with all its queries (``split_overlap.carve_val``), recorded in the manifest's
    ``source``. Everything goes through DatasetWriter, so on any error nothing is published and no
    temporary folder is left behind.
    """
    o = options
    splits, source = plan.captions.splits, dict(plan.source)
    if o.val_from_train is not None:
        video_of = {cap_id: caption.video_id for cap_id, caption in plan.captions.captions.items()}
        splits, source["val_from_train"] = carve_val(splits, video_of, o.val_from_train, o.val_seed)
    with DatasetWriter(out_dir, name=plan.name, video_dim=plan.video_dim, query_dim=plan.query_dim,
                       dtype=o.dtype, videos_per_shard=o.videos_per_shard, queries_per_shard=o.queries_per_shard,
                       l2_normalize=plan.l2_normalize, source=source, overwrite=o.overwrite) as writer:
        for video_id, caption in plan.captions.first_caption().items():
            frames = plan.video_frames(video_id, caption)
            with blamed_on(plan.video_file):
                writer.add_video(video_id, frames)
        for caption in plan.captions.captions.values():
            tokens = plan.query_tokens(caption)
            with blamed_on(plan.query_file):
                writer.add_query(caption.cap_id, caption.video_id, tokens, text=caption.text)
        for split, cap_ids in splits.items():
            writer.set_split(split, cap_ids)
    return writer.out_dir


# -- export ----------------------------------------------------------------------------------------
@dataclass
class StoredQuery:
    video_id: str
    text: str
    tokens: np.ndarray  # (n_tokens, query_dim) float32


@dataclass
class StoreContents:
    """Every split of a stored dataset, merged, with features as float32 (exact for float16 data)."""

    manifest_file: Path
    videos: dict[str, np.ndarray] = field(default_factory=dict)  # first appearance over the splits
    queries: dict[str, StoredQuery] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)

    def split_captions(self) -> dict[str, list[tuple[str, str]]]:
        """``(cap_id, text)`` of each split, in split order."""
        return {split: [(q, self.queries[q].text) for q in ids] for split, ids in self.splits.items()}


def read_store_for_export(location: str | Path) -> StoreContents:
    """Load every split of a stored dataset and check it fits the release layouts.

    The release layouts derive a query's video from its id (``cap_id.split('#')[0]``) and store one
    caption per line, so ids and texts that would not read back identically are refused. Videos and
    queries in no split, and sentence features, have no place in those layouts and are not exported.
    """
    store = FeatureStore(location)
    contents = StoreContents(store.manifest_file)
    for split in store.splits:
        raw = store.load_split(split)
        for i, vid in enumerate(raw.video_ids):
            contents.videos.setdefault(vid, raw.video_frames(i).astype(np.float32))
        for i, qid in enumerate(raw.query_ids):
            vid = raw.video_ids[raw.query_video[i]]
            tokens = raw.query_tokens(i).astype(np.float32)
            contents.queries.setdefault(qid, StoredQuery(vid, raw.query_text[i], tokens))
        contents.splits[split] = list(raw.query_ids)
    _check_exportable(contents)
    return contents


def _check_exportable(contents: StoreContents) -> None:
    where = contents.manifest_file
    for qid, query in contents.queries.items():
        if video_id_of(qid) != query.video_id:
            raise DatasetError(f"{where}: query {qid!r} belongs to video {query.video_id!r}, but the release "
                               f"layouts take its video from the id ('{video_id_of(qid)}'): use ids "
                               f"'<video_id>#...'")
        with blamed_on(where):
            format_caption_line(qid, query.text)
    bad = [key for key in [*contents.videos, *contents.queries] if "/" in key or any(c.isspace() for c in key)]
    if bad:
        raise DatasetError(f"{where}: id {bad[0]!r} contains '/' or whitespace, which release files cannot hold")


def frame_names(video_id: str, count: int) -> list[str]:
    """Frame names written for a video: ``<video_id>_<k>``, k = 0..count-1 (unique across videos)."""
    return [f"{video_id}_{k}" for k in range(count)]
