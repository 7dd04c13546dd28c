"""Caption files of the release layouts: ``TextData/<collection><split>.caption.txt``.

One query per line, ``"<cap_id> <free text>"``. As in the release loaders, a line is stripped of
surrounding whitespace and split on its first space; the query's video is ``cap_id.split('#')[0]``.
Blank lines are skipped and the text may be empty (the release loaders themselves would fail on such a
line, but nothing here depends on the text).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainables.data.errors import DatasetError
from trainables.data.importers._io import read_text
from trainables.errors import InputError

CAPTION_SUFFIX = ".caption.txt"


def video_id_of(cap_id: str) -> str:
    """The video a caption id belongs to: the part before the first ``#`` (release ``getVideoId``)."""
    return cap_id.split("#")[0]


def caption_file(text_dir: Path, collection: str, split: str) -> Path:
    """``<text_dir>/<collection><split>.caption.txt``."""
    return text_dir / f"{collection}{split}{CAPTION_SUFFIX}"


@dataclass(frozen=True)
class Caption:
    """One caption line: id, text, and where it was read (for error messages)."""

    cap_id: str
    text: str
    path: Path
    line: int

    @property
    def video_id(self) -> str:
        return video_id_of(self.cap_id)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def parse_caption_line(line: str) -> tuple[str, str] | None:
    """``(cap_id, text)`` of one line as the release reads it, or None for a blank line."""
    stripped = line.strip()
    if not stripped:
        return None
    cap_id, _, text = stripped.partition(" ")
    return cap_id, text


def caption_id_problem(cap_id: str) -> str | None:
    """Why ``cap_id`` cannot be a caption id (None if it can)."""
    if any(c.isspace() for c in cap_id):
        return "contains whitespace"
    if not video_id_of(cap_id):
        return "has an empty video id (nothing before the first '#')"
    return None


def format_caption_line(cap_id: str, text: str) -> str:
    """The line (without newline) for one query; DatasetError if it would not read back identically."""
    line = f"{cap_id} {text}"
    problem = caption_id_problem(cap_id) if cap_id else "is empty"
    if problem is None and ("\n" in text or "\r" in text):
        problem = "has a line break in its text"
    if problem is None and parse_caption_line(line) != (cap_id, text):
        problem = "has trailing whitespace in its text, which a caption line cannot keep"
    if problem is not None:
        raise DatasetError(f"caption {cap_id!r}: {problem}")
    return line


def read_captions(path: Path) -> list[Caption]:
    """Every caption of one file, in file order; malformed or duplicate ids are errors naming file:line."""
    captions: list[Caption] = []
    first_line: dict[str, int] = {}
    # StringIO with newline=None splits lines exactly as iterating the text file does (\n, \r, \r\n).
    for number, line in enumerate(io.StringIO(read_text(path), newline=None), start=1):
        parsed = parse_caption_line(line)
        if parsed is None:
            continue
        cap_id, text = parsed
        problem = caption_id_problem(cap_id)
        if problem is not None:
            raise DatasetError(f"{path}:{number}: malformed caption id {cap_id!r}: {problem}")
        if cap_id in first_line:
            raise DatasetError(
                f"{path}:{number}: duplicate caption id {cap_id!r} (first on line {first_line[cap_id]})"
            )
        first_line[cap_id] = number
        captions.append(Caption(cap_id, text, path, number))
    if not captions:
        raise DatasetError(f"{path}: has no captions")
    return captions


def write_captions(path: Path, captions: Iterable[tuple[str, str]]) -> None:
    """Write ``(cap_id, text)`` pairs as a caption file, one per line."""
    lines = [format_caption_line(cap_id, text) for cap_id, text in captions]
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


@dataclass
class CaptionSplits:
    """The captions of several split files merged: each caption id once, with the splits listing it."""

    captions: dict[str, Caption] = field(default_factory=dict)  # first appearance over the splits
    splits: dict[str, list[str]] = field(default_factory=dict)  # split -> cap ids in file order

    def video_ids(self) -> list[str]:
        """Every referenced video once, in first-appearance order over the splits."""
        return list(dict.fromkeys(c.video_id for c in self.captions.values()))

    def first_caption(self) -> dict[str, Caption]:
        """The first caption of each video (to say where a video was referenced in errors)."""
        first: dict[str, Caption] = {}
        for caption in self.captions.values():
            first.setdefault(caption.video_id, caption)
        return first

    def add(self, split: str, captions: Sequence[Caption]) -> None:
        """Merge one split's captions; a caption id already seen must have the same text."""
        for caption in captions:
            seen = self.captions.setdefault(caption.cap_id, caption)
            if seen.text != caption.text:
                raise DatasetError(
                    f"{caption.where}: caption {caption.cap_id!r} has a different text than at {seen.where}"
                )
        self.splits[split] = [c.cap_id for c in captions]


def _existing_splits(text_dir: Path, collection: str) -> list[str]:
    """Split names that have a caption file in ``text_dir``."""
    prefix = collection
    names = [p.name for p in text_dir.glob(f"*{CAPTION_SUFFIX}")] if text_dir.is_dir() else []
    return sorted(n[len(prefix):-len(CAPTION_SUFFIX)] for n in names
                  if n.startswith(prefix) and len(n) > len(prefix) + len(CAPTION_SUFFIX))


def read_caption_splits(text_dir: Path, collection: str, splits: Sequence[str]) -> CaptionSplits:
    """Read ``<collection><split>.caption.txt`` for every split; all files must exist."""
    if not splits or len(set(splits)) != len(splits):
        raise InputError(f"splits must be distinct and non-empty, got {tuple(splits)!r}")
    paths = {split: caption_file(text_dir, collection, split) for split in splits}
    missing = [split for split, path in paths.items() if not path.is_file()]
    if missing:
        found = _existing_splits(text_dir, collection)
        hint = f"pass splits={tuple(found)!r} to import only those" if found else "no caption file found there"
        raise DatasetError(
            f"{paths[missing[0]]}: caption file of split {missing[0]!r} is missing "
            f"(splits with a caption file: {', '.join(found) or 'none'}; {hint})"
        )
    merged = CaptionSplits()
    for split, path in paths.items():
        merged.add(split, read_captions(path))
    return merged


def write_caption_splits(text_dir: Path, collection: str, splits: Mapping[str, Iterable[tuple[str, str]]]) -> None:
    """Write one caption file per split."""
    for split, captions in splits.items():
        write_captions(caption_file(text_dir, collection, split), captions)
