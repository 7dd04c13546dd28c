"""The synthetic PRVR benchmark: determinism, layout, ground truth, partial relevance and the cache."""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from trainables.data import synthetic
from trainables.data.errors import DatasetError
from trainables.data.manifest import read_manifest
from trainables.data.store import FeatureStore, RawSplit
from trainables.data.synthetic import (
    PRESETS,
    SyntheticConfig,
    ensure_synthetic,
    generate,
    load_latents,
    reference_scores,
)
from trainables.evaluation.metrics import chance_recall, retrieval_metrics

TINY = PRESETS["tiny"]
# tiny's dims with a large test split, so that chance is low and differences between scorers are stable
WIDE = replace(TINY, name="wide", train_videos=20, val_videos=10, test_videos=200)


def shard_hashes(folder: Path) -> dict[str, str]:
    return {s.file: s.sha256 for s in read_manifest(folder).shards}


def sumr(split: RawSplit, scores: np.ndarray) -> float:
    return retrieval_metrics(scores, split.query_video)["SumR"]


def chance_sumr(num_videos: int) -> float:
    return sum(chance_recall(k, num_videos) for k in (1, 5, 10, 100))


def leftovers(folder: Path) -> list[str]:
    """Temporary or retired dataset folders left in a cache folder."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(TINY, tmp_path_factory.mktemp("tiny") / "ds")


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(WIDE, tmp_path_factory.mktemp("wide") / "ds")


# -- determinism and layout --------------------------------------------------------------------
def test_same_seed_gives_identical_shards(tiny_dir: Path, tmp_path: Path) -> None:
    again = generate(TINY, tmp_path / "again")
    assert shard_hashes(again) == shard_hashes(tiny_dir)
    assert read_manifest(again).sha256() == read_manifest(tiny_dir).sha256()
    assert len(read_manifest(again).shards_of("videos")) > 1  # several shards were exercised


def test_other_seed_gives_other_data(tiny_dir: Path, tmp_path: Path) -> None:
    other = shard_hashes(generate(replace(TINY, seed=1), tmp_path / "other"))
    mine = shard_hashes(tiny_dir)
    assert all(other[f] != mine[f] for f in mine if f.startswith(("videos", "queries")))


def test_counts_dims_and_splits_match_the_config(tiny_dir: Path) -> None:
    c, m = TINY, read_manifest(tiny_dir)
    assert (m.video_dim, m.query_dim, m.dtype, m.l2_normalize) == (c.video_dim, c.query_dim, c.dtype, True)
    sizes = {"train": c.train_videos, "val": c.val_videos, "test": c.test_videos}
    assert {k: (v.num_videos, v.num_queries) for k, v in m.splits.items()} == {
        k: (n, n * c.queries_per_video) for k, n in sizes.items()}
    assert m.num_videos == sum(sizes.values()) and m.num_queries == m.num_videos * c.queries_per_video
    assert m.source == {"layout": "synthetic", "preset": "tiny", "generator_version": synthetic.GENERATOR_VERSION,
                        "config": asdict(c)}
    store = FeatureStore(tiny_dir)
    store.verify()
    split = store.load_split("test")
    frames = np.diff(split.frame_offsets)
    tokens = np.diff(split.token_offsets)
    assert frames.min() >= c.frames_min and frames.max() <= c.frames_max
    assert tokens.min() >= c.tokens_min and tokens.max() <= c.tokens_max
    assert split.frames.dtype == np.float16 and split.frames.shape[1] == c.video_dim
    assert split.tokens.shape[1] == c.query_dim and np.isfinite(split.frames).all()


def test_cap_ids_follow_the_release_convention(tiny_dir: Path) -> None:
    split = FeatureStore(tiny_dir).load_split("val")
    for qid, video in zip(split.query_ids, split.query_video):
        vid, enc, k = qid.split("#")
        assert vid == split.video_ids[video] and enc == "enc" and 0 <= int(k) < TINY.queries_per_video
        assert qid.split("#")[0] == split.video_ids[video]


def test_latents_describe_the_data(tiny_dir: Path) -> None:
    lat, c = load_latents(tiny_dir), TINY
    split = FeatureStore(tiny_dir).load_split("train")
    assert lat.concepts.shape == (c.num_concepts, c.latent_dim)
    assert lat.video_projection.shape == (c.latent_dim, c.video_dim)
    vindex = {v: i for i, v in enumerate(lat.video_ids)}
    for i, vid in enumerate(split.video_ids):
        v = vindex[vid]
        assert lat.num_frames[v] == split.frame_offsets[i + 1] - split.frame_offsets[i]
        rows = lat.moment_rows(v)
        starts, ends = lat.moment_start[rows], lat.moment_end[rows]
        assert c.moments_min <= len(starts) <= c.moments_max
        assert starts[0] >= 0 and ends[-1] <= lat.num_frames[v] and np.all(starts[1:] >= ends[:-1])
        assert np.all((ends - starts) <= c.moment_fraction_max * lat.num_frames[v])
    qindex = {q: i for i, q in enumerate(lat.query_ids)}
    filler = 0
    for i, qid in enumerate(split.query_ids):
        q = qindex[qid]
        rows = slice(lat.token_offsets[q], lat.token_offsets[q + 1])
        concept, word = lat.token_concept[rows], lat.token_filler[rows]
        expected = [f"concept_{a}" if a >= 0 else lat.filler_words[b] for a, b in zip(concept, word)]
        assert split.query_text[i].split() == expected
        assert set(concept[concept >= 0]) <= set(lat.query_concepts[q])  # only its own moment's concepts
        assert lat.video_ids[lat.query_video[q]] == qid.split("#")[0]
        filler += int((concept < 0).sum())
    assert abs(filler / len(split.tokens) - c.ambiguity) < 0.1


@pytest.mark.parametrize(("field", "value"), [
    ("test_videos", -1), ("queries_per_video", 0), ("frames_max", 4), ("video_dim", 0), ("latent_dim", 100),
    ("tokens_max", 2), ("moment_fraction_max", 0.9), ("moment_fraction_min", 0.0), ("background_fraction", 1.0),
    ("noise", -0.1), ("ambiguity", 1.0), ("distractor_rate", 1.5), ("dtype", "int8"), ("videos_per_shard", 0),
    ("seed", -3), ("family_size", 3), ("num_concepts", 1), ("noise", float("nan")), ("frames_min", 2.5),
    ("moments_max", 1),
])
def test_bad_config_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field} ") as info:
        replace(TINY, **{field: value})
    assert "\n" not in str(info.value)


def test_presets_are_valid_and_tvr_like_matches_tvr() -> None:
    tvr = PRESETS["tvr-like"]
    assert (tvr.video_dim, tvr.query_dim, tvr.test_videos, tvr.queries_per_video) == (3072, 768, 2179, 5)
    assert tvr.test_videos * tvr.queries_per_video == 10_895
    assert all(name == config.name for name, config in PRESETS.items())


# -- the ground truth makes the task solvable; partial relevance is real ------------------------
def test_oracle_and_right_moment_rank_far_above_chance(wide_dir: Path) -> None:
    split, lat = FeatureStore(wide_dir).load_split("test"), load_latents(wide_dir)
    chance = chance_sumr(split.num_videos)
    oracle = retrieval_metrics(reference_scores(split, lat, "oracle"), split.query_video)
    assert oracle["R@1"] >= 90 and oracle["SumR"] >= 5 * chance
    moment = retrieval_metrics(reference_scores(split, lat, "moment"), split.query_video)
    assert moment["R@1"] >= 10 * chance_recall(1, split.num_videos) and moment["SumR"] >= 3 * chance


def assert_partial_relevance(folder: Path, margin: float) -> dict[str, float]:
    split, lat = FeatureStore(folder).load_split("test"), load_latents(folder)
    got = {k: sumr(split, reference_scores(split, lat, k)) for k in ("meanpool", "moment", "window")}
    assert got["moment"] >= got["meanpool"] + margin, got
    assert got["window"] >= got["meanpool"] + margin / 2, got
    assert got["meanpool"] > chance_sumr(split.num_videos), got  # whole videos still carry some signal
    return got


def test_whole_video_mean_pooling_loses_to_the_right_moment(wide_dir: Path) -> None:
    assert_partial_relevance(wide_dir, margin=60)  # measured: meanpool ~105, moment ~245 of 400


def test_partial_relevance_on_the_small_preset(tmp_path: Path) -> None:
    assert_partial_relevance(generate(PRESETS["small"], tmp_path / "small"),
                             margin=100)  # measured: meanpool ~129, moment ~336 of 400


def test_ambiguity_and_noise_make_the_task_harder(tmp_path: Path) -> None:
    def moment_sumr(**changes: float) -> float:
        folder = generate(replace(WIDE, test_videos=100, **changes), tmp_path / json.dumps(changes))
        split = FeatureStore(folder).load_split("test")
        return sumr(split, reference_scores(split, load_latents(folder), "moment"))

    assert moment_sumr(ambiguity=0.0) >= moment_sumr(ambiguity=0.8) + 100
    assert moment_sumr(noise=0.0) >= moment_sumr(noise=1.2) + 60


def near_duplicates(config: SyntheticConfig, tmp_path: Path) -> float:
    """Fraction of test moments whose event differs from an earlier video's by one sibling concept."""
    lat = load_latents(generate(config, tmp_path / f"d{config.distractor_rate}"))
    test = [i for i, s in enumerate(lat.video_split) if s == "test"]
    family = lambda c: c // config.family_size  # noqa: E731
    earlier: list[tuple[set[int], set[int]]] = []
    hits = total = 0
    for v in test:
        events = [set(map(int, e)) for e in lat.moment_concepts[lat.moment_rows(v)]]
        for e in events:
            total += 1
            hits += any(len(e & f) == len(e) - 1 and {family(c) for c in e} == fam for f, fam in earlier)
        earlier.extend((e, {family(c) for c in e}) for e in events)
    return hits / total


def test_distractor_rate_controls_near_duplicate_moments(tmp_path: Path) -> None:
    config = replace(WIDE, num_concepts=400, family_size=4)
    none, half = near_duplicates(replace(config, distractor_rate=0.0), tmp_path), \
        near_duplicates(replace(config, distractor_rate=0.5), tmp_path)
    assert none < 0.1 and 0.35 < half < 0.65


# -- the cache ---------------------------------------------------------------------------------
def test_ensure_synthetic_generates_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRVR_DATA_DIR", str(tmp_path))
    first = ensure_synthetic("tiny")
    assert first.parent == tmp_path.resolve() and (first / "manifest.json").is_file()
    stamp = (first / "manifest.json").stat().st_mtime_ns, (first / "manifest.json").stat().st_ino
    calls: list[object] = []
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: calls.append(a))
    assert ensure_synthetic("tiny") == first and ensure_synthetic("tiny", tmp_path) == first
    assert not calls
    assert ((first / "manifest.json").stat().st_mtime_ns, (first / "manifest.json").stat().st_ino) == stamp


def test_ensure_synthetic_regenerates_a_stale_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = ensure_synthetic("tiny", tmp_path)
    old_hashes = shard_hashes(old)
    monkeypatch.setitem(PRESETS, "tiny", replace(TINY, noise=0.7))  # the generator's preset changed
    new = ensure_synthetic("tiny", tmp_path)
    assert new == old and read_manifest(new).source["config"]["noise"] == 0.7
    assert shard_hashes(new) != old_hashes and not leftovers(tmp_path)
    FeatureStore(new).verify()


def test_unknown_preset_lists_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="available: tiny, small, ci, tvr-like, small-hard, ci-hard"):
        ensure_synthetic("huge", tmp_path)


def test_concurrent_ensure_synthetic_agree(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        paths = pool.starmap(ensure_synthetic, [("tiny", str(tmp_path))] * 2)
    assert paths[0] == paths[1]
    FeatureStore(paths[0]).verify()
    assert shard_hashes(paths[0]) == {s.file: s.sha256 for s in read_manifest(paths[1]).shards}
    assert not leftovers(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [".synthetic-tiny.lock", "synthetic-tiny"]


def test_race_loser_uses_the_winners_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic.generate

    def lose_race(config: SyntheticConfig, out_dir: Path, **kwargs: bool) -> Path:
        real(config, out_dir)  # another process publishes first...
        return real(config, out_dir, **kwargs)  # ...so this one finds the folder taken

    monkeypatch.setattr(synthetic, "generate", lose_race)
    path = ensure_synthetic("tiny", tmp_path)
    FeatureStore(path).verify()
    assert not leftovers(tmp_path)


def test_ensure_synthetic_reports_real_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(config: SyntheticConfig, out_dir: Path, **kwargs: bool) -> Path:
        raise DatasetError(f"{out_dir}: disk full")

    monkeypatch.setattr(synthetic, "generate", broken)
    with pytest.raises(DatasetError, match="disk full"):
        ensure_synthetic("tiny", tmp_path)


def test_load_latents_needs_a_synthetic_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no latent annotations"):
        load_latents(tmp_path)


def test_race_lost_while_publishing_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_writer = synthetic.DatasetWriter

    class Slow(real_writer):  # type: ignore[misc, valid-type]
        def close(self) -> Path:
            monkeypatch.setattr(synthetic, "DatasetWriter", real_writer)
            synthetic.generate(TINY, self.out_dir)  # the winner publishes while this one was writing
            return super().close()

    monkeypatch.setattr(synthetic, "DatasetWriter", Slow)
    path = ensure_synthetic("tiny", tmp_path)
    FeatureStore(path).verify()
    assert not leftovers(tmp_path) and not [p for p in tmp_path.iterdir() if p.name.startswith(".synthetic-tiny.")
                                            and not p.name.endswith(".lock")]


def test_reference_scores_rejects_unknown_kinds(tiny_dir: Path) -> None:
    split = FeatureStore(tiny_dir).load_split("test")
    with pytest.raises(ValueError, match="available: oracle, meanpool, moment, window"):
        reference_scores(split, load_latents(tiny_dir), "psychic")


def test_resizing_one_split_leaves_the_others_unchanged(tiny_dir: Path, tmp_path: Path) -> None:
    mine = FeatureStore(tiny_dir).load_split("test")
    other = FeatureStore(generate(replace(TINY, train_videos=7), tmp_path / "fewer")).load_split("test")
    assert other.query_ids == mine.query_ids and other.query_text == mine.query_text
    assert np.array_equal(other.frames, mine.frames) and np.array_equal(other.tokens, mine.tokens)
