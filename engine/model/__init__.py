"""The reference HT model (ground truth for every backend) and its building blocks."""

from .reference import HTModel, build_reference_model

__all__ = ["HTModel", "build_reference_model"]
