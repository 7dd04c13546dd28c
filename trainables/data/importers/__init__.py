"""Importers from the public PRVR release layouts into the sharded store, and exporters back to them.

``LAYOUTS`` maps a layout name to its importer so a command-line tool can pick one by name. Every
importer takes ``(root, collection, out_dir, *, splits, dtype, ...)`` (``msrl`` also needs
``visual_feature``), writes through ``DatasetWriter`` (nothing partial is ever published) and raises
one-line ``DatasetError``s naming the file at fault.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trainables.data.importers.amdnet import export_amdnet, import_amdnet
from trainables.data.importers.msrl import export_msrl, import_msrl

LAYOUTS: dict[str, Callable[..., Path]] = {"msrl": import_msrl, "amdnet": import_amdnet}

__all__ = ["LAYOUTS", "export_amdnet", "export_msrl", "import_amdnet", "import_msrl"]
