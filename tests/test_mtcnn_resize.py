"""The exact INTER_AREA resampling the attack uses: same values as OpenCV, and regions resampled like whole frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from media_cleaner.models.resize import resize_area, shrink_window


def image(h: int, w: int) -> np.ndarray:
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.float32)


@pytest.mark.parametrize("size", [(20, 27), (24, 24), (48, 48), (70, 90), (30, 90), (7, 9)])
def test_resize_area_matches_opencv(size: tuple[int, int]) -> None:
    img = image(61, 83)
    ours = resize_area(torch.from_numpy(img).permute(2, 0, 1)[None], size)[0].permute(1, 2, 0).numpy()
    theirs = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    assert np.abs(ours - theirs).max() < 1e-3
    # torch's own "area" mode is not the same sampling: what the attack optimised through before
    torch_area = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=size, mode="area")
    if size[0] < 61 and size[1] < 83 and (61 % size[0] or 83 % size[1]):
        assert np.abs(torch_area[0].permute(1, 2, 0).numpy() - theirs).mean() > 1.0


@pytest.mark.parametrize("scale", [0.6, 0.3, 0.107, 0.054])
def test_region_of_a_pyramid_level_is_exact(scale: float) -> None:
    img = image(288, 360)
    size = (int(288 * scale + 1), int(360 * scale + 1))
    level = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    region = torch.from_numpy(img).permute(2, 0, 1)[None, :, 50:200, 90:260]
    window, (y0, x0) = shrink_window(region, (50, 90), (288, 360), size)
    win = window[0].permute(1, 2, 0).numpy()
    assert win.shape[0] >= 7 and win.shape[1] >= 7
    assert y0 % 2 == 0 and x0 % 2 == 0  # P-Net's stride-2 cells line up with the whole level's
    assert np.abs(level[y0 : y0 + win.shape[0], x0 : x0 + win.shape[1]] - win).max() < 1e-3
