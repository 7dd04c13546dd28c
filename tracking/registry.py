"""Exported models in the MLflow Model Registry: the ranking pyfunc model, its registration, its download.

The registered model is an MLflow ``pyfunc`` whose one artifact is the export folder
(``trainables/export.py``). It is logged as "models from code" (MLflow runs a three-line file that
builds :class:`RankerModel`; nothing of the model is pickled) under the exported trial's own child run
(the version's source run, :func:`trial_run_id`; only when the store has no such run, into a new
``export-<trial>`` run nested under the search's parent run), with a signature and an input example
(:func:`trainables.export.input_example`, the signature inferred from it and the model's output on it),
registered under a name with a description and tags, and the new version gets the alias ``champion``
(stages are deprecated in MLflow 3).

The pyfunc ranks videos for queries::

    model = mlflow.pyfunc.load_model("models:/prvr-ral-1@champion")
    model.predict({"query_tokens": [q0, q1],            # (tokens x query_dim) arrays or nested lists
                   "video_frames": [v0, v1, v2],        # (frames x video_dim) arrays or nested lists
                   "video_ids": ["a", "b", "c"],
                   "top_k": 2})                         # optional; default: every video
    -> [["b", "a"], ["c", "b"]]                          # per query, ids from best to worst

With a corpus index attached (``trainables/retrieval``, built by ``search/export.py index``), a request
of queries alone is answered against the whole corpus by the two-stage retriever::

    PRVR_INDEX=indexes/ral-1 mlflow models serve -m models:/prvr-ral-1@champion --env-manager local
    POST /invocations {"inputs": {"queries": [q0, q1], "top_k": 10}}
    -> {"predictions": [[...10 ids...], [...]]}          # per query, the best corpus videos

The index is attached through the environment of the process that loads the model (``SERVING_ENV``:
``PRVR_INDEX``, and the retriever's ``PRVR_CANDIDATES``, ``PRVR_STAGE1``, ``PRVR_STAGE1_PARAMS``; see
``Retriever``), not through MLflow's ``model_config``, which MLflow would log as the trial run's params.
An index built with another model or protocol is refused when the model loads.

Raw features go through the dataset's input protocol (clips, frame cap, L2 norms, token cap) and the
evaluator's encode/score code, so a request holding a split's videos and queries ranks them exactly as
the trial's evaluation did. Loading needs this project importable (``pip install -e .``). MLflow checks a
request against the signature (in Python, row by row: for large requests ``trainables.export.
load_exported(...).rank(...)`` skips that), and its REST server cannot parse ragged arrays: there, a
request's queries need equal token counts and its videos equal frame counts.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel  # mypy sees ``mlflow.pyfunc`` as mlflow's LazyLoader, not the module
from mlflow.tracking import MlflowClient

from tracking.mlflow_runs import TAG_KIND, TAG_SEARCH, TAG_TRIAL, child_runs, scrub
from trainables.errors import InputError

CHAMPION = "champion"
ARTIFACT_KEY = "export"  # the export folder's key in the pyfunc's artifacts
MODEL_NAME = "model"  # the logged model's name in its run
EXPORT_KIND = "export"  # prvr.kind of the run that logs an exported model
#: the model's code file (MLflow "models from code"): builds the pyfunc without unpickling anything
MODEL_CODE = '''"""PRVR ranking model (MLflow models from code): see tracking/registry.py."""
import mlflow

from tracking.registry import RankerModel

mlflow.models.set_model(RankerModel())
'''
#: what MLflow accepts in a registered model name and what stays unambiguous in ``models:/<name>@alias``
REGISTERED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def check_registered_name(name: str) -> str:
    if not REGISTERED_NAME.match(name):
        raise InputError(f"registered model name {name!r} must be letters, digits, '.', '_' or '-' "
                         f"(starting with a letter or digit); pass --registered-name")
    return name


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


class RankerModel(PythonModel):
    """Ranks a request's videos for each of its queries with an exported PRVR model (see module doc)."""

    #: the request is one dict of ragged arrays, which MLflow's type-hint validation cannot describe: the
    #: input is left unannotated and validated by ``_request`` and ``rank_videos``; this is MLflow's own
    #: switch (used by its ChatModel) to skip type-hint wrapping, and so its "add type hints" warning
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from trainables.export import load_folder

        settings = serving_settings()
        self.loaded = load_folder(context.artifacts[ARTIFACT_KEY], settings.get("device", "cpu"))
        self.retriever = None
        if settings.get("index"):
            from trainables.retrieval.corpus_index import CorpusIndex
            from trainables.retrieval.defaults import DEFAULT_CANDIDATES, DEFAULT_STAGE1
            from trainables.retrieval.retriever import Retriever

            self.retriever = Retriever(
                self.loaded, CorpusIndex.open(settings["index"]),
                candidates=_whole(settings.get("candidates", DEFAULT_CANDIDATES), SERVING_ENV["candidates"]),
                stage1=settings.get("stage1", DEFAULT_STAGE1), search_params=settings.get("stage1_params"))

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 (see above)
        """Per query of ``model_input``, the ranked video ids (``list[list[str]]``)."""
        request = _request(model_input)
        top_k = _top_k(request.get("top_k"))
        if not _absent(request.get(QUERIES)):
            if self.retriever is None:
                raise InputError(f"a request of {QUERIES!r} alone is answered against a corpus index, and none is "
                                 f"attached: load or serve the model with PRVR_INDEX=<index folder> set, or send "
                                 f"query_tokens with video_frames and video_ids")
            hits = self.retriever.search(request[QUERIES], DEFAULT_TOP_K if top_k is None else top_k)
            return [h.video_ids for h in hits]
        return self.loaded.rank(request["query_tokens"], request["video_frames"], request["video_ids"], top_k)


#: the request key of queries answered against the attached corpus index, and their default answer size
QUERIES, DEFAULT_TOP_K = "queries", 10
#: the environment variables a loading model reads its serving settings from
SERVING_ENV = {"index": "PRVR_INDEX", "candidates": "PRVR_CANDIDATES", "stage1": "PRVR_STAGE1",
               "stage1_params": "PRVR_STAGE1_PARAMS", "device": "PRVR_DEVICE"}


def serving_settings() -> dict[str, str]:
    """The serving settings set in the environment (``SERVING_ENV``), by their keys."""
    import os

    return {key: os.environ[env] for key, env in SERVING_ENV.items() if os.environ.get(env)}


def _whole(value: Any, name: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise InputError(f"{name} must be a whole number, got {value!r}") from None


def _top_k(value: Any) -> Any:
    """A request's ``top_k``: absent, or NaN / None where MLflow's DataFrame conversion filled the optional
    column, is None (every video); a one-value array (MLflow's REST parser) is its value."""
    if getattr(value, "shape", None) in ((), (1,)):
        value = value.reshape(-1)[0].item()
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value


def _absent(value: Any) -> bool:
    """A request key left out, or filled with None / NaN by MLflow's schema enforcement of an optional column."""
    return value is None or (isinstance(value, float) and value != value)


def _request(model_input: Any) -> dict[str, Any]:
    """The request as a dict; a one-row DataFrame (what some MLflow clients send) is taken as its row."""
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # pandas, without importing it
        rows = model_input.to_dict(orient="records")
        if len(rows) != 1:
            raise InputError(f"a DataFrame request must have one row (got {len(rows)}): pass a dict instead")
        model_input = rows[0]
    if not isinstance(model_input, dict):
        raise InputError(f"the request must be a dict with queries (against the attached index), or query_tokens, "
                         f"video_frames and video_ids, got {type(model_input).__name__}")
    if not _absent(model_input.get(QUERIES)):
        extra = sorted(k for k, v in model_input.items() if k not in (QUERIES, "top_k") and not _absent(v))
        if extra:
            raise InputError(f"a request of {QUERIES!r} is answered against the attached index and takes only "
                             f"top_k besides, not {', '.join(extra)}")
        return model_input
    model_input = {k: v for k, v in model_input.items() if k != QUERIES}
    missing = [k for k in ("query_tokens", "video_frames", "video_ids") if _absent(model_input.get(k))]
    if missing:
        raise InputError(f"the request has no {', '.join(missing)} (keys: query_tokens, video_frames, "
                         f"video_ids, optional top_k)")
    return model_input


@dataclass(frozen=True)
class Registered:
    """A registered version of an exported model."""

    name: str
    version: str
    run_id: str  # the version's source run: the trial's child run, or the export run made for it
    uri: str  # models:/<name>@champion


def _requirements() -> list[str]:
    """The packages the pyfunc imports, pinned to what logged it (MLflow's own inference would load the
    model in a subprocess just to find them)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("prvr-search", "mlflow", "torch", "numpy", "safetensors", "pyyaml", "h5py"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at ``uri`` for the block (its previous URI restored after)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def trial_run_id(client: MlflowClient, experiment: str, parent_run_id: str | None, trial_id: str) -> str | None:
    """The MLflow child run of trial ``trial_id`` under the search's parent run (a search trial or a
    confirmation trial: both are children of it), or None when the store has none."""
    if parent_run_id is None:
        return None
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    matching = child_runs(client, found.experiment_id, parent_run_id, trial_id)
    return matching[0].info.run_id if matching else None


def model_signature(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """(signature, input example) of the exported model in ``folder``: the example is
    :func:`trainables.export.input_example`, the signature MLflow's inference from it and the model's own
    ranking of it, with ``top_k`` optional (without it a request ranks every video)."""
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    from trainables.export import input_example, load_folder

    loaded = load_folder(folder)
    example = input_example(loaded.config, loaded.protocol)
    with warnings.catch_warnings():  # top_k is a whole number by design, not a column that may miss values
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        signature = infer_signature(example, loaded.rank(**example))
    assert signature.inputs is not None  # inferred from a non-empty dict
    # every key is optional: a request is either queries (against the attached corpus index) or
    # query_tokens + video_frames + video_ids; top_k is optional in both (rank_videos / _request check)
    columns = {c.name: c for c in signature.inputs.inputs}
    specs: list[ColSpec | TensorSpec] = [ColSpec(c.type, c.name, required=False) for c in columns.values()]
    signature.inputs = Schema([*specs, ColSpec(columns["query_tokens"].type, QUERIES, required=False)])
    return signature, example


def register_export(folder: str | Path, registered_name: str, tracking_uri: str, experiment: str, *,
                    search: str, trial_id: str, parent_run_id: str | None = None,
                    tags: dict[str, Any] | None = None, description: str | None = None,
                    source_run_id: str | None = None) -> Registered:
    """Log ``folder`` as a pyfunc model (signature and input example: :func:`model_signature`) under the
    trial's run ``source_run_id`` (its status and end time untouched), or, without one, in a new run of
    ``experiment`` (child of ``parent_run_id`` if given); register it as a new version of
    ``registered_name`` with ``description`` and ``tags`` and point the alias champion at it."""
    from mlflow.models import Model

    check_registered_name(registered_name)
    client = MlflowClient(tracking_uri=tracking_uri)
    signature, example = model_signature(folder)
    made_run = source_run_id is None
    if source_run_id is None:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        run_tags = {TAG_KIND: EXPORT_KIND, TAG_SEARCH: search, TAG_TRIAL: trial_id, **scrub(tags or {})}
        if parent_run_id is not None:
            run_tags["mlflow.parentRunId"] = parent_run_id
        source_run_id = client.create_run(experiment_id, run_name=f"export-{trial_id}", tags=run_tags).info.run_id
    try:
        with tempfile.TemporaryDirectory(prefix="prvr-model-code-") as scratch, _tracking(tracking_uri):
            code = Path(scratch) / "prvr_ranker.py"
            code.write_text(MODEL_CODE)
            # the logged model made here, in the run's experiment (Model.log would put it in the fluent
            # API's default experiment) with the run's params (the trial's config); then Model.log with
            # run_id (what mlflow.pyfunc.log_model calls, without run_id): the model becomes the run's
            # output and the version's source run, and the run is not reopened (a finished trial's run
            # keeps its status and end time); no model_config (it would log params to the run)
            run = client.get_run(source_run_id)
            logged = mlflow.initialize_logged_model(
                name=MODEL_NAME, source_run_id=source_run_id, experiment_id=run.info.experiment_id,
                params=dict(run.data.params))
            info = Model.log(
                artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=source_run_id,
                model_id=logged.model_id, python_model=str(code), artifacts={ARTIFACT_KEY: str(folder)},
                registered_model_name=registered_name, pip_requirements=_requirements(), signature=signature,
                input_example=example, metadata={"request": request_contract(folder)})
        version = str(info.registered_model_version)
        if description is not None:
            client.update_model_version(registered_name, version, description=description)
        client.set_registered_model_alias(registered_name, CHAMPION, version)
        for key, value in {TAG_SEARCH: search, TAG_TRIAL: trial_id, **scrub(tags or {})}.items():
            client.set_model_version_tag(registered_name, version, key, value)
    except BaseException:
        if made_run:
            client.set_terminated(source_run_id, "FAILED")
        raise
    client.set_tag(source_run_id, "registered_model", f"{registered_name}/{version}")
    if made_run:
        client.set_terminated(source_run_id, "FINISHED")
    return Registered(registered_name, version, source_run_id, champion_uri(registered_name))


def request_contract(folder: str | Path) -> dict[str, str]:
    """What a caller must send to the exported model in ``folder`` (logged as the MLmodel's metadata):
    the features of each request key, their dims, and what the server does to them."""
    from trainables.export import read_export

    export = read_export(folder)
    config, protocol = export.train_config(), export.protocol
    norm = ("L2-normalised per row by the server (x / (||x|| + 1e-5)); send the raw extractor features"
            if protocol.l2_normalize else "used as sent (this dataset's protocol does not L2-normalise)")
    return {
        QUERIES: f"list of queries, each a (tokens x {config.query_dim}) float matrix of the text encoder's token "
                 f"features (the dataset's query features); {norm}; only the first {protocol.max_tokens} tokens are "
                 f"used. Answered against the attached corpus index (PRVR_INDEX).",
        "query_tokens": "the same query features, for a request that brings its own videos",
        "video_frames": f"list of videos, each a (frames x {config.video_dim}) float matrix of per-frame features; "
                        f"{norm}; pooled into {protocol.map_size} clips, at most {protocol.max_frames} frames kept",
        "video_ids": "one id per video of video_frames",
        "top_k": f"answers per query (default: {DEFAULT_TOP_K} against the index, every video otherwise)",
        "output": "per query, video ids from best to worst full (fused) score",
        "rest": "mlflow models serve's JSON parser takes no ragged arrays: within one request every query needs "
                "the same token count and every video the same frame count (group requests by length)",
    }


@contextlib.contextmanager
def downloaded_export(uri: str, tracking_uri: str | None = None) -> Iterator[Path]:
    """The export folder of registered model ``uri`` (``models:/<name>@<alias>`` or ``.../<version>``),
    downloaded into a temporary folder that is removed when the block ends. Nothing is executed: the
    folder is found through the model's MLmodel file."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="prvr-registered-") as scratch:
        try:
            # through the fluent tracking URI: MLflow 3.17 resolves a models:/ URI on the default registry
            # even when download_artifacts is given tracking_uri / registry_uri
            with _tracking(tracking_uri or mlflow.get_tracking_uri()):
                local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=scratch)
        except MlflowException as exc:
            raise InputError(f"{uri}: {str(exc.message).splitlines()[0]}") from None
        try:
            artifacts = Model.load(local).flavors["python_function"]["artifacts"]
            folder = Path(local) / artifacts[ARTIFACT_KEY]["path"]
        except (KeyError, TypeError, MlflowException) as exc:
            raise InputError(f"{uri}: not an exported PRVR model (no {ARTIFACT_KEY!r} artifact: {exc})") from None
        yield folder


__all__ = ["CHAMPION", "RankerModel", "Registered", "champion_uri", "check_registered_name", "downloaded_export",
           "model_signature", "register_export", "trial_run_id"]
