"""What every command-line entry point shares: one-line errors and exit codes, the ``--help`` layout and the
option groups a search and an ablation both have. Standard library only (and ``trainables.errors``): an
entry point's ``--help`` imports this and its own parser, never torch, Ray or MLflow."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from trainables.errors import InputError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


TRACKING_URI = "--tracking-uri"


def without_credentials(argv: list[str]) -> list[str]:
    """``argv`` with the credentials of ``--tracking-uri`` moved to MLflow's environment variables
    (``tracking.redact.use_tracking_uri``); this process's ``sys.argv`` is redacted too (Ray records it)."""
    from tracking.redact import redact_argv, use_tracking_uri

    out = list(argv)
    for i, arg in enumerate(out):
        option, eq, value = arg.partition("=")
        is_option = len(option) > 4 and TRACKING_URI.startswith(option)  # argparse accepts a prefix
        if is_option and eq:
            out[i] = f"{option}={use_tracking_uri(value)}"
        elif is_option and i + 1 < len(out):
            out[i + 1] = use_tracking_uri(out[i + 1])
    redact_argv()
    return out


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; a bad input (``InputError``) becomes one ``error: ...`` line on stderr and exit code 2,
    any other exception shows its traceback. No URI
    credentials reach ``main`` (``without_credentials``) or an error line. Whatever ends ``main`` with an
    exception first ends the MLflow parent runs it left RUNNING (``search.driver.end_open_parents``)."""
    from tracking.redact import redact_text

    try:
        try:
            return main(without_credentials(sys.argv[1:] if argv is None else argv))
        except BaseException as exc:  # a parent run this process opened must not stay RUNNING
            if "search.driver" in sys.modules:  # only a process that opened a driver session has any
                sys.modules["search.driver"].end_open_parents(exc)
            raise
    except (InputError, FileNotFoundError) as exc:  # a bad input (a DatasetError too); anything else is a bug
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print(f"interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with the description and epilog as written (an example a line) and each option's default
    shown once: ``(default: X)`` is appended unless the help text already says it (``default:``), or
    there is none to show (None, a switch's False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default == [] or default is argparse.SUPPRESS
        if "default:" in text or "%(default)" in text or nothing or not action.option_strings:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def program(script: str) -> str:
    """The name ``--help`` shows: the console script's (``prvr-search``) when run as one, else ``script``
    (``search/run.py``, as the examples run it)."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name if name.startswith("prvr-") else script


def parser(prog: str, description: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """An entry point's parser with ``HelpFormatter``."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter, **kwargs)


def resource_options(group: Any) -> None:
    """The options of the "resources" group (``group``: an argument group) of a search and an ablation:
    trials at once, each trial's CPUs and GPUs, and its retries after a lost node or worker."""
    group.add_argument("--concurrency", type=int, default=2, metavar="N", help="trials running at once")
    group.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="CPUS",
                       help="CPUs Ray reserves for each trial")
    group.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="GPUS",
                       help="GPUs of each trial, e.g. 0.25 packs four trials on a GPU")
    group.add_argument("--max-failures", type=int, default=2, metavar="N",
                       help="retries of a trial whose node or worker was lost")


def stored_search_options(group: Any) -> None:
    """The "storage/tracking" options of a command that reads a finished search (export, report): where its
    results and its MLflow runs are."""
    group.add_argument("--storage", default="prvr-results",
                       help="where the search's results are: a local folder or s3://bucket/prefix")
    group.add_argument("--s3-endpoint", default=None,
                       help="an S3-compatible endpoint (http://host:port) instead of AWS")
    group.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI of the search (default: sqlite:///<working folder>/mlflow.db)")
    group.add_argument("--experiment", default="prvr", help="MLflow experiment of the search")


def cluster_options(group: Any) -> None:
    """The options of the "cluster" group (``group``) of a search and an ablation: which Ray runs the trials."""
    from search.ray_target import add_local_option

    group.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="a running Ray cluster (default: RAY_ADDRESS's, else the cluster running on this node, "
                            "else a private local Ray)")
    add_local_option(group)
