"""Which Ray a search or an ablation runs on, decided before ray is imported (a private Ray's loopback
setting is read when ray is imported, ``search/ray_session.py``).

``--local``: a private local Ray, never a cluster. ``--ray-address``: that cluster. Otherwise the cluster
``RAY_ADDRESS`` names (a Ray job's driver has it), else the cluster running on this node (the address
file ``ray start`` writes and a bare ``ray.init()`` reads, ``$RAY_TMPDIR`` or ``$TMPDIR`` or /tmp, then
``ray/ray_current_cluster``) if its GCS accepts a connection; a file left by a cluster that is gone is
passed over with a note. Otherwise a private local Ray. ``PRVR_RAY_LOCAL=1`` turns the detection off, as
``--local`` on every command (the test suite sets it: its searches never join a cluster they did not start).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trainables.errors import InputError

#: set to 1: no search or ablation joins a cluster it was not given with --ray-address
LOCAL_ENV_VAR = "PRVR_RAY_LOCAL"
ADDRESS_ENV_VAR = "RAY_ADDRESS"  # Ray's own: the cluster a bare ray.init() joins
#: how long the GCS a current-cluster file names has to accept a connection (it is on this node)
DETECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class RayTarget:
    """The Ray to run on: ``address`` for ``ray_session`` (None: a private local Ray); ``found``: where an
    address not given as ``--ray-address`` was found (``RAY_ADDRESS`` or the address file); ``note``: why a
    cluster named on this node is not used."""

    address: str | None
    found: str | None = None
    note: str | None = None


def ray_address_file(environ: Mapping[str, str] | None = None) -> Path:
    """The file in which ``ray start`` records this node's cluster, where Ray 2.60 puts it
    (``ray._common.utils.get_ray_address_file``): under ``$RAY_TMPDIR``, else ``$TMPDIR``, else /tmp."""
    env = os.environ if environ is None else environ
    root = env.get("RAY_TMPDIR") or env.get("TMPDIR") or "/tmp"
    return Path(root) / "ray" / "ray_current_cluster"


def answers(address: str, timeout: float) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


def detect_cluster(environ: Mapping[str, str] | None = None, address_file: Path | None = None,
                   timeout: float = DETECT_TIMEOUT_S) -> RayTarget:
    """The cluster a search joins when given neither ``--local`` nor ``--ray-address``: ``RAY_ADDRESS``'s
    (one-line InputError if it accepts no connection, as for ``--ray-address``), else the running cluster
    ``address_file`` (default: Ray's, ``ray_address_file``) names. A file whose cluster does not answer is
    stale: a private Ray, with a note. With Ray's own file the address is ``auto``: ``ray.init`` then reads
    the same file and, as on any ``ray.init()`` on the node, uses the cluster's token if it has one.
    A job server's ``http://`` address in ``RAY_ADDRESS`` (``ray job submit``'s) is no cluster: a note."""
    from search.ray_session import check_address

    env = os.environ if environ is None else environ
    if env.get(LOCAL_ENV_VAR, "") not in ("", "0"):
        return RayTarget(None)
    named = env.get(ADDRESS_ENV_VAR, "").strip()
    if named.startswith(("http://", "https://")):
        return RayTarget(None, note=f"{ADDRESS_ENV_VAR}={named} is a Ray job server's address, not a cluster's; "
                                    "running on a private local Ray")
    if named:
        check_address(named, name=ADDRESS_ENV_VAR)
        return RayTarget(named, found=ADDRESS_ENV_VAR)
    path = ray_address_file(env) if address_file is None else address_file
    try:
        recorded = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return RayTarget(None)
    if not recorded:
        return RayTarget(None)
    if not answers(recorded, timeout):
        return RayTarget(None, note=f"{path} names a Ray cluster at {recorded} that does not answer (stale); "
                                    "running on a private local Ray")
    return RayTarget("auto" if address_file is None else recorded, found=str(path))


def choose_ray(local: bool, ray_address: str | None, environ: Mapping[str, str] | None = None,
               address_file: Path | None = None) -> RayTarget:
    """The Ray of a command with ``--local`` and ``--ray-address`` (refused together: one line), else the
    detected one (``detect_cluster``)."""
    if local and ray_address is not None:
        raise InputError(f"--local and --ray-address {ray_address} exclude each other: --local runs a private "
                         "local Ray, --ray-address joins a cluster")
    if local:
        return RayTarget(None)
    if ray_address is not None:
        return RayTarget(ray_address)
    return detect_cluster(environ, address_file)


def ray_target(args: argparse.Namespace) -> RayTarget:
    """``choose_ray`` for an entry point's ``--local`` and ``--ray-address``; prints its note on stderr."""
    target = choose_ray(args.local, args.ray_address)
    if target.note:
        print(f"note: {target.note}", file=sys.stderr, flush=True)
    return target


def add_local_option(parser: argparse._ActionsContainer) -> None:
    """An entry point's ``--local`` (next to its ``--ray-address``, in a parser or an option group)."""
    parser.add_argument("--local", action="store_true",
                        help="a private local Ray on 127.0.0.1 even when a Ray cluster runs on this node or "
                             f"{ADDRESS_ENV_VAR} is set (also {LOCAL_ENV_VAR}=1)")


def attached_line(address: str | None, nodes: int, resources: Mapping[str, float], found: str | None) -> str:
    """The one line a search on a cluster prints once attached: where, how big, and (when the cluster was
    found, not given) how to run on a private Ray instead."""
    def count(number: float, what: str) -> str:
        return f"{number:g} {what}{'' if number == 1 else 's'}"

    size = ", ".join([count(nodes, "node"), count(resources.get("CPU", 0), "CPU"),
                      count(resources.get("GPU", 0), "GPU")])
    line = f"ray: attached to the cluster at {address} ({size})"
    if found is not None:
        line += f"; found by {found}; --local runs a private Ray instead"
    return line


__all__ = ["ADDRESS_ENV_VAR", "LOCAL_ENV_VAR", "RayTarget", "add_local_option", "answers", "attached_line",
           "choose_ray", "detect_cluster", "ray_address_file", "ray_target"]
