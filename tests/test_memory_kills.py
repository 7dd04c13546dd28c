"""A trial whose worker Ray's memory monitor kills is retried, then failed with one line; the search goes on
(search/memory_kills.py). Ray 2.60's Tune otherwise ends the whole search with ``RuntimeError: Caught
unexpected exception`` (a kill during a task) or fails the trial with Ray's 60-line report (a kill while the
worker starts)."""

from __future__ import annotations

import re

from ray.exceptions import OutOfMemoryError

from search.memory_kills import ADVICE, WorkerKilledForMemory, describe_kill
from tests.test_search import mlflow_runs, run_search

#: the head of the message Ray 2.60's memory monitor gives a killed task (its 60 lines cut)
RAY_MESSAGE = ("2 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 127.0.0.1, "
               "ID: a951) was 22.53GB used / 23.54GB limit (0.957349)\nOOM kill reason: Memory usage ...\n")


def test_a_memory_kill_reads_as_one_line_with_the_node_use_and_what_to_change():
    line = describe_kill(RAY_MESSAGE)
    assert line == f"the trial's worker was killed by Ray's memory monitor (node memory 22.53GB used of 23.54GB): " \
                   f"{ADVICE}"
    assert describe_kill("killed") == f"the trial's worker was killed by Ray's memory monitor: {ADVICE}"
    error = WorkerKilledForMemory(OutOfMemoryError(RAY_MESSAGE))
    assert str(error) == line and "\n" not in str(error)


def test_a_trial_killed_by_the_memory_monitor_is_retried_then_failed_with_one_line_and_the_search_ends(
        tmp_path, monkeypatch):
    # a threshold under what any node uses: the monitor kills every trial worker (while it starts or trains)
    monkeypatch.setenv("RAY_memory_usage_threshold", "0.02")
    result = run_search(tmp_path, "--space", "base", "--backbones", "mssl", "--trials", "1", "--max-epochs", "1",
                        "--max-failures", "1", "--concurrency", "1", "--name", "oom", "--set", "hidden_size=16")
    output = result.stdout + result.stderr
    assert "Caught unexpected exception" not in output
    assert result.returncode == 1 and "error: every trial failed" in result.stderr, output[-3000:]
    lines = re.findall(r"^trial \w+: failed: (.*)$", result.stdout, re.M)
    assert len(lines) == 1 and lines[0].startswith("the trial's worker was killed by Ray's memory monitor (node "), \
        result.stdout[-3000:]
    (error_file,) = (tmp_path / "results" / "oom").glob("trial_*/error.txt")
    failures = re.split(r"^Failure # \d+ \(occurred at [^)]*\)\n", error_file.read_text(), flags=re.M)[1:]
    assert len(failures) == 2  # the first start and its one retry (--max-failures 1), each killed
    assert all(f.strip().startswith("the trial's worker was killed by Ray's memory monitor") for f in failures)
    _, children = mlflow_runs(tmp_path, "oom")
    assert [r.info.status for r in children] == ["FAILED"]
    assert children[0].data.tags["error"] == lines[0]
