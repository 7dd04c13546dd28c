"""AMDNet's CLIP ViT-B/32 layout (one sentence vector per caption, HDF5 frame features per video).

::

    <root>/<collection>/TextData/<collection>{train,val,test}.caption.txt
    <root>/<collection>/TextData/clip_ViT_B_32_<collection>_query_feat.hdf5          cap_id -> (dim,)
    <root>/<collection>/FeatureData/new_clip_vit_32_<collection>_vid_features.hdf5    video_id -> (n_frames, dim)

AMDNet applies no L2 normalisation, so imported stores are marked ``l2_normalize=False``. Each sentence
vector is stored as a one-token query. AMDNet also reads ``FeatureData/<visual_feature>/video2frames.txt``,
but only for its keys; the importer ignores it and the exporter writes one so the official code runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.data.errors import DatasetError
from trainables.data.importers._io import staged_folder
from trainables.data.importers.bigfile import VIDEO2FRAMES_FILE, write_video2frames
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

LAYOUT = "amdnet-clip"


@dataclass(frozen=True)
class AmdnetPaths:
    """Where each file of one collection lives."""

    collection_dir: Path
    text_dir: Path
    text_features: Path
    video_features: Path

    @classmethod
    def of(cls, collection_dir: Path, collection: str) -> AmdnetPaths:
        text_dir = collection_dir / "TextData"
        return cls(
            collection_dir=collection_dir,
            text_dir=text_dir,
            text_features=text_dir / f"clip_ViT_B_32_{collection}_query_feat.hdf5",
            video_features=collection_dir / "FeatureData" / f"new_clip_vit_32_{collection}_vid_features.hdf5",
        )


def import_amdnet(
    root: str | Path,
    collection: str,
    out_dir: str | Path,
    *,
    splits: Sequence[str] = ("train", "val", "test"),
    dtype: str = "float32",
    videos_per_shard: int = 1000,
    queries_per_shard: int = 5000,
    overwrite: bool = False,
    val_from_train: float | None = None,
    val_seed: int = 0,
) -> Path:
    """Convert one AMDNet-layout collection into a store at ``out_dir``; returns the store folder.

    Same sharing rules as ``import_msrl`` (a caption id in several split files is stored once); dims
    come from the HDF5 files; ``val_from_train`` carves val out of train as there. Errors are one-line
    DatasetErrors naming the file; nothing partial is left.
    """
    paths = AmdnetPaths.of(Path(root).expanduser() / collection, collection)
    splits = splits_to_read(splits, val_from_train)
    captions = read_caption_splits(paths.text_dir, collection, splits)
    with KeyedFeatures(paths.text_features, vectors=True) as texts, KeyedFeatures(paths.video_features) as videos:

        query_tokens = caption_tokens(texts)

        def video_frames(video_id: str, caption: Caption) -> np.ndarray:
            return videos.read(video_id, "video", f" (referenced at {caption.where})")

        first_caption = next(iter(captions.captions.values()))
        plan = ImportPlan(
            name=collection,
            captions=captions,
            video_dim=video_frames(first_caption.video_id, first_caption).shape[1],
            query_dim=query_tokens(first_caption).shape[1],
            l2_normalize=False,
            source={"layout": LAYOUT, "collection": collection,
                    "root": str(Path(root).expanduser().resolve()), "splits": list(splits)},
            video_frames=video_frames,
            query_tokens=query_tokens,
            video_file=paths.video_features,
            query_file=paths.text_features,
        )
        return write_store(plan, out_dir, StoreOptions(dtype, videos_per_shard, queries_per_shard, overwrite,
                                                       val_from_train, val_seed))


def export_amdnet(
    store_location: str | Path,
    root: str | Path,
    collection: str,
    *,
    visual_feature: str = "synthetic",
) -> Path:
    """Write a stored dataset as ``<root>/<collection>`` in AMDNet's layout; returns that folder.

    Every query must have exactly one token vector (its sentence vector). Also writes
    ``FeatureData/<visual_feature>/video2frames.txt``, which the official AMDNet code opens for video ids.
    Atomic and never overwriting, like ``export_msrl``; round-trips bit-exactly through ``import_amdnet``.
    """
    contents = read_store_for_export(store_location)
    multi = next((q for q, v in contents.queries.items() if v.tokens.shape[0] != 1), None)
    if multi is not None:
        count = contents.queries[multi].tokens.shape[0]
        raise DatasetError(f"{contents.manifest_file}: query {multi!r} has {count} token vectors; "
                           f"the AMDNet layout holds one sentence vector per query")
    with staged_folder(Path(root).expanduser() / collection) as folder:
        paths = AmdnetPaths.of(folder, collection)
        paths.text_dir.mkdir(parents=True)
        paths.video_features.parent.mkdir(parents=True)
        write_caption_splits(paths.text_dir, collection, contents.split_captions())
        write_keyed_features(paths.text_features, ((q, v.tokens[0]) for q, v in contents.queries.items()))
        write_keyed_features(paths.video_features, contents.videos.items())
        v2f_dir = paths.video_features.parent / visual_feature
        v2f_dir.mkdir()
        write_video2frames(v2f_dir / VIDEO2FRAMES_FILE,
                           {vid: frame_names(vid, len(frames)) for vid, frames in contents.videos.items()})
    return Path(root).expanduser().resolve() / collection
