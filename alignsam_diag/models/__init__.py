"""Architectures by name and checkpoint load/save (ours and third-party)."""

from .registry import MODELS, ModelSpec, build_model, count_parameters

__all__ = ["MODELS", "ModelSpec", "build_model", "count_parameters"]
