"""Synthetic clips made with PyAV for the media, engine, quality and CLI tests (no media is committed)."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """A moving gradient with a bright square: texture the encoder must spend bits on, and motion."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (x * 255 // max(1, width - 1) + i * 3) % 256
    img[..., 1] = (y * 255 // max(1, height - 1)) % 256
    img[..., 2] = ((x + y + i * 5) % 64) * 4
    s = max(2, min(width, height) // 4)
    x0 = (i * 3) % max(1, width - s)
    img[s // 2 : s // 2 + s, x0 : x0 + s] = 240
    return img


def tone(rate: int, channels: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    """Float32 (channels, samples): a tone per channel plus a slow envelope, so windows differ in energy."""
    t = np.arange(int(rate * seconds)) / rate
    env = 0.5 + 0.4 * np.sin(2 * np.pi * 0.5 * t)
    return np.stack([0.3 * env * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]).astype(np.float32)


def make_clip(
    path: Path,
    *,
    width: int = 96,
    height: int = 64,
    frames: int = 12,
    fps: int = 12,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio: tuple[tuple[str, int, str], ...] = (("aac", 48000, "stereo"),),
    frame_times: list[float] | None = None,
    metadata: dict[str, str] | None = None,
    stream_metadata: dict[str, str] | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a clip: `audio` lists (codec, rate, layout) per audio stream; `frame_times` makes it VFR."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        if metadata:
            out.metadata.update(metadata)
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        if options:
            video.options = options
        if frame_times is not None:
            video.time_base = Fraction(1, 1000)
            video.codec_context.time_base = Fraction(1, 1000)
        if stream_metadata:
            video.metadata.update(stream_metadata)
        audio_streams = []
        for codec_name, rate, layout in audio:
            stream = out.add_stream(codec_name, rate=rate)
            stream.codec_context.layout = layout
            audio_streams.append(stream)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            if frame_times is not None:
                frame.pts = int(round(frame_times[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            else:
                frame.pts = i
                frame.time_base = Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        duration = (frame_times[-1] + 1 / fps) if frame_times else frames / fps
        for n, stream in enumerate(audio_streams):
            ctx = stream.codec_context
            pcm = tone(ctx.sample_rate, ctx.channels, duration, 330.0 * (n + 1))
            chunk = 1024
            for start in range(0, pcm.shape[1], chunk):
                piece = np.ascontiguousarray(pcm[:, start : start + chunk])
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=ctx.layout.name)
                frame.sample_rate = ctx.sample_rate
                frame.pts = start
                frame.time_base = Fraction(1, ctx.sample_rate)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    return path


def rotate_with_ffmpeg(source: Path, target: Path, degrees: int) -> Path | None:
    """Copy `source` tagged so players turn it `degrees` clockwise (PyAV cannot write a display matrix).

    ffmpeg >= 6 has -display_rotation (counter-clockwise); 5.x maps the legacy `rotate` tag to the matrix.
    None when there is no ffmpeg CLI.
    """
    if shutil.which("ffmpeg") is None:
        return None
    new = [
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-display_rotation",
        str(-degrees),
        "-i",
        str(source),
        "-map",
        "0",
        "-c",
        "copy",
    ]
    old = [
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-i",
        str(source),
        "-map",
        "0",
        "-c",
        "copy",
        "-metadata:s:v:0",
        f"rotate={degrees}",
    ]
    if subprocess.run([*new, str(target)], capture_output=True).returncode != 0:
        subprocess.run([*old, str(target)], check=True, capture_output=True)
    return target


def write_frames(path: Path, frames: np.ndarray, *, crf: int = 18, fps: int = 25) -> Path:
    """Encode RGB frames (N,H,W,3) as H.264 yuv420p at `crf`: a clip whose content the test chose exactly."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
