"""Audio protection against speech recognisers (Whisper first): `create(settings, registry) -> AudioProtector`."""

from __future__ import annotations

from media_cleaner.config import Settings
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.protect.audio.attack import AttackConfig
from media_cleaner.protect.audio.protector import WhisperAudioProtector


def create(settings: Settings, registry: ModelRegistry, config: AttackConfig | None = None) -> WhisperAudioProtector:
    """The engine's entry point; the Whisper surrogate is loaded on first `prepare` and kept warm."""
    return WhisperAudioProtector(settings, registry, config)


__all__ = ["AttackConfig", "WhisperAudioProtector", "create"]
