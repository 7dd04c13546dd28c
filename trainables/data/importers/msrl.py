"""The MS-SL / GMMFormer release layout (RoBERTa token features + a BigFile of I3D frame features).

::

    <root>/<collection>/TextData/<collection>{train,val,test}.caption.txt
    <root>/<collection>/TextData/roberta_<collection>_query_feat.hdf5      cap_id -> (n_tokens, q_dim)
    <root>/<collection>/FeatureData/<visual_feature>/{feature.bin,id.txt,shape.txt,video2frames.txt}

The loaders of that family L2-normalise every frame and token vector, so imported stores are marked
``l2_normalize=True`` and keep the raw features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.data.errors import DatasetError
from trainables.data.importers._io import staged_folder
from trainables.data.importers.bigfile import (
    FEATURE_FILE,
    VIDEO2FRAMES_FILE,
    BigFile,
    read_bigfile,
    read_video2frames,
    write_bigfile,
    write_video2frames,
)
from trainables.data.importers.captions import Caption, read_caption_splits, write_caption_splits
from trainables.data.importers.common import (
    ImportPlan,
    StoreOptions,
    caption_tokens,
    frame_names,
    read_store_for_export,
    splits_to_read,
    write_store,
)
from trainables.data.importers.keyed_hdf5 import KeyedFeatures, write_keyed_features

LAYOUT = "msrl"


@dataclass(frozen=True)
class MsrlPaths:
    """Where each file of one collection lives."""

    collection_dir: Path
    text_dir: Path
    text_features: Path
    feature_dir: Path

    @classmethod
    def of(cls, collection_dir: Path, collection: str, visual_feature: str) -> MsrlPaths:
        text_dir = collection_dir / "TextData"
        return cls(
            collection_dir=collection_dir,
            text_dir=text_dir,
            text_features=text_dir / f"roberta_{collection}_query_feat.hdf5",
            feature_dir=collection_dir / "FeatureData" / visual_feature,
        )


def _frame_reader(
    bigfile: BigFile, video2frames: dict[str, list[str]], v2f_path: Path
) -> Callable[[str, Caption], np.ndarray]:
    """``video_frames`` for the plan: a video's BigFile rows, in its video2frames order."""

    def video_frames(video_id: str, caption: Caption) -> np.ndarray:
        names = video2frames.get(video_id)
        if names is None:
            raise DatasetError(f"{v2f_path}: has no entry for video {video_id!r} (referenced at {caption.where})")
        if not names:
            raise DatasetError(f"{v2f_path}: video {video_id!r} has an empty frame list")
        return bigfile.rows(names, context=f" (listed for video {video_id!r} in {v2f_path})")

    return video_frames


def import_msrl(
    root: str | Path,
    collection: str,
    out_dir: str | Path,
    *,
    visual_feature: str,
    splits: Sequence[str] = ("train", "val", "test"),
    dtype: str = "float32",
    videos_per_shard: int = 1000,
    queries_per_shard: int = 5000,
    overwrite: bool = False,
    val_from_train: float | None = None,
    val_seed: int = 0,
) -> Path:
    """Convert one MS-SL-layout collection into a store at ``out_dir``; returns the store folder.

    Each caption id is stored once and listed in every split whose caption file has it (some releases
    ship ``val`` identical to ``test``); each referenced video is stored once with the BigFile rows of
    its ``video2frames`` frames, in order. Dims come from ``shape.txt`` and the text HDF5. Any problem
    is a one-line DatasetError naming the file at fault, and leaves no ``out_dir`` behind.
    ``val_from_train`` (a fraction) carves a video-disjoint val split out of train, seeded by
    ``val_seed``; the release's own val file, if any, is then not read (``common.write_store``).
    """
    paths = MsrlPaths.of(Path(root).expanduser() / collection, collection, visual_feature)
    splits = splits_to_read(splits, val_from_train)
    captions = read_caption_splits(paths.text_dir, collection, splits)
    bigfile = read_bigfile(paths.feature_dir)
    v2f_path = paths.feature_dir / VIDEO2FRAMES_FILE
    video2frames = read_video2frames(v2f_path)
    with KeyedFeatures(paths.text_features) as texts:
        query_tokens = caption_tokens(texts)
        query_dim = query_tokens(next(iter(captions.captions.values()))).shape[1]
        plan = ImportPlan(
            name=collection,
            captions=captions,
            video_dim=bigfile.dim,
            query_dim=query_dim,
            l2_normalize=True,
            source={"layout": LAYOUT, "collection": collection, "visual_feature": visual_feature,
                    "root": str(Path(root).expanduser().resolve()), "splits": list(splits)},
            video_frames=_frame_reader(bigfile, video2frames, v2f_path),
            query_tokens=query_tokens,
            video_file=paths.feature_dir / FEATURE_FILE,
            query_file=paths.text_features,
        )
        return write_store(plan, out_dir, StoreOptions(dtype, videos_per_shard, queries_per_shard, overwrite,
                                                       val_from_train, val_seed))


def export_msrl(
    store_location: str | Path,
    root: str | Path,
    collection: str,
    *,
    visual_feature: str = "synthetic",
) -> Path:
    """Write a stored dataset as ``<root>/<collection>`` in the MS-SL release layout; returns that folder.

    Features are written as float32 (exact for float16 stores), frames named ``<video_id>_<k>``, one
    caption file per stored split. The folder is built under a temporary name and renamed into place;
    an existing collection folder is never replaced. ``import_msrl`` of the result with the store's
    dtype gives back the same ids, split orders, texts and feature bits.
    """
    contents = read_store_for_export(store_location)
    with staged_folder(Path(root).expanduser() / collection) as folder:
        paths = MsrlPaths.of(folder, collection, visual_feature)
        paths.text_dir.mkdir(parents=True)
        write_caption_splits(paths.text_dir, collection, contents.split_captions())
        write_keyed_features(paths.text_features, ((q, v.tokens) for q, v in contents.queries.items()))
        video2frames = {vid: frame_names(vid, len(frames)) for vid, frames in contents.videos.items()}
        names = [name for frames in video2frames.values() for name in frames]
        write_bigfile(paths.feature_dir, names, np.concatenate(list(contents.videos.values())))
        write_video2frames(paths.feature_dir / VIDEO2FRAMES_FILE, video2frames)
    return Path(root).expanduser().resolve() / collection
