"""Optuna search spaces by name (``space.py``) over ranges that are data (``ranges.yaml`` + overrides)."""

from spaces.space import SPACES, Space, build_space

__all__ = ["SPACES", "Space", "build_space"]
