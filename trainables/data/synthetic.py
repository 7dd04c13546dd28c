"""The synthetic PRVR benchmark: untrimmed videos of several moments, queries about one moment each.

Real TVR features cannot be downloaded everywhere, so this generator is the default dataset of the
demo, the tests and the benchmarks. It writes the ordinary sharded store (``DatasetWriter``), so every
model reads it exactly like an imported real dataset.

Generative model (one fixed random "world" per seed)
----------------------------------------------------
* ``num_concepts`` **concepts**: unit vectors in a ``latent_dim`` latent space, grouped in families of
  ``family_size`` consecutive ids whose members have cosine about ``family_similarity`` ("walk" and
  "run" are different concepts that look alike). A fixed random linear map ``latent -> video_dim``
  renders frames and a *different* one ``latent -> query_dim`` renders query tokens (a modality gap).
* A **video** has ``frames_min..frames_max`` frames holding ``moments_min..moments_max`` **moments**
  (contiguous segments, each ``moment_fraction_min..max`` of the video) separated by **background** gaps
  (at least ``background_fraction`` of the frames), each gap showing its own random latent that no
  query describes: partial relevance, most of a video is irrelevant to any one query.
* A moment shows an **event**: ``concepts_per_event`` concepts (their normalised sum plus a
  per-instance variation of relative size ``noise``). Events are unique within a split (when possible)
  while concepts are shared. With probability ``distractor_rate`` an event is a **distractor**: an
  earlier video's event with one concept swapped for a sibling of its family, so that video's queries
  meet a moment elsewhere that looks almost like theirs (spurious similarity); other events draw their
  concepts at random.
* Frame = project_v(moment latent + noise) + noise; every noise term is Gaussian with norm about
  ``noise`` times the signal's (unit) norm.
* A **query** describes exactly one moment of its video (a video's queries cycle through a random
  order of its moments). Each of its ``tokens_min..tokens_max`` tokens is, with probability
  ``ambiguity``, a **filler** word drawn from ``num_filler_words`` words shared by all queries ("the",
  "of", ...: latent vectors too, so not trivially separable; query ambiguity), otherwise informative:
  project_q(one concept of the event + noise) + noise. Every query has at least one informative token.
  The text names the words in token order, e.g. ``"the concept_12 of concept_7"``.
* Ids: video ``<split>_v<index>``, query ``<video_id>#enc#<k>`` (release convention: the video id is the
  cap id's part before the first ``#``). Features are stored raw (not normalised) as ``dtype``; the
  manifest says ``l2_normalize`` so the loader normalises like the release loaders.

Other knobs: ``train_videos``/``val_videos``/``test_videos`` (a split with 0 videos is left out),
``queries_per_video``, ``video_dim``, ``query_dim``, ``dtype`` (float16 or float32),
``videos_per_shard``/``queries_per_shard`` (shard sizes), ``seed``. The whole config, the preset name
and ``GENERATOR_VERSION`` are recorded in the manifest's ``source``.

The ground truth (concepts, projections, moment boundaries and events, each query's moment and each
token's concept or filler word) is attached as ``latents.npz``; ``load_latents`` reads it and
``reference_scores`` gives oracle and feature-level reference scorers built on it.

Chance level
------------
Each query has one relevant video among the N videos of its split, so a random scorer gets
R@K = 100*min(K, N)/N percent (``metrics.chance_recall``):

* ``tiny`` test (N=20): R@1 5, R@5 25, R@10 50, R@100 100, SumR 180.
* ``small`` test (N=250): R@1 0.4, R@5 2, R@10 4, R@100 40, SumR 46.4.
* ``tvr-like`` test (N=2,179, as TVR): R@1 0.046, R@5 0.23, R@10 0.46, R@100 4.59, SumR 5.32.

Presets (``PRESETS``); reference test SumR measured with ``reference_scores`` (oracle / right moment /
sliding window / whole-video mean pool; the last three from observed features mapped back to the latent
space through the known projections):

* ``tiny``: unit tests; 60/20/20 videos x 4 queries, 16-32 frames, dims 64/48, latent 16, 40 concepts;
  ~0.1 s, 1 MB. SumR 400 / 343 / 326 / 235.
* ``small``: the demo; 500/250/250 videos x 4 queries, 32-96 frames, 8-16 tokens, dims 256/128, latent
  32, 128 concepts; ~1 s, 45 MB. SumR 400 / 336 / 321 / 129 (250 test videos, so R@100 is informative). Learnable but
  not saturated: a ridge
  map from mean token to frame space fitted on train gives window R@1 ~60 with moment supervision and
  ~20 with video-level supervision only.
* ``tvr-like``: TVR's dims (3072 video / 768 query) and test split (2,179 videos / 10,895 queries, 5 per
  video), 40-100 frames, 10-20 tokens, latent 64, 512 concepts; 500 val videos; **4,000 train videos**
  instead of TVR's 17,435, so that the train split fits a 24 GiB machine (~280k frames: 1.7 GB as float16,
  3.4 GB as float32 once loaded; TVR's full 17k would need 7.5 / 15 GB before any model runs). ~50 s on 2
  cores, 0.7 GB peak RSS, 3.7 GB on disk. SumR 400 / 370 / 363 / 61.

Determinism: the same config gives bit-identical shards (same sha256) with the same numpy/BLAS build.
The world, each split's structure and each fixed-size chunk of rendered videos have their own seeded
generators, so features are rendered ``RENDER_CHUNK`` videos at a time (memory stays at one chunk plus
one shard) and changing one split's size leaves the other splits' data unchanged.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from trainables.data.errors import DatasetError
from trainables.data.manifest import read_manifest
from trainables.data.store import RawSplit, checked_sha256
from trainables.data.writer import DatasetWriter
from trainables.errors import InputError

GENERATOR_VERSION = 1  # bump when the same config would produce different data
LAYOUT = "synthetic"
LATENTS_FILE = "latents.npz"
SPLITS: tuple[str, ...] = ("train", "val", "test")
RENDER_CHUNK = 128  # videos rendered at once (fixed: the data must not depend on shard sizes)
FILLER_WORDS: tuple[str, ...] = (
    "the", "a", "of", "in", "and", "to", "with", "is", "on", "at", "then", "while", "his", "her", "it", "that",
)
_WORLD, _PLAN, _RENDER_VIDEO, _RENDER_QUERY = 0, 1, 2, 3  # seed-stream tags


# -- configuration -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticConfig:
    """Every knob of the generator; validated on construction (InputError naming the field)."""

    name: str = "custom"
    train_videos: int = 60
    val_videos: int = 20
    test_videos: int = 20
    queries_per_video: int = 4
    frames_min: int = 16
    frames_max: int = 32
    video_dim: int = 64
    query_dim: int = 48
    tokens_min: int = 6
    tokens_max: int = 12
    latent_dim: int = 16
    num_concepts: int = 40
    concepts_per_event: int = 2
    family_size: int = 4
    family_similarity: float = 0.6
    moments_min: int = 2
    moments_max: int = 3
    moment_fraction_min: float = 0.1
    moment_fraction_max: float = 0.25
    background_fraction: float = 0.25
    noise: float = 0.5
    ambiguity: float = 0.4
    num_filler_words: int = 8
    distractor_rate: float = 0.3
    dtype: str = "float16"
    videos_per_shard: int = 500
    queries_per_shard: int = 5000
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InputError (one line, naming the field) on the first bad value."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                _bad(f.name, "must be an integer", value)
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                _bad(f.name, "must be a finite number", value)
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            _bad("name", "must be a non-empty string without '/'", self.name)
        for name in ("train_videos", "val_videos", "test_videos"):
            _at_least(self, name, 0)
        if self.train_videos + self.val_videos + self.test_videos == 0:
            _bad("test_videos", "at least one split must have videos", self.test_videos)
        for name in ("queries_per_video", "frames_min", "video_dim", "query_dim", "tokens_min", "latent_dim",
                     "concepts_per_event", "family_size", "moments_min", "num_filler_words", "videos_per_shard",
                     "queries_per_shard"):
            _at_least(self, name, 1)
        _at_least(self, "seed", 0)
        _at_least(self, "frames_max", self.frames_min)
        _at_least(self, "tokens_max", self.tokens_min)
        _at_least(self, "moments_max", self.moments_min)
        _at_least(self, "num_concepts", max(self.concepts_per_event + 1, self.family_size))
        if self.num_concepts % self.family_size:
            _bad("family_size", f"must divide num_concepts ({self.num_concepts})", self.family_size)
        if not 0 <= self.family_similarity < 1:
            _bad("family_similarity", "must be in [0, 1)", self.family_similarity)
        if self.latent_dim > min(self.video_dim, self.query_dim):
            _bad("latent_dim", "must be <= video_dim and query_dim", self.latent_dim)
        if self.frames_min < self.moments_max:
            _bad("frames_min", f"must be >= moments_max ({self.moments_max}): every moment needs a frame",
                 self.frames_min)
        if not 0 < self.moment_fraction_min <= 1:
            _bad("moment_fraction_min", "must be in (0, 1]", self.moment_fraction_min)
        if not self.moment_fraction_min <= self.moment_fraction_max <= 1:
            _bad("moment_fraction_max", "must be in [moment_fraction_min, 1]", self.moment_fraction_max)
        if not 0 <= self.background_fraction < 1:
            _bad("background_fraction", "must be in [0, 1)", self.background_fraction)
        if self.moments_max * self.moment_fraction_max > 1 - self.background_fraction + 1e-9:
            _bad("moment_fraction_max", "times moments_max must be <= 1 - background_fraction",
                 self.moment_fraction_max)
        if self.noise < 0:
            _bad("noise", "must be >= 0", self.noise)
        if not 0 <= self.ambiguity < 1:
            _bad("ambiguity", "must be in [0, 1)", self.ambiguity)
        if not 0 <= self.distractor_rate <= 1:
            _bad("distractor_rate", "must be in [0, 1]", self.distractor_rate)
        if self.dtype not in ("float16", "float32"):
            _bad("dtype", "must be 'float16' or 'float32'", self.dtype)

    def split_sizes(self) -> dict[str, int]:
        """Videos per split, for the splits that have any (in train, val, test order)."""
        sizes = {"train": self.train_videos, "val": self.val_videos, "test": self.test_videos}
        return {k: v for k, v in sizes.items() if v > 0}

    def source(self) -> dict[str, Any]:
        """What the manifest records about this generation (compared to detect stale caches)."""
        return {"layout": LAYOUT, "preset": self.name, "generator_version": GENERATOR_VERSION,
                "config": asdict(self)}


def _bad(name: str, what: str, value: Any) -> None:
    raise InputError(f"SyntheticConfig.{name} {what}, got {value!r}")


def _at_least(config: SyntheticConfig, name: str, low: int) -> None:
    value = getattr(config, name)
    if value < low:
        _bad(name, f"must be >= {low}", value)


PRESETS: dict[str, SyntheticConfig] = {
    "tiny": SyntheticConfig(name="tiny", videos_per_shard=32, queries_per_shard=96),
    "small": SyntheticConfig(
        name="small", train_videos=500, val_videos=250, test_videos=250, queries_per_video=4,
        frames_min=32, frames_max=96, video_dim=256, query_dim=128, tokens_min=8, tokens_max=16,
        latent_dim=32, num_concepts=128, moments_min=2, moments_max=4, moment_fraction_min=0.08,
        moment_fraction_max=0.2, background_fraction=0.2, noise=0.6, ambiguity=0.4, num_filler_words=12,
        distractor_rate=0.5, videos_per_shard=250, queries_per_shard=1000,
    ),
    # `small`'s difficulty at a size a CI test can train on in seconds (160/60/60 videos, dims 64/48)
    "ci": SyntheticConfig(
        name="ci", train_videos=160, val_videos=60, test_videos=60, queries_per_video=4,
        frames_min=24, frames_max=64, video_dim=64, query_dim=48, tokens_min=8, tokens_max=16,
        latent_dim=16, num_concepts=64, moments_min=2, moments_max=4, moment_fraction_min=0.08,
        moment_fraction_max=0.2, background_fraction=0.2, noise=0.6, ambiguity=0.4, num_filler_words=12,
        distractor_rate=0.5, videos_per_shard=100, queries_per_shard=400, seed=11,
    ),
    "tvr-like": SyntheticConfig(
        name="tvr-like", train_videos=4000, val_videos=500, test_videos=2179, queries_per_video=5,
        frames_min=40, frames_max=100, video_dim=3072, query_dim=768, tokens_min=10, tokens_max=20,
        latent_dim=64, num_concepts=512, moments_min=2, moments_max=5, moment_fraction_min=0.05,
        moment_fraction_max=0.16, background_fraction=0.2, noise=0.6, ambiguity=0.4, num_filler_words=16,
        distractor_rate=0.5, videos_per_shard=500, queries_per_shard=5000,
    ),
}

# high-ambiguity / high-noise variants (the conditions under which RAL claims its largest gains), fixed
# before any plugin was measured on them: more feature noise, more filler words per query, more distractors
class _HardFields(TypedDict):
    noise: float
    ambiguity: float
    distractor_rate: float


HARD: _HardFields = {"noise": 1.0, "ambiguity": 0.7, "distractor_rate": 0.8}
for _base in ("small", "ci"):
    PRESETS[f"{_base}-hard"] = replace(PRESETS[_base], name=f"{_base}-hard", **HARD)


# -- ground truth ------------------------------------------------------------------------------
@dataclass
class Latents:
    """Ground truth of a synthetic dataset; videos (all splits) in generation order.

    Moments of video i are rows ``moment_offsets[i]:moment_offsets[i+1]`` (frames ``start:end``);
    ``query_moment`` is the moment's index *within* its video; tokens of query j are rows
    ``token_offsets[j]:token_offsets[j+1]`` of ``token_concept`` (concept id, -1 for a filler) and
    ``token_filler`` (filler word id, -1 for a concept).
    """

    concepts: np.ndarray  # (num_concepts, latent_dim), unit rows
    filler_latents: np.ndarray  # (num_filler_words, latent_dim), unit rows
    video_projection: np.ndarray  # (latent_dim, video_dim)
    query_projection: np.ndarray  # (latent_dim, query_dim)
    filler_words: list[str]
    video_ids: list[str]
    video_split: list[str]
    num_frames: np.ndarray  # (V,)
    moment_offsets: np.ndarray  # (V + 1,)
    moment_start: np.ndarray  # (M,)
    moment_end: np.ndarray  # (M,) exclusive
    moment_concepts: np.ndarray  # (M, concepts_per_event)
    query_ids: list[str]
    query_video: np.ndarray  # (Q,) index into video_ids
    query_moment: np.ndarray  # (Q,)
    token_offsets: np.ndarray  # (Q + 1,)
    token_concept: np.ndarray  # (T,)
    token_filler: np.ndarray  # (T,)

    @property
    def query_concepts(self) -> np.ndarray:
        """(Q, concepts_per_event): the concepts of each query's moment."""
        return self.moment_concepts[self.moment_offsets[self.query_video] + self.query_moment]

    def moment_rows(self, video: int) -> slice:
        return slice(int(self.moment_offsets[video]), int(self.moment_offsets[video + 1]))


_STR_FIELDS = ("filler_words", "video_ids", "video_split", "query_ids")


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez without timestamps (np.savez stamps the current time, breaking bit-identity)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.asarray(value), allow_pickle=False)


def load_latents(dataset_dir: str | Path) -> Latents:
    """Read the ground truth attached to a synthetic dataset."""
    path = Path(dataset_dir).expanduser() / LATENTS_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: no latent annotations (not a synthetic dataset?)")
    try:
        with np.load(path, allow_pickle=False) as data:
            raw = {f.name: data[f.name] for f in fields(Latents)}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: unreadable latent annotations ({type(exc).__name__}: {exc})") from None
    for key in _STR_FIELDS:
        raw[key] = [str(s) for s in raw[key]]
    return Latents(**raw)


# -- the world and each split's structure ------------------------------------------------------
@dataclass
class _World:
    concepts: np.ndarray
    fillers: np.ndarray
    video_projection: np.ndarray
    query_projection: np.ndarray
    filler_words: list[str]


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _concepts(rng: np.random.Generator, config: SyntheticConfig) -> np.ndarray:
    """Unit concept vectors; members of a family share a centre (cosine about family_similarity)."""
    centres = _unit_rows(rng, config.num_concepts // config.family_size, config.latent_dim)
    own = _unit_rows(rng, config.num_concepts, config.latent_dim)
    mixed = (np.sqrt(config.family_similarity) * np.repeat(centres, config.family_size, axis=0)
             + np.sqrt(1 - config.family_similarity) * own)
    return (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32)


def _make_world(config: SyntheticConfig) -> _World:
    """Concept and filler vectors and the two projections; maps a unit latent to about unit norm."""
    rng = np.random.default_rng([config.seed, _WORLD])
    c = config
    words = list(FILLER_WORDS[: c.num_filler_words])
    words += [f"filler_{k}" for k in range(len(words), c.num_filler_words)]
    return _World(
        concepts=_concepts(rng, c),
        fillers=_unit_rows(rng, c.num_filler_words, c.latent_dim),
        video_projection=rng.standard_normal((c.latent_dim, c.video_dim), dtype=np.float32) / np.sqrt(c.video_dim),
        query_projection=rng.standard_normal((c.latent_dim, c.query_dim), dtype=np.float32) / np.sqrt(c.query_dim),
        filler_words=words,
    )


@dataclass
class _Plan:
    """The structure of one split: moment layout, events, queries and their tokens."""

    split: str
    video_ids: list[str]
    num_frames: np.ndarray
    moment_offsets: np.ndarray
    moment_start: np.ndarray
    moment_end: np.ndarray
    moment_concepts: np.ndarray
    query_ids: list[str]
    query_video: np.ndarray  # index within the split
    query_moment: np.ndarray
    token_offsets: np.ndarray
    token_concept: np.ndarray
    token_filler: np.ndarray


def _layout(rng: np.random.Generator, config: SyntheticConfig) -> tuple[int, np.ndarray, np.ndarray]:
    """Frame count and moment [start, end) of one video; the rest is background gaps."""
    n = int(rng.integers(config.frames_min, config.frames_max + 1))
    m = int(rng.integers(config.moments_min, config.moments_max + 1))
    fractions = rng.uniform(config.moment_fraction_min, config.moment_fraction_max, m)
    lengths = np.maximum(1, np.floor(fractions * n)).astype(np.int64)
    background = n - int(lengths.sum())
    cuts = np.sort(rng.integers(0, background + 1, m))
    gaps = np.diff(np.concatenate([[0], cuts]))  # the gap before each moment
    starts = np.cumsum(gaps) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return n, starts, starts + lengths


def _sibling(rng: np.random.Generator, config: SyntheticConfig, concept: int) -> int:
    """Another concept of the same family (any other concept if families have one member)."""
    size = config.family_size if config.family_size > 1 else config.num_concepts
    first = concept - concept % size
    other = int(rng.integers(size - 1))
    return first + other + (first + other >= concept)


def _event(rng: np.random.Generator, config: SyntheticConfig, earlier: list[list[int]],
           seen: set[tuple[int, ...]]) -> list[int]:
    """Concepts of one new event, unique in the split if possible; maybe a distractor of an earlier one."""
    distractor = bool(earlier) and rng.random() < config.distractor_rate
    concepts: list[int] = []
    for attempt in range(32):
        if distractor and attempt < 16:
            concepts = list(earlier[int(rng.integers(len(earlier)))])
            swap = int(rng.integers(len(concepts)))
            concepts[swap] = _sibling(rng, config, concepts[swap])
        else:  # a random event (also when no unique distractor was found)
            concepts = [int(x) for x in rng.choice(config.num_concepts, config.concepts_per_event, replace=False)]
        key = tuple(sorted(concepts))
        if len(set(key)) == len(key) and key not in seen:
            break
    seen.add(tuple(sorted(concepts)))
    return concepts


def _query_tokens(rng: np.random.Generator, config: SyntheticConfig, event: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Token concept ids (-1 = filler) and filler ids (-1 = concept) of one query, in word order."""
    n = int(rng.integers(config.tokens_min, config.tokens_max + 1))
    fillers = min(int(rng.binomial(n, config.ambiguity)), n - 1)
    informative = n - fillers
    picked = np.concatenate([rng.permutation(event), rng.choice(event, max(0, informative - len(event)))])
    concept = np.concatenate([picked[:informative], np.full(fillers, -1)]).astype(np.int32)
    filler = np.concatenate([np.full(informative, -1), rng.integers(0, config.num_filler_words, fillers)])
    order = rng.permutation(n)
    return concept[order], filler[order].astype(np.int32)


def _plan_split(config: SyntheticConfig, split: str, num_videos: int) -> _Plan:
    """Draw the structure of a split sequentially (cheap: no features)."""
    rng = np.random.default_rng([config.seed, _PLAN, SPLITS.index(split)])
    frames, starts, ends, qv, qm, tc, tf = [], [], [], [], [], [], []
    events: list[list[int]] = []
    moment_counts: list[int] = []
    seen: set[tuple[int, ...]] = set()
    for v in range(num_videos):
        n, s, e = _layout(rng, config)
        video_events = [_event(rng, config, events, seen) for _ in range(len(s))]
        order = rng.permutation(len(s))
        for k in range(config.queries_per_video):
            moment = int(order[k % len(s)])
            concept, filler = _query_tokens(rng, config, video_events[moment])
            qv.append(v)
            qm.append(moment)
            tc.append(concept)
            tf.append(filler)
        frames.append(n)
        starts.append(s)
        ends.append(e)
        events.extend(video_events)
        moment_counts.append(len(s))
    video_ids = [f"{split}_v{v:05d}" for v in range(num_videos)]
    return _Plan(
        split=split,
        video_ids=video_ids,
        num_frames=np.asarray(frames, dtype=np.int64),
        moment_offsets=np.concatenate([[0], np.cumsum(moment_counts)]).astype(np.int64),
        moment_start=np.concatenate(starts).astype(np.int64),
        moment_end=np.concatenate(ends).astype(np.int64),
        moment_concepts=np.asarray(events, dtype=np.int32),
        query_ids=[f"{video_ids[v]}#enc#{j % config.queries_per_video}" for j, v in enumerate(qv)],
        query_video=np.asarray(qv, dtype=np.int64),
        query_moment=np.asarray(qm, dtype=np.int64),
        token_offsets=np.concatenate([[0], np.cumsum([len(t) for t in tc])]).astype(np.int64),
        token_concept=np.concatenate(tc),
        token_filler=np.concatenate(tf),
    )


# -- rendering features ------------------------------------------------------------------------
def _gaussian(rng: np.random.Generator, rows: int, dim: int, scale: float) -> np.ndarray:
    """Noise whose rows have norm about ``scale``."""
    return rng.standard_normal((rows, dim), dtype=np.float32) * np.float32(scale / np.sqrt(dim))


def _frame_latents(rng: np.random.Generator, config: SyntheticConfig, world: _World, plan: _Plan,
                   videos: range) -> np.ndarray:
    """Per-frame latents of consecutive videos: moment events (with instance noise) and background gaps."""
    parts = []
    for v in videos:
        rows = slice(plan.moment_offsets[v], plan.moment_offsets[v + 1])
        n = int(plan.num_frames[v])
        latent = np.empty((n, config.latent_dim), dtype=np.float32)
        starts, ends = plan.moment_start[rows], plan.moment_end[rows]
        gap_edges = np.sort(np.concatenate([starts, ends, [0, n]]))
        for a, b in zip(gap_edges[0::2], gap_edges[1::2]):  # one random latent per background gap
            latent[a:b] = _unit_rows(rng, 1, config.latent_dim)
        events = world.concepts[plan.moment_concepts[rows]].sum(axis=1)
        events /= np.linalg.norm(events, axis=1, keepdims=True)
        events += _gaussian(rng, len(events), config.latent_dim, config.noise)
        for event, a, b in zip(events, starts, ends):
            latent[a:b] = event
        parts.append(latent)
    latent = np.concatenate(parts)
    return latent + _gaussian(rng, len(latent), config.latent_dim, config.noise)


def _render_videos(config: SyntheticConfig, world: _World, plan: _Plan) -> Iterator[tuple[str, np.ndarray]]:
    """(video id, frames) of a split, rendered RENDER_CHUNK videos at a time."""
    split_index = SPLITS.index(plan.split)
    for chunk, first in enumerate(range(0, len(plan.video_ids), RENDER_CHUNK)):
        rng = np.random.default_rng([config.seed, _RENDER_VIDEO, split_index, chunk])
        videos = range(first, min(first + RENDER_CHUNK, len(plan.video_ids)))
        latent = _frame_latents(rng, config, world, plan, videos)
        frames = latent @ world.video_projection
        frames += _gaussian(rng, len(frames), config.video_dim, config.noise)
        frames = frames.astype(config.dtype)
        offsets = np.concatenate([[0], np.cumsum(plan.num_frames[first : videos.stop])])
        for i, v in enumerate(videos):
            yield plan.video_ids[v], frames[offsets[i] : offsets[i + 1]]


def _render_queries(config: SyntheticConfig, world: _World, plan: _Plan) -> Iterator[tuple[str, str, np.ndarray, str]]:
    """(query id, video id, tokens, text) of a split, in chunks of RENDER_CHUNK videos' queries."""
    split_index = SPLITS.index(plan.split)
    per_chunk = RENDER_CHUNK * config.queries_per_video
    for chunk, first in enumerate(range(0, len(plan.query_ids), per_chunk)):
        rng = np.random.default_rng([config.seed, _RENDER_QUERY, split_index, chunk])
        last = min(first + per_chunk, len(plan.query_ids))
        t0, t1 = plan.token_offsets[first], plan.token_offsets[last]
        concept, filler = plan.token_concept[t0:t1], plan.token_filler[t0:t1]
        latent = np.where((concept >= 0)[:, None], world.concepts[concept], world.fillers[filler])
        latent = latent + _gaussian(rng, len(latent), config.latent_dim, config.noise)
        tokens = latent @ world.query_projection + _gaussian(rng, len(latent), config.query_dim, config.noise)
        tokens = tokens.astype(config.dtype)
        for q in range(first, last):
            a, b = plan.token_offsets[q] - t0, plan.token_offsets[q + 1] - t0
            words = [f"concept_{c}" if c >= 0 else world.filler_words[f] for c, f in zip(concept[a:b], filler[a:b])]
            yield plan.query_ids[q], plan.video_ids[plan.query_video[q]], tokens[a:b], " ".join(words)


def _latent_arrays(world: _World, plans: list[_Plan]) -> dict[str, np.ndarray]:
    """The Latents fields as arrays, all splits concatenated (indices made global)."""
    video_base = np.cumsum([0] + [len(p.video_ids) for p in plans])
    moment_base = np.cumsum([0] + [len(p.moment_start) for p in plans])
    token_base = np.cumsum([0] + [int(p.token_offsets[-1]) for p in plans])
    return {
        "concepts": world.concepts,
        "filler_latents": world.fillers,
        "video_projection": world.video_projection,
        "query_projection": world.query_projection,
        "filler_words": np.asarray(world.filler_words, dtype=str),
        "video_ids": np.asarray([v for p in plans for v in p.video_ids], dtype=str),
        "video_split": np.asarray([p.split for p in plans for _ in p.video_ids], dtype=str),
        "num_frames": np.concatenate([p.num_frames for p in plans]),
        "moment_offsets": np.concatenate([p.moment_offsets[:-1] + b for p, b in zip(plans, moment_base)]
                                         + [moment_base[-1:]]),
        "moment_start": np.concatenate([p.moment_start for p in plans]),
        "moment_end": np.concatenate([p.moment_end for p in plans]),
        "moment_concepts": np.concatenate([p.moment_concepts for p in plans]),
        "query_ids": np.asarray([q for p in plans for q in p.query_ids], dtype=str),
        "query_video": np.concatenate([p.query_video + b for p, b in zip(plans, video_base)]),
        "query_moment": np.concatenate([p.query_moment for p in plans]),
        "token_offsets": np.concatenate([p.token_offsets[:-1] + b for p, b in zip(plans, token_base)]
                                        + [token_base[-1:]]),
        "token_concept": np.concatenate([p.token_concept for p in plans]),
        "token_filler": np.concatenate([p.token_filler for p in plans]),
    }


def generate(config: SyntheticConfig, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the dataset ``config`` describes to ``out_dir`` (published atomically); returns the folder."""
    config.validate()
    world = _make_world(config)
    plans = [_plan_split(config, split, n) for split, n in config.split_sizes().items()]
    writer = DatasetWriter(
        out_dir, name=f"synthetic-{config.name}", video_dim=config.video_dim, query_dim=config.query_dim,
        dtype=config.dtype, videos_per_shard=config.videos_per_shard, queries_per_shard=config.queries_per_shard,
        l2_normalize=True, source=config.source(), overwrite=overwrite,
    )
    with writer, tempfile.TemporaryDirectory(prefix="prvr-synthetic-") as scratch:
        for plan in plans:
            for video_id, frames in _render_videos(config, world, plan):
                writer.add_video(video_id, frames)
            for query_id, video_id, tokens, text in _render_queries(config, world, plan):
                writer.add_query(query_id, video_id, tokens, text)
            writer.set_split(plan.split, plan.query_ids)
        latents = Path(scratch) / LATENTS_FILE
        _save_npz(latents, _latent_arrays(world, plans))
        writer.attach(LATENTS_FILE, latents)
    return writer.out_dir


# -- the cache ---------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$PRVR_DATA_DIR`` or ``~/.cache/prvr/datasets``."""
    env = os.environ.get("PRVR_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prvr" / "datasets"


def _is_current(folder: Path, config: SyntheticConfig) -> bool:
    """A complete dataset generated from exactly this config by this generator version."""
    try:
        manifest = read_manifest(folder)
    except DatasetError:
        return False
    if json.loads(json.dumps(manifest.source)) != json.loads(json.dumps(config.source())):
        return False
    # sizes and sha256 (hashed once per process per file version): a corrupted cache is generated again
    return all((folder / s.file).is_file() and (folder / s.file).stat().st_size == s.bytes
               and checked_sha256(folder / s.file) == s.sha256 for s in manifest.shards)


def _retire(folder: Path) -> None:
    """Move a stale dataset aside (atomic rename) and delete it; a no-op if it is gone."""
    aside = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        folder.rename(aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An advisory exclusive lock (saves a second process from generating the same data twice)."""
    try:
        import fcntl
    except ImportError:  # no flock: the atomic rename alone keeps the cache consistent
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_synthetic(preset: str, cache_dir: str | Path | None = None) -> Path:
    """The folder of ``preset``'s dataset in the cache, generated once (and again if the preset changed).

    Safe under concurrency: a lock file serialises generation, and generation publishes by an atomic
    rename, so a process that loses a race (e.g. where locks do not work) discards its copy and uses
    the winner's.
    """
    if preset not in PRESETS:
        raise InputError(f"unknown synthetic preset {preset!r} (available: {', '.join(PRESETS)})")
    config = PRESETS[preset]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root.resolve() / f"synthetic-{preset}"
    if _is_current(target, config):
        return target
    with _lock(root / f".synthetic-{preset}.lock"):
        if _is_current(target, config):
            return target
        if target.exists():
            _retire(target)
        try:
            generate(config, target)
        except (DatasetError, OSError):
            if not _is_current(target, config):  # a real failure, not a lost race
                raise
    return target


# -- reference scorers -------------------------------------------------------------------------
REFERENCE_SCORERS: tuple[str, ...] = ("oracle", "meanpool", "moment", "window")


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def _segment_means(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Mean of rows ``starts[i]:ends[i]`` of ``data`` for every i (vectorised with a cumulative sum)."""
    cum = np.concatenate([np.zeros((1, data.shape[1])), np.cumsum(data, axis=0, dtype=np.float64)])
    return (cum[ends] - cum[starts]) / (ends - starts)[:, None]


def _max_per_video(queries: np.ndarray, candidates: np.ndarray, offsets: np.ndarray,
                   chunk: int = 512) -> np.ndarray:
    """(queries, videos) max cosine over each video's contiguous candidate rows, in chunks of queries."""
    out = np.empty((len(queries), len(offsets) - 1), dtype=np.float32)
    candidates = candidates.astype(np.float32)
    for first in range(0, len(queries), chunk):
        scores = queries[first : first + chunk] @ candidates.T
        out[first : first + chunk] = np.maximum.reduceat(scores, offsets[:-1], axis=1)
    return out


def _clip_spans(n: np.ndarray, clips: int, max_span: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame [start, end) of every span of up to ``max_span`` of ``clips`` equal clips, per video."""
    starts, ends, counts = [], [], []
    for length in n:
        edges = np.minimum(np.round(np.arange(clips + 1) * length / clips).astype(np.int64), length)
        i, j = np.triu_indices(clips + 1, 1)
        keep = (j - i <= max_span) & (edges[j] > edges[i])
        pairs = {(int(a), int(b)) for a, b in zip(edges[i[keep]], edges[j[keep]])}
        s, e = np.asarray(sorted(pairs)).T
        starts.append(s)
        ends.append(e)
        counts.append(len(s))
    return np.concatenate(starts), np.concatenate(ends), np.concatenate([[0], np.cumsum(counts)])


def reference_scores(split: RawSplit, latents: Latents, kind: str, *, clips: int = 32,
                     max_span: int = 8) -> np.ndarray:
    """A (queries, videos) score matrix of ``split`` from a reference scorer that knows the generator.

    ``oracle``: cosine of the true event latents (query's event vs each moment's, max over moments).
    The others map the *observed* features back to the latent space by least squares through the
    known projections: ``meanpool`` compares the mean token with the whole video's mean frame;
    ``moment`` takes the max over the video's true moments; ``window`` the max over every span of up
    to ``max_span`` of ``clips`` equal clips (no annotations, like MS-SL's proposals).
    """
    if kind not in REFERENCE_SCORERS:
        raise InputError(f"unknown reference scorer {kind!r} (available: {', '.join(REFERENCE_SCORERS)})")
    vindex = {v: i for i, v in enumerate(latents.video_ids)}
    qindex = {q: i for i, q in enumerate(latents.query_ids)}
    videos = np.asarray([vindex[v] for v in split.video_ids])
    rows = [latents.moment_rows(v) for v in videos]
    moments = np.concatenate([np.arange(r.start, r.stop) for r in rows])
    moment_offsets = np.concatenate([[0], np.cumsum([r.stop - r.start for r in rows])])
    if kind == "oracle":
        events = _normalize(latents.concepts[latents.moment_concepts].sum(axis=1))
        queries = np.asarray([qindex[q] for q in split.query_ids])
        query_events = events[latents.moment_offsets[latents.query_video[queries]] + latents.query_moment[queries]]
        return _max_per_video(query_events, events[moments], moment_offsets)
    to_video = np.linalg.pinv(latents.video_projection).astype(np.float32)
    to_query = np.linalg.pinv(latents.query_projection).astype(np.float32)
    query = _normalize(_segment_means(split.tokens.astype(np.float32) @ to_query,
                                      split.token_offsets[:-1], split.token_offsets[1:])).astype(np.float32)
    frames = split.frames.astype(np.float32) @ to_video
    offsets = split.frame_offsets
    if kind == "meanpool":
        return query @ _normalize(_segment_means(frames, offsets[:-1], offsets[1:])).T.astype(np.float32)
    if kind == "moment":
        base = np.repeat(offsets[:-1], np.diff(moment_offsets))
        starts, ends = base + latents.moment_start[moments], base + latents.moment_end[moments]
    else:  # window
        starts, ends, moment_offsets = _clip_spans(np.diff(offsets), clips, max_span)
        base = np.repeat(offsets[:-1], np.diff(moment_offsets))
        starts, ends = starts + base, ends + base
    return _max_per_video(query, _normalize(_segment_means(frames, starts, ends)), moment_offsets)
