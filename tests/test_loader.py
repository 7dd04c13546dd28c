"""The loader: a split prepared once by the protocol, training batches of videos with all their queries."""

from __future__ import annotations

import json

import numpy as np
import torch

from trainables.data.loader import eval_loaders, load_split, train_loader
from trainables.data.protocol import Protocol, prepare_query, prepare_video


def test_prepared_split_applies_the_protocol_to_every_item(make_dataset):
    root, videos, queries = make_dataset(num_videos=12, video_dim=5, query_dim=3, max_frames=300, seed=3)
    lengths = [f.shape[0] for f in videos.values()]
    assert max(lengths) > 128 and min(lengths) < 32  # both pooling paths and frame repetition
    for name in ("train", "test"):
        split = load_split(root, name)
        assert split.clips.shape == (split.num_videos, 32, 5)
        for i, vid in enumerate(split.video_ids):
            clips, frames = prepare_video(videos[vid])  # the item-by-item reference (numpy)
            np.testing.assert_allclose(split.clips[i], clips, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(split.video_frames(i), frames, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(split.video_frames(i), axis=1), 1.0, atol=1e-4)
        for i, qid in enumerate(split.query_ids):
            tokens = split.query_tokens(i)
            assert tokens.shape[0] == min(30, queries[qid][1].shape[0])
            np.testing.assert_array_equal(tokens, prepare_query(queries[qid][1]))


def test_manifest_can_turn_normalisation_off(make_dataset):
    root, videos, _ = make_dataset()
    raw = json.loads((root / "manifest.json").read_text())
    raw["l2_normalize"] = False
    (root / "manifest.json").write_text(json.dumps(raw))
    split = load_split(root, "test")
    assert split.protocol == Protocol(l2_normalize=False)
    vid = split.video_ids[0]
    np.testing.assert_array_equal(split.video_frames(0), videos[vid][:128])


def test_training_batches_hold_videos_with_all_their_queries(make_dataset):
    root, _, queries = make_dataset(num_videos=9, queries_per_video=3)
    split = load_split(root, "train")
    seen_videos, seen_queries = [], []
    for batch in train_loader(split, batch_size=2, seed=3):
        labels = batch["text_labels"].tolist()
        num_videos = batch["clip_video_features"].shape[0]
        # contiguous blocks: video row r owns the queries labelled r, rows sorted by query count
        assert labels == sorted(labels) and set(labels) == set(range(num_videos))
        counts = [labels.count(r) for r in range(num_videos)]
        assert counts == sorted(counts, reverse=True)
        for row, video in enumerate(batch["video_index"].tolist()):
            mask = batch["videos_mask"][row]
            n = int(mask.sum())
            assert torch.equal(batch["frame_video_features"][row, :n], torch.from_numpy(split.video_frames(video)))
            assert not batch["frame_video_features"][row, n:].any() and not mask[n:].any()
            assert torch.equal(batch["clip_video_features"][row], torch.from_numpy(split.clips[video]))
        for q_row, (query, label) in enumerate(zip(batch["query_index"].tolist(), labels)):
            video = batch["video_index"][label].item()
            assert split.query_video[query] == video
            n = int(batch["text_mask"][q_row].sum())
            assert torch.equal(batch["text_feat"][q_row, :n], torch.from_numpy(split.query_tokens(query)))
        seen_videos += batch["video_index"].tolist()
        seen_queries += batch["query_index"].tolist()
    assert sorted(seen_videos) == list(range(split.num_videos))
    assert sorted(seen_queries) == list(range(split.num_queries))


def test_shuffling_is_seeded(make_dataset):
    root, _, _ = make_dataset(num_videos=9)
    split = load_split(root, "train")

    def order(seed):
        return [b["video_index"].tolist() for b in train_loader(split, batch_size=2, seed=seed)]

    assert order(1) == order(1) and order(1) != order(2)


def test_eval_loaders_keep_split_order_and_ground_truth(make_dataset):
    root, _, _ = make_dataset()
    split = load_split(root, "test")
    videos, queries = eval_loaders(split, video_batch=2, query_batch=3)
    assert torch.cat([b["video_index"] for b in videos]).tolist() == list(range(split.num_videos))
    gts = torch.cat([b["gt_video"] for b in queries])
    assert gts.tolist() == split.query_video.tolist()
