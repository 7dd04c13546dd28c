"""A validation split that is not the test split: carving val out of train, and refusing val == test.

The fixture is a release-layout collection (MS-SL's TextData + BigFile) made from the synthetic ``tiny``
dataset whose val caption file is a copy of its test file, as when a release ships train + test only and
its loader reads ``val``. Overlap counts are checked against sets computed here from the caption files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from search import dataset as dataset_cli
from trainables.data.importers import export_msrl, import_msrl
from trainables.data.importers.captions import caption_file, read_captions
from trainables.data.manifest import read_manifest
from trainables.data.split_overlap import ALLOW_FLAG, ValTestOverlapError, carve_val, store_overlap
from trainables.data.store import FeatureStore
from trainables.data.synthetic import ensure_synthetic
from trainables.training.loop import load_data, train

COLL = "tiny"
FEAT = "synthetic"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release-layout root whose ``tinyval.caption.txt`` is its ``tinytest.caption.txt``."""
    root = tmp_path_factory.mktemp("release")
    export_msrl(ensure_synthetic("tiny"), root, COLL, visual_feature=FEAT)
    text = root / COLL / "TextData"
    shutil.copyfile(caption_file(text, COLL, "test"), caption_file(text, COLL, "val"))
    return root


def _caption_sets(release: Path, split: str) -> tuple[set[str], set[str]]:
    captions = read_captions(caption_file(release / COLL / "TextData", COLL, split))
    return {c.cap_id for c in captions}, {c.video_id for c in captions}


@pytest.fixture(scope="module")
def overlapping(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_msrl(release, COLL, tmp_path_factory.mktemp("imported") / "as-released", visual_feature=FEAT)


@pytest.fixture(scope="module")
def carved(release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return import_msrl(release, COLL, tmp_path_factory.mktemp("imported") / "carved", visual_feature=FEAT,
                       val_from_train=0.25, val_seed=3)


def test_release_val_equal_to_test_is_recorded_as_overlap(release, overlapping):
    queries, videos = _caption_sets(release, "test")
    recorded = read_manifest(overlapping).val_test_overlap
    assert recorded == {"queries": len(queries), "videos": len(videos), "val_queries": len(queries),
                        "val_videos": len(videos)}
    assert store_overlap(overlapping).to_dict() == recorded  # measured from the shards, same counts
    # a manifest from before the record: measured from splits.h5 and the query shards, same counts
    manifest_file = overlapping / "manifest.json"
    raw = json.loads(manifest_file.read_text())
    older = overlapping.parent / "older"
    shutil.copytree(overlapping, older)
    raw.pop("val_test_overlap")
    (older / "manifest.json").write_text(json.dumps(raw))
    assert read_manifest(older).val_test_overlap is None
    assert store_overlap(older).to_dict() == recorded


def test_carved_val_is_video_disjoint_from_train_and_test(release, carved):
    store = FeatureStore(carved)
    train_q, val_q, test_q = (store.split_query_ids(s) for s in ("train", "val", "test"))
    video = store.query_videos()
    release_train, release_train_videos = _caption_sets(release, "train")
    assert set(train_q) | set(val_q) == release_train and not set(train_q) & set(val_q)  # every query once
    val_videos = {video[q] for q in val_q}
    assert not val_videos & {video[q] for q in train_q}  # a video's queries go with it
    assert not val_videos & {video[q] for q in test_q}
    assert len(val_videos) == round(0.25 * len(release_train_videos))
    assert set(test_q) == _caption_sets(release, "test")[0]
    manifest = read_manifest(carved)
    assert manifest.val_test_overlap == {"queries": 0, "videos": 0, "val_queries": len(val_q),
                                         "val_videos": len(val_videos)}
    record = manifest.source["val_from_train"]
    assert (record["fraction"], record["seed"], record["videos"], record["queries"]) == (0.25, 3, len(val_videos),
                                                                                          len(val_q))
    assert "val" not in manifest.source["splits"]  # the release's val file was not read


def test_carve_val_is_seeded_and_keeps_order():
    video_of = {f"v{i}#{k}": f"v{i}" for i in range(10) for k in range(3)}
    splits = {"train": list(video_of), "test": ["t#0"]}
    first, _ = carve_val(splits, video_of, 0.3, seed=1)
    again, _ = carve_val(splits, video_of, 0.3, seed=1)
    other, _ = carve_val(splits, video_of, 0.3, seed=2)
    assert first == again and first["val"] != other["val"]
    assert first["train"] == [q for q in splits["train"] if q not in set(first["val"])]
    assert first["test"] == ["t#0"] and len({video_of[q] for q in first["val"]}) == 3
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"--val-from-train must be in \(0, 1\)"):
            carve_val(splits, video_of, fraction)


def test_train_refuses_overlap_unless_allowed(release, overlapping):
    queries, videos = _caption_sets(release, "test")
    data = load_data(overlapping)
    config = {"backbone": "mssl", "epochs": 1, "hidden_size": 16, "seed": 0}
    with pytest.raises(ValTestOverlapError) as refused:
        train(config, data)
    message = str(refused.value)
    assert "\n" not in message
    assert f"val shares {len(queries)} of {len(queries)} queries and {len(videos)} of {len(videos)} videos" in message
    assert "--val-from-train" in message and ALLOW_FLAG in message
    result = train(config, data, allow_val_test_overlap=True)
    assert result.history[-1]["epoch"] == 1


def test_dataset_info_prints_the_overlap(release, overlapping, carved, capsys):
    queries, videos = _caption_sets(release, "test")
    assert dataset_cli.main(["info", str(overlapping)]) == 0
    out = capsys.readouterr().out
    assert f"val/test overlap: val shares {len(queries)} of {len(queries)} queries and {len(videos)} of " \
           f"{len(videos)} videos with test (selecting on val selects on test)" in out
    assert dataset_cli.main(["info", str(carved)]) == 0
    out = capsys.readouterr().out
    assert "val/test overlap: val shares 0 of" in out and "(disjoint)" in out
    assert "val carved from train:" in out and "seed 3" in out


def test_convert_cli_carves_val(release, tmp_path, capsys):
    out = tmp_path / "cli"
    assert dataset_cli.main(["convert", "--layout", "msrl", "--root", str(release), "--collection", COLL,
                             "--visual-feature", FEAT, "--out", str(out), "--val-from-train", "0.2"]) == 0
    assert read_manifest(out).val_test_overlap["queries"] == 0
    assert read_manifest(out).source["val_from_train"]["seed"] == 0


@pytest.mark.parametrize("entry", ["run", "ablate"])
def test_entry_points_refuse_overlap_before_ray(entry, release, overlapping, tmp_path, run_cli_without_ray):
    from search import ablate, run

    queries, _ = _caption_sets(release, "test")
    common = ["--data", str(overlapping), "--storage", str(tmp_path / "results"),
              "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    if entry == "run":
        result = run_cli_without_ray(run.main, "--space", "base", *common, "--validate-samples", "5", cwd=tmp_path)
    else:
        (tmp_path / "base.yaml").write_text("backbone: mssl\nepochs: 1\nhidden_size: 16\n")
        result = run_cli_without_ray(ablate.main, "--base", "base.yaml", "--components", "ral", "--seeds", "1", "--out",
                                     str(tmp_path / "out"), *common, cwd=tmp_path)
    assert result.code == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert f"val shares {len(queries)} of {len(queries)} queries" in lines[0] and ALLOW_FLAG in lines[0]
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_search_with_allowed_overlap_tags_its_parent_run(release, overlapping, tmp_path):
    from test_search import TINY_MODEL, mlflow_runs, run_search

    queries, videos = _caption_sets(release, "test")
    result = run_search(tmp_path, "--data", str(overlapping), "--space", "base", "--backbones", "mssl", "--trials", "1",
                        "--max-epochs", "1", "--name", "allowed", ALLOW_FLAG, *TINY_MODEL, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"val shares {len(queries)} of {len(queries)} queries" in result.stderr  # the warning
    parent, children = mlflow_runs(tmp_path, "allowed")
    assert parent.data.tags["prvr.val_test_overlap"] == (
        f"val shares {len(queries)} of {len(queries)} queries and {len(videos)} of {len(videos)} videos with test")
    assert parent.data.params["allow_val_test_overlap"] == "True"
    assert len(children) == 1 and children[0].info.status == "FINISHED"
