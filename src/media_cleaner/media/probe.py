"""Probe a media file: container, streams, timing, geometry, colour. Rejects unreadable or absurd input early.

Torch-free: the API server calls this on uploads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from media_cleaner.errors import InvalidMediaError, UnsupportedMediaError

MAX_SIDE = 16384  # larger than any real camera; a header claiming more is corrupt or hostile
MAX_PIXELS = 8192 * 8192
MAX_DURATION_S = 48 * 3600.0
VFR_SCAN_PACKETS = 600
INDEXED_FORMATS = {
    "mov",
    "matroska",
}  # containers with a sample index: a cut-short file is detectable  # packets demuxed (not decoded) to detect variable frame rate


@dataclass
class VideoStreamInfo:
    index: int
    codec: str
    width: int  # coded (stored) size
    height: int
    pix_fmt: str
    bit_depth: int
    fps: float  # average frame rate
    vfr: bool
    frame_count: int | None  # from the container when it says, else estimated from duration x fps
    duration: float | None
    rotation: int  # degrees counter-clockwise a player applies (display matrix), normalised to 0/90/180/270
    display_width: int
    display_height: int
    time_base: str
    color_space: str | None = None
    color_primaries: str | None = None
    color_trc: str | None = None
    color_range: str | None = None


@dataclass
class AudioStreamInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int
    layout: str
    sample_format: str
    duration: float | None
    bit_rate: int | None
    language: str | None = None


@dataclass
class MediaInfo:
    path: str
    container: str  # libavformat demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    size_bytes: int
    duration: float | None
    bit_rate: int | None
    video: VideoStreamInfo
    audio: list[AudioStreamInfo] = field(default_factory=list)
    other_streams: list[str] = field(default_factory=list)  # subtitle/data streams (not carried over)
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def has_audio(self) -> bool:
        return bool(self.audio)


_COLOR_SPACES = {0: "rgb", 1: "bt709", 2: None, 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020nc"}
_PRIMARIES = {1: "bt709", 2: None, 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020"}
_TRC = {
    1: "bt709",
    2: None,
    6: "smpte170m",
    8: "linear",
    13: "iec61966-2-1",
    14: "bt2020-10",
    16: "smpte2084",
    18: "hlg",
}
_RANGES = {0: None, 1: "tv", 2: "pc"}


def _named(table: dict[int, str | None], value: Any) -> str | None:
    value = int(value or 0)
    return table[value] if value in table else str(value)


def normalise_rotation(degrees: float | None) -> int:
    """Display-matrix angle -> 0/90/180/270 (counter-clockwise, as libavutil reports it)."""
    if degrees is None or (isinstance(degrees, float) and math.isnan(degrees)):
        return 0
    return int(round(float(degrees) / 90.0)) * 90 % 360


def open_input(path: str | Path) -> av.container.InputContainer:
    """Open a file for reading, translating libav errors into `InvalidMediaError`."""
    path = Path(path)
    if not path.is_file():
        raise InvalidMediaError(f"{path.name}: no such file")
    if path.stat().st_size == 0:
        raise InvalidMediaError(f"{path.name}: file is empty")
    try:
        return av.open(str(path), mode="r", metadata_errors="replace")
    except av.FFmpegError as exc:
        raise InvalidMediaError(f"{path.name}: not a readable media file ({exc.strerror or exc})") from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InvalidMediaError(f"{path.name}: not a readable media file ({exc})") from exc


def _scan_timing(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> tuple[bool, int]:
    """Demux the first packets of `stream`: (variable frame rate?, packets seen)."""
    pts: list[int] = []
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                pts.append(packet.pts)
            if len(pts) >= VFR_SCAN_PACKETS:
                break
    except av.FFmpegError:
        pass
    if len(pts) < 3:
        return False, len(pts)
    pts.sort()
    deltas = [b - a for a, b in zip(pts, pts[1:], strict=False) if b > a]
    if not deltas:
        return False, len(pts)
    deltas.sort()
    median = deltas[len(deltas) // 2]
    # Constant-rate streams still jitter by a tick of rounding; VFR means deltas that differ by more than 10 %.
    spread = [d for d in deltas if abs(d - median) > max(1, 0.1 * median)]
    return len(spread) > 0.05 * len(deltas), len(pts)


def _first_frame(path: Path, index: int) -> av.VideoFrame:
    """Decode one frame from a fresh open (seeking back is unreliable in some demuxers, e.g. MPEG-PS)."""
    container = open_input(path)
    try:
        stream = next(s for s in container.streams if s.index == index)
        for frame in container.decode(stream):
            return frame
    except av.FFmpegError as exc:
        raise InvalidMediaError(
            f"video stream cannot be decoded (corrupt or truncated): {exc.strerror or exc}"
        ) from exc
    finally:
        container.close()
    raise InvalidMediaError("no decodable video frame (truncated or corrupt file)")


def _check_tail(path: Path, index: int, seconds: float) -> None:
    """Seek close to the declared end and read a packet: an indexed file (mp4/mov/mkv) cut short fails here."""
    container = open_input(path)
    try:
        stream = next(s for s in container.streams if s.index == index)
        if not stream.time_base:
            return
        target = int(max(0.0, seconds - 1.0) / stream.time_base)
        try:
            container.seek(target, stream=stream, any_frame=False, backward=True)
        except av.FFmpegError:
            return  # not seekable: nothing to learn cheaply
        last = None
        try:
            for packet in container.demux(stream):
                if packet.size:
                    last = packet
        except av.FFmpegError as exc:
            raise InvalidMediaError(f"{path.name}: truncated or corrupt near the end ({exc.strerror or exc})") from exc
        if last is None or last.pts is None or float(last.pts * stream.time_base) < seconds - 2.0:
            raise InvalidMediaError(f"{path.name}: truncated: the data stops before the declared end ({seconds:.1f} s)")
    finally:
        container.close()


def probe(path: str | Path) -> MediaInfo:
    """Describe `path`; raises `InvalidMediaError` / `UnsupportedMediaError` with the reason when it cannot be used."""
    path = Path(path)
    container = open_input(path)
    try:
        return _probe_open(path, container)
    finally:
        container.close()


def _probe_open(path: Path, container: av.container.InputContainer) -> MediaInfo:
    name = path.name
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["nothing"]
        raise UnsupportedMediaError(f"{name}: no video stream (contains {', '.join(kinds)})")
    moving = [v for v in container.streams.video if not v.disposition & av.stream.Disposition.attached_pic]
    if not moving:
        raise UnsupportedMediaError(f"{name}: no video stream (only cover art)")
    vstream = moving[0]
    ctx = vstream.codec_context
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width <= 0 or height <= 0:
        raise InvalidMediaError(f"{name}: video stream declares no frame size (corrupt header)")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise InvalidMediaError(f"{name}: absurd declared frame size {width}x{height} (limit {MAX_SIDE} per side)")
    try:
        av.codec.Codec(ctx.codec.name, "r")
    except Exception as exc:  # noqa: BLE001 - any failure means no decoder
        raise UnsupportedMediaError(f"{name}: no decoder for video codec {ctx.name!r}") from exc

    duration = container.duration / 1e6 if container.duration and container.duration > 0 else None
    if duration is not None and duration > MAX_DURATION_S:
        raise InvalidMediaError(f"{name}: absurd declared duration {duration:.0f} s")
    vduration = float(vstream.duration * vstream.time_base) if vstream.duration and vstream.time_base else duration
    rate = vstream.average_rate or vstream.guessed_rate or vstream.base_rate
    fps = float(rate) if rate else 0.0
    if not 0 < fps <= 1000:
        fps = 25.0 if not fps else min(fps, 1000.0)
    vfr, _ = _scan_timing(container, vstream)
    frame = _first_frame(path, vstream.index)
    if vduration and vstream.frames and container.format.name.split(",")[0] in INDEXED_FORMATS:
        _check_tail(path, vstream.index, vduration)
    rotation = normalise_rotation(frame.rotation)
    frame_count = int(vstream.frames) if vstream.frames else None
    if frame_count is None and vduration:
        frame_count = max(1, int(round(vduration * fps)))
    pix_fmt = frame.format.name
    bit_depth = max((c.bits for c in frame.format.components), default=8)
    display_w, display_h = (height, width) if rotation in (90, 270) else (width, height)

    video = VideoStreamInfo(
        index=vstream.index,
        codec=ctx.codec.canonical_name,
        width=width,
        height=height,
        pix_fmt=pix_fmt,
        bit_depth=int(bit_depth),
        fps=round(fps, 6),
        vfr=vfr,
        frame_count=frame_count,
        duration=round(vduration, 6) if vduration else None,
        rotation=rotation,
        display_width=display_w,
        display_height=display_h,
        time_base=str(vstream.time_base or Fraction(1, 90000)),
        color_space=_named(_COLOR_SPACES, ctx.colorspace),
        color_primaries=_named(_PRIMARIES, ctx.color_primaries),
        color_trc=_named(_TRC, ctx.color_trc),
        color_range=_named(_RANGES, ctx.color_range),
    )
    audio = []
    for stream in container.streams.audio:
        actx = stream.codec_context
        if not actx.sample_rate or not actx.channels:
            continue  # an audio stream without parameters cannot be decoded; it is dropped (and listed below)
        audio.append(
            AudioStreamInfo(
                index=stream.index,
                codec=actx.codec.canonical_name,
                sample_rate=int(actx.sample_rate),
                channels=int(actx.channels),
                layout=actx.layout.name,
                sample_format=actx.format.name if actx.format else "",
                duration=float(stream.duration * stream.time_base) if stream.duration and stream.time_base else None,
                bit_rate=int(actx.bit_rate) if actx.bit_rate else None,
                language=stream.metadata.get("language"),
            )
        )
    kept = {video.index, *(a.index for a in audio)}
    others = [f"{s.index}:{s.type}:{s.codec_context.name if s.codec_context else '?'}" for s in container.streams]
    return MediaInfo(
        path=str(path),
        container=container.format.name,
        size_bytes=path.stat().st_size,
        duration=round(duration, 6) if duration else vduration,
        bit_rate=int(container.bit_rate) if container.bit_rate else None,
        video=video,
        audio=audio,
        other_streams=[o for o, s in zip(others, container.streams, strict=True) if s.index not in kept],
        metadata={str(k): str(v) for k, v in container.metadata.items()},
    )
