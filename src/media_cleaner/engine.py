"""The engine's entry point: `protect(input, output, options, progress, cancel) -> ProtectionReport`.

Knows nothing of HTTP or databases. Works as a library, from the CLI and inside a worker process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from media_cleaner.config import AudioLevel, Settings, normalise_audio_level
from media_cleaner.progress import CancelToken, ProgressCallback, no_progress


@dataclass
class ProtectionOptions:
    epsilon: float = 0.12  # L-inf bound in ImageNet-normalised units; x 57.6 = 8-bit levels
    audio_level: AudioLevel = "weak"
    protect_video: bool = True
    protect_audio: bool = True
    keep_metadata: bool = False
    crf: int | None = None  # None -> settings.video_crf
    measure_quality: bool = True

    def __post_init__(self) -> None:
        self.audio_level = normalise_audio_level(self.audio_level)
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be within [0, 1], got {self.epsilon}")

    @property
    def pixel_bound(self) -> float:
        """The epsilon in 8-bit levels (ImageNet sigma ~0.226)."""
        return self.epsilon * 0.226 * 255.0


@dataclass
class ProtectionReport:
    """JSON-serialisable account of one run: inputs, parameters, timings per phase, quality and efficacy."""

    input: str
    output: str
    parameters: dict[str, Any]
    probe: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    efficacy: dict[str, Any] = field(default_factory=dict)
    video: dict[str, Any] = field(default_factory=dict)  # the video protector's own figures
    audio: dict[str, Any] = field(default_factory=dict)  # the audio protector's own figures

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def protect(
    input_path: str | Path,
    output_path: str | Path,
    options: ProtectionOptions | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    *,
    settings: Settings | None = None,
    protectors: Any = None,
) -> ProtectionReport:
    """Protect one media file. Output is written to a temp file and renamed atomically on success."""
    raise NotImplementedError("filled in by the foundation work (media pipeline)")
