"""Quality metrics (numpy/scipy, torch-free): PSNR, SSIM, SNR, and a decoded, time-aligned comparison of two files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

try:  # OpenCV's separable blur is ~10x faster than scipy's; same 11-tap kernel and border rule
    import cv2
except ImportError:  # pragma: no cover - opencv-python-headless is a pinned dependency
    cv2 = None

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over all samples; `inf` when identical."""
    if a.dtype == np.uint8 and b.dtype == np.uint8 and a.shape == b.shape:
        squares, _ = frame_errors(a, b)
        mse = squares / max(1, a.size)
    else:
        diff = a.astype(np.float32) - b.astype(np.float32)
        mse = float(np.mean(diff * diff))
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)


def luma(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) float32 luma (BT.601 weights, rounded to integer levels); 2-D input as float32."""
    if frame.ndim == 2:
        return frame.astype(np.float32)
    if cv2 is not None and frame.dtype == np.uint8:
        return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.rint(frame.astype(np.float32) @ _LUMA)


def luma_u8(frame: np.ndarray) -> np.ndarray:
    """Integer luma of a uint8 RGB frame, as int16 so differences of two frames do not wrap."""
    if cv2 is not None and frame.dtype == np.uint8 and frame.ndim == 3:
        return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.int16)
    return luma(frame).astype(np.int16)


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004, Gaussian window sigma 1.5) on luma of one frame pair."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    x, y = luma(a), luma(b)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    blur = _blur_cv2(sigma) if cv2 is not None else lambda z: ndimage.gaussian_filter(z, sigma, truncate=3.5)
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def _blur_cv2(sigma: float):  # noqa: ANN202
    size = 2 * int(3.5 * sigma + 0.5) + 1  # scipy's kernel for truncate=3.5

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (size, size), sigma, borderType=cv2.BORDER_REFLECT)

    return blur


def frame_errors(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """(sum of squared differences, max absolute difference) of two uint8 frames; fast path for per-frame metering."""
    if cv2 is not None and a.dtype == np.uint8 and b.dtype == np.uint8:
        return float(cv2.norm(a, b, cv2.NORM_L2SQR)), int(cv2.norm(a, b, cv2.NORM_INF))
    diff = a.astype(np.int32) - b.astype(np.int32)
    return float(np.sum(diff * diff)), int(np.abs(diff).max()) if diff.size else 0


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-noise ratio of `test` against `reference` in dB (noise = test - reference); `inf` if equal."""
    n = min(reference.shape[-1], test.shape[-1])
    ref = reference[..., :n].astype(np.float64)
    noise = test[..., :n].astype(np.float64) - ref
    p_noise = float(np.mean(noise * noise))
    p_sig = float(np.mean(ref * ref))
    if p_noise == 0.0:
        return math.inf
    if p_sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(p_sig / p_noise)


def worst_window_snr_db(
    reference: np.ndarray, test: np.ndarray, rate: int, window_s: float = 1.0, active_db: float = 20.0
) -> float | None:
    """Lowest SNR over `window_s` windows that carry signal energy (within `active_db` of the loudest window).

    Silent windows are skipped: any perturbation is "infinitely" loud there, which says nothing about audibility
    over speech. None when there is no active window.
    """
    n = min(reference.shape[-1], test.shape[-1])
    size = max(1, int(rate * window_s))
    count = n // size
    if count == 0:
        return None
    ref = reference[..., : count * size].astype(np.float64).reshape(-1, count * size)
    noise = test[..., : count * size].astype(np.float64).reshape(-1, count * size) - ref
    p_sig = np.mean((ref * ref).reshape(ref.shape[0], count, size), axis=(0, 2))
    p_noise = np.mean((noise * noise).reshape(noise.shape[0], count, size), axis=(0, 2))
    loudest = float(p_sig.max())
    if loudest <= 1e-10:
        return None
    active = p_sig >= loudest * 10 ** (-active_db / 10)
    if not np.any(p_noise[active] > 0):
        return math.inf
    with np.errstate(divide="ignore"):
        values = 10.0 * np.log10(p_sig[active] / p_noise[active])  # a window with no noise gives +inf
    return float(values.min())


def finite(value: float | None, digits: int = 3) -> float | None:
    """JSON-safe number: None for inf/nan (identical signals report None plus an explicit flag elsewhere)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def compare_videos(
    original_path: str | Path, protected_path: str | Path, max_frames: int | None = None
) -> dict[str, Any]:
    """Decode both files, align frames by timestamp and report per-frame PSNR/SSIM, flicker and audio SNR."""
    from media_cleaner.evaluate.align import compare_files  # noqa: PLC0415 - keeps this module import-light

    return compare_files(Path(original_path), Path(protected_path), max_frames=max_frames)
