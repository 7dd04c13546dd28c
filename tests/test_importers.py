"""Importers and exporters of the release layouts (MS-SL BigFile + RoBERTa HDF5, AMDNet CLIP HDF5).

The release folders are written by hand here (numpy bytes, h5py, literal text), independently of the
exporters, and every imported id, split order, text and array is compared with the source values.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

import trainables.data.importers.common as common
from trainables.data.errors import DatasetError
from trainables.data.importers import LAYOUTS, export_amdnet, export_msrl, import_amdnet, import_msrl, msrl
from trainables.data.importers.bigfile import (
    parse_video2frames,
    read_bigfile,
    read_video2frames,
    write_bigfile,
    write_video2frames,
)
from trainables.data.manifest import read_manifest
from trainables.data.store import FeatureStore
from trainables.data.writer import DatasetWriter

COLL = "tvr"
FEAT = "i3d_resnet"


@dataclass
class Release:
    """A hand-written release collection and the values it was written from."""

    root: Path
    videos: dict[str, np.ndarray]
    captions: dict[str, list[tuple[str, str]]]
    tokens: dict[str, np.ndarray]

    @property
    def feature_dir(self) -> Path:
        return self.root / COLL / "FeatureData" / FEAT

    @property
    def text_dir(self) -> Path:
        return self.root / COLL / "TextData"


CAPTIONS = {
    "train": [("v1#enc#0", "a man opens the door"), ("v2#enc#0", ""), ("v1#enc#1", " leading space kept")],
    "val": [("v3#enc#0", "someone laughs"), ("v2#enc#1", "the dog runs")],
    "test": [("v3#enc#0", "someone laughs"), ("v2#enc#1", "the dog runs")],  # val == test
}
# Raw caption files as a release might have them: CRLF, a blank line, a line with no text.
CAPTION_FILES = {
    "train": "v1#enc#0 a man opens the door\r\nv2#enc#0 \n\nv1#enc#1  leading space kept\n",
    "val": "v3#enc#0 someone laughs\nv2#enc#1 the dog runs\n",
    "test": "v3#enc#0 someone laughs\nv2#enc#1 the dog runs",
}


def _release_values(rng: np.random.Generator, video_dim: int, query_dim: int, one_token: bool):
    videos = {vid: rng.normal(size=(n, video_dim)).astype(np.float32)
              for vid, n in [("v1", 3), ("v2", 1), ("v3", 5), ("v9", 2)]}  # v9: referenced by no caption
    cap_ids = [c for split in CAPTIONS.values() for c, _ in split] + ["v9#enc#0"]
    tokens = {c: rng.normal(size=(1 if one_token else int(rng.integers(1, 6)), query_dim)).astype(np.float32)
              for c in dict.fromkeys(cap_ids)}
    return videos, tokens


def _write_captions(text_dir: Path) -> None:
    text_dir.mkdir(parents=True, exist_ok=True)
    for split, content in CAPTION_FILES.items():
        (text_dir / f"{COLL}{split}.caption.txt").write_bytes(content.encode())


def write_msrl_release(root: Path, video_dim: int = 6, query_dim: int = 4, seed: int = 0) -> Release:
    """MS-SL layout by hand: BigFile rows shuffled, video2frames with mixed quoting and a trailing comma."""
    videos, tokens = _release_values(np.random.default_rng(seed), video_dim, query_dim, one_token=False)
    release = Release(root, videos, CAPTIONS, tokens)
    _write_captions(release.text_dir)
    with h5py.File(release.text_dir / f"roberta_{COLL}_query_feat.hdf5", "w") as handle:
        for cap_id, value in tokens.items():
            handle[cap_id] = value
    names = [f"{vid}_{k}" for vid, frames in videos.items() for k in range(len(frames))]
    rows = np.concatenate(list(videos.values()))
    order = np.random.default_rng(seed + 1).permutation(len(names))
    release.feature_dir.mkdir(parents=True)
    (release.feature_dir / "shape.txt").write_text(f"{len(names)} {video_dim}\n")
    (release.feature_dir / "id.txt").write_text("\n".join(names[i] for i in order) + "\n")
    (release.feature_dir / "feature.bin").write_bytes(rows[order].astype("<f4").tobytes())
    entries = [f"{q}{vid}{q}: [{', '.join(f'{q}{vid}_{k}{q}' for k in range(len(frames)))}]"
               for (vid, frames), q in zip(videos.items(), ["'", '"', "'", '"'])]
    (release.feature_dir / "video2frames.txt").write_text("{" + ",\n ".join(entries) + ",}\n")
    return release


def write_amdnet_release(root: Path, dim: int = 512, seed: int = 0) -> Release:
    """AMDNet layout by hand: 1-D CLIP sentence vectors, (n_frames, dim) video entries."""
    videos, tokens = _release_values(np.random.default_rng(seed), dim, dim, one_token=True)
    release = Release(root, videos, CAPTIONS, tokens)
    _write_captions(release.text_dir)
    with h5py.File(release.text_dir / f"clip_ViT_B_32_{COLL}_query_feat.hdf5", "w") as handle:
        for cap_id, value in tokens.items():
            handle[cap_id] = value[0]
    feature_data = root / COLL / "FeatureData"
    (feature_data / FEAT).mkdir(parents=True)
    with h5py.File(feature_data / f"new_clip_vit_32_{COLL}_vid_features.hdf5", "w") as handle:
        for vid, frames in videos.items():
            handle[vid] = frames
    (feature_data / FEAT / "video2frames.txt").write_text("not read by the importer")
    return release


def check_store_matches(out: Path, release: Release, dtype: str) -> None:
    """Every split's ids, order, texts and arrays equal the hand-written source values."""
    store = FeatureStore(out)
    store.verify()
    assert sorted(store.splits) == ["test", "train", "val"]  # the manifest lists splits sorted
    for split, captions in release.captions.items():
        raw = store.load_split(split)
        assert raw.query_ids == [c for c, _ in captions]
        assert raw.query_text == [t for _, t in captions]
        assert raw.video_ids == list(dict.fromkeys(c.split("#")[0] for c, _ in captions))
        for i, cap_id in enumerate(raw.query_ids):
            assert raw.video_ids[raw.query_video[i]] == cap_id.split("#")[0]
            assert raw.query_tokens(i).dtype == np.dtype(dtype)
            np.testing.assert_array_equal(raw.query_tokens(i), release.tokens[cap_id].astype(dtype))
        for i, vid in enumerate(raw.video_ids):
            np.testing.assert_array_equal(raw.video_frames(i), release.videos[vid].astype(dtype))
    manifest = store.manifest
    assert (manifest.num_videos, manifest.num_queries) == (3, 5)  # v9 not stored; val/test queries once
    assert manifest.num_frames == 3 + 1 + 5
    assert manifest.num_tokens == sum(release.tokens[c].shape[0] for c in ["v1#enc#0", "v2#enc#0", "v1#enc#1",
                                                                           "v3#enc#0", "v2#enc#1"])
    assert manifest.splits["val"].num_queries == manifest.splits["test"].num_queries == 2


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- importers on hand-written releases ------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_import_msrl_handmade(tmp_path, dtype):
    release = write_msrl_release(tmp_path / "release")
    out = import_msrl(release.root, COLL, tmp_path / "store", visual_feature=FEAT, dtype=dtype,
                      videos_per_shard=2, queries_per_shard=2)
    assert out == (tmp_path / "store").resolve()
    check_store_matches(out, release, dtype)
    manifest = read_manifest(out)
    assert (manifest.video_dim, manifest.query_dim, manifest.dtype) == (6, 4, dtype)
    assert manifest.l2_normalize is True
    assert manifest.source["layout"] == "msrl"
    assert (manifest.source["collection"], manifest.source["visual_feature"]) == (COLL, FEAT)
    assert len(manifest.shards_of("videos")) == 2 and len(manifest.shards_of("queries")) == 3


def test_import_amdnet_handmade(tmp_path):
    release = write_amdnet_release(tmp_path / "release")
    out = import_amdnet(release.root, COLL, tmp_path / "store")
    check_store_matches(out, release, "float32")
    manifest = read_manifest(out)
    assert (manifest.video_dim, manifest.query_dim) == (512, 512)
    assert manifest.l2_normalize is False
    assert manifest.source["layout"] == "amdnet-clip" and manifest.source["collection"] == COLL
    raw = FeatureStore(out).load_split("train")
    assert raw.query_tokens(0).shape == (1, 512)


def test_import_subset_of_splits(tmp_path):
    release = write_msrl_release(tmp_path / "release")
    out = import_msrl(release.root, COLL, tmp_path / "store", visual_feature=FEAT, splits=("test",))
    manifest = read_manifest(out)
    assert list(manifest.splits) == ["test"]
    assert (manifest.num_videos, manifest.num_queries) == (2, 2)


def test_layout_registry():
    assert LAYOUTS == {"msrl": import_msrl, "amdnet": import_amdnet}


# -- BigFile and video2frames ---------------------------------------------------------------------
def test_bigfile_and_video2frames_round_trip(tmp_path):
    features = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    write_bigfile(tmp_path / "bf", ["a_0", "a_1", "b_0", "b_1"], features)
    assert (tmp_path / "bf" / "shape.txt").read_text().split() == ["4", "3"]
    assert (tmp_path / "bf" / "feature.bin").read_bytes() == features.astype("<f4").tobytes()
    bigfile = read_bigfile(tmp_path / "bf")
    np.testing.assert_array_equal(bigfile.rows(["b_1", "a_0", "b_1"]), features[[3, 0, 3]])
    tricky = {"it's": ["say \"hi\"", "back\\slash", "é\tß"], "plain": ["x"], "none": []}
    write_video2frames(tmp_path / "v2f.txt", tricky)
    text = (tmp_path / "v2f.txt").read_text(encoding="utf-8")
    assert ast.literal_eval(text) == tricky  # what the release's eval would see
    assert read_video2frames(tmp_path / "v2f.txt") == tricky


def test_video2frames_accepts_python_literal_variants():
    text = "{\n  u'v1' : [ 'f1' , \"f2\", ],\n  \"v2\": [],\n}\n"
    assert parse_video2frames(text) == ast.literal_eval(text) == {"v1": ["f1", "f2"], "v2": []}


@pytest.mark.parametrize("text, problem", [
    ("{'v1': 'v1_0'}", r":1: expected 'video_id': \['frame name', \.\.\.\]"),
    ("{'v1': ['v1_0']", r":1: expected ',' or the closing brace"),
    ("{'v1': ['v1_0'] 'v2': []}", r":1: expected ',' or the closing brace"),
    ("{'v1': ['a'],\n 'v1': ['b']}", r":2: duplicate video 'v1'"),
    ("{'v1': [1, 2]}", r":1: expected 'video_id'"),
    ("['v1_0']", r":1: not a dict literal"),
])
def test_video2frames_malformed(tmp_path, text, problem):
    path = tmp_path / "video2frames.txt"
    path.write_text(text)
    with pytest.raises(DatasetError, match=rf"^{path}{problem}"):
        read_video2frames(path)


@pytest.mark.parametrize("template", [
    "__import__('os').system('touch {marker}')",
    "{{'v1': [__import__('os').system('touch {marker}')]}}",
    "{{'v1': ['v1_0'], **__import__('os').system('touch {marker}')}}",
])
def test_malicious_video2frames_is_never_executed(tmp_path, template):
    release = write_msrl_release(tmp_path / "release")
    marker = tmp_path / "PWNED"
    (release.feature_dir / "video2frames.txt").write_text(template.format(marker=marker))
    with pytest.raises(DatasetError, match=r"video2frames\.txt:1: (not a dict literal|expected 'video_id')"):
        import_msrl(release.root, COLL, tmp_path / "stores" / "out", visual_feature=FEAT)
    assert not marker.exists()
    assert leftovers(tmp_path / "stores") == []


# -- errors: each names the file and the problem, and leaves nothing behind ---------------------------
def _truncate(r: Release) -> None:
    path = r.feature_dir / "feature.bin"
    path.write_bytes(path.read_bytes()[:-4])


def _append(r: Release) -> None:
    with open(r.feature_dir / "feature.bin", "ab") as handle:
        handle.write(b"\0" * 8)


def _drop_id(r: Release) -> None:
    names = (r.feature_dir / "id.txt").read_text().split()
    (r.feature_dir / "id.txt").write_text(" ".join(names[:-1]))


def _edit(path_of, old: str, new: str):
    def edit(r: Release) -> None:
        path = path_of(r)
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, 1))
    return edit


def _v2f(r: Release) -> Path:
    return r.feature_dir / "video2frames.txt"


def _train(r: Release) -> Path:
    return r.text_dir / f"{COLL}train.caption.txt"


def _drop_text(cap_id: str):
    def drop(r: Release) -> None:
        with h5py.File(r.text_dir / f"roberta_{COLL}_query_feat.hdf5", "a") as handle:
            del handle[cap_id]
    return drop


def _resize_text(cap_id: str, width: int):
    def resize(r: Release) -> None:
        with h5py.File(r.text_dir / f"roberta_{COLL}_query_feat.hdf5", "a") as handle:
            del handle[cap_id]
            handle[cap_id] = np.ones((2, width), np.float32)
    return resize


def _nan_frame(r: Release) -> None:
    row = (r.feature_dir / "id.txt").read_text().split().index("v3_2")
    path = r.feature_dir / "feature.bin"
    data = np.frombuffer(path.read_bytes(), "<f4").reshape(11, 6).copy()
    data[row, 1] = np.nan
    path.write_bytes(data.tobytes())


MSRL_ERRORS = [
    ("truncated", _truncate, r"feature\.bin: truncated: 260 bytes, but 11 x 6 float32 need 264$"),
    ("too large", _append, r"feature\.bin: too large: 272 bytes, but 11 x 6 float32 need 264$"),
    ("id count", _drop_id, r"id\.txt: lists 10 frame names, \S*shape\.txt says 11$"),
    ("shape malformed", lambda r: (r.feature_dir / "shape.txt").write_text("11 x 6"),
     r"shape\.txt: malformed, expected two non-negative integers 'N D'"),
    ("v2f malformed", _edit(_v2f, "]", ""), r"video2frames\.txt:1: expected 'video_id'"),
    ("video missing", _edit(_v2f, "'v3'", "'v3x'"),
     r"video2frames\.txt: has no entry for video 'v3' \(referenced at \S*tvrval\.caption\.txt:1\)$"),
    ("frame missing", _edit(_v2f, "'v3_4'", "'v3_7'"),
     r"id\.txt: has no frame 'v3_7' \(listed for video 'v3' in \S*video2frames\.txt\)$"),
    ("cap missing", _drop_text("v2#enc#1"),
     r"roberta_tvr_query_feat\.hdf5: has no features for caption 'v2#enc#1' \(caption at \S*tvrval\.caption\.txt:2\)$"),
    ("text dim", _resize_text("v3#enc#0", 5),
     r"roberta_tvr_query_feat\.hdf5: caption 'v3#enc#0' has feature dim 5, but 'v1#enc#0' has 4$"),
    ("duplicate cap", _edit(_train, "v1#enc#1", "v1#enc#0"),
     r"tvrtrain\.caption\.txt:4: duplicate caption id 'v1#enc#0' \(first on line 1\)$"),
    ("malformed cap", _edit(_train, "v2#enc#0 ", "#v2 x"),
     r"tvrtrain\.caption\.txt:2: malformed caption id '#v2': has an empty video id"),
    ("text conflict", _edit(lambda r: r.text_dir / f"{COLL}test.caption.txt", "someone", "nobody"),
     r"tvrtest\.caption\.txt:1: caption 'v3#enc#0' has a different text than at \S*tvrval\.caption\.txt:1$"),
    ("missing split", lambda r: (r.text_dir / f"{COLL}val.caption.txt").unlink(),
     r"tvrval\.caption\.txt: caption file of split 'val' is missing \(splits with a caption file: test, train; "
     r"pass splits=\('test', 'train'\) to import only those\)$"),
    ("text file missing", lambda r: (r.text_dir / f"roberta_{COLL}_query_feat.hdf5").unlink(),
     r"roberta_tvr_query_feat\.hdf5: file is missing$"),
    ("nan", _nan_frame, r"feature\.bin: video 'v3': features contain NaN or infinity$"),
]


@pytest.mark.parametrize("corrupt, message", [e[1:] for e in MSRL_ERRORS], ids=[e[0] for e in MSRL_ERRORS])
def test_msrl_errors_name_file_and_problem(tmp_path, corrupt, message):
    release = write_msrl_release(tmp_path / "release")
    corrupt(release)
    with pytest.raises(DatasetError, match=message) as info:
        import_msrl(release.root, COLL, tmp_path / "stores" / "out", visual_feature=FEAT)
    assert str(info.value).startswith(str(tmp_path / "release"))
    assert "\n" not in str(info.value)
    assert leftovers(tmp_path / "stores") == []


def _replace_amd(file: str, key: str, value: np.ndarray | None):
    def replace(r: Release) -> None:
        folder = r.text_dir if "query" in file else r.root / COLL / "FeatureData"
        with h5py.File(folder / file.format(COLL), "a") as handle:
            del handle[key]
            if value is not None:
                handle[key] = value
    return replace


AMD_ERRORS = [
    ("2-D sentence", _replace_amd("clip_ViT_B_32_{}_query_feat.hdf5", "v1#enc#1", np.ones((1, 512), np.float32)),
     r"clip_ViT_B_32_tvr_query_feat\.hdf5: caption 'v1#enc#1' has shape \(1, 512\), expected a non-empty 1-D vector$"),
    ("video missing", _replace_amd("new_clip_vit_32_{}_vid_features.hdf5", "v3", None),
     r"new_clip_vit_32_tvr_vid_features\.hdf5: has no features for video 'v3' \(referenced at "
     r"\S*tvrval\.caption\.txt:1\)$"),
    ("video dim", _replace_amd("new_clip_vit_32_{}_vid_features.hdf5", "v2", np.ones((2, 256), np.float32)),
     r"new_clip_vit_32_tvr_vid_features\.hdf5: video 'v2' has feature dim 256, but 'v1' has 512$"),
    ("int features", _replace_amd("new_clip_vit_32_{}_vid_features.hdf5", "v3", np.ones((2, 512), np.int32)),
     r"new_clip_vit_32_tvr_vid_features\.hdf5: video 'v3' has dtype int32, expected floating point$"),
]


@pytest.mark.parametrize("corrupt, message", [e[1:] for e in AMD_ERRORS], ids=[e[0] for e in AMD_ERRORS])
def test_amdnet_errors_name_file_and_problem(tmp_path, corrupt, message):
    release = write_amdnet_release(tmp_path / "release")
    corrupt(release)
    with pytest.raises(DatasetError, match=message):
        import_amdnet(release.root, COLL, tmp_path / "stores" / "out")
    assert leftovers(tmp_path / "stores") == []


def test_failure_mid_write_leaves_no_out_dir_and_no_temp(tmp_path, monkeypatch):
    """The last caption lacks features: shards were already written to the temp folder, then discarded."""
    seen: list[tuple[Path, list[str]]] = []

    class SpyWriter(DatasetWriter):
        def abort(self) -> None:
            seen.append((self.tmp_dir, leftovers(self.tmp_dir)))
            super().abort()

    monkeypatch.setattr(common, "DatasetWriter", SpyWriter)
    release = write_msrl_release(tmp_path / "release")
    _drop_text("v2#enc#1")(release)
    with pytest.raises(DatasetError, match=r"has no features for caption 'v2#enc#1'"):
        import_msrl(release.root, COLL, tmp_path / "stores" / "out", visual_feature=FEAT,
                    videos_per_shard=1, queries_per_shard=1)
    (tmp_dir, files_at_abort), = seen
    assert "videos-00002.h5" in files_at_abort and "queries-00003.h5" in files_at_abort
    assert not tmp_dir.exists()
    assert leftovers(tmp_path / "stores") == []


def test_import_refuses_existing_out_dir_unless_overwrite(tmp_path):
    release = write_msrl_release(tmp_path / "release")
    out = tmp_path / "store"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match=r"store: already exists and is not empty"):
        import_msrl(release.root, COLL, out, visual_feature=FEAT)
    assert (out / "keep.txt").read_text() == "mine"
    import_msrl(release.root, COLL, out, visual_feature=FEAT, overwrite=True)
    assert not (out / "keep.txt").exists() and read_manifest(out).num_queries == 5


# -- export -> import round trips ------------------------------------------------------------------
def _assert_same_store(a: Path, b: Path) -> None:
    """Same splits, ids, orders, texts, dtypes and feature bits."""
    store_a, store_b = FeatureStore(a), FeatureStore(b)
    assert store_a.splits == store_b.splits
    ma, mb = store_a.manifest, store_b.manifest
    for key in ["video_dim", "query_dim", "dtype", "num_videos", "num_queries", "num_frames", "num_tokens"]:
        assert getattr(ma, key) == getattr(mb, key), key
    for split in store_a.splits:
        x, y = store_a.load_split(split), store_b.load_split(split)
        assert (x.query_ids, x.video_ids, x.query_text) == (y.query_ids, y.video_ids, y.query_text)
        for name in ["query_video", "token_offsets", "frame_offsets"]:
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
        assert x.tokens.dtype == y.tokens.dtype and x.frames.dtype == y.frames.dtype
        assert x.tokens.tobytes() == y.tokens.tobytes() and x.frames.tobytes() == y.frames.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_msrl_round_trip_bit_exact(tmp_path, make_dataset, dtype):
    source, videos, _ = make_dataset(dtype=dtype)  # train and test share video 4's queries
    folder = export_msrl(source, tmp_path / "release", "synth", visual_feature="feat")
    assert folder == (tmp_path / "release" / "synth").resolve()
    assert (folder / "FeatureData" / "feat" / "shape.txt").read_text().split() == [
        str(sum(len(f) for f in videos.values())), "8"]
    captions = (folder / "TextData" / "synthtrain.caption.txt").read_text().splitlines()
    assert captions[0] == "vid4#enc#1 text of vid4#enc#1"
    assert leftovers(tmp_path / "release") == ["synth"]
    back = import_msrl(tmp_path / "release", "synth", tmp_path / "back", visual_feature="feat",
                       splits=("train", "test"), dtype=dtype)
    _assert_same_store(source, back)
    assert read_manifest(back).l2_normalize is True


def _one_token_store(out: Path, dtype: str) -> Path:
    rng = np.random.default_rng(5)
    with DatasetWriter(out, name="one", video_dim=7, query_dim=3, dtype=dtype) as writer:
        for v in range(3):
            writer.add_video(f"v{v}", rng.normal(size=(v + 1, 7)))
            for k in range(2):
                writer.add_query(f"v{v}#{k}", f"v{v}", rng.normal(size=(1, 3)), text=f"query {v} {k}")
        writer.set_split("train", ["v2#1", "v0#0", "v2#0", "v1#1"])
        writer.set_split("val", ["v0#1", "v1#0"])
        writer.set_split("test", ["v1#0", "v0#1"])
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_amdnet_round_trip_bit_exact(tmp_path, dtype):
    source = _one_token_store(tmp_path / "source", dtype)
    folder = export_amdnet(source, tmp_path / "release", "synth")
    with h5py.File(folder / "TextData" / "clip_ViT_B_32_synth_query_feat.hdf5", "r") as handle:
        assert handle["v0#1"].shape == (3,) and handle["v0#1"].dtype == np.float32
    assert read_video2frames(folder / "FeatureData" / "synthetic" / "video2frames.txt")["v2"] == ["v2_0", "v2_1",
                                                                                                  "v2_2"]
    back = import_amdnet(tmp_path / "release", "synth", tmp_path / "back", dtype=dtype)
    _assert_same_store(source, back)


def test_export_refuses_existing_collection(tmp_path, make_dataset):
    source, _, _ = make_dataset()
    (tmp_path / "release" / "synth").mkdir(parents=True)
    (tmp_path / "release" / "synth" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match=r"synth: already exists; refusing to overwrite it$"):
        export_msrl(source, tmp_path / "release", "synth")
    assert leftovers(tmp_path / "release" / "synth") == ["keep.txt"]
    assert leftovers(tmp_path / "release") == ["synth"]


def test_export_amdnet_needs_one_token_per_query(tmp_path, make_dataset):
    source, _, _ = make_dataset()
    with pytest.raises(DatasetError, match=r"manifest\.json: query '\S+' has \d+ token vectors; the AMDNet layout"):
        export_amdnet(source, tmp_path / "release", "synth")
    assert leftovers(tmp_path / "release") == []


def test_export_refuses_ids_the_layout_cannot_hold(tmp_path):
    with DatasetWriter(tmp_path / "src", name="bad", video_dim=2, query_dim=2) as writer:
        writer.add_video("clip", np.ones((1, 2)))
        writer.add_query("q1", "clip", np.ones((1, 2)))
        writer.set_split("train", ["q1"])
    with pytest.raises(DatasetError, match=r"manifest\.json: query 'q1' belongs to video 'clip', but the release"):
        export_msrl(tmp_path / "src", tmp_path / "release", "synth")
    assert leftovers(tmp_path / "release") == []


def test_export_mid_write_failure_leaves_nothing(tmp_path, make_dataset, monkeypatch):
    source, _, _ = make_dataset()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(msrl, "write_video2frames", broken)
    with pytest.raises(OSError, match="disk full"):
        export_msrl(source, tmp_path / "release", "synth")
    assert leftovers(tmp_path / "release") == []
