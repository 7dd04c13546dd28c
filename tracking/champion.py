"""The champion of a search: the confirmed config with the highest mean best-val SumR over training seeds.

One run's best val SumR is one draw: the training seed alone moves a config's by about 8 points
(``benchmarks/seed_noise.py``), half the spread between configs, so the search's best run is often a
lucky seed. The confirmation stage (``search/confirmation.py``) retrains the search's top configs with
further seeds; here each confirmed config's finished runs (its search trial and its confirmation trials)
are summarised from the stored results: mean, sample SD and a 95% Student-t interval of best val SumR,
and mean and SD of test SumR (never used to choose). The champion is the config with the highest mean
(ties by the source trial's id); its run with the best val SumR is the one exported. Read by the search's
driver, the report and the export, all from the same stored results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tracking.search_results import FinishedSearch, TrialRecord, compact_config, rank_key
from trainables.errors import InputError

TEST_METRIC = "test_sumr"
RULE = "highest mean best-val SumR over training seeds (the search's own run included)"


@dataclass(frozen=True)
class SeedStats:
    """Values over training seeds: mean, sample SD (ddof=1; 0 for one value) and the 95% Student-t
    interval of the mean (NaN for one value)."""

    values: tuple[float, ...]
    mean: float
    std: float
    n: int
    low: float
    high: float

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci95": [self.low, self.high],
                "values": list(self.values)}


def seed_stats(values: list[float] | tuple[float, ...]) -> SeedStats:
    """:class:`SeedStats` of ``values`` (at least one)."""
    import numpy as np
    from scipy import stats

    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise InputError("no values to summarize")
    mean = float(array.mean())
    if array.size == 1:
        return SeedStats(tuple(array.tolist()), mean, 0.0, 1, math.nan, math.nan)
    std = float(array.std(ddof=1))
    half = float(stats.t.ppf(0.975, array.size - 1)) * std / math.sqrt(array.size)
    return SeedStats(tuple(array.tolist()), mean, std, int(array.size), mean - half, mean + half)


@dataclass(frozen=True)
class ConfirmedConfig:
    """A search trial's config over its seeds: the runs that finished (the search's trial first, then its
    confirmation trials by seed) and, for the seeds without one, a run that did not (failed, cut short)."""

    source: TrialRecord
    runs: tuple[TrialRecord, ...]
    unfinished: tuple[TrialRecord, ...]

    @property
    def val(self) -> SeedStats:
        return seed_stats([run.score for run in self.runs])

    @property
    def test(self) -> SeedStats:
        return seed_stats([float(run.last[TEST_METRIC]) for run in self.runs])

    @property
    def seeds(self) -> list[int]:
        return [_seed(run) for run in self.runs]

    @property
    def best_run(self) -> TrialRecord:
        """The run with the best val SumR (ties by trial id): the weights an export of this config takes."""
        return min(self.runs, key=lambda run: rank_key(run.score, run.trial_id))

    def as_dict(self) -> dict[str, Any]:
        return {"source_trial": self.source.trial_id, "config": compact_config(self.source.config),
                "seeds": self.seeds, "trials": [run.trial_id for run in self.runs],
                "best_run": self.best_run.trial_id, "val_sumr": self.val.as_dict(),
                "test_sumr": self.test.as_dict(), "unfinished": [run.trial_id for run in self.unfinished]}


def _seed(trial: TrialRecord) -> int:
    return int(trial.config.get("seed", 0))


def confirmed_configs(search: FinishedSearch) -> list[ConfirmedConfig]:
    """Every search trial with confirmation trials, by mean best val SumR (best first, ties by id). One run
    per seed: a seed with a finished run ignores other runs of it (a driver killed between a trial's start
    and Tune's next saved state leaves one behind, which the restored stage starts again under a new id)."""
    by_source: dict[str, dict[int, list[TrialRecord]]] = {}
    for trial in search.confirmation:
        if trial.confirmation_of is not None:
            by_source.setdefault(trial.confirmation_of, {}).setdefault(_seed(trial), []).append(trial)
    confirmed = []
    for source in search.trials:
        if source.trial_id not in by_source or not source.finished:
            continue
        runs, unfinished = [source], []
        for seed in sorted(by_source[source.trial_id]):
            done = sorted((t for t in by_source[source.trial_id][seed] if t.finished), key=lambda t: t.trial_id)
            if done:
                runs.append(done[0])
            else:
                unfinished.append(min(by_source[source.trial_id][seed], key=lambda t: t.trial_id))
        confirmed.append(ConfirmedConfig(source, tuple(runs), tuple(unfinished)))
    return sorted(confirmed, key=lambda c: rank_key(c.val.mean, c.source.trial_id))


@dataclass(frozen=True)
class Lead:
    """The champion's lead over the runner-up (val SumR points) and the seed SD it is judged against."""

    points: float
    pooled_std: float

    @property
    def exceeds_spread(self) -> bool:
        return self.points > self.pooled_std

    def describe(self) -> str:
        """``33.9 val SumR points, which exceeds the seed SD (16.4, pooled over the two)``."""
        verdict = "exceeds" if self.exceeds_spread else "does not exceed"
        return (f"{self.points:.1f} val SumR points, which {verdict} the seed SD ({self.pooled_std:.1f}, "
                f"pooled over the two)")


@dataclass(frozen=True)
class Selection:
    """What the confirmation stage decided: the confirmed configs (champion first) and the search trial
    the single-run ranking puts first."""

    confirmed: list[ConfirmedConfig]
    single_run_pick: TrialRecord

    @property
    def champion(self) -> ConfirmedConfig:
        return self.confirmed[0]

    @property
    def agrees(self) -> bool:
        """Whether the single-run ranking picks the champion's config."""
        return self.single_run_pick.trial_id == self.champion.source.trial_id

    def lead(self) -> Lead | None:
        """The champion's lead in mean val SumR over the runner-up against the two configs' pooled seed SD
        (None with a single confirmed config)."""
        if len(self.confirmed) < 2:
            return None
        first, second = self.confirmed[0].val, self.confirmed[1].val
        return Lead(first.mean - second.mean, math.sqrt((first.std ** 2 + second.std ** 2) / 2))

    def as_dict(self) -> dict[str, Any]:
        lead = self.lead()
        return {"rule": RULE, "champion": self.champion.source.trial_id,
                "exported_run": self.champion.best_run.trial_id,
                "single_run_pick": self.single_run_pick.trial_id, "agrees_with_single_run": self.agrees,
                "lead": None if lead is None else {"val_sumr": lead.points, "pooled_seed_std": lead.pooled_std},
                "configs": [c.as_dict() for c in self.confirmed]}


def selection(search: FinishedSearch) -> Selection | None:
    """The search's champion and single-run pick (None when no config was confirmed)."""
    confirmed = confirmed_configs(search)
    return Selection(confirmed, search.best()) if confirmed else None


def interval_text(stats: SeedStats) -> str:
    """``[low, high]`` of the 95% interval, or ``-`` for a single seed."""
    return "-" if math.isnan(stats.low) else f"[{stats.low:.1f}, {stats.high:.1f}]"


def selection_table(chosen: Selection) -> str:
    """The confirmed configs as the search prints them: seeds, val SumR mean +- sd and 95% interval, test
    SumR mean +- sd, the search run's own value and rank; then the champion, the single-run pick and
    whether the champion's lead exceeds the seed spread."""
    header = (f"{'#':<3}{'source trial':<16}{'seeds':<12}{'val SumR mean +- sd':>22}{'95% interval':>18}"
              f"{'test SumR mean +- sd':>23}{'search run':>12}")
    lines = [header]
    for rank, config in enumerate(chosen.confirmed, 1):
        val, test = config.val, config.test
        seeds = ",".join(map(str,
                             config.seeds)) + (f" ({len(config.unfinished)} unfinished)" if config.unfinished else "")
        lines.append(f"{rank:<3}{config.source.trial_id:<16}{seeds:<12}{f'{val.mean:.1f} +- {val.std:.1f}':>22}"
                     f"{interval_text(val):>18}{f'{test.mean:.1f} +- {test.std:.1f}':>23}{config.source.score:>12.1f}")
    champion = chosen.champion
    lines += ["", f"champion: {champion.source.trial_id} ({compact_config(champion.source.config)}); its best seed's "
                  f"run {champion.best_run.trial_id} (seed {champion.best_run.config.get('seed')}) is what export.py "
                  f"exports"]
    pick = chosen.single_run_pick
    lines.append(f"single-run ranking: picks {pick.trial_id} (best val SumR {pick.score:.1f}), "
                 + ("the same config" if chosen.agrees else "a different config"))
    lead = chosen.lead()
    if lead is not None:
        lines.append(f"the champion's lead over #2: {lead.describe()}")
    return "\n".join(lines)


__all__ = ["RULE", "ConfirmedConfig", "Lead", "SeedStats", "Selection", "confirmed_configs", "interval_text",
           "seed_stats", "selection", "selection_table"]
