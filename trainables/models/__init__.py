"""PRVR backbones, one self-contained module each, built by name (``create_backbone``)."""

from trainables.models.base import Backbone, Dims, LossContext, create_backbone, list_backbones

__all__ = ["Backbone", "Dims", "LossContext", "create_backbone", "list_backbones"]
