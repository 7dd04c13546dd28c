"""Which failures of a trial Ray should retry: infrastructure (retried) or the trial's own (failed once).

Ray Tune retries a trial (``FailureConfig.max_failures``) whenever its trainable raises. That is right
for a lost node, a killed worker or an unreachable S3 or tracking server, which a restart on another
node fixes; it is wrong for a trial whose own config or training fails (a bad setting, a NaN loss, an
out-of-memory batch size, a bug in a plugin), which fails the same way every time. The trial
(``trainables/trial.py``) therefore re-raises only infrastructure errors and ends every other one
with a single ``trial_error`` report.

A lost node or worker never reaches the trainable (the driver sees the actor die); what does reach it
is I/O: ``OSError`` (connection refused or reset, timeouts, a full disk; requests' errors are
``OSError`` too), botocore's connection errors and Ray's own errors, also when a library wraps them
(MLflow turns a refused connection into an ``MlflowException`` whose cause is the ``OSError``).
"""

from __future__ import annotations

from collections.abc import Iterator


def _infrastructure_types() -> tuple[type[BaseException], ...]:
    from ray.exceptions import RayError

    types: list[type[BaseException]] = [OSError, RayError]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        types += [BotoConnectionError, HTTPClientError]
    except ImportError:  # botocore is only needed for S3
        pass
    return tuple(types)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (unless ``from None``), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for an error a restart (on another node) may fix: I/O, S3 or Ray, anywhere in its chain."""
    types = _infrastructure_types()
    return any(isinstance(e, types) for e in _chain(exc))


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``: what a failed trial reports and its MLflow run is tagged with."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


__all__ = ["describe", "is_infrastructure_error"]
