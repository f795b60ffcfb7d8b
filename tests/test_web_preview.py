"""Frame previews for the web page: the right frame at a time, honest difference images, valid PNGs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from media_cleaner.api.web_preview import amplified_difference, downscale, encode_png, read_frame
from media_cleaner.errors import InvalidMediaError


def _index_clip(path: Path, frames: int, fps: int = 10, size: tuple[int, int] = (64, 48)) -> Path:
    """Frame i is a flat grey of level 8*i (+ a marker), so a decoded frame tells which one it is."""
    width, height = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "0", "g": "10"}
        stream.time_base = Fraction(1, fps)
        for i in range(frames):
            img = np.full((height, width, 3), (8 * i) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _index_of(rgb: np.ndarray) -> int:
    return int(round(float(np.median(rgb)) / 8))


def _decode_png(data: bytes, tmp_path: Path) -> np.ndarray:
    target = tmp_path / "check.png"
    target.write_bytes(data)
    with av.open(str(target)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def test_png_round_trips_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = encode_png(img)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert np.array_equal(_decode_png(data, tmp_path), img)
    with pytest.raises(ValueError):
        encode_png(img[..., 0])


def test_frame_at_time_from_start_and_after_a_seek(tmp_path: Path) -> None:
    clip = _index_clip(tmp_path / "idx.mp4", frames=30, fps=10)  # 3 s: t > 2 s takes the seek path
    for t, expected in [(0.0, 0), (0.5, 5), (1.04, 10), (2.5, 25), (2.9, 29), (99.0, 29)]:
        frame = read_frame(clip, t)
        assert _index_of(frame.rgb) == expected, t
        assert frame.time == pytest.approx(expected / 10, abs=1e-6)
        assert frame.rgb.shape == (48, 64, 3)


def test_frame_from_mpeg_program_stream(shared_data: Path) -> None:
    """MPEG-PS seeks land past the target; the reader must step back instead of returning the wrong frame."""
    clip = shared_data / "video" / "grid_bbaf2n.mpg"
    late = read_frame(clip, 2.5)
    assert late.time == pytest.approx(2.48, abs=0.021)
    assert late.rgb.shape == (288, 360, 3)
    assert read_frame(clip, 0.0).time == 0.0


def test_not_a_video_is_a_typed_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.mp4"
    bogus.write_text("not a video at all")
    with pytest.raises(InvalidMediaError):
        read_frame(bogus, 0.0)


def test_difference_is_amplified_and_measured() -> None:
    original = np.full((20, 30, 3), 100, np.uint8)
    protected = original.copy()
    protected[5:10, 5:10] += 3  # a small, invisible change in one patch
    image, gain, mean_abs = amplified_difference(original, protected)
    assert image.shape == original.shape
    assert gain == 64  # 3 levels would need x85 to fill the range; capped so codec noise stays noise
    assert image[7, 7, 0] == 192 and image[0, 0, 0] == 0
    assert mean_abs == pytest.approx(3 * 25 / 600)
    # Identical frames give a black image, not a division by zero.
    image, gain, mean_abs = amplified_difference(original, original)
    assert image.max() == 0 and mean_abs == 0.0
    # Sizes that differ (encoder padding) compare on the common area.
    image, _, _ = amplified_difference(original, np.zeros((22, 32, 3), np.uint8))
    assert image.shape == (20, 30, 3)


def test_downscale_keeps_the_average() -> None:
    img = np.zeros((8, 12, 3), np.uint8)
    img[:, ::2] = 200
    small = downscale(img, 6)
    assert small.shape == (4, 6, 3)
    assert np.all(small == 100)
    assert downscale(img, None) is img and downscale(img, 100) is img
    # A difference image keeps its peaks: one changed pixel per block stays visible.
    sparse = np.zeros((8, 12, 3), np.uint8)
    sparse[::2, ::2] = 90
    assert np.all(downscale(sparse, 6, keep_peaks=True) == 90)
    assert np.all(downscale(sparse, 6) < 30)


def test_rotated_phone_video_is_shown_upright(tmp_path: Path) -> None:
    """A portrait phone clip (display matrix) previews the way the pipeline writes its output: upright."""
    from clips import make_clip, rotate_with_ffmpeg
    from media_cleaner.media.pipeline import upright

    source = make_clip(tmp_path / "landscape.mp4", width=96, height=64, frames=4, audio=())
    rotated = rotate_with_ffmpeg(source, tmp_path / "portrait.mp4", 90)
    if rotated is None:
        pytest.skip("no ffmpeg CLI to write a display matrix")
    frame = read_frame(rotated, 0.0)
    assert frame.rgb.shape == (96, 64, 3)
    stored = read_frame(source, 0.0).rgb
    assert np.array_equal(frame.rgb, upright(stored[None], 90)[0])
