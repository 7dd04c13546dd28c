"""HDF5 files holding one feature array per key, as the release layouts store text (and AMDNet video) features.

MS-SL's ``roberta_<coll>_query_feat.hdf5`` maps a caption id to an ``(n_tokens, dim)`` matrix; AMDNet's
CLIP files map a caption id to one ``(dim,)`` sentence vector and a video id to ``(n_frames, dim)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np

from trainables.data.errors import DatasetError
from trainables.data.importers._io import require_file


class KeyedFeatures:
    """Read-only access to a keyed HDF5 feature file, checking every entry's shape and width.

    With ``vectors=True`` every entry must be 1-D and is returned as a one-row matrix; otherwise entries
    must be non-empty 2-D matrices. All entries must share the width of the first one read.
    """

    def __init__(self, path: Path, *, vectors: bool = False) -> None:
        self.path = require_file(path)
        self.vectors = vectors
        self.width: int | None = None
        self._width_key = ""
        try:
            self._handle = h5py.File(path, "r")
        except OSError as exc:
            raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from None

    def read(self, key: str, what: str, context: str = "") -> np.ndarray:
        """The features stored under ``key`` (a ``what``, e.g. "caption"), as a 2-D float array."""
        entry = self._handle.get(key)
        if not isinstance(entry, h5py.Dataset):
            problem = "has no features for" if entry is None else "has a group, not a dataset, for"
            raise DatasetError(f"{self.path}: {problem} {what} {key!r}{context}")
        data = entry[()]
        expected = "a non-empty 1-D vector" if self.vectors else "a non-empty (n, dim) matrix"
        if data.ndim != (1 if self.vectors else 2) or data.size == 0:
            raise DatasetError(f"{self.path}: {what} {key!r} has shape {data.shape}, expected {expected}")
        if not np.issubdtype(data.dtype, np.floating):
            raise DatasetError(f"{self.path}: {what} {key!r} has dtype {data.dtype}, expected floating point")
        data = data.reshape(1, -1) if self.vectors else data
        if self.width is None:
            self.width, self._width_key = int(data.shape[1]), key
        elif data.shape[1] != self.width:
            raise DatasetError(f"{self.path}: {what} {key!r} has feature dim {data.shape[1]}, "
                               f"but {self._width_key!r} has {self.width}")
        return data

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> KeyedFeatures:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_keyed_features(path: Path, items: Iterable[tuple[str, np.ndarray]]) -> None:
    """Write one float32 dataset per key. Keys must be plain HDF5 names (no '/', not '.')."""
    with h5py.File(path, "w") as handle:
        for key, features in items:
            if not key or "/" in key or key == ".":
                raise DatasetError(f"{path}: key {key!r} cannot be an HDF5 dataset name")
            handle.create_dataset(key, data=np.asarray(features, dtype=np.float32))
