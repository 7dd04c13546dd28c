"""cluster.yaml passes Ray's own offline validator (ray up has no dry run), and `search/cluster.py check`
reports each kind of broken launcher file in one line."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from search.cli import run_main
from search.cluster import main

ROOT = Path(__file__).resolve().parents[1]


def load() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid_for_rays_launcher():
    validate_config(prepare_config(copy.deepcopy(load())))


def test_cluster_yaml_has_no_keys_and_scales_from_zero():
    text = (ROOT / "cluster.yaml").read_text()
    assert "aws_access_key_id" not in text.lower() and "aws_secret" not in text.lower()
    config = load()
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert len(workers) >= 2 and all(v["min_workers"] == 0 for v in workers.values())


def test_validator_catches_a_broken_copy():
    config = load()
    config["head_node_type"] = "no.such.type"
    with pytest.raises(ValueError):
        validate_config(prepare_config(config))


# --- search/cluster.py check: the same validation plus the project's rules, as a command ----------------

BUCKET_FILLED = (ROOT / "cluster.yaml").read_text().replace("CHANGE-ME-bucket", "my-prvr-bucket")
SUMMARY = ("valid for ray up (provider aws us-east-1; head head.cpu m5.2xlarge; workers worker.gpu1 g5.xlarge "
           "0-8 spot, worker.gpu4 g5.12xlarge 0-2 spot; max_workers 8)")


def run_check(capsys, path: Path | str) -> tuple[int, str, list[str]]:
    """``search/cluster.py check PATH`` in-process: exit code, stdout, stderr lines."""
    code = run_main(main, ["check", str(path)])
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def test_check_command_passes_the_repository_file_with_a_bucket(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(BUCKET_FILLED)
    done = subprocess.run([sys.executable, "search/cluster.py", "check", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == (f"{path}: {SUMMARY}\n", "")


def test_check_refuses_the_repository_file_only_for_its_bucket_placeholder(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = run_main(main, ["check"])  # default path: ./cluster.yaml
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == ("error: cluster.yaml: head_setup_commands[0]: replace CHANGE-ME (the artifact bucket) "
                   "before `ray up` (and 1 more place)\n")


def _without_profile(c: dict) -> None:
    del c["available_node_types"]["worker.gpu4"]["node_config"]["IamInstanceProfile"]


BROKEN = {
    "unknown top-level key": (lambda c: c.update(max_worker=8),
                              "top level: Additional properties are not allowed ('max_worker'"),
    "wrong type": (lambda c: c.update(max_workers="eight"), "max_workers: 'eight' is not of type 'integer'"),
    "unknown head type": (lambda c: c.update(head_node_type="head.gpu"),
                          "`head_node_type` must be one of `available_node_types`"),
    "no instance profile": (_without_profile, "available_node_types.worker.gpu4.node_config: add IamInstanceProfile"),
    "secret key": (lambda c: c["provider"].update(aws_secret_access_key="abc"),
                   "provider.aws_secret_access_key: use an instance profile (IamInstanceProfile), not keys"),
    "access key id": (lambda c: c["setup_commands"].append("export K=AKIAABCDEFGHIJKLMNOP"),
                      "setup_commands[3]: looks like an AWS access key id"),
    "placeholder": (lambda c: c["provider"].update(region="CHANGE-ME"), "provider.region: replace CHANGE-ME before"),
    "min over max": (lambda c: c["available_node_types"]["worker.gpu4"].update(min_workers=3),
                     "available_node_types.worker.gpu4: min_workers 3 > max_workers 2"),
    "no provider": (lambda c: c.pop("provider"), "top level: 'provider' is a required property"),
    "string for a list": (lambda c: c.update(setup_commands="pip install ."),
                          "setup_commands: 'pip install .' is not of type 'array'"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_check_names_the_problem_in_one_line(case, tmp_path, capsys):
    mutate, fragment = BROKEN[case]
    config = yaml.safe_load(BUCKET_FILLED)
    mutate(config)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    code, out, err = run_check(capsys, path)
    assert (code, out, len(err)) == (2, "", 1), err
    assert err[0].startswith(f"error: {path}: ") and fragment in err[0], err[0]


def test_check_names_a_missing_file_and_a_yaml_syntax_error_line(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert run_check(capsys, missing) == (2, "", [f"error: {missing}: no such file"])
    broken = tmp_path / "cluster.yaml"
    broken.write_text(BUCKET_FILLED.replace("max_workers: 8\n", "max_workers: [8\n", 1))
    code, out, err = run_check(capsys, broken)
    assert (code, out, len(err)) == (2, "", 1)
    assert err[0].startswith(f"error: {broken}: not valid YAML at line 9,"), err[0]


def test_head_starts_mlflow_through_the_project_once():
    """The guard must match the running server (tracking_server.py execs `python -m mlflow server`) but
    not the shell that runs the command line itself, or the server would never start."""
    command = load()["head_setup_commands"][-1]
    assert "search/tracking_server.py --artifacts s3://" in command and "nohup" in command
    guard = re.search(r'pgrep -f "([^"]+)"', command).group(1)
    assert re.search(guard, "/home/ubuntu/prvr-venv/bin/python -m mlflow server --backend-store-uri x")
    assert not re.search(guard, f"bash --login -c -i 'true && source ~/.bashrc && ({command})'")


def test_every_node_runs_trial_workers_at_normal_priority():
    """As a local Ray does (search/ray_session.py): Ray's worker niceness 15 slows trials on a busy node."""
    from search.ray_session import LOCAL_RAY_SYSTEM_ENV

    config = load()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "bin/ray start" in c]
        assert starts and all(f"{k}={v} " in c for c in starts for k, v in LOCAL_RAY_SYSTEM_ENV.items()), key
