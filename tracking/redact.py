"""Credentials out of URIs before anything is logged, printed, stored or pickled (dependency-free).

``redact_uri`` masks a URI's userinfo (``user:password@``) and the values of query parameters that look
like credentials; ``redact_text`` does it for every URI inside a longer text (a command line, a message).
``use_tracking_uri`` moves the credentials of an MLflow tracking URI to MLflow's own environment
variables (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, read by the client and inherited
by a local Ray's trial workers) and returns the URI without them.
"""

from __future__ import annotations

import os
import re
import sys
from typing import overload
from urllib.parse import unquote, urlsplit, urlunsplit

from trainables.errors import InputError

MASK = "***"
#: query parameters whose values are credentials (AWS presigned URLs, tokens, keys, signatures)
CREDENTIAL_PARAM = re.compile(r"(pass|pwd|secret|token|key|sig|credential|auth|session)", re.I)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        parts.append(f"{name}={MASK}" if eq and value and CREDENTIAL_PARAM.search(name) else item)
    return "&".join(parts)


def redact_uri(uri: str) -> str:
    """``uri`` with its userinfo replaced by ``***`` and credential-like query values masked."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return _URI.sub(MASK, uri) if "@" in uri else uri
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = _query(parts.query) if parts.query else parts.query
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with every URI in it redacted (``redact_uri``)."""
    return _URI.sub(lambda m: redact_uri(m.group(0)), text)


def redact_argv() -> None:
    """Redact this process's ``sys.argv`` in place (Ray and logs record the command line)."""
    sys.argv[:] = [redact_text(a) for a in sys.argv]


@overload
def use_tracking_uri(uri: str) -> str: ...
@overload
def use_tracking_uri(uri: None) -> None: ...
def use_tracking_uri(uri: str | None) -> str | None:
    """The tracking URI without credentials; a ``user:password@`` in it is moved to MLflow's environment
    variables (so the client, and the trial workers of a local Ray, still authenticate). Credentials in the
    query string are refused (one line, redacted): MLflow sends a token from ``MLFLOW_TRACKING_TOKEN``."""
    if uri is None:
        return None
    parts = urlsplit(uri)
    if parts.query and _query(parts.query) != parts.query:
        raise InputError(f"--tracking-uri {redact_uri(uri)}: credentials in the query string are not accepted "
                         f"(they would be logged); set MLFLOW_TRACKING_TOKEN instead")
    if "@" not in parts.netloc:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if parts.scheme not in ("http", "https"):
        raise InputError(f"--tracking-uri {redact_uri(uri)}: credentials are only understood in an http(s) URI")
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
    if colon:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
