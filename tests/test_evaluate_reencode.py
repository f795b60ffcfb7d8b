"""Second encodings of a delivered file (evaluate.reencode) on a synthetic speech-like signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from media_cleaner.evaluate.quality import snr_db
from media_cleaner.evaluate.reencode import REENCODINGS, available, has_encoder, reencode
from media_cleaner.evaluate.speech import encode_aac, load_pcm

SECONDS = 2.0


def speech_like(rate: int, seconds: float = SECONDS, seed: int = 1) -> np.ndarray:
    """Voiced syllables: a gliding 110-180 Hz pitch with harmonics under two formant-like peaks, 4 Hz envelope."""
    t = np.arange(int(rate * seconds)) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    rng = np.random.default_rng(seed)
    voice = sum(
        np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        * (np.exp(-(((k * 140 - 700) / 300) ** 2)) + 0.5 * np.exp(-(((k * 140 - 1800) / 400) ** 2)) + 0.05)
        for k in range(1, 25)
    )
    envelope = np.clip(np.sin(2 * np.pi * 2 * t), 0, None) ** 0.5  # syllables with short pauses between them
    return (0.3 * voice * envelope / np.max(np.abs(voice))).astype(np.float32)


@pytest.fixture(scope="module")
def delivered(tmp_path_factory) -> Path:
    """The product's own output for the signal: AAC 128 kb/s, 16 kHz mono."""
    return encode_aac(speech_like(16000)[None], 16000, tmp_path_factory.mktemp("reencode") / "delivered.m4a")


def aligned_snr(reference: np.ndarray, test: np.ndarray, max_lag: int = 2048) -> float:
    """SNR of `test` against `reference` at the integer lag that maximises it (codecs add their own delays)."""
    best = -np.inf
    for lag in range(-max_lag, max_lag + 1, 1):
        shifted = test[lag:] if lag >= 0 else np.pad(test, (-lag, 0))
        n = min(reference.shape[0], shifted.shape[0])
        best = max(best, snr_db(reference[:n], shifted[:n]))
    return best


def test_every_transform_keeps_length_and_content(delivered: Path) -> None:
    reference = load_pcm(delivered)
    names = available()
    assert {"aac_64k", "opus_48k", "resample_8k", "noise_30db"} <= set(names)
    assert ("mp3_96k" in names) == has_encoder("libmp3lame")
    for name in names:
        out = reencode(delivered, name)
        assert out.dtype == np.float32 and out.ndim == 1, name
        assert abs(out.shape[0] - reference.shape[0]) < 0.1 * 16000, (name, out.shape, reference.shape)
        floor = {"noise_30db": 29.0, "resample_8k": 25.0}.get(name, 10.0)  # the codecs: > 10 dB on the waveform
        assert aligned_snr(reference, out) > floor, name


def test_noise_is_seeded_at_the_asked_snr(delivered: Path) -> None:
    reference = load_pcm(delivered)
    a, b = reencode(delivered, "noise_30db"), reencode(delivered, "noise_30db")
    assert np.array_equal(a, b)
    assert snr_db(reference, a) == pytest.approx(30.0, abs=0.3)


def test_telephone_band_removes_what_lies_above_4_khz(tmp_path: Path) -> None:
    t = np.arange(16000 * 2) / 16000
    tones = (0.2 * np.sin(2 * np.pi * 500 * t) + 0.2 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    path = encode_aac(tones[None], 16000, tmp_path / "tones.m4a")
    spectrum = np.abs(np.fft.rfft(reencode(path, "resample_8k")[4000:28000]))
    freqs = np.fft.rfftfreq(24000, 1 / 16000)
    at = {f: spectrum[np.argmin(np.abs(freqs - f))] for f in (500, 6000)}
    assert at[6000] < 1e-3 * at[500]


def test_stereo_44k_file_is_reencoded_to_mono_16k(tmp_path: Path) -> None:
    left = speech_like(44100)
    path = encode_aac(np.stack([left, 0.5 * left]), 44100, tmp_path / "stereo.m4a")
    for name in ("aac_64k", "opus_48k"):
        out = reencode(path, name)
        assert abs(out.shape[0] - SECONDS * 16000) < 0.1 * 16000 and np.max(np.abs(out)) > 0.05, name


def test_unknown_name_raises() -> None:
    with pytest.raises(ValueError, match="unknown re-encoding"):
        reencode("missing.m4a", "youtube_hd")
    assert set(available()) <= set(REENCODINGS)
