"""Quality metrics: known values, the scipy/OpenCV paths agree, and file comparison aligned by timestamp."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from clips import make_clip
from media_cleaner.evaluate import quality
from media_cleaner.evaluate.quality import compare_videos, frame_errors, psnr, snr_db, ssim, worst_window_snr_db
from media_cleaner.media import EncodeSettings, probe, transcode


def test_psnr_known_values() -> None:
    a = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 5) == pytest.approx(20 * math.log10(255 / 5))


def test_ssim_bounds_and_backends_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:90, 0:120]
    a = np.stack([(x * 2) % 256, (y * 3) % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    noisy = np.clip(a.astype(int) + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    fast = ssim(a, noisy)
    assert 0.3 < fast < 0.99
    monkeypatch.setattr(quality, "cv2", None)
    assert ssim(a, noisy) == pytest.approx(fast, abs=2e-3)
    assert frame_errors(a, noisy)[1] == int(np.abs(a.astype(int) - noisy).max())


def test_frame_errors_match_numpy() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    squares, linf = frame_errors(a, b)
    diff = a.astype(int) - b
    assert squares == pytest.approx(float(np.sum(diff**2))) and linf == np.abs(diff).max()


def test_snr_and_worst_window() -> None:
    rate = 1000
    t = np.arange(4 * rate) / rate
    ref = np.sin(2 * np.pi * 50 * t)[None].astype(np.float32)
    ref[:, 3 * rate :] = 0.0  # a silent last second
    assert snr_db(ref, ref * 1.1) == pytest.approx(20.0, abs=1e-3)  # noise = 0.1 x signal
    test = ref.copy()
    test[:, :rate] += 0.1 * np.sin(2 * np.pi * 7 * t[:rate])  # a louder perturbation in the first second only
    test[:, 3 * rate :] += 0.5  # loud in silence: must not count (no speech energy there)
    worst = worst_window_snr_db(ref, test, rate)
    assert worst == pytest.approx(10 * math.log10(0.5 / 0.005), abs=0.2)
    assert worst_window_snr_db(ref, ref, rate) == math.inf
    assert worst_window_snr_db(np.zeros((1, 4000)), np.ones((1, 4000)), rate) is None


def test_compare_same_file_is_identical(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "a.mp4", frames=8)
    result = compare_videos(clip, clip)
    assert result["frames_compared"] == 8 and result["identical_frames"] == 8
    assert result["psnr_mean_db"] is None and result["ssim_mean"] == pytest.approx(1.0)
    assert result["flicker_mean_abs"] == 0.0 and result["audio"]["snr_db"] is None


def test_compare_aligns_by_timestamp(tmp_path: Path) -> None:
    times = [0, 0.1, 0.2, 0.5, 0.6, 1.0]
    clip = make_clip(tmp_path / "vfr.mkv", frames=6, frame_times=times, audio=())
    out = tmp_path / "shifted.mkv"
    transcode(
        probe(clip),
        out,
        transform=lambda f: np.clip(f.astype(int) + 4, 0, 255).astype(np.uint8),
        encode=EncodeSettings(preset="ultrafast", crf=12),
    )
    result = compare_videos(clip, out)
    assert result["frames_compared"] == 6 and result["max_time_offset_s"] == 0.0
    assert 28 < result["psnr_mean_db"] < 42 and result["psnr_min_db"] <= result["psnr_mean_db"]
    assert [f["t"] for f in result["per_frame"]] == pytest.approx(times, abs=0.002)
    assert "audio" not in result
    limited = compare_videos(clip, out, max_frames=3)
    assert limited["frames_compared"] == 3
