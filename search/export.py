"""Export a search's champion (or a named trial) for production and register it in MLflow.

    python search/export.py --name ral-1                      # the champion -> exports/ral-1-<trial>
    python search/export.py --name ral-1 --trial 3f2a9c1e --out models/ral-1
    python search/export.py --name ral-1 --storage s3://bucket/prvr --s3-endpoint http://127.0.0.1:9000
    python search/export.py index --model models:/prvr-ral-1@champion --data tvr-like --out indexes/ral-1

``index`` (``search/export_index.py``, its own ``--help``) encodes a corpus once with an exported model
into a corpus index, which the registered model serves queries against (docs/serving.md).

By default the export is the search's champion (``tracking/champion.py``): of the configs its
confirmation stage retrained over several training seeds, the one with the highest mean best-val SumR,
and of that config's runs the one with the best val SumR; a search without a confirmation stage
(``--confirm-top 0``) exports its best single run. The export folder (``trainables/export.py``) holds the
trial's resolved config (``config.yaml``, which rebuilds the model without the search), its best weights
(``weights.safetensors``), the input protocol, the metrics it was selected on and its provenance (search,
trial, how it was selected with the seed statistics, checkpoint, data manifest hash, git commit). It is then
registered as a new version of ``prvr-<name>`` in the MLflow Model
Registry (a pyfunc that ranks videos for queries, with a signature and an input example) with the alias
``champion``, a description (backbone, plugins, val and test SumR, the champion's seed mean +- sd, the
search) and tags (search, trial, backbone, plugins, SumRs, the champion's statistics); its source run is
the trial's own MLflow child run. Load it with
``trainables.export.load_exported("models:/prvr-<name>@champion")`` or ``mlflow.pyfunc.load_model``.

The dims and input protocol come from the trial's dataset manifest: the one the search's MLflow parent
run names (tag ``data``), or ``--data``; its hash must be the checkpoint's. A search that does not exist
or has no finished trial, an unknown or unfinished trial, an --out that exists, or a dataset that is not
the trial's is one ``error:`` line and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from search.cli import parser, program, run_main, stored_search_options
from tracking.storage import check_name
from trainables.data.s3 import StorageSettings, is_s3
from trainables.errors import InputError
from trainables.trial_report import (
    BEST_EPOCH,
    BEST_VAL,
    METRIC,
    MODE,
    STOPPED_EARLY,
    TEST,
    TIME_ATTR,
    TRIAL_ERROR,
    VAL,
    metric_key,
)

METRIC_PREFIXES = (f"{BEST_VAL}_", f"{VAL}_", f"{TEST}_")
#: the best epoch's val SumR and its test SumR in a trial's final report
BEST_VAL_SUMR, TEST_SUMR = metric_key(BEST_VAL, "SumR"), metric_key(TEST, "SumR")


def _parser() -> argparse.ArgumentParser:
    p = parser(program("search/export.py"), __doc__)
    what, data = p.add_argument_group("export"), p.add_argument_group("data")
    storage = p.add_argument_group("storage/tracking")
    what.add_argument("--name", required=True, help="the search's name")
    what.add_argument("--trial", default=None, help="the trial id to export, of the search or its confirmation "
                      "stage (default: the champion's best run; without a confirmation stage, the best trial)")
    stored_search_options(storage)  # --storage, --s3-endpoint, --tracking-uri, --experiment
    what.add_argument("--out", type=Path, default=None,
                      help="the export folder, must not exist (default: exports/<name>-<trial>)")
    what.add_argument("--registered-name", default=None, help="registered model name (default: prvr-<name>)")
    what.add_argument("--no-register", action="store_true", help="write the folder only, register nothing")
    data.add_argument("--data", default=None, help="the trial's dataset (folder, synthetic preset or s3:// URI) "
                      "when the search's MLflow parent run is not there to name it")
    return p


# ------------------------------------------------------------------------------------------ inputs


def find_parent_run(tracking_uri: str, experiment: str, search: str, required: bool) -> Any | None:
    """The search's MLflow parent run (newest if a name was reused), or None; with ``required`` (the
    export is to be registered there) a missing or unreachable tracking store is an error. Never creates
    a store."""
    from mlflow.tracking import MlflowClient

    from tracking.mlflow_runs import local_store, parent_runs

    store = local_store(tracking_uri)
    if store is not None and not store.is_file():
        if required:
            raise InputError(f"no MLflow store at {store} (--tracking-uri {tracking_uri}); pass the search's "
                             f"--tracking-uri, or --no-register")
        return None
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = parent_runs(client, found.experiment_id, search)
    except Exception as exc:  # an unreachable or broken tracking store
        if required:
            raise InputError(f"MLflow tracking URI {tracking_uri}: {str(exc).splitlines()[0]}") from None
        return None
    return runs[0] if runs else None


def pick_trial(search: Any, trial_id: str | None) -> tuple[Any, dict[str, Any]]:
    """(the trial to export, how it was selected): the champion's best run, else the best finished trial,
    or the named one, which must have finished and kept a checkpoint."""
    from tracking.champion import selection
    from tracking.search_results import TRIAL_PREFIX

    how: dict[str, Any] = {"by": "--trial"}
    if trial_id is None:
        chosen = selection(search)
        if chosen is not None:
            trial = chosen.champion.best_run
            how = {"by": "champion: the best-val run of the confirmed config with the highest mean best-val SumR",
                   **chosen.as_dict()}
        else:
            trial = search.best()
            how = {"by": "best single run (the search had no confirmation stage)"}
    else:
        trial = search.trial(trial_id[len(TRIAL_PREFIX):] if trial_id.startswith(TRIAL_PREFIX) else trial_id)
        if trial.failed:
            raise InputError(f"trial {trial.trial_id} of search {search.name!r} failed "
                             f"({str(trial.last[TRIAL_ERROR]).splitlines()[0]}): nothing to export")
        if not trial.finished:
            raise InputError(f"trial {trial.trial_id} of search {search.name!r} did not finish (stopped after "
                             f"{len(trial.epochs())} epochs): it has no test metrics to export")
    if trial.checkpoint is None:
        raise InputError(f"trial {trial.trial_id} of search {search.name!r} has no checkpoint in {search.storage.uri}")
    return trial, how


def read_trial_checkpoint(search: Any, trial: Any) -> tuple[dict[str, Any], str]:
    """(the trial's newest checkpoint, weights-only loaded; its source URI). It must be the state the
    trial's final report was made from: same epoch, same best epoch."""
    from pyarrow import fs

    from trainables.training.checkpoint import CHECKPOINT_NAME, load_checkpoint

    path = f"{trial.checkpoint}/{CHECKPOINT_NAME}"
    source = path if search.storage.filesystem is None else f"s3://{path}"
    with tempfile.TemporaryDirectory(prefix="prvr-export-") as scratch:
        local = Path(scratch) / CHECKPOINT_NAME
        fs.copy_files(path, str(local), source_filesystem=search.filesystem,
                      destination_filesystem=fs.LocalFileSystem())
        try:
            state = load_checkpoint(local)
        except ValueError as exc:
            raise InputError(str(exc).replace(str(local), source, 1)) from None
    last = trial.last
    for key in (TIME_ATTR, BEST_EPOCH):
        if state.get(key) != last.get(key):
            raise InputError(f"{source}: checkpoint {key} {state.get(key)} is not the final report's "
                             f"{last.get(key)}: not the state trial {trial.trial_id}'s test metrics came from")
    return state, source


def trial_manifest(spec: str | None, parent: Any | None, settings: StorageSettings | None,
                   expected_sha256: str) -> tuple[Any, str]:
    """(manifest, where) of the trial's dataset: ``--data`` or the parent run's ``data`` tag; its hash
    must be the checkpoint's."""
    from trainables.data.manifest import read_manifest
    from trainables.data.synthetic import PRESETS, default_cache_dir

    where = "--data" if spec is not None else "the search's MLflow parent run (tag data)"
    location = spec if spec is not None else (parent.data.tags.get("data") if parent is not None else None)
    if location is None:
        raise InputError("the trial's dataset is unknown (no MLflow parent run of the search names it): pass "
                         "--data with its folder or s3:// URI, or the search's --tracking-uri and --experiment")
    try:
        if is_s3(location):
            from trainables.data.remote import read_remote_manifest

            manifest = read_remote_manifest(location, settings or StorageSettings.from_env())
        else:
            if location in PRESETS and not Path(location).exists():  # a preset, where the search generated it
                location = str(default_cache_dir() / f"synthetic-{location}")
            manifest = read_manifest(location)
    except ValueError as exc:  # DatasetError
        raise InputError(f"dataset from {where}: {exc}") from None
    if manifest.sha256() != expected_sha256:
        raise InputError(f"dataset {location} (from {where}) has manifest sha256 {manifest.sha256()[:12]}..., "
                         f"the trial was trained on {expected_sha256[:12]}...; pass --data with the trial's dataset")
    return manifest, location


def trial_metrics(trial: Any) -> dict[str, Any]:
    """What the trial was selected on and its metrics, from its final report."""
    last = trial.last
    return {"selection": {"metric": METRIC, "mode": MODE, "value": last.get(METRIC)},
            "best_epoch": last.get(BEST_EPOCH), "epochs": last.get(TIME_ATTR),
            STOPPED_EARLY: last.get(STOPPED_EARLY),
            "metrics": {k: v for k, v in sorted(last.items()) if k.startswith(METRIC_PREFIXES)
                        and isinstance(v, (int, float)) and not isinstance(v, bool)}}


def _plugins(config: Any) -> str:
    return ", ".join(sorted(config.plugins)) or "none"


def model_description(search: str, trial_id: str, config: Any, metrics: dict[str, Any], how: dict[str, Any]) -> str:
    """One paragraph for the registered version: backbone and plugins (``config``: the trial's TrainConfig),
    its val and test SumR, and for a champion its config's seed mean +- sd over the confirmation stage."""
    values = metrics["metrics"]
    text = (f"PRVR ranking model: backbone {config.backbone}, plugins {_plugins(config)}; trial {trial_id} of "
            f"search {search}. This run: best val SumR {values[BEST_VAL_SUMR]:.1f} (epoch "
            f"{metrics['best_epoch']}), test SumR {values[TEST_SUMR]:.1f}.")
    if "champion" in how:
        champion = how["configs"][0]
        val, test = champion["val_sumr"], champion["test_sumr"]
        text += (f" Champion of the confirmation stage: over {val['n']} training seeds its config "
                 f"has val SumR {val['mean']:.1f} +- {val['std']:.1f} and test SumR {test['mean']:.1f} +- "
                 f"{test['std']:.1f} (seed mean +- sd); this run is its best-val seed.")
    elif how["by"] == "--trial":
        text += " Exported by trial id (--trial), not selected."
    else:
        text += " The search's best single run (it had no confirmation stage)."
    return text


def version_tags(config: Any, metrics: dict[str, Any], how: dict[str, Any]) -> dict[str, Any]:
    """The version's tags besides search and trial: backbone, plugins, SumRs, how it was selected and, for a
    champion, its config's statistics over seeds."""
    values = metrics["metrics"]
    tags: dict[str, Any] = {"backbone": config.backbone, "plugins": _plugins(config),
                            "val_sumr": values.get(BEST_VAL_SUMR), "test_sumr": values.get(TEST_SUMR),
                            "selection": "champion" if "champion" in how else
                            ("trial" if how["by"] == "--trial" else "best single run")}
    if "champion" in how:
        champion = how["configs"][0]
        tags.update({"champion.config_trial": how["champion"], "champion.trials": ",".join(champion["trials"]),
                     "champion.seeds": ",".join(map(str, champion["seeds"])),
                     "champion.val_sumr_mean": champion["val_sumr"]["mean"],
                     "champion.val_sumr_std": champion["val_sumr"]["std"],
                     "champion.test_sumr_mean": champion["test_sumr"]["mean"],
                     "champion.test_sumr_std": champion["test_sumr"]["std"]})
    return tags


def code_provenance(parent: Any | None) -> dict[str, str]:
    """The search's git commit and dirtiness from its parent run's tags, else this working tree's."""
    from tracking.mlflow_runs import code_version

    tags = parent.data.tags if parent is not None else {}
    if "git_commit" in tags:
        assert parent is not None  # without a parent run, tags is empty
        return {"git_commit": tags["git_commit"], "git_dirty": tags.get("git_dirty", "unknown"),
                "source": f"MLflow parent run {parent.info.run_id} of the search"}
    return {**code_version(Path(__file__).resolve().parents[1]), "source": "the exporting working tree"}


# -------------------------------------------------------------------------------------------- main


def export(args: argparse.Namespace) -> int:
    from tracking.mlflow_runs import default_tracking_uri
    from tracking.registry import champion_uri, check_registered_name, register_export, trial_run_id
    from tracking.search_results import load_search
    from trainables.data.protocol import Protocol
    from trainables.export import Export, check_target, pin_dims, write_export
    from trainables.models.base import Dims

    check_name(args.name)  # it names the export folder and the registered model
    register = not args.no_register
    registered_name = args.registered_name or f"prvr-{args.name}"
    if register:
        check_registered_name(registered_name)
    if args.out is not None:
        check_target(args.out)
    settings = StorageSettings.from_env(endpoint=args.s3_endpoint) if (
        is_s3(args.storage) or args.s3_endpoint is not None or (args.data and is_s3(args.data))) else None
    search = load_search(args.storage, args.name, settings)
    trial, how = pick_trial(search, args.trial)
    out = check_target(args.out or Path("exports") / f"{args.name}-{trial.trial_id}")
    tracking_uri = args.tracking_uri or default_tracking_uri()
    parent = find_parent_run(tracking_uri, args.experiment, args.name, required=register)
    state, source = read_trial_checkpoint(search, trial)
    manifest, data_location = trial_manifest(args.data, parent, settings, state["manifest_sha256"])

    best_weights = state["best_weights"] if state["best_weights"] is not None else state["model"]
    metrics = trial_metrics(trial)
    provenance = {
        "search": args.name, "trial_id": trial.trial_id, "selection": how, "storage": search.storage.uri,
        "checkpoint": source, "checkpoint_epoch": state["epoch"], "best_epoch": state["best_epoch"],
        "weights": "best_weights" if state["best_weights"] is not None else "model (the last epoch is the best)",
        "data": {"manifest_sha256": state["manifest_sha256"], "name": manifest.name, "location": data_location},
        "code": code_provenance(parent),
        "mlflow": {"experiment": args.experiment, "parent_run_id": parent.info.run_id if parent else None},
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    export = Export(config=pin_dims(state["config"], Dims(manifest.video_dim, manifest.query_dim)),
                    weights=best_weights, protocol=Protocol(l2_normalize=manifest.l2_normalize),
                    metrics=metrics, provenance=provenance)
    folder = write_export(export, out)
    test_sumr = metrics["metrics"].get(TEST_SUMR)
    champion = f" (the champion {how['champion']}'s best seed)" if "champion" in how else ""
    print(f"exported trial {trial.trial_id}{champion} of search {args.name} (best val SumR "
          f"{metrics['selection']['value']}, test SumR {test_sumr}) to {folder}")
    if not register:
        return 0
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    parent_run_id = parent.info.run_id if parent is not None else None
    config = export.train_config()
    try:
        trial_run = trial_run_id(MlflowClient(tracking_uri=tracking_uri), args.experiment, parent_run_id,
                                 trial.trial_id)
        registered = register_export(
            folder, registered_name, tracking_uri, args.experiment, search=args.name, trial_id=trial.trial_id,
            parent_run_id=parent_run_id, source_run_id=trial_run,
            description=model_description(args.name, trial.trial_id, config, metrics, how),
            tags={**version_tags(config, metrics, how), "data_manifest_sha256": state["manifest_sha256"],
                  "git_commit": provenance["code"]["git_commit"], "git_dirty": provenance["code"]["git_dirty"]})
    except MlflowException as exc:
        raise InputError(f"exported to {folder}, but registering {registered_name} at {tracking_uri} failed: "
                         f"{str(exc.message).splitlines()[0]}") from None
    source = f"trial {trial.trial_id}'s run" if trial_run is not None else \
        f"a new export run (the store has no run of trial {trial.trial_id})"
    print(f"registered {registered.name} version {registered.version} (alias champion) at {tracking_uri}, "
          f"source run {registered.run_id} ({source})")
    print(f"load it: {champion_uri(registered.name)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["index"]:  # the corpus index of an exported model (search/export_index.py)
        from search.export_index import run_index

        return run_index(argv[1:])
    return export(_parser().parse_args(argv))


def entry() -> int:
    """The console script ``prvr-export``: ``main`` as ``python search/export.py`` runs it (one-line errors)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in the output
    return run_main(main)


if __name__ == "__main__":
    sys.exit(entry())
