"""Optuna define-by-run search spaces by name: ``base``, ``ral``, ``msc``, ``moment`` and ``full``.

A space is a callable ``space(trial) -> config`` (the flat trial config of ``TrainConfig.from_dict``):

* ``base``: the backbone and the training hyperparameters every trial has (groups ``training`` and
  ``backbone`` of the ranges);
* ``ral`` / ``msc`` / ``moment``: ``base`` with that plugin on and its settings sampled, over the
  backbones that can run every part of it;
* ``full``: ``base`` with every plugin the sampled backbone can run toggled, its settings sampled only
  when it is on.

Optuna parameter names are the config keys (``lr``, ``ral.k``, ...), so a plugin's settings exist in a
trial exactly when the plugin is on. ``validate`` samples many configs and builds each distinct model
once, so a space that can produce an invalid config fails before any trial starts.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from spaces.ranges import Group, load_ranges, tie_to_run
from trainables.errors import InputError
from trainables.models.base import Dims, list_backbones
from trainables.plugins import list_plugins
from trainables.training.config import TrainConfig

#: the space without plugins, and the one that toggles every searched plugin; between them, one space per
#: registered plugin that has ranges (``space_names``)
BASE, FULL = "base", "full"
#: training settings: they never change the model's structure (nor do float settings: weights, rates)
TRAINING_KEYS = frozenset({"batch_size", "hard_negative_start_epoch", "seed", "epochs", "patience"})


def sample_group(trial: optuna.Trial, group: Group, prefix: str = "",
                 fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sample a group's entries in order: ``when`` entries only under a true switch; the last switch of
    ``at_least_one`` is on, unsampled, when the others are off; keys in ``fixed`` take that value."""
    fixed = fixed or {}
    values: dict[str, Any] = {}
    for entry in group.entries:
        if entry.when is not None and values.get(entry.when) is not True:
            continue
        if prefix + entry.name in fixed:
            values[entry.name] = fixed[prefix + entry.name]
            continue
        forced = group.at_least_one and entry.name == group.at_least_one[-1] and not any(
            values.get(name) for name in group.at_least_one[:-1])
        values[entry.name] = True if forced else entry.suggest(trial, prefix + entry.name)
    return {prefix + name: value for name, value in values.items()}


def full_switches(group: Group) -> dict[str, Any]:
    """Every boolean switch of a plugin's group on: the most a backbone must support."""
    return {e.name: True for e in group.entries if e.kind == "categorical" and any(c is True for c in e.choices)}


@functools.cache
def runs_on(plugin: str, backbone: str, switches: tuple[tuple[str, Any], ...]) -> str | None:
    """None if ``backbone`` runs ``plugin`` with ``switches`` on, else the reason it does not."""
    try:
        TrainConfig.from_dict({"backbone": backbone, plugin: True, **{f"{plugin}.{k}": v for k, v in switches}})
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class Space:
    """A named define-by-run space over ``backbones``; ``fixed`` values join every config and are not
    sampled (a fixed setting of a toggled plugin applies when that plugin is on)."""

    name: str
    groups: dict[str, Group]
    backbones: tuple[str, ...]
    always_on: tuple[str, ...] = ()
    toggled: tuple[str, ...] = ()
    fixed: dict[str, Any] = field(default_factory=dict)

    def plugin_runs_on(self, plugin: str, backbone: str) -> bool:
        return runs_on(plugin, backbone, tuple(sorted(full_switches(self.groups[plugin]).items()))) is None

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        config: dict[str, Any] = {k: v for k, v in self.fixed.items() if k.split(".")[0] not in self.toggled}
        if len(self.backbones) == 1:
            config["backbone"] = self.backbones[0]
        else:
            config["backbone"] = trial.suggest_categorical("backbone", list(self.backbones))
        fixed = self.fixed
        config.update(sample_group(trial, self.groups["training"], fixed=fixed))
        backbone_group = Group("backbone", tuple(e for e in self.groups["backbone"].entries if e.name != "backbone"))
        config.update(sample_group(trial, backbone_group, fixed=fixed))
        for plugin in self.always_on:
            config[plugin] = True
            config.update(sample_group(trial, self.groups[plugin], f"{plugin}.", fixed))
        for plugin in self.toggled:
            if not self.plugin_runs_on(plugin, config["backbone"]):
                continue
            on = fixed[plugin] if plugin in fixed else trial.suggest_categorical(plugin, [True, False])
            if on:
                config[plugin] = True
                config.update(sample_group(trial, self.groups[plugin], f"{plugin}.", fixed))
            else:
                config.pop(plugin, None)
        return config

    def sample(self, count: int, seed: int = 0) -> list[dict[str, Any]]:
        """``count`` configs drawn at random (what validation checks)."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        configs = []
        for _ in range(count):
            trial = study.ask()
            configs.append(self(trial))
            study.tell(trial, 0.0)
        return configs

    def validate(self, dims: Dims, count: int = 200, seed: int = 0) -> int:
        """Check ``count`` sampled configs (``TrainConfig`` validation: ranges, plugin/backbone fit) and
        build each distinct model structure once (no training; structure = the backbone, the switches and
        the integer settings: floats and variant names change no shapes);
        a bad config raises InputError naming the space and the config. Returns the number of builds."""
        built: set[tuple[tuple[str, str], ...]] = set()
        for config in self.sample(count, seed):
            try:
                train_config = TrainConfig.from_dict(config)
                key = tuple(sorted((k, repr(v)) for k, v in config.items()
                                   if k == "backbone" or (k not in TRAINING_KEYS and isinstance(v, (bool, int)))))
                if key not in built:
                    train_config.build_model(dims)
                    built.add(key)
            except (ValueError, RuntimeError, TypeError) as exc:
                raise InputError(f"space {self.name} can produce an invalid config: {exc} (config: {config})") from None
        return len(built)


def space_names(overrides: str | None = None) -> tuple[str, ...]:
    """``base``, each registered plugin with a ranges group (default ranges plus ``overrides``), ``full``:
    a plugin without ranges is simply not searched."""
    groups = load_ranges(overrides)
    return (BASE, *(p for p in list_plugins() if p in groups), FULL)


def build_space(name: str, *, backbones: Sequence[str] | None = None, overrides: str | None = None,
                fixed: dict[str, Any] | None = None) -> Space:
    """The space ``name`` over ``backbones`` (default: the ranges' backbone choices) with the ranges of
    ``spaces/ranges.yaml`` and a user's ``overrides`` file applied, and the ranges counted in epochs
    (``below: epochs``) clipped to ``fixed["epochs"]`` - 1 (``spaces.ranges.tie_to_run``)."""
    groups = tie_to_run(load_ranges(overrides), fixed or {})
    names = space_names(overrides)
    if name not in names:
        raise InputError(f"unknown space {name!r} (available: {', '.join(names)})")
    choices = _backbone_choices(groups, backbones)
    searched = tuple(p for p in list_plugins() if p in groups)  # a plugin without ranges is not searched
    always_on = (name,) if name in searched else ()
    toggled = searched if name == FULL else ()
    space = Space(name, groups, choices, always_on, toggled, dict(fixed or {}))
    if always_on:
        plugin = always_on[0]
        usable = tuple(b for b in choices if space.plugin_runs_on(plugin, b))
        if not usable:
            reasons = "; ".join(runs_on(plugin, b, tuple(sorted(full_switches(groups[plugin]).items()))) or ""
                                for b in choices)
            raise InputError(f"space {name}: none of the backbones {', '.join(choices)} can run plugin {plugin} "
                             f"({reasons})")
        space.backbones = usable
    return space


def _backbone_choices(groups: dict[str, Group], backbones: Iterable[str] | None) -> tuple[str, ...]:
    known = list_backbones()
    if backbones:
        chosen = tuple(backbones)
    else:
        entry = groups["backbone"]["backbone"]
        chosen = tuple(entry.choices) if entry.kind == "categorical" else (entry.value,)
    for backbone in chosen:
        if backbone not in known:
            raise InputError(f"unknown backbone {backbone!r} (available: {', '.join(known)})")
    return chosen
