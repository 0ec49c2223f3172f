"""Packaging metadata lives in pyproject.toml; this file exists for the optional CUDA extension (csrc/)."""

from setuptools import setup

setup()
