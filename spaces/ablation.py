"""Ablation designs: which settings each cell of an ablation holds, everything else fixed to the base.

A component is a setting toggled between an "off" and an "on" value:

- ``ral`` (a plugin name) or any boolean setting (``ral.csa``): off = False, on = True;
- ``key=a,b``: a categorical setting, off = ``a``, on = ``b`` (values parsed as YAML scalars).

Designs (the ablation tables of the PRVR papers): ``one-at-a-time`` is the base (every component off), the
base plus each component, every component on, and every component on but one; ``factorial`` is every
combination. Cells that hold the same settings appear once, under their first name.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import yaml

from trainables.errors import InputError

DESIGNS = ("one-at-a-time", "factorial")


@dataclass(frozen=True)
class Component:
    """One toggled setting: its config key and its off/on values."""

    key: str
    off: Any
    on: Any

    @property
    def label(self) -> str:
        return self.key if (self.off, self.on) == (False, True) else f"{self.key}={self.on}"


@dataclass(frozen=True)
class Cell:
    """One cell of an ablation: a name (``base``, ``+ral``, ``all``, ``all-ral``, ...) and its settings."""

    name: str
    settings: tuple[tuple[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.settings)


def parse_component(spec: str) -> Component:
    """``ral`` / ``ral.csa`` (off False, on True) or ``key=off,on``; a bad spec is a one-line InputError."""
    if "=" not in spec:
        if not spec or not all(part.isidentifier() for part in spec.split(".")):
            raise InputError(f"ablation component {spec!r} is not a setting name (e.g. ral, ral.csa, loss=a,b)")
        return Component(spec, False, True)
    key, _, values = spec.partition("=")
    try:
        choices = [yaml.safe_load(v) for v in values.split(",")] if values else []
    except yaml.YAMLError as exc:  # e.g. ral.k=1,[
        from trainables.training.config import yaml_problem

        raise InputError(f"ablation component {spec!r}: a value of {key} is not valid YAML "
                         f"({yaml_problem(exc)})") from None
    if not key or len(choices) != 2 or choices[0] == choices[1]:
        raise InputError(f"ablation component {spec!r}: write key=off,on with two different values")
    return Component(key, choices[0], choices[1])


def _cell(name: str, components: list[Component], on: set[str]) -> Cell:
    return Cell(name, tuple((c.key, c.on if c.key in on else c.off) for c in components))


def design(components: list[Component], kind: str = "one-at-a-time") -> list[Cell]:
    """The cells of ``kind`` over ``components`` (base first)."""
    if kind not in DESIGNS:
        raise InputError(f"unknown ablation design {kind!r} (designs: {', '.join(DESIGNS)})")
    if not components:
        raise InputError("an ablation needs at least one component")
    keys = [c.key for c in components]
    if len(set(keys)) != len(keys):
        raise InputError(f"ablation components repeat a setting: {keys}")
    everything = set(keys)
    if kind == "factorial":
        cells = []
        for flags in itertools.product((False, True), repeat=len(components)):
            on = {c.key for c, flag in zip(components, flags) if flag}
            name = "base" if not on else "+" + "+".join(c.label for c in components if c.key in on)
            cells.append(_cell(name, components, on))
    else:
        cells = [_cell("base", components, set())]
        cells += [_cell(f"+{c.label}", components, {c.key}) for c in components]
        cells.append(_cell("all", components, everything))
        cells += [_cell(f"all-{c.label}", components, everything - {c.key}) for c in components]
    unique: dict[tuple[tuple[str, Any], ...], Cell] = {}
    for cell in cells:
        unique.setdefault(cell.settings, cell)
    return list(unique.values())


__all__ = ["DESIGNS", "Cell", "Component", "design", "parse_component"]
