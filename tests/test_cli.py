"""The command-line entry points, run as a user runs them: real processes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from trainables.data.store import FeatureStore
from trainables.evaluation.metrics import chance_recall

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PRVR_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_synth_verify_export_convert_round_trip(tmp_path):
    ds = tmp_path / "tiny"
    assert run("search/dataset.py", "synth", "--preset", "tiny", "--out", str(ds), "--seed", "5",
               data_dir=tmp_path).returncode == 0
    verified = run("search/dataset.py", "verify", str(ds), data_dir=tmp_path)
    assert verified.returncode == 0 and "ok" in verified.stdout
    exported = run("search/dataset.py", "export-msrl", "--dataset", str(ds), "--root", str(tmp_path / "release"),
                   "--collection", "tiny", data_dir=tmp_path)
    assert exported.returncode == 0, exported.stderr
    back = tmp_path / "back"
    converted = run("search/dataset.py", "convert", "--layout", "msrl", "--root", str(tmp_path / "release"),
                    "--collection", "tiny", "--visual-feature", "synthetic", "--dtype", "float16",
                    "--out", str(back), data_dir=tmp_path)
    assert converted.returncode == 0, converted.stderr
    assert "test: 20 videos, 80 queries" in converted.stdout
    original, copy = FeatureStore(ds).load_split("test"), FeatureStore(back).load_split("test")
    assert original.query_ids == copy.query_ids and original.video_ids == copy.video_ids
    np.testing.assert_array_equal(original.frames, copy.frames)
    np.testing.assert_array_equal(original.tokens, copy.tokens)


def test_dataset_errors_are_one_line(tmp_path):
    ds = tmp_path / "tiny"
    run("search/dataset.py", "synth", "--preset", "tiny", "--out", str(ds), "--seed", "1", data_dir=tmp_path)
    shard = ds / "videos-00000.h5"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01  # same size, one bit different
    shard.write_bytes(bytes(data))
    assert_one_line_error(run("search/dataset.py", "verify", str(ds), data_dir=tmp_path),
                          "videos-00000.h5", "sha256")
    assert_one_line_error(run("search/dataset.py", "convert", "--layout", "msrl", "--root", str(tmp_path),
                              "--collection", "x", "--out", str(tmp_path / "o"), data_dir=tmp_path),
                          "--visual-feature is required")
    again = run("search/dataset.py", "synth", "--preset", "tiny", "--out", str(ds), "--seed", "1",
                data_dir=tmp_path)
    assert_one_line_error(again, "already exists")


def test_run_on_a_preset_prints_reference_table(tmp_path):
    result = run("search/reference.py", "--data", "tiny", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split("  ")[0].strip(): [float(x) for x in line.split()[-6:]]
            for line in result.stdout.splitlines() if "(" in line and line.split()[-1][0].isdigit()}
    chance = rows["chance (expected)"]
    assert chance[0] == chance_recall(1, 20) and chance[4] == 180.0
    assert rows["oracle (knows the generator)"][4] == 400.0
    assert rows["meanpool (knows the generator)"][4] < rows["moment (knows the generator)"][4] - 50
    assert (tmp_path / "synthetic-tiny" / "manifest.json").is_file()


def test_run_with_an_unknown_dataset(tmp_path):
    assert_one_line_error(run("search/reference.py", "--data", str(tmp_path / "nowhere"), data_dir=tmp_path),
                          "nowhere", "neither a synthetic preset")


def test_only_an_input_error_is_one_line_and_a_bug_shows_its_traceback(capsys):
    """run_main: an InputError (a DatasetError is one) is one ``error:`` line, exit 2; a ValueError that is
    not one (a bug, e.g. numpy's shape error) propagates with its traceback instead of posing as bad input."""
    import pytest

    from search.cli import run_main
    from trainables.data.errors import DatasetError
    from trainables.errors import InputError

    def failing(error):
        def main(argv):
            raise error
        return main

    for error in (InputError("--trials is out of range: 0"), DatasetError("/data/x: missing manifest.json")):
        assert run_main(failing(error), []) == 2
        assert capsys.readouterr().err == f"error: {error}\n"
    with pytest.raises(ValueError, match="could not be broadcast"):
        run_main(failing(ValueError("operands could not be broadcast together")), [])
