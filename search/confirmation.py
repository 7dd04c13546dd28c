"""The confirmation stage of a search: its top configs retrained with further training seeds.

After the search's trials end, the ``top`` best distinct configs among its finished trials (by best val
SumR, ties by trial id) are each retrained with ``seeds`` further training seeds (the search trial's seed
+ 1, + 2, ...), as a second Tune run of the same driver session (``DriverSession.fit`` with ``stage=
CONFIRMATION``): same trainable, resources, retries and MLflow parent run; no scheduler, so every run goes
to its own end. Each trial's config names its source trial (``tag.confirmation_of``) and stage
(``tag.stage``), which become tags of its MLflow child run. Its trials are kept in ``<search's
folder>/confirmation/``; a driver killed during the stage resumes it with ``--resume`` (Tune restores it:
a finished confirmation trial is not run again, a running one continues from its checkpoint). The
champion is then chosen from the stored results (``tracking/champion.py``).
"""

from __future__ import annotations

import json
from typing import Any

from tracking.champion import Selection, selection_table
from tracking.search_results import CONFIRMATION, CONFIRMATION_OF, FinishedSearch, TrialRecord
from trainables.errors import InputError

#: config key of the stage a trial belongs to (a tag of its MLflow run)
STAGE = "tag.stage"


def setting_key(config: dict[str, Any]) -> str:
    """What makes two configs the same config: every setting but the seed and the tags."""
    return json.dumps({k: v for k, v in config.items() if k != "seed" and not k.startswith("tag.")},
                      sort_keys=True, default=str)


def top_configs(search: FinishedSearch, top: int) -> list[TrialRecord]:
    """The search's ``top`` best finished trials with distinct configs (a config sampled twice counts once)."""
    chosen: dict[str, TrialRecord] = {}
    for trial in search.ranked():
        chosen.setdefault(setting_key(trial.config), trial)
        if len(chosen) == top:
            break
    return list(chosen.values())


def plan(search: FinishedSearch, top: int, seeds: int) -> list[dict[str, Any]]:
    """The confirmation trials' configs: each of the ``top`` configs with ``seeds`` further seeds, in rank
    order then seed order."""
    if top < 0 or seeds < 1:
        raise InputError(f"confirmation: top must be >= 0 and seeds >= 1, got top={top}, seeds={seeds}")
    configs = []
    for source in top_configs(search, top):
        own = {k: v for k, v in source.config.items() if not k.startswith("tag.")}
        first = int(own.get("seed", 0))
        configs += [{**own, "seed": first + offset, CONFIRMATION_OF: source.trial_id, STAGE: CONFIRMATION}
                    for offset in range(1, seeds + 1)]
    return configs


def run(session: Any, search: FinishedSearch, top: int, seeds: int, concurrency: int) -> Any | None:
    """Run the confirmation stage of ``search`` in ``session`` (a ``search.driver.DriverSession``) and
    return its ResultGrid (None: no trial of the search finished, nothing to confirm). A stage a killed
    driver left is restored and continued with the plan it started with, whatever ``top`` and ``seeds``
    are now (a stage is never dropped: its trials' MLflow runs would be deleted as unknown)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search import tuning
    from search.searcher import FixedConfigs

    if session.can_resume(CONFIRMATION):
        print(f"\nconfirmation: continuing the stage in {session.storage(CONFIRMATION).uri} (its own plan)",
              flush=True)
        return session.fit(None, resume=True, stage=CONFIRMATION)
    configs = plan(search, top, seeds)
    if not configs:
        print("\nconfirmation: no trial of the search finished, so there is no config to confirm", flush=True)
        return None
    sources = len({c[CONFIRMATION_OF] for c in configs})
    print(f"\nconfirmation: the {sources} best config{'s' if sources != 1 else ''} of the search (--confirm-top "
          f"{top}), each retrained with {seeds} more training seed{'s' if seeds != 1 else ''} (--confirm-seeds "
          f"{seeds}): {len(configs)} trials", flush=True)
    return session.fit(
        tune.TuneConfig(search_alg=ConcurrencyLimiter(FixedConfigs(configs), concurrency), num_samples=len(configs),
                        trial_dirname_creator=tuning.trial_dirname, reuse_actors=tuning.REUSE_ACTORS),
        stage=CONFIRMATION)


def log_selection(tracking: Any, chosen: Selection) -> None:
    """The champion on the search's MLflow parent run: tags (its source trial, the exported run, the
    single-run pick), its seed statistics as metrics, its config and every confirmed config's statistics
    as artifacts ``champion_config.json`` and ``confirmation.json``, and the printed table."""
    from mlflow.entities import Metric, RunTag

    champion = chosen.champion
    val, test = champion.val, champion.test
    metrics = {"champion_val_sumr_mean": val.mean, "champion_val_sumr_std": val.std,
               "champion_val_sumr_ci95_low": val.low, "champion_val_sumr_ci95_high": val.high,
               "champion_test_sumr_mean": test.mean, "champion_test_sumr_std": test.std,
               "champion_seeds": float(val.n)}
    tags = {"champion_trial_id": champion.source.trial_id, "champion_run_trial_id": champion.best_run.trial_id,
            "champion_seeds": ",".join(map(str, champion.seeds)), "single_run_pick": chosen.single_run_pick.trial_id,
            "champion_agrees_with_single_run": str(chosen.agrees).lower()}
    client = tracking.client()
    client.log_batch(tracking.parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()],
                     metrics=[Metric(k, v, 0, 0) for k, v in metrics.items() if v == v])  # NaN: one seed
    client.log_dict(tracking.parent_run_id, {k: v for k, v in champion.source.config.items()
                                             if not k.startswith("tag.")}, "champion_config.json")
    client.log_dict(tracking.parent_run_id, chosen.as_dict(), "confirmation.json")
    client.log_text(tracking.parent_run_id, selection_table(chosen), "confirmation.txt")


__all__ = ["STAGE", "log_selection", "plan", "run", "setting_key", "top_configs"]
