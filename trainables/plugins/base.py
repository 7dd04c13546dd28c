"""The extension interface between a backbone and its plugins, the plugin registry, and plugin configs.

A plugin is an ``nn.Module`` attached to a backbone (``backbone.attach(plugin)``); its parameters are
the model's, so they train, checkpoint and export with it. It can use four hooks, each optional:

* ``transform_videos(inputs) -> VideoInputs``: replace the video inputs before the backbone encodes
  them, at training and at inference (OP-ToMe's merged clip tokens and their attention key bias);
* ``query_features(tokens, tokens_mask) -> dict``: extra per-query tensors, at training and at
  inference (CSA's word tokens), merged into the backbone's query encoding;
* ``frame_score(queries, videos, normalize) -> (Nq, V)``: a replacement for the backbone's frame-scale
  score, used by the backbone at training (raw for NCE, cosine for the triplet; through
  ``TrainingHooks.frame_score``) and at inference, when ``replaces_frame_score`` is true;
* ``losses(features, batch, context) -> dict``: extra weighted training loss terms (training only: a
  plugin with only this hook costs nothing at inference).

Plugins read backbone tensors by the standard names below (``Backbone.features`` says which a backbone
provides); ``requires`` names what a plugin needs, and ``check`` rejects a backbone before training
with the reason. A new plugin is one file here (registered with ``@register_plugin``); it is searched
once ``spaces/ranges.yaml`` (or an overrides file) has a group of ranges for it (``spaces.space_names``).

A plugin may also declare the release's values of a backbone's own options for when it runs on that
backbone (``backbone_defaults``, e.g. RAL's 0.5/0.5 fusion on GMMFormer v2): ``TrainConfig`` applies them
to the options the user did not set (``plugin_backbone_defaults``); an explicit option always wins.

Standard feature names (training features; the video dict at inference has the same names):

* ``query`` (Nq, H) pooled query vectors; ``text_labels`` (Nq,) index of each query's video;
* ``clip_tokens`` (B, M, H) encoded clip-scale tokens; ``frame_tokens`` (B, L, H) encoded frames with
  ``frame_mask`` (B, L); ``global`` (B, H) a global video vector; ``moment_masks`` (B, K, M);
* capabilities: ``clip_key_bias`` (the clip encoder takes an additive attention key bias) and
  ``frame_score`` (the backbone has a frame-scale score a plugin may replace).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from trainables.class_registry import Registry
from trainables.errors import InputError
from trainables.models.base import BackboneConfig, Dims, LossContext, Tensors, VideoInputs

if TYPE_CHECKING:
    from trainables.models.base import Backbone


@dataclass(frozen=True)
class PluginConfig:
    """Settings of a plugin; subclasses add fields with the released defaults and check their ranges."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InputError naming the first out-of-range key."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any], plugin: str) -> PluginConfig:
        """Build from ``{setting: value}``; an unknown setting is an error naming it and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InputError(f"plugin {plugin}: unknown setting {plugin}.{unknown[0]} "
                             f"(known: {', '.join(sorted(known)) or 'none'})")
        try:
            return cls(**dict(options))
        except (TypeError, ValueError) as exc:
            raise InputError(f"plugin {plugin}: {exc}") from None


def check_range(config: Any, key: str, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> None:
    """InputError naming ``key`` when ``config.key`` is outside [low, high] (or the open variants)."""
    value = getattr(config, key)
    bad = (low is not None and (value <= low if low_open else value < low)) or \
          (high is not None and (value >= high if high_open else value > high))
    if bad:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise InputError(f"{key} must be in {left}{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}{right}, got {value!r}")


def check_choice(config: Any, key: str, choices: tuple[Any, ...]) -> None:
    value = getattr(config, key)
    if value not in choices:
        raise InputError(f"{key} must be one of {', '.join(map(str, choices))}, got {value!r}")


class Plugin(nn.Module):
    """Base class of the plugins (see the module docstring for the hooks)."""

    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    #: standard backbone features / capabilities this plugin always needs
    requires: ClassVar[frozenset[str]] = frozenset()
    #: {backbone name: {option: value}}: the release's values of that backbone's options when it runs with
    #: this plugin, used for the options the user left unset (see ``plugin_backbone_defaults``)
    backbone_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __init__(self, config: PluginConfig, backbone: BackboneConfig, dims: Dims) -> None:
        super().__init__()
        self.config = config
        self.hidden_size = backbone.hidden_size
        self.dims = dims

    @classmethod
    def needs(cls, config: PluginConfig) -> frozenset[str]:
        """Features needed with these settings, at training or inference (``check`` requires them all)."""
        return cls.requires

    @classmethod
    def inference_needs(cls, config: PluginConfig) -> frozenset[str]:
        """Features the backbone's video encodings must keep at inference for this plugin (none for a
        training-only plugin: a backbone keeps optional tensors, e.g. GMMFormer's frame tokens, only then)."""
        return frozenset()

    @classmethod
    def check(cls, config: PluginConfig, backbone: type[Backbone]) -> None:
        """InputError saying why this plugin cannot run on ``backbone`` with these settings."""
        missing = sorted(cls.needs(config) - backbone.features)
        if missing:
            raise InputError(f"plugin {cls.name} cannot run on backbone {backbone.name}: it needs "
                             f"{', '.join(missing)}, which {backbone.name} does not have "
                             f"({backbone.name} provides: {', '.join(sorted(backbone.features)) or 'nothing'})")

    @property
    def replaces_frame_score(self) -> bool:
        return False

    @classmethod
    def defines(cls, hook: str) -> bool:
        """Whether this plugin overrides hook ``hook`` (a method name of the hooks below)."""
        return getattr(cls, hook) is not getattr(Plugin, hook)

    # hooks ------------------------------------------------------------------------------------
    def transform_videos(self, inputs: VideoInputs) -> VideoInputs:
        return inputs

    def query_features(self, tokens: torch.Tensor, tokens_mask: torch.Tensor) -> Tensors:
        return {}

    def frame_score(self, queries: Tensors, videos: Tensors, normalize: bool) -> torch.Tensor:
        raise NotImplementedError

    def losses(self, features: Tensors, batch: Tensors, context: LossContext) -> Tensors:
        return {}


PLUGINS: Registry[type[Plugin]] = Registry("plugin", "trainables.plugins")
#: class decorator: make a plugin usable by ``name`` in a trial's config
register_plugin = PLUGINS.register
plugin_class = PLUGINS.get
list_plugins = PLUGINS.names


def plugin_config(name: str, settings: Mapping[str, Any]) -> PluginConfig:
    cls = plugin_class(name)
    return cls.Config.from_options(settings, name)


def plugin_backbone_defaults(plugins: Iterable[str], backbone: str, given: Collection[str] = ()) -> dict[str, Any]:
    """The backbone option defaults the plugins ``plugins`` declare for ``backbone``
    (``Plugin.backbone_defaults``), except the options in ``given`` (set by the user); two plugins
    declaring different values of one option is an error naming the option (set it explicitly to choose)."""
    merged: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name in plugins:
        for key, value in plugin_class(name).backbone_defaults.get(backbone, {}).items():
            if key in given:
                continue
            if key in merged and merged[key] != value:
                raise InputError(f"plugins {owner[key]} and {name} set different defaults of {key} on {backbone} "
                                 f"({merged[key]!r} and {value!r}): set {key} explicitly")
            merged[key], owner[key] = value, name
    return merged
