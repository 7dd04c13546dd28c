"""One vocabulary of loss-term names (trainables/losses/terms.py): every registered backbone, alone and with
each plugin it accepts, trains an epoch on the ``tiny`` synthetic data and reports only names of the
vocabulary, and a loss of one meaning has one name on every backbone (MS-SL's and GMMFormer's clip- and
frame-scale triplets are both ``clip_triplet`` / ``frame_triplet``), so their curves overlay."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from trainables.data.synthetic import ensure_synthetic
from trainables.errors import InputError
from trainables.losses.terms import LOSS_TERMS, plugin_term, term_in_plugin
from trainables.models.base import list_backbones
from trainables.plugins.base import list_plugins
from trainables.training.config import TrainConfig
from trainables.training.loop import DataSplits, load_data, train
from trainables.trial_report import epoch_report

#: small models (amdnet's heads = its 4 moments), one short epoch
SMALL = {"hidden_size": 16, "n_heads": 4, "epochs": 1, "batch_size": 16, "lr": 1e-3, "seed": 3}
#: each plugin's settings, every loss on first; a backbone takes the first it accepts
PARTS: dict[str, list[dict[str, Any]]] = {
    "ral": [{"ral.csa": True}, {"ral.csa": False}],
    "msc": [{"msc.tome": False}, {"msc.tome": False, "msc.cbva": False}],
    "moment": [{}],
}
#: what each backbone's own terms mean, written out here (not read from the vocabulary): the ranking
#: losses by the score they rank on, then each family's own terms
BACKBONE_TERMS = {
    "mssl": {"clip_nce", "clip_triplet", "frame_nce", "frame_triplet"},
    "gmmformer": {"clip_nce", "clip_triplet", "frame_nce", "frame_triplet", "qdl"},
    "gmmformer2": {"clip_nce", "clip_triplet", "frame_nce", "frame_triplet", "qdl", "om"},
    "amdnet": {"clip_nce", "moment.div", "moment.rel"},
    "meanpool": {"frame_nce", "frame_triplet"},
}
#: what each plugin adds, on whichever backbone (msc's cbva where the backbone has frame and clip tokens)
PLUGIN_TERMS = {
    "ral": {"ral.pm", "ral.da"},
    "msc": {"msc.rkd_distance", "msc.rkd_angle", "msc.cbva"},
    "moment": {"moment.div", "moment.rel"},  # AMDNet's own moment losses, by the same names
}
#: the plugin parts some backbones cannot run (they are refused before training, so they add no term)
WITHOUT = {("amdnet", "msc"): {"msc.cbva"}, ("meanpool", "msc"): {"msc.cbva"}}


@cache
def _tiny() -> DataSplits:
    return load_data(ensure_synthetic("tiny"))


def _config(backbone: str, plugin: str | None) -> TrainConfig | None:
    """The backbone's config, with ``plugin``'s first settings in PARTS it accepts (None: it takes none)."""
    if plugin is None:
        return TrainConfig.from_dict({"backbone": backbone, **SMALL})
    for parts in PARTS[plugin]:
        try:
            config = TrainConfig.from_dict({"backbone": backbone, plugin: True, **parts, **SMALL})
            config.build_model(_tiny().dims, seed=0)  # some refusals come only when the model is built
            return config
        except InputError:
            continue
    return None


def _runs() -> list[tuple[str, str | None]]:
    return [(b, None) for b in list_backbones()] + [
        (b, p) for b in list_backbones() for p in list_plugins() if _config(b, p) is not None]


@cache
def _epoch_terms(backbone: str, plugin: str | None) -> dict[str, float]:
    """The loss terms of one trained epoch, as the trial reports them (``loss_<name>``), by name."""
    config = _config(backbone, plugin)
    assert config is not None
    result = train(config.to_dict(), _tiny())
    first = result.history[0]
    report = epoch_report(1, result.val["fused"], first["loss"], result.best_epoch, 0.0)
    reported = {k[len("loss_"):]: v for k, v in report.items() if k.startswith("loss_")}
    assert reported.keys() == first["loss"].keys()
    return reported


def test_every_backbone_and_plugin_is_covered():
    """The tables above name every registered backbone and plugin, and each plugin runs on some backbone."""
    assert set(BACKBONE_TERMS) == set(list_backbones())
    assert set(PLUGIN_TERMS) == set(list_plugins()) == set(PARTS)
    assert {p for _, p in _runs() if p is not None} == set(list_plugins())


@pytest.mark.parametrize(("backbone", "plugin"), _runs())
def test_an_epoch_reports_only_vocabulary_names_with_one_name_per_meaning(backbone, plugin):
    terms = _epoch_terms(backbone, plugin)
    assert set(terms) <= set(LOSS_TERMS), sorted(set(terms) - set(LOSS_TERMS))
    expected = set(BACKBONE_TERMS[backbone])
    if plugin is not None:
        expected |= PLUGIN_TERMS[plugin] - WITHOUT.get((backbone, plugin), set())
    assert set(terms) == expected


def test_mssl_and_gmmformer_ranking_terms_share_names():
    """The issue's case: the clip- and frame-scale triplet (and NCE) of MS-SL and GMMFormer, one name each."""
    mssl, gmm = _epoch_terms("mssl", None), _epoch_terms("gmmformer", None)
    shared = {"clip_nce", "clip_triplet", "frame_nce", "frame_triplet"}
    assert shared <= mssl.keys() & gmm.keys()
    assert all(name in LOSS_TERMS for name in shared)


def test_the_vocabulary_is_all_in_use_and_documented():
    """Every name is produced by some backbone or plugin, has a description, and a plugin's name is
    ``<plugin>.<term>`` of a registered plugin (AMDNet's own moment terms are the moment plugin's)."""
    produced = set().union(*(_epoch_terms(b, p) for b, p in _runs()))
    assert produced == set(LOSS_TERMS)
    assert all(isinstance(text, str) and len(text) > 20 for text in LOSS_TERMS.values())
    for name in (n for n in LOSS_TERMS if "." in n):
        plugin = name.split(".", 1)[0]
        assert plugin in list_plugins() and plugin_term(plugin, term_in_plugin(name)) == name
    with pytest.raises(ValueError, match="not a plugin's loss term"):
        term_in_plugin("clip_nce")
