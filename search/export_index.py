"""``search/export.py index``: encode a corpus once with an exported model into a corpus index.

    python search/export.py index --model models:/prvr-ral-1@champion --data tvr-like --out indexes/ral-1
    python search/export.py index --model exports/ral-1-3f2a9c1e --data /data/tvr --split val --out idx --append

The index (``trainables/retrieval/corpus_index.py``) holds every video's encodings in checksummed shards,
the stage-1 vectors the two-stage retriever searches, the video ids, the model's identity (export hash,
and registry name/version from ``models:/``) and the input protocol. ``--append`` adds the split's videos
the index lacks as new shards (the index must be this model's); a crash midway leaves the previous
index usable. Serve it: ``PRVR_INDEX=<index> mlflow models serve -m models:/<name>@champion`` (docs/serving.md).
A model or dataset that cannot be read, an --out that exists (without --append) or is no index (with it),
or a corpus of another protocol is one ``error:`` line and exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from search.cli import parser, program
from trainables.errors import InputError


def index_parser() -> argparse.ArgumentParser:
    from trainables.retrieval.defaults import DEFAULT_SHARD_VIDEOS, DEFAULT_STAGE1_VECTORS

    p = parser(program("search/export.py index"), __doc__)
    what = p.add_argument_group("index")
    what.add_argument("--model", required=True, help="an export folder, or models:/<name>@<alias> / "
                      "models:/<name>/<version> of the MLflow Model Registry")
    what.add_argument("--data", required=True, help="the corpus: a dataset folder, synthetic preset or s3:// URI")
    what.add_argument("--split", default="test", help="which split's videos to index")
    what.add_argument("--out", type=Path, required=True, help="the index folder (new, or an index with --append)")
    what.add_argument("--append", action="store_true", help="add the split's videos that the index at --out lacks")
    what.add_argument("--stage1-vectors", type=int, default=DEFAULT_STAGE1_VECTORS, metavar="K",
                      help="stage-1 vectors per video: the clip tokens averaged into K contiguous groups "
                           "(fewer: less memory, lower recall)")
    what.add_argument("--shard-videos", type=int, default=DEFAULT_SHARD_VIDEOS, help="videos per shard")
    where = p.add_argument_group("tracking/storage")
    where.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI of a models:/ --model (default: sqlite:///<working folder>/mlflow.db)")
    where.add_argument("--s3-endpoint", default=None, help="an S3-compatible endpoint for an s3:// --data")
    return p


def registered_version(uri: str, tracking_uri: str) -> tuple[str, str]:
    """(name, version) that ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` points at now."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    rest = uri[len("models:/"):]
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        name, _, version = rest.partition("/")
        return name, str(client.get_model_version(name, version).version)
    except MlflowException as exc:
        raise InputError(f"{uri}: {str(exc.message).splitlines()[0]}") from None


def load_model(spec: str, tracking_uri: str | None) -> tuple[Any, str | None, str | None]:
    """(the loaded export, registered name, version) of ``--model``."""
    from tracking.mlflow_runs import default_tracking_uri
    from trainables.export import MODELS_SCHEME, load_exported

    if spec.startswith(MODELS_SCHEME):
        uri = tracking_uri or default_tracking_uri()
        name, version = registered_version(spec, uri)
        return load_exported(f"{MODELS_SCHEME}{name}/{version}", tracking_uri=uri), name, version
    try:
        return load_exported(spec), None, None
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from None


def load_corpus(spec: str, split: str, protocol: Any, s3_endpoint: str | None) -> Any:
    """The prepared ``split`` of dataset ``spec`` under the model's input protocol."""
    from trainables.data.datasets import resolve_dataset
    from trainables.data.loader import load_split
    from trainables.data.s3 import StorageSettings, is_s3

    if is_s3(spec):
        from trainables.data.remote import fetch_dataset

        folder = fetch_dataset(spec, StorageSettings.from_env(endpoint=s3_endpoint))
    else:
        folder = resolve_dataset(spec).parent
    try:
        return load_split(folder, split, protocol)
    except (KeyError, ValueError) as exc:  # an unknown split, a DatasetError
        raise InputError(f"dataset {spec}: {str(exc).strip(chr(39))}") from None


def run_index(argv: list[str]) -> int:
    args = index_parser().parse_args(argv)  # before torch is imported: --help and usage errors are fast
    from trainables.export import check_target
    from trainables.retrieval.corpus_index import CorpusIndex, append_to_index, build_index, model_identity

    if args.append:
        existing = CorpusIndex.open(args.out)  # an index, before the model and the corpus are loaded
    else:
        check_target(args.out)
    loaded, name, version = load_model(args.model, args.tracking_uri)
    if args.append:
        existing.check_model(loaded)
    corpus = load_corpus(args.data, args.split, loaded.protocol, args.s3_endpoint)
    source = f"{args.data} split {args.split}"
    if args.append:
        added, present = append_to_index(loaded, corpus, args.out, shard_videos=args.shard_videos, source=source)
        index = CorpusIndex.open(args.out)
        print(f"appended {added} videos of {source} to {index.folder} ({present} already there): "
              f"{index.num_videos} videos in {len(index.shards)} shards")
        return 0
    folder = build_index(loaded, corpus, args.out, model_identity(loaded, name, version),
                         stage1_groups=args.stage1_vectors, shard_videos=args.shard_videos, source=source)
    index = CorpusIndex.open(folder)
    sizes = index.size_bytes()
    print(f"indexed {index.num_videos} videos of {source} with {index.identity.describe()} into {folder} "
          f"({sizes['total'] / 2**20:.1f} MiB, stage 1 {sizes['stage1'] / 2**20:.1f} MiB in memory when served)")
    return 0


__all__ = ["index_parser", "load_model", "registered_version", "run_index"]
