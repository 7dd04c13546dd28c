"""What every command-line entry point shares: one-line errors and exit codes."""

from __future__ import annotations

import sys
from collections.abc import Callable

from trainables.data.errors import DatasetError

EXIT_USAGE = 2


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``main``; a bad input becomes one ``error: ...`` line on stderr and exit code 2."""
    try:
        return main(argv)
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
