"""Decode two versions of a video and compare them frame by frame, aligned by timestamp, plus their audio."""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from scipy import signal

from media_cleaner.evaluate.quality import finite, luma_u8, psnr, snr_db, ssim, worst_window_snr_db
from media_cleaner.media.audio import decode_track
from media_cleaner.media.pipeline import upright
from media_cleaner.media.probe import MediaInfo, open_input, probe

MAX_AUDIO_LAG_S = 0.1


def _frames(info: MediaInfo, max_frames: int | None) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds since the first frame, upright RGB frame) for each decoded frame."""
    container = open_input(info.path)
    try:
        stream = next(s for s in container.streams if s.index == info.video.index)
        stream.codec_context.thread_type = "AUTO"
        first: float | None = None
        step = 1.0 / (info.video.fps or 25.0)
        last = -step
        for count, frame in enumerate(container.decode(stream)):
            if max_frames is not None and count >= max_frames:
                break
            t = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else last + step
            first = t if first is None else first
            last = t
            rgb = frame.to_ndarray(format="rgb24", width=info.video.width, height=info.video.height)
            yield t - first, upright(rgb[None], info.video.rotation)[0]
    finally:
        container.close()


def compare_files(
    original: Path, protected: Path, max_frames: int | None = None, ssim_every: int | None = None
) -> dict[str, Any]:
    """PSNR/SSIM per frame (aligned by timestamp), their mean and min, temporal flicker and audio SNR."""
    info_o, info_p = probe(original), probe(protected)
    pixels = info_p.video.display_width * info_p.video.display_height
    if ssim_every is None:
        # Full-resolution SSIM costs ~0.1-0.3 s a frame at 1080p: sample 1 frame a second above VGA.
        ssim_every = 1 if pixels <= 640 * 480 else max(1, int(round(info_p.video.fps or 1)))
    originals = _frames(info_o, None)
    current = next(originals, None)
    upcoming = next(originals, None)
    per_frame: list[dict[str, Any]] = []
    psnrs: list[float] = []
    ssims: list[float] = []
    flicker: list[float] = []
    offsets: list[float] = []
    previous_diff: np.ndarray | None = None
    for i, (t, frame_p) in enumerate(_frames(info_p, max_frames)):
        while upcoming is not None and abs(upcoming[0] - t) <= abs(current[0] - t):
            current, upcoming = upcoming, next(originals, None)
        if current is None:
            break
        t_o, frame_o = current
        h, w = min(frame_o.shape[0], frame_p.shape[0]), min(frame_o.shape[1], frame_p.shape[1])
        a, b = frame_o[:h, :w], frame_p[:h, :w]  # the protected file may carry one padded row/column
        value = psnr(a, b)
        entry: dict[str, Any] = {"t": round(t, 4), "psnr_db": finite(value)}
        psnrs.append(value)
        offsets.append(abs(t - t_o))
        if i % ssim_every == 0:
            entry["ssim"] = round(ssim(a, b), 5)
            ssims.append(entry["ssim"])
        diff = luma_u8(b) - luma_u8(a)
        if previous_diff is not None and previous_diff.shape == diff.shape:
            flicker.append(float(np.mean(np.abs(diff - previous_diff), dtype=np.float64)))
        previous_diff = diff
        per_frame.append(entry)
    finite_psnr = [p for p in psnrs if math.isfinite(p)]
    result: dict[str, Any] = {
        "frames_compared": len(per_frame),
        "frames_original": info_o.video.frame_count,
        "frames_protected": info_p.video.frame_count,
        "max_time_offset_s": round(max(offsets), 4) if offsets else None,
        "psnr_mean_db": finite(float(np.mean(finite_psnr))) if finite_psnr else None,
        "psnr_min_db": finite(min(finite_psnr)) if finite_psnr else None,
        "identical_frames": len(psnrs) - len(finite_psnr),
        "ssim_mean": round(float(np.mean(ssims)), 5) if ssims else None,
        "ssim_min": round(float(np.min(ssims)), 5) if ssims else None,
        "ssim_every": ssim_every,
        "flicker_mean_abs": round(float(np.mean(flicker)), 4) if flicker else 0.0,
        "per_frame": per_frame,
    }
    if info_o.audio and info_p.audio:
        result["audio"] = compare_audio(info_o, info_p)
    return result


def _mono(pcm: np.ndarray) -> np.ndarray:
    return pcm.mean(axis=0) if pcm.shape[0] > 1 else pcm[0]


def compare_audio(info_o: MediaInfo, info_p: MediaInfo) -> dict[str, Any]:
    """SNR of the first audio track of `info_p` against that of `info_o`, after a small lag search."""
    ref, rate_o, _, _ = decode_track(info_o.path, info_o.audio[0].index)
    test, rate_p, _, _ = decode_track(info_p.path, info_p.audio[0].index)
    if rate_p != rate_o:
        ratio = Fraction(rate_o, rate_p).limit_denominator(1000)
        test = signal.resample_poly(test, ratio.numerator, ratio.denominator, axis=1).astype(np.float32)
    if ref.shape[0] != test.shape[0]:
        ref, test = _mono(ref)[None], _mono(test)[None]
    lag = _best_lag(_mono(ref), _mono(test), int(MAX_AUDIO_LAG_S * rate_o))
    if lag > 0:
        test = test[:, lag:]
    elif lag < 0:
        ref = ref[:, -lag:]
    n = min(ref.shape[1], test.shape[1])
    ref, test = ref[:, :n], test[:, :n]
    return {
        "sample_rate": rate_o,
        "lag_samples": lag,
        "snr_db": finite(snr_db(ref, test)),
        "worst_window_snr_db": finite(worst_window_snr_db(ref, test, rate_o)),
        "seconds": round(n / rate_o, 3),
    }


def _best_lag(ref: np.ndarray, test: np.ndarray, max_lag: int) -> int:
    """Lag (samples) by which `test` trails `ref`, within +-max_lag, from cross-correlation of the first 10 s."""
    n = min(len(ref), len(test), max_lag * 100 + 1)
    if n < 2 * max_lag + 2 or not np.any(ref[:n]):
        return 0
    corr = signal.correlate(test[:n], ref[:n], mode="full", method="fft")
    centre = n - 1
    window = corr[centre - max_lag : centre + max_lag + 1]
    return int(np.argmax(window)) - max_lag


__all__ = ["compare_audio", "compare_files"]
