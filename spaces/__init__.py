"""Optuna search spaces by name (``space.py``) over ranges that are data (``ranges.yaml`` + overrides)."""

from spaces.space import BASE, FULL, Space, build_space, space_names

__all__ = ["BASE", "FULL", "Space", "build_space", "space_names"]
