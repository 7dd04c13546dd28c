"""The error a user can fix: a bad option, config, file or value (standard library only).

Every command-line tool prints an ``InputError`` as one ``error:`` line with exit code 2
(``search/cli.py``); any other exception is a bug and shows its traceback. It is a ``ValueError``, Python's
own convention for a bad value, so code that catches ``ValueError`` still catches it.
"""

from __future__ import annotations


class InputError(ValueError):
    """A bad input, said in one line that names what is wrong (and, where it helps, the bound or the choices)."""


__all__ = ["InputError"]
