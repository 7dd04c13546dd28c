"""PRVR backbones, one self-contained module each, built by name (``create_backbone``)."""

from trainables.models.base import Backbone, Dims, LossContext, create_backbone, list_backbones

__all__ = ["Backbone", "Dims", "LossContext", "create_backbone", "list_backbones"]

from trainables.models import (
    amdnet,  # noqa: E402,F401  (registers "amdnet")
    gmmformer,  # noqa: E402,F401  (registers "gmmformer")
    gmmformer2,  # noqa: E402,F401  (registers "gmmformer2")
    meanpool,  # noqa: E402,F401  (registers "meanpool")
    mssl,  # noqa: E402,F401  (registers "mssl")
)
