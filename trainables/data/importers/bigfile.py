"""The MS-SL release's "BigFile" frame-feature folder and its ``video2frames.txt``, read and written safely.

A BigFile folder holds ``shape.txt`` (``"N D"``), ``id.txt`` (N whitespace-separated frame names) and
``feature.bin`` (raw little-endian float32, N x D, row-major). The release reader seeks once per frame;
here ``feature.bin`` is memory-mapped once and frames are gathered with one fancy index per video.

``video2frames.txt`` is a Python dict literal ``{video_id: [frame_name, ...]}`` that the release parses
with ``eval``. It is parsed here by a small dedicated parser that accepts only that shape (string keys,
lists of string literals), so a hostile file can never run code; on a release-sized file (1M frame
names) it is ~20x faster than ``ast.literal_eval`` (0.6 s vs 12 s) and needs ~16x less memory.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import cast

import numpy as np

from trainables.data.errors import DatasetError
from trainables.data.importers._io import read_text, require_file

SHAPE_FILE = "shape.txt"
ID_FILE = "id.txt"
FEATURE_FILE = "feature.bin"
VIDEO2FRAMES_FILE = "video2frames.txt"
FLOAT32 = np.dtype("<f4")


# -- BigFile ---------------------------------------------------------------------------------------
def _read_shape(path: Path) -> tuple[int, int]:
    """``(N, D)`` from ``shape.txt``: exactly two integers, N >= 0 and D >= 1."""
    fields = read_text(path).split()
    if len(fields) != 2 or not all(re.fullmatch(r"[0-9]+", f) for f in fields):
        raise DatasetError(f"{path}: malformed, expected two non-negative integers 'N D', got {fields[:4]!r}")
    rows, dim = int(fields[0]), int(fields[1])
    if dim < 1:
        raise DatasetError(f"{path}: feature dim must be >= 1, got {dim}")
    return rows, dim


@dataclass
class BigFile:
    """A BigFile folder: frame names and their (memory-mapped) float32 features."""

    folder: Path
    names: list[str]
    features: np.ndarray  # (N, D) float32, read-only memory map

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def index(self) -> dict[str, int]:
        """Row of each frame name; as in the release, a name listed twice maps to its last row."""
        return {name: row for row, name in enumerate(self.names)}

    def rows(self, names: Sequence[str], context: str = "") -> np.ndarray:
        """The features of ``names`` in that order, as an in-memory ``len(names) x D`` float32 array."""
        index = self.index
        try:
            rows = [index[name] for name in names]
        except KeyError as exc:
            raise DatasetError(
                f"{self.folder / ID_FILE}: has no frame {exc.args[0]!r}{context}"
            ) from None
        return np.asarray(self.features[rows], dtype=np.float32)


def read_bigfile(folder: str | Path) -> BigFile:
    """Open a BigFile folder, checking that shape, names and the binary size agree."""
    folder = Path(folder)
    rows, dim = _read_shape(folder / SHAPE_FILE)
    id_path = folder / ID_FILE
    names = read_text(id_path).split()
    if len(names) != rows:
        raise DatasetError(f"{id_path}: lists {len(names)} frame names, {folder / SHAPE_FILE} says {rows}")
    bin_path = require_file(folder / FEATURE_FILE)
    expected, actual = rows * dim * FLOAT32.itemsize, bin_path.stat().st_size
    if actual != expected:
        problem = "truncated" if actual < expected else "too large"
        raise DatasetError(f"{bin_path}: {problem}: {actual} bytes, but {rows} x {dim} float32 need {expected}")
    if expected == 0:
        features = np.zeros((rows, dim), dtype=FLOAT32)
    else:
        features = np.memmap(bin_path, dtype=FLOAT32, mode="r", shape=(rows, dim))
    return BigFile(folder=folder, names=names, features=features)


def _check_names(names: Sequence[str], where: Path, what: str) -> None:
    """Names written to a whitespace-separated file must be non-empty and contain no whitespace."""
    for name in names:
        if not name or any(c.isspace() for c in name):
            raise DatasetError(f"{where}: {what} {name!r} is empty or contains whitespace")


def write_bigfile(folder: str | Path, names: Sequence[str], features: np.ndarray) -> None:
    """Write ``names`` and their ``N x D`` features as a BigFile folder (created if needed)."""
    folder = Path(folder)
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] != len(names) or features.shape[1] < 1:
        raise DatasetError(f"{folder}: need {len(names)} x D features with D >= 1, got shape {features.shape}")
    _check_names(names, folder / ID_FILE, "frame name")
    if len(set(names)) != len(names):
        raise DatasetError(f"{folder / ID_FILE}: frame names are not unique")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SHAPE_FILE).write_text(f"{features.shape[0]} {features.shape[1]}\n", encoding="utf-8")
    (folder / ID_FILE).write_text(" ".join(names) + "\n", encoding="utf-8")
    np.ascontiguousarray(features, dtype=FLOAT32).tofile(folder / FEATURE_FILE)


# -- video2frames.txt --------------------------------------------------------------------------------
# A Python string literal on one line: optional u prefix, single or double quotes, backslash escapes.
_STR = r"""[uU]?(?:'[^'\\\n]*(?:\\.[^'\\\n]*)*'|"[^"\\\n]*(?:\\.[^"\\\n]*)*")"""
_STR_RE = re.compile(_STR)
_ENTRY_RE = re.compile(rf"\s*({_STR})\s*:\s*\[\s*((?:{_STR}\s*,\s*)*(?:{_STR})?)\s*\]")
_OPEN_RE = re.compile(r"\s*\{")
_END_RE = re.compile(r"\s*\}\s*\Z")
_COMMA_RE = re.compile(r"\s*,")


def _string(token: str) -> str:
    """The value of one string-literal token (already known to be a plain string literal)."""
    if "\\" not in token and token[0] in "'\"":
        return token[1:-1]
    return ast.literal_eval(token)  # a lone string literal: no code can run


_SPACE_RE = re.compile(r"\s*")


def _line_of(text: str, pos: int) -> int:
    """Line number of the first non-blank character at or after ``pos``."""
    space = cast(re.Match[str], _SPACE_RE.match(text, pos))  # \s* matches at every position
    return text.count("\n", 0, space.end()) + 1


def parse_video2frames(text: str, where: str | Path = "video2frames.txt") -> dict[str, list[str]]:
    """Parse a ``{video_id: [frame_name, ...]}`` literal; anything else is a DatasetError naming ``where``.

    Accepted: string keys, lists of string literals, commas (trailing ones too) and whitespace. Rejected:
    any other expression, duplicate video ids, empty ids or frame names.
    """
    opening = _OPEN_RE.match(text)
    if opening is None:
        raise DatasetError(f"{where}:1: not a dict literal {{video_id: [frame names]}}")
    result: dict[str, list[str]] = {}
    pos = opening.end()
    if _END_RE.match(text, pos):
        return result
    while True:
        entry = _ENTRY_RE.match(text, pos)
        if entry is None:
            raise DatasetError(f"{where}:{_line_of(text, pos)}: expected 'video_id': ['frame name', ...]")
        try:
            video = _string(entry.group(1))
            frames = [_string(token) for token in _STR_RE.findall(entry.group(2))]
        except (SyntaxError, ValueError) as exc:
            raise DatasetError(f"{where}:{_line_of(text, pos)}: bad string literal ({exc})") from None
        if not video or video in result or not all(frames):
            problem = "duplicate" if video in result else "empty id or frame name for"
            raise DatasetError(f"{where}:{_line_of(text, pos)}: {problem} video {video!r}")
        result[video] = frames
        pos = entry.end()
        comma = _COMMA_RE.match(text, pos)
        pos = comma.end() if comma else pos
        if _END_RE.match(text, pos):
            return result
        if comma is None:
            raise DatasetError(f"{where}:{_line_of(text, pos)}: expected ',' or the closing brace")


def read_video2frames(path: str | Path) -> dict[str, list[str]]:
    """Read ``video2frames.txt`` without evaluating it (see ``parse_video2frames``)."""
    path = Path(path)
    return parse_video2frames(read_text(path), path)


def write_video2frames(path: str | Path, video2frames: Mapping[str, Sequence[str]]) -> None:
    """Write the mapping as the release does (``str(dict)``): a one-line Python dict literal."""
    path = Path(path)
    literal = {str(video): [str(f) for f in frames] for video, frames in video2frames.items()}
    path.write_text(str(literal), encoding="utf-8")
