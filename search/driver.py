"""One driver session, shared by a search (``run.py``) and an ablation (``ablate.py``).

A session has two phases. ``prepare`` checks everything that needs no Ray: the cluster's address, the
S3 settings, the results storage (a new name, or an existing one to resume), the dataset's manifest and its val/test
overlap; the caller then checks its own inputs against the manifest (a space's configs, an ablation's
cells). ``driver_session`` starts Ray (a private loopback Ray, or a cluster), loads a local dataset once
for the object store, opens the MLflow parent run, and yields a ``DriverSession`` whose ``fit`` runs
Tune trials with the session's data, resources, retries and storage (and a further Tune run, such
as a search's confirmation stage, in a folder of the search's). ``end_trial_runs`` is the one place a
search or an ablation ends its trials' child runs (a Ctrl-C stops the Tune run and sets ``interrupted``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracking.storage import SearchStorage, search_storage
from trainables.data.datasets import resolve_dataset
from trainables.data.manifest import Manifest, read_manifest
from trainables.data.s3 import StorageSettings, is_s3
from trainables.data.split_overlap import ALLOW_FLAG, SplitOverlap, check_val_test, manifest_overlap, overlap_tags
from trainables.errors import InputError

if TYPE_CHECKING:
    from trainables.data.source import RemoteDataset
    from trainables.training.loop import DataSplits

ROOT = Path(__file__).resolve().parents[1]


def dataset_source(spec: str, settings: StorageSettings | None, allow_val_test_overlap: bool = False
                   ) -> tuple[Manifest, str, Any, SplitOverlap | None]:
    """(manifest, where it is, what the trials get, its val/test overlap): a local dataset is loaded once
    by the session and shipped through Ray's object store (here: a function that loads it); an S3
    dataset is named by its URI and fetched by each node. A val split that shares queries or videos
    with test is refused here (one line) unless ``allow_val_test_overlap``; a warning says when it is
    allowed."""
    data: RemoteDataset | Callable[[], DataSplits]
    if is_s3(spec):
        from trainables.data.remote import read_remote_manifest
        from trainables.data.source import RemoteDataset

        settings = settings or StorageSettings.from_env()
        manifest = read_remote_manifest(spec, settings)
        location, folder, data = spec, None, RemoteDataset(spec, settings)
    else:
        from trainables.data.store import FeatureStore
        from trainables.training.loop import load_data

        path = resolve_dataset(spec)
        FeatureStore(path).check()  # sizes and sha256 before Ray: a corrupted file is one line here
        manifest, location, folder = read_manifest(path), str(path.parent), path.parent
        data = lambda: load_data(path)  # noqa: E731
    overlap = manifest_overlap(manifest, folder)
    check_val_test(overlap, location, allow=allow_val_test_overlap)
    if overlap:
        print(f"warning: {location}: {overlap.describe()}: epochs and configs are selected on test queries "
              f"({ALLOW_FLAG})", file=sys.stderr, flush=True)
    return manifest, location, data, overlap


@dataclass(frozen=True)
class DriverInputs:
    """What ``prepare`` checked before Ray: the run's name, storage, S3 settings and dataset."""

    name: str
    storage: SearchStorage
    settings: StorageSettings | None
    manifest: Manifest
    location: str
    data: Any  # a function that loads a local dataset, or a RemoteDataset
    overlap: SplitOverlap | None
    allow_val_test_overlap: bool


def s3_settings(storage: str, data: str, s3_endpoint: str | None) -> StorageSettings | None:
    """The S3 settings of a run whose storage or data is on S3 (or that names an endpoint), else None."""
    uses_s3 = is_s3(storage) or is_s3(data) or s3_endpoint is not None
    return StorageSettings.from_env(endpoint=s3_endpoint) if uses_s3 else None


def prepare(name: str, *, data: str, storage: str, resume: bool = False, s3_endpoint: str | None = None,
            allow_val_test_overlap: bool = False, ray_address: str | None = None) -> DriverInputs:
    """Check the Ray cluster's address, the storage and the dataset of run ``name`` (no Ray yet); raises
    one-line InputErrors."""
    from search.ray_session import check_address

    check_address(ray_address)
    settings = s3_settings(storage, data, s3_endpoint)
    # the dataset first: checking the storage may create its folder, and a refused dataset writes nothing
    manifest, location, source, overlap = dataset_source(data, settings, allow_val_test_overlap)
    where = search_storage(storage, name, resume, settings)
    return DriverInputs(name, where, settings, manifest, location, source, overlap, allow_val_test_overlap)


@dataclass
class DriverSession:
    """A running session: Tune trials with its data and resources, logged under its MLflow parent run."""

    inputs: DriverInputs
    tracking: Any  # tracking.mlflow_runs.Tracking
    data: Any  # the loaded splits (local) or the RemoteDataset
    cpus_per_trial: float
    gpus_per_trial: float
    max_failures: int
    trust_storage: bool = False  # resume a Tune state the parent run does not record (search/trusted_state.py)
    interrupted: bool = False  # a Tune run of the session was stopped by Ctrl-C (SIGINT)
    live_report: bool = False  # rewrite the search's report as its trials end (search/live_report.py)

    def storage(self, stage: str | None = None) -> SearchStorage:
        """Where the search's Tune run (or its further run ``stage``, a folder of the search's) is kept."""
        return self.inputs.storage if stage is None else self.inputs.storage.child(stage)

    def can_resume(self, stage: str | None = None) -> bool:
        """Whether the Tune run (``stage``) has a saved state to restore (a killed driver left it)."""
        from search.tune_state import has_experiment_state

        return has_experiment_state(self.storage(stage))

    def fit(self, tune_config: Any, resume: bool = False, callbacks: list[Any] | None = None,
            stage: str | None = None) -> Any:
        """Run (or restore and continue) the session's Tuner over ``tune_config``; returns its ResultGrid.
        ``stage``: a further Tune run of the session after the search's (the confirmation stage), named by
        its folder in the search's folder; its trials have the same trainable, resources and retries. A Ctrl-C
        stops the Tune run gracefully (its state saved for ``--resume``) and sets ``interrupted``. Each epoch a
        trial reports is a progress line (``search/progress.py``), besides ``callbacks``. With
        ``live_report``, the search's own run (not a ``stage``) rewrites its report as its trials end."""
        from search import tuning
        from search.progress import SearchProgress

        if self.live_report and stage is None:
            from search.live_report import LiveReport

            callbacks = [*(callbacks or []), LiveReport(self.tracking, self.inputs.storage.uri)]

        trainable = tuning.trainable(self.data, self.cpus_per_trial, self.gpus_per_trial,
                                     self.inputs.allow_val_test_overlap)
        with tuning.watching_interrupts():
            try:
                return tuning.fit(trainable, tune_config, stage or self.inputs.name, self.storage(stage),
                                  self.tracking, self.max_failures, resume=resume, stage=stage,
                                  callbacks=[*SearchProgress.for_config(tune_config), *(callbacks or [])],
                                  trust_storage=self.trust_storage)
            finally:
                self.interrupted = self.interrupted or tuning.interrupt_received()

    def end_trial_runs(self, *results: Any) -> dict[str, str]:
        """End every trial's child run with its final status (FAILED on an error, FINISHED when it ran to
        its end or the scheduler stopped it early, KILLED when cut short otherwise) and delete children of
        trials Tune no longer knows; ``results``: the ResultGrid
        of every Tune run of the session (the search's, its confirmation's). Returns the statuses."""
        from search.results import final_statuses
        from tracking.mlflow_runs import close_children

        statuses = {trial: status for grid in results for trial, status in final_statuses(grid).items()}
        close_children(self.tracking, statuses)
        return statuses


@contextmanager
def driver_session(inputs: DriverInputs, *, kind: str, ray_address: str | None, resources: dict[str, Any],
                   tracking_uri: str | None, experiment: str, params: dict[str, Any], tags: dict[str, Any],
                   cpus_per_trial: float, gpus_per_trial: float, max_failures: int, resume: bool = False,
                   trust_storage: bool = False, ray_found: str | None = None,
                   live_report: bool = False) -> Iterator[DriverSession]:
    """Ray, the loaded data and the MLflow parent run (``kind``: the space's name, or "ablation") of one
    search or ablation. The parent run records the command, ``params``, the data, the storage, the
    manifest's hash, the git commit and ``tags``. Ray is shut down on leaving; the parent run is left
    for the caller to finish, since what it records at the end differs, except when an exception leaves
    the session: then it is ended FAILED with the error as tag ``error`` (KILLED on Ctrl-C). With
    ``resume`` the Tune state is restored, only if the parent run recorded it or ``trust_storage``. On a
    cluster it prints one line (its address, nodes, CPUs and GPUs; ``ray_found``: where the address was
    found when it was not given, ``search/ray_target.py``). With ``live_report`` (a search) the report is
    rewritten as trials end (``search/live_report.py``)."""
    from search.ray_session import on_cluster, ray_session
    from search.ray_target import attached_line
    from tracking.mlflow_runs import code_version, default_tracking_uri, fail_parent, start_parent
    from tracking.redact import redact_text, use_tracking_uri

    # Ray before the data and the parent run: the trial workers it starts ahead import torch and Tune
    # meanwhile (search/warm_workers.py)
    with ray_session(ray_address, **resources) as ray_info:
        if ray_address is not None:
            print(attached_line(ray_info["address"], ray_info["nodes"], ray_info["resources"], ray_found),
                  flush=True)
        data = inputs.data() if callable(inputs.data) else inputs.data
        uri = use_tracking_uri(tracking_uri or default_tracking_uri())  # no credentials in what is kept
        if ray_address is not None:
            on_cluster(inputs.storage.uri)
        try:
            tracking = start_parent(
                uri, experiment, inputs.name, kind, resume=resume,
                params={"command": redact_text(" ".join(sys.argv)), **params},
                tags={"data": inputs.location, "storage": inputs.storage.uri,
                      "data_manifest_sha256": inputs.manifest.sha256(), **overlap_tags(inputs.overlap), **tags,
                      **code_version(ROOT)})
        except Exception as exc:  # an unreachable or broken tracking store
            raise InputError(f"MLflow tracking URI {uri}: {str(exc).splitlines()[0]}") from None
        OPEN_PARENTS.append(tracking)
        try:
            yield DriverSession(inputs, tracking, data, cpus_per_trial, gpus_per_trial, max_failures, trust_storage,
                                live_report=live_report)
        except BaseException as exc:  # the parent run exists: it must not stay RUNNING
            fail_parent(tracking, exc)
            raise


#: the parent runs this process opened (``driver_session``), for ``end_open_parents``
OPEN_PARENTS: list[Any] = []


def end_open_parents(exc: BaseException) -> None:
    """After ``exc`` ended a search or an ablation (in or after its session): end each parent run this
    process opened that is still RUNNING (FAILED with the error; KILLED on Ctrl-C)."""
    from tracking.mlflow_runs import fail_parent

    for tracking in OPEN_PARENTS:
        fail_parent(tracking, exc)


__all__ = ["DriverInputs", "DriverSession", "dataset_source", "driver_session", "end_open_parents", "prepare",
           "s3_settings"]
