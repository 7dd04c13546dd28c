"""Name a dataset the way a user does: a synthetic preset name or a dataset folder / manifest path."""

from __future__ import annotations

from pathlib import Path

from trainables.data.manifest import manifest_path
from trainables.data.synthetic import PRESETS, ensure_synthetic
from trainables.errors import InputError


def resolve_dataset(spec: str | Path) -> Path:
    """The manifest of ``spec``: a preset is generated into the cache once, a path must hold a manifest."""
    if str(spec) in PRESETS:
        return manifest_path(ensure_synthetic(str(spec)))
    path = manifest_path(spec)
    if not path.is_file():
        raise InputError(f"dataset {str(spec)!r} is neither a synthetic preset ({', '.join(PRESETS)}) "
                         f"nor a folder or manifest.json of a dataset")
    return path
