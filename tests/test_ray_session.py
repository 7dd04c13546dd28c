"""The local Ray of a search (search/ray_session.py) runs its trials' workers at the driver's CPU priority, and one
that fails to start leaves no temp folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from search.ray_session import ray_session

ROOT = Path(__file__).resolve().parents[1]


def test_local_workers_run_at_the_drivers_priority() -> None:
    import ray

    @ray.remote(num_cpus=1)
    def niceness() -> int:
        return os.nice(0)

    with ray_session(None, num_cpus=1):
        # Ray's default is 15: a trial then got less CPU than the same training in the driver
        assert ray.get(niceness.remote()) == os.nice(0)


def test_a_local_ray_that_fails_to_start_leaves_no_temp_folder(tmp_path, monkeypatch, restored_environ) -> None:
    import ray

    def fail(**kwargs):
        assert kwargs["_temp_dir"].startswith(str(tmp_path))  # the folder the session made for this Ray
        raise RuntimeError("Ray could not start")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(ray, "init", fail)
    with pytest.raises(RuntimeError, match="could not start"), ray_session(num_cpus=1):
        pass
    assert list(tmp_path.iterdir()) == []


def test_an_address_that_accepts_nothing_is_refused_within_the_timeout():
    """A listener whose backlog is full never completes a connection (as an address behind a firewall
    that drops packets): the check gives up after its timeout, where Ray keeps dialling for minutes."""
    import socket

    from search.ray_session import check_address

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        check_address(f"127.0.0.1:{address[1]}", timeout=2)  # a listener answers: passes
        fillers = []
        try:
            while True:  # fill the backlog: the first connection that times out means it is full
                try:
                    fillers.append(socket.create_connection(address, timeout=0.5))
                except TimeoutError:
                    break
                assert len(fillers) < 256, "the backlog never filled"
            start = time.monotonic()
            with pytest.raises(ValueError, match=f"--ray-address 127.0.0.1:{address[1]}: no Ray cluster answers "
                                                 r"there \(timed out; waited up to 1s\)"):
                check_address(f"127.0.0.1:{address[1]}", timeout=1)
            assert time.monotonic() - start < 5
        finally:
            for filler in fillers:
                filler.close()


def _sleeper(**kwargs) -> subprocess.Popen:
    return subprocess.Popen(["sleep", "300"], **kwargs)


def test_stale_session_folders_are_cleaned_only_when_their_driver_is_gone():
    """A folder whose owner is gone (or whose PID now belongs to another process) loses the processes still
    holding files in it and is removed; a live owner's folder, and a folder naming no owner, are kept."""
    from search.ray_session import OWNER_FILE, TEMP_PREFIX, _start_time, clean_stale_sessions, holders

    root = Path(tempfile.mkdtemp(prefix="prvr-clean-", dir="/tmp"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    owners = {"dead": {"pid": gone.pid, "start": 1}, "reused": {"pid": os.getpid(), "start": 1},
              "live": {"pid": os.getpid(), "start": _start_time(os.getpid())}, "none": None}
    sleepers = {}
    try:
        for name, owner in owners.items():
            folder = root / f"{TEMP_PREFIX}{name}"
            folder.mkdir()
            if owner is not None:
                (folder / OWNER_FILE).write_text(json.dumps(owner))
            with open(folder / "agent.log", "w") as log:  # a Ray agent writing its log there
                sleepers[name] = [_sleeper(stdout=log), _sleeper(cwd=folder)]
        assert sorted(holders(root / f"{TEMP_PREFIX}dead")) == sorted(p.pid for p in sleepers["dead"])
        cleaned = clean_stale_sessions(root)
        assert sorted(line.split(" of driver")[0] for line in cleaned) == \
            sorted(str(root / f"{TEMP_PREFIX}{name}") for name in ("dead", "reused"))
        assert all("2 processes stopped" in line for line in cleaned)
        for name in ("dead", "reused"):
            assert not (root / f"{TEMP_PREFIX}{name}").exists()
            assert all(p.wait(timeout=10) is not None for p in sleepers[name])
        for name in ("live", "none"):
            assert (root / f"{TEMP_PREFIX}{name}" / "agent.log").exists()
            assert all(p.poll() is None for p in sleepers[name])
    finally:
        for processes in sleepers.values():
            for p in processes:
                p.kill()
                p.wait()
        shutil.rmtree(root, ignore_errors=True)


#: a driver's local Ray session (what every search and ablation opens), held until the process is killed
HOLD_A_SESSION = """
import sys, time
from search.ray_session import ray_session
with ray_session(num_cpus=1, object_store_memory=80 * 2**20):
    print("up", flush=True)
    time.sleep(600)
"""
#: the next local session: it cleans up before it starts
OPEN_A_SESSION = """
from search.ray_session import ray_session
with ray_session(num_cpus=1, object_store_memory=80 * 2**20):
    pass
"""


def test_a_local_session_cleans_up_after_a_killed_driver():
    """SIGKILL of a driver leaves Ray's agents running and its temp folder; the next local session (every
    search's, with the same temp folder) stops those processes and removes the folder."""
    from search.ray_session import TEMP_PREFIX, holders

    temp_root = Path(tempfile.mkdtemp(prefix="prvr-kill-", dir="/tmp"))  # short: Ray's socket paths
    env = {**os.environ, "TMPDIR": str(temp_root)}
    driver = subprocess.Popen([sys.executable, "-c", HOLD_A_SESSION], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "up"
        driver.kill()  # the driver alone, as the OOM killer or a lost terminal would
        driver.wait()
        (stale,) = temp_root.glob(f"{TEMP_PREFIX}*")
        left = holders(stale)
        assert left, "nothing of the killed driver's Ray was left (the test would not test the cleanup)"
        second = subprocess.run([sys.executable, "-c", OPEN_A_SESSION], env=env, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]
        assert f"cleaned up after a killed local search: {stale} of driver {driver.pid}: " in second.stderr
        assert not stale.exists()
        assert not list(temp_root.glob(f"{TEMP_PREFIX}*"))  # the second session removed its own folder too
        assert all(_gone(pid) for pid in left)
    finally:
        driver.kill()
        shutil.rmtree(temp_root, ignore_errors=True)


def _gone(pid: int) -> bool:
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


# Which Ray a search runs on (search/ray_target.py). A listening socket stands in for a cluster's GCS here:
# detection asks only whether the address accepts a connection (tests/test_cluster.py joins a real cluster).

def _free_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("environ", [{"RAY_TMPDIR": "/r", "TMPDIR": "/t"}, {"TMPDIR": "/t"}, {}])
def test_the_address_file_is_read_where_ray_writes_it(monkeypatch, environ):
    from ray._common.utils import get_ray_address_file

    from search.ray_target import ray_address_file

    for key in ("RAY_TMPDIR", "TMPDIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert ray_address_file(environ) == Path(get_ray_address_file(None))


def test_a_cluster_is_found_by_ray_address_then_by_this_nodes_address_file(tmp_path):
    import socket

    from search.ray_target import RayTarget, choose_ray, detect_cluster
    from trainables.errors import InputError

    with socket.socket() as gcs, socket.socket() as other:
        for listener in (gcs, other):
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
        live, named = (f"127.0.0.1:{s.getsockname()[1]}" for s in (gcs, other))
        dead = f"127.0.0.1:{_free_port()}"
        file = tmp_path / "ray_current_cluster"
        file.write_text(live + "\n")
        # a file whose cluster answers: its address (given a file of its own), "auto" when it is Ray's own file
        assert detect_cluster({}, file) == RayTarget(live, found=str(file))
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text(live)
        assert detect_cluster({"RAY_TMPDIR": str(tmp_path)}) == \
            RayTarget("auto", found=str(tmp_path / "ray" / "ray_current_cluster"))
        # RAY_ADDRESS first (a Ray job's driver has it); one that answers nothing is refused, as --ray-address is
        assert detect_cluster({"RAY_ADDRESS": named}, file) == RayTarget(named, found="RAY_ADDRESS")
        with pytest.raises(InputError, match=f"^RAY_ADDRESS {dead}: no Ray cluster answers there"):
            detect_cluster({"RAY_ADDRESS": dead}, file)
        job_server = detect_cluster({"RAY_ADDRESS": "http://127.0.0.1:8265"}, file)
        assert job_server.address is None and "is a Ray job server's address, not a cluster's" in job_server.note
        # a stale file (its cluster is gone), an empty one, none: a private Ray; only the stale one says so
        file.write_text(dead)
        stale = detect_cluster({}, file)
        assert stale.address is None and stale.note == (f"{file} names a Ray cluster at {dead} that does not answer "
                                                        "(stale); running on a private local Ray")
        file.write_text("")
        assert detect_cluster({}, file) == RayTarget(None) == detect_cluster({}, tmp_path / "none")
        # PRVR_RAY_LOCAL=1 and --local: never a cluster; --ray-address: that one, nothing detected
        file.write_text(live)
        assert detect_cluster({"PRVR_RAY_LOCAL": "1", "RAY_ADDRESS": named}, file) == RayTarget(None)
        assert detect_cluster({"PRVR_RAY_LOCAL": "0"}, file).address == live
        assert choose_ray(True, None, {"RAY_ADDRESS": named}, file) == RayTarget(None)
        assert choose_ray(False, dead, {"RAY_ADDRESS": named}, file) == RayTarget(dead)
        assert choose_ray(False, None, {}, file) == RayTarget(live, found=str(file))


def test_the_test_suite_never_detects_a_cluster(tmp_path):
    """tests/conftest.py: no search of the suite joins a cluster it did not start (a live address file and a
    RAY_ADDRESS are passed over), and its child processes inherit that."""
    import socket

    from search.ray_target import RayTarget, detect_cluster

    assert "RAY_ADDRESS" not in os.environ
    with socket.socket() as gcs:
        gcs.bind(("127.0.0.1", 0))
        gcs.listen(8)
        live = f"127.0.0.1:{gcs.getsockname()[1]}"
        (tmp_path / "ray_current_cluster").write_text(live)
        assert detect_cluster(None, tmp_path / "ray_current_cluster") == RayTarget(None)
        assert detect_cluster({**os.environ, "RAY_ADDRESS": live}) == RayTarget(None)
        code = ("import pathlib; from search.ray_target import detect_cluster; "
                f"print(detect_cluster(None, pathlib.Path({str(tmp_path / 'ray_current_cluster')!r})))")
        child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ}, capture_output=True,
                               text=True, timeout=60)
        assert child.stdout.strip() == "RayTarget(address=None, found=None, note=None)", child.stderr[-2000:]


@pytest.mark.parametrize("entry", ["run", "ablate"])
def test_local_and_ray_address_together_are_one_line_and_exit_2(tmp_path, run_cli_without_ray, entry):
    import importlib

    main = importlib.import_module(f"search.{entry}").main
    args = ["--base", "base.yaml", "--components", "ral"] if entry == "ablate" else []
    result = run_cli_without_ray(main, *args, "--local", "--ray-address", "127.0.0.1:1", cwd=tmp_path)
    assert result.code == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: --local and --ray-address 127.0.0.1:1 exclude each other: --local runs a private local Ray, "
        "--ray-address joins a cluster"]
    assert list(tmp_path.iterdir()) == []


def test_a_stale_address_file_is_a_note_and_the_search_goes_on(tmp_path, monkeypatch, run_cli_without_ray):
    """A search on a node whose address file names a cluster that is gone: one note line, then the search goes
    on (here to its first input check; tests/test_search.py runs searches on a private Ray)."""
    from search.run import main

    (tmp_path / "ray").mkdir()
    dead = f"127.0.0.1:{_free_port()}"
    (tmp_path / "ray" / "ray_current_cluster").write_text(dead)
    monkeypatch.delenv("PRVR_RAY_LOCAL")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    result = run_cli_without_ray(main, "--trials", "0", cwd=tmp_path)
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        f"note: {tmp_path}/ray/ray_current_cluster names a Ray cluster at {dead} that does not answer (stale); "
        "running on a private local Ray", "error: --trials is out of range: 0"]
