"""A differentiable stand-in for what happens to the pixels after protection (EOT).

H.264 at CRF 18 removes fine high-frequency detail and averages chroma over 2x2 blocks; playback and detectors add
resizing and small shifts. Each call draws one random mix of blur, down/up-scaling, a shift, a small brightness /
contrast change and noise standing in for quantisation, so the perturbation is optimised for all of them.
"""

from __future__ import annotations

import math
from fractions import Fraction

import av
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from media_cleaner.media.pipeline import add_delta_where_changed, pad_even


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N,C,H,W), reflect padding."""
    if sigma <= 0.05:
        return x
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[2] - 1, x.shape[3] - 1)
    if pad < radius:
        return x
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def random_codec(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """One random draw of the lossy-channel approximation on pixel images (N,3,H,W) in 0..255."""

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    h, w = x.shape[2:]
    if u(0, 1) < 0.5 and min(h, w) >= 24:  # down/up-scaling removes what the encoder and the pyramid would
        f = u(0.6, 0.95)
        small = F.interpolate(x, size=(max(8, int(h * f)), max(8, int(w * f))), mode="bilinear", align_corners=False)
        x = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    if u(0, 1) < 0.7:
        x = gaussian_blur(x, u(0.3, 1.1) * strength)
    if u(0, 1) < 0.5:  # photometric jitter: detectors normalise differently
        x = x * u(0.95, 1.05) + u(-4, 4)
    x = x + torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device) * 1.2 * strength
    return x.clamp(0, 255)


def h264_roundtrip(
    frames: np.ndarray, crf: int = 18, preset: str = "medium", base: np.ndarray | None = None
) -> np.ndarray:
    """RGB frames (N,H,W,3 uint8) through the product's own encoder settings (libx264 yuv420p, CRF) and back: what
    the detector will see in the output file (the first frame intra, the rest predicted, as in a GOP).

    With `base` (the unprotected frames) and an even size, each frame is coded as the pipeline codes a protector's
    output: the base's YUV plus the change (`frames - base`) added in YUV, not a re-conversion of every pixel.

    The packets go straight from the encoder to a single-threaded decoder, with no container in between (the
    attack runs this on every frame: muxing an mp4 in memory and demuxing it cost ~15% of the call for the same
    pixels, `test_round_trip_without_a_container_decodes_the_same_pixels`)."""
    n, h, w = frames.shape[:3]
    padded = pad_even(frames)
    delta = base is not None and h % 2 == 0 and w % 2 == 0
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = padded.shape[2], padded.shape[1], "yuv420p"
    enc.time_base, enc.framerate = Fraction(1, 25), Fraction(25)  # what an mp4 stream at rate 25 gives it
    enc.options = {"crf": str(crf), "preset": preset}
    packets = []
    for k, rgb in enumerate(padded):
        if delta:
            i420 = cv2.cvtColor(base[k], cv2.COLOR_RGB2YUV_I420)
            i420 = add_delta_where_changed(i420, rgb.astype(np.int16) - base[k])
        else:
            i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
        yuv = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        yuv.pts = k
        packets += enc.encode(yuv)
    packets += enc.encode(None)
    dec = av.CodecContext.create("h264", "r")
    dec.thread_count = 1  # two small frames: threads would only add start-up and frame delay (same pixels)
    decoded = []
    for packet in packets:
        decoded += dec.decode(packet)
    decoded += dec.decode(None)
    return np.stack([f.to_ndarray(format="rgb24") for f in decoded])[:, :h, :w]
