"""Common random numbers: each module's initial weights and each plugin's samples have their own stream."""

from __future__ import annotations

import torch

from trainables.data.loader import train_loader
from trainables.data.synthetic import ensure_synthetic
from trainables.models.base import Dims, LossContext
from trainables.training.config import TrainConfig
from trainables.training.loop import load_data
from trainables.training.random_streams import stream_seed

DIMS = Dims(video_dim=12, query_dim=10)
SMALL = {"backbone": "gmmformer", "hidden_size": 16, "n_heads": 4}


def _weights(config: dict, seed: int | None = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)  # what the stream-less build draws from
    return TrainConfig.from_dict({**SMALL, **config}).build_model(DIMS, seed=seed).state_dict()


def _shared(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    return [k for k in a if k in b and k.startswith(prefix)]


def test_a_plugin_switched_on_leaves_the_other_modules_initial_weights():
    bare, with_ral, with_both = _weights({}), _weights({"ral": True}), _weights({"ral": True, "msc": True})
    only_msc = _weights({"msc": True})
    for a, b in ((bare, with_ral), (bare, with_both), (with_ral, with_both)):
        keys = _shared(a, b)
        assert keys and all(torch.equal(a[k], b[k]) for k in keys)
    msc_keys = _shared(only_msc, with_both, "plugins.msc")
    assert msc_keys and all(torch.equal(only_msc[k], with_both[k]) for k in msc_keys)  # built after ral in both
    # without streams, msc's weights depend on whether ral was drawn first: the property is the streams'
    old_both, old_msc = _weights({"ral": True, "msc": True}, seed=None), _weights({"msc": True}, seed=None)
    assert not all(torch.equal(old_msc[k], old_both[k]) for k in msc_keys)


def test_seeded_build_depends_on_the_seed_only():
    assert all(torch.equal(v, _weights({"ral": True}, seed=5)[k]) for k, v in _weights({"ral": True}, seed=5).items())
    first, other = _weights({}, seed=0), _weights({}, seed=1)
    assert not all(torch.equal(v, other[k]) for k, v in first.items())
    before = torch.get_rng_state()
    TrainConfig.from_dict(SMALL).build_model(DIMS, seed=0)
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is left alone


def _negatives_after_a_step(config: dict, data) -> torch.Tensor:
    """The backbone's negative-sampling generator state after one training step of ``config``."""
    model = TrainConfig.from_dict({**SMALL, **config}).build_model(data.dims, seed=0)
    batch = next(iter(train_loader(data.train, 8, seed=0)))
    plugins = {name: torch.Generator().manual_seed(stream_seed(0, 0, 1, name)) for name in model.plugins}
    context = LossContext(epoch=0, hard_negatives=True, hard_pool_size=4,
                          generator=torch.Generator().manual_seed(7), plugin_generators=plugins)
    model.training_losses(batch, context)
    return context.generator.get_state()


def test_a_plugins_samples_do_not_move_the_backbones_negatives():
    """RAL draws its proxies from its own stream, so the backbone's negatives are the same draws with it on."""
    data = load_data(ensure_synthetic("tiny"))
    bare = _negatives_after_a_step({}, data)
    assert torch.equal(_negatives_after_a_step({"ral": True}, data), bare)
    assert torch.equal(_negatives_after_a_step({"ral": True, "ral.k": 3}, data), bare)
    untouched = torch.Generator().manual_seed(7).get_state()
    assert not torch.equal(bare, untouched)  # the backbone does draw from it
