"""Tune's experiment state is replaced whole: a reader during a save (the background upload to the search's
storage) sees the previous state, never an empty or partial file, and the state written is Ray's own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from ray.tune.execution.tune_controller import TuneController
from ray.tune.utils.serialization import _loads_with_cloudpickle

from search import tune_state

STATE = "experiment_state-2026-12-01_00-00-00.json"


class Peek:
    """A value in the runner state whose serialisation reads the state file, as an upload running during
    the save does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        self.seen = self.path.read_text()
        return (str, ("peeked",))


class Folder:
    """What ``save_to_dir`` asks of the searcher and the callbacks: their own files in the staging folder."""

    def __init__(self, name: str) -> None:
        self.name = name

    def save_to_dir(self, path: str, session_str: str) -> None:
        Path(path, f"{self.name}-{session_str}.pkl").write_text(self.name)


class Controller:
    """The part of a ``TuneController`` that ``save_to_dir`` reads."""

    experiment_state_file_name = STATE

    def __init__(self, staging: Path, runner_data: dict[str, Any]) -> None:
        self._storage = type("Storage", (), {"experiment_driver_staging_path": str(staging)})()
        self._runner_data = runner_data
        self._start_time = 1796083200.0
        self._session_str = "2026-12-01_00-00-00"
        self._search_alg, self._callbacks = Folder("searcher"), Folder("callbacks")

    def _get_trial_checkpoints(self) -> dict[str, Any]:
        return {"t1": ('{"trial_id": "t1"}', '{"last_result": {}}')}

    def __getstate__(self) -> dict[str, Any]:
        return self._runner_data


def _save_twice(save: Any, staging: Path) -> tuple[Peek, str]:
    """A first save, then a second during which a reader looks at the state file."""
    save(Controller(staging, {"epoch": 1}))
    peek = Peek(staging / STATE)
    save(Controller(staging, {"epoch": 2, "peek": peek}))
    return peek, (staging / STATE).read_text()


def test_a_reader_during_a_save_sees_the_whole_previous_state(tmp_path):
    peek, final = _save_twice(tune_state.save_to_dir, tmp_path / "exp" / "driver_artifacts")
    assert json.loads(peek.seen)["runner_data"] == {"epoch": 1}
    assert _loads_with_cloudpickle(final)["runner_data"] == {"epoch": 2, "peek": "peeked"}
    staging = tmp_path / "exp" / "driver_artifacts"
    assert sorted(p.name for p in staging.iterdir()) == sorted(
        [STATE, "searcher-2026-12-01_00-00-00.pkl", "callbacks-2026-12-01_00-00-00.pkl"])
    assert [p.name for p in staging.parent.iterdir()] == ["driver_artifacts"]  # no temporary file left


def test_rays_own_save_shows_a_reader_a_truncated_file_and_writes_the_same_state(tmp_path):
    """Why the replacement exists (if Ray fixes its save, this fails: drop the replacement), and that it
    writes byte for byte what Ray's own does."""
    rays = tune_state.RAYS_SAVE_TO_DIR
    assert rays is not tune_state.save_to_dir
    ray_peek, ray_final = _save_twice(rays, tmp_path / "ray")
    with pytest.raises(json.JSONDecodeError):
        json.loads(ray_peek.seen)
    _, ours = _save_twice(tune_state.save_to_dir, tmp_path / "ours")
    assert ours == ray_final


def test_a_save_that_fails_midway_leaves_the_previous_state(tmp_path):
    staging = tmp_path / "driver_artifacts"
    tune_state.save_to_dir(Controller(staging, {"epoch": 1}))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("the driver dies here")

    with pytest.raises(RuntimeError, match="dies here"):
        tune_state.save_to_dir(Controller(staging, {"epoch": 2, "bad": Unpicklable()}))
    assert json.loads((staging / STATE).read_text())["runner_data"] == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["driver_artifacts"]


def test_installed_once_and_only_on_the_pinned_ray(monkeypatch):
    rays = tune_state.RAYS_SAVE_TO_DIR
    monkeypatch.setattr(TuneController, "save_to_dir", rays)  # Ray's own again after the test, as before it
    assert tune_state.write_experiment_state_atomically() and tune_state.write_experiment_state_atomically()
    assert TuneController.save_to_dir is tune_state.save_to_dir
    assert tune_state.RAYS_SAVE_TO_DIR is rays is not tune_state.save_to_dir  # installing twice keeps Ray's own
    monkeypatch.setattr(TuneController, "save_to_dir", rays)
    monkeypatch.setattr("search.ray_version.installed_ray", lambda: "9.9.9")
    assert not tune_state.write_experiment_state_atomically()
    assert TuneController.save_to_dir is rays
