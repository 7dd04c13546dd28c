"""Losses shared by the backbones: triplet ranking, InfoNCE, and the family-specific terms."""
