"""Shared test fixtures: small hand-made datasets in the store format."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.data.writer import DatasetWriter

# The suite never joins a Ray cluster it did not start (another developer's on this machine, a RAY_ADDRESS
# in the shell): every search and ablation it runs, in this process or in a child process (whose environment
# is built from this one), runs on a private local Ray unless its test gives --ray-address, or a test unsets
# this for its own child process (search/ray_target.py).
os.environ["PRVR_RAY_LOCAL"] = "1"
os.environ.pop("RAY_ADDRESS", None)


def write_dataset(
    out: Path,
    *,
    num_videos: int = 7,
    queries_per_video: int = 2,
    video_dim: int = 8,
    query_dim: int = 4,
    dtype: str = "float32",
    sentence_dim: int | None = None,
    videos_per_shard: int = 3,
    queries_per_shard: int = 4,
    seed: int = 0,
    max_frames: int = 40,
) -> tuple[Path, dict, dict]:
    """A random dataset; returns (folder, {video: frames}, {query: (video, tokens, sentence)}).

    Split ``train`` holds videos 0..4 (queries listed in reverse), ``test`` videos 4..end, so video 4's
    queries belong to both.
    """
    rng = np.random.default_rng(seed)
    videos = {f"vid{i}": rng.normal(size=(int(rng.integers(1, max_frames)), video_dim)).astype(dtype)
              for i in range(num_videos)}
    queries = {}
    for i in range(num_videos):
        for k in range(queries_per_video):
            sentence = None if sentence_dim is None else rng.normal(size=sentence_dim).astype(dtype)
            tokens = rng.normal(size=(int(rng.integers(1, 40)), query_dim)).astype(dtype)
            queries[f"vid{i}#enc#{k}"] = (f"vid{i}", tokens, sentence)
    with DatasetWriter(out, name="handmade", video_dim=video_dim, query_dim=query_dim, dtype=dtype,
                       videos_per_shard=videos_per_shard, queries_per_shard=queries_per_shard,
                       sentence_dim=sentence_dim) as writer:
        for vid, frames in videos.items():
            writer.add_video(vid, frames)
        for qid, (vid, tokens, sentence) in queries.items():
            writer.add_query(qid, vid, tokens, text=f"text of {qid}", sentence=sentence)
        writer.set_split("train", [q for q, v in queries.items() if int(v[0][3:]) <= 4][::-1])
        writer.set_split("test", [q for q, v in queries.items() if int(v[0][3:]) >= 4])
    return out, videos, queries


@pytest.fixture(autouse=True, scope="session")
def private_dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads or writes the user's dataset cache (~/.cache/prvr)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PRVR_DATA_DIR", str(tmp_path_factory.mktemp("prvr-data")))
    yield
    mp.undo()


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., tuple[Path, dict, dict]]:
    counter = iter(range(1000))

    def make(**kwargs):
        return write_dataset(tmp_path / f"ds{next(counter)}", **kwargs)

    return make


def assert_chunked_evaluation_matches_full(model, split) -> set[str]:
    """``evaluate`` (videos in batches of 5, queries in chunks of 7) gives, for every branch, the
    metrics of one ``score()`` call on all queries and videos; returns the branches."""
    from trainables.evaluation.evaluate import encode_videos, evaluate, evaluate_ranks
    from trainables.evaluation.metrics import ground_truth_ranks, retrieval_metrics

    chunked = evaluate(model, split, query_chunk=7, video_batch=5)
    with torch.no_grad():
        videos = encode_videos(model, split, torch.device("cpu"), batch_size=1000)
        tokens = [torch.from_numpy(split.query_tokens(i)) for i in range(split.num_queries)]
        text = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(t)) for t in tokens], batch_first=True)
        full = model.score(model.encode_queries(text, mask), videos)
    assert set(chunked) == set(full)
    ranks = evaluate_ranks(model, split, query_chunk=7, video_batch=5)
    for branch in chunked:
        expected = retrieval_metrics(full[branch].numpy(), split.query_video)
        for key, value in expected.items():
            assert chunked[branch][key] == pytest.approx(value), (branch, key)
        # per-query ranks come in the split's query order (what paired per-query statistics rely on)
        assert np.array_equal(ranks[branch], ground_truth_ranks(full[branch].numpy(), split.query_video))
    return set(chunked)


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the module's tests."""
    from servers import moto_server

    with moto_server() as server:
        yield server


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def restored_environ() -> Iterator[None]:
    """This process's environment as it was before the test: entry points and ``ray_session`` set Ray's
    variables in it for the processes they start."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def run_cli_without_ray(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, restored_environ: None
                        ) -> Callable[..., CliResult]:
    """Runs an entry point's ``main`` in this process, as its ``__main__`` does (``search.cli.run_main``), for
    inputs it must refuse before any Ray session: ``ray.init`` raises ``AssertionError``, which no entry
    point turns into a one-line error, so a refusal that comes only after Ray started fails the test. The
    working folder and the environment are restored afterwards."""
    import ray

    from search.cli import run_main

    def refuse(*args, **kwargs):
        raise AssertionError("a Ray session was started before the input was refused")

    monkeypatch.setattr(ray, "init", refuse)

    def run(main: Callable[[list[str] | None], int], *argv: str, cwd: Path) -> CliResult:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = run_main(main, list(argv))
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run
