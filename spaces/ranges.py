"""The ranges a space samples from: ``ranges.yaml`` plus a user's overrides, validated into typed entries.

Ranges are data, not code: ``spaces/ranges.yaml`` holds every searched setting by group (``training``,
``backbone`` and one group per plugin) and a user's YAML file of overrides replaces single entries. An
entry is ``{type: float|int, low, high[, log][, step]}``, ``{type: categorical, choices}`` or
``{type: fixed, value}``, optionally with ``when: <switch>`` (sampled only when that switch of the group
is true). A group may name ``_at_least_one: [a, b, c]``: switches of which one must be on (the last is
forced on when the others are off, instead of being sampled). An int entry with ``below: epochs`` counts
epochs: ``tie_to_run`` clips its ``high`` to the run's epochs - 1, so a search never samples a value that
cannot act within its ``--max-epochs`` (``hard_negative_start_epoch``: 0-30 becomes 0-2 in a 3-epoch run).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeGuard

import optuna
import yaml

from trainables.errors import InputError

DEFAULT_RANGES = Path(__file__).with_name("ranges.yaml")
KINDS = ("float", "int", "categorical", "fixed")
AT_LEAST_ONE = "_at_least_one"
#: what ``below`` may name: a setting of the run's length, and the option that sets it (``search/run.py``)
BELOW = {"epochs": "--max-epochs"}


@dataclass(frozen=True)
class Entry:
    """One searched setting: its distribution (or fixed value) and the switch it depends on."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None
    when: str | None = None
    below: str | None = None  # an int range of epochs: clipped to this run setting - 1 (``tie_to_run``)

    def suggest(self, trial: optuna.Trial, key: str) -> Any:
        """Sample this entry under the Optuna parameter name ``key``."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(key, list(self.choices))
        assert self.low is not None and self.high is not None  # _entry sets both for int and float ranges
        if self.kind == "int":
            return trial.suggest_int(key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(key, float(self.low), float(self.high), log=self.log, step=self.step)


@dataclass(frozen=True)
class Group:
    """The entries of one group, in file order, and its at-least-one-on constraint."""

    name: str
    entries: tuple[Entry, ...]
    at_least_one: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> Entry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)


def _entry(group: str, name: str, raw: Any) -> Entry:
    where = f"{group}.{name}"
    if not isinstance(raw, dict) or raw.get("type") not in KINDS:
        raise InputError(f"range {where}: needs a mapping with type one of {', '.join(KINDS)}, got {raw!r}")
    kind = raw["type"]
    allowed = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step", "below"},
               "categorical": {"choices"}, "fixed": {"value"}}[kind] | {"type", "when"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InputError(f"range {where}: unknown key {unknown[0]!r} for type {kind} "
                         f"(allowed: {', '.join(sorted(allowed))})")
    when = raw.get("when")
    if when is not None and not isinstance(when, str):
        raise InputError(f"range {where}: when must name one switch of group {group}, got {when!r}")
    if kind in ("float", "int"):
        low, high = raw.get("low"), raw.get("high")
        if not (_finite(low) and _finite(high)):
            raise InputError(f"range {where}: low and high must be finite numbers, got {low!r} and {high!r}")
        step = raw.get("step")
        if step is not None and not (_finite(step) and step > 0):
            raise InputError(f"range {where}: step must be a finite number > 0, got {step!r}")
        if low > high:
            raise InputError(f"range {where}: low {low} is above high {high}")
        if raw.get("log") and low <= 0:
            raise InputError(f"range {where}: a log range needs low > 0, got {low}")
        below = raw.get("below")
        if below is not None and below not in BELOW:
            raise InputError(f"range {where}: below must name {' or '.join(BELOW)}, got {below!r}")
        return Entry(name, kind, low=low, high=high, log=bool(raw.get("log", False)), step=raw.get("step"), when=when,
                     below=below)
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise InputError(f"range {where}: choices must be a non-empty list, got {choices!r}")
        return Entry(name, kind, choices=tuple(choices), when=when)
    if "value" not in raw:
        raise InputError(f"range {where}: a fixed entry needs a value")
    return Entry(name, kind, value=raw["value"], when=when)


def _finite(value: Any) -> TypeGuard[float]:
    """A number (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at_least_one(group: str, raw: Any, names: set[str]) -> tuple[str, ...]:
    """A group's ``_at_least_one``: a list of its settings (``[]``: no constraint), checked."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise InputError(f"range {group}.{AT_LEAST_ONE}: must be a list of switches of {group}, got {raw!r}")
    unknown = [n for n in raw if n not in names]
    if unknown:
        raise InputError(f"range {group}.{AT_LEAST_ONE}: {unknown[0]!r} is not a setting of {group}")
    return tuple(raw)


def _merge(base: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """``base`` with ``overrides``' entries; a group for a registered plugin the defaults have no ranges
    for is a new group (that plugin's space). An int entry replacing one with ``below`` keeps it."""
    from trainables.plugins import list_plugins

    merged = copy.deepcopy(base)
    if not isinstance(overrides, dict):
        raise InputError(f"{source}: expected a mapping of groups, got {type(overrides).__name__}")
    for group, entries in overrides.items():
        if group not in merged and group not in list_plugins():
            raise InputError(f"{source}: unknown group {group!r} (known: {', '.join(merged)}; or a plugin's name)")
        if not isinstance(entries, dict):
            raise InputError(f"{source}: group {group} must be a mapping, got {entries!r}")
        if group not in merged:
            merged[group] = dict(entries)
            continue
        for name, raw in entries.items():
            if name not in merged[group]:
                raise InputError(f"{source}: unknown setting {group}.{name} "
                                 f"(known: {', '.join(k for k in merged[group] if k != AT_LEAST_ONE)})")
            base_entry = merged[group][name]
            if (isinstance(raw, dict) and raw.get("type") == "int" and "below" not in raw
                    and isinstance(base_entry, dict) and "below" in base_entry):
                raw = {**raw, "below": base_entry["below"]}  # still counted in epochs (``below: null`` opts out)
            merged[group][name] = raw
    return merged


def load_ranges(overrides: str | Path | None = None) -> dict[str, Group]:
    """The default ranges with ``overrides`` (a YAML file) applied, each entry checked."""
    raw = yaml.safe_load(DEFAULT_RANGES.read_text())
    if overrides is not None:
        path = Path(overrides)
        if not path.is_file():
            raise FileNotFoundError(f"range overrides file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        raw = _merge(raw, loaded, str(path))
    groups = {}
    for group, entries in raw.items():
        parsed = tuple(_entry(group, name, value) for name, value in entries.items() if name != AT_LEAST_ONE)
        names = {e.name for e in parsed}
        at_least_one = _at_least_one(group, entries.get(AT_LEAST_ONE), names)
        for entry in parsed:
            if entry.when is not None and entry.when not in names:
                raise InputError(f"range {group}.{entry.name}: when {entry.when!r} is not a setting of {group}")
        groups[group] = Group(group, parsed, at_least_one)
    return groups


def tie_to_run(groups: dict[str, Group], run: Mapping[str, Any]) -> dict[str, Group]:
    """``groups`` with every ``below: <key>`` range clipped to the run's ``run[key] - 1`` (on its step grid),
    so no sampled value lies where it cannot act (a hard-negative start at or after the last epoch). A
    range left empty is one InputError line; without ``run[key]`` (a run on the backbone's own epochs) the
    range stays as written."""
    tied = {}
    for name, group in groups.items():
        entries = []
        for entry in group.entries:
            length = run.get(entry.below) if entry.below is not None else None
            if entry.below is not None and isinstance(length, int) and not isinstance(length, bool):
                assert entry.low is not None and entry.high is not None  # an int range (_entry)
                step = int(entry.step or 1)
                cap = min(int(entry.high), length - 1)
                cap -= (cap - int(entry.low)) % step  # on the grid low, low + step, ...
                if cap < entry.low:
                    raise InputError(
                        f"range {name}.{entry.name}: low {entry.low:g} is not below {entry.below} {length} "
                        f"({BELOW[entry.below]} {length}): it could never act in so short a run; lower its low or "
                        f"raise {BELOW[entry.below]}")
                entry = replace(entry, high=cap)
            entries.append(entry)
        tied[name] = replace(group, entries=tuple(entries))
    return tied
