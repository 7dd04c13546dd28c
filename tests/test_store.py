"""The sharded feature store: round trip, checksums, and every bad input named clearly."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from trainables.data.errors import DatasetError
from trainables.data.manifest import read_manifest, sha256_file
from trainables.data.store import FeatureStore
from trainables.data.writer import DatasetWriter


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.parametrize("max_direct_reads", [0, 64], ids=["whole-matrix", "read-into-place"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_every_split_and_shard(make_dataset, dtype, max_direct_reads, monkeypatch):
    """Both ways rows reach the output (one HDF5 read per run of rows, or the matrix read once and the
    runs copied out) give each item its own rows, in a split in stored order and in one reversed."""
    monkeypatch.setattr("trainables.data.store.MAX_DIRECT_READS", max_direct_reads)
    root, videos, queries = make_dataset(dtype=dtype, sentence_dim=5)
    manifest = read_manifest(root)
    assert len(manifest.shards_of("videos")) == 3 and len(manifest.shards_of("queries")) == 4
    assert manifest.num_frames == sum(f.shape[0] for f in videos.values())
    assert manifest.num_tokens == sum(q[1].shape[0] for q in queries.values())
    store = FeatureStore(root)
    store.verify()
    for split, expected_ids in [("train", [q for q in queries if int(q[3]) <= 4][::-1]),
                                ("test", [q for q in queries if int(q[3]) >= 4])]:
        raw = store.load_split(split)
        assert raw.query_ids == expected_ids
        # video order = first appearance among the split's queries (release read_video_ids)
        assert raw.video_ids == list(dict.fromkeys(queries[q][0] for q in expected_ids))
        assert manifest.splits[split].num_videos == raw.num_videos
        for i, qid in enumerate(raw.query_ids):
            vid, tokens, sentence = queries[qid]
            assert raw.video_ids[raw.query_video[i]] == vid
            assert raw.query_tokens(i).dtype == np.dtype(dtype)
            np.testing.assert_array_equal(raw.query_tokens(i), tokens)
            np.testing.assert_array_equal(raw.sentence[i], sentence)
            assert raw.query_text[i] == f"text of {qid}"
        for i, vid in enumerate(raw.video_ids):
            np.testing.assert_array_equal(raw.video_frames(i), videos[vid])


def test_manifest_records_sizes_and_hashes(make_dataset):
    root, _, _ = make_dataset()
    manifest = read_manifest(root / "manifest.json")
    for shard in manifest.shards:
        path = root / shard.file
        assert shard.bytes == path.stat().st_size
        assert shard.sha256 == sha256_file(path)
    assert {s.file for s in manifest.shards} | {"manifest.json"} == {p.name for p in root.iterdir()}


def test_checksum_mismatch_named_on_verify_and_on_verified_load(make_dataset):
    root, _, _ = make_dataset()
    shard = root / "videos-00001.h5"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    store = FeatureStore(root)
    with pytest.raises(DatasetError, match=r"videos-00001\.h5: sha256"):
        store.verify()
    with pytest.raises(DatasetError, match=r"videos-00001\.h5: sha256 \w+\.\.\. does not match"):
        store.load_split("test", verify=True)


def _flip_a_byte(shard: Path, at: int = -10) -> None:
    data = bytearray(shard.read_bytes())
    data[at] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))


def _age(root: Path, seconds: int = 3600) -> None:
    """Set every file's mtime ``seconds`` back: older than the racy window, so its hash is remembered."""
    import os
    import time

    for path in root.iterdir():
        os.utime(path, ns=(path.stat().st_atime_ns, time.time_ns() - seconds * 10**9))


def test_same_size_corruption_is_refused_on_a_plain_load(make_dataset):
    # issue 21 item 4: a plain load (what training does) checked sizes only and read the changed bytes
    root, _, _ = make_dataset()
    _flip_a_byte(root / "videos-00001.h5")
    with pytest.raises(DatasetError, match=r"videos-00001\.h5: sha256 \w+\.\.\. does not match the manifest"):
        FeatureStore(root).load_split("test")
    with pytest.raises(DatasetError, match=r"videos-00001\.h5: sha256"):
        FeatureStore(root).check()


def test_checksums_are_hashed_once_per_file_version(make_dataset, monkeypatch):
    """A file is hashed once per process per (path, inode, size, mtime_ns); a same-size rewrite changes
    mtime_ns and is hashed again; a file modified within the racy window is never remembered."""
    import trainables.data.store as store_module

    root, _, _ = make_dataset()
    hashed: list[str] = []
    real = store_module.sha256_file
    monkeypatch.setattr(store_module, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    FeatureStore(root).load_split("train")
    fresh = len(hashed)
    assert fresh > 0
    FeatureStore(root).load_split("train")
    assert len(hashed) == 2 * fresh  # just written: within the racy window, hashed on every load
    _age(root)
    FeatureStore(root).load_split("train")
    FeatureStore(root).load_split("train")
    FeatureStore(root).check()
    once = len(hashed)
    FeatureStore(root).load_split("train")
    FeatureStore(root).check()
    assert len(hashed) == once  # remembered: nothing read again
    shard = root / "videos-00000.h5"
    _flip_a_byte(shard)
    _age(root, seconds=1800)  # an old mtime again, but a different one
    with pytest.raises(DatasetError, match=r"videos-00000\.h5: sha256"):
        FeatureStore(root).load_split("train")
    _flip_a_byte(shard)  # back to the original bytes
    _age(root, seconds=900)
    FeatureStore(root).load_split("train")


def test_a_corrupted_preset_cache_is_generated_again(tmp_path):
    # the preset cache checked sizes only: same-size corruption was used as a current dataset
    from trainables.data.synthetic import ensure_synthetic

    folder = ensure_synthetic("tiny", cache_dir=tmp_path)
    manifest = read_manifest(folder)
    shard = folder / manifest.shards_of("videos")[0].file
    _flip_a_byte(shard, at=shard.stat().st_size // 2)
    assert sha256_file(shard) != manifest.shards_of("videos")[0].sha256
    again = ensure_synthetic("tiny", cache_dir=tmp_path)
    FeatureStore(again).verify()


def test_truncated_shard(make_dataset):
    root, _, _ = make_dataset()
    shard = root / "queries-00002.h5"
    shard.write_bytes(shard.read_bytes()[:500])
    with pytest.raises(DatasetError, match=r"queries-00002\.h5: shard is 500 bytes, the manifest says \d+ \(truncated"):
        FeatureStore(root).load_split("train")


def test_missing_shard(make_dataset):
    root, _, _ = make_dataset()
    (root / "videos-00000.h5").unlink()
    with pytest.raises(DatasetError, match=r"videos-00000\.h5: shard listed in the manifest is missing"):
        FeatureStore(root).load_split("train")


def test_unreadable_hdf5_with_matching_size(make_dataset):
    root, _, _ = make_dataset()
    shard = root / "videos-00000.h5"
    shard.write_bytes(b"x" * shard.stat().st_size)
    with pytest.raises(DatasetError, match=r"videos-00000\.h5: sha256 \w+\.\.\. does not match"):
        FeatureStore(root).load_split("train")
    manifest = json.loads((root / "manifest.json").read_text())  # a manifest that agrees with the garbage
    for entry in manifest["shards"]:
        if entry["file"] == shard.name:
            entry["sha256"] = sha256_file(shard)
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"videos-00000\.h5: not a readable HDF5 file"):
        FeatureStore(root).load_split("train")


def _edit_manifest(root: Path, **changes) -> None:
    path = root / "manifest.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_feature_dim_disagreeing_with_manifest(make_dataset):
    root, _, _ = make_dataset(video_dim=8)
    _edit_manifest(root, video_dim=16)
    with pytest.raises(DatasetError,
                       match=r"videos-0000\d\.h5: 'features' has shape \(\d+, 8\), the manifest says width 16"):
        FeatureStore(root).load_split("test")


def test_unknown_manifest_version(make_dataset):
    root, _, _ = make_dataset()
    _edit_manifest(root, format_version=99)
    with pytest.raises(DatasetError, match=r"manifest\.json: unknown format_version 99 \(this reader knows 1\)"):
        FeatureStore(root)


@pytest.mark.parametrize("content, message", [
    ("{not json", "manifest is not valid JSON"),
    ('{"format": "something-else"}', "not a prvr-shards manifest"),
    ('{"format": "prvr-shards", "format_version": 1}', "malformed manifest"),
])
def test_malformed_manifests(tmp_path, content, message):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(DatasetError, match=message):
        FeatureStore(tmp_path)


def test_no_manifest(tmp_path):
    with pytest.raises(DatasetError, match=r"no dataset manifest there"):
        FeatureStore(tmp_path)


def test_shard_path_escaping_the_folder_is_rejected(make_dataset):
    root, _, _ = make_dataset()
    raw = json.loads((root / "manifest.json").read_text())
    raw["shards"][0]["file"] = "../elsewhere.h5"
    (root / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=r"must be a plain file name"):
        FeatureStore(root)


def _rewrite_shard(root: Path, file: str, edit) -> None:
    """Rewrite one shard's datasets with ``edit(dict) -> dict`` and update its manifest entry."""
    path = root / file
    with h5py.File(path, "r") as handle:
        arrays = {k: handle[k][()] for k in handle}
    arrays = edit(arrays)
    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value)
    raw = json.loads((root / "manifest.json").read_text())
    for shard in raw["shards"]:
        if shard["file"] == file:
            shard["bytes"], shard["sha256"] = path.stat().st_size, sha256_file(path)
    (root / "manifest.json").write_text(json.dumps(raw))


def test_query_whose_video_is_absent(make_dataset):
    root, _, _ = make_dataset()

    def drop_first_video(arrays):
        offsets = arrays["offsets"]
        return {"ids": arrays["ids"][1:], "offsets": offsets[1:] - offsets[1],
                "features": arrays["features"][offsets[1]:]}

    _rewrite_shard(root, "videos-00000.h5", drop_first_video)  # vid0 disappears
    FeatureStore(root).load_split("test")  # test split does not need vid0
    with pytest.raises(DatasetError, match=r"query 'vid0#enc#\d' refers to video 'vid0', which is in no video shard"):
        FeatureStore(root).load_split("train")


def test_empty_split(make_dataset):
    root, _, _ = make_dataset()
    _rewrite_shard(root, "splits.h5", lambda a: {**a, "test": np.array([], dtype=object).astype("S1")})
    with pytest.raises(DatasetError, match=r"splits\.h5: split 'test' has no queries"):
        FeatureStore(root).load_split("test")


def test_unknown_split_lists_available(make_dataset):
    root, _, _ = make_dataset()
    with pytest.raises(DatasetError, match=r"no split 'val' \(available: train, test\)"):
        FeatureStore(root).load_split("val")


def test_inconsistent_offsets(make_dataset):
    root, _, _ = make_dataset()
    _rewrite_shard(root, "queries-00000.h5", lambda a: {**a, "offsets": a["offsets"][::-1]})
    with pytest.raises(DatasetError, match=r"queries-00000\.h5: offsets are inconsistent"):
        FeatureStore(root).load_split("train")


# -- writer -----------------------------------------------------------------------------------

def test_writer_is_atomic_on_error(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError):
        with DatasetWriter(out, name="x", video_dim=3, query_dim=2, videos_per_shard=1) as writer:
            writer.add_video("a", np.ones((2, 3), np.float32))
            writer.add_video("b", np.ones((2, 3), np.float32))  # a shard already flushed
            raise RuntimeError("boom")
    assert not out.exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("action, message", [
    (lambda w: w.add_video("v", np.ones((2, 5), np.float32)),
     r"video 'v': feature dim 5 disagrees with the dataset's 3"),
    (lambda w: w.add_video("v", np.full((2, 3), np.nan, np.float32)), r"video 'v': features contain NaN"),
    (lambda w: w.add_video("v", np.ones((0, 3), np.float32)), r"video 'v': expected a non-empty 2-D array"),
    (lambda w: (w.add_video("v", np.ones((1, 3))), w.add_video("v", np.ones((1, 3)))), r"duplicate video id"),
    (lambda w: w.set_split("test", []), r"split 'test': has no queries"),
])
def test_writer_rejects_bad_records(tmp_path, action, message):
    writer = DatasetWriter(tmp_path / "ds", name="x", video_dim=3, query_dim=2)
    with pytest.raises(DatasetError, match=message):
        action(writer)
    writer.abort()


def test_writer_rejects_query_of_absent_video_and_leaves_nothing(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(DatasetError, match=r"query 'q1': its video 'ghost' is not in the dataset"):
        with DatasetWriter(out, name="x", video_dim=3, query_dim=2) as writer:
            writer.add_video("v", np.ones((2, 3), np.float32))
            writer.add_query("q1", "ghost", np.ones((2, 2), np.float32))
            writer.set_split("test", ["q1"])
    assert not out.exists() and _leftovers(tmp_path) == []


def test_writer_refuses_to_overwrite_unless_asked(make_dataset):
    root, _, _ = make_dataset()
    before = sha256_file(root / "manifest.json")
    with pytest.raises(DatasetError, match=r"already exists and is not empty"):
        DatasetWriter(root, name="x", video_dim=3, query_dim=2)
    assert sha256_file(root / "manifest.json") == before
    with DatasetWriter(root, name="new", video_dim=3, query_dim=2, overwrite=True) as writer:
        writer.add_video("v", np.ones((2, 3), np.float32))
        writer.add_query("q", "v", np.ones((1, 2), np.float32))
        writer.set_split("test", ["q"])
    assert read_manifest(root).name == "new"
    assert _leftovers(root.parent) == []


def test_a_writer_that_never_writes_leaves_nothing(tmp_path):
    DatasetWriter(tmp_path / "ds", name="x", video_dim=3, query_dim=2)
    assert list(tmp_path.iterdir()) == []
