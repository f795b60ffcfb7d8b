"""Model registry: resolve, fetch, verify and cache every model's weights."""

from media_cleaner.models.registry import MODELS, ModelRegistry, ModelSpec, WeightFile

__all__ = ["MODELS", "ModelRegistry", "ModelSpec", "WeightFile"]
