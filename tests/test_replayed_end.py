"""A trial started again after it had ended (a driver killed after the trial's end report reached the
storage, before Tune's snapshot recorded the trial as ended) repeats its stored end report instead of
training again, and its ``result.json`` holds each report once (trainables/trial.py, search/result_log.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from search.ray_session import ray_session
from search.result_log import ResultLog, has_end_report
from trainables.data.synthetic import ensure_synthetic
from trainables.training.loop import load_data
from trainables.trial_report import COLUMNS, END_REPORT, REPLAYED, epoch_report, final_report

CONFIG = {"backbone": "mssl", "epochs": 2, "batch_size": 16, "lr": 1e-3, "patience": 10, "seed": 3,
          "hidden_size": 32, "n_heads": 4}


def _metrics(sumr: float) -> dict[str, float]:
    return {**{c: sumr / 8 for c in COLUMNS}, "SumR": sumr}


#: an end report no training of CONFIG on tiny data produces (SumR 123.456 everywhere)
PLANTED = final_report(2, _metrics(123.456), _metrics(123.456), _metrics(123.456), 2, False)
EPOCH_1 = epoch_report(1, _metrics(100.0), {"total": 1.0}, 1, 100.0)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with ray_session(None, num_cpus=1):
        yield


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_trial_with_a_stored_end_report_repeats_it_and_does_not_train(tmp_path: Path, local_ray: None) -> None:
    from ray import tune

    from search import tuning

    trial_folder = tmp_path / "replay" / "trial_planted"
    trial_folder.mkdir(parents=True)
    (trial_folder / END_REPORT).write_text(json.dumps(PLANTED))
    data = load_data(ensure_synthetic("tiny"))
    results = tune.Tuner(
        tuning.trainable(data, 1, 0), param_space=CONFIG,
        tune_config=tune.TuneConfig(trial_dirname_creator=lambda trial: "trial_planted"),
        run_config=tune.RunConfig(name="replay", storage_path=str(tmp_path), callbacks=[ResultLog()], verbose=0),
    ).fit()
    result = results[0]
    assert result.error is None
    assert result.metrics["test_sumr"] == pytest.approx(123.456) and result.metrics[REPLAYED] is True
    assert result.checkpoint is None  # no epoch ran: every epoch reports a checkpoint
    stored = _lines(trial_folder / "result.json")
    # the file lacked the end report (the driver died before writing it): written once, without the mark
    assert len(stored) == 1 and REPLAYED not in stored[0]
    assert {k: stored[0][k] for k in PLANTED} == PLANTED


def _trial(tmp_path: Path, remote_lines: list[dict[str, Any]], staged_lines: list[dict[str, Any]] | None = None) -> Any:
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial

    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name=f"exp-{tmp_path.name}")
    trial = Trial("run_trial", stub=True, trial_id="x", storage=storage)
    trial.init_local_path()  # names the trial's folder; Tune makes its staging folder before its loggers see it
    assert trial.storage is not None
    remote = Path(trial.storage.trial_fs_path)
    remote.mkdir(parents=True)
    (remote / "result.json").write_text("".join(json.dumps(line) + "\n" for line in remote_lines))
    if staged_lines is not None:  # a killed driver's copy in the same staging folder (a cluster's Ray session)
        Path(str(trial.local_path), "result.json").write_text("".join(json.dumps(line) + "\n" for line in staged_lines))
    return trial


def test_a_replayed_end_report_is_not_written_twice_and_stored_reports_are_kept(tmp_path: Path,
                                                                                local_ray: None) -> None:
    # resumed without a checkpoint on record (Ray's own logger would start an empty result.json)
    trial = _trial(tmp_path / "ended", [EPOCH_1, PLANTED])
    log = ResultLog()
    log.log_trial_start(trial)
    log.log_trial_result(1, trial, {**PLANTED, REPLAYED: True})
    log.log_trial_end(trial)
    local = Path(trial.local_path, "result.json")
    assert _lines(local) == [EPOCH_1, PLANTED]
    assert has_end_report(local)

    # the driver died before it wrote the end report: the replay writes it, unmarked, after what was stored
    trial = _trial(tmp_path / "unended", [EPOCH_1])
    log = ResultLog()
    log.log_trial_start(trial)
    log.log_trial_result(1, trial, {**PLANTED, REPLAYED: True})
    local = Path(trial.local_path, "result.json")
    assert _lines(local) == [EPOCH_1, PLANTED]

    # a killed driver's staged copy holds an epoch it never uploaded (the trial runs it again): the storage's wins
    epoch_2 = epoch_report(2, _metrics(110.0), {"total": 0.9}, 2, 110.0)
    stale = _trial(tmp_path / "stale", [EPOCH_1], staged_lines=[EPOCH_1, epoch_2])
    stale_log = ResultLog()
    stale_log.log_trial_start(stale)
    stale_log.log_trial_result(2, stale, epoch_2)
    stale_log.log_trial_end(stale)
    assert _lines(Path(str(stale.local_path), "result.json")) == [EPOCH_1, epoch_2]

    # an epoch run again from an older checkpoint is not written twice; a new one is appended as Ray's logger does
    epoch_3 = epoch_report(3, _metrics(120.0), {"total": 0.8}, 3, 120.0)
    rerun = _trial(tmp_path / "rerun", [EPOCH_1, epoch_2])
    rerun_log = ResultLog()
    for report in (epoch_2, epoch_3):
        rerun_log.log_trial_result(report["epoch"], rerun, report)
    rerun_log.log_trial_end(rerun)
    assert _lines(Path(str(rerun.local_path), "result.json")) == [EPOCH_1, epoch_2, epoch_3]
    assert not has_end_report(Path(str(rerun.local_path), "result.json"))
    log.log_trial_end(trial)
