"""``--resume`` loads only a Tune state that the search's MLflow parent run recorded (search/trusted_state.py):
a pickle planted in the results folder (local or S3) is refused before anything is loaded. The refusal by
a real ``--resume`` of an interrupted search is tested in tests/test_interrupt.py."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import s3_env
from test_search import tracking_uri

from search.trusted_state import KEPT, StateRecorder, check_state, recorded_digests, sha256, stored_digests
from tracking.storage import search_storage
from trainables.data.s3 import StorageSettings


class Planted:
    """A pickle that creates ``marker`` when it is loaded: what an attacker would plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@dataclass
class ParentRun:
    """The bits of ``tracking.mlflow_runs.Tracking`` a recorder uses, on a real SQLite MLflow store."""

    uri: str
    parent_run_id: str

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


def _parent_run(tmp_path: Path) -> ParentRun:
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("prvr"))
    return ParentRun(uri, run.info.run_id)


def _tags(parent: ParentRun) -> dict[str, str]:
    return parent.client().get_run(parent.parent_run_id).data.tags


def test_recorded_state_passes_and_a_changed_or_unknown_file_is_refused(tmp_path):
    storage = search_storage(str(tmp_path / "results"), "s1", resume=False)
    folder = Path(storage.path)
    folder.mkdir(parents=True)
    (folder / "tuner.pkl").write_bytes(b"tuner v1")
    (folder / "experiment_state-1.json").write_text('{"v": 1}')
    (folder / "trial_1").mkdir()
    (folder / "trial_1" / "params.pkl").write_bytes(b"not read by a restore")
    (folder / ".validate_storage_marker").write_text("")
    parent = _parent_run(tmp_path)
    recorder = StateRecorder(parent, None)
    recorder.record(stored_digests(storage))
    assert set(stored_digests(storage)) == {"tuner.pkl", "experiment_state-1.json"}  # top level, .pkl/.json only
    check_state(storage, _tags(parent), None, "s1")  # as recorded: passes
    with pytest.raises(ValueError, match="no MLflow parent run of search s1"):
        check_state(storage, None, None, "s1")
    with pytest.raises(ValueError, match="not written by the search"):  # the other stage's record does not count
        check_state(storage, _tags(parent), "confirmation", "s1")

    (folder / "experiment_state-1.json").write_text('{"v": 2}')  # an older digest stays accepted, a new one too
    recorder.record(stored_digests(storage))
    (folder / "experiment_state-1.json").write_text('{"v": 1}')
    check_state(storage, _tags(parent), None, "s1")
    (folder / "experiment_state-1.json").write_text('{"v": 3}')
    with pytest.raises(ValueError, match=r"experiment_state-1.json changed since the search wrote it.*--trust-storage"):
        check_state(storage, _tags(parent), None, "s1")
    (folder / "experiment_state-1.json").write_text('{"v": 1}')
    (folder / "searcher-state-9.pkl").write_bytes(pickle.dumps(Planted(tmp_path / "marker")))
    with pytest.raises(ValueError, match="searcher-state-9.pkl was not written by the search"):
        check_state(storage, _tags(parent), None, "s1")
    assert not (tmp_path / "marker").exists()


def test_a_recorder_keeps_the_newest_digests_and_survives_a_new_process(tmp_path):
    parent = _parent_run(tmp_path)
    recorder = StateRecorder(parent, "confirmation")
    for i in range(KEPT + 5):
        recorder.record({"experiment_state-1.json": sha256(str(i).encode())})
    kept = recorded_digests(_tags(parent), "confirmation")["experiment_state-1.json"]
    assert kept == [sha256(str(i).encode()) for i in range(5, KEPT + 5)]
    StateRecorder(parent, "confirmation").record({"tuner.pkl": sha256(b"t")})  # a resumed driver adds to the record
    recorded = recorded_digests(_tags(parent), "confirmation")
    assert recorded["experiment_state-1.json"] == kept and recorded["tuner.pkl"] == [sha256(b"t")]
    assert recorded_digests(_tags(parent), None) == {}


def test_state_on_s3_is_checked_the_same_way(s3_server, monkeypatch, tmp_path):
    for key, value in s3_env(s3_server.endpoint).items():
        monkeypatch.setenv(key, value)
    s3_server.make_bucket("trust-bucket")
    settings = StorageSettings.from_env(endpoint=s3_server.endpoint)
    storage = search_storage("s3://trust-bucket/runs", "s1", resume=False, settings=settings)
    s3_server.client().put_object(Bucket="trust-bucket", Key="runs/s1/tuner.pkl", Body=b"tuner")
    parent = _parent_run(tmp_path)
    StateRecorder(parent, None).record(stored_digests(storage))
    check_state(storage, _tags(parent), None, "s1")
    s3_server.client().put_object(Bucket="trust-bucket", Key="runs/s1/tuner.pkl",
                                  Body=pickle.dumps(Planted(tmp_path / "marker")))
    with pytest.raises(ValueError, match="s3://trust-bucket/runs/s1/tuner.pkl changed since the search wrote it"):
        check_state(storage, _tags(parent), None, "s1")


def test_the_planted_pickle_is_code_that_runs_when_loaded(tmp_path):
    """What the refusals above (and tests/test_interrupt.py's planted tuner.pkl) keep out: loading it runs code."""
    pickle.loads(pickle.dumps(Planted(tmp_path / "marker")))
    assert (tmp_path / "marker").exists()

