from __future__ import annotations

import pytest
from pydantic import ValidationError

from media_cleaner.config import load_settings, normalise_audio_level


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("слабый", "weak"),
        ("Средний", "medium"),
        ("сильный", "strong"),
        ("weak", "weak"),
        ("STRONG", "strong"),
    ],
)
def test_audio_levels_accept_spec_and_english_names(given: str, expected: str) -> None:
    assert normalise_audio_level(given) == expected


def test_unknown_audio_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown audio level"):
        normalise_audio_level("loud")


def test_spec_defaults() -> None:
    s = load_settings()
    assert (s.host, s.port, s.max_video_size_gb, s.max_concurrent_tasks) == ("0.0.0.0", 8000, 2.0, 3)
    assert (s.task_timeout_hours, s.default_video_epsilon, s.default_audio_level) == (24.0, 0.12, "weak")


def test_env_overrides_file_and_flags_override_env(tmp_path, monkeypatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text('port = 9000\nmax_concurrent_tasks = 5\ndefault_audio_level = "сильный"\n')
    monkeypatch.setenv("MEDIA_CLEANER_MAX_CONCURRENT_TASKS", "7")
    s = load_settings(config, host="127.0.0.1")
    assert (s.port, s.max_concurrent_tasks, s.host, s.default_audio_level) == (9000, 7, "127.0.0.1", "strong")


def test_bad_values_fail_validation() -> None:
    with pytest.raises(ValidationError):
        load_settings(port=70000)
    with pytest.raises(ValidationError):
        load_settings(unknown_key=1)
