"""Check a Ray cluster launcher file offline before ``ray up`` (which has no dry run).

    python search/cluster.py check                   # ./cluster.yaml
    python search/cluster.py check my-cluster.yaml

Runs Ray's own validator (``prepare_config`` + ``validate_config``: unknown keys, wrong types, a head node
type that is not defined, ...) without touching the network, then the project's rules Ray does not check:
no AWS key material in the file (S3 access comes from an instance profile), an ``IamInstanceProfile`` on
every AWS node type, no ``CHANGE-ME`` placeholder left, no worker type with min_workers > max_workers.
A valid file prints a one-line summary and exits 0; the first problem found is one ``error:`` line naming
the file and the field, exit code 2.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from search.cli import run_main
from trainables.errors import InputError

PLACEHOLDER = "CHANGE-ME"
KEY_NAMES = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token"})
ACCESS_KEY_ID = re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])")
NO_KEYS = "use an instance profile (IamInstanceProfile), not keys"

TreePath = tuple[Any, ...]  # a location in the YAML tree: mapping keys and list indexes


def dotted(path: TreePath) -> str:
    """``("available_node_types", "head.cpu", "node_config")`` -> ``available_node_types.head.cpu.node_config``;
    list indexes as ``[i]``; the root as ``top level``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "top level"


def walk(node: Any, path: TreePath = ()) -> Iterator[tuple[TreePath, Any, Any]]:
    """Every ``(path, key, value)`` under ``node`` (``key`` is None for list items and the root)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key), key, value
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield (*path, i), None, value
            yield from walk(value, (*path, i))


def load(path: Path) -> dict[str, Any]:
    """The file as a mapping; a missing file, bad YAML or another top-level type is one-line InputError."""
    import yaml

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{path}: not valid YAML{where}: {problem}") from None
    if config is None:
        raise InputError(f"{path}: the file is empty")
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a mapping of settings (cluster_name, provider, ...), "
                         f"got {type(config).__name__}")
    return config


def check_no_keys(config: dict[str, Any], name: str) -> None:
    """AWS credentials in a launcher file end up on every node and in version control: refuse them."""
    for path, key, value in walk(config):
        if isinstance(key, str) and key.lower() in KEY_NAMES:
            raise InputError(f"{name}: {dotted(path)}: {NO_KEYS}")
        for text in (key, value):
            if isinstance(text, str) and ACCESS_KEY_ID.search(text):
                raise InputError(f"{name}: {dotted(path)}: looks like an AWS access key id; {NO_KEYS}")


def ray_validate(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Ray's own offline validation; returns the config as ``ray up`` fills it out (defaults, per-type
    min/max workers). Every failure becomes one line: ``NAME: dotted.path: message``.

    Ray's schema is also applied to the file as written first: ``prepare_config`` crashes with bare
    KeyError/TypeError on some malformed files (no provider, a string where a list belongs), and the
    schema names the field instead."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema_file = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(schema_file) as f:
        schema = json.load(f)
    ray_logger = logging.getLogger("ray.autoscaler")
    level = ray_logger.level
    ray_logger.setLevel(logging.WARNING)  # prepare_config logs INFO lines ("setting max workers ...")
    try:
        jsonschema.validate(config, schema)
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        message = " ".join(exc.message.splitlines())  # the message only, never jsonschema's schema dump
        raise InputError(f"{name}: {dotted(tuple(exc.absolute_path))}: {message}") from None
    except Exception as exc:  # ValueError, NotImplementedError, AssertionError, KeyError ... from Ray
        lines = str(exc).strip().splitlines()
        detail = lines[0] if lines and not isinstance(exc, KeyError) else f"{type(exc).__name__} {exc}"
        raise InputError(f"{name}: Ray rejects the file: {detail}") from None
    finally:
        ray_logger.setLevel(level)
    return prepared


def placeholder_hint(text: str) -> str:
    """What a CHANGE-ME in ``text`` stands for, when it can be told."""
    if re.search(rf"s3://[^\s/]*{PLACEHOLDER}", text):
        return " (the artifact bucket)"
    return ""


def project_checks(config: dict[str, Any], prepared: dict[str, Any], name: str) -> None:
    """The project's rules Ray does not check, on the file as written (``config``) and as ``ray_validate``
    filled it out (``prepared``: per-type max_workers default to the global one)."""
    nodes: dict[str, Any] = config.get("available_node_types") or {}
    if config["provider"].get("type") == "aws":
        if not nodes:
            raise InputError(f"{name}: available_node_types: define the node types, each with "
                             "node_config.IamInstanceProfile (S3 access)")
        for node_type, node in nodes.items():
            if "IamInstanceProfile" not in node["node_config"]:
                raise InputError(f"{name}: available_node_types.{node_type}.node_config: add IamInstanceProfile "
                                 "(the nodes read and write S3 through it)")
    for node_type, node in prepared["available_node_types"].items():
        if node_type == prepared["head_node_type"]:
            continue
        low, high = node.get("min_workers", 0), node["max_workers"]
        if low > high:
            raise InputError(f"{name}: available_node_types.{node_type}: min_workers {low} > max_workers {high}")
    found = [(path, text) for path, key, value in walk(config)
             for text in (key, value) if isinstance(text, str) and PLACEHOLDER in text]
    if found:
        (path, text), more = found[0], len(found) - 1
        also = f" (and {more} more place{'s' if more > 1 else ''})" if more else ""
        raise InputError(f"{name}: {dotted(path)}: replace {PLACEHOLDER}{placeholder_hint(text)} "
                         f"before `ray up`{also}")


def _node_summary(node_type: str, node: dict[str, Any], workers: bool) -> str:
    node_config = node.get("node_config", {})
    parts = [node_type, str(node_config.get("InstanceType", "?"))]
    if workers:
        market = node_config.get("InstanceMarketOptions", {}).get("MarketType", "on-demand")
        parts += [f"{node.get('min_workers', 0)}-{node.get('max_workers', '?')}", str(market)]
    return " ".join(parts)


def summary(prepared: dict[str, Any], name: str) -> str:
    """One line: provider, head and worker types (instance, min-max nodes, market), global max_workers."""
    provider = prepared["provider"]
    head = prepared["head_node_type"]
    nodes = prepared["available_node_types"]
    workers = ", ".join(_node_summary(t, n, True) for t, n in nodes.items() if t != head) or "none"
    where = " ".join(str(v) for v in (provider.get("type"), provider.get("region")) if v)
    return (f"{name}: valid for ray up (provider {where}; head {_node_summary(head, nodes[head], False)}; "
            f"workers {workers}; max_workers {prepared['max_workers']})")


def check(path: Path) -> str:
    """Validate the launcher file at ``path``; its summary line, or a one-line InputError."""
    name = str(path)
    config = load(path)
    check_no_keys(config, name)
    prepared = ray_validate(config, name)
    project_checks(config, prepared, name)
    return summary(prepared, name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search/cluster.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a cluster launcher file offline")
    c.add_argument("path", nargs="?", default="cluster.yaml", type=Path, help="default: ./cluster.yaml")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    print(check(args.path))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
