"""The corpus index and the two-stage retriever (trainables/retrieval), checked against the evaluator.

Models are small and freshly initialised (seeded): what is checked is that the index holds exactly the
evaluator's encodings, that exhaustive scoring over it ranks as the evaluator does, that the two stages
agree with it where they must, and the index's lifecycle (identity, append, crash, corruption, CLI).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.data.loader import load_split
from trainables.data.manifest import read_manifest
from trainables.data.protocol import Protocol
from trainables.data.synthetic import ensure_synthetic
from trainables.errors import InputError
from trainables.evaluation.evaluate import encode_videos, score_chunks
from trainables.export import Export, inference_mode, load_folder, pin_dims, write_export
from trainables.models.base import Dims
from trainables.retrieval import corpus_index
from trainables.retrieval.corpus_index import CorpusIndex, append_to_index, build_index, model_identity
from trainables.retrieval.retriever import Retriever, agreement
from trainables.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = ("mssl", "gmmformer", "gmmformer2", "amdnet", "meanpool")


def make_export(folder: Path, backbone: str, seed: int = 0, **options) -> Path:
    """An export folder of a seeded, untrained ``backbone`` at the ci preset's dims."""
    manifest = read_manifest(ensure_synthetic("ci"))
    dims = Dims(manifest.video_dim, manifest.query_dim)
    flat = pin_dims(TrainConfig.from_dict({"backbone": backbone, "hidden_size": 32, **options}).resolved().to_dict(),
                    dims)
    torch.manual_seed(seed)
    model = TrainConfig.from_dict(flat).build_model(dims)
    return write_export(Export(flat, model.state_dict(), Protocol(l2_normalize=manifest.l2_normalize), {}, {}), folder)


def ci_split(loaded, split: str = "test"):
    return load_split(ensure_synthetic("ci"), split, loaded.protocol)


def queries_of(split) -> list[np.ndarray]:
    return [split.query_tokens(i) for i in range(split.num_queries)]


def evaluator_top(loaded, split, k: int) -> tuple[list[list[str]], np.ndarray]:
    """Each query's top-k video ids by the evaluator's own fused scores (ties in split order), and the scores."""
    with inference_mode(loaded.model, loaded.config) as device:
        videos = encode_videos(loaded.model, split, device, loaded.config.eval_video_batch)
        scores = np.concatenate([s["fused"].float().numpy() for _, s in score_chunks(loaded.model, split, videos,
                                                                                    device, 50)])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[split.video_ids[j] for j in row] for row in order], scores


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("exports")
    return {b: make_export(base / b, b) for b in BACKBONES}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_index_holds_the_evaluators_encodings_and_ranks_as_it_does(exports, tmp_path, backbone):
    loaded = load_folder(exports[backbone])
    split = ci_split(loaded)
    folder = build_index(loaded, split, tmp_path / "index", model_identity(loaded), shard_videos=25)
    index = CorpusIndex.open(folder, verify=True)
    assert index.video_ids == split.video_ids and len(index.shards) == 3  # 25 + 25 + 10 of 60
    assert index.identity.export_sha256 == loaded.identity and index.protocol == loaded.protocol
    # the stored encodings are the evaluator's (its batches pad to the split's longest video, a shard to
    # its own: a frame-level tensor, of another length, is compared on each video's own frames)
    with inference_mode(loaded.model, loaded.config) as device:
        reference = encode_videos(loaded.model, split, device, loaded.config.eval_video_batch)
    rows = np.array([59, 3, 30, 24, 25])
    stored = index.encodings(rows)
    assert sorted(stored) == sorted(reference)
    frames, longest = np.diff(split.frame_offsets), int(np.diff(split.frame_offsets).max())
    assert longest not in (32, 528)  # so a dim of the split's longest length is a frame dim
    for key, value in stored.items():
        expected = reference[key][torch.from_numpy(rows)]
        assert value.shape == expected.shape, key  # padded to the longest of the gathered videos
        for i, row in enumerate(rows):
            own = tuple(slice(0, int(frames[row])) if n == longest else slice(None) for n in expected.shape[1:])
            torch.testing.assert_close(value[i][own], expected[i][own], rtol=1e-5, atol=1e-5, msg=key)
    # exhaustive scoring over the index ranks every query as the evaluator does
    top, scores = evaluator_top(loaded, split, 10)
    retriever = Retriever(loaded, index, candidates=split.num_videos)
    exhaustive = retriever.exhaustive(queries_of(split), 10)
    assert [r.video_ids for r in exhaustive] == top
    np.testing.assert_allclose([r.scores for r in exhaustive], np.sort(scores, axis=1)[:, ::-1][:, :10], atol=1e-5)
    # with every video a candidate the two stages are the exhaustive ranking
    assert [r.video_ids for r in retriever.search(queries_of(split), 10)] == top


def test_amdnets_stage_one_is_its_full_score_so_few_candidates_give_the_exact_top_k(exports, tmp_path):
    """AMDNet's score is the best cosine of its 32 clip tokens, which are its stage-1 vectors: the first
    k distinct videos of stage 1 are the exact top-k (an independent check of the candidate dedupe)."""
    loaded = load_folder(exports["amdnet"])
    split = ci_split(loaded)
    index = CorpusIndex.open(build_index(loaded, split, tmp_path / "index", model_identity(loaded)))
    assert index.vectors_per_video == 32
    top, _ = evaluator_top(loaded, split, 5)
    two_stage = Retriever(loaded, index, candidates=5).search(queries_of(split), 5)
    assert [r.video_ids for r in two_stage] == top
    # MS-SL's exact stage 1 scores each video by its best span (its 528 proposals over the 32 clip tokens,
    # from the tokens, their norms and the span norms): MS-SL's own clip score
    mssl = load_folder(exports["mssl"])
    spans_index = CorpusIndex.open(build_index(mssl, split, tmp_path / "spans", model_identity(mssl)))
    assert spans_index.manifest["stage1"]["spans"] is True
    retriever = Retriever(mssl, spans_index)
    queries = retriever.encode(queries_of(split))
    with inference_mode(mssl.model, mssl.config) as device:
        clip = mssl.model.score(queries, encode_videos(mssl.model, split, device, 64))["clip"].float().numpy()
    q = torch.nn.functional.normalize(queries["query"], dim=-1).numpy()
    np.testing.assert_allclose(retriever._exact_scores(q), clip, atol=1e-5)
    # without spans (tokens averaged into 4 groups) it is not, nor is the fused score: few candidates lose some
    mssl_index = CorpusIndex.open(build_index(mssl, split, tmp_path / "mssl", model_identity(mssl), stage1_groups=4))
    retriever = Retriever(mssl, mssl_index, candidates=10)
    measured = agreement(retriever.search(queries_of(split), 10), retriever.exhaustive(queries_of(split), 10), 10)
    assert measured["identical_top_k"] < 1.0 and 0.0 < measured["recall_at_k"] < 1.0


def test_an_approximate_stage_one_and_its_parameters_are_faiss_factory_strings(exports, tmp_path):
    loaded = load_folder(exports["amdnet"])
    split = ci_split(loaded)
    index = CorpusIndex.open(build_index(loaded, split, tmp_path / "index", model_identity(loaded)))
    exact = Retriever(loaded, index, candidates=5).search(queries_of(split)[:20], 5)
    hnsw = Retriever(loaded, index, candidates=5, stage1="HNSW16,SQfp16", search_params="efSearch=512")
    assert type(hnsw.stage1).__name__ == "IndexHNSWSQ"
    found = hnsw.search(queries_of(split)[:20], 5)
    assert agreement(found, exact, 5)["recall_at_k"] > 0.9  # approximate and float16: near, not promised equal
    with pytest.raises(InputError, match="not a faiss index factory string"):
        Retriever(loaded, index, stage1="NoSuchIndex")
    with pytest.raises(InputError, match="candidates must be a whole number >= 1, got 0"):
        Retriever(loaded, index, candidates=0)
    with pytest.raises(InputError, match="top_k must be a whole number >= 1"):
        Retriever(loaded, index).search(queries_of(split)[:1], 0)
    with pytest.raises(InputError, match=r"queries\[0\] must be \(rows >= 1\) x 48"):
        Retriever(loaded, index).search([np.zeros((3, 5))], 1)


def test_an_index_refuses_another_model_and_another_protocol(exports, tmp_path):
    loaded = load_folder(exports["mssl"])
    split = ci_split(loaded)
    index = CorpusIndex.open(build_index(loaded, split, tmp_path / "index", model_identity(loaded)))
    other = load_folder(make_export(tmp_path / "other", "mssl", seed=1))  # same config, other weights
    with pytest.raises(InputError, match=r"was built with export [0-9a-f]{12}\.\.\. \(mssl, plugins none\), not with "
                                         r"this model"):
        Retriever(other, index)
    with pytest.raises(InputError, match="not with this model"):
        append_to_index(other, ci_split(other, "val"), index.folder)
    unnormalised = load_split(ensure_synthetic("ci"), "val", Protocol(l2_normalize=False))
    with pytest.raises(InputError, match="input protocol"):
        append_to_index(loaded, unnormalised, index.folder)
    with pytest.raises(InputError, match="already exists"):
        build_index(loaded, split, index.folder, model_identity(loaded))


def test_appending_adds_shards_and_a_crash_midway_leaves_the_previous_index(exports, tmp_path, monkeypatch):
    loaded = load_folder(exports["amdnet"])
    test, val = ci_split(loaded), ci_split(loaded, "val")
    folder = build_index(loaded, test, tmp_path / "index", model_identity(loaded), shard_videos=40)
    before = (folder / corpus_index.MANIFEST).read_text()

    def crash(*args, **kwargs):
        raise RuntimeError("killed while publishing")

    # a crash after the new shards are complete, before the manifest names them
    monkeypatch.setattr(corpus_index, "_write_manifest", crash)
    with pytest.raises(RuntimeError, match="killed"):
        append_to_index(loaded, val, folder, shard_videos=25)
    monkeypatch.undo()
    assert (folder / corpus_index.MANIFEST).read_text() == before
    index = CorpusIndex.open(folder, verify=True)
    assert index.video_ids == test.video_ids
    assert Retriever(loaded, index, candidates=3).search(queries_of(test)[:4], 3)  # still answers
    # a crash while a shard is being written leaves a hidden partial shard, never named
    real_save = np.save

    def crash_on_second(path, *args, **kwargs):
        if str(path).endswith("enc.clip_tokens.npy") and "second" in crash_on_second.__dict__:
            raise OSError("disk full")
        crash_on_second.second = True
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(corpus_index.np, "save", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        append_to_index(loaded, val, folder, shard_videos=25)
    monkeypatch.undo()
    assert (folder / corpus_index.MANIFEST).read_text() == before
    # the next append removes what the crashes left and adds every val video once
    added, present = append_to_index(loaded, val, folder, shard_videos=25)
    assert (added, present) == (60, 0)
    index = CorpusIndex.open(folder, verify=True)
    assert index.video_ids == test.video_ids + val.video_ids and len(index.shards) == 2 + 3
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(("shard-", ".shard-"))) == \
        sorted(s["name"] for s in index.manifest["shards"])
    assert [s["videos"] for s in index.manifest["sources"]] == [60, 60]
    assert append_to_index(loaded, val, folder) == (0, 60)
    # the appended videos are found: a val query's top-5 over test + val is the exhaustive one
    retriever = Retriever(loaded, index, candidates=5)
    assert [r.video_ids for r in retriever.search(queries_of(val)[:30], 5)] == \
        [r.video_ids for r in retriever.exhaustive(queries_of(val)[:30], 5)]


def test_a_changed_or_missing_shard_file_is_named(exports, tmp_path):
    loaded = load_folder(exports["meanpool"])
    folder = build_index(loaded, ci_split(loaded), tmp_path / "index", model_identity(loaded), shard_videos=30)
    shard = next(p for p in sorted(folder.iterdir()) if p.name.startswith("shard-"))
    stage1 = shard / corpus_index.STAGE1
    data = bytearray(stage1.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only the sha256 finds it
    stage1.write_bytes(bytes(data))
    CorpusIndex.open(folder)
    with pytest.raises(InputError, match=f"{shard.name}/stage1.npy does not match its sha256"):
        CorpusIndex.open(folder, verify=True)
    stage1.write_bytes(bytes(data[:-8]))
    with pytest.raises(InputError, match="a file was changed or truncated"):
        CorpusIndex.open(folder)
    stage1.unlink()
    with pytest.raises(InputError, match=f"shard file {shard.name}/stage1.npy is missing"):
        CorpusIndex.open(folder)
    with pytest.raises(InputError, match="no corpus index there"):
        CorpusIndex.open(tmp_path)


def test_the_index_command_builds_appends_and_refuses_in_one_line(exports, tmp_path, capsys, monkeypatch):
    from search.cli import run_main
    from search.export import main

    model = str(exports["gmmformer"])
    done = subprocess.run([sys.executable, str(ROOT / "search" / "export.py"), "index", "--model", model, "--data",
                           "ci", "--out", "idx", "--shard-videos", "32"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"indexed 60 videos of ci split test with export {load_folder(model).identity[:12]}")
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["num_videos"] == 60 and len(manifest["shards"]) == 2
    assert manifest["model"]["backbone"] == "gmmformer" and manifest["model"]["registered_name"] is None
    monkeypatch.chdir(tmp_path)

    def index(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run_main(main, ["index", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = index("--model", model, "--data", "ci", "--split", "val", "--out", "idx", "--append")
    assert code == 0 and "appended 60 videos of ci split val" in out and "120 videos in 3 shards" in out
    before = (tmp_path / "idx" / "index.json").read_text()
    for args, message in [
        (["--model", model, "--data", "ci", "--out", "idx"], "already exists"),
        (["--model", str(exports["mssl"]), "--data", "ci", "--out", "idx", "--append"], "not with this model"),
        (["--model", model, "--data", "ci", "--out", "elsewhere", "--append"], "no corpus index there"),
        (["--model", model, "--data", "ci", "--split", "nope", "--out", "new"], "no split 'nope'"),
        (["--model", str(tmp_path / "nothing"), "--data", "ci", "--out", "new"], "no exported model there"),
        (["--model", model, "--data", "no-such-preset", "--out", "new"], "neither a synthetic preset"),
        (["--model", model, "--data", "ci", "--out", "new", "--stage1-vectors", "0"], "must be a whole number >= 1"),
    ]:
        code, _, err = index(*args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)
    assert (tmp_path / "idx" / "index.json").read_text() == before
    assert not (tmp_path / "new").exists() and not (tmp_path / "elsewhere").exists()
