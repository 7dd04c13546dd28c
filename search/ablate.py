"""Ablate components of a config (plugins, or any boolean/categorical setting) with seeds and statistics.

    python search/ablate.py --base base.yaml --components ral msc --seeds 3
    python search/ablate.py --from-search ral-1 --components ral.csa ral.k=1,6 --design factorial
    python search/ablate.py --base base.yaml --components ral --backbones mssl gmmformer
    python search/ablate.py --preset ral-gmmformer2-tvr --components ral.csa --set hidden_size=128

Every cell x seed runs as a Ray Tune trial, with the resources, storage, retries and MLflow logging of a
search (one parent run for the ablation, one child per cell x seed, tagged ``cell`` and ``ablation``);
every setting other than the toggled ones is held at the base. The output, per backbone: each cell's
test R@1/R@5/R@10/R@100/SumR as mean +- std over seeds, and its SumR difference to the base cell with
95% intervals and p-values from two paired tests (``search/ablation_stats.py``): t / Wilcoxon over
seeds, and the paired bootstrap over test queries. Written as Markdown and CSV and a bar chart with
error bars (PNG) into ``--out``, printed, and logged as artifacts of the parent run. Everything is
checked before Ray starts (each cell's model is built once on each backbone); a bad input is one line.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from search.cli import cluster_options, parser, program, resource_options, run_main
from search.ray_session import LOCAL_RAY_ENV
from search.ray_target import ray_target
from spaces.ablation import DESIGNS, Cell, design, parse_component
from tracking.storage import check_name
from trainables.data.s3 import StorageSettings
from trainables.data.split_overlap import ALLOW_FLAG
from trainables.errors import InputError

COLUMNS = ("R@1", "R@5", "R@10", "R@100", "SumR")


def _parser() -> argparse.ArgumentParser:
    p = parser(program("search/ablate.py"), __doc__)
    ablation, data = p.add_argument_group("ablation"), p.add_argument_group("data")
    resources, storage = p.add_argument_group("resources"), p.add_argument_group("storage/tracking")
    cluster = p.add_argument_group("cluster")
    base = ablation.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", type=Path, help="YAML file of the base config (flat keys, as a trial's config)")
    base.add_argument("--from-search", metavar="NAME", help="the config of search NAME in --storage: its champion "
                      "over seeds (search/run.py's confirmation stage), else its best finished trial")
    base.add_argument("--preset", metavar="NAME", help="a release preset (trainables/presets.py) as the base config")
    ablation.add_argument("--components", nargs="+", required=True, metavar="C",
                   help="plugin or boolean setting (ral, ral.csa) or key=off,on (ral.k=1,6)")
    ablation.add_argument("--design", default="one-at-a-time", choices=DESIGNS,
                          help="the cells: one-at-a-time is the base, each component on alone, all on, and all but "
                          "each one; factorial is every combination")
    ablation.add_argument("--backbones", nargs="+", default=None,
                          help="backbones to ablate on (default: the base config's backbone)")
    ablation.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every cell")
    ablation.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="override base values")
    data.add_argument("--data", default="small", help="synthetic preset, dataset folder or s3:// manifest URI")
    ablation.add_argument("--name", default=None, help="ablation name (default: ablation-<date>-<time>)")
    storage.add_argument("--storage", default="prvr-results",
                         help="where results and checkpoints go: a local folder or s3://bucket/prefix")
    storage.add_argument("--s3-endpoint", default=None,
                         help="an S3-compatible endpoint (http://host:port) instead of AWS, for s3:// storage and data")
    ablation.add_argument("--out", type=Path, default=None, help="folder of the tables and chart (default: ./<name>)")
    resource_options(resources)  # --concurrency, --cpus-per-trial, --gpus-per-trial, --max-failures
    cluster_options(cluster)  # --ray-address
    storage.add_argument("--tracking-uri", default=None,
                         help="MLflow tracking URI (default: sqlite:///<working folder>/mlflow.db); http://host:port "
                         "for a server")
    storage.add_argument("--experiment", default="prvr", help="MLflow experiment of the ablation's runs")
    ablation.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the test queries")
    data.add_argument(ALLOW_FLAG, action="store_true",
                   help="accept a val split that shares queries or videos with test (a paper's protocol; the MLflow "
                   "parent run is tagged prvr.val_test_overlap)")
    return p


def base_config(args: argparse.Namespace, settings: StorageSettings | None) -> dict[str, Any]:
    """The base config: a release preset, a YAML file (which may name a ``preset``) or the best trial of a
    finished search, with ``--set`` applied (``--set`` wins; the seed is the cell's, 0..N-1)."""
    from trainables.presets import apply_preset, get_preset
    from trainables.training.config import parse_assignments

    if getattr(args, "preset", None) is not None:
        raw = dict(get_preset(args.preset).values)
    elif args.base is not None:
        try:
            raw = yaml.safe_load(args.base.read_text())
        except OSError as exc:
            raise InputError(f"--base {args.base}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise InputError(f"--base {args.base}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict) or ("backbone" not in raw and "preset" not in raw):
            raise InputError(f"--base {args.base}: a mapping of config keys with a 'backbone' (or 'preset') is "
                             f"expected")
    else:
        from tracking.champion import selection
        from tracking.search_results import load_search

        search = load_search(args.storage, args.from_search, settings)
        chosen = selection(search)  # the champion over seeds when the search confirmed its best configs
        source = chosen.champion.source if chosen is not None else search.best()
        print(f"base: trial {source.trial_id} of search {args.from_search} "
              f"({'its champion over seeds' if chosen is not None else 'its best single run'})", flush=True)
        raw = dict(source.config)
    raw = apply_preset(raw)  # a base YAML may name a preset too: its own keys override it
    raw = {k: v for k, v in raw.items() if k != "seed" and not k.startswith("tag.")}
    return {**raw, **parse_assignments(args.set)}


def cell_configs(base: dict[str, Any], backbone: str, cell: Cell) -> dict[str, Any]:
    """``base`` on ``backbone`` (the base backbone's own options dropped on another one) with the cell's
    settings; a plugin toggled off loses its settings."""
    from trainables.training.config import TrainConfig

    config = dict(base)
    if backbone != base["backbone"]:
        own = TrainConfig.from_dict(base).options
        config = {k: v for k, v in config.items() if k not in own}
    config["backbone"] = backbone
    for key, value in cell.settings:
        if value is False:
            config = {k: v for k, v in config.items() if not k.startswith(f"{key}.")}
        config[key] = value
    return config


def plan(base: dict[str, Any], cells: list[Cell], backbones: list[str], seeds: int, dims: Any,
         name: str) -> list[dict[str, Any]]:
    """Every backbone x cell x seed config; each (backbone, cell) model is built once to validate it."""
    from trainables.training.config import TrainConfig

    configs = []
    for backbone in backbones:
        for cell in cells:
            config = cell_configs(base, backbone, cell)
            try:
                TrainConfig.from_dict({**config, "seed": 0}).build_model(dims)
            except (ValueError, TypeError, KeyError) as exc:
                raise InputError(f"cell {cell.name} on {backbone}: {str(exc).splitlines()[0]}") from None
            configs += [{**config, "seed": seed, "tag.ablation": name, "tag.cell": cell.name}
                        for seed in range(seeds)]
    return configs


def _fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def tables(runs: list[dict[str, Any]], cells: list[Cell], backbones: list[str], resamples: int
           ) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown tables (one per backbone) and the CSV rows of an ablation's finished runs; each run:
    backbone, cell, seed, test metrics (``R@1``..``SumR``) and per-query ``ranks``."""
    import numpy as np  # numpy, torch, Ray and MLflow inside the functions: --help imports none of them

    from search.ablation_stats import bootstrap_difference, per_query_metric, seed_difference, summarize

    lines, rows = [], []
    for backbone in backbones:
        by_cell = {c.name: sorted((r for r in runs if r["backbone"] == backbone and r["cell"] == c.name),
                                  key=lambda r: r["seed"]) for c in cells}
        base = by_cell[cells[0].name]
        seeds = sorted({r["seed"] for r in base})
        lines += [f"### {backbone}: test metrics, mean +- std over {len(seeds)} seeds ({', '.join(map(str, seeds))})",
                  "",
                  "| cell | " + " | ".join(COLUMNS) + " | dSumR [95% CI] (t over seeds) | p (Wilcoxon, seeds) "
                  "| dSumR [95% CI] (paired bootstrap, queries) | p (bootstrap) |",
                  "|---" * (len(COLUMNS) + 5) + "|"]
        for cell in cells:
            found = by_cell[cell.name]
            if not found:
                lines.append(f"| {cell.name} | " + " | ".join("-" for _ in COLUMNS) + " | - | - | - | - |")
                continue
            summaries = {c: summarize([r[c] for r in found]) for c in COLUMNS}
            row = {"backbone": backbone, "cell": cell.name, "seeds": len(found),
                   **{f"{c} mean": summaries[c].mean for c in COLUMNS},
                   **{f"{c} std": summaries[c].std for c in COLUMNS}}
            cells_text = [f"{summaries[c].mean:.1f} +- {summaries[c].std:.1f}" for c in COLUMNS]
            paired = {r["seed"]: r for r in base}
            common = [r for r in found if r["seed"] in paired]
            if cell.name == cells[0].name or not common:
                lines.append(f"| {cell.name} | " + " | ".join(cells_text) + " | (base) | | | |")
                rows.append(row)
                continue
            differences = {}
            for column in COLUMNS:  # every metric in the CSV; SumR in the Markdown table
                seed_diff = seed_difference([r[column] for r in common], [paired[r["seed"]][column] for r in common])
                per_query = bootstrap_difference(
                    np.mean([per_query_metric(r["ranks"], column) for r in common], axis=0),
                    np.mean([per_query_metric(paired[r["seed"]]["ranks"], column) for r in common], axis=0),
                    resamples=resamples)
                differences[column] = (seed_diff, per_query)
                prefix = f"d{column}"
                row.update({prefix: seed_diff.mean, f"{prefix} t low": seed_diff.low,
                            f"{prefix} t high": seed_diff.high,
                            f"{prefix} p wilcoxon": seed_diff.p, f"{prefix} bootstrap low": per_query.low,
                            f"{prefix} bootstrap high": per_query.high, f"{prefix} p bootstrap": per_query.p})
            seed_diff, per_query = differences["SumR"]
            rows.append(row)
            lines.append(f"| {cell.name} | " + " | ".join(cells_text) +
                         f" | {seed_diff.mean:+.1f} [{_fmt(seed_diff.low)}, {_fmt(seed_diff.high)}]"
                         f" | {_fmt(seed_diff.p, 3)} | {per_query.mean:+.1f} [{per_query.low:.1f}, "
                         f"{per_query.high:.1f}]"
                         f" | {per_query.p:.3f} |")
        lines.append("")
    num_seeds = max((r["seed"] for r in runs), default=0) + 1
    lines.append("Tests: t interval and two-sided exact Wilcoxon signed-rank test on the per-seed SumR differences "
                 f"(with {num_seeds} seeds its smallest possible p is {2 / 2 ** num_seeds:.3f}); paired bootstrap over "
                 f"test queries of the per-query SumR averaged over seeds ({resamples} resamples, percentile "
                 "interval, two-sided p).")
    return "\n".join(lines), rows


def bar_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """SumR mean per cell with std error bars, one panel per backbone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    fig, axes = plt.subplots(1, len(backbones), figsize=(4 + 1.2 * len(rows) / len(backbones), 3.5 * 1),
                             squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        mine = [r for r in rows if r["backbone"] == backbone]
        ax.bar(range(len(mine)), [r["SumR mean"] for r in mine], yerr=[r["SumR std"] for r in mine], capsize=4)
        ax.set_xticks(range(len(mine)), [r["cell"] for r in mine], rotation=30, ha="right")
        ax.set_title(backbone)
        ax.set_ylabel("test SumR (mean +- std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _collect(results: Any, tracking: Any) -> list[dict[str, Any]]:
    """Each finished trial's backbone, cell, seed, test metrics and per-query ranks (from its child run)."""
    import json
    import tempfile

    import numpy as np

    from tracking.mlflow_runs import children
    from trainables.trial_report import TEST_RANKS, is_finished, metric_key

    runs = {r.data.tags.get("prvr.trial_id"): r for r in children(tracking)}
    out = []
    for result in results:
        metrics, config = dict(result.metrics or {}), dict(result.config or {})
        run = runs.get(metrics.get("trial_id"))
        if result.error is not None or not is_finished(metrics) or run is None:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            ranks = json.loads(Path(tracking.client().download_artifacts(run.info.run_id, TEST_RANKS,
                                                                         scratch)).read_text())
        out.append({"backbone": config["backbone"], "cell": config["tag.cell"], "seed": config["seed"],
                    "ranks": np.asarray(ranks["ranks"]), **{c: float(metrics[metric_key("test", c)]) for c in COLUMNS}})
    return out


def ablate(args: argparse.Namespace) -> int:
    target = ray_target(args)  # --local, --ray-address, RAY_ADDRESS or this node's cluster: before ray is imported
    args.ray_address = target.address
    if args.ray_address is None:
        os.environ.update(LOCAL_RAY_ENV)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.seeds < 1 or args.concurrency < 1 or args.bootstrap < 100:
        raise InputError("--seeds and --concurrency must be >= 1 and --bootstrap >= 100")
    from search import tuning
    from search.driver import driver_session, prepare, s3_settings
    from tracking.mlflow_runs import set_trials_view, ui_lines

    resources = tuning.ray_resources(args.ray_address, args.concurrency, args.cpus_per_trial, args.gpus_per_trial)
    name = check_name(f"ablation-{time.strftime('%Y%m%d-%H%M%S')}" if args.name is None else args.name)
    out = (args.out or Path(name)).resolve()
    if out.exists():
        raise InputError(f"--out {out} already exists; choose another folder")
    base = base_config(args, s3_settings(args.storage, args.data, args.s3_endpoint))
    components = [parse_component(spec) for spec in args.components]
    cells = design(components, args.design)
    inputs = prepare(name, data=args.data, storage=args.storage, s3_endpoint=args.s3_endpoint,
                     allow_val_test_overlap=args.allow_val_test_overlap,
                     ray_address=args.ray_address)
    storage, manifest = inputs.storage, inputs.manifest

    from trainables.models.base import Dims

    # every cell's model is built before Ray starts, so a bad cell fails without a Ray session
    backbones = args.backbones or [base["backbone"]]
    configs = plan(base, cells, backbones, args.seeds, Dims(manifest.video_dim, manifest.query_dim), name)
    print(f"ablation {name}: {len(cells)} cells ({', '.join(c.name for c in cells)}) x {len(backbones)} backbones "
          f"x {args.seeds} seeds = {len(configs)} trials, every model built once", flush=True)
    # then Ray: the trial workers it starts ahead warm up while this driver loads the data and opens the
    # parent run (search/warm_workers.py)
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.searcher import FixedConfigs

    with driver_session(inputs, kind="ablation", ray_address=args.ray_address, resources=resources,
                        tracking_uri=args.tracking_uri, experiment=args.experiment,
                        params={**vars(args), "components": " ".join(args.components)},
                        tags={"prvr.ablation": name}, cpus_per_trial=args.cpus_per_trial,
                        gpus_per_trial=args.gpus_per_trial, max_failures=args.max_failures,
                        ray_found=target.found) as session:
        tracking = session.tracking
        tracking.client().log_dict(tracking.parent_run_id, {"base": base,
                                                            "cells": {c.name: c.as_dict() for c in cells}},
                                   "ablation.json")
        set_trials_view(tracking, ["backbone", "seed"], tags=("cell",))
        results = session.fit(
            tune.TuneConfig(search_alg=ConcurrencyLimiter(FixedConfigs(configs), args.concurrency),
                            num_samples=len(configs), trial_dirname_creator=tuning.trial_dirname,
                            reuse_actors=tuning.REUSE_ACTORS))
        if session.interrupted:  # Ctrl-C: the parent run ends KILLED (tag interrupted), exit code 130
            session.end_trial_runs(results)
            raise KeyboardInterrupt("the ablation was interrupted; an ablation has no --resume: run it again")
    session.end_trial_runs(results)
    runs = _collect(results, tracking)
    markdown, rows = tables(runs, cells, backbones, args.bootstrap)
    out.mkdir(parents=True)
    (out / "ablation.md").write_text(f"# Ablation {name}\n\n{markdown}\n")
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    (out / "ablation.csv").write_text(buffer.getvalue())
    if rows:
        bar_chart(rows, out / "ablation.png")
    for path in sorted(out.iterdir()):
        tracking.client().log_artifact(tracking.parent_run_id, str(path))
    failed = len(configs) - len(runs)
    tracking.client().set_terminated(tracking.parent_run_id, "FINISHED" if not failed else "FAILED")
    print(f"\n{markdown}\n\ntables and chart: {out}\nresults and checkpoints: {storage.uri}")
    print(ui_lines(tracking, args.experiment))
    if failed:
        print(f"error: {failed} of {len(configs)} trials did not finish", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return ablate(_parser().parse_args(argv))


def entry() -> int:
    """The console script ``prvr-ablate``: ``main`` as ``python search/ablate.py`` runs it (one-line errors)."""
    return run_main(main)


if __name__ == "__main__":
    sys.exit(run_main(main))
