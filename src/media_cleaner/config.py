"""One settings object for the whole product: spec defaults, then a config file, then MEDIA_CLEANER_* env vars.

No other module reads the environment; everything receives a `Settings` instance.
"""

from __future__ import annotations

import json
import tomllib
import unicodedata
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AudioLevel = Literal["weak", "medium", "strong"]

# The spec's Russian level names are a promise to users; both spellings are accepted everywhere.
AUDIO_LEVEL_ALIASES: dict[str, AudioLevel] = {
    "weak": "weak",
    "medium": "medium",
    "strong": "strong",
    "слабый": "weak",
    "средний": "medium",
    "сильный": "strong",
}


def _canonical(value: str, aliases: dict[str, Any], what: str) -> Any:
    """`value` (any case, spaces around) looked up in `aliases`, or ValueError naming `what` and the choices."""
    key = str(value).strip().lower()
    if key not in aliases:
        raise ValueError(f"unknown {what} {value!r}; expected one of: {', '.join(aliases)}")
    return aliases[key]


def normalise_audio_level(value: str) -> AudioLevel:
    """Map `weak/medium/strong` or `слабый/средний/сильный` (any case) to the canonical English name."""
    return _canonical(value, AUDIO_LEVEL_ALIASES, "audio level")


AudioObjective = Literal["untargeted", "silence", "phrase"]

# What the speech attack aims for: the true transcript lost (untargeted), nothing heard, or a chosen phrase heard.
AUDIO_OBJECTIVE_ALIASES: dict[str, AudioObjective] = {
    "untargeted": "untargeted",
    "silence": "silence",
    "phrase": "phrase",
    "нецелевая": "untargeted",
    "тишина": "silence",
    "фраза": "phrase",
}
AUDIO_PHRASE_MAX_CHARS = 200


def normalise_audio_objective(value: str) -> AudioObjective:
    """Map `untargeted/silence/phrase` or `нецелевая/тишина/фраза` (any case) to the canonical English name."""
    return _canonical(value, AUDIO_OBJECTIVE_ALIASES, "audio objective")


def check_audio_target(objective: str, phrase: str | None) -> tuple[AudioObjective, str]:
    """The canonical (objective, phrase) pair, or ValueError.

    The objective `phrase` needs a phrase: stripped, non-empty, at most AUDIO_PHRASE_MAX_CHARS characters, no control
    characters. A phrase with any other objective is refused, so a mistyped objective never runs as something else.
    """
    canonical = normalise_audio_objective(objective)
    text = (phrase or "").strip()
    if canonical != "phrase":
        if text:
            raise ValueError(f"audio phrase given but the audio objective is {canonical!r}; use objective 'phrase'")
        return canonical, ""
    if not text:
        raise ValueError("audio objective 'phrase' needs a non-empty audio phrase")
    if len(text) > AUDIO_PHRASE_MAX_CHARS:
        raise ValueError(f"audio phrase is {len(text)} characters long; at most {AUDIO_PHRASE_MAX_CHARS} allowed")
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Cn") for ch in text):  # Cf stays: joiners belong in scripts
        raise ValueError("audio phrase must not contain control characters (newlines, tabs...) or unassigned ones")
    return canonical, text


class Settings(BaseSettings):
    """Effective configuration. Keys of the spec's SERVER_CONFIG keep their names."""

    model_config = SettingsConfigDict(env_prefix="MEDIA_CLEANER_", extra="forbid", validate_default=True)

    # The spec's SERVER_CONFIG keys.
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    max_video_size_gb: float = Field(2.0, gt=0)
    max_concurrent_tasks: int = Field(3, ge=1, le=256)
    task_timeout_hours: float = Field(24.0, gt=0)
    default_video_epsilon: float = Field(0.120, ge=0.0, le=1.0)
    default_audio_level: AudioLevel = "weak"

    # Directories the spec creates automatically (relative to `base_dir`).
    base_dir: Path = Path(".")
    input_dir: Path = Path("videos_input")
    output_dir: Path = Path("videos_output")
    temp_dir: Path = Path("videos_temp")
    log_dir: Path = Path("server_logs")
    queue_dir: Path = Path("queue_db")

    # Queue, database, storage.
    database_url: str = ""  # empty -> sqlite:///<queue_dir>/tasks.db
    storage_url: str = ""  # empty -> the local directories above
    max_attempts: int = Field(3, ge=1)
    retention_hours: float = Field(24.0 * 7, gt=0)
    cleanup_interval_minutes: float = Field(60.0, gt=0)
    # "auto": procrastinate for a postgresql database_url, else "local" (workers on this machine poll the tasks table)
    queue_backend: str = "auto"
    heartbeat_timeout_seconds: float = Field(30.0, gt=0)  # a processing task silent this long is recovered
    cancel_grace_seconds: float = Field(10.0, ge=0)  # after cancel/timeout, kill the worker if still busy
    poll_interval_seconds: float = Field(0.5, gt=0)  # idle workers look for pending tasks this often
    max_pending_tasks: int = Field(1000, ge=1)  # uploads beyond this answer 503 queue_full
    max_concurrent_uploads: int = Field(16, ge=1)  # uploads streamed/probed at once; more wait
    webhook_max_attempts: int = Field(8, ge=1)
    webhook_timeout_seconds: float = Field(10.0, gt=0)

    # Models and devices.
    model_dir: Path | None = None  # explicit weights directory; searched first
    model_cache_dir: Path = Path.home() / ".cache" / "media_cleaner"
    allow_model_download: bool = True
    device: str = "cpu"
    torch_threads: int = Field(0, ge=0)  # 0 -> torch's default
    # threads that share a video attack step's faces, each running its own small ops on torch_threads (or 1) threads;
    # 0 -> the CPU count // torch_threads, at most 4 (1 on a GPU)
    video_attack_workers: int = Field(0, ge=0)

    # Output encoding.
    video_crf: int = Field(18, ge=0, le=51)
    video_preset: str = "medium"
    audio_bitrate: str = "128k"
    keep_metadata: bool = False
    measure_efficacy: bool = True  # server jobs: sample detectors/recognisers on the delivered file

    # Security.
    api_keys: dict[str, str] = Field(default_factory=dict)  # key -> user id; empty -> auth off
    webhook_secret: str = ""
    webhook_allow_private: bool = False
    debug: bool = False
    log_json: bool = False

    @field_validator("default_audio_level", mode="before")
    @classmethod
    def _audio_level(cls, value: Any) -> str:
        return normalise_audio_level(value)

    def path(self, name: Literal["input", "output", "temp", "log", "queue"]) -> Path:
        """Absolute directory for one of the spec's automatic directories."""
        relative: Path = getattr(self, f"{name}_dir")
        return relative if relative.is_absolute() else (self.base_dir / relative).resolve()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_video_size_gb * 1024**3)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.path('queue') / 'tasks.db'}"


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Defaults <- config file (TOML or JSON) <- environment <- explicit overrides (e.g. CLI flags)."""
    file_values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        text = path.read_text(encoding="utf-8")
        file_values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    env_values = Settings().model_dump(exclude_unset=True)
    merged = {**file_values, **env_values, **{k: v for k, v in overrides.items() if v is not None}}
    return Settings(**merged)
