"""What every backbone provides, its config, and the registry that builds one by name.

A backbone is an ``nn.Module`` with four public methods the training loop and the evaluator rely on:

* ``encode_videos(clips, frames, frames_mask, frame_scales=None) -> dict`` of per-video tensors (leading
  dim = videos; frame-level tensors padded to the batch's longest video, with ``frames_mask``;
  ``frame_scales`` (B, L), what the loader divided each frame by, for plugins that need raw features);
* ``encode_queries(tokens, tokens_mask) -> dict`` of per-query tensors (leading dim = queries);
* ``score(queries, videos) -> dict`` of (queries x videos) cosine-based score matrices, one per branch
  (``clip``, ``frame``, ...) plus ``fused``, the score that model selection and the metrics use;
* ``training_losses(batch, context) -> dict`` of weighted loss terms for one training batch (the loop
  sums them); ``context`` carries the epoch, whether hard negatives are on, and a seeded generator.

A backbone implements them as ``_encode_videos(inputs)``, ``_encode_queries``, ``_score`` and
``_training_losses(batch, context, hooks) -> (terms, features)``; the public methods wrap them with the
plugin hooks (input transforms, extra query features, a replaced frame-scale score, extra losses: see
``trainables/plugins/base.py``), so a plugin never needs an edit to a backbone. Inside a training step the
plugins' part goes through ``hooks`` (``TrainingHooks``): the backbone encodes its queries with
``hooks.encode_queries`` and asks ``hooks.frame_score`` before computing its own frame score; a backbone
that skips a hook an attached plugin defines fails its first step (``PluginSeamError``) instead of
training without the plugin. ``features`` lists the standard tensors a backbone exposes to plugins.

Backbones register themselves with ``@register("name")``; ``create_backbone(name, dims, **options)``
builds one from a flat dict of options, validated by the backbone's ``Config`` dataclass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import nn

from trainables.class_registry import Registry
from trainables.errors import InputError

if TYPE_CHECKING:
    from trainables.plugins.base import Plugin

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Dims:
    """Input feature sizes of a dataset."""

    video_dim: int
    query_dim: int


@dataclass
class LossContext:
    """What a training step's losses need besides the batch: ``generator`` is the backbone's stream of
    sampled negatives; each plugin's losses get a context whose ``generator`` is its own stream
    (``plugin_generators[name]``, when given), so a plugin's samples never move the backbone's."""

    epoch: int
    hard_negatives: bool
    hard_pool_size: int
    generator: torch.Generator
    plugin_generators: dict[str, torch.Generator] = field(default_factory=dict)

    def for_plugin(self, name: str) -> LossContext:
        """This context with plugin ``name``'s own generator (the shared one if it has none)."""
        own = self.plugin_generators.get(name)
        return self if own is None else dataclasses.replace(self, generator=own, plugin_generators={})


@dataclass
class VideoInputs:
    """What a backbone's video encoder reads: the clip-scale features (B, M, D), frames (B, L, D) with
    their 0/1 mask (B, L), and an optional additive attention bias over the clip tokens (B, M) (set by
    an input-transform plugin such as OP-ToMe; only backbones with ``clip_key_bias`` accept it).
    ``frame_scales`` (B, L), when the loader L2-normalised the frames, is what each frame was divided by
    (``frames * frame_scales[..., None]`` restores the un-normalised features; OP-ToMe merges those)."""

    clips: torch.Tensor
    frames: torch.Tensor
    frames_mask: torch.Tensor
    clip_key_bias: torch.Tensor | None = None
    frame_scales: torch.Tensor | None = None

    @classmethod
    def from_batch(cls, batch: Tensors) -> VideoInputs:
        return cls(batch["clip_video_features"], batch["frame_video_features"], batch["videos_mask"],
                   batch.get("clip_key_bias"), batch.get("frame_scales"))


@dataclass(frozen=True)
class BackboneConfig:
    """Settings every backbone has; backbones subclass it with their own fields and defaults.

    ``alpha`` is the fusion weight of the clip-scale score: fused = alpha * clip + (1 - alpha) * frame.
    """

    hidden_size: int = 384
    n_heads: int = 4
    input_drop: float = 0.1
    drop: float = 0.1
    max_desc_l: int = 30
    max_ctx_l: int = 128
    map_size: int = 32
    margin: float = 0.2
    alpha: float = 0.7

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InputError naming the first out-of-range key."""
        positive = ("hidden_size", "n_heads", "max_desc_l", "max_ctx_l", "map_size")
        for key in positive:
            if getattr(self, key) < 1:
                raise InputError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("input_drop", "drop"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise InputError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.hidden_size % self.n_heads:
            raise InputError(f"hidden_size {self.hidden_size} must be a multiple of n_heads {self.n_heads}")
        if self.margin < 0:
            raise InputError(f"margin must be >= 0, got {self.margin}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"alpha must be in [0, 1], got {self.alpha}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any], backbone: str) -> BackboneConfig:
        """Build from a flat dict; unknown keys are an error naming the key and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"{backbone}: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
        try:
            return cls(**dict(options))
        except ValueError as exc:
            raise InputError(f"{backbone}: {exc}") from None


def fuse(clip: torch.Tensor, frame: torch.Tensor, alpha: float) -> Tensors:
    """The score dict of the contract, (Nq, V) each: both branches and the fused
    ``alpha * clip + (1 - alpha) * frame`` (every backbone with a frame score, and a plugin's replacement)."""
    return {"clip": clip, "frame": frame, "fused": alpha * clip + (1.0 - alpha) * frame}


class PluginSeamError(RuntimeError):
    """A backbone's training step skipped a hook an attached plugin defines (a bug in the backbone)."""


class TrainingHooks:
    """The plugins' part of one training step, handed to ``Backbone._training_losses``: the backbone's
    queries with the plugins' query features, and a plugin's replacement of its frame score. Records
    which hooks the backbone used, for ``Backbone.training_losses`` to check."""

    def __init__(self, model: Backbone) -> None:
        self._model = model
        self.used: set[str] = set()

    def encode_queries(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> Tensors:
        """``model.encode_queries``: the backbone's query encoding plus each plugin's query features."""
        self.used.add("query_features")
        return self._model.encode_queries(tokens, tokens_mask)

    def frame_score(self, queries: Tensors, videos: Tensors, normalize: bool = True) -> torch.Tensor | None:
        """A plugin's frame-scale score (Nq, V) replacing the backbone's (raw for NCE, ``normalize`` for the
        cosine triplet), or None: the backbone then computes its own."""
        self.used.add("frame_score")
        return self._model.plugin_frame_score(queries, videos, normalize)

    def check(self, plugins: Iterable[Plugin], backbone: str) -> None:
        """PluginSeamError naming the first hook an attached plugin defines that this step never used."""
        for plugin in plugins:
            wanted = {"frame_score": plugin.replaces_frame_score, "query_features": plugin.defines("query_features")}
            for hook in (h for h, defined in wanted.items() if defined and h not in self.used):
                method = "encode_queries" if hook == "query_features" else hook
                raise PluginSeamError(f"backbone {backbone}: its training step never called hooks.{method}, so "
                                      f"plugin {plugin.name} would train without its {hook.replace('_', ' ')}")


class Backbone(nn.Module):
    """Base class of the PRVR backbones (see the module docstring for the contract)."""

    Config: ClassVar[type[BackboneConfig]] = BackboneConfig
    #: training defaults of the paper's TVR setup (lr, epochs, patience, hard-negative start, seed)
    training_defaults: ClassVar[dict[str, Any]] = {}
    #: standard features and capabilities offered to plugins (names in ``trainables/plugins/base.py``)
    features: ClassVar[frozenset[str]] = frozenset({"query"})
    name: ClassVar[str]

    def __init__(self, config: BackboneConfig, dims: Dims) -> None:
        super().__init__()
        self.config = config
        self.dims = dims
        self.plugins = nn.ModuleDict()

    # plugins ------------------------------------------------------------------------------------
    def attach(self, plugin: Plugin) -> None:
        """Add a plugin; its parameters become the model's (trained, checkpointed, exported)."""
        if getattr(plugin, "replaces_frame_score", False) and self._frame_scorer() is not None:
            raise InputError(f"plugins {self._frame_scorer().name} and {plugin.name} both replace the frame score")
        self.plugins[plugin.name] = plugin

    def _attached(self) -> Iterable[Plugin]:
        """The attached plugins: ``self.plugins`` holds only what ``attach`` put in it."""
        return cast("Iterable[Plugin]", self.plugins.values())

    def _frame_scorer(self) -> Any:
        return next((p for p in self._attached() if p.replaces_frame_score), None)

    def plugin_needs(self, feature: str) -> bool:
        """Whether an attached plugin reads ``feature`` at inference (backbones keep optional tensors only then)."""
        return any(feature in p.inference_needs(p.config) for p in self._attached())

    def plugin_frame_score(self, queries: Tensors, videos: Tensors, normalize: bool = True) -> torch.Tensor | None:
        """A plugin's frame-scale score (Nq, V) replacing the backbone's, or None (in training a backbone
        reaches it through ``TrainingHooks.frame_score``)."""
        scorer = self._frame_scorer()
        return None if scorer is None else scorer.frame_score(queries, videos, normalize)

    def transform_videos(self, inputs: VideoInputs) -> VideoInputs:
        for plugin in self._attached():
            inputs = plugin.transform_videos(inputs)
        if inputs.clip_key_bias is not None and "clip_key_bias" not in self.features:
            raise InputError(f"backbone {self.name} does not take a clip attention key bias")
        return inputs

    # the public contract --------------------------------------------------------------------------
    def encode_videos(self, clips: torch.Tensor, frames: torch.Tensor, frames_mask: torch.Tensor,
                      frame_scales: torch.Tensor | None = None) -> Tensors:
        return self._encode_videos(self.transform_videos(VideoInputs(clips, frames, frames_mask,
                                                                     frame_scales=frame_scales)))

    def encode_queries(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> Tensors:
        out = self._encode_queries(tokens, tokens_mask)
        for plugin in self._attached():
            out.update(plugin.query_features(tokens, tokens_mask))
        return out

    def score(self, queries: Tensors, videos: Tensors) -> Tensors:
        """The backbone's scores; with a plugin's frame score, ``frame`` and ``fused`` use it."""
        scores = self._score(queries, videos)
        frame = self.plugin_frame_score(queries, videos)
        if frame is not None:
            scores = {**scores, **fuse(scores["clip"], frame, self.config.alpha)}
        return scores

    def training_losses(self, batch: Tensors, context: LossContext) -> Tensors:
        """The backbone's weighted loss terms plus each plugin's (named ``plugin.term``)."""
        inputs = self.transform_videos(VideoInputs.from_batch(batch))
        batch = {**batch, "clip_video_features": inputs.clips, "frame_video_features": inputs.frames,
                 "videos_mask": inputs.frames_mask}
        if inputs.frame_scales is None:  # a transform that replaced the frames drops their scales
            batch.pop("frame_scales", None)
        else:
            batch["frame_scales"] = inputs.frame_scales
        if inputs.clip_key_bias is not None:
            batch["clip_key_bias"] = inputs.clip_key_bias
        hooks = TrainingHooks(self)
        terms, features = self._training_losses(batch, context, hooks)
        hooks.check(self._attached(), self.name)
        features = {**features, "text_labels": batch["text_labels"]}
        for plugin in self._attached():
            for term, value in plugin.losses(features, batch, context.for_plugin(plugin.name)).items():
                terms[f"{plugin.name}.{term}"] = value
        return terms

    def retrieval_tokens(self, videos: Tensors) -> torch.Tensor:
        """(V, T, H) each encoded video's tokens whose best cosine with a query vector is what a corpus
        index's stage 1 searches (``trainables/retrieval``): the clip tokens (MS-SL's single-clip
        proposals; GMMFormer's and AMDNet's clip-score tokens), else the one video vector. Stage 2
        reranks with ``score``, so these only pick candidates."""
        if "clip_tokens" in videos:
            return videos["clip_tokens"]
        if "video" in videos:
            return videos["video"][:, None]
        raise NotImplementedError(f"backbone {self.name}: no clip_tokens or video vector to index; "
                                  f"override retrieval_tokens")

    def retrieval_spans(self) -> torch.Tensor | None:
        """(P, T) fixed averaging weights over ``retrieval_tokens`` when the backbone's clip score is the
        best cosine over such spans of them (MS-SL's proposals), else None (each token is its own span).
        With it the exact stage 1 scores a video by its best span cosine: its clip score."""
        return None

    # what each backbone implements ----------------------------------------------------------------
    def _encode_videos(self, inputs: VideoInputs) -> Tensors:
        raise NotImplementedError

    def _encode_queries(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> Tensors:
        raise NotImplementedError

    def _score(self, queries: Tensors, videos: Tensors) -> Tensors:
        raise NotImplementedError

    def _training_losses(self, batch: Tensors, context: LossContext, hooks: TrainingHooks
                         ) -> tuple[Tensors, Tensors]:
        """(weighted loss terms, features by their standard names for the plugins' losses); queries are
        encoded with ``hooks.encode_queries`` and the frame score asked of ``hooks.frame_score`` first."""
        raise NotImplementedError


BACKBONES: Registry[type[Backbone]] = Registry("backbone", "trainables.models")
#: class decorator: make a backbone buildable by ``name``
register = BACKBONES.register
#: the class registered as ``name``, or an InputError listing the available names
backbone_class = BACKBONES.get
list_backbones = BACKBONES.names


def create_backbone(name: str, dims: Dims, **options: Any) -> Backbone:
    """Build backbone ``name`` for inputs of ``dims`` with ``options`` (its Config's fields)."""
    cls = backbone_class(name)
    return cls(cls.Config.from_options(options, name), dims)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
