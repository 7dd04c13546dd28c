"""What every command-line entry point shares: one-line errors and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable

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
