"""The registered model served against a corpus index: in process, and by a real ``mlflow models serve``.

An export of a seeded MS-SL is registered (tracking/registry.py) in a SQLite store, its corpus index built
by the project's command from ``models:/...@champion``, and ``mlflow models serve`` started on 127.0.0.1
at a free port with the index attached (PRVR_INDEX); its answers over HTTP are compared with the
in-process two-stage retriever (trainables/retrieval/retriever.py) on the same index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from benchmarks.local_servers import free_port, stop, wait_http
from tests.servers import listening_hosts
from tests.test_retrieval import ci_split, make_export, queries_of
from trainables.errors import InputError
from trainables.export import load_folder
from trainables.retrieval.corpus_index import CorpusIndex
from trainables.retrieval.defaults import DEFAULT_CANDIDATES
from trainables.retrieval.retriever import Retriever

ROOT = Path(__file__).resolve().parents[1]
NAME = "prvr-served"
TOKENS = 8  # the ci preset's queries have 8 to 16 tokens; the REST parser needs one length per request


class Served:
    def __init__(self, base: Path) -> None:
        from tracking.registry import register_export

        self.base = base
        self.tracking_uri = f"sqlite:///{base / 'mlflow.db'}"
        self.export = make_export(base / "export", "mssl")
        self.registered = register_export(self.export, NAME, self.tracking_uri, "prvr", search="served", trial_id="t0")
        from search.cli import run_main
        from search.export import main

        # the project's command, in process (tests/test_retrieval.py runs it as a process)
        assert run_main(main, ["index", "--model", f"models:/{NAME}@champion", "--data", "ci", "--out",
                               str(base / "index"), "--tracking-uri", self.tracking_uri]) == 0
        self.index = base / "index"
        self.loaded = load_folder(self.export)
        self.split = ci_split(self.loaded)
        self.queries = [q[:TOKENS] for q in queries_of(self.split)[:12]]

    def pyfunc(self, index: Path | None = None, monkeypatch: pytest.MonkeyPatch | None = None):
        """The registered model loaded in this process, with ``index`` attached (PRVR_INDEX) if given."""
        import mlflow

        if monkeypatch is not None:
            monkeypatch.delenv("PRVR_INDEX", raising=False)
            if index is not None:
                monkeypatch.setenv("PRVR_INDEX", str(index))
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            return mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
        finally:
            mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    return Served(tmp_path_factory.mktemp("served"))


def test_the_index_records_the_registered_version_it_was_built_from(served):
    index = CorpusIndex.open(served.index, verify=True)
    assert index.identity.registered_name == NAME and index.identity.registered_version == served.registered.version
    assert index.identity.export_sha256 == served.loaded.identity and index.video_ids == served.split.video_ids


def test_the_pyfunc_answers_queries_against_its_attached_index_as_the_retriever_does(served, tmp_path, monkeypatch):
    model = served.pyfunc(served.index, monkeypatch)
    expected = Retriever(served.loaded, CorpusIndex.open(served.index)).search(served.queries, 7)
    answer = model.predict({"queries": [q.tolist() for q in served.queries], "top_k": 7})
    assert answer == [r.video_ids for r in expected] and all(len(r) == 7 for r in answer)
    # the default answer size, and a request that brings its own videos still works beside it
    assert [len(r) for r in model.predict({"queries": served.queries[:2]})] == [10, 10]
    frames = [served.split.video_frames(i) for i in range(5)]
    assert len(model.predict({"query_tokens": served.queries[:2], "video_frames": frames,
                              "video_ids": served.split.video_ids[:5]})[0]) == 5
    with pytest.raises(Exception, match="takes only top_k besides, not video_ids"):
        model.predict({"queries": served.queries[:1], "video_ids": ["a"]})
    # without an index attached, a queries request says how to attach one
    with pytest.raises(Exception, match="none is attached: load or serve the model with PRVR_INDEX"):
        served.pyfunc(None, monkeypatch).predict({"queries": served.queries[:1]})
    # an index of another model is refused when the model loads
    other = load_folder(make_export(tmp_path / "other", "mssl", seed=5))
    from trainables.retrieval.corpus_index import build_index, model_identity

    wrong = build_index(other, ci_split(other), tmp_path / "wrong", model_identity(other))
    with pytest.raises(InputError, match="not with this model"):
        served.pyfunc(wrong, monkeypatch)


def test_the_signature_and_metadata_say_which_features_to_send(served):
    model = served.pyfunc()
    inputs = {c.name: c for c in model.metadata.signature.inputs.inputs}
    assert list(inputs) == ["query_tokens", "video_frames", "video_ids", "top_k", "queries"]
    assert not any(c.required for c in inputs.values())
    assert str(inputs["queries"].type) == "Array(Array(Array(double)))"
    contract = model.metadata.metadata["request"]
    config = served.loaded.config
    assert f"(tokens x {config.query_dim})" in contract["queries"] and "first 30 tokens" in contract["queries"]
    assert "L2-normalised" in contract["queries"] and f"(frames x {config.video_dim})" in contract["video_frames"]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_mlflow_models_serve_answers_an_http_request_as_the_in_process_retriever(served):
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": served.tracking_uri, "PRVR_INDEX": str(served.index),
           "PRVR_CANDIDATES": "20", "OMP_NUM_THREADS": "1",
           # MLflow starts uvicorn by name: the venv's bin first, as an activated venv has it
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(served.base / "serve.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 180, process)
        assert listening_hosts(process.pid) == {"127.0.0.1"}
        status, body = _post(f"http://127.0.0.1:{port}/invocations",
                             {"inputs": {"queries": [q.tolist() for q in served.queries], "top_k": 6}})
        assert status == 200, body
        expected = Retriever(served.loaded, CorpusIndex.open(served.index), candidates=20).search(served.queries, 6)
        assert body["predictions"] == [r.video_ids for r in expected]
        assert DEFAULT_CANDIDATES != 20  # the served candidates came from PRVR_CANDIDATES
        status, body = _post(f"http://127.0.0.1:{port}/invocations",
                             {"inputs": {"queries": [np.zeros((TOKENS, 3)).tolist()]}})
        assert status == 400 and "queries[0] must be (rows >= 1) x 48" in json.dumps(body), body
    finally:
        stop(process)
        log.close()
