"""Export of a search's trial (search/export.py, trainables/export.py, tracking/registry.py): a real search
with a confirmation stage made once with ``python search/run.py``, its champion exported by the CLI into a
folder and registered in MLflow; the folder loader, the ``models:/<name>@champion`` loader and the
registered pyfunc model all reproduce the trial's test metrics exactly on the same test split (and the
pyfunc's ranked ids put each query's video at the rank the evaluator computed); the registered version has
a signature and an input example that predicts, a description and tags with the champion's seed
statistics, and the trial's own child run as its source run; bad inputs are one ``error:`` line before
anything is written."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import FINISHED_SEARCH_NAME, FINISHED_SEARCH_TRIALS

ROOT = Path(__file__).resolve().parents[1]
NAME = FINISHED_SEARCH_NAME
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

    def trial_dir(self, trial_id: str) -> Path:
        """The folder of a search trial or of a confirmation trial."""
        search_trial = self.storage / NAME / f"trial_{trial_id}"
        return search_trial if search_trial.is_dir() else self.storage / NAME / "confirmation" / f"trial_{trial_id}"

    def final(self, trial_id: str) -> dict:
        """The trial's final report (its last line of result.json)."""
        return json.loads((self.trial_dir(trial_id) / "result.json").read_text().splitlines()[-1])

    def config(self, trial_id: str) -> dict:
        return json.loads((self.trial_dir(trial_id) / "params.json").read_text())

    def trial_ids(self) -> list[str]:
        return sorted(p.name[len("trial_"):] for p in (self.storage / NAME).glob("trial_*"))

    def confirmation_ids(self) -> list[str]:
        return sorted(p.name[len("trial_"):] for p in (self.storage / NAME / "confirmation").glob("trial_*"))

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
def search(finished_search) -> Search:
    """The session's finished search (tests/conftest.py: 4 trials x 3 epochs, no scheduler: every one
    finishes; a confirmation stage that retrains the best one with 1 more seed), shared with
    tests/test_report.py, which does not change what these tests read."""
    return Search(finished_search.base)


def _best(search: Search) -> str:
    """The best search trial by an independent reading of the final reports: finished, highest best val SumR."""
    finals = {t: search.final(t) for t in search.trial_ids()}
    finished = {t: f for t, f in finals.items() if f.get("finished") and "trial_error" not in f}
    assert len(finished) == FINISHED_SEARCH_TRIALS, finals
    return max(finished, key=lambda t: finished[t]["best_val_sumr"])


def _champion_runs(search: Search) -> list[str]:
    """The confirmed config's runs (the best search trial and its confirmation trial), read independently."""
    best = _best(search)
    confirmations = search.confirmation_ids()
    assert [search.config(t)["tag.confirmation_of"] for t in confirmations] == [best]
    assert all(search.final(t).get("finished") for t in confirmations)
    return [best, *confirmations]


def _champion(search: Search) -> str:
    """The run an export of the champion takes: of the confirmed config's runs, the best val SumR (ties: the
    smaller trial id)."""
    return min(_champion_runs(search), key=lambda t: (-search.final(t)["best_val_sumr"], t))


@pytest.fixture(scope="module")
def first(search: Search) -> Exported:
    """The CLI's export of the champion (default --trial), registered as version 1 of prvr-s."""
    best = _champion(search)
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

    folders = sorted(search.trial_dir(trial_id).glob("checkpoint_*"))
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


def test_cli_prints_folder_version_and_uri(search, first):
    champion = f" (the champion {_best(search)}'s best seed)"
    assert first.stdout.splitlines()[0].startswith(f"exported trial {first.trial_id}{champion} of search {NAME} ")
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

    model, config = load_exported(first.folder)  # it still unpacks as the (model, config) it returned before
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


# ---------------------------------------------------------------- the registered version


def _child_runs(search: Search) -> dict[str, str]:
    """{trial id: run id} of the search's trial child runs (search and confirmation trials), from MLflow."""
    client = _client(search)
    experiment = client.get_experiment_by_name("prvr").experiment_id
    runs = client.search_runs([experiment], "tags.`prvr.kind` = 'child'")
    return {r.data.tags["prvr.trial_id"]: r.info.run_id for r in runs}


def test_version_source_run_is_the_trials_own_child_run(search, first, second):
    """Each version's source run (and its logged model's) is the exported trial's child run, which stays
    FINISHED; no export run is added among the trials."""
    client = _client(search)
    children = _child_runs(search)
    assert set(children) == set(search.trial_ids() + search.confirmation_ids())
    for exported in (first, second):
        version = client.get_model_version(REGISTERED, exported.version)
        assert version.run_id == children[exported.trial_id]
        assert version.source.startswith("models:/m-")  # the logged model (MLflow 3), not an export run's path
        logged = client.get_logged_model(version.source[len("models:/"):])
        run = client.get_run(children[exported.trial_id])
        assert (logged.source_run_id, logged.experiment_id) == (run.info.run_id, run.info.experiment_id)
        assert logged.params["backbone"] == "mssl"  # the trial's config, as its run's params
        assert run.info.status == "FINISHED" and run.data.tags["registered_model"] == f"{REGISTERED}/{exported.version}"
        assert f"source run {children[exported.trial_id]} (trial {exported.trial_id}'s run)" in exported.stdout
    experiment = client.get_experiment_by_name("prvr").experiment_id
    assert client.search_runs([experiment], "tags.`prvr.kind` = 'export'") == []
    parent = client.search_runs([experiment], "tags.`prvr.kind` = 'parent'")[0].info.run_id
    nested = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.info.run_id for r in nested) == sorted(children.values())


def test_version_has_a_signature_and_an_input_example_that_predicts(search, first):
    import mlflow

    from trainables.export import load_exported

    config = yaml.safe_load((first.folder / "config.yaml").read_text())
    protocol = json.loads((first.folder / "protocol.json").read_text())
    uri = f"models:/{REGISTERED}/{first.version}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(search.tracking_uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
        signature, example = pyfunc.metadata.signature, pyfunc.input_example
        predicted = pyfunc.predict(example)
    finally:
        mlflow.set_tracking_uri(previous)
    inputs = {c.name: c for c in signature.inputs.inputs}
    # queries (against an attached corpus index: tests/test_serving.py) or query_tokens + video_frames +
    # video_ids: every key optional, checked by the model
    assert list(inputs) == ["query_tokens", "video_frames", "video_ids", "top_k", "queries"]
    assert not any(inputs[k].required for k in inputs)
    assert str(inputs["query_tokens"].type) == str(inputs["video_frames"].type) == "Array(Array(Array(double)))"
    assert str(inputs["video_ids"].type) == "Array(string)" and str(signature.outputs.inputs[0].type) == "Array(string)"
    # the example: a few queries and videos of the dataset's dims, within the protocol's caps
    queries, videos = np.array(example["query_tokens"]), np.array(example["video_frames"])
    assert queries.shape[0] >= 2 and queries.shape[2] == config["query_dim"]
    assert 1 <= queries.shape[1] <= protocol["max_tokens"]
    assert videos.shape[0] >= 2 and videos.shape[2] == config["video_dim"]
    assert 1 <= videos.shape[1] <= protocol["max_frames"]
    assert len(example["video_ids"]) == videos.shape[0] == len(set(example["video_ids"]))
    # it predicts, through MLflow's schema check, what the model ranks in-process
    assert predicted == load_exported(first.folder).rank(**example)
    assert len(predicted) == queries.shape[0] and all(len(r) == example["top_k"] for r in predicted)


def test_version_description_and_tags_hold_the_champions_statistics(search, first, second):
    """The numbers in the description and tags equal those computed here from the stored final reports:
    this run's val/test SumR, and its config's seed mean +- sd over its search and confirmation runs."""
    client = _client(search)
    version = client.get_model_version(REGISTERED, first.version)
    runs = _champion_runs(search)
    val = [search.final(t)["best_val_sumr"] for t in runs]
    test = [search.final(t)["test_sumr"] for t in runs]
    final = search.final(first.trial_id)
    text = version.description
    for part in (f"backbone mssl, plugins none; trial {first.trial_id} of search {NAME}.",
                 f"best val SumR {final['best_val_sumr']:.1f} (epoch {final['best_epoch']})",
                 f"test SumR {final['test_sumr']:.1f}.", f"over {len(runs)} training seeds",
                 f"val SumR {statistics.mean(val):.1f} +- {statistics.stdev(val):.1f}",
                 f"test SumR {statistics.mean(test):.1f} +- {statistics.stdev(test):.1f} (seed mean +- sd)"):
        assert part in text, (part, text)
    assert "\n" not in text
    tags = version.tags
    assert (tags["prvr.search"], tags["prvr.trial_id"], tags["backbone"], tags["plugins"], tags["selection"]) == \
        (NAME, first.trial_id, "mssl", "none", "champion")
    assert (float(tags["val_sumr"]), float(tags["test_sumr"])) == (final["best_val_sumr"], final["test_sumr"])
    assert tags["champion.config_trial"] == _best(search) and tags["champion.trials"] == ",".join(runs)
    assert tags["champion.seeds"] == ",".join(str(search.config(t)["seed"]) for t in runs)
    for key, values, stat in (("val_sumr_mean", val, statistics.mean), ("val_sumr_std", val, statistics.stdev),
                              ("test_sumr_mean", test, statistics.mean), ("test_sumr_std", test, statistics.stdev)):
        assert float(tags[f"champion.{key}"]) == pytest.approx(stat(values), rel=1e-12, abs=1e-12), key
    # a trial exported by id: its own numbers, no champion statistics
    other = client.get_model_version(REGISTERED, second.version)
    final = search.final(second.trial_id)
    assert f"best val SumR {final['best_val_sumr']:.1f}" in other.description
    assert "Exported by trial id (--trial)" in other.description and "+-" not in other.description
    assert other.tags["selection"] == "trial" and not any(k.startswith("champion.") for k in other.tags)


def test_loaded_export_ranks_with_its_own_protocol(search, first, test_split):
    """What load_exported returns ranks a request alone: its protocol is the folder's, and its ranking
    equals rank_videos given the model, config and protocol read separately."""
    from trainables.data.protocol import Protocol
    from trainables.data.store import FeatureStore
    from trainables.export import load_exported, load_folder, rank_videos

    loaded = load_exported(f"models:/{REGISTERED}/{first.version}", tracking_uri=search.tracking_uri)
    assert loaded.protocol == Protocol(**json.loads((first.folder / "protocol.json").read_text()))
    raw = FeatureStore(search.dataset).load_split("test")
    request = ([raw.query_tokens(i) for i in range(raw.num_queries)],
               [raw.video_frames(i) for i in range(raw.num_videos)], list(raw.video_ids))
    separate = load_folder(first.folder)
    expected = rank_videos(separate.model, separate.config, separate.protocol, *request)
    assert loaded.rank(*request) == expected
    assert loaded.rank(*request, top_k=2) == [r[:2] for r in expected]


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
    """A copy of the search under ``name`` where one trial failed and the others were stopped by the
    scheduler before their final report: no finished trial. Returns {failed|stopped: trial id} (the first
    stopped one)."""
    shutil.copytree(search.storage / NAME, search.storage / name)
    failed, *stopped = search.trial_ids()
    for trial, last in ((failed, {"trial_error": "NonFiniteLoss: epoch 1, batch 1: loss term 'nce' is nan",
                                  "finished": True, "best_val_sumr": float("-inf")}),
                        *((trial, None) for trial in stopped)):
        path = search.storage / name / f"trial_{trial}" / "result.json"
        lines = path.read_text().splitlines()[:-1]
        path.write_text("\n".join(lines + ([json.dumps(last)] if last else [])) + "\n")
    return {"failed": failed, "stopped": stopped[0]}


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
                                             f"{', '.join(search.trial_ids() + search.confirmation_ids())})"),
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
        for path in (search.storage / NAME).rglob("*"):  # every trial's: the champion is chosen among them
            if path.is_file() and (path.name in ("params.json", "result.json") or path.suffix == ".pt"):
                s3.client().put_object(Bucket=bucket, Key=f"prvr/{path.relative_to(search.storage)}",
                                       Body=path.read_bytes())
        out = tmp_path / "s3"
        code = run_main(main, ["--name", NAME, "--storage", f"s3://{bucket}/prvr", "--s3-endpoint", s3.endpoint,
                               "--tracking-uri", search.tracking_uri, "--no-register", "--out", str(out)])
        assert code == 0, capsys.readouterr().err
    provenance = json.loads((out / "provenance.json").read_text())
    trial = search.trial_dir(first.trial_id).relative_to(search.storage)
    assert provenance["checkpoint"].startswith(f"s3://{bucket}/prvr/{trial}/checkpoint_")
    for path in out.iterdir():
        blob = path.read_bytes()
        assert TEST_SECRET_KEY.encode() not in blob and TEST_ACCESS_KEY.encode() not in blob
    model, config = load_exported(out)
    _assert_reproduces(search, first.trial_id, model, config, test_split.test)


def test_without_the_trials_run_the_version_gets_an_export_run(search, first):
    """A store with no run of the trial (here: no source run given): the model is logged into a new
    ``export-<trial>`` run nested under the parent, which is the version's source run and ends FINISHED."""
    from tracking.registry import register_export

    client = _client(search)
    experiment = client.get_experiment_by_name("prvr").experiment_id
    parent = client.search_runs([experiment], "tags.`prvr.kind` = 'parent'")[0].info.run_id
    registered = register_export(first.folder, "prvr-fallback", search.tracking_uri, "prvr", search=NAME,
                                 trial_id=first.trial_id, parent_run_id=parent, description="d")
    run = client.get_run(registered.run_id)
    assert client.get_model_version("prvr-fallback", registered.version).run_id == run.info.run_id
    assert run.info.run_name == f"export-{first.trial_id}" and run.info.status == "FINISHED"
    assert (run.data.tags["prvr.kind"], run.data.tags["mlflow.parentRunId"]) == ("export", parent)
    assert run.info.run_id not in _child_runs(search).values()
