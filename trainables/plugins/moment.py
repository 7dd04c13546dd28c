"""AMDNet's moment losses as a training-only plugin (spec section C; ``songpipi/AMDNet``).

Two loss terms, named ``moment.div`` and ``moment.rel`` in a run's loss history:

* ``div`` = div_weight * L_div: K soft temporal masks per video, each normalised to sum 1 (G), should
  overlap little: L_div = mean_b ||G_b G_b^T - div_target * I_K||_F^2 (AMDNet: weight 1, target 0.15).
* ``rel`` = rel_weight * L_rel: the best of the K moments of a query's own video must beat that video's
  global vector by ``rel_margin`` in cosine:
  L_rel = mean_q max(0, rel_margin + cos(q, g_y(q)) - max_k cos(q, m_y(q),k)) (AMDNet: weight 25, margin 0.02).

The math is ``trainables.losses.moment`` (shared with the AMDNet backbone). Where the pieces come from:

* **Masks and moments.** A backbone that exposes ``moment_masks`` (B, K, M) declares its K as the config
  field ``event_size``; the plugin then uses its masks (and its ``moments`` if given, else masks @
  clip_tokens), adds no parameters, and ``k`` must be unset or equal ``event_size`` (else an InputError at
  build time: the backbone fixes K). Every other backbone gets a light K-anchor head, AMDNet's own
  ``SpanAnchors`` on the clip tokens: v = Linear(LayerNorm(mean of the M clip tokens)), K (centre, width) =
  sigmoid(Linear(v)), peak-1 Gaussian masks over the M clip positions (``gaussian_moment_masks``), and
  moments = masks @ clip_tokens (peak-1 masks, not renormalised, as released; L_rel only uses cosines).
  ``k`` unset means 4 (AMDNet's ``event_size``). The head's v only places the anchors.
* **Global vector** for L_rel, first available of: the backbone's ``global`` (GMMFormer: its
  attention-pooled frame vector); the masked mean of ``frame_tokens`` (MS-SL, GMMFormer v2); the mean of
  the ``clip_tokens``. ``rel_moments: "clips"`` takes the M clip tokens themselves as the candidate
  moments (spec C.2's "GMMFormer's 32 clip tokens") instead of the K anchor moments.

Backbones: needs ``clip_tokens`` (so ``meanpool`` is rejected); ``amdnet`` is rejected because it already
trains with these losses (its ``div_weight``/``rel_weight`` set them). Only the ``losses`` hook is used,
so the plugin costs nothing at inference (the anchor head's weights are stored but never run there).

Release detail not carried over: AMDNet encodes the queries a second time for L_rel (another dropout
draw); the plugin reuses the backbone's training queries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from trainables.errors import InputError
from trainables.losses.moment import moment_diversity, moment_relevance
from trainables.losses.terms import MOMENT_DIVERSITY, MOMENT_RELEVANCE, term_in_plugin
from trainables.models.amdnet import SpanAnchors, gaussian_moment_masks
from trainables.models.base import BackboneConfig, Dims, LossContext, Tensors
from trainables.models.components import init_weights
from trainables.models.meanpool import masked_mean
from trainables.plugins.base import Plugin, PluginConfig, check_choice, check_range, register_plugin

if TYPE_CHECKING:
    from trainables.models.base import Backbone

DEFAULT_K = 4  # AMDNet's event_size
REL_MOMENTS = ("anchors", "clips")
#: config fields of a backbone that trains with the moment losses itself (AMDNet)
OWN_MOMENT_LOSS_KEYS = ("div_weight", "rel_weight")


@dataclass(frozen=True)
class MomentConfig(PluginConfig):
    """AMDNet's released defaults (``Losses/loss.py``, ``Configs/tvr.py``).

    ``k``: number of moments (None: the backbone's ``event_size`` if it has moment masks, else 4);
    ``div`` / ``rel``: switch each loss (at least one on); ``rel_moments``: the candidates of L_rel,
    the K anchor moments (as released) or the M clip tokens.
    """

    k: int | None = None
    div: bool = True
    rel: bool = True
    div_weight: float = 1.0
    div_target: float = 0.15
    rel_weight: float = 25.0
    rel_margin: float = 0.02
    rel_moments: str = "anchors"

    def validate(self) -> None:
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise InputError(f"k must be an integer >= 1 (or unset), got {self.k!r}")
        for key in ("div", "rel"):
            if not isinstance(getattr(self, key), bool):
                raise InputError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if not (self.div or self.rel):
            raise InputError("div and rel are both false: switch at least one moment loss on")
        check_range(self, "div_weight", 0.0)
        # entries of G G^T lie in [0, 1] for sum-1 non-negative masks, so a target above 1 is unreachable
        check_range(self, "div_target", 0.0, 1.0)
        check_range(self, "rel_weight", 0.0)
        check_range(self, "rel_margin", 0.0, 2.0)  # a cosine difference is at most 2
        check_choice(self, "rel_moments", REL_MOMENTS)


def _trains_own_moment_losses(backbone: type[Backbone]) -> bool:
    fields = {f.name for f in dataclasses.fields(backbone.Config)}
    return "moment_masks" in backbone.features and all(key in fields for key in OWN_MOMENT_LOSS_KEYS)


@register_plugin("moment")
class MomentPlugin(Plugin):
    """Moment diversity and moment relevance losses on any backbone with clip tokens (training only)."""

    Config = MomentConfig
    config: MomentConfig
    requires: ClassVar[frozenset[str]] = frozenset({"query", "clip_tokens"})

    @classmethod
    def check(cls, config: PluginConfig, backbone: type[Backbone]) -> None:
        if "clip_tokens" not in backbone.features:
            raise InputError(f"plugin {cls.name} cannot run on backbone {backbone.name}: it needs clip_tokens (the "
                             f"moments are soft spans over the clip tokens), which {backbone.name} does not have "
                             f"({backbone.name} provides: {', '.join(sorted(backbone.features))})")
        if _trains_own_moment_losses(backbone):
            raise InputError(f"plugin {cls.name} cannot run on backbone {backbone.name}: {backbone.name} already "
                             f"trains with its moment losses; set div_weight/rel_weight on the backbone")
        super().check(config, backbone)

    def __init__(self, config: MomentConfig, backbone: BackboneConfig, dims: Dims) -> None:
        super().__init__(config, backbone, dims)
        backbone_k: int | None = getattr(backbone, "event_size", None)
        #: True: the backbone supplies ``moment_masks`` (K = its event_size); False: the anchor head does
        self.uses_backbone_masks = backbone_k is not None
        if self.uses_backbone_masks and config.k is not None and config.k != backbone_k:
            raise InputError(f"plugin {self.name}: k ({config.k}) must equal the backbone's event_size "
                             f"({backbone_k}) or be unset: the plugin uses the backbone's own moment masks")
        self.k = backbone_k if backbone_k is not None else (config.k or DEFAULT_K)  # i.e. uses_backbone_masks
        needs_head = not self.uses_backbone_masks and (config.div or (config.rel and config.rel_moments == "anchors"))
        self.anchors = SpanAnchors(self.hidden_size, self.k) if needs_head else None
        if self.anchors is not None:
            init_weights(self.anchors)  # AMDNet's initialisation (the release inits the whole model so)

    # -- the pieces -----------------------------------------------------------------------------------
    def moment_set(self, features: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
        """(masks (B, K, M) with peak 1, moments (B, K, H)) in float32: the backbone's or the anchor head's."""
        clip_tokens = features["clip_tokens"].float()
        if self.uses_backbone_masks:
            if "moment_masks" not in features:
                raise ValueError(f"plugin {self.name}: the backbone has an event_size but returned no moment_masks")
            masks = features["moment_masks"].float()
            moments = features["moments"].float() if "moments" in features else masks @ clip_tokens
            return masks, moments
        assert self.anchors is not None
        _, centres, widths = self.anchors(features["clip_tokens"])
        masks = gaussian_moment_masks(centres.float(), widths.float(), clip_tokens.shape[1])
        return masks, masks @ clip_tokens

    @staticmethod
    def global_vector(features: Tensors) -> torch.Tensor:
        """(B, H) float32: the backbone's ``global``, else the masked mean of frames, else the mean of clips."""
        if "global" in features:
            return features["global"].float()
        if "frame_tokens" in features:
            return masked_mean(features["frame_tokens"].float(), features["frame_mask"])
        return features["clip_tokens"].float().mean(dim=1)

    # -- the hook ---------------------------------------------------------------------------------------
    def losses(self, features: Tensors, batch: Tensors, context: LossContext) -> Tensors:
        """{"div", "rel"} weighted terms (the switched-on ones); ``batch`` and ``context`` are unused."""
        c = self.config
        need_moments = c.div or (c.rel and c.rel_moments == "anchors")
        masks, moments = self.moment_set(features) if need_moments else (None, None)
        terms: Tensors = {}
        if c.div:
            assert masks is not None  # need_moments holds with div
            terms[term_in_plugin(MOMENT_DIVERSITY)] = c.div_weight * moment_diversity(masks, c.div_target)
        if c.rel:
            candidates = moments if c.rel_moments == "anchors" else features["clip_tokens"].float()
            assert candidates is not None  # need_moments holds with rel_moments == "anchors"
            terms[term_in_plugin(MOMENT_RELEVANCE)] = c.rel_weight * moment_relevance(
                features["query"].float(), self.global_vector(features), candidates, features["text_labels"],
                c.rel_margin)
        return terms


__all__ = ["MomentConfig", "MomentPlugin"]
