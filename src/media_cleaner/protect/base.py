"""The small interface every protector implements, so a new target model is a new module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from media_cleaner.config import AudioLevel, AudioObjective, Settings
from media_cleaner.progress import CancelToken, ProgressCallback, no_progress


@dataclass
class VideoContext:
    """What a video protector knows about the clip it is working on."""

    settings: Settings
    epsilon: float  # L-inf bound in ImageNet-normalised units (x 0.226 x 255 = 8-bit levels)
    width: int
    height: int
    fps: float
    frame_count: int | None
    cancel: CancelToken
    stats: dict[str, Any] = field(default_factory=dict)  # the protector's figures for the report
    progress: ProgressCallback = no_progress  # 0..1 over the whole video (frames done / frame_count)
    crf: int | None = None  # the output's x264 CRF and preset (None: the protector's own defaults), so that the
    preset: str | None = None  # attack's real-encoder round trips code the frames as the output file will


@dataclass
class AudioContext:
    settings: Settings
    level: AudioLevel
    sample_rate: int
    channels: int
    cancel: CancelToken
    stats: dict[str, Any] = field(default_factory=dict)
    progress: ProgressCallback = no_progress  # 0..1 over this track's protection
    objective: AudioObjective = "untargeted"  # untargeted | silence | phrase (ProtectionOptions.audio_objective)
    phrase: str = ""  # the phrase to be heard when objective == "phrase", stripped and checked; else ""


class VideoProtector(Protocol):
    """Receives decoded RGB frames in order, batch by batch; returns perturbed frames of the same shape.

    Frames are uint8 arrays of shape (N, H, W, 3). Stateful across batches (temporal coherence).
    """

    name: str

    def prepare(self, ctx: VideoContext) -> None: ...

    def protect_batch(self, frames: np.ndarray, ctx: VideoContext) -> np.ndarray: ...

    def finish(self, ctx: VideoContext) -> None: ...


class AudioProtector(Protocol):
    """Receives one whole track as float32 PCM of shape (channels, samples) in [-1, 1]; returns the same shape."""

    name: str

    def prepare(self, ctx: AudioContext) -> None: ...

    def protect_track(self, pcm: np.ndarray, ctx: AudioContext) -> np.ndarray: ...
