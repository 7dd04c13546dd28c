"""Feature shards on S3 (a real moto server): upload, manifest, fetch into a per-node cache.

Requests are counted by a proxy in front of moto that records every (method, path) it forwards, so
"downloaded once" and "no download" are measured on the wire.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from servers import FlakyProxy, s3_env

from trainables.data.errors import DatasetError
from trainables.data.manifest import MANIFEST_NAME, read_manifest, sha256_file
from trainables.data.remote import fetch_dataset, read_remote_manifest, upload_dataset
from trainables.data.s3 import StorageSettings
from trainables.data.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "prvr-shards"


class CountingProxy(FlakyProxy):
    """FlakyProxy (no failures by default) that also records the method and path of every request."""

    def __init__(self, target: str, fail_every: int = 0) -> None:
        super().__init__(target, fail_every)
        self.log: list[tuple[str, str]] = []

    def intercept(self, handler) -> bool:
        with self._lock:
            self.log.append((handler.command, urlsplit(handler.path).path))
        return super().intercept(handler)

    def gets(self) -> Counter:
        """GET requests per object path (``/bucket/key``)."""
        return Counter(path for method, path in self.log if method == "GET")


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.make_bucket(BUCKET)


@pytest.fixture
def s3(s3_server, bucket, monkeypatch):
    """The moto server, with this process's environment pointing at it (test credentials)."""
    for name, value in s3_env(s3_server.endpoint).items():
        monkeypatch.setenv(name, value)
    return s3_server


def settings_for(endpoint: str) -> StorageSettings:
    return StorageSettings.from_env(endpoint=endpoint)


def assert_same_data(local: Path, fetched: Path) -> None:
    """Every split of both datasets loads to equal arrays and lists."""
    a, b = FeatureStore(local), FeatureStore(fetched)
    assert a.splits == b.splits
    for split in a.splits:
        x, y = a.load_split(split), b.load_split(split)
        for name in ("frames", "frame_offsets", "tokens", "token_offsets", "query_video"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=f"{split}.{name}")
        assert (x.video_ids, x.query_ids, x.query_text) == (y.video_ids, y.query_ids, y.query_text)


def shard_paths(manifest, prefix: str) -> list[str]:
    return [f"/{BUCKET}/{prefix}/{shard.file}" for shard in manifest.shards]


def test_upload_then_fetch_and_second_fetch_downloads_nothing(s3, make_dataset, tmp_path):
    local, _, _ = make_dataset()
    manifest = read_manifest(local)
    with CountingProxy(s3.endpoint) as proxy:
        uri = upload_dataset(local, f"s3://{BUCKET}/round", settings_for(proxy.endpoint))
    puts = [path for method, path in proxy.log if method == "PUT"]
    assert sorted(puts[:-1]) == sorted(shard_paths(manifest, "round"))
    assert puts[-1] == f"/{BUCKET}/round/{MANIFEST_NAME}"  # last: a manifest on S3 means complete shards
    assert uri == f"s3://{BUCKET}/round/{MANIFEST_NAME}"
    with CountingProxy(s3.endpoint) as proxy:  # again: shards with the same size and sha256 stay
        upload_dataset(local, f"s3://{BUCKET}/round", settings_for(proxy.endpoint))
    assert [path for method, path in proxy.log if method in ("PUT", "POST", "DELETE")] == [puts[-1]]
    stored = s3.objects(BUCKET, "round/")
    assert set(stored) == {f"round/{s.file}" for s in manifest.shards} | {f"round/{MANIFEST_NAME}"}
    assert stored[f"round/{MANIFEST_NAME}"] == (local / MANIFEST_NAME).read_bytes()
    for both in (uri, f"s3://{BUCKET}/round", f"s3://{BUCKET}/round/"):
        assert read_remote_manifest(both, settings_for(s3.endpoint)) == manifest

    cache = tmp_path / "cache"
    with CountingProxy(s3.endpoint) as proxy:
        folder = fetch_dataset(f"s3://{BUCKET}/round", settings_for(proxy.endpoint), cache)
        first = proxy.gets()
        proxy.log.clear()
        again = fetch_dataset(uri, settings_for(proxy.endpoint), cache)
        second = proxy.gets()
    assert folder == again == cache / BUCKET / "round" / manifest.sha256()[:16]
    assert first == Counter(shard_paths(manifest, "round") + [f"/{BUCKET}/round/{MANIFEST_NAME}"])
    assert second == Counter()  # the node holds this version: no GET at all, not even the manifest's
    assert proxy.log == [("HEAD", f"/{BUCKET}/round/{MANIFEST_NAME}")]  # only "is the manifest unchanged?"
    FeatureStore(folder).verify()
    assert_same_data(local, folder)


def test_default_cache_root_and_changed_dataset_gets_a_new_folder(s3, make_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("PRVR_DATA_DIR", str(tmp_path / "data-dir"))
    first, _, _ = make_dataset(seed=1)
    second, _, _ = make_dataset(seed=2, num_videos=5)
    settings = settings_for(s3.endpoint)
    upload_dataset(first, f"s3://{BUCKET}/changing", settings)
    old = fetch_dataset(f"s3://{BUCKET}/changing", settings)
    assert old.parent == tmp_path / "data-dir" / "s3" / BUCKET / "changing"
    with CountingProxy(s3.endpoint) as proxy:
        upload_dataset(second, f"s3://{BUCKET}/changing", settings_for(proxy.endpoint))
    writes = [(method, path.rsplit("/", 1)[-1]) for method, path in proxy.log if method in ("PUT", "DELETE")]
    assert writes[0] == ("DELETE", MANIFEST_NAME) and writes[-1] == ("PUT", MANIFEST_NAME)  # never a stale one
    with CountingProxy(s3.endpoint) as proxy:
        new = fetch_dataset(f"s3://{BUCKET}/changing", settings_for(proxy.endpoint))
    manifest_path = f"/{BUCKET}/changing/{MANIFEST_NAME}"
    assert proxy.log[:2] == [("HEAD", manifest_path), ("GET", manifest_path)]  # the change is noticed
    assert new != old and new.parent == old.parent
    assert new.name == read_manifest(second).sha256()[:16]
    assert_same_data(second, new)
    assert_same_data(first, old)  # the old version is untouched


def test_changed_manifest_of_the_same_size_is_noticed_and_a_damaged_record_costs_one_get(s3, make_dataset,
                                                                                           tmp_path):
    local, _, _ = make_dataset()
    uri, cache = f"s3://{BUCKET}/renamed", tmp_path / "cache"
    upload_dataset(local, uri, settings_for(s3.endpoint))
    old = fetch_dataset(uri, settings_for(s3.endpoint), cache)
    text = (local / MANIFEST_NAME).read_text()
    (local / MANIFEST_NAME).write_text(text.replace('"handmade"', '"handmadE"'))  # same size, other content
    changed = read_manifest(local)
    upload_dataset(local, uri, settings_for(s3.endpoint))
    manifest_path = f"/{BUCKET}/renamed/{MANIFEST_NAME}"
    with CountingProxy(s3.endpoint) as proxy:
        new = fetch_dataset(uri, settings_for(proxy.endpoint), cache)
    assert new == cache / BUCKET / "renamed" / changed.sha256()[:16] != old
    assert proxy.gets()[manifest_path] == 1 and read_manifest(new) == changed
    assert_same_data(local, new)

    record = cache / BUCKET / "renamed" / ".s3-manifest.json"
    for damage in (lambda: record.write_text("{not json"), record.unlink,
                   lambda: (new / MANIFEST_NAME).write_text(text)):  # a cached manifest that was edited
        with CountingProxy(s3.endpoint) as proxy:
            assert fetch_dataset(uri, settings_for(proxy.endpoint), cache) == new
        assert proxy.gets() == Counter()  # intact: HEAD only
        damage()
        with CountingProxy(s3.endpoint) as proxy:
            assert fetch_dataset(uri, settings_for(proxy.endpoint), cache) == new
        assert proxy.gets() == Counter([manifest_path])  # in doubt: the manifest is read again, no shard
    assert (new / MANIFEST_NAME).read_text() == (local / MANIFEST_NAME).read_text()


FETCH_SCRIPT = """
import sys, time
from pathlib import Path
from trainables.data.s3 import StorageSettings
from trainables.data.remote import fetch_dataset
uri, endpoint, ready, go, cache = sys.argv[1:]
settings = StorageSettings.from_env(endpoint=endpoint)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
print(fetch_dataset(uri, settings, Path(cache)))
"""


def test_concurrent_fetches_from_four_processes_download_each_shard_once(s3, make_dataset, tmp_path):
    local, _, _ = make_dataset(num_videos=12, videos_per_shard=2, queries_per_shard=3)
    manifest = read_manifest(local)
    upload_dataset(local, f"s3://{BUCKET}/together", settings_for(s3.endpoint))
    cache, go = tmp_path / "cache", tmp_path / "go"
    with CountingProxy(s3.endpoint) as proxy:
        env = {**os.environ, **s3_env(proxy.endpoint)}
        processes, ready = [], []
        for i in range(4):
            ready.append(tmp_path / f"ready{i}")
            processes.append(subprocess.Popen(
                [sys.executable, "-c", FETCH_SCRIPT, f"s3://{BUCKET}/together", proxy.endpoint, str(ready[-1]),
                 str(go), str(cache)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        try:
            for _ in range(3000):
                if all(r.exists() for r in ready) or any(p.poll() is not None for p in processes):
                    break
                threading.Event().wait(0.01)
            go.touch()  # all four start fetching at the same moment
            outputs = [p.communicate(timeout=60) for p in processes]
        finally:
            for p in processes:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        gets = proxy.gets()
    assert all(p.returncode == 0 for p in processes), [err for _, err in outputs]
    folders = {Path(out.strip()) for out, _ in outputs}
    assert folders == {cache / BUCKET / "together" / manifest.sha256()[:16]}
    assert gets == Counter(shard_paths(manifest, "together") + [f"/{BUCKET}/together/{MANIFEST_NAME}"] * 4)
    folder = folders.pop()
    FeatureStore(folder).verify()
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(
        [MANIFEST_NAME] + [s.file for s in manifest.shards])
    assert not list(folder.glob("*.part*")) and not list(folder.glob(".*.tmp"))
    assert_same_data(local, folder)


def test_corrupt_or_truncated_cached_file_is_fetched_again(s3, make_dataset, tmp_path):
    local, _, _ = make_dataset()
    manifest = read_manifest(local)
    upload_dataset(local, f"s3://{BUCKET}/heal", settings_for(s3.endpoint))
    cache = tmp_path / "cache"
    folder = fetch_dataset(f"s3://{BUCKET}/heal", settings_for(s3.endpoint), cache)
    flipped, truncated, unmarked = (folder / s.file for s in manifest.shards[:3])
    before = flipped.stat()
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(255 - b for b in data[len(data) // 2 : len(data) // 2 + 16])
    flipped.write_bytes(bytes(data))
    if flipped.stat().st_mtime_ns == before.st_mtime_ns:  # coarse clock: make the change visible as it is on disk
        os.utime(flipped, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert flipped.stat().st_size == before.st_size
    truncated.write_bytes(truncated.read_bytes()[:-10])
    (folder / f".{unmarked.name}.verified").unlink()  # correct but not marked: hashed again, not fetched
    with CountingProxy(s3.endpoint) as proxy:
        assert fetch_dataset(f"s3://{BUCKET}/heal", settings_for(proxy.endpoint), cache) == folder
        gets = proxy.gets()
    assert gets == Counter([f"/{BUCKET}/heal/{flipped.name}", f"/{BUCKET}/heal/{truncated.name}"])
    assert (folder / f".{unmarked.name}.verified").is_file()
    for path in (flipped, truncated, unmarked):
        assert sha256_file(path) == sha256_file(local / path.name)
    assert_same_data(local, folder)


def test_corrupt_object_on_s3_fails_after_three_attempts_and_leaves_no_file(s3, make_dataset, tmp_path):
    local, _, _ = make_dataset()
    manifest = read_manifest(local)
    upload_dataset(local, f"s3://{BUCKET}/rotten", settings_for(s3.endpoint))
    bad = manifest.shards_of("queries")[0]
    s3.client().put_object(Bucket=BUCKET, Key=f"rotten/{bad.file}", Body=b"\0" * bad.bytes)
    cache = tmp_path / "cache"
    with CountingProxy(s3.endpoint) as proxy:
        with pytest.raises(DatasetError) as caught:
            fetch_dataset(f"s3://{BUCKET}/rotten", settings_for(proxy.endpoint), cache)
        gets = proxy.gets()
    message = str(caught.value)
    got = hashlib.sha256(b"\0" * bad.bytes).hexdigest()
    assert len(message.splitlines()) == 1
    for fragment in (bad.file, f"s3://{BUCKET}/rotten", "3 attempts", bad.sha256[:12], got[:12]):
        assert fragment in message, message
    assert gets[f"/{BUCKET}/rotten/{bad.file}"] == 3
    folder = cache / BUCKET / "rotten" / manifest.sha256()[:16]
    assert not (folder / bad.file).exists() and not (folder / MANIFEST_NAME).exists()
    assert not list(folder.glob("*.part*"))


def test_transient_errors_are_retried_on_upload_and_fetch(s3, make_dataset, tmp_path):
    local, _, _ = make_dataset()
    with FlakyProxy(s3.endpoint, fail_every=3) as proxy:
        uri = upload_dataset(local, f"s3://{BUCKET}/flaky", settings_for(proxy.endpoint))
        uploaded = proxy.failures
        folder = fetch_dataset(uri, settings_for(proxy.endpoint), tmp_path / "cache")
        fetched = proxy.failures - uploaded
    assert uploaded >= 3 and fetched >= 3  # 503, 500 and a dropped connection each time (every 3rd request)
    assert s3.objects(BUCKET, "flaky/")[f"flaky/{MANIFEST_NAME}"] == (local / MANIFEST_NAME).read_bytes()
    FeatureStore(folder).verify()
    assert_same_data(local, folder)


def test_upload_refuses_a_shard_that_does_not_match_and_a_missing_bucket(s3, make_dataset):
    local, _, _ = make_dataset()
    shard = read_manifest(local).shards[1]
    data = bytearray((local / shard.file).read_bytes())
    data[-1] ^= 0xFF
    (local / shard.file).write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=f"{shard.file}: sha256 .* does not match"):
        upload_dataset(local, f"s3://{BUCKET}/refused", settings_for(s3.endpoint))
    assert s3.objects(BUCKET, "refused/") == {}
    (local / shard.file).write_bytes(bytes(data[:-1]))
    with pytest.raises(DatasetError, match=f"{shard.file}: shard is {shard.bytes - 1} bytes"):
        upload_dataset(local, f"s3://{BUCKET}/refused", settings_for(s3.endpoint))

    good, _, _ = make_dataset()
    with pytest.raises(ValueError) as caught:
        upload_dataset(good, "s3://no-such-bucket-here/x", settings_for(s3.endpoint))
    assert len(str(caught.value).splitlines()) == 1 and "'no-such-bucket-here' does not exist" in str(caught.value)
    with pytest.raises(DatasetError, match=f"s3://{BUCKET}/nothing: no dataset manifest there"):
        read_remote_manifest(f"s3://{BUCKET}/nothing", settings_for(s3.endpoint))


def run_cli(*args: str, endpoint: str, data_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **s3_env(endpoint), "PRVR_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "search/dataset.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_upload_info_and_verify(s3, make_dataset, tmp_path):
    local, _, _ = make_dataset()
    manifest = read_manifest(local)
    uploaded = run_cli("upload", str(local), f"s3://{BUCKET}/cli", endpoint=s3.endpoint, data_dir=tmp_path)
    assert uploaded.returncode == 0, uploaded.stderr
    uri = f"s3://{BUCKET}/cli/{MANIFEST_NAME}"
    assert f"manifest: {uri}" in uploaded.stdout
    assert f"python search/run.py --data {uri}" in uploaded.stdout
    assert read_remote_manifest(uri, settings_for(s3.endpoint)) == manifest
    info = run_cli("info", f"s3://{BUCKET}/cli", endpoint=s3.endpoint, data_dir=tmp_path)
    assert info.returncode == 0 and info.stdout.startswith(f"{manifest.name}: {manifest.num_videos} videos"), info
    verify = run_cli("verify", uri, endpoint=s3.endpoint, data_dir=tmp_path)
    assert verify.returncode == 0 and "ok" in verify.stdout, verify.stderr
    assert_same_data(local, tmp_path / "s3" / BUCKET / "cli" / manifest.sha256()[:16])
    missing = run_cli("upload", str(local), "s3://no-such-bucket-here/x", endpoint=s3.endpoint, data_dir=tmp_path)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1 and "'no-such-bucket-here'" in lines[0], missing.stderr
