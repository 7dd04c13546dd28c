"""Shared test fixtures: small hand-made datasets in the store format."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.data.writer import DatasetWriter

ROOT = Path(__file__).resolve().parents[1]

# The suite never joins a Ray cluster it did not start (another developer's on this machine, a RAY_ADDRESS
# in the shell): every search and ablation it runs, in this process or in a child process (whose environment
# is built from this one), runs on a private local Ray unless its test gives --ray-address, or a test unsets
# this for its own child process (search/ray_target.py).
os.environ["PRVR_RAY_LOCAL"] = "1"
os.environ.pop("RAY_ADDRESS", None)


def write_dataset(
    out: Path,
    *,
    num_videos: int = 7,
    queries_per_video: int = 2,
    video_dim: int = 8,
    query_dim: int = 4,
    dtype: str = "float32",
    sentence_dim: int | None = None,
    videos_per_shard: int = 3,
    queries_per_shard: int = 4,
    seed: int = 0,
    max_frames: int = 40,
) -> tuple[Path, dict, dict]:
    """A random dataset; returns (folder, {video: frames}, {query: (video, tokens, sentence)}).

    Split ``train`` holds videos 0..4 (queries listed in reverse), ``test`` videos 4..end, so video 4's
    queries belong to both.
    """
    rng = np.random.default_rng(seed)
    videos = {f"vid{i}": rng.normal(size=(int(rng.integers(1, max_frames)), video_dim)).astype(dtype)
              for i in range(num_videos)}
    queries = {}
    for i in range(num_videos):
        for k in range(queries_per_video):
            sentence = None if sentence_dim is None else rng.normal(size=sentence_dim).astype(dtype)
            tokens = rng.normal(size=(int(rng.integers(1, 40)), query_dim)).astype(dtype)
            queries[f"vid{i}#enc#{k}"] = (f"vid{i}", tokens, sentence)
    with DatasetWriter(out, name="handmade", video_dim=video_dim, query_dim=query_dim, dtype=dtype,
                       videos_per_shard=videos_per_shard, queries_per_shard=queries_per_shard,
                       sentence_dim=sentence_dim) as writer:
        for vid, frames in videos.items():
            writer.add_video(vid, frames)
        for qid, (vid, tokens, sentence) in queries.items():
            writer.add_query(qid, vid, tokens, text=f"text of {qid}", sentence=sentence)
        writer.set_split("train", [q for q, v in queries.items() if int(v[0][3:]) <= 4][::-1])
        writer.set_split("test", [q for q, v in queries.items() if int(v[0][3:]) >= 4])
    return out, videos, queries


@pytest.fixture(autouse=True, scope="session")
def private_dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads or writes the user's dataset cache (~/.cache/prvr)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PRVR_DATA_DIR", str(tmp_path_factory.mktemp("prvr-data")))
    yield
    mp.undo()


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., tuple[Path, dict, dict]]:
    counter = iter(range(1000))

    def make(**kwargs):
        return write_dataset(tmp_path / f"ds{next(counter)}", **kwargs)

    return make


def assert_chunked_evaluation_matches_full(model, split) -> set[str]:
    """``evaluate`` (videos in batches of 5, queries in chunks of 7) gives, for every branch, the
    metrics of one ``score()`` call on all queries and videos; returns the branches."""
    from trainables.evaluation.evaluate import encode_videos, evaluate, evaluate_ranks
    from trainables.evaluation.metrics import ground_truth_ranks, retrieval_metrics

    chunked = evaluate(model, split, query_chunk=7, video_batch=5)
    with torch.no_grad():
        videos = encode_videos(model, split, torch.device("cpu"), batch_size=1000)
        tokens = [torch.from_numpy(split.query_tokens(i)) for i in range(split.num_queries)]
        text = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(t)) for t in tokens], batch_first=True)
        full = model.score(model.encode_queries(text, mask), videos)
    assert set(chunked) == set(full)
    ranks = evaluate_ranks(model, split, query_chunk=7, video_batch=5)
    for branch in chunked:
        expected = retrieval_metrics(full[branch].numpy(), split.query_video)
        for key, value in expected.items():
            assert chunked[branch][key] == pytest.approx(value), (branch, key)
        # per-query ranks come in the split's query order (what paired per-query statistics rely on)
        assert np.array_equal(ranks[branch], ground_truth_ranks(full[branch].numpy(), split.query_video))
    return set(chunked)


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the module's tests."""
    from servers import moto_server

    with moto_server() as server:
        yield server


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def restored_environ() -> Iterator[None]:
    """This process's environment as it was before the test: entry points and ``ray_session`` set Ray's
    variables in it for the processes they start."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def run_cli_without_ray(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, restored_environ: None
                        ) -> Callable[..., CliResult]:
    """Runs an entry point's ``main`` in this process, as its ``__main__`` does (``search.cli.run_main``), for
    inputs it must refuse before any Ray session: ``ray.init`` raises ``AssertionError``, which no entry
    point turns into a one-line error, so a refusal that comes only after Ray started fails the test. The
    working folder and the environment are restored afterwards."""
    import ray

    from search.cli import run_main

    def refuse(*args, **kwargs):
        raise AssertionError("a Ray session was started before the input was refused")

    monkeypatch.setattr(ray, "init", refuse)

    def run(main: Callable[[list[str] | None], int], *argv: str, cwd: Path) -> CliResult:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = run_main(main, list(argv))
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


#: the search of ``finished_search``: 4 trials x 3 epochs, no scheduler (every trial finishes: fANOVA has 4
#: complete trials), and a confirmation stage retraining the best config with 1 more seed
FINISHED_SEARCH_NAME = "s"
FINISHED_SEARCH_TRIALS = 4


@dataclass
class FinishedSearchRun:
    base: Path  # the working folder: results/, m.db, mlruns/, data/
    output: str  # the search's stdout + stderr
    live_summaries: list[str]  # the summaries of its report.html in the parent run's artifacts, read while it ran


@pytest.fixture(scope="session")
def finished_search(tmp_path_factory: pytest.TempPathFactory) -> FinishedSearchRun:
    """A finished search made once with ``python search/run.py`` from its own folder (MLflow's artifacts
    land there), shared by tests/test_export.py and tests/test_report.py (neither changes what the other
    reads): 4 trials x 3 epochs with no scheduler, its report made by the search's end hook, and a
    confirmation stage that retrains the best trial with 1 more seed. While it runs, the report the search
    rewrites as trials end (``search/live_report.py``) is read in ./mlruns."""
    import time

    base = tmp_path_factory.mktemp("finished-search")
    command = [sys.executable, str(ROOT / "search/run.py"), "--data", "tiny", "--space", "base", "--backbones",
               "mssl", "--trials", str(FINISHED_SEARCH_TRIALS), "--max-epochs", "3", "--scheduler", "none", "--set",
               "hidden_size=16", "n_heads=2", "--validate-samples", "20", "--storage", str(base / "results"),
               "--tracking-uri", f"sqlite:///{base / 'm.db'}", "--name", FINISHED_SEARCH_NAME, "--confirm-top", "1",
               "--confirm-seeds", "1"]
    env = {**os.environ, "PRVR_DATA_DIR": str(base / "data"), "OMP_NUM_THREADS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    log = base / "search.log"
    live: list[str] = []
    with log.open("w") as sink:
        process = subprocess.Popen(command, cwd=base, env=env, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 420
        try:
            while process.poll() is None and time.monotonic() < deadline:
                for page in base.glob("mlruns/*/*/artifacts/report/report.html"):
                    try:
                        text = page.read_text()
                    except OSError:
                        continue
                    if process.poll() is None and '<span id="summary">' in text:  # read while it still runs
                        summary = text.split('<span id="summary">', 1)[1].split("</span>", 1)[0]
                        if summary not in live:
                            live.append(summary)
                time.sleep(0.3)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    output = log.read_text()
    assert process.returncode == 0, output[-6000:]
    return FinishedSearchRun(base, output, live)


#: the second process of ``watched_search``: a fresh Python that loads the study from the storage every half second
#: (as optuna-dashboard opens it: no table creation) and prints what it sees, until the stop file exists; it opens
#: the file with Optuna once the search has created the study (else Optuna would create the tables itself)
WATCHER = r"""
import json, sqlite3, sys, time
from pathlib import Path
import optuna
from optuna.storages import RDBStorage
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, name, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
path = url[len("sqlite:///"):]
while not stop.exists():
    trials = None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            assert db.execute("SELECT 1 FROM studies WHERE study_name = ?", (name,)).fetchall()
        storage = RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True)
        study = optuna.load_study(study_name=name, storage=storage)
        trials = [[t.user_attrs.get("trial_id"), t.state.name, len(t.intermediate_values)]
                  for t in study.get_trials(deepcopy=False)]
    except Exception as exc:  # before the search created the file, its tables or the study
        trials = None
    print(json.dumps({"time": time.time(), "trials": trials}), flush=True)
    time.sleep(0.5)
"""
#: the search of ``watched_search``
WATCHED_SEARCH_NAME = "s"
WATCHED_SEARCH_TRIALS = 8


@dataclass
class WatchedSearchRun:
    base: Path  # the search's working folder (results/, mlflow.db, optuna.db, mlruns/, data/)
    returncode: int
    stdout: str
    stderr: str
    seen: list[dict]  # the watcher's reads: {"time": time.time(), "trials": [[trial id, state, epochs], ...] or None}
    ended: float  # when the driver was seen to have exited (time.time())


@pytest.fixture(scope="session")
def watched_search(tmp_path_factory: pytest.TempPathFactory) -> WatchedSearchRun:
    """A real search made once with ``python search/run.py`` (tests/test_search.py's: 8 trials of the full
    space over mssl and gmmformer x 3 epochs, ASHA stopping some), while a second process reads its Optuna
    study (tests/test_optuna_dashboard.py); shared by those two modules, neither of which changes it."""
    import json
    import signal
    import time

    from test_search import TINY_MODEL, _command, _env

    base = tmp_path_factory.mktemp("watched-search")
    name = WATCHED_SEARCH_NAME
    url, stop_file = f"sqlite:///{base / 'optuna.db'}", base / "stop-watching"
    args = ["--space", "full", "--backbones", "mssl", "gmmformer", "--trials", str(WATCHED_SEARCH_TRIALS),
            "--max-epochs", "3", "--name", name, *TINY_MODEL]
    with open(base / "driver.out", "w") as out_file, open(base / "driver.err", "w") as err_file:
        driver = subprocess.Popen(_command(base, *args), cwd=base, env=_env(base), stdout=out_file, stderr=err_file,
                                  start_new_session=True)
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, url, name, str(stop_file)], cwd=base, env=_env(base),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        returncode = driver.wait(timeout=500)
        ended = time.time()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=60)
        stop_file.touch()
        out, err = watcher.communicate(timeout=60)
    assert watcher.returncode == 0, err[-2000:]
    return WatchedSearchRun(base, returncode, (base / "driver.out").read_text(), (base / "driver.err").read_text(),
                            [json.loads(line) for line in out.splitlines()], ended)
