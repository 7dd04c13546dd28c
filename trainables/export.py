"""An exported model: one self-contained folder that rebuilds a trained backbone without its search.

Layout (every file written by :func:`write_export`, all plain text except the weights)::

    config.yaml          the trial's fully resolved flat config (``TrainConfig.to_dict``) with the
                         dataset's dims pinned (``video_dim``, ``query_dim``): ``TrainConfig.from_dict``
                         of it builds the model
    weights.safetensors  the best weights (the ones the trial's test metrics were computed with);
                         safetensors, so loading them never unpickles anything
    protocol.json        the input protocol (``trainables.data.protocol.Protocol``) that turns raw
                         video frames and query tokens into model inputs, as the trial's data loader did
    metrics.json         the metrics the trial was selected on (best val SumR) and its val/test metrics
    provenance.json      search, trial, checkpoint source, data manifest hash, code version

The folder is written under a temporary name next to the target and renamed at the end, so a target
either does not exist or is complete; an existing target is refused before anything is written.
:func:`load_exported` rebuilds the model (eval mode) from a folder or from ``models:/<name>@<alias>``
(MLflow Model Registry, see ``tracking/registry.py``) with what inference needs besides it (config, input
protocol): ``load_exported(...).rank(query_tokens, video_frames, video_ids)``. :func:`rank_videos` is that
inference path, the one the registered pyfunc model serves: the evaluator's own encode/score code on a
request's features. :func:`input_example` is a small valid request (the registered model's example).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from trainables.data.loader import PreparedSplit, prepare_split
from trainables.data.protocol import Protocol
from trainables.data.store import RawSplit
from trainables.errors import InputError
from trainables.evaluation.evaluate import encode_videos, score_chunks
from trainables.models.base import Backbone, Dims
from trainables.training.config import TrainConfig

CONFIG, WEIGHTS, PROTOCOL, METRICS, PROVENANCE = (
    "config.yaml", "weights.safetensors", "protocol.json", "metrics.json", "provenance.json")
EXPORT_FILES = (CONFIG, WEIGHTS, PROTOCOL, METRICS, PROVENANCE)
MODELS_SCHEME = "models:/"
#: the score branch that ranks videos (the one model selection and the reported metrics use)
RANKING_BRANCH = "fused"


@dataclass
class Export:
    """What an export folder holds, in memory."""

    config: dict[str, Any]  # flat, dims pinned
    weights: dict[str, torch.Tensor]
    protocol: Protocol
    metrics: dict[str, Any]
    provenance: dict[str, Any]

    def train_config(self) -> TrainConfig:
        return config_from_dict(self.config, CONFIG)


def config_from_dict(flat: dict[str, Any], where: str) -> TrainConfig:
    """The validated TrainConfig of an export's flat config, which must pin both dims."""
    if not isinstance(flat, dict):
        raise InputError(f"{where}: expected a mapping of config keys, got {type(flat).__name__}")
    try:
        config = TrainConfig.from_dict(flat)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: not a valid config ({exc})") from None
    for key in ("video_dim", "query_dim"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{where}: {key} must be pinned to the dataset's dimension, got {value!r}")
    return config


def pin_dims(config: dict[str, Any], dims: Dims) -> dict[str, Any]:
    """A trial's flat config with the dataset's dims pinned; dims already pinned must agree."""
    for key, value in (("video_dim", dims.video_dim), ("query_dim", dims.query_dim)):
        if config.get(key) is not None and config[key] != value:
            raise InputError(f"config pins {key}={config[key]} but the trial's dataset has {value}")
    return {**config, "video_dim": dims.video_dim, "query_dim": dims.query_dim}


def build_model(config: TrainConfig, weights: dict[str, torch.Tensor], where: str,
                device: torch.device | str = "cpu") -> Backbone:
    """The backbone of ``config`` holding exactly ``weights`` (every key, no extra one), in eval mode."""
    assert config.video_dim is not None and config.query_dim is not None  # pinned (config_from_dict)
    model = config.build_model(Dims(config.video_dim, config.query_dim))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"{where}: weights do not fit the config's model ({' '.join(first[:2])[:300]})") from None
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ write


def check_target(target: str | Path) -> Path:
    """The absolute target folder; refused when anything is already there or its parent is a file."""
    target = Path(target).expanduser().absolute()
    if target.exists() or target.is_symlink():
        raise InputError(f"export target {target} already exists; choose another --out or remove it")
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"export target {target}: {parent} is a file, not a folder")
    return target


@contextlib.contextmanager
def staged_folder(target: Path, what: str = "export") -> Iterator[Path]:
    """A new hidden folder next to ``target`` to write into; renamed to ``target`` when the block ends
    (refused if ``target`` appeared meanwhile: never replaced), removed if the block raises."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if target.exists():  # appeared while writing: never replace it
            raise InputError(f"{what} target {target} already exists; choose another --out or remove it")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_export(export: Export, target: str | Path) -> Path:
    """Write ``export`` into the new folder ``target`` (temp folder next to it, then one rename)."""
    from safetensors.torch import save_file

    target = check_target(target)
    config = export.train_config()  # refuse a config that would not rebuild, before any write
    build_model(config, export.weights, "export")
    with staged_folder(target) as staging:
        (staging / CONFIG).write_text(yaml.safe_dump(export.config, sort_keys=True))
        # own contiguous storage per tensor: safetensors refuses shared or strided tensors
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in export.weights.items()},
                  str(staging / WEIGHTS), metadata={"format": "pt"})
        (staging / PROTOCOL).write_text(_json(dataclasses.asdict(export.protocol)))
        (staging / METRICS).write_text(_json(export.metrics))
        (staging / PROVENANCE).write_text(_json(export.provenance))
    return target


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------------------- read


def read_export(folder: str | Path) -> Export:
    """Read an export folder (weights with safetensors: no pickle); errors name the file at fault."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no exported model there (not a folder)")
    missing = [name for name in EXPORT_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder}: not a complete exported model (missing {', '.join(missing)})")
    try:
        config = yaml.safe_load((folder / CONFIG).read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{folder / CONFIG}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        weights = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{folder / WEIGHTS}: not a safetensors file ({exc})") from None
    texts = {name: _read_json(folder / name) for name in (PROTOCOL, METRICS, PROVENANCE)}
    try:
        protocol = Protocol(**texts[PROTOCOL])
    except (TypeError, ValueError) as exc:
        raise InputError(f"{folder / PROTOCOL}: not an input protocol ({exc})") from None
    export = Export(config, weights, protocol, texts[METRICS], texts[PROVENANCE])
    config_from_dict(config, str(folder / CONFIG))
    return export


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


@dataclass
class LoadedModel:
    """A rebuilt exported model with what inference needs besides it: ``rank`` ranks a request's videos.

    It unpacks as ``model, config = load_exported(...)``, the pair :func:`load_exported` returned before
    it returned this (existing callers keep working)."""

    model: Backbone
    config: TrainConfig
    protocol: Protocol
    export: Export
    #: sha256 of the export's config, weights and protocol files (:func:`export_identity`): what a corpus
    #: index records and checks (``trainables/retrieval/corpus_index.py``)
    identity: str = ""

    def rank(self, query_tokens: Sequence[Any], video_frames: Sequence[Any], video_ids: Sequence[str],
             top_k: int | None = None) -> list[list[str]]:
        """Per query, the ids of ``video_ids`` from best to worst (:func:`rank_videos` with this model's
        config and protocol)."""
        return rank_videos(self.model, self.config, self.protocol, query_tokens, video_frames, video_ids, top_k)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.config))


def export_identity(folder: str | Path) -> str:
    """sha256 over the export's config, weights and protocol files (what determines its rankings)."""
    import hashlib

    from trainables.data.manifest import sha256_file

    digests = [f"{name}:{sha256_file(Path(folder) / name)}" for name in (CONFIG, WEIGHTS, PROTOCOL)]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def load_folder(folder: str | Path, device: torch.device | str = "cpu") -> LoadedModel:
    export = read_export(folder)
    config = config_from_dict(export.config, str(Path(folder) / CONFIG))
    model = build_model(config, export.weights, str(Path(folder) / WEIGHTS), device)
    return LoadedModel(model, config, export.protocol, export, export_identity(folder))


def load_exported(source: str | Path, *, tracking_uri: str | None = None,
                  device: torch.device | str = "cpu") -> LoadedModel:
    """The model (eval mode) with its config and input protocol, from an export folder or a registered
    model ``models:/<name>@<alias>`` / ``models:/<name>/<version>`` (``tracking_uri``: MLflow's default if
    None); ``.rank(...)`` ranks videos, and it unpacks as ``model, config`` (see :class:`LoadedModel`)."""
    if str(source).startswith(MODELS_SCHEME):
        from tracking.registry import downloaded_export

        with downloaded_export(str(source), tracking_uri) as folder:
            return load_folder(folder, device)
    return load_folder(source, device)


# -------------------------------------------------------------------------------------- inference


def request_split(query_tokens: Sequence[Any], video_frames: Sequence[Any], video_ids: Sequence[str],
                  dims: Dims, protocol: Protocol) -> PreparedSplit:
    """A request's raw features as a prepared split, by the data loader's own code (so a video and a
    query become exactly the model inputs they were in evaluation)."""
    if len(video_frames) != len(video_ids):
        raise InputError(f"video_frames has {len(video_frames)} videos but video_ids has {len(video_ids)} ids")
    if len(video_ids) == 0 or len(query_tokens) == 0:  # sequences or arrays (MLflow's REST parser makes arrays)
        raise InputError("a request needs at least one query and one video")
    ids = [str(v) for v in video_ids]
    if len(set(ids)) != len(ids):
        duplicate = next(v for v in ids if ids.count(v) > 1)
        raise InputError(f"video_ids must be unique, {duplicate!r} appears twice")
    frames = [feature_matrix(f, dims.video_dim, f"video_frames[{i}]") for i, f in enumerate(video_frames)]
    tokens = [feature_matrix(t, dims.query_dim, f"query_tokens[{i}]") for i, t in enumerate(query_tokens)]
    raw = RawSplit(
        name="request", video_ids=ids, frames=np.concatenate(frames),
        frame_offsets=np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64),
        query_ids=[str(i) for i in range(len(tokens))], query_text=[""] * len(tokens),
        query_video=np.zeros(len(tokens), dtype=np.int64), tokens=np.concatenate(tokens),
        token_offsets=np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int64))
    return prepare_split(raw, protocol)


def check_top_k(top_k: Any) -> int:
    """A request's ``top_k`` as an int, or an InputError unless it is a whole number >= 1."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InputError(f"top_k must be a whole number >= 1, got {top_k!r}")
    return int(top_k)


def feature_matrix(value: Any, dim: int, where: str) -> np.ndarray:
    """``value`` as a finite float32 (rows >= 1) x ``dim`` matrix, or an InputError naming ``where``."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where} is not a numeric matrix ({exc})") from None
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != dim:
        raise InputError(f"{where} must be (rows >= 1) x {dim}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise InputError(f"{where} holds NaN or infinite values")
    return array


@contextlib.contextmanager
def inference_mode(model: Backbone, config: TrainConfig) -> Iterator[torch.device]:
    """No gradients, eval mode and the trial's own autocast setting (bf16 or not), on the model's device."""
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
        yield device


def rank_videos(model: Backbone, config: TrainConfig, protocol: Protocol, query_tokens: Sequence[Any],
                video_frames: Sequence[Any], video_ids: Sequence[str], top_k: int | None = None) -> list[list[str]]:
    """Per query, the ids of ``video_ids`` from best to worst fused score (the first ``top_k``): videos
    encoded ``eval_video_batch`` at a time and queries scored ``eval_query_chunk`` at a time, as the
    trial's evaluation did. Equal scores keep the request's video order."""
    if top_k is not None:
        check_top_k(top_k)
    # an export's config: config_from_dict checked the pinned dims, TrainConfig.resolved() filled eval_video_batch
    assert config.video_dim is not None and config.query_dim is not None and config.eval_video_batch is not None
    split = request_split(query_tokens, video_frames, video_ids, Dims(config.video_dim, config.query_dim), protocol)
    keep = split.num_videos if top_k is None else min(int(top_k), split.num_videos)
    ranked: list[list[str]] = []
    with inference_mode(model, config) as device:
        videos = encode_videos(model, split, device, config.eval_video_batch)
        for _, scores in score_chunks(model, split, videos, device, config.eval_query_chunk):
            fused = scores[RANKING_BRANCH].float().cpu().numpy()
            order = np.argsort(-fused, axis=1, kind="stable")[:, :keep]
            ranked.extend([split.video_ids[j] for j in row] for row in order)
    return ranked


#: the input example's size: queries, videos, and at most this many tokens per query and frames per video
EXAMPLE_QUERIES, EXAMPLE_VIDEOS, EXAMPLE_TOKENS, EXAMPLE_FRAMES = 2, 3, 4, 8


def input_example(config: TrainConfig, protocol: Protocol, seed: int = 0) -> dict[str, Any]:
    """A small valid request of ``config``'s dims (nested lists, as JSON carries it): 2 queries of up to 4
    tokens and 3 videos of up to 8 frames (within the protocol's token and frame caps), every query the
    same length and every video too (MLflow's REST input parser takes no ragged arrays), ``top_k`` 2."""
    assert config.video_dim is not None and config.query_dim is not None  # an export's config pins them
    rng = np.random.default_rng(seed)
    tokens, frames = min(EXAMPLE_TOKENS, protocol.max_tokens), min(EXAMPLE_FRAMES, protocol.max_frames)

    def matrix(rows: int, dim: int) -> list[list[float]]:
        return np.round(rng.standard_normal((rows, dim)), 3).tolist()

    return {"query_tokens": [matrix(tokens, config.query_dim) for _ in range(EXAMPLE_QUERIES)],
            "video_frames": [matrix(frames, config.video_dim) for _ in range(EXAMPLE_VIDEOS)],
            "video_ids": [f"video-{i}" for i in range(EXAMPLE_VIDEOS)], "top_k": EXAMPLE_VIDEOS - 1}


__all__ = ["CONFIG", "EXPORT_FILES", "METRICS", "PROTOCOL", "PROVENANCE", "WEIGHTS", "Export", "LoadedModel",
           "build_model", "check_target", "check_top_k", "config_from_dict", "export_identity", "feature_matrix",
           "input_example", "load_exported", "load_folder", "pin_dims", "rank_videos", "read_export", "request_split",
           "staged_folder", "write_export"]
