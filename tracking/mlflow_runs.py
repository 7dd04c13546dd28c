"""MLflow runs of a search: one parent run per search, one nested child run per trial.

Both are written by the search's driver: the parent when the search starts, each child from its trial's
reports (``tracking/trial_runs.py``; a trial's process never imports MLflow). A child is tagged
``mlflow.parentRunId``, so the UI shows the search as one expandable row, and is found again by its trial
id when Ray restarts the trial or the search is resumed: a trial keeps exactly one child run. The driver
ends every child (FINISHED, KILLED when the scheduler stopped it, FAILED on an error) so none stays
RUNNING, and deletes the children of trials Ray re-suggested under new ids after a driver was killed.

Everything goes through ``MlflowClient`` with explicit run ids (no global active run), against a local
SQLite store or a tracking server.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

PARENT, CHILD = "parent", "child"
TAG_KIND, TAG_SEARCH, TAG_TRIAL = "prvr.kind", "prvr.search", "prvr.trial_id"
#: tag of a parent run or a trial's child run that a Ctrl-C ended (KILLED): what stopped it
INTERRUPTED_TAG = "interrupted"
#: keys whose values are never logged (credentials reach MLflow neither as params nor tags)
SECRET_KEY = re.compile(r"(secret|password|token|credential|access_key|session_key)", re.I)
MAX_PARAM = 6000


def default_tracking_uri() -> str:
    """The embedded default: a SQLite store in the working folder (``mlflow ui --backend-store-uri`` it)."""
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def ui_command(tracking_uri: str) -> str:
    """The one command that opens the MLflow UI on ``tracking_uri`` (credentials masked)."""
    from tracking.redact import redact_uri

    tracking_uri = redact_uri(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


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
    existing = parent_runs(client, experiment_id, search)
    if existing and resume:
        run_id = existing[0].info.run_id
        _reopen(client, existing[0])
    else:
        run = client.create_run(experiment_id, run_name=search,
                                tags={TAG_KIND: PARENT, TAG_SEARCH: search, "space": space, **scrub(tags)})
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(k, v) for k, v in scrub(params).items()])
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


def children(tracking: Tracking, trial_id: str | None = None) -> list[Any]:
    """The search's child runs (of one trial with ``trial_id``)."""
    query = f"tags.`{TAG_KIND}` = '{CHILD}' and tags.`mlflow.parentRunId` = '{tracking.parent_run_id}'"
    if trial_id is not None:
        query += f" and tags.`{TAG_TRIAL}` = '{trial_id}'"
    return _runs(tracking.client(), tracking.experiment_id, query)


def child_run(tracking: Tracking, trial_id: str, config: dict[str, Any], plugins: list[str],
              extra_tags: dict[str, Any] | None = None) -> str:
    """The trial's child run: found by trial id (a restarted trial continues it) or created with the
    config as params (plugin settings only when on: they are only in the config then) and filterable tags
    (``extra_tags``: e.g. an ablation's cell)."""
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
    run = client.create_run(tracking.experiment_id, run_name=trial_id, tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in scrub(config).items()])
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


def finish_parent(tracking: Tracking, best: dict[str, Any] | None, table: str, status: str) -> None:
    client = tracking.client()
    if best is not None:
        client.log_batch(tracking.parent_run_id, tags=[RunTag("best_trial_id", str(best["trial_id"]))],
                         metrics=[Metric(f"best_{k}", float(v), 0, 0) for k, v in best["metrics"].items()])
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


__all__ = ["INTERRUPTED_TAG", "Tracking", "child_run", "close_children", "code_version", "default_tracking_uri",
           "end_run", "log_dict",
           "end_interrupted_children", "end_trial_run", "fail_parent", "finish_parent", "log_metrics", "set_tags",
           "start_parent", "ui_command"]
