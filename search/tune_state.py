"""Ray Tune's experiment state, written whole: a driver killed at any moment leaves a state a new one can resume.

Ray 2.60's ``TuneController.save_to_dir`` rewrites ``experiment_state-*.json`` in place (``open(..., "w")``
then ``json.dump``) in the driver's staging folder, and the background sync that uploads that folder to the
search's storage may still be running from the previous save: ``_BackgroundSyncer.sync_up`` skips a new
sync while one runs, but only after the rewrite has begun. An upload that reads the file between its
truncation and the end of the dump stores an empty or partial state; a driver killed before the next sync
leaves it as the newest state on the storage, and ``Tuner.restore`` then logs "Failed to restore the run
state" and starts a new run, dropping every trial before the kill (seen once in CI: a resumed search of 4
trials ran 1). Here the state is written to a temporary file next to the staging folder and renamed over the
old one (atomic on one filesystem), so any reader, the upload included, sees the previous state or the new one.
Each save then hands the digests of the files a restore would load to the recorder of ``search/trusted_state.py``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ray.tune.execution.tune_controller import TuneController
from ray.tune.utils.serialization import TuneFunctionEncoder

from search import ray_version, trusted_state
from search.ray_version import VERIFIED_RAY  # on any other Ray, nothing is replaced
from tracking.storage import SearchStorage

#: Ray's own ``save_to_dir``, as imported (for tests to compare with)
RAYS_SAVE_TO_DIR = TuneController.save_to_dir


def save_to_dir(self: Any) -> None:
    """``TuneController.save_to_dir`` of Ray 2.60 with the experiment state written atomically, and the
    digests of what a restore loads recorded (``trusted_state.current``) before Tune uploads it."""
    runner_state = {
        "trial_data": list(self._get_trial_checkpoints().values()),
        "runner_data": self.__getstate__(),
        "stats": {"start_time": self._start_time},
    }
    staging = Path(self._storage.experiment_driver_staging_path)
    staging.mkdir(parents=True, exist_ok=True)
    # outside the staging folder, which the sync uploads whole, but on its filesystem, for an atomic rename
    handle, temporary = tempfile.mkstemp(prefix=f".{self.experiment_state_file_name}.", dir=staging.parent)
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(runner_state, f, cls=TuneFunctionEncoder)
        os.replace(temporary, staging / self.experiment_state_file_name)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    self._search_alg.save_to_dir(str(staging), session_str=self._session_str)
    self._callbacks.save_to_dir(str(staging), session_str=self._session_str)
    record_state(staging)


#: the first error of a failed recording (warned about once per process)
_unrecorded: list[BaseException] = []


def record_state(staging: Path) -> None:
    """Hands the digests of the state files in ``staging`` to the current recorder; a recorder that fails
    (an unreachable tracking store) is reported and the search goes on (a later ``--resume`` then needs
    ``--trust-storage``)."""
    recorder = trusted_state.current
    if recorder is None:
        return
    digests = {path.name: trusted_state.sha256(path.read_bytes()) for path in staging.iterdir()
               if path.is_file() and trusted_state.is_loaded_on_restore(path.name)}
    try:
        recorder(digests)
    except Exception as exc:
        if _unrecorded:
            return
        _unrecorded.append(exc)
        print(f"warning: the Tune state's digests could not be recorded in MLflow ({type(exc).__name__}); "
              f"--resume will need {trusted_state.TRUST_FLAG}", file=sys.stderr, flush=True)


def write_experiment_state_atomically() -> bool:
    """Makes this process's Tune drivers save their experiment state with ``save_to_dir`` above; False, and
    nothing changed, on a Ray other than ``VERIFIED_RAY`` (whose ``save_to_dir`` may differ)."""
    if not ray_version.is_verified_ray():
        return False
    TuneController.save_to_dir = save_to_dir  # type: ignore[method-assign]  # a deliberate patch of Ray's method
    return True


def has_experiment_state(storage: SearchStorage) -> bool:
    """Whether Tune saved an experiment state in ``storage``'s folder: what ``Tuner.restore`` needs (the
    ``tuner.pkl`` written when a Tuner is made is not enough: restoring from it alone raises)."""
    from pyarrow import fs

    filesystem = storage.filesystem or fs.LocalFileSystem()
    infos = filesystem.get_file_info(fs.FileSelector(storage.path, allow_not_found=True))
    return any(info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json") for info in infos)


__all__ = ["RAYS_SAVE_TO_DIR", "VERIFIED_RAY", "has_experiment_state", "record_state", "save_to_dir",
           "write_experiment_state_atomically"]
