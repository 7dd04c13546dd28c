"""File helpers shared by the importers and exporters: strict text reading and atomic folder creation."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trainables.data.errors import DatasetError


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``, or a DatasetError naming it (missing or not UTF-8)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def require_file(path: Path) -> Path:
    """``path`` if it is a file, else a DatasetError naming it."""
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    return path


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``final``; rename it to ``final`` if the block succeeds.

    Refuses to replace an existing ``final``; on any error the temporary folder is removed, so a
    failed export leaves nothing behind.
    """
    final = final.expanduser().resolve()
    if final.exists():
        raise DatasetError(f"{final}: already exists; refusing to overwrite it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            raise DatasetError(f"{final}: appeared while writing; not replacing it")
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
