"""Where the perturbation may go: face regions, more where the picture is textured, fading out at the edges."""

from __future__ import annotations

import cv2
import numpy as np


def texture(frame: np.ndarray, window: int = 7) -> np.ndarray:
    """Local standard deviation of luma (float32, H x W), the masking ability of each neighbourhood."""
    y = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    mean = cv2.blur(y, (window, window))
    var = cv2.blur(y * y, (window, window)) - mean * mean
    return np.sqrt(np.maximum(var, 0.0))


def region_mask(
    frame: np.ndarray, region: tuple[int, int, int, int], face: tuple[float, float, float, float], floor: float = 0.45
) -> np.ndarray:
    """Bound map (0..1) over `region` (y0, y1, x0, x1): 1 on textured face pixels, `floor` on flat ones, a smooth
    ramp from the face box out to the region's edge, so nothing changes abruptly."""
    y0, y1, x0, x1 = region
    patch = frame[y0:y1, x0:x1]
    tex = np.clip(texture(patch) / 12.0, 0.0, 1.0)
    shape = floor + (1.0 - floor) * cv2.GaussianBlur(tex, (0, 0), 2.0)
    h, w = y1 - y0, x1 - x0
    fx1, fy1, fx2, fy2 = face
    side = max(fx2 - fx1, fy2 - fy1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # distance outside the (slightly enlarged) face box, in face sizes; 0 inside
    grow = 0.12 * side
    dx = np.maximum(np.maximum(fx1 - grow - x0 - xx, xx - (fx2 + grow - x0)), 0.0)
    dy = np.maximum(np.maximum(fy1 - grow - y0 - yy, yy - (fy2 + grow - y0)), 0.0)
    dist = np.sqrt(dx * dx + dy * dy) / max(side, 1.0)
    feather = np.clip(1.0 - dist / 0.25, 0.0, 1.0)
    feather = feather * feather * (3 - 2 * feather)  # smoothstep
    return (shape * feather).astype(np.float32)
