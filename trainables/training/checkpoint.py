"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python values (model,
optimiser and scheduler state, the best weights so far, early-stopping counters, the per-epoch
history, RNG states and the flat config), so it loads with ``torch.load(weights_only=True)``: a
checkpoint fetched from shared storage cannot run code. It is written to a temporary name and
renamed, so a crash never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from trainables.errors import InputError

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(state: dict[str, Any], folder: str | Path) -> Path:
    """Write ``state`` as ``folder/checkpoint.pt`` atomically; returns the file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_NAME
    tmp = folder / f".{CHECKPOINT_NAME}.tmp-{os.getpid()}"
    torch.save({"format": CHECKPOINT_FORMAT, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(location: str | Path) -> dict[str, Any]:
    """Read a checkpoint (file or folder) with ``weights_only=True``; errors name the file."""
    path = Path(location)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise InputError(f"{path}: not a loadable weights-only checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise InputError(f"{path}: unknown checkpoint format {found!r}")
    return state
