"""The report of a finished search: parameter importances (a note below 10 finished trials), optimisation
history, parallel coordinates and slice plots over the settings that varied, and learning curves of the
best trials (PNG), and one self-contained HTML page with them, the trial counts and the best-trials table;
written into --out and logged as artifacts ``report/`` of the search's MLflow parent run. ``search/run.py``
makes the same report as its trials end and when it ends; this remakes it on demand.

    python search/report.py --name ral-1
    python search/report.py --name ral-1 --storage s3://bucket/prvr --s3-endpoint http://127.0.0.1:9000

A missing search, a search without a finished trial, a missing MLflow store, experiment or parent run,
or an --out folder that is not empty (without --overwrite) is one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.cli import parser, program, run_main, stored_search_options
from tracking.storage import check_name
from trainables.data.s3 import StorageSettings, is_s3
from trainables.errors import InputError


def _parser() -> argparse.ArgumentParser:
    p = parser(program("search/report.py"), __doc__)
    what, storage = p.add_argument_group("report"), p.add_argument_group("storage/tracking")
    what.add_argument("--name", required=True, help="the search's name")
    stored_search_options(storage)  # --storage, --s3-endpoint, --tracking-uri, --experiment
    what.add_argument("--out", type=Path, default=None, help="folder of the report (default: ./report-<name>)")
    what.add_argument("--overwrite", action="store_true",
                      help="write into an --out folder that is not empty (the files of an earlier report are replaced)")
    return p


def parent_run_id(tracking_uri: str, experiment: str, search: str) -> str:
    """The id of the parent run of ``search`` in ``experiment`` (the newest when a name was reused)."""
    from mlflow.tracking import MlflowClient

    from tracking.mlflow_runs import local_store, parent_runs

    store = local_store(tracking_uri)
    if store is not None and not store.is_file():
        raise InputError(f"no MLflow store at {store} (--tracking-uri {tracking_uri})")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        found = client.get_experiment_by_name(experiment)
    except Exception as exc:  # an unreachable or broken tracking store
        raise InputError(f"MLflow tracking URI {tracking_uri}: {str(exc).splitlines()[0]}") from None
    if found is None:
        raise InputError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    runs = parent_runs(client, found.experiment_id, search)
    if not runs:
        raise InputError(f"search {search!r} has no parent run in MLflow experiment {experiment!r} at {tracking_uri}")
    return runs[0].info.run_id


def _out_dir(out: Path, overwrite: bool) -> Path:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {out} is not empty; pass --overwrite to write the report into it")
    return out


def report(args: argparse.Namespace) -> int:
    from tracking.mlflow_runs import default_tracking_uri
    from tracking.report import log_report, report_location, write_report
    from tracking.search_results import load_search

    check_name(args.name)  # it names the default --out folder
    out = _out_dir((args.out or Path(f"report-{args.name}")).resolve(), args.overwrite)
    settings = StorageSettings.from_env(endpoint=args.s3_endpoint) if (
        is_s3(args.storage) or args.s3_endpoint is not None) else None
    search = load_search(args.storage, args.name, settings)
    search.best()  # a search without a finished trial: InputError
    tracking_uri = args.tracking_uri or default_tracking_uri()
    run_id = parent_run_id(tracking_uri, args.experiment, args.name)
    paths = write_report(search, out)
    log_report(tracking_uri, run_id, paths)
    print(f"report of search {args.name}: {out / paths[-1].name}")
    print(f"figures: {', '.join(p.name for p in paths[:-1])} in {out}")
    print(f"logged as artifacts report/ of MLflow run {run_id} (experiment {args.experiment}, {tracking_uri})")
    print(f"logged report: {report_location(tracking_uri, run_id)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return report(_parser().parse_args(argv))


def entry() -> int:
    """The console script ``prvr-report``: ``main`` as ``python search/report.py`` runs it (one-line errors)."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(run_main(main))
