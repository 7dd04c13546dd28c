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


# ------------------------------------------------------------------------------ --help and console scripts

#: each console script (pyproject.toml [project.scripts]) and the file it runs as ``python search/<x>.py``
SCRIPTS = {"prvr-search": "run", "prvr-ablate": "ablate", "prvr-export": "export", "prvr-report": "report",
           "prvr-dataset": "dataset"}
HEAVY = ("torch", "ray", "mlflow")


def _help(*command: str) -> str:
    """The ``--help`` of an entry point, wide enough that no option's text is wrapped into another's."""
    result = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return result.stdout


def _option_blocks(text: str) -> dict[str, str]:
    """{an option's first flag: its help text} of a ``--help`` output."""
    import re

    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^  (-[-\w]+|[a-z][-\w]*)\b", line)
        if match:
            current = match.group(1)
            blocks[current] = line
        elif current is not None and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


def test_every_console_script_is_installed_and_runs_its_entry_point():
    from importlib.metadata import entry_points

    installed = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("prvr-")}
    assert installed == {name: f"search.{module}:entry" for name, module in SCRIPTS.items()}
    for name in SCRIPTS:
        assert (Path(sys.executable).parent / name).is_file(), name
    out = _help(str(Path(sys.executable).parent / "prvr-search"))
    assert out.startswith("usage: prvr-search ")
    for group in ("data", "space", "search", "resources", "storage/tracking", "cluster"):
        assert f"\n{group}:\n" in out, group
    # an error from the console script is the same one line and exit code as from python search/run.py
    bad = subprocess.run([str(Path(sys.executable).parent / "prvr-search"), "--trials", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert_one_line_error(bad, "--trials is out of range: 0")


def test_help_imports_neither_torch_nor_ray_nor_mlflow():
    """``--help`` of each entry point, as a file (``python search/x.py``) and as the console script's module,
    in a fresh interpreter: which heavy packages it imported."""
    probe = ("import runpy, sys\n"
             "how, target, *args = sys.argv[1:]\n"
             "sys.argv = [target, *args, '--help']\n"
             "try:\n"
             "    if how == 'file':\n"
             "        runpy.run_path(target, run_name='__main__')\n"
             "    else:\n"
             "        import importlib; importlib.import_module(target).entry()\n"
             "except SystemExit as exc:\n"
             "    assert exc.code == 0, exc.code\n"
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    cases = [("file", f"search/{m}.py") for m in SCRIPTS.values()]
    cases += [("module", f"search.{m}") for m in SCRIPTS.values()]
    cases += [("file", "search/dataset.py", command) for command in ("synth", "convert", "info")]
    for how, target, *args in cases:
        result = subprocess.run([sys.executable, "-c", probe, how, target, *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout, result.stdout
        assert result.stdout.splitlines()[-1] == "[]", (target, args, result.stdout.splitlines()[-1])


def test_help_shows_each_default_once_and_keeps_the_examples_on_their_own_lines():
    import importlib

    commands = [[f"search/{m}.py"] for m in SCRIPTS.values()]
    commands += [["search/dataset.py", c] for c in ("synth", "convert", "export-msrl", "verify", "info", "upload")]
    for command in commands:
        out = _help(sys.executable, *command)
        blocks = _option_blocks(out)
        assert blocks, out
        for option, text in blocks.items():
            assert text.count("default:") <= 1, (command, option, text)
        if len(command) == 1:  # the examples of the module's docstring, one a line as written
            doc = importlib.import_module(f"search.{Path(command[0]).stem}").__doc__
            examples = [line.strip() for line in doc.splitlines() if line.strip().startswith("python search/")]
            assert examples and all(f"\n    {e}\n" in out or f"\n    {e} " in out for e in examples), command
    run = _option_blocks(_help(sys.executable, "search/run.py"))
    assert run["--trials"].endswith("number of trials (default: 6)")  # a default the text does not say is added
    assert run["--sampler"].count("(default: the best measured") == 1  # one the text says is not repeated


def test_every_option_has_help():
    import argparse
    import importlib

    def parsers(parser: argparse.ArgumentParser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                assert helped == set(action.choices), (parser.prog, set(action.choices) - helped)
                for sub in action.choices.values():
                    yield from parsers(sub)

    for module in SCRIPTS.values():
        for parser in parsers(importlib.import_module(f"search.{module}")._parser()):
            for action in parser._actions:
                if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                    continue
                assert action.help and action.help != argparse.SUPPRESS, (parser.prog, action.option_strings
                                                                         or action.dest)
