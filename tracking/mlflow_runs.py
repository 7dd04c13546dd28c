"""MLflow runs of a search: one parent run per search, one nested child run per trial.

Both are written by the search's driver: the parent when the search starts, each child from its trial's
reports (``tracking/trial_runs.py``; a trial's process never imports MLflow). A child is tagged
``mlflow.parentRunId``, so the UI shows the search as one expandable row, is named by what the trial is
(``mssl+ral-19a671ab``: ``tracking.search_results.trial_label``) and is found again by its trial id when Ray
restarts the trial or the search is resumed: a trial keeps exactly one child run. The driver ends every child
(FINISHED, also when the scheduler stopped it early, then tagged ``stopped_early``; FAILED on an error; KILLED
on a Ctrl-C) so none stays RUNNING, and deletes the children of trials Ray re-suggested under new ids after a
driver was killed. Params are logged readable (floats to 4 significant digits, ``param_value``); a child's
exact config is its artifact ``config.json``.

The experiment is tagged as a model-training one (``EXPERIMENT_KIND``), and each search records a view of
its trials' table (``set_trials_view``: the swept settings and val/test SumR, best first), which the
printed links open (``ui_lines``). MLflow 3.17's UI decides between its GenAI pages and its model-training
pages by the ``workflowType`` of the URL (else the toggle the browser remembers), so the links carry it.

Everything goes through ``MlflowClient`` with explicit run ids (no global active run), against a local
SQLite store or a tracking server.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

PARENT, CHILD = "parent", "child"
#: MLflow's experiment kind tag and its model-training value (what the UI's experiment-type selector writes)
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
#: the UI's query parameter choosing its model-training pages over the GenAI ones (MLflow 3.17 reads this first)
WORKFLOW_QUERY = "workflowType=machine_learning"
#: experiment tags holding a view of the runs table (MLflow's "share view"), opened by ``?viewStateShareKey=<key>``
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
#: where ``search/tracking_server.py`` serves by default
LEAN_SERVER = "http://127.0.0.1:5000"
#: the significant digits of a float param (the exact value is in the run's config.json)
PARAM_DIGITS = 4
TAG_KIND, TAG_SEARCH, TAG_TRIAL = "prvr.kind", "prvr.search", "prvr.trial_id"
#: tag of a parent run or a trial's child run that a Ctrl-C ended (KILLED): what stopped it
INTERRUPTED_TAG = "interrupted"
#: keys whose values are never logged (credentials reach MLflow neither as params nor tags)
SECRET_KEY = re.compile(r"(secret|password|token|credential|access_key|session_key)", re.I)
MAX_PARAM = 6000


def default_tracking_uri() -> str:
    """The embedded default: a SQLite store in the working folder (``ui_command`` serves its UI)."""
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def ui_command(tracking_uri: str) -> str:
    """The one command that serves the MLflow UI on ``tracking_uri`` (credentials masked): the project's lean
    server (1 worker, no job runner) on a local store; ``open <uri>`` for a tracking server."""
    from tracking.redact import redact_uri

    tracking_uri = redact_uri(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"python {_server_script()} --backend-store-uri {tracking_uri}"


def _server_script() -> str:
    """``search/tracking_server.py`` as the user can type it: relative to the working folder when under it."""
    script = Path(__file__).resolve().parents[1] / "search" / "tracking_server.py"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the tracking server's, or the lean server's default for a local store."""
    from tracking.redact import redact_uri

    tracking_uri = redact_uri(tracking_uri)
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LEAN_SERVER


def run_url(tracking: Tracking, run_id: str | None = None) -> str:
    """The UI page of ``run_id`` (default: the search's parent run), on the model-training pages."""
    run_id = run_id or tracking.parent_run_id
    return f"{ui_base(tracking.uri)}/#/experiments/{tracking.experiment_id}/runs/{run_id}?{WORKFLOW_QUERY}"


def trials_url(tracking: Tracking) -> str:
    """The UI's runs table opened on the search's trials view (``set_trials_view``)."""
    return (f"{ui_base(tracking.uri)}/#/experiments/{tracking.experiment_id}/runs?{WORKFLOW_QUERY}"
            f"&viewStateShareKey={tracking.parent_run_id}")


def ui_lines(tracking: Tracking, experiment: str) -> str:
    """What a search or an ablation prints about its MLflow runs: how to serve the UI and the two links."""
    return (f"MLflow runs (experiment {experiment}): {ui_command(tracking.uri)}\n"
            f"  parent run: {run_url(tracking)}\n"
            f"  trials table: {trials_url(tracking)}")


def set_trials_view(tracking: Tracking, params: list[str], tags: tuple[str, ...] = ()) -> None:
    """Record the view of the search's trials table in the experiment (tag ``VIEW_TAG_PREFIX`` + the parent
    run's id, what the UI's "share view" writes): the search's child runs, best val SumR first, with the
    columns ``params`` (the swept settings), ``tags`` (e.g. an ablation's cell), how a trial ended early and
    its val/test SumR. A run's settings are always in its page and its config.json."""
    from trainables.trial_report import METRIC, STOPPED_AT_EPOCH, STOPPED_AT_RUNG, STOPPED_EARLY_TAG, TIME_ATTR

    columns = ([f"params.`{p}`" for p in params]
               + [f"tags.`{t}`" for t in (*tags, STOPPED_EARLY_TAG, STOPPED_AT_EPOCH, STOPPED_AT_RUNG)]
               + [f"metrics.`{m}`" for m in (METRIC, "test_sumr", TIME_ATTR)])
    view = {"searchFilter": f"tags.`mlflow.parentRunId` = '{tracking.parent_run_id}'",
            "orderByKey": f"metrics.`{METRIC}`", "orderByAsc": False, "selectedColumns": columns}
    tracking.client().set_experiment_tag(tracking.experiment_id, VIEW_TAG_PREFIX + tracking.parent_run_id,
                                         json.dumps(view))


def param_value(value: Any) -> str:
    """A param as MLflow shows it: a float to ``PARAM_DIGITS`` significant digits (``70.9``, ``0.0003184``),
    anything else as ``str``."""
    if isinstance(value, float):
        return f"{value:.{PARAM_DIGITS}g}"
    return str(value)


def params_of(values: dict[str, Any]) -> list[Param]:
    """``values`` as MLflow params: readable (``param_value``), secrets dropped, long values cut (``scrub``)."""
    return [Param(k, v) for k, v in scrub({k: param_value(v) for k, v in values.items() if v is not None}).items()]


def scrub(values: dict[str, Any]) -> dict[str, str]:
    """Values as MLflow params/tags: secrets dropped, credentials in URIs masked, long values cut."""
    from tracking.redact import redact_text

    return {k: redact_text(str(v))[:MAX_PARAM] for k, v in values.items()
            if not SECRET_KEY.search(k) and v is not None}


def code_version(root: Path) -> dict[str, str]:
    """The git commit of ``root`` and whether its tree had uncommitted changes ("unknown" outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                               check=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


@dataclass(frozen=True)
class Tracking:
    """Where a search logs: passed to every trial (picklable, no client inside)."""

    uri: str
    experiment_id: str
    parent_run_id: str
    search: str
    space: str

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)


def _reopen(client: MlflowClient, run: Any) -> None:
    """A run that continues (a resumed search, a restarted trial): RUNNING, no longer tagged interrupted."""
    if INTERRUPTED_TAG in run.data.tags:
        client.delete_tag(run.info.run_id, INTERRUPTED_TAG)
    client.update_run(run.info.run_id, status="RUNNING")


def start_parent(uri: str, experiment: str, search: str, space: str, params: dict[str, Any],
                 tags: dict[str, Any], resume: bool) -> Tracking:
    """Create (or, with ``resume``, reopen) the parent run of ``search`` in ``experiment``."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
    if found is None or found.tags.get(EXPERIMENT_KIND) is None:  # a kind someone chose in the UI is kept
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
    existing = parent_runs(client, experiment_id, search)
    if existing and resume:
        run_id = existing[0].info.run_id
        _reopen(client, existing[0])
    else:
        run = client.create_run(experiment_id, run_name=search,
                                tags={TAG_KIND: PARENT, TAG_SEARCH: search, "space": space, **scrub(tags)})
        run_id = run.info.run_id
        client.log_batch(run_id, params=params_of(params))
    return Tracking(uri, experiment_id, run_id, search, space)


def local_store(tracking_uri: str) -> Path | None:
    """The SQLite file of a ``sqlite:///`` URI (None for other stores): checked before a read, which would
    otherwise create an empty store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])


def parent_runs(client: MlflowClient, experiment_id: str, search: str) -> list[Any]:
    """The parent runs of ``search``, newest first (filtered here, not in the query: a name may hold quotes)."""
    runs = client.search_runs([experiment_id], f"tags.`{TAG_KIND}` = '{PARENT}'", max_results=5000,
                              order_by=["attributes.start_time DESC"])
    return [r for r in runs if r.data.tags.get(TAG_SEARCH) == search]


def _runs(client: MlflowClient, experiment_id: str, query: str) -> list[Any]:
    return list(client.search_runs([experiment_id], filter_string=query, max_results=5000))


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str | None = None
               ) -> list[Any]:
    """The child runs of the search whose parent run is ``parent_run_id`` (of one trial with ``trial_id``,
    compared here, not in the query: an id may hold quotes)."""
    query = f"tags.`{TAG_KIND}` = '{CHILD}' and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs = _runs(client, experiment_id, query)
    return runs if trial_id is None else [r for r in runs if r.data.tags.get(TAG_TRIAL) == trial_id]


def children(tracking: Tracking, trial_id: str | None = None) -> list[Any]:
    """The search's child runs (of one trial with ``trial_id``)."""
    return child_runs(tracking.client(), tracking.experiment_id, tracking.parent_run_id, trial_id)


def child_run(tracking: Tracking, trial_id: str, config: dict[str, Any], plugins: list[str],
              extra_tags: dict[str, Any] | None = None) -> str:
    """The trial's child run: found by trial id (a restarted trial continues it) or created, named by what the
    trial is (``trial_label``), with the config as params (``params_of``; plugin settings only when on: they are
    only in the config then), the exact config as artifact ``config.json`` and filterable tags (``extra_tags``:
    e.g. an ablation's cell)."""
    from tracking.search_results import trial_label

    client = tracking.client()
    found = children(tracking, trial_id)
    if found:
        run_id = found[0].info.run_id
        _reopen(client, found[0])
        return run_id
    tags = {TAG_KIND: CHILD, TAG_TRIAL: trial_id, TAG_SEARCH: tracking.search, "space": tracking.space,
            "mlflow.parentRunId": tracking.parent_run_id, "backbone": str(config.get("backbone")),
            "seed": str(config.get("seed")), **{f"plugin.{p}": str(bool(config.get(p))).lower() for p in plugins},
            **scrub(extra_tags or {})}
    run = client.create_run(tracking.experiment_id, run_name=trial_label(config, trial_id, plugins), tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, params=params_of(config))
    client.log_dict(run_id, config, "config.json")
    return run_id


def log_metrics(tracking: Tracking, run_id: str, metrics: dict[str, Any], step: int, timestamp_ms: int) -> None:
    """Numeric ``metrics`` at ``step`` (the epoch)."""
    batch = [Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if batch:
        tracking.client().log_batch(run_id, metrics=batch)


def set_tags(tracking: Tracking, run_id: str, tags: dict[str, Any]) -> None:
    tracking.client().log_batch(run_id, tags=[RunTag(k, v) for k, v in scrub(tags).items()])


def log_dict(tracking: Tracking, run_id: str, values: dict[str, Any], name: str) -> None:
    """A JSON artifact ``name`` of the run (keys that look like credentials dropped)."""
    tracking.client().log_dict(run_id, {k: v for k, v in values.items() if not SECRET_KEY.search(k)}, name)


def end_run(tracking: Tracking, run_id: str, status: str) -> None:
    tracking.client().set_terminated(run_id, status)


def end_trial_run(tracking: Tracking, trial_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """End the child run of ``trial_id`` (from the driver: a stopped trial's process cannot), with ``tags``."""
    client = tracking.client()
    for run in children(tracking, trial_id):
        for key, value in (tags or {}).items():
            client.set_tag(run.info.run_id, key, value)
        if run.info.status != status:
            client.set_terminated(run.info.run_id, status)


def end_interrupted_children(tracking: Tracking) -> None:
    """After a Ctrl-C: the child runs still RUNNING (Tune stops their trials without telling the callbacks)
    become KILLED with tag ``INTERRUPTED_TAG``; a ``--resume`` makes them RUNNING again."""
    client = tracking.client()
    for run in children(tracking):
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, INTERRUPTED_TAG, "SIGINT")
            client.set_terminated(run.info.run_id, "KILLED")


def close_children(tracking: Tracking, statuses: dict[str, str]) -> None:
    """End each child whose trial has a final status, and delete children of trials Ray no longer knows
    (re-suggested under new ids after a driver loss); any child still RUNNING becomes KILLED."""
    client = tracking.client()
    for run in children(tracking):
        trial_id = run.data.tags.get(TAG_TRIAL)
        if trial_id not in statuses:
            client.delete_run(run.info.run_id)
        elif run.info.status == "RUNNING" or run.info.status != statuses[trial_id]:
            client.set_terminated(run.info.run_id, statuses[trial_id])


def search_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The parent run's summary metrics from its best trial's ``metrics``: ``search_best_val_*`` (the trial's
    best epoch's val metrics; only the running best val SumR for a trial the scheduler stopped) and
    ``search_best_test_*`` (that epoch's test metrics). Named apart from a trial's own ``best_val_*``, so the
    summary does not plot among the trials' curves."""
    from trainables.trial_report import BEST_VAL, TEST

    return {f"search_{k}" if k.startswith(f"{BEST_VAL}_") else f"search_best_{k}": float(v) for k, v in metrics.items()
            if k.startswith((f"{BEST_VAL}_", f"{TEST}_")) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def finish_parent(tracking: Tracking, best: dict[str, Any] | None, table: str, status: str) -> None:
    """End the parent run with ``status``, its best trial (``best``: trial id, config, metrics) as tag
    ``best_trial_id``, the summary metrics (``search_summary``) and artifact ``best_config.json``, and the
    printed table as ``best_trials.txt``."""
    client = tracking.client()
    if best is not None:
        client.log_batch(tracking.parent_run_id, tags=[RunTag("best_trial_id", str(best["trial_id"]))],
                         metrics=[Metric(k, v, 0, 0) for k, v in search_summary(best["metrics"]).items()])
        client.log_dict(tracking.parent_run_id, best["config"], "best_config.json")
    client.log_text(tracking.parent_run_id, table, "best_trials.txt")
    client.set_terminated(tracking.parent_run_id, status)


def fail_parent(tracking: Tracking, exc: BaseException) -> bool:
    """End the parent run of a search or ablation that stopped on ``exc`` while the run was still RUNNING:
    FAILED with tag ``error`` (KILLED with tag ``interrupted`` for Ctrl-C). A run already ended is left as
    it is. Never raises (the original error is what the user must see); returns whether it ended the run."""
    from tracking.redact import redact_text

    try:
        client = tracking.client()
        if client.get_run(tracking.parent_run_id).info.status != "RUNNING":
            return False
        first = (str(exc) or type(exc).__name__).splitlines()[0][:4000]
        if isinstance(exc, KeyboardInterrupt):
            client.set_tag(tracking.parent_run_id, INTERRUPTED_TAG, "KeyboardInterrupt")
            client.set_terminated(tracking.parent_run_id, "KILLED")
        else:
            client.set_tag(tracking.parent_run_id, "error", redact_text(f"{type(exc).__name__}: {first}"))
            client.set_terminated(tracking.parent_run_id, "FAILED")
        return True
    except Exception as failure:  # an unreachable store: say so, keep the original error
        print(f"warning: MLflow parent run {tracking.parent_run_id} could not be ended: "
              f"{(str(failure) or type(failure).__name__).splitlines()[0]}", file=sys.stderr)
        return False


__all__ = ["EXPERIMENT_KIND", "INTERRUPTED_TAG", "MODEL_TRAINING", "Tracking", "child_run", "close_children",
           "code_version", "default_tracking_uri", "end_run", "log_dict",
           "end_interrupted_children", "end_trial_run", "fail_parent", "finish_parent", "log_metrics", "param_value",
           "params_of", "run_url", "search_summary", "set_tags", "set_trials_view", "start_parent", "trials_url",
           "ui_base", "ui_command", "ui_lines"]
