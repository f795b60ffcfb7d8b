"""OpenCV's INTER_AREA resize as separable weight matrices: exact (to float rounding) and differentiable.

`MTCNN.detect` builds its pyramid and its R-/O-Net crops with `cv2.resize(..., INTER_AREA)`, whose fractional-area
weights differ from torch's `interpolate(mode="area")` (integer bins) by 8-17 levels on fine detail. An attack that
optimises through torch's resampling tunes its perturbation to a sampling grid the detector never uses; these
matrices reproduce the detector's own, so a region of a frame can be resampled exactly as the whole frame would be.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=8192)
def _weights(n_in: int, n_out: int, area: bool) -> np.ndarray:
    w = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    if area:  # shrinking both axes: each output averages the input interval it covers, partial pixels pro rata
        for j in range(n_out):
            a, b = j * scale, (j + 1) * scale
            for i in range(int(math.floor(a)), min(n_in, int(math.ceil(b)))):
                w[j, i] = max(0.0, min(b, i + 1) - max(a, i))
            w[j] /= w[j].sum()
        return w.astype(np.float32)
    # otherwise OpenCV interpolates linearly with its INTER_AREA-specific fractions (resize.cpp)
    inv = n_out / n_in
    for j in range(n_out):
        sx = int(math.floor(j * scale))
        fx = (j + 1) - (sx + 1) * inv
        fx = 0.0 if fx <= 0 else fx - math.floor(fx)
        if sx >= n_in - 1:
            w[j, n_in - 1] = 1.0
        else:
            w[j, sx] += 1 - fx
            w[j, sx + 1] += fx
    return w.astype(np.float32)


def area_weights(n_in: int, n_out: int, area: bool = True) -> torch.Tensor:
    """(n_out, n_in) weights of one axis; `area` when both axes shrink (OpenCV's rule for INTER_AREA)."""
    return torch.from_numpy(_weights(n_in, n_out, area))


def resize_area(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`cv2.resize(img, (w, h), interpolation=INTER_AREA)` on (..., H, W) tensors."""
    h, w = x.shape[-2:]
    area = size[0] <= h and size[1] <= w
    ay = area_weights(h, size[0], area).to(x)
    ax = area_weights(w, size[1], area).to(x)
    return ay @ x @ ax.T


def inner_span(n_in: int, n_out: int, lo: int, hi: int) -> tuple[int, int]:
    """Output indices [j0, j1) of an area shrink n_in -> n_out whose inputs all lie in [lo, hi)."""
    scale = n_in / n_out
    j0 = int(math.ceil(lo / scale - 1e-9))
    j1 = int(math.floor(hi / scale + 1e-9))
    while j0 < j1 and math.floor(j0 * scale) < lo:
        j0 += 1
    while j1 > j0 and math.ceil(j1 * scale - 1e-9) > hi:
        j1 -= 1
    return j0, j1


def shrink_window(
    x: torch.Tensor, origin: tuple[int, int], frame: tuple[int, int], size: tuple[int, int], even: bool = True
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The part of the whole frame's area shrink to `size` that depends only on the pixels in `x`.

    `x` (..., h, w) holds the frame's pixels from `origin` (y, x); `frame` is the whole frame's (H, W). Returns the
    exact level values over that window and the window's first level index (y, x), rounded up to an even index when
    `even` (so P-Net's stride-2 cells on the window are the cells of the whole level).
    """
    (oy, ox), (fh, fw) = origin, frame
    h, w = x.shape[-2:]
    (y0, y1), (x0, x1) = inner_span(fh, size[0], oy, oy + h), inner_span(fw, size[1], ox, ox + w)
    if even:
        y0, x0 = y0 + (y0 % 2), x0 + (x0 % 2)
    if y1 <= y0 or x1 <= x0:
        return x.new_zeros((*x.shape[:-2], 0, 0)), (y0, x0)
    ay = area_weights(fh, size[0])[y0:y1, oy : oy + h].to(x)
    ax = area_weights(fw, size[1])[x0:x1, ox : ox + w].to(x)
    return ay @ x @ ax.T, (y0, x0)
