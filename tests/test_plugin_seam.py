"""The plugin seam: every accepted (backbone, plugin) pair calls each hook the plugin defines, at training
and at inference (trainables/models/base.py's ``TrainingHooks``, trainables/plugins/base.py's hooks). A
backbone that forgets one in training fails its first step instead of training without the plugin."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

from trainables.data.loader import eval_loaders, train_loader
from trainables.data.synthetic import ensure_synthetic
from trainables.errors import InputError
from trainables.models.base import LossContext, PluginSeamError, TrainingHooks, list_backbones
from trainables.models.mssl import MSSL
from trainables.plugins.base import list_plugins
from trainables.training.config import TrainConfig
from trainables.training.loop import load_data

#: each plugin's settings, most parts on first: a pair runs the first its backbone accepts, so each hook
#: the plugin has is in use wherever the backbone can take it
PARTS: dict[str, list[dict[str, Any]]] = {
    "ral": [{"ral.csa": True}, {"ral.csa": False}],
    "msc": [{"msc.tome": True, "msc.tcpl": True, "msc.cbva": True},
            {"msc.tome": False, "msc.tcpl": True, "msc.cbva": False}],
    "moment": [{}],
}
#: small models (amdnet's heads = its 4 moments)
SMALL = {"hidden_size": 16, "n_heads": 4}
HOOKS = ("transform_videos", "query_features", "frame_score", "losses")


@pytest.fixture(scope="module")
def tiny():
    return load_data(ensure_synthetic("tiny"))


def _model(backbone: str, plugin: str, dims: Any) -> Any:
    """The model with ``plugin``'s first settings in PARTS that ``backbone`` accepts (InputError: none)."""
    refusals = []
    for parts in PARTS[plugin]:
        config = {"backbone": backbone, plugin: True, **parts, **SMALL}
        try:
            return TrainConfig.from_dict(config).build_model(dims, seed=0)
        except InputError as exc:
            refusals.append(str(exc))
    raise InputError("; ".join(refusals))


def _accepted_pairs() -> list[tuple[str, str]]:
    dims = load_data(ensure_synthetic("tiny")).dims
    pairs = []
    for backbone in list_backbones():
        for plugin in list_plugins():
            try:
                _model(backbone, plugin, dims)
            except InputError:  # the plugin cannot run on this backbone (it says why before training)
                continue
            pairs.append((backbone, plugin))
    return pairs


def _count_hooks(plugin: Any) -> Counter:
    """Counts the calls of each hook the plugin defines (the instance's methods wrapped in place)."""
    calls: Counter = Counter()
    for hook in _defined(plugin):
        method = getattr(plugin, hook)

        def counted(*args: Any, _hook: str = hook, _method: Any = method, **kwargs: Any) -> Any:
            calls[_hook] += 1
            return _method(*args, **kwargs)

        object.__setattr__(plugin, hook, counted)
    return calls


def _defined(plugin: Any) -> set[str]:
    return {h for h in HOOKS if plugin.defines(h) and (h != "frame_score" or plugin.replaces_frame_score)}


def test_the_accepted_pairs_cover_every_backbone_and_plugin():
    pairs = _accepted_pairs()
    assert {b for b, _ in pairs} == set(list_backbones()) and {p for _, p in pairs} == set(list_plugins())
    # RAL's CSA replaces the frame score: on every backbone with one (amdnet and meanpool take MSRA only)
    csa = {b for b, p in pairs if p == "ral" and _model(b, p, load_data(ensure_synthetic("tiny")).dims)
           .plugins["ral"].replaces_frame_score}
    assert csa == {"mssl", "gmmformer", "gmmformer2"}


@pytest.mark.parametrize(("backbone", "plugin"), _accepted_pairs())
def test_every_hook_a_plugin_defines_is_called_at_training_and_at_inference(tiny, backbone, plugin):
    model = _model(backbone, plugin, tiny.dims)
    attached = model.plugins[plugin]
    calls = _count_hooks(attached)
    defined = _defined(attached)
    assert "losses" in defined or "frame_score" in defined or "transform_videos" in defined

    batch = next(iter(train_loader(tiny.train, 8, seed=0)))
    context = LossContext(epoch=0, hard_negatives=False, hard_pool_size=4, generator=torch.Generator().manual_seed(0))
    terms = model.train().training_losses(batch, context)
    assert set(calls) == defined, f"training called {dict(calls)}, the plugin defines {sorted(defined)}"
    if "losses" in defined:
        assert any(name.startswith(f"{plugin}.") for name in terms)

    calls.clear()
    video_loader, query_loader = eval_loaders(tiny.val, video_batch=4, query_batch=6)
    v, q = next(iter(video_loader)), next(iter(query_loader))
    with torch.no_grad():
        model.eval()
        videos = model.encode_videos(v["clip_video_features"], v["frame_video_features"], v["videos_mask"],
                                     v.get("frame_scales"))
        scores = model.score(model.encode_queries(q["text_feat"], q["text_mask"]), videos)
    assert scores["fused"].shape == (6, 4)
    inference = defined - {"losses"}  # losses are training-only
    assert set(calls) == inference, f"inference called {dict(calls)}, the plugin defines {sorted(inference)}"


class _WithoutFrameScore(TrainingHooks):
    """Hooks whose frame score a careless backbone never asks for."""

    def __init__(self, hooks: TrainingHooks) -> None:
        self.__dict__.update(vars(hooks))

    def frame_score(self, queries: Any, videos: Any, normalize: bool = True) -> torch.Tensor | None:
        return None


class _ForgetsTheFrameScore(MSSL):
    name = "mssl"

    def _training_losses(self, batch: Any, context: LossContext, hooks: TrainingHooks) -> Any:
        return super()._training_losses(batch, context, _WithoutFrameScore(hooks))


def test_a_backbone_that_skips_a_plugins_frame_score_in_training_fails_its_first_step(tiny):
    model = _model("mssl", "ral", tiny.dims)
    model.__class__ = _ForgetsTheFrameScore
    batch = next(iter(train_loader(tiny.train, 8, seed=0)))
    context = LossContext(epoch=0, hard_negatives=False, hard_pool_size=4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(PluginSeamError, match="backbone mssl: its training step never called hooks.frame_score, so "
                                              "plugin ral would train without its frame score"):
        model.train().training_losses(batch, context)
