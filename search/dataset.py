"""Datasets on the command line: generate the synthetic benchmark, convert release layouts, check.

    python search/dataset.py synth --preset small --out data/small
    python search/dataset.py convert --layout msrl --root /data --collection tvr \
        --visual-feature i3d_resnet --out data/tvr
    python search/dataset.py convert --layout amdnet --root /data --collection tvr --out data/tvr-clip
    python search/dataset.py export-msrl --dataset data/small --root /tmp/msrl --collection small
    python search/dataset.py verify data/tvr
    python search/dataset.py info data/tvr
    python search/dataset.py upload data/tvr s3://bucket/datasets/tvr [--s3-endpoint http://host:port]
    python search/dataset.py info s3://bucket/datasets/tvr
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from search.cli import HelpFormatter, program, run_main
from search.cli import parser as cli_parser
from trainables.data.importers import LAYOUTS, export_msrl
from trainables.data.manifest import Manifest, read_manifest
from trainables.data.s3 import StorageSettings, is_s3
from trainables.data.split_overlap import manifest_overlap
from trainables.data.store import FeatureStore
from trainables.data.synthetic import PRESETS, ensure_synthetic, generate
from trainables.errors import InputError


def _parser() -> argparse.ArgumentParser:
    parser = cli_parser(program("search/dataset.py"), __doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)

    synth = command("synth", "generate a synthetic PRVR benchmark")
    synth.add_argument("--preset", choices=sorted(PRESETS), default="small", help="the benchmark's size and seed")
    synth.add_argument("--out", type=Path, help="output folder (default: the preset's cache folder)")
    synth.add_argument("--seed", type=int, help="override the preset's seed")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")

    convert = command("convert", "convert a release layout into shards")
    release, out = convert.add_argument_group("release (input)"), convert.add_argument_group("dataset (output)")
    release.add_argument("--layout", choices=sorted(LAYOUTS), required=True,
                         help="msrl: MS-SL/GMMFormer release (RoBERTa HDF5 + BigFile); amdnet: AMDNet CLIP HDF5")
    release.add_argument("--root", type=Path, required=True, help="folder that holds <collection>/")
    release.add_argument("--collection", required=True, help="e.g. tvr, activitynet, charades")
    release.add_argument("--visual-feature", help="msrl only: FeatureData/<name>, e.g. i3d_resnet")
    out.add_argument("--out", type=Path, required=True, help="the dataset folder to write")
    release.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="the splits to convert")
    out.add_argument("--dtype", choices=["float16", "float32"], default="float32", help="the features' dtype")
    out.add_argument("--videos-per-shard", type=int, default=1000, help="videos in each HDF5 file")
    out.add_argument("--queries-per-shard", type=int, default=5000, help="queries in each HDF5 file")
    out.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    out.add_argument("--val-from-train", type=float, default=None, metavar="FRACTION",
                     help="carve a video-disjoint val split from this fraction of train's videos (each with "
                     "all its queries) instead of reading the release's val file, which is often the test set")
    out.add_argument("--val-seed", type=int, default=0, help="seed of the videos --val-from-train picks")

    export = command("export-msrl", "write a dataset in the MS-SL release layout (parity runs)")
    export.add_argument("--dataset", type=Path, required=True, help="the dataset folder to export")
    export.add_argument("--root", type=Path, required=True, help="folder to write <collection>/ into")
    export.add_argument("--collection", required=True, help="the release's collection name")
    export.add_argument("--visual-feature", default="synthetic", help="its FeatureData/<name>")

    verify = command("verify", "check every shard's size and sha256 against the manifest "
                     "(an s3:// dataset is fetched into this node's cache, which checks every file)")
    verify.add_argument("dataset", help="a dataset folder or s3://bucket/prefix")
    _s3_options(verify)

    info = command("info", "print a dataset's manifest summary")
    info.add_argument("dataset", help="a dataset folder or s3://bucket/prefix")
    _s3_options(info)

    upload = command("upload", "upload a dataset to s3://bucket/prefix (shards first, manifest last)")
    upload.add_argument("dataset", type=Path, help="the local dataset folder")
    upload.add_argument("uri", help="s3://bucket/prefix")
    _s3_options(upload)
    return parser


def _s3_options(parser: argparse.ArgumentParser) -> None:
    storage = parser.add_argument_group("storage")
    storage.add_argument("--s3-endpoint", default=None, metavar="URL",
                         help="an S3-compatible endpoint (http://host:port) "
                         "instead of AWS (default: $AWS_ENDPOINT_URL_S3 or AWS)")
    storage.add_argument("--region", default=None, metavar="R",
                         help="S3 region (default: $AWS_REGION or the AWS default)")


def _settings(args: argparse.Namespace) -> StorageSettings:
    return StorageSettings.from_env(endpoint=args.s3_endpoint, region=args.region)


def _convert(args: argparse.Namespace) -> Path:
    options = dict(splits=tuple(args.splits), dtype=args.dtype, videos_per_shard=args.videos_per_shard,
                   queries_per_shard=args.queries_per_shard, overwrite=args.overwrite,
                   val_from_train=args.val_from_train, val_seed=args.val_seed)
    if args.layout == "msrl":
        if not args.visual_feature:
            raise InputError("--visual-feature is required for --layout msrl (e.g. i3d_resnet)")
        options["visual_feature"] = args.visual_feature
    return LAYOUTS[args.layout](args.root, args.collection, args.out, **options)


def _synth(args: argparse.Namespace) -> Path:
    if args.out is None and args.seed is None:
        return ensure_synthetic(args.preset)
    if args.out is None:
        raise InputError("--seed needs --out (the cache holds the presets as they are)")
    config = PRESETS[args.preset]
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    return generate(config, args.out, overwrite=args.overwrite)


def describe(location: Path | Manifest) -> str:
    """A few lines that say what a dataset (its folder or its manifest) holds, and whether val overlaps test."""
    m = location if isinstance(location, Manifest) else read_manifest(location)
    overlap = manifest_overlap(m, None if isinstance(location, Manifest) else location)
    lines = [f"{m.name}: {m.num_videos} videos ({m.num_frames} frames, {m.video_dim}-d), "
             f"{m.num_queries} queries ({m.num_tokens} tokens, {m.query_dim}-d), {m.dtype}, "
             f"{len(m.shards)} files, l2_normalize={m.l2_normalize}"]
    lines += [f"  {name}: {info.num_videos} videos, {info.num_queries} queries" for name, info in m.splits.items()]
    carved = m.source.get("val_from_train")
    if carved:
        lines.append(f"  val carved from train: {carved['videos']} of {carved['train_videos_before']} videos "
                     f"(fraction {carved['fraction']}, seed {carved['seed']})")
    if overlap is not None:
        lines.append(f"  val/test overlap: {overlap.describe()}"
                     + (" (selecting on val selects on test)" if overlap else " (disjoint)"))
    elif "val" in m.splits and "test" in m.splits:
        lines.append("  val/test overlap: not recorded in this manifest (checked when a trial loads the data)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "synth":
        print(f"wrote {_synth(args)}")
    elif args.command == "convert":
        out = _convert(args)
        print(f"wrote {out}\n{describe(out)}")
    elif args.command == "export-msrl":
        print(f"wrote {export_msrl(args.dataset, args.root, args.collection, visual_feature=args.visual_feature)}")
    elif args.command == "verify" and is_s3(args.dataset):
        from trainables.data.remote import fetch_dataset

        folder = fetch_dataset(args.dataset, _settings(args))
        print(f"ok: every file of {args.dataset} matches its manifest (cached in {folder})")
    elif args.command == "verify":
        FeatureStore(Path(args.dataset)).verify()
        print(f"ok: every file of {args.dataset} matches its manifest")
    elif args.command == "info" and is_s3(args.dataset):
        from trainables.data.remote import read_remote_manifest

        print(describe(read_remote_manifest(args.dataset, _settings(args))))
    elif args.command == "info":
        print(describe(Path(args.dataset)))
    elif args.command == "upload":
        _upload(args)
    return 0


def _upload(args: argparse.Namespace) -> None:
    """Upload, then say where the dataset is and how a search uses it."""
    from trainables.data.remote import upload_dataset

    settings = _settings(args)
    manifest = read_manifest(args.dataset)
    uri = upload_dataset(args.dataset, args.uri, settings)
    size = sum(shard.bytes for shard in manifest.shards)
    endpoint = f" --s3-endpoint {settings.endpoint}" if settings.endpoint else ""
    print(f"uploaded {manifest.name} ({len(manifest.shards)} files, {size / 1e6:.1f} MB) to {settings.describe()}\n"
          f"manifest: {uri}\n"
          f"use it:   python search/run.py --data {uri}{endpoint} ...")


def entry() -> int:
    """The console script ``prvr-dataset``: ``main`` as ``python search/dataset.py`` runs it (one-line errors)."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(run_main(main))
