"""Whisper as a differentiable PyTorch surrogate: CTranslate2 / openai / Hugging Face checkpoints -> openai-whisper."""

from media_cleaner.models.whisper.loader import convert_ct2, load_whisper

__all__ = ["convert_ct2", "load_whisper"]
