"""The Ray release whose private internals the project relies on, verified line by line against it:
``TuneController.save_to_dir`` (search/tune_state.py) and ``OptunaSearch``'s ``_ot_trials``, ``_ot_study``
and ``_completed_trials`` (search/searcher.py, search/schedulers.py). On any other release those parts fall
back to Ray's public behaviour, or are refused, and say so. Reads the installed version without importing
ray (a local Ray reads its loopback setting when ray is imported)."""

from __future__ import annotations

from importlib.metadata import version

from trainables.errors import InputError

VERIFIED_RAY = "2.60.0"


def installed_ray() -> str:
    return version("ray")


def is_verified_ray() -> bool:
    """Whether the installed Ray is the one whose internals were verified."""
    return installed_ray() == VERIFIED_RAY


def require_verified_ray(feature: str, instead: str) -> None:
    """Refuses (one-line InputError) ``feature`` on a Ray other than ``VERIFIED_RAY``, naming ``instead``."""
    if not is_verified_ray():
        raise InputError(f"{feature} needs Ray {VERIFIED_RAY} (this is Ray {installed_ray()}); {instead}")


__all__ = ["VERIFIED_RAY", "installed_ray", "is_verified_ray", "require_verified_ray"]
