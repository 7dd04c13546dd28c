"""Validation vs test: the queries and videos the two splits share, and a video-disjoint val carved from train.

The release datasets of MS-SL/GMMFormer (TVR, ActivityNet, Charades) ship train and test only, while
their loaders select the best epoch on a ``val`` caption file, which is then the test queries again.
Tuning on such a split tunes on the test split. ``carve_val`` makes a real validation split out of
train (whole videos with all their queries, so no video is in both); ``check_val_test`` refuses a
dataset whose val and test overlap unless the caller asks to reproduce the paper's protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainables.data.errors import DatasetError
from trainables.errors import InputError

#: the command-line flag that accepts an overlapping val/test (named in the refusal)
ALLOW_FLAG = "--allow-val-test-overlap"


@dataclass(frozen=True)
class SplitOverlap:
    """How many queries and videos the val split shares with the test split."""

    queries: int
    videos: int
    val_queries: int
    val_videos: int

    def __bool__(self) -> bool:
        return bool(self.queries or self.videos)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SplitOverlap:
        return cls(**{k: int(raw[k]) for k in ("queries", "videos", "val_queries", "val_videos")})

    def describe(self) -> str:
        """``val shares 50 of 50 queries and 12 of 12 videos with test``."""
        return (f"val shares {self.queries} of {self.val_queries} queries and {self.videos} of "
                f"{self.val_videos} videos with test")


class ValTestOverlapError(DatasetError, ValueError):
    """The validation split shares queries or videos with the test split."""


def overlap_of(val: tuple[Sequence[str], Sequence[str]], test: tuple[Sequence[str], Sequence[str]]) -> SplitOverlap:
    """The overlap of two splits, each given as ``(query ids, video ids)``."""
    val_queries, val_videos = set(val[0]), set(val[1])
    return SplitOverlap(queries=len(val_queries & set(test[0])), videos=len(val_videos & set(test[1])),
                        val_queries=len(val_queries), val_videos=len(val_videos))


def overlap_of_splits(splits: Mapping[str, Sequence[str]], query_video: Mapping[str, str]) -> SplitOverlap | None:
    """The val/test overlap of query-id splits (None unless both exist); ``query_video`` maps query to video."""
    if "val" not in splits or "test" not in splits:
        return None
    val, test = ((splits[s], [query_video[q] for q in splits[s]]) for s in ("val", "test"))
    return overlap_of(val, test)


def store_overlap(location: str | Path) -> SplitOverlap | None:
    """The val/test overlap of a local dataset measured from ``splits.h5`` and the query shards' ids
    (strings only, no features are read); None unless it has both splits."""
    from trainables.data.store import FeatureStore

    store = FeatureStore(location)
    if "val" not in store.manifest.splits or "test" not in store.manifest.splits:
        return None
    splits = {s: store.split_query_ids(s) for s in ("val", "test")}
    return overlap_of_splits(splits, store.query_videos())


def manifest_overlap(manifest: Any, folder: str | Path | None) -> SplitOverlap | None:
    """The val/test overlap a manifest records, else measured in the local dataset ``folder`` (None for a
    remote dataset whose manifest predates the record: the trials check it when they load the data)."""
    if manifest.val_test_overlap is not None:
        return SplitOverlap.from_dict(manifest.val_test_overlap)
    return None if folder is None else store_overlap(folder)


def overlap_tags(overlap: SplitOverlap | None) -> dict[str, str]:
    """MLflow tags of a run whose val/test overlap was allowed, so the UI shows it (none when disjoint)."""
    return {"prvr.val_test_overlap": overlap.describe()} if overlap else {}


def data_overlap(val: Any, test: Any) -> SplitOverlap:
    """The overlap of two loaded splits (anything with ``query_ids`` and ``video_ids``)."""
    return overlap_of((val.query_ids, val.video_ids), (test.query_ids, test.video_ids))


def check_val_test(overlap: SplitOverlap | None, where: str, *, allow: bool = False) -> None:
    """Refuse (one line naming the counts and the two ways out) a dataset whose val overlaps test."""
    if overlap and not allow:
        raise ValTestOverlapError(
            f"{where}: {overlap.describe()}, so epochs and configs would be selected on the test split; "
            f"carve a validation split out of train (search/dataset.py convert ... --val-from-train 0.1) "
            f"or pass {ALLOW_FLAG} to reproduce a paper's protocol")


def carve_val(
    splits: Mapping[str, Sequence[str]],
    video_of: Mapping[str, str],
    fraction: float,
    seed: int = 0,
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Move a seeded ``fraction`` of train's videos, each with all its queries, into a new ``val`` split.

    Returns the new splits (train without those videos, ``val`` replaced, the others as they were, all
    in their stored order) and a record of what was done for the manifest's ``source``. At least one
    video goes to val and at least one stays in train.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--val-from-train must be in (0, 1), got {fraction}")
    if "train" not in splits:
        raise DatasetError(f"--val-from-train needs a train split (splits: {', '.join(splits) or 'none'})")
    train = list(splits["train"])
    videos = list(dict.fromkeys(video_of[q] for q in train))
    if len(videos) < 2:
        raise DatasetError(f"--val-from-train needs at least 2 train videos, train has {len(videos)}")
    count = min(max(1, round(fraction * len(videos))), len(videos) - 1)
    import numpy as np  # here only: the entry points' --help imports this module for ALLOW_FLAG

    picked = np.random.default_rng(seed).choice(len(videos), size=count, replace=False)
    val_videos = {videos[i] for i in picked}
    carved = {name: list(ids) for name, ids in splits.items() if name not in ("train", "val")}
    carved["train"] = [q for q in train if video_of[q] not in val_videos]
    carved["val"] = [q for q in train if video_of[q] in val_videos]
    record = {"fraction": fraction, "seed": seed, "videos": count, "queries": len(carved["val"]),
              "train_videos_before": len(videos), "replaced_val": "val" in splits}
    return {name: carved[name] for name in ("train", "val", *[n for n in carved if n not in ("train", "val")])}, record
