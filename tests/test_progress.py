"""The per-trial progress lines of a search (search/progress.py): their format, the ETA's arithmetic and the
search best as a running max, on Trial-like objects (the real search's lines: tests/test_search.py)."""

from __future__ import annotations

from types import SimpleNamespace

from search.progress import SearchProgress, format_duration
from tracking.search_results import trial_label


def fake_trial(trial_id: str, status: str, epochs: int, last: dict | None = None, backbone: str = "mssl",
               **plugins: bool) -> SimpleNamespace:
    """What SearchProgress reads of a Tune Trial."""
    return SimpleNamespace(trial_id=trial_id, status=status, config={"backbone": backbone, "epochs": epochs, **plugins},
                           last_result=last or {})


def epoch_result(epoch: int, val: float, best: float, seconds: float) -> dict:
    return {"epoch": epoch, "val_sumr": val, "best_val_sumr": best, "time_total_s": seconds}


def test_a_line_says_the_epoch_the_scores_and_the_eta_of_the_search():
    stopped = fake_trial("a", "TERMINATED", 3, epoch_result(1, 150.0, 150.0, 10.0))
    finished = fake_trial("b", "TERMINATED", 3, {**epoch_result(3, 220.0, 232.1, 36.0), "finished": True})
    other = fake_trial("c", "RUNNING", 3, epoch_result(1, 180.0, 180.0, 12.0))
    this = fake_trial("d", "RUNNING", 3, epoch_result(1, 170.0, 170.0, 13.0), ral=True)
    progress = SearchProgress(total=6, concurrency=2)
    line = progress.line([stopped, finished, other, this], this, epoch_result(2, 190.4, 201.2, 26.0))
    # 2 done, 2 running, 6 - 2 - 2 = 2 not started; E = mean(1, 3) = 2 epochs a trial; remaining epochs:
    # (3 - 1) + (3 - 2) + 2 x 2 = 7; seconds per epoch: (10 + 36 + 12 + 26) / (1 + 3 + 1 + 2) = 12; 2 at once
    eta = 7 * 12 / 2
    assert eta == 42
    assert line == (f"[2/6 done, 2 running, ETA 42s] trial {trial_label(this.config, 'd')}: epoch 2/3, val SumR 190.4, "
                    "best 201.2 (search best 232.1)")
    assert trial_label(this.config, "d") == "mssl+ral-d"


def test_before_any_trial_ended_a_trial_is_expected_to_run_its_max_epochs():
    this = fake_trial("x", "RUNNING", 4)
    progress = SearchProgress(total=3, concurrency=2)
    line = progress.line([this], this, epoch_result(1, 100.0, 100.0, 30.0))
    # remaining: (4 - 1) + 2 not started x 4 = 11 epochs of 30 s, 2 at once: 165 s
    assert line.startswith(f"[0/3 done, 1 running, ETA {format_duration(11 * 30 / 2)}] trial mssl-x: epoch 1/4, ")
    assert format_duration(11 * 30 / 2) == "2m45s"


def test_the_last_trial_runs_alone_whatever_the_concurrency():
    ended = [fake_trial(t, "TERMINATED", 2, epoch_result(2, 100.0, 100.0, 20.0)) for t in ("a", "b")]
    this = fake_trial("c", "RUNNING", 2)
    line = SearchProgress(total=3, concurrency=4).line([*ended, this], this, epoch_result(1, 90.0, 90.0, 10.0))
    # 1 epoch left, of (20 + 20 + 10) / (2 + 2 + 1) = 10 s, on one slot (not 4): 10 s
    assert line.startswith("[2/3 done, 1 running, ETA 10s] trial mssl-c: epoch 1/2, val SumR 90.0, best 90.0 ")


def test_the_search_best_is_the_running_max_of_every_result_and_final_reports_print_nothing():
    progress = SearchProgress(total=2, concurrency=2)
    a, b = fake_trial("a", "RUNNING", 3), fake_trial("b", "RUNNING", 3)
    shown = []
    for trial, result in [(a, epoch_result(1, 120.0, 120.0, 5.0)), (b, epoch_result(1, 140.0, 140.0, 5.0)),
                          (a, epoch_result(2, 110.0, 120.0, 10.0)),  # a worse epoch: bests stay
                          (b, {**epoch_result(1, 140.0, 150.5, 6.0), "finished": True}),  # a final report
                          (a, epoch_result(3, 130.0, 130.0, 15.0))]:
        line = progress.line([a, b], trial, result)
        trial.last_result = result
        shown.append(line and line.rsplit("(search best ", 1)[1].rstrip(")"))
    assert shown == ["120.0", "140.0", "140.0", None, "150.5"]
    assert progress.search_best == 150.5
    error = {"trial_error": "NonFiniteLoss: epoch 1", "finished": True, "best_val_sumr": float("-inf")}
    assert progress.line([a, b], b, error) is None and progress.search_best == 150.5


def test_durations_read_as_a_person_writes_them():
    assert [format_duration(s) for s in (0, 35, 59.6, 250, 3600, 3720, None, float("inf"))] == \
        ["0s", "35s", "1m00s", "4m10s", "1h00m", "1h02m", "-", "-"]
