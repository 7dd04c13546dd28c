"""Shared by the benchmarks: a results file that survives interruption, mean +- std cells, the JSON output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class ResultsFile:
    """``{key: result}`` kept in a JSON file rewritten after every run, so an interrupted benchmark
    continues where it stopped (runs already in the file are skipped)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.runs: dict[str, Any] = {}
        if self.path is not None and self.path.is_file():
            self.runs = json.loads(self.path.read_text())

    def __contains__(self, key: str) -> bool:
        return key in self.runs

    def add(self, key: str, result: Any) -> None:
        self.runs[key] = result
        if self.path is not None:
            self.path.write_text(json.dumps(self.runs, indent=2))


def mean_std(values: Sequence[float], width: int = 6) -> str:
    """``mean +- std`` (population std over seeds, as the docs' tables report)."""
    array = np.asarray(values, dtype=float)
    return f"{array.mean():>{width}.1f} +-{array.std():>4.1f}"


def write_json(path: str | Path, result: Any) -> Path:
    """``result`` as indented JSON at ``path`` (folders created); values JSON cannot hold become strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None, quick: dict[str, Any]) -> argparse.Namespace:
    """``parser``'s arguments; with ``--quick`` the ``quick`` sizes become the defaults (options given still win)."""
    if parser.parse_args(argv).quick:
        parser.set_defaults(**quick)
    return parser.parse_args(argv)
