"""A trial's configuration: the backbone, its options, and the training settings.

A trial arrives as one flat dict (what an Optuna space samples)::

    {"backbone": "mssl", "lr": 2.5e-4, "epochs": 20, "cluster_num": 32, "margin": 0.1, ...}

``TrainConfig.from_dict`` splits it: keys that are ``TrainConfig`` fields are training settings; a key
that is a plugin's name switches that plugin on or off (``"ral": True``) and ``plugin.setting`` keys set
its settings (``"ral.k": 6``; allowed only while the plugin is on); every other key is an option of the
backbone, validated by the backbone's own ``Config``. An unknown key, an out-of-range value or a plugin
that cannot run on the backbone fails before training with a message naming the key and the reason.
Training settings left unset take the backbone's published TVR defaults (``Backbone.training_defaults``);
backbone options left unset take, before the backbone's own defaults, the release values a switched-on
plugin declares for that backbone (``Plugin.backbone_defaults``: RAL on GMMFormer v2 fuses with alpha 0.5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml

from trainables.errors import InputError
from trainables.models.base import Backbone, BackboneConfig, Dims, backbone_class
from trainables.plugins.base import (
    PluginConfig,
    list_plugins,
    plugin_backbone_defaults,
    plugin_class,
    plugin_config,
)
from trainables.training.random_streams import BACKBONE, init_seed

FALLBACK_DEFAULTS: dict[str, Any] = {
    "lr": 2.5e-4, "epochs": 100, "patience": 10, "hard_negative_start_epoch": 20, "seed": 2018, "batch_size": 128,
    "eval_video_batch": 256,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides the data. ``None`` means "the backbone's default"."""

    backbone: str
    options: dict[str, Any] = field(default_factory=dict)
    #: the plugins switched on, each with its settings (``{"ral": {"k": 6}}``)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    lr: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    patience: int | None = None
    hard_negative_start_epoch: int | None = None
    seed: int | None = None
    hard_pool_size: int = 20
    weight_decay: float = 0.01
    warmup_proportion: float = 0.01
    max_grad_norm: float = 1.0
    device: str = "auto"
    bf16: bool = False
    eval_query_chunk: int = 100
    #: videos encoded at once in evaluation (None: the backbone's, sized for peak memory)
    eval_video_batch: int | None = None
    video_dim: int | None = None
    query_dim: int | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Split a flat trial dict into training settings and backbone options, then validate."""
        if "backbone" not in raw:
            raise InputError("config has no 'backbone' key")
        own = {f.name for f in dataclasses.fields(cls)} - {"options", "plugins"}
        settings = {k: v for k, v in raw.items() if k in own}
        plugins = split_plugins(raw)
        options = {k: v for k, v in raw.items() if k not in own and k.split(".")[0] not in list_plugins()
                   and "." not in k}
        return cls(options=options, plugins=plugins, **settings).resolved()

    def resolved(self) -> TrainConfig:
        """Fill unset settings from the backbone's defaults and validate everything."""
        defaults = {**FALLBACK_DEFAULTS, **backbone_class(self.backbone).training_defaults}
        filled = {k: (defaults[k] if getattr(self, k) is None else getattr(self, k)) for k in FALLBACK_DEFAULTS}
        config = dataclasses.replace(self, **filled)
        config.validate()
        return config

    def backbone_config(self) -> BackboneConfig:
        """The backbone's options: the user's, then the plugins' release defaults for this backbone, then the
        backbone's own defaults (``options`` keeps only what the user set)."""
        cls = backbone_class(self.backbone)
        options = {**plugin_backbone_defaults(self.plugins, self.backbone, self.options), **self.options}
        return cls.Config.from_options(options, self.backbone)

    def validate(self) -> None:
        """Raise InputError naming the first bad key (the backbone's options included)."""
        numbers = ("lr", "batch_size", "epochs", "patience", "hard_negative_start_epoch", "hard_pool_size",
                   "weight_decay", "warmup_proportion", "max_grad_norm", "eval_query_chunk", "eval_video_batch")
        for key in numbers:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{key} must be a number, got {value!r}")
        checks = [
            ("lr", self.lr is not None and self.lr > 0, "must be > 0"),
            ("batch_size", self.batch_size is not None and self.batch_size >= 2, "must be >= 2"),
            ("epochs", self.epochs is not None and self.epochs >= 1, "must be >= 1"),
            ("patience", self.patience is not None and self.patience >= 0, "must be >= 0"),
            ("hard_negative_start_epoch", self.hard_negative_start_epoch is not None
             and self.hard_negative_start_epoch >= 0, "must be >= 0"),
            ("hard_pool_size", self.hard_pool_size >= 1, "must be >= 1"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("warmup_proportion", 0 < self.warmup_proportion < 1, "must be in (0, 1)"),
            ("max_grad_norm", self.max_grad_norm >= 0, "must be >= 0"),
            ("device", self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             "must be 'auto', 'cpu' or 'cuda[:N]'"),
            ("eval_query_chunk", self.eval_query_chunk >= 1, "must be >= 1"),
            ("eval_video_batch", self.eval_video_batch is not None and self.eval_video_batch >= 1, "must be >= 1"),
        ]
        for key, ok, rule in checks:
            if not ok:
                raise InputError(f"{key} {rule}, got {getattr(self, key)!r}")
        self.backbone_config()
        self.plugin_configs()

    def plugin_configs(self) -> dict[str, PluginConfig]:
        """Each plugin's validated settings; a plugin that cannot run on the backbone is an error saying why."""
        backbone = backbone_class(self.backbone)
        configs = {}
        for name, settings in self.plugins.items():
            config = plugin_config(name, settings)
            plugin_class(name).check(config, backbone)
            configs[name] = config
        return configs

    def build_model(self, dims: Dims, seed: int | None = None) -> Backbone:
        """The backbone with its plugins attached. Without ``seed`` the parameters are drawn from the
        current torch RNG in build order; with it, the backbone's and each plugin's from their own
        stream (``random_streams.init_seed``), so a plugin switched on leaves every other module's
        initial weights as they were, and torch's RNG is left untouched."""
        backbone_config = self.backbone_config()
        with _init_stream(seed, BACKBONE):
            model = backbone_class(self.backbone)(backbone_config, dims)
        for name, config in self.plugin_configs().items():
            with _init_stream(seed, name):
                model.attach(plugin_class(name)(config, backbone_config, dims))
        return model

    def check_dims(self, video_dim: int, query_dim: int, where: str) -> None:
        """Dims pinned in the config must equal the dataset's."""
        for key, value, actual in (("video_dim", self.video_dim, video_dim), ("query_dim", self.query_dim, query_dim)):
            if value is not None and value != actual:
                raise InputError(f"{key} {value} disagrees with the dataset's {actual} ({where})")

    def to_dict(self) -> dict[str, Any]:
        """The flat form (inverse of ``from_dict``)."""
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("options", "plugins")}
        for name, settings in self.plugins.items():
            flat[name] = True
            flat.update({f"{name}.{key}": value for key, value in settings.items()})
        return {**flat, **self.options}


@contextmanager
def _init_stream(seed: int | None, component: str) -> Iterator[None]:
    """Draw ``component``'s initial weights from its own stream (nothing changes without a seed)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed(seed, component))
        yield


def split_plugins(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"ral": True, "ral.k": 6, "msc": False}`` -> ``{"ral": {"k": 6}}``; settings of a plugin that is
    off, unknown plugin names and non-boolean switches are errors naming the key."""
    names = list_plugins()
    plugins: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key in names:
            if not isinstance(value, bool):
                raise InputError(f"plugin switch {key} must be true or false, got {value!r}")
            if value:
                plugins.setdefault(key, {})
    for key, value in raw.items():
        if "." not in key:
            continue
        name, _, setting = key.partition(".")
        if name not in names:
            raise InputError(f"unknown plugin {name!r} in key {key!r} (available: {', '.join(names)})")
        if name not in plugins:
            raise InputError(f"{key} is set but plugin {name} is off (set {name}: true to use it)")
        plugins[name][setting] = value
    return plugins


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """``["hidden_size=128", "lr=1e-4", "ral.csa=false"]`` -> typed config values: int, then float (YAML
    would read "1e-4" as a string), then as YAML reads them (booleans, strings)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise InputError(f"--set expects KEY=VALUE, got {pair!r}")
        for cast in (int, float, yaml.safe_load):
            try:
                values[key] = cast(text)
                break
            except ValueError:
                continue
            except yaml.YAMLError as exc:  # e.g. margin=[unclosed
                raise InputError(f"--set {key}: {text!r} is not a valid value ({yaml_problem(exc)})") from None
    return values


def yaml_problem(exc: Exception) -> str:
    """The one-line reason of a YAML error (``problem`` of a MarkedYAMLError, else its first line)."""
    problem = getattr(exc, "problem", None) or (str(exc) or type(exc).__name__).splitlines()[0]
    return str(problem).strip()
