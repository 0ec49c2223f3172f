"""The engine version (one place: the package metadata, `ht-engine --version` and every provenance record)."""

__version__ = "0.1.0"
