"""How a video protector's change reaches the output file: added to the decoded YUV frames, so the pixels it leaves
alone are encoded exactly as with protection off (no RGB -> YUV round trip of every pixel)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from clips import make_clip
from media_cleaner.media import EncodeSettings, probe, transcode

FAST = EncodeSettings(preset="ultrafast")


def decode_rgb(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_unchanged_frames_encode_as_with_protection_off(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mp4", frames=12, width=96, height=64, audio=())
    transcode(probe(source), tmp_path / "off.mp4", encode=FAST)
    transcode(probe(source), tmp_path / "copy.mp4", transform=lambda f: f.copy(), encode=FAST)
    assert np.array_equal(decode_rgb(tmp_path / "copy.mp4"), decode_rgb(tmp_path / "off.mp4"))


def test_a_change_reaches_the_output_where_it_was_made(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mp4", frames=12, width=96, height=64, audio=())

    def brighten(frames: np.ndarray) -> np.ndarray:  # +6 levels on a 32x32 square, as a bounded perturbation
        out = frames.astype(np.int16)
        out[:, 16:48, 32:64] += 6
        return np.clip(out, 0, 255).astype(np.uint8)

    transcode(probe(source), tmp_path / "off.mp4", encode=EncodeSettings(preset="ultrafast", crf=10))
    transcode(probe(source), tmp_path / "on.mp4", transform=brighten, encode=EncodeSettings(preset="ultrafast", crf=10))
    off, on = decode_rgb(tmp_path / "off.mp4").astype(float), decode_rgb(tmp_path / "on.mp4").astype(float)
    inside = (on - off)[:, 20:44, 36:60]
    assert abs(inside.mean() - 6) < 1.0
    outside = np.abs(on - off)
    outside[:, 8:56, 24:72] = 0  # away from the square (and its chroma / deblocking neighbourhood)
    assert outside.mean() < 1.0  # measured 0.5: the encoder's own decisions shift a little


def test_rgb_change_in_yuv_matches_the_conversion_of_the_changed_frame() -> None:
    """`add_rgb_delta` (the pipeline's output path, and the attack's round trip): luma as converting the changed RGB
    frame gives it, chroma moved by the 2x2 mean of the change (OpenCV's RGB -> I420 would take one pixel of the four),
    and an unchanged frame stays bit-identical."""
    import cv2  # noqa: PLC0415

    from media_cleaner.media.pipeline import add_rgb_delta  # noqa: PLC0415

    rng = np.random.default_rng(0)
    rgb = rng.integers(30, 220, size=(32, 48, 3), dtype=np.uint8)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    assert add_rgb_delta(i420, np.zeros(rgb.shape, np.int16)) is i420
    delta = rng.integers(-6, 7, size=rgb.shape).astype(np.int16)
    got = add_rgb_delta(i420, delta).astype(int)
    luma = cv2.cvtColor((rgb + delta).astype(np.uint8), cv2.COLOR_RGB2YUV_I420).astype(int)[:32]
    assert np.abs(got[:32] - luma).max() <= 1
    mean = delta.reshape(16, 2, 24, 2, 3).mean(axis=(1, 3))
    u_change = (mean @ np.array([-0.1482, -0.2910, 0.4392])).reshape(8, 48)
    assert np.abs(got[32:40] - i420[32:40].astype(int) - u_change).max() <= 0.5 + 1e-6
