"""What a trial is told about its data: the prepared splits themselves (a local dataset the driver loaded
once and Ray ships through its object store) or the URI of a dataset on S3 that each node fetches into
its own cache (``trainables.data.remote``) and loads once per worker process."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from trainables.data.s3 import StorageSettings

if TYPE_CHECKING:
    from trainables.training.loop import DataSplits


@dataclass(frozen=True)
class RemoteDataset:
    """A dataset on S3, named by its manifest URI (``s3://bucket/prefix[/manifest.json]``)."""

    uri: str
    settings: StorageSettings

    def load(self) -> DataSplits:
        return _load_remote(self)


@lru_cache(maxsize=2)
def _load_remote(source: RemoteDataset) -> DataSplits:
    from trainables.data.remote import fetch_dataset
    from trainables.training.loop import load_data

    return load_data(fetch_dataset(source.uri, source.settings))


def materialize(data: DataSplits | RemoteDataset) -> DataSplits:
    """The prepared splits of ``data`` on this node (fetched and loaded on first use for a remote one)."""
    return data.load() if isinstance(data, RemoteDataset) else data
