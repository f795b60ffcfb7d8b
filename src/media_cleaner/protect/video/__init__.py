"""Video protection against face detectors (MTCNN surrogate): `create(settings, registry) -> VideoProtector`."""

from __future__ import annotations

from media_cleaner.config import Settings
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.protect.video.protector import FaceVideoProtector, VideoAttackConfig, pixel_bound


def create(settings: Settings, registry: ModelRegistry, config: VideoAttackConfig | None = None) -> FaceVideoProtector:
    """The engine's entry point; MTCNN is loaded on the first `prepare` and kept warm."""
    return FaceVideoProtector(settings, registry, config)


__all__ = ["FaceVideoProtector", "VideoAttackConfig", "create", "pixel_bound"]
