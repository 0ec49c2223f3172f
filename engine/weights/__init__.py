"""Checkpoint key layouts, import of the authors' checkpoints, and seeded random packages."""

from .importer import import_checkpoints
from .random_init import random_package_tensors

__all__ = ["import_checkpoints", "random_package_tensors"]
