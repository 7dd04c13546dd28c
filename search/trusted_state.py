"""A Tune run's resumable state, bound to the search's MLflow parent run, so that ``--resume`` never
unpickles a file the search did not write.

``Tuner.restore`` unpickles ``tuner.pkl`` and loads every ``.json`` and ``.pkl`` file at the top of the Tune
run's folder (the experiment state embeds cloudpickled objects; the searcher's state is a pickle). Whoever
can write to ``--storage`` (a shared folder, an S3 prefix) could otherwise run code on the machine of
whoever resumes. The trust model: the MLflow tracking store is trusted, the results storage is not. While a
search runs, the driver records the sha256 of each such file in tags of its parent run (``TAG_PREFIX``), as
it writes them (before Tune uploads them); ``--resume`` reads the files back from the storage, before Ray
starts and again just before ``Tuner.restore``, and refuses (nothing loaded) a file whose digest the parent
run does not hold. ``--trust-storage`` skips the check, for a storage only trusted people can write.
Trial folders hold no pickle that a restore loads (a trial's checkpoint loads with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from tracking.storage import SearchStorage
from trainables.errors import InputError

#: parent-run tags ``<TAG_PREFIX>/<stage>/<file>``: the space-separated digests of the file, newest last
TAG_PREFIX = "prvr.tune_state"
#: the search's own Tune run in the tags (a further run, such as the confirmation stage, by its folder name)
SEARCH_STAGE = "search"
#: digests kept per file: the storage may lag the driver by a few saves (Tune uploads in the background)
KEPT = 100
TRUST_FLAG = "--trust-storage"


def is_loaded_on_restore(name: str) -> bool:
    """Whether ``Tuner.restore`` loads a file of this name at the top of a Tune run's folder."""
    return name.endswith((".pkl", ".json"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_digests(storage: SearchStorage) -> dict[str, str]:
    """{file name: sha256} of the files ``Tuner.restore`` loads from ``storage``'s folder (top level only)."""
    from pyarrow import fs

    filesystem = storage.filesystem or fs.LocalFileSystem()
    infos = filesystem.get_file_info(fs.FileSelector(storage.path, allow_not_found=True))
    out = {}
    for info in infos:
        if info.type == fs.FileType.File and is_loaded_on_restore(info.base_name):
            with filesystem.open_input_stream(info.path) as stream:
                out[info.base_name] = sha256(stream.readall())
    return out


def tag_key(stage: str | None, name: str) -> str:
    return f"{TAG_PREFIX}/{stage or SEARCH_STAGE}/{name}"


def recorded_digests(tags: dict[str, str], stage: str | None) -> dict[str, list[str]]:
    """{file name: digests} of ``stage``'s Tune run, from a parent run's tags."""
    prefix = tag_key(stage, "")
    return {key[len(prefix):]: value.split() for key, value in tags.items() if key.startswith(prefix)}


class StateRecorder:
    """Records the digests of a Tune run's state files in the parent run's tags as the driver writes them."""

    def __init__(self, tracking: Any, stage: str | None) -> None:
        self.tracking, self.stage = tracking, stage
        self.client = tracking.client()
        tags = self.client.get_run(tracking.parent_run_id).data.tags
        self.recorded = recorded_digests(tags, stage)

    def record(self, digests: dict[str, str]) -> None:
        """Adds ``digests`` ({file name: sha256}); one MLflow call for the files that changed."""
        from mlflow.entities import RunTag

        changed = []
        for name, digest in digests.items():
            kept = self.recorded.setdefault(name, [])
            if digest not in kept:
                kept[:] = [*kept, digest][-KEPT:]
                changed.append(RunTag(tag_key(self.stage, name), " ".join(kept)))
        if changed:
            self.client.log_batch(self.tracking.parent_run_id, tags=changed)


def check_state(storage: SearchStorage, tags: dict[str, str] | None, stage: str | None, search: str) -> None:
    """Refuses (InputError, one line) a Tune state in ``storage`` that the parent run's ``tags`` (None: no
    parent run found) do not record, file by file; reads the files, loads nothing."""
    where = storage.uri
    stored = stored_digests(storage)
    if not stored:
        return
    hint = f"nothing was loaded; pass {TRUST_FLAG} only if you trust everyone who can write to {where}"
    if tags is None:
        raise InputError(f"--resume: no MLflow parent run of search {search} records the Tune state in {where} "
                         f"(another tracking store?); {hint}")
    recorded = recorded_digests(tags, stage)
    for name, digest in sorted(stored.items()):
        if digest not in recorded.get(name, ()):
            what = "changed since the search wrote it" if name in recorded else "was not written by the search"
            raise InputError(f"--resume: {where}/{name} {what} (its sha256 is not in search {search}'s MLflow "
                             f"parent run); {hint}")


#: the recorder of the Tune run this process is driving (``search.tune_state.save_to_dir`` calls it)
current: Callable[[dict[str, str]], None] | None = None


__all__ = ["KEPT", "SEARCH_STAGE", "StateRecorder", "TAG_PREFIX", "TRUST_FLAG", "check_state", "current",
           "is_loaded_on_restore", "recorded_digests", "sha256", "stored_digests", "tag_key"]
