"""The trial <-> driver report protocol (trainables/trial_report.py): standard library only, its builders and
readers agree, and no other module spells its keys."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

from trainables.trial_report import (
    COLUMNS,
    FINISHED,
    METRIC,
    TIME_ATTR,
    TRIAL_ERROR,
    epoch_metrics,
    epoch_report,
    error_report,
    final_metrics,
    final_report,
    is_failed,
    is_finished,
    split_tags,
    stop_tags,
    stopped_by_scheduler,
    trial_status,
)

ROOT = Path(__file__).resolve().parents[1]
VAL = {"R@1": 10.0, "R@5": 30.0, "R@10": 50.0, "R@100": 90.0, "SumR": 180.0}
BEST = {"R@1": 12.0, "R@5": 33.0, "R@10": 55.0, "R@100": 95.0, "SumR": 195.0}
TEST = {"R@1": 11.0, "R@5": 31.0, "R@10": 52.0, "R@100": 91.0, "SumR": 185.0}


def test_the_protocol_imports_nothing_but_the_standard_library():
    code = ("import sys; before = set(sys.modules); import trainables.trial_report; "
            "print(sorted(m.split('.')[0] for m in set(sys.modules) - before))")
    imported = set(eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                                       check=True).stdout))
    assert imported <= {"trainables"} | set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_each_report_reads_back_as_what_it_says():
    epoch = epoch_report(3, VAL, {"clip_triplet": 0.5}, best_epoch=2, best_score=190.0)
    final = final_report(7, VAL, BEST, TEST, best_epoch=5, stopped_early=True)
    error = error_report("NonFiniteLoss: epoch 2")
    stopped = {**epoch, "done": True}  # Tune's mark on the last report of a trial the scheduler stopped
    assert [trial_status(r) for r in (epoch, final, error, None, stopped)] == \
        ["KILLED", "FINISHED", "FAILED", "KILLED", "FINISHED"]
    assert trial_status(final, error=True) == "FAILED" and trial_status(stopped, error=True) == "FAILED"
    assert [stopped_by_scheduler(r) for r in (epoch, final, error, None, stopped)] == [False] * 4 + [True]
    assert stop_tags(stopped, 1) == {"stopped_early": "scheduler", "stopped_at_epoch": "3", "stopped_at_rung": "1"}
    assert stop_tags(stopped) == {"stopped_early": "scheduler", "stopped_at_epoch": "3"}  # a scheduler without rungs
    assert stop_tags(final) == {"stopped_early": "patience", "stopped_at_epoch": "7"}
    assert stop_tags({**final, "stopped_early": False}) == stop_tags(epoch) == stop_tags(error) == {}
    assert [is_finished(r) for r in (epoch, final, error)] == [False, True, False]
    assert [is_failed(r) for r in (epoch, final, error, None)] == [False, False, True, False]
    assert epoch_metrics(epoch) == {TIME_ATTR: 3, METRIC: 190.0, "best_epoch": 2, "loss_clip_triplet": 0.5,
                                    **{f"val_{c.lower().replace('@', '')}": VAL[c] for c in COLUMNS}}
    assert final[METRIC] == 195.0 and final[FINISHED] is True and final["stopped_early"] is True
    assert final_metrics(final) == {**{f"best_val_{c.lower().replace('@', '')}": BEST[c] for c in COLUMNS},
                                    **{f"test_{c.lower().replace('@', '')}": TEST[c] for c in COLUMNS}}
    assert math.isinf(error[METRIC]) and error[TRIAL_ERROR] == "NonFiniteLoss: epoch 2"
    assert split_tags({"lr": 1.0, "tag.cell": "+ral"}) == ({"lr": 1.0}, {"cell": "+ral"})


def test_no_other_module_spells_the_protocol_keys():
    """Every writer and reader of a report goes through the protocol's names (labels in text are fine)."""
    keys = re.compile(r"""["'](finished|trial_error|stopped_early|best_val_sumr|earlier_epochs|test_ranks\.json)["']""")
    found = []
    for folder in ("search", "tracking", "trainables", "spaces"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "trial_report.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if keys.search(code) and "label=" not in code and '"finished" if' not in code:
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
