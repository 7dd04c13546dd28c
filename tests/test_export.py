"""Export of a search's trial (search/export.py, trainables/export.py, tracking/registry.py): a real search
made once with ``python search/run.py``, exported by the CLI into a folder and registered in MLflow; the
folder loader, the ``models:/<name>@champion`` loader and the registered pyfunc model all reproduce the
trial's test metrics exactly on the same test split (and the pyfunc's ranked ids put each query's video at
the rank the evaluator computed); bad inputs are one ``error:`` line before anything is written."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
NAME = "s"
REGISTERED = f"prvr-{NAME}"


def _env(base: Path) -> dict[str, str]:
    return {**os.environ, "PRVR_DATA_DIR": str(base / "data"), "OMP_NUM_THREADS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


@dataclasses.dataclass
class Search:
    base: Path

    @property
    def storage(self) -> Path:
        return self.base / "results"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.base / 'm.db'}"

    @property
    def dataset(self) -> Path:
        return self.base / "data" / "synthetic-tiny"

    def final(self, trial_id: str) -> dict:
        """The trial's final report (its last line of result.json)."""
        lines = (self.storage / NAME / f"trial_{trial_id}" / "result.json").read_text().splitlines()
        return json.loads(lines[-1])

    def trial_ids(self) -> list[str]:
        return sorted(p.name[len("trial_"):] for p in (self.storage / NAME).glob("trial_*"))

    def export(self, *args: str) -> subprocess.CompletedProcess:
        """search/export.py in a subprocess, from the search's folder."""
        command = [sys.executable, str(ROOT / "search/export.py"), "--name", NAME, "--storage", str(self.storage),
                   "--tracking-uri", self.tracking_uri, *args]
        return subprocess.run(command, cwd=self.base, env=_env(self.base), capture_output=True, text=True,
                              timeout=120)


@dataclasses.dataclass
class Exported:
    trial_id: str
    folder: Path
    version: str
    stdout: str


@pytest.fixture(scope="module")
def search(tmp_path_factory: pytest.TempPathFactory) -> Search:
    """A finished search of 2 trials x 3 epochs (no scheduler: both finish), run from its own folder so
    MLflow's artifacts land there."""
    base = tmp_path_factory.mktemp("export")
    command = [sys.executable, str(ROOT / "search/run.py"), "--data", "tiny", "--space", "base", "--backbones",
               "mssl", "--trials", "2", "--max-epochs", "3", "--scheduler", "none", "--set", "hidden_size=16",
               "n_heads=2", "--validate-samples", "20", "--storage", str(base / "results"),
               "--tracking-uri", f"sqlite:///{base / 'm.db'}", "--name", NAME, "--confirm-top", "0"]
    done = subprocess.run(command, cwd=base, env=_env(base), capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Search(base)


def _best(search: Search) -> str:
    """The best trial by an independent reading of the final reports: finished, highest best val SumR."""
    finals = {t: search.final(t) for t in search.trial_ids()}
    finished = {t: f for t, f in finals.items() if f.get("finished") and "trial_error" not in f}
    assert len(finished) == 2, finals
    return max(finished, key=lambda t: finished[t]["best_val_sumr"])


@pytest.fixture(scope="module")
def first(search: Search) -> Exported:
    """The CLI's export of the best trial (default --trial), registered as version 1 of prvr-s."""
    best = _best(search)
    out = search.base / "exports" / "best"
    done = search.export("--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Exported(best, out, "1", done.stdout)


@pytest.fixture(scope="module")
def second(search: Search, first: Exported) -> Exported:
    """The other trial, exported after the first (so it is version 2 of the same registered model)."""
    other = next(t for t in search.trial_ids() if t != first.trial_id)
    done = search.export("--trial", other)  # default --out: exports/<name>-<trial> under the working folder
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Exported(other, search.base / "exports" / f"{NAME}-{other}", "2", done.stdout)


@pytest.fixture(scope="module")
def test_split(search: Search):
    from trainables.training.loop import load_data

    return load_data(search.dataset)


def _client(search: Search):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=search.tracking_uri)


def _checkpoint(search: Search, trial_id: str) -> dict:
    from trainables.training.checkpoint import load_checkpoint

    folders = sorted((search.storage / NAME / f"trial_{trial_id}").glob("checkpoint_*"))
    return load_checkpoint(folders[-1])


def _test_metrics(model, config, split) -> dict[str, float]:
    """The fused test metrics of ``model`` as the trial computed them (one thread, its batch sizes)."""
    from trainables.evaluation.evaluate import evaluate

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate(model, split, "cpu", video_batch=config.eval_video_batch,
                        query_chunk=config.eval_query_chunk)["fused"]
    finally:
        torch.set_num_threads(threads)


def _assert_reproduces(search: Search, trial_id: str, model, config, split) -> None:
    final = search.final(trial_id)
    metrics = _test_metrics(model, config, split)
    assert not model.training
    # exact: the same weights, inputs, batch sizes and thread count give bit-identical scores
    assert metrics["SumR"] == final["test_sumr"]
    assert [metrics[c] for c in ("R@1", "R@5", "R@10", "R@100")] == \
        [final[k] for k in ("test_r1", "test_r5", "test_r10", "test_r100")]


def _tree(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: (sha256, mtime_ns)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _versions(search: Search) -> list[str]:
    client = _client(search)
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{REGISTERED}'"))


# ---------------------------------------------------------------- the folder


def test_cli_prints_folder_version_and_uri(first):
    assert first.stdout.splitlines()[0].startswith(f"exported trial {first.trial_id} of search {NAME} ")
    assert first.stdout.splitlines()[0].endswith(f" to {first.folder}")
    assert f"registered {REGISTERED} version 1 (alias champion)" in first.stdout
    assert f"models:/{REGISTERED}@champion" in first.stdout


def test_folder_holds_config_best_weights_metrics_provenance(search, first):
    from safetensors.torch import load_file

    from trainables.data.manifest import read_manifest
    from trainables.export import EXPORT_FILES
    from trainables.training.config import TrainConfig

    assert sorted(p.name for p in first.folder.iterdir()) == sorted(EXPORT_FILES)
    assert not list(first.folder.parent.glob(".*"))  # no staging folder left behind
    state = _checkpoint(search, first.trial_id)
    manifest = read_manifest(search.dataset)
    # the config rebuilds the model on its own: the checkpoint's resolved config with the dims pinned
    config = yaml.safe_load((first.folder / "config.yaml").read_text())
    assert config == {**state["config"], "video_dim": manifest.video_dim, "query_dim": manifest.query_dim}
    assert TrainConfig.from_dict(config).to_dict() == config
    # the weights: a safetensors file (8-byte header length, JSON header), the trial's best weights
    blob = (first.folder / "weights.safetensors").read_bytes()
    header = json.loads(blob[8:8 + struct.unpack("<Q", blob[:8])[0]])
    weights = load_file(first.folder / "weights.safetensors")
    best = state["best_weights"] if state["best_weights"] is not None else state["model"]
    assert set(weights) == set(best) == set(header) - {"__metadata__"}
    assert all(torch.equal(weights[k], best[k]) for k in best)
    # the metrics it was selected on, and its val/test metrics, as its final report has them
    final = search.final(first.trial_id)
    metrics = json.loads((first.folder / "metrics.json").read_text())
    assert metrics["selection"] == {"metric": "best_val_sumr", "mode": "max", "value": final["best_val_sumr"]}
    assert metrics["best_epoch"] == final["best_epoch"]
    assert {k: final[k] for k in final if k.startswith(("test_", "val_", "best_val_"))} == metrics["metrics"]
    # provenance: the data the trial was trained on, the code version the search logged
    provenance = json.loads((first.folder / "provenance.json").read_text())
    parent = _client(search).search_runs(
        [_client(search).get_experiment_by_name("prvr").experiment_id], "tags.`prvr.kind` = 'parent'")[0]
    assert provenance["data"]["manifest_sha256"] == manifest.sha256() == state["manifest_sha256"]
    assert provenance["code"]["git_commit"] == parent.data.tags["git_commit"]
    assert provenance["code"]["git_dirty"] == parent.data.tags["git_dirty"]
    assert (provenance["search"], provenance["trial_id"]) == (NAME, first.trial_id)
    assert Path(provenance["checkpoint"]).is_file()
    assert json.loads((first.folder / "protocol.json").read_text())["l2_normalize"] == manifest.l2_normalize


def test_folder_loader_reproduces_test_sumr(search, first, test_split):
    from trainables.export import load_exported

    model, config = load_exported(first.folder)
    _assert_reproduces(search, first.trial_id, model, config, test_split.test)


def test_champion_loader_reproduces_test_sumr(search, first, test_split):
    from trainables.export import load_exported

    client = _client(search)
    assert str(client.get_model_version_by_alias(REGISTERED, "champion").version) == first.version
    version = client.get_model_version(REGISTERED, first.version)
    assert version.tags["prvr.trial_id"] == first.trial_id
    model, config = load_exported(f"models:/{REGISTERED}@champion", tracking_uri=search.tracking_uri)
    _assert_reproduces(search, first.trial_id, model, config, test_split.test)


def test_pyfunc_ranks_like_the_evaluator(search, first, test_split):
    """The registered pyfunc, given the test split's raw features, ranks each query's video where the
    evaluator did: recalls from its output equal the trial's test metrics."""
    import mlflow

    from trainables.data.store import FeatureStore
    from trainables.evaluation.evaluate import evaluate_ranks
    from trainables.evaluation.metrics import metrics_from_ranks
    from trainables.export import load_exported

    raw = FeatureStore(search.dataset).load_split("test")
    assert raw.video_ids == test_split.test.video_ids
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(search.tracking_uri)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert str(_client(search).get_model_version_by_alias(REGISTERED, "champion").version) == first.version
        pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED}@champion")
        request = {"query_tokens": [raw.query_tokens(i) for i in range(raw.num_queries)],
                   "video_frames": [raw.video_frames(i) for i in range(raw.num_videos)],
                   "video_ids": list(raw.video_ids)}
        ranked = pyfunc.predict(request)
        top = pyfunc.predict({**request, "top_k": 3, "query_tokens": [t.tolist() for t in request["query_tokens"]]})
    finally:
        torch.set_num_threads(threads)
        mlflow.set_tracking_uri(previous)
    assert len(ranked) == raw.num_queries and all(sorted(r) == sorted(raw.video_ids) for r in ranked)
    ranks = np.array([ranked[q].index(raw.video_ids[raw.query_video[q]]) + 1 for q in range(raw.num_queries)])
    model, config = load_exported(first.folder)
    torch.set_num_threads(1)
    try:
        expected = evaluate_ranks(model, test_split.test, "cpu", video_batch=config.eval_video_batch,
                                  query_chunk=config.eval_query_chunk)["fused"]
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(ranks, expected)
    final = search.final(first.trial_id)
    metrics = metrics_from_ranks(ranks)
    assert (metrics["R@1"], metrics["SumR"]) == (final["test_r1"], final["test_sumr"])
    assert top == [r[:3] for r in ranked]  # top_k, and nested lists work like arrays


def test_rank_videos_rejects_bad_requests(first):
    from trainables.export import load_folder, rank_videos

    loaded = load_folder(first.folder)
    c = loaded.config
    video, query = np.ones((5, c.video_dim)), np.ones((3, c.query_dim))
    cases = [
        (([query], [video], ["a", "b"]), {}, "video_frames has 1 videos but video_ids has 2 ids"),
        (([query], [video, video], ["a", "a"]), {}, "video_ids must be unique, 'a' appears twice"),
        (([np.ones((3, c.query_dim + 1))], [video], ["a"]), {},
         f"query_tokens[0] must be (rows >= 1) x {c.query_dim}, got shape (3, {c.query_dim + 1})"),
        (([query], [video], ["a"]), {"top_k": 0}, "top_k must be a whole number >= 1, got 0"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError) as error:
            rank_videos(loaded.model, c, loaded.protocol, *args, **kwargs)
        assert str(error.value) == message


# ---------------------------------------------------------------- a second export, bad inputs


def test_second_export_is_version_2_and_takes_the_alias(search, first, second, test_split):
    from trainables.export import load_exported

    assert f"registered {REGISTERED} version 2 (alias champion)" in second.stdout
    assert _versions(search) == ["1", "2"]
    assert str(_client(search).get_model_version_by_alias(REGISTERED, "champion").version) == "2"
    model, config = load_exported(f"models:/{REGISTERED}@champion", tracking_uri=search.tracking_uri)
    _assert_reproduces(search, second.trial_id, model, config, test_split.test)
    model, config = load_exported(f"models:/{REGISTERED}/1", tracking_uri=search.tracking_uri)
    _assert_reproduces(search, first.trial_id, model, config, test_split.test)
    state = _checkpoint(search, second.trial_id)
    provenance = json.loads((second.folder / "provenance.json").read_text())
    assert provenance["weights"] == ("best_weights" if state["best_weights"] is not None else
                                     "model (the last epoch is the best)")


def test_export_to_an_existing_folder_fails_and_changes_nothing(search, first):
    before, versions = _tree(first.folder), _versions(search)
    done = search.export("--out", str(first.folder))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: export target {first.folder} already exists; choose another --out or remove it"]
    assert done.stdout == ""
    assert _tree(first.folder) == before and _versions(search) == versions
    assert sorted(p.name for p in first.folder.parent.iterdir() if p.name.startswith(".")) == []


def _fake_unfinished_search(search: Search, name: str) -> dict[str, str]:
    """A copy of the search under ``name`` where one trial failed and the other was stopped by the
    scheduler before its final report: no finished trial. Returns {failed|stopped: trial id}."""
    shutil.copytree(search.storage / NAME, search.storage / name)
    failed, stopped = search.trial_ids()
    for trial, last in ((failed, {"trial_error": "NonFiniteLoss: epoch 1, batch 1: loss term 'nce' is nan",
                                  "finished": True, "best_val_sumr": float("-inf")}), (stopped, None)):
        path = search.storage / name / f"trial_{trial}" / "result.json"
        lines = path.read_text().splitlines()[:-1]
        path.write_text("\n".join(lines + ([json.dumps(last)] if last else [])) + "\n")
    return {"failed": failed, "stopped": stopped}


def test_bad_inputs_are_one_line_before_any_write(search, first, tmp_path, capsys, monkeypatch):
    from search.cli import run_main
    from search.export import main

    trials = _fake_unfinished_search(search, "f")
    monkeypatch.chdir(tmp_path)
    versions, storages = _versions(search), sorted(p.name for p in search.storage.iterdir())
    out = tmp_path / "out"
    base = ["--storage", str(search.storage), "--tracking-uri", search.tracking_uri]
    cases = [
        (["--name", "nope"], f"error: no search 'nope' in {search.storage}"),
        (["--name", NAME, "--storage", str(tmp_path / "nowhere")],
         f"error: no search '{NAME}' in {tmp_path / 'nowhere'}"),
        (["--name", NAME, "--trial", "zzz"], f"error: search '{NAME}' has no trial 'zzz' (trials: "
                                             f"{', '.join(search.trial_ids())})"),
        (["--name", "f"], "error: search 'f' has no finished trial"),
        (["--name", "f", "--trial", trials["failed"]],
         f"error: trial {trials['failed']} of search 'f' failed (NonFiniteLoss: epoch 1, batch 1: loss term 'nce' "
         f"is nan): nothing to export"),
        (["--name", "f", "--trial", trials["stopped"]],
         f"error: trial {trials['stopped']} of search 'f' did not finish (stopped after 3 epochs): it has no test "
         f"metrics to export"),
        (["--name", NAME, "--tracking-uri", f"sqlite:///{tmp_path / 'no.db'}"],
         f"error: no MLflow store at {tmp_path / 'no.db'} (--tracking-uri sqlite:///{tmp_path / 'no.db'}); pass the "
         f"search's --tracking-uri, or --no-register"),
        (["--name", NAME, "--registered-name", "a/b"], "error: registered model name 'a/b' must be letters, digits, "
         "'.', '_' or '-' (starting with a letter or digit); pass --registered-name"),
        (["--name", NAME, "--data", str(tmp_path / "nodata")],
         f"error: dataset from --data: {tmp_path / 'nodata'}: no dataset manifest there"),
    ]
    for args, message in cases:
        capsys.readouterr()
        code = run_main(main, [*base, *args, "--out", str(out)])
        captured = capsys.readouterr()
        assert (code, captured.err.strip().splitlines(), captured.out) == (2, [message], ""), args
    # nothing written: no export, no staging folder, no storage or store created, no model version
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert sorted(p.name for p in search.storage.iterdir()) == storages
    assert _versions(search) == versions


def test_export_without_registry_needs_the_dataset_named(search, first, tmp_path, capsys, monkeypatch, test_split):
    """With --no-register and no reachable MLflow store, the dataset comes from --data (a wrong one is
    refused by its manifest hash); the folder then loads and reproduces the trial's test metrics."""
    from conftest import write_dataset

    from search.cli import run_main
    from search.export import main
    from trainables.export import load_exported

    base = ["--storage", str(search.storage), "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--name", NAME,
            "--no-register", "--out", str(tmp_path / "out")]
    other, _, _ = write_dataset(tmp_path / "other")
    cases = [
        ([], "error: the trial's dataset is unknown (no MLflow parent run of the search names it): pass --data "
             "with its folder or s3:// URI, or the search's --tracking-uri and --experiment"),
        (["--data", str(other)], f"error: dataset {other} (from --data) has manifest sha256 "),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert run_main(main, [*base, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(message), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "none.db").exists()
    monkeypatch.setenv("PRVR_DATA_DIR", str(search.base / "data"))  # where the search generated the preset
    capsys.readouterr()
    assert run_main(main, [*base, "--data", "tiny"]) == 0, capsys.readouterr().err
    output = capsys.readouterr().out.splitlines()
    assert len(output) == 1 and output[0].endswith(f" to {tmp_path / 'out'}")
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["code"]["source"] == "the exporting working tree"
    assert provenance["mlflow"]["parent_run_id"] is None
    model, config = load_exported(tmp_path / "out")
    _assert_reproduces(search, first.trial_id, model, config, test_split.test)


def test_export_from_s3_storage(search, first, tmp_path, capsys, monkeypatch, test_split):
    """The same export from the search's files in S3 (the real moto server); no credential in the folder."""
    from servers import TEST_ACCESS_KEY, TEST_SECRET_KEY, moto_server, s3_env

    from search.cli import run_main
    from search.export import main
    from trainables.export import load_exported

    with moto_server() as s3:
        for key, value in s3_env(s3.endpoint).items():
            monkeypatch.setenv(key, value)
        bucket = s3.make_bucket("exports")
        trial = search.storage / NAME / f"trial_{first.trial_id}"
        for path in trial.rglob("*"):
            if path.is_file() and (path.name in ("params.json", "result.json") or path.suffix == ".pt"):
                s3.client().put_object(Bucket=bucket, Key=f"prvr/{path.relative_to(search.storage)}",
                                       Body=path.read_bytes())
        out = tmp_path / "s3"
        code = run_main(main, ["--name", NAME, "--storage", f"s3://{bucket}/prvr", "--s3-endpoint", s3.endpoint,
                               "--tracking-uri", search.tracking_uri, "--no-register", "--out", str(out)])
        assert code == 0, capsys.readouterr().err
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["checkpoint"].startswith(f"s3://{bucket}/prvr/{NAME}/trial_{first.trial_id}/checkpoint_")
    for path in out.iterdir():
        blob = path.read_bytes()
        assert TEST_SECRET_KEY.encode() not in blob and TEST_ACCESS_KEY.encode() not in blob
    model, config = load_exported(out)
    _assert_reproduces(search, first.trial_id, model, config, test_split.test)
