"""Optuna search spaces by name (``space.py``) over ranges that are data (``ranges.yaml`` + overrides).

The names below are imported from ``space.py`` on first use: it imports torch (to build each distinct
model once), which ``spaces.ablation`` and an entry point's ``--help`` do not need."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spaces.space import BASE, FULL, Space, build_space, space_names

__all__ = ["BASE", "FULL", "Space", "build_space", "space_names"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from spaces import space

        return getattr(space, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
