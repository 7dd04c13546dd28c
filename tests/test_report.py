"""The report of a search (tracking/report.py, search/report.py): a real search made once with
``python search/run.py``, its report as artifacts of the MLflow parent run, the report CLI, the
importances against Optuna's own computed here from the trials' files, the best-trials table against
``search.results.best_trials_table``, and the page rendered by headless Chromium (Debian's package)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import FINISHED_SEARCH_NAME

ROOT = Path(__file__).resolve().parents[1]
NAME = FINISHED_SEARCH_NAME
#: the figures of the module's search: 4 finished trials are too few for importances (a note instead)
FIGURES = {"history.png", "parallel.png", "slices.png", "curves.png"}
CHROMIUM_TIMEOUT = 90


# ---------------------------------------------------------------- helpers


def _env(base: Path) -> dict[str, str]:
    return {**os.environ, "PRVR_DATA_DIR": str(base / "data"), "OMP_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclasses.dataclass
class Search:
    base: Path
    output: str
    live_summaries: list[str]  # of report.html in the parent run's artifacts, read while the search ran

    @property
    def storage(self) -> Path:
        return self.base / "results"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.base / 'm.db'}"

    def trial_dirs(self) -> list[Path]:
        return sorted(p for p in (self.storage / NAME).glob("trial_*") if p.is_dir())

    def report(self, *args: str, storage: Path | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, str(ROOT / "search/report.py"), "--storage", str(storage or self.storage),
                   "--tracking-uri", self.tracking_uri, *args]
        # from the test's folder: nothing (./mlruns, a default ./report-<name>) lands in the repository
        return subprocess.run(command, cwd=self.base, env=_env(self.base), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def search(finished_search) -> Search:
    """The session's finished search (tests/conftest.py: 4 trials x 3 epochs, no scheduler: every trial
    finishes, so fANOVA has 4 complete trials; its confirmation stage is beside them, in confirmation/),
    with its report made by the search's end hook; shared with tests/test_export.py, which does not change
    what these tests read."""
    return Search(finished_search.base, finished_search.output, finished_search.live_summaries)


def results(trial: Path) -> list[dict]:
    return [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]


def parent_run(search: Search):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=search.tracking_uri)
    experiment = client.get_experiment_by_name("prvr")
    (parent,) = client.search_runs([experiment.experiment_id],
                                   f"tags.`prvr.kind` = 'parent' and tags.`prvr.search` = '{NAME}'")
    return client, parent


class Page(HTMLParser):
    """Tables (id -> rows of cell texts) and images (their attributes) of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str]] = []
        self.tags: set[str] = set()
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "table":
            self._table = values.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(values)

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None


def png_width(data: bytes) -> int:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", data[16:20])[0]


def embedded_pngs(page: Page) -> dict[str, bytes]:
    import base64

    found = {}
    for image in page.images:
        prefix = "data:image/png;base64,"
        assert image["src"].startswith(prefix), image["src"][:80]  # nothing fetched from elsewhere
        found[image["data-file"]] = base64.b64decode(image["src"][len(prefix):])
    return found


# ---------------------------------------------------------------- the report of the finished search


def test_the_search_logs_its_report_to_the_parent_run(search, tmp_path):
    client, parent = parent_run(search)
    assert parent.info.status == "FINISHED"
    names = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert names == FIGURES | {"report.html"}, search.output[-3000:]
    folder = Path(client.download_artifacts(parent.info.run_id, "report", str(tmp_path)))
    page = Page((folder / "report.html").read_text())
    assert set(embedded_pngs(page)) == FIGURES
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == embedded_pngs(page)
    assert "warning: no report" not in search.output and "warning: the live report" not in search.output
    from tracking.report import report_location

    where = report_location(search.tracking_uri, parent.info.run_id)
    assert Path(where).read_text() == (folder / "report.html").read_text()  # the printed path is the artifact
    assert (f"report (figures and report.html, artifacts report/ of the search's MLflow parent run): {where}"
            in search.output)
    assert f"report of search {NAME} (rewritten as trials end): {where}" in search.output  # a live refresh


def test_report_cli_rewrites_the_report_and_logs_it(search, tmp_path):
    out = tmp_path / "out"
    done = search.report("--name", NAME, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"report of search {NAME}: {out / 'report.html'}" in done.stdout
    assert {p.name for p in out.iterdir()} == FIGURES | {"report.html"}
    text = (out / "report.html").read_text()
    page = Page(text)
    # self-contained: PNGs inline and byte-equal to the files, no external resource of any kind
    assert embedded_pngs(page) == {name: (out / name).read_bytes() for name in FIGURES}
    assert not page.tags & {"link", "script", "iframe", "object"} and "http://" not in text and "https://" not in text
    assert page.tables["best-trials"] and "importances" not in page.tables  # 4 finished trials: a note
    assert "too few trials (4 finished; importances need ~10)" in text

    client, parent = parent_run(search)
    assert parent.info.run_id in done.stdout
    from tracking.report import report_location

    where = report_location(search.tracking_uri, parent.info.run_id)
    assert f"logged report: {where}\n" in done.stdout and Path(where).read_text() == text
    logged = Path(client.download_artifacts(parent.info.run_id, "report/report.html", str(tmp_path / "dl")))
    assert logged.read_text() == text  # the artifacts are this run's files


def cli(search: Search, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """search/report.py in this process (faster than a subprocess): (exit code, stderr)."""
    from search.cli import run_main
    from search.report import main

    capsys.readouterr()
    code = run_main(main, ["--storage", str(search.storage), "--tracking-uri", search.tracking_uri, *args])
    return code, capsys.readouterr().err


def test_report_cli_never_overwrites_silently(search, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli(search, capsys, "--name", NAME, "--out", str(out)) == (
        2, f"error: --out {out} is not empty; pass --overwrite to write the report into it\n")
    (out / "history.png").write_bytes(b"stale")
    assert cli(search, capsys, "--name", NAME, "--out", str(out), "--overwrite")[0] == 0
    assert png_width((out / "history.png").read_bytes()) > 0 and (out / "notes.txt").read_text() == "mine"
    assert {p.name for p in out.iterdir()} == FIGURES | {"report.html", "notes.txt"}


def _independent_study(search: Search):
    """An Optuna study rebuilt here from params.json and result.json: every trial finished, params are the
    config keys that vary, numbers over their observed range, trials in the order they started."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    trials = []
    for folder in search.trial_dirs():
        lines = results(folder)
        assert lines[-1]["finished"]
        started = lines[0]["timestamp"] - lines[0]["time_this_iter_s"]
        trials.append((started, json.loads((folder / "params.json").read_text()), lines[-1]))
    trials.sort(key=lambda t: t[0])
    keys = sorted({k for _, config, _ in trials for k in config})
    varying = [k for k in keys if len({json.dumps(c[k]) for _, c, _ in trials}) > 1]
    distributions = {}
    for key in varying:
        values = [c[key] for _, c, _ in trials]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            distributions[key] = IntDistribution(min(values), max(values))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            distributions[key] = FloatDistribution(min(values), max(values))
        else:
            distributions[key] = CategoricalDistribution(sorted(set(values), key=str))
    study = optuna.create_study(direction="maximize")
    for _, config, final in trials:
        study.add_trial(optuna.trial.create_trial(params={k: config[k] for k in varying}, distributions=distributions,
                                                  value=final["best_val_sumr"]))
    return study, varying


def test_importances_are_optunas_fanova_over_the_varying_settings(search, tmp_path):
    import optuna

    from tracking.report import write_report
    from tracking.search_results import load_search

    write_report(load_search(str(search.storage), NAME), tmp_path, importance_min=2)  # 4 trials: ranked anyway
    rows = Page((tmp_path / "report.html").read_text()).tables["importances"][1:]
    shown = {name: float(value) for name, value in rows}
    study, varying = _independent_study(search)
    assert varying and set(shown) == set(varying)
    assert "backbone" not in shown and "hidden_size" not in shown  # constant in this search
    expected = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert list(shown) == list(expected)  # largest first
    assert all(abs(shown[k] - expected[k]) < 1.5e-3 for k in expected), (shown, expected)
    assert math.isclose(sum(shown.values()), 1.0, abs_tol=1e-2)


def test_best_trials_table_is_the_searchs_table(search, tmp_path):
    from search.results import TrialRow, best_trials_table
    from tracking.report import write_report
    from tracking.search_results import load_search

    write_report(load_search(str(search.storage), NAME), tmp_path)
    rows = Page((tmp_path / "report.html").read_text()).tables["best-trials"]
    header, body = rows[0], rows[1:]
    assert header[:3] == ["#", "trial", "epochs"] and header[-2] == "test SumR"

    finals = {folder.name[len("trial_"):]: results(folder)[-1] for folder in search.trial_dirs()}
    order = sorted(finals, key=lambda t: (-finals[t]["best_val_sumr"], t))  # ties by trial id
    assert [r[1] for r in body] == order
    assert [r[-2] for r in body] == [f"{finals[t]['test_sumr']:.1f}" for t in order]

    # every number as the search printed it: the text table of search/results.py from the same results
    text = best_trials_table([TrialRow(t, {}, finals[t], None) for t in finals]).splitlines()
    printed = [line.split() for line in text[1:1 + len(finals)]]
    assert [r[:-1] for r in body] == printed


def test_stopped_and_unfinished_searches(search, tmp_path):
    """A trial stopped early shows '-' for test metrics and is PRUNED in the study; a search without a
    finished trial has no report; names are escaped."""
    from optuna.trial import TrialState

    from tracking.report import rebuild_study, write_report
    from tracking.search_results import load_search

    storage = tmp_path / "results"
    shutil.copytree(search.storage / NAME, storage / NAME,
                    ignore=shutil.ignore_patterns("checkpoint_*", "events.*"))
    trials = sorted((storage / NAME).glob("trial_*"))
    first = results(trials[0])[0]
    (trials[0] / "result.json").write_text(json.dumps(first) + "\n")  # stopped by the scheduler after epoch 1
    loaded = load_search(str(storage), NAME)
    states = {t.user_attrs["trial_id"]: t.state for t in rebuild_study(loaded).trials}
    stopped = trials[0].name[len("trial_"):]
    assert states.pop(stopped) == TrialState.PRUNED and set(states.values()) == {TrialState.COMPLETE}

    hostile = dataclasses.replace(loaded, name='<img src=x onerror="alert(1)">&')
    write_report(hostile, tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;" in text and "<img src=x" not in text
    row = next(r for r in Page(text).tables["best-trials"] if r[1] == stopped)
    assert row[2] == "1" and row[8:13] == ["-"] * 5 and row[7] == f"{first['best_val_sumr']:.1f}"

    for trial in trials[1:]:  # now no trial ran to its end
        (trial / "result.json").write_text(json.dumps(results(trial)[0]) + "\n")
    with pytest.raises(ValueError, match=f"search '{NAME}' has no finished trial"):
        write_report(load_search(str(storage), NAME), tmp_path / "none")
    done = search.report("--name", NAME, "--out", str(tmp_path / "cli"), storage=storage)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: search '{NAME}' has no finished trial"]
    assert not (tmp_path / "cli").exists()


def test_study_of_conditional_mixed_and_failed_trials(tmp_path):
    """Plugin settings that exist only when the plugin is on, booleans, a setting of mixed types, a
    failed trial, trials stopped early and one that never reported: each gets its state and its params."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState

    from tracking.report import infer_distributions, param_importances, rebuild_study, write_report
    from tracking.search_results import FinishedSearch, TrialRecord
    from tracking.storage import SearchStorage

    trials, expected = [], {}
    for i in range(10):
        config = {"backbone": ["mssl", "gmmformer"][i % 2], "lr": 1e-5 * 3 ** i, "batch_size": [32, 64, 128][i % 3],
                  "ral": i % 4 < 2, "seed": 0, "layers": [1, 2]}
        if config["ral"]:
            config.update({"ral.k": 1 + i % 3, "ral.w": 0.1 * i})
        config.update({3: {"mixed": 1}, 4: {"mixed": True}, 5: {"mixed": "x"}}.get(i, {}))
        epochs = 1 if i % 3 == 0 else 3
        results = [{"epoch": e, "val_sumr": 100.0 + 7 * i + e, "best_val_sumr": 100.0 + 7 * i + e,
                    "timestamp": 1000 + 10 * (9 - i) + e, "time_this_iter_s": 1.0} for e in range(1, epochs + 1)]
        state = TrialState.PRUNED
        if epochs == 3:
            results.append({"epoch": 3, "best_val_sumr": 150.0 + (i * 37) % 23, "finished": True, "test_sumr": 1.0})
            state = TrialState.COMPLETE
        if i == 7:
            results.append({"trial_error": "NonFiniteLoss", "finished": True, "best_val_sumr": float("-inf")})
            state = TrialState.FAIL
        trials.append(TrialRecord(f"t{i}", config, results, None))
        expected[f"t{i}"] = state
    trials.append(TrialRecord("waiting", {"lr": 1e-3}, [], None))  # never reported: not in the study
    search = FinishedSearch("synthetic", SearchStorage(str(tmp_path / "synthetic"), str(tmp_path), None), None, trials)

    distributions = infer_distributions([t.config for t in trials])
    assert set(distributions) == {"backbone", "lr", "batch_size", "ral", "ral.k", "ral.w", "mixed"}
    assert distributions["lr"] == FloatDistribution(1e-5, 1e-5 * 3 ** 9, log=True)
    assert distributions["batch_size"] == IntDistribution(32, 128) and distributions["ral.k"] == IntDistribution(1, 3)
    assert distributions["ral"] == CategoricalDistribution([False, True])
    assert distributions["mixed"] == CategoricalDistribution(["1", "True", "x"])  # 1 == True: kept apart as text

    study = rebuild_study(search)
    assert [t.user_attrs["trial_id"] for t in study.trials] == [f"t{i}" for i in range(9, -1, -1)]  # start order
    assert {t.user_attrs["trial_id"]: t.state for t in study.trials} == expected
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    assert by_id["t4"].params["mixed"] == "True" and "ral.k" not in by_id["t2"].params
    assert by_id["t8"].intermediate_values == {1: 157.0, 2: 158.0, 3: 159.0}
    # fANOVA over the settings every finished trial has: the plugin's own settings and "mixed" are not
    assert set(param_importances(study, minimum=2).values) == {"backbone", "lr", "batch_size", "ral"}
    assert param_importances(study).values == {}  # 5 finished trials: too few for the default

    paths = write_report(search, tmp_path / "out")
    assert [p.name for p in paths] == ["history.png", "parallel.png", "slices.png", "curves.png", "report.html"]
    paths = write_report(search, tmp_path / "out", importance_min=5)
    assert [p.name for p in paths][0] == "importances.png"


def test_report_of_a_search_in_s3(search, tmp_path, capsys, monkeypatch):
    """The same report from the search's files in S3 (the real moto server)."""
    from servers import moto_server, s3_env

    with moto_server() as s3:
        for key, value in s3_env(s3.endpoint).items():
            monkeypatch.setenv(key, value)
        bucket = s3.make_bucket("reports")
        for path in (search.storage / NAME).rglob("*"):
            if path.is_file() and path.name in ("params.json", "result.json"):
                s3.client().put_object(Bucket=bucket, Key=f"prvr/{path.relative_to(search.storage)}",
                                       Body=path.read_bytes())
        code, err = cli(search, capsys, "--name", NAME, "--storage", f"s3://{bucket}/prvr",
                        "--s3-endpoint", s3.endpoint, "--out", str(tmp_path / "s3"))
        assert code == 0, err
        missing = cli(search, capsys, "--name", "nope", "--storage", f"s3://{bucket}/prvr",
                      "--s3-endpoint", s3.endpoint, "--out", str(tmp_path / "none"))
        assert missing[0] == 2 and missing[1].strip().splitlines() == [f"error: no search 'nope' in s3://{bucket}/prvr"]
    assert cli(search, capsys, "--name", NAME, "--out", str(tmp_path / "local"))[0] == 0
    tables = [Page((tmp_path / where / "report.html").read_text()).tables for where in ("s3", "local")]
    assert tables[0] == tables[1]


def test_report_cli_bad_inputs_are_one_line(search, tmp_path, capsys):
    cases = [
        (["--name", "nope"], f"error: no search 'nope' in {search.storage}"),
        (["--name", NAME, "--experiment", "other"], f"error: no MLflow experiment 'other' at {search.tracking_uri}"),
        (["--name", NAME, "--tracking-uri", f"sqlite:///{tmp_path / 'no.db'}"],
         f"error: no MLflow store at {tmp_path / 'no.db'} (--tracking-uri sqlite:///{tmp_path / 'no.db'})"),
    ]
    for args, message in cases:
        code, err = cli(search, capsys, *args, "--out", str(tmp_path / "out"))
        assert (code, err.strip().splitlines()) == (2, [message])
    assert not (tmp_path / "out").exists() and not (tmp_path / "no.db").exists()


# ---------------------------------------------------------------- planted results: counts, importances, figures


def epoch_lines(epochs: int, score: float, start: float) -> list[dict]:
    """A trial's per-epoch reports (as trainables.trial_report.epoch_report and Tune's fields)."""
    return [{"epoch": e, "val_sumr": score - epochs + e, "best_val_sumr": score - epochs + e,
             "timestamp": start + e, "time_this_iter_s": 1.0} for e in range(1, epochs + 1)]


def planted_lines(kind: str, score: float, start: float, epochs: int = 3) -> list[dict]:
    """The result.json of a trial that ended as ``kind``: finished (max epochs or, ``patience``, early
    stopping on patience: a final report), ``stopped`` by the scheduler (epochs, no final report), ``failed``
    (its own error report), ``waiting`` (nothing)."""
    if kind == "waiting":
        return []
    if kind == "failed":
        return epoch_lines(1, score, start) + [{"trial_error": "NonFiniteLoss: loss is nan", "finished": True,
                                                 "best_val_sumr": float("-inf")}]
    if kind == "stopped":
        return epoch_lines(1, score, start)
    ran = epochs - 1 if kind == "patience" else epochs
    return epoch_lines(ran, score, start) + [{"epoch": ran, "best_val_sumr": score, "best_val_sumr_epoch": ran,
                                              "finished": True, "stopped_early": kind == "patience",
                                              "test_sumr": score - 10.0}]


def plant(storage: Path, name: str, trials: list[tuple[dict, list[dict]]]) -> Path:
    """Trial folders as Tune leaves them (params.json, result.json) in ``storage/name``."""
    for i, (config, lines) in enumerate(trials):
        folder = storage / name / f"trial_{i:05d}"
        folder.mkdir(parents=True)
        (folder / "params.json").write_text(json.dumps(config))
        if lines:
            (folder / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return storage / name


def counted(folder: Path) -> dict[str, int]:
    """How the planted trials ended, from their files (the rules of trainables/trial_report.py)."""
    counts = dict.fromkeys(("finished", "patience", "stopped", "failed", "waiting"), 0)
    for trial in sorted(folder.glob("trial_*")):
        lines = results(trial) if (trial / "result.json").exists() else []
        if not lines:
            counts["waiting"] += 1
        elif "trial_error" in lines[-1]:
            counts["failed"] += 1
        elif lines[-1].get("finished"):
            counts["finished"] += 1
            counts["patience"] += lines[-1]["stopped_early"]
        else:
            counts["stopped"] += 1
    return counts


def test_the_summary_counts_finished_stopped_and_failed_trials(tmp_path):
    from tracking.report import trial_counts, write_report
    from tracking.search_results import load_search

    kinds = ["finished", "stopped", "patience", "failed", "stopped", "finished", "waiting", "stopped", "finished",
             "patience", "failed"]
    folder = plant(tmp_path, "mix", [({"lr": 1e-4 * (i + 1), "seed": 0}, planted_lines(kind, 100.0 + i, 10.0 * i))
                                     for i, kind in enumerate(kinds)])
    c = counted(folder)
    assert c == {"finished": 5, "patience": 2, "stopped": 3, "failed": 2, "waiting": 1}  # the plant as meant
    search = load_search(str(tmp_path), "mix")
    got = trial_counts(search)
    assert (got.total, got.finished, got.patience, got.stopped, got.failed, got.running, got.waiting) == (
        len(kinds), c["finished"], c["patience"], c["stopped"], c["failed"], 0, c["waiting"])
    write_report(search, tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    summary = text.split('<span id="summary">', 1)[1].split("</span>", 1)[0]
    assert summary == (f"{len(kinds)} trials: {c['finished']} finished ({c['patience']} on patience), {c['stopped']} "
                       f"stopped early by the scheduler, {c['failed']} failed, {c['waiting']} without a finished epoch")
    # the example: no patience, nothing waiting
    plant(tmp_path, "six", [({"lr": 1e-4 * (i + 1)}, planted_lines(k, 100.0 + i, i))
                            for i, k in enumerate(["finished", "stopped"] * 3)])
    write_report(load_search(str(tmp_path), "six"), tmp_path / "six-out")
    assert ('<span id="summary">6 trials: 3 finished, 3 stopped early by the scheduler, 0 failed</span>'
            in (tmp_path / "six-out" / "report.html").read_text())


def test_importances_are_a_note_below_ten_finished_trials(tmp_path):
    """9 finished trials (and stopped ones): the "too few trials" note, no bars nor ranking; 10: the bars."""
    from tracking.report import write_report
    from tracking.search_results import load_search

    def configs(n: int) -> list[tuple[dict, list[dict]]]:
        planted = []
        for i in range(n):
            config = {"lr": 1e-5 * 2 ** i, "batch_size": [32, 64, 128][i % 3], "margin": 0.05 + 0.02 * (i % 4)}
            planted.append((config, planted_lines("finished", 100.0 + 5 * (i % 3) + i % 4, 10.0 * i)))
        return planted + [({"lr": 1e-5 * 3 ** i, "batch_size": 64, "margin": 0.1},
                            planted_lines("stopped", 90.0 + i, 500.0 + i)) for i in range(4)]

    plant(tmp_path, "nine", configs(9))
    paths = write_report(load_search(str(tmp_path), "nine"), tmp_path / "nine-out")
    text = (tmp_path / "nine-out" / "report.html").read_text()
    page = Page(text)
    assert "importances.png" not in {p.name for p in paths} and "importances" not in page.tables
    assert "importances.png" not in embedded_pngs(page)
    note = text.split('<p class="note" id="importances-note">', 1)[1].split("</p>", 1)[0]
    assert note.startswith("too few trials (9 finished; importances need ~10)")

    plant(tmp_path, "ten", configs(10))
    paths = write_report(load_search(str(tmp_path), "ten"), tmp_path / "ten-out")
    page = Page((tmp_path / "ten-out" / "report.html").read_text())
    assert "importances.png" in {p.name for p in paths} and "importances.png" in embedded_pngs(page)
    rows = page.tables["importances"][1:]
    assert {name for name, _ in rows} == {"lr", "batch_size", "margin"}
    values = [float(v) for _, v in rows]
    assert values == sorted(values, reverse=True) and math.isclose(sum(values), 1.0, abs_tol=1e-2)  # ranked
    assert 'id="importances-note"' not in (tmp_path / "ten-out" / "report.html").read_text()


def sixteen_settings(tmp_path: Path) -> tuple[Path, list[tuple[dict, list[dict]]]]:
    """14 trials that ran over 16 settings that vary (a plugin's among them, off in some trials) and
    constant ones, plus a failed and a waiting trial with values of their own (not drawn)."""
    import random

    rng = random.Random(3)
    planted = []
    for i in range(14):
        config = {"backbone": ["mssl", "gmmformer"][i % 2], "epochs": 3, "seed": 0, "hidden_size": 16,
                  "lr": 10 ** rng.uniform(-4.3, -3), "batch_size": [32, 64, 128][i % 3],
                  "hard_negative_start_epoch": i % 3, "weight_decay": rng.uniform(0, 0.05),
                  "drop": rng.uniform(0, 0.3), "input_drop": rng.uniform(0, 0.3), "margin": rng.uniform(0.05, 0.3),
                  "alpha": rng.uniform(0.2, 0.8)}
        if i % 3:
            config.update({"ral": True, "ral.k": [1, 3, 6, 10, 16][i % 5], "ral.pm_weight": 10 ** rng.uniform(-4, -1.4),
                           "ral.da_weight": 10 ** rng.uniform(-5, -2),
                           "ral.da_variant": ["as_released", "clean"][i % 2],
                           "ral.unit": ["support_set", "per_query"][i % 2 if i < 7 else 1 - i % 2],
                           "ral.gate_temperature": rng.uniform(0.25, 4.0)})
        kind = "stopped" if i % 4 == 0 else "finished"
        planted.append((config, planted_lines(kind, 100.0 + (i * 7) % 23 + 0.1 * i, 10.0 * i)))
    planted.append(({**planted[1][0], "lr": 0.5, "only_failed": 1}, planted_lines("failed", 0.0, 900.0)))
    planted.append(({**planted[2][0], "only_waiting": 2}, []))
    return plant(tmp_path, "wide", planted), planted


def test_parallel_coordinates_and_slices_cover_only_the_varied_settings(tmp_path):
    from matplotlib.colors import to_hex

    from tracking.report import (
        HIGHLIGHT_TOP,
        LABEL_WIDTH,
        abbreviate,
        parallel_figure,
        ran_trials,
        slices_figure,
        varied_settings,
        write_report,
    )
    from tracking.search_results import load_search

    folder, planted = sixteen_settings(tmp_path)
    # independently: the trials that ran (not failed, an epoch), and the keys whose value or presence differs
    ran = [(config, lines) for config, lines in planted if lines and "trial_error" not in lines[-1]]
    keys = {k for config, _ in ran for k in config}
    varied = {k for k in keys if len({json.dumps(config.get(k, "<none>")) for config, _ in ran}) > 1}
    assert len(varied) == 16 and not varied & {"epochs", "seed", "hidden_size", "ral.csa", "only_failed"}

    search = load_search(str(tmp_path), "wide")
    trials = ran_trials(search)
    axes = varied_settings(trials)
    assert [a.name for a in axes] == ["backbone", *sorted(varied - {"backbone"})]
    labels = abbreviate([a.name for a in axes])
    assert len(set(labels)) == len(labels) and max(map(len, labels)) <= LABEL_WIDTH
    assert labels[[a.name for a in axes].index("hard_negative_start_epoch")] == "har_neg_sta_epo"

    write_report(search, tmp_path / "out")
    text = (tmp_path / "out" / "report.html").read_text()
    page = Page(text)
    assert {"parallel.png", "slices.png"} <= set(embedded_pngs(page))
    assert page.tables["parallel-axes"][1:] == [[label, a.name] for label, a in zip(labels, axes)]

    # the parallel coordinates: one axis per varied setting and the score, readable labels, the top 5 in colour
    fig = parallel_figure(trials, axes, labels)
    ax = fig.axes[0]
    ticks = ax.get_xticklabels()
    assert [t.get_text() for t in ticks] == [*labels, "best val SumR"] and {t.get_rotation() for t in ticks} == {40}
    fig.canvas.draw()
    boxes = [t.get_window_extent() for t in ticks]
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))  # no label runs into its neighbour
    assert all(fig.bbox.contains(b.x0, b.y0) and fig.bbox.contains(b.x1, b.y1) for b in boxes)  # none cut off
    best_first = sorted(ran, key=lambda t: -next(line["best_val_sumr"] for line in reversed(t[1])
                                                 if "best_val_sumr" in line))
    coloured = [line for line in ax.get_lines() if line.get_linewidth() == 2.0]
    grey = [line for line in ax.get_lines() if to_hex(line.get_color()) == "#b0b0b0"]
    assert len(coloured) == HIGHLIGHT_TOP and len(grey) == len(ran) - HIGHLIGHT_TOP
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [entry.split(" ")[1] for entry in legend] == [
        next(t.trial_id for t in trials if t.config == config) for config, _ in best_first[:HIGHLIGHT_TOP]]

    # the slices: one panel per varied setting, titled with its full name, a point per trial that has it
    fig = slices_figure(trials, axes)
    panels = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title().split(" (")[0] for a in panels] == [a.name for a in axes]
    for panel, axis in zip(panels, axes):
        points = sum(len(c.get_offsets()) for c in panel.collections)
        categorical = axis.name in ("backbone", "ral", "ral.da_variant", "ral.unit")
        assert points == (len(ran) if categorical else sum(axis.name in config for config, _ in ran)), axis.name

    # 2 settings: nothing abbreviated, no axes table; 1 trial that ran: a note instead of the figure
    plant(tmp_path, "narrow", [({"lr": 1e-4 * (i + 1), "margin": 0.1 * i}, planted_lines("finished", 100.0 + i, i))
                               for i in range(3)])
    write_report(load_search(str(tmp_path), "narrow"), tmp_path / "narrow-out")
    assert "parallel-axes" not in Page((tmp_path / "narrow-out" / "report.html").read_text()).tables
    plant(tmp_path, "single", [({"lr": 1e-4}, planted_lines("finished", 100.0, 0.0))])
    write_report(load_search(str(tmp_path), "single"), tmp_path / "single-out")
    single = (tmp_path / "single-out" / "report.html").read_text()
    assert "no parallel coordinates" in single and "no slice plots" in single


# ---------------------------------------------------------------- the live report


def test_live_report_refreshes_the_artifact_throttled_and_warns_once(tmp_path, capsys, monkeypatch):
    """search/live_report.py against a real MLflow SQLite store and planted staging folders: a burst of
    trial ends makes one more refresh (of the newest view), trials not ended count as running, the printed
    path is the artifact, an error is one warning line, and the callback pickles without its thread."""
    import pickle
    import time

    from ray.tune.experiment import Trial

    from search.live_report import LiveReport, Seen, snapshot
    from tracking.mlflow_runs import Tracking, start_parent
    from tracking.report import report_location

    monkeypatch.chdir(tmp_path)  # the store's default artifact root, ./mlruns, lands here
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracking = start_parent(uri, "prvr", "live", "base", params={}, tags={}, resume=False)
    staging = tmp_path / "staging"
    plant(staging, "live", [({"lr": 1e-4 * (i + 1)}, planted_lines(kind, 100.0 + i, i))
                            for i, kind in enumerate(["finished", "stopped", "finished"])])
    folders = sorted(str(f) for f in (staging / "live").glob("trial_*"))
    configs = [json.loads((Path(f) / "params.json").read_text()) for f in folders]

    def seen(*statuses: str) -> list[Seen]:
        return [Seen(f"t{i}", status, configs[i], folders[i], None) for i, status in enumerate(statuses)]

    def logged_summary() -> str:
        client = tracking.client()
        page = Path(client.download_artifacts(tracking.parent_run_id, "report/report.html", str(tmp_path / "dl")))
        return page.read_text().split('<span id="summary">', 1)[1].split("</span>", 1)[0]

    live = LiveReport(tracking, str(tmp_path / "results" / "live"), min_interval_s=3.0)
    assert live.refresh(seen(Trial.TERMINATED, Trial.RUNNING, Trial.RUNNING)[1:2]) is False  # none finished yet
    began = time.monotonic()
    live.request(seen(Trial.TERMINATED, Trial.RUNNING, Trial.RUNNING))  # t2's final report is in: finished
    live.wait()
    assert live.refreshes == 1
    assert logged_summary() == "3 trials: 2 finished, 0 stopped early by the scheduler, 0 failed, 1 running"
    for statuses in ([Trial.TERMINATED, Trial.TERMINATED, Trial.RUNNING], [Trial.TERMINATED] * 2 + [Trial.ERROR],
                     [Trial.TERMINATED] * 3):  # a burst: one refresh, of the last
        live.request(seen(*statuses))
    live.wait()
    assert live.refreshes == 2 and time.monotonic() - began >= 3.0
    assert logged_summary() == "3 trials: 2 finished, 1 stopped early by the scheduler, 0 failed"
    out = capsys.readouterr()
    where = report_location(uri, tracking.parent_run_id)
    assert out.out.splitlines() == [f"report of search live (rewritten as trials end): {where}"]  # printed once
    assert Path(where).is_file() and Path(where).is_relative_to(tmp_path) and "warning" not in out.err

    # a trial Tune ended on an error is failed; the ended trial's status is the callback's, not Tune's yet
    trial = Trial("trainable", config={"lr": 1.0}, stub=True, trial_id="x1")
    (entry,) = snapshot([trial], trial, Trial.ERROR)
    assert (entry.trial_id, entry.status, entry.folder, entry.config) == ("x1", Trial.ERROR, None, {"lr": 1.0})
    assert snapshot([trial], None, None)[0].status == Trial.PENDING
    failed = seen(Trial.TERMINATED, Trial.TERMINATED, Trial.ERROR)
    failed[1] = dataclasses.replace(failed[1], error="RayActorError: the actor died")
    live.refresh(failed)
    assert logged_summary() == "3 trials: 2 finished, 0 stopped early by the scheduler, 1 failed"

    # pickled by Tune for a restore: no thread nor lock; the copy refreshes alike
    copy = pickle.loads(pickle.dumps(live))
    assert copy.refreshes == 0 and copy.tracking == tracking and copy.refresh(seen(*[Trial.TERMINATED] * 3))

    broken = LiveReport(Tracking(uri, tracking.experiment_id, "no-such-run", "live", "base"), "x", min_interval_s=0.0)
    for _ in range(3):
        broken.request(seen(Trial.TERMINATED, Trial.RUNNING, Trial.RUNNING))
        broken.wait()
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]  # not MLflow's progress
    assert len(err) == 1 and err[0].startswith("warning: the live report of search live was not refreshed (the "
                                               "search goes on): "), err


# the report's place on a tracking server (artifacts proxied to S3, the real moto and mlflow servers: the MLflow
# UI's page of report/report.html in the parent run, which the server serves):
# tests/test_remote_search.py::test_search_on_s3_and_a_tracking_server_survives_a_killed_driver, on its search's report


def test_a_search_rewrites_its_report_before_it_ends(search, tmp_path):
    """The module's search (4 trials, 2 at a time, then its confirmation stage): report.html is in the parent
    run's artifacts, and changes, while the search still runs; its end replaces it with the final one. The
    space it records and samples has hard_negative_start_epoch below --max-epochs."""
    output = search.output
    trials = len(search.trial_dirs())
    final_summary = f"{trials} trials: {trials} finished, 0 stopped early by the scheduler, 0 failed"
    # a live one first (fewer trials finished); later, maybe, the final one (the search's end writes it before exiting)
    seen_running = search.live_summaries
    assert seen_running, output[-3000:]
    finished = [int(s.split(" finished")[0].rsplit(" ", 1)[1]) for s in seen_running]
    assert finished[0] < trials and finished == sorted(finished), seen_running
    assert all(s == final_summary for s, n in zip(seen_running, finished) if n == trials), seen_running

    from tracking.report import report_location

    client, parent = parent_run(search)
    where = report_location(search.tracking_uri, parent.info.run_id)
    assert f"report of search {NAME} (rewritten as trials end): {where}" in output
    final = Path(where).read_text()
    assert f'<span id="summary">{final_summary}</span>' in final
    assert "warning: the live report" not in output and "warning: no report" not in output

    space = json.loads(Path(client.download_artifacts(parent.info.run_id, "space.json", str(tmp_path / "dl")))
                       .read_text())
    entry = next(e for e in space["training"]["entries"] if e["name"] == "hard_negative_start_epoch")
    assert (entry["low"], entry["high"], entry["below"]) == (0, 2, "epochs")  # the search's --max-epochs 3
    for params in (search.storage / NAME).glob("trial_*/params.json"):
        assert json.loads(params.read_text())["hard_negative_start_epoch"] in (0, 1, 2)


# ---------------------------------------------------------------- headless Chromium


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (a failed install fails the test)."""
    found = shutil.which("chromium")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:  # stale package lists: update once and retry
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    found = shutil.which("chromium")
    if done.returncode != 0 or found is None:
        pytest.fail(f"apt-get install chromium failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return found


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium in its own process group, killed whole afterwards (no renderer left behind)."""
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
               "--disable-extensions", "--disable-background-networking", "--disable-crash-reporter",
               "--disable-breakpad", f"--user-data-dir={profile}", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "HOME": str(profile)})
    try:
        out, err = process.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        out, err = "", f"chromium did not finish in {CHROMIUM_TIMEOUT}s"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-natural-width", String(img.naturalWidth));
  document.body.setAttribute("data-probed", String(document.images.length));
});
</script>
</body>"""


def test_chromium_renders_the_table_and_the_images(search, chromium, tmp_path):
    from matplotlib.image import imread

    from tracking.report import write_report
    from tracking.search_results import load_search

    write_report(load_search(str(search.storage), NAME), tmp_path / "report")
    page = tmp_path / "report" / "report.html"
    probe = tmp_path / "report" / "probe.html"  # a copy that records each image's decoded width
    probe.write_text(page.read_text().replace("</body>", PROBE))

    dumped = run_chromium(chromium, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom",
                          probe.as_uri())
    assert dumped.returncode == 0 and "data-probed" in dumped.stdout, dumped.stderr[-2000:]
    dom = Page(dumped.stdout)
    pngs = {name: (tmp_path / "report" / name).read_bytes() for name in FIGURES}
    widths = {image["data-file"]: int(image["data-natural-width"]) for image in dom.images}
    assert widths == {name: png_width(data) for name, data in pngs.items()} and min(widths.values()) > 0
    table = dom.tables["best-trials"]
    assert len(table) == 1 + len(search.trial_dirs()) and table[0][1] == "trial"

    shot = tmp_path / "shot.png"
    taken = run_chromium(chromium, tmp_path / "profile", "--window-size=1200,2400", "--hide-scrollbars",
                         f"--screenshot={shot}", page.as_uri())
    assert taken.returncode == 0 and shot.is_file() and shot.stat().st_size > 0, taken.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1200) and pixels.std() > 0.01  # something was drawn
