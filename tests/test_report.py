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

ROOT = Path(__file__).resolve().parents[1]
NAME = "s"
FIGURES = {"importances.png", "history.png", "parallel.png", "curves.png"}
CHROMIUM_TIMEOUT = 90


# ---------------------------------------------------------------- helpers


def _env(base: Path) -> dict[str, str]:
    return {**os.environ, "PRVR_DATA_DIR": str(base / "data"), "OMP_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclasses.dataclass
class Search:
    base: Path
    output: str

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
def search(tmp_path_factory: pytest.TempPathFactory) -> Search:
    """A finished search of 4 trials x 3 epochs (no scheduler: every trial finishes, so fANOVA has 4
    complete trials), with its report made by the search's end hook."""
    base = tmp_path_factory.mktemp("report")
    command = [sys.executable, str(ROOT / "search/run.py"), "--data", "tiny", "--space", "base", "--backbones", "mssl",
               "--trials", "4", "--max-epochs", "3", "--scheduler", "none", "--set", "hidden_size=16", "n_heads=2",
               "--validate-samples", "20", "--storage", str(base / "results"),
               "--tracking-uri", f"sqlite:///{base / 'm.db'}", "--name", NAME, "--confirm-top", "0"]
    done = subprocess.run(command, cwd=base, env=_env(base), capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Search(base, done.stdout + done.stderr)


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
    assert "warning: no report" not in search.output
    assert "report (figures and report.html): artifacts report/ of the search's MLflow parent run" in search.output


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
    assert page.tables["best-trials"] and page.tables["importances"]

    client, parent = parent_run(search)
    assert parent.info.run_id in done.stdout
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

    write_report(load_search(str(search.storage), NAME), tmp_path)
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
    assert set(param_importances(study).values) == {"backbone", "lr", "batch_size", "ral"}

    paths = write_report(search, tmp_path / "out")
    assert [p.name for p in paths] == ["importances.png", "history.png", "parallel.png", "curves.png", "report.html"]


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
