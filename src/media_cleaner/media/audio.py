"""Audio in/out: decode one whole track to float PCM, and feed PCM or decoded frames to an AAC encoder."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from media_cleaner.errors import InvalidMediaError, UnsupportedMediaError
from media_cleaner.media.probe import open_input

# Audio codecs each output container carries well (players included); anything else is re-encoded to AAC.
CONTAINER_AUDIO_CODECS: dict[str, set[str] | None] = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
    "mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s16be", "pcm_s24le", "pcm_f32le"},
    "matroska": None,  # carries everything
}
DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
AAC_RATES = {96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350}


def standard_layout(layout: str, channels: int) -> str:
    """A named channel layout; streams with an unordered "N channels" layout get the default one for N."""
    if "channels" in layout or not layout:
        if channels not in DEFAULT_LAYOUTS:
            raise UnsupportedMediaError(f"audio with {channels} unnamed channels is not supported (at most 8)")
        return DEFAULT_LAYOUTS[channels]
    return layout


def can_copy(codec: str, out_format: str) -> bool:
    allowed = CONTAINER_AUDIO_CODECS.get(out_format, set())
    return allowed is None or codec in allowed


def decode_track(
    path: str | Path, stream_index: int, progress: Callable[[float], None] | None = None
) -> tuple[np.ndarray, int, str, float]:
    """Decode audio stream `stream_index` to float32 PCM (channels, samples) in [-1, 1].

    Returns (pcm, sample_rate, layout name, start time in seconds).
    """
    container = open_input(path)
    try:
        stream = next(s for s in container.streams if s.index == stream_index)
        rate = int(stream.codec_context.sample_rate)
        channels = int(stream.codec_context.channels)
        layout = standard_layout(stream.codec_context.layout.name, channels)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        chunks: list[np.ndarray] = []
        start: float | None = None
        total = float(stream.duration * stream.time_base) if stream.duration else None
        try:
            for frame in container.decode(stream):
                if start is None and frame.pts is not None and frame.time_base:
                    start = float(frame.pts * frame.time_base)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(channels, -1))
                if progress and total and frame.pts is not None:
                    progress(min(1.0, float(frame.pts * frame.time_base) / total))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(channels, -1))
        except av.FFmpegError as exc:
            raise InvalidMediaError(f"audio stream {stream_index} cannot be decoded: {exc.strerror or exc}") from exc
    finally:
        container.close()
    pcm = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
    return np.ascontiguousarray(pcm, dtype=np.float32), rate, layout, start or 0.0


def add_aac_stream(
    output: av.container.OutputContainer, rate: int, layout: str, bitrate: str, language: str | None = None
) -> av.audio.stream.AudioStream:
    """An AAC encoder stream at `rate` (nearest AAC rate) with `layout`."""
    layout = standard_layout(layout, av.AudioLayout(layout).nb_channels)
    if rate not in AAC_RATES:
        rate = min(AAC_RATES, key=lambda r: abs(r - rate))
    stream = output.add_stream("aac", rate=rate)
    stream.codec_context.layout = layout
    stream.codec_context.format = "fltp"
    stream.codec_context.bit_rate = parse_bitrate(bitrate)
    stream.time_base = Fraction(1, rate)
    if language:
        stream.metadata["language"] = language
    return stream


def parse_bitrate(value: str | int) -> int:
    text = str(value).strip().lower()
    scale = {"k": 1000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


class PcmFeeder:
    """Encodes a PCM track into `stream` incrementally, so protected audio interleaves with video."""

    CHUNK = 4096

    def __init__(self, stream: av.audio.stream.AudioStream, pcm: np.ndarray, rate: int, layout: str, start_s: float):
        self.stream = stream
        self.pcm = np.ascontiguousarray(np.clip(pcm, -1.0, 1.0), dtype=np.float32)
        self.rate = rate
        self.layout = layout
        self.position = 0
        self.start_samples = int(round(max(start_s, 0.0) * rate))
        self.resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout.name, rate=stream.rate)

    def packets_until(self, seconds: float | None) -> list[av.Packet]:
        """Encode samples up to `seconds` of track time (None: all, and flush the encoder)."""
        end = self.pcm.shape[1] if seconds is None else min(self.pcm.shape[1], int(seconds * self.rate))
        packets: list[av.Packet] = []
        while self.position < end:
            stop = min(end, self.position + self.CHUNK)
            frame = av.AudioFrame.from_ndarray(self.pcm[:, self.position : stop], format="fltp", layout=self.layout)
            frame.sample_rate = self.rate
            frame.pts = self.start_samples + self.position
            frame.time_base = Fraction(1, self.rate)
            for out in self.resampler.resample(frame):
                packets.extend(self.stream.encode(out))
            self.position = stop
        if seconds is None:
            for out in self.resampler.resample(None):
                packets.extend(self.stream.encode(out))
            packets.extend(self.stream.encode(None))
        return packets


class Transcoder:
    """Re-encodes an untouched audio stream whose codec the output container cannot carry, packet by packet."""

    def __init__(self, in_stream: av.audio.stream.AudioStream, out_stream: av.audio.stream.AudioStream, start_s: float):
        self.in_stream = in_stream
        self.stream = out_stream
        self.flushed = False
        self.shift = int(round(start_s * out_stream.rate))  # the file's start offset, in output samples
        self.next_pts: int | None = None
        layout = out_stream.codec_context.layout.name
        self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=out_stream.rate)

    def _encode(self, frame: av.AudioFrame | None) -> list[av.Packet]:
        packets: list[av.Packet] = []
        for out in self.resampler.resample(frame):
            if self.next_pts is None:
                first = out.pts if out.pts is not None else self.shift
                self.next_pts = max(0, int(first) - self.shift)
            out.pts = self.next_pts  # contiguous sample numbering: no gaps or overlaps from resampling
            out.time_base = Fraction(1, self.stream.rate)
            self.next_pts += out.samples
            packets.extend(self.stream.encode(out))
        return packets

    def packets_for(self, packet: av.Packet | None) -> list[av.Packet]:
        if self.flushed:
            return []
        packets: list[av.Packet] = []
        try:
            frames = self.in_stream.decode(packet)
        except av.FFmpegError:
            frames = []  # a damaged audio packet is skipped rather than failing the whole video
        for frame in frames:
            packets.extend(self._encode(frame))
        if packet is None:
            packets.extend(self._encode(None))
            packets.extend(self.stream.encode(None))
            self.flushed = True
        return packets
