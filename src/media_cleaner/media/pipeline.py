"""The streaming transcode: demux once, decode video in bounded batches, transform, encode H.264, carry audio.

Video frames are decoded with libavcodec's own threads, handed to an optional transform as uint8 RGB batches
(N, H, W, 3) in display orientation, and encoded with libx264 (yuv420p, CRF). Timestamps are carried through in the
input stream's time base, so variable frame rate survives. Audio streams are stream-copied when untouched and the
output container carries the codec, re-encoded to AAC otherwise, or encoded from protected PCM.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

try:
    import cv2
except ImportError:  # pragma: no cover - opencv-python-headless is a pinned dependency
    cv2 = None

from media_cleaner.errors import InvalidMediaError, UnsupportedMediaError
from media_cleaner.media.audio import PcmFeeder, Transcoder, add_aac_stream, can_copy
from media_cleaner.media.metadata import filter_tags
from media_cleaner.media.probe import MediaInfo, open_input

FrameTransform = Callable[[np.ndarray], np.ndarray]
BatchObserver = Callable[[np.ndarray, np.ndarray], None]  # (original batch, transformed batch)

# Output container per input extension: H.264 + AAC goes well in mp4/mov/mkv; others (webm, avi, mpg...) become mp4.
_KEEP_EXT = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "mkv"}
_MUXERS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska"}
BATCH_BYTES = 64 * 1024 * 1024  # RGB bytes per batch; bounds memory whatever the clip length


def output_extension_for(input_path: str | Path) -> str:
    """Extension (no dot) of the protected file: same container for mp4/mov/mkv, mp4 for everything else."""
    return _KEEP_EXT.get(Path(input_path).suffix.lower(), "mp4")


def muxer_for(output_path: str | Path) -> str:
    ext = Path(output_path).suffix.lower().lstrip(".")
    ext = "mp4" if ext == "m4v" else ext
    if ext not in _MUXERS:
        raise UnsupportedMediaError(f"output must be .mp4, .mov or .mkv (H.264 + AAC), got {Path(output_path).name!r}")
    return _MUXERS[ext]


@dataclass
class EncodeSettings:
    crf: int = 18
    preset: str = "medium"
    audio_bitrate: str = "128k"
    keep_metadata: bool = False
    batch_frames: int | None = None  # None: from frame size (BATCH_BYTES)
    # decode ahead and encode behind a transform on threads of their own (the same file): hides the transcode behind a
    # transform that leaves cores idle (2.3 of 4.2 s on 720p with a sleeping transform). At the threads' normal
    # priority the video attack's workers and x264's threads slowed each other about as much as the overlap saved
    # (53.1 vs 52.3 / 51.8 s), so those threads (and the codec threads they start) run at `background_nice`: they
    # take the cores the transform leaves idle and yield the others
    overlap: bool = True
    background_nice: int = 19  # niceness added to the reader and writer threads (Linux: per thread); 0: unchanged


@dataclass
class TranscodeResult:
    frames: int = 0
    width: int = 0  # encoded size
    height: int = 0
    padded: str | None = None  # "WxH -> W'xH'" when odd sizes were padded to even for yuv420p
    rotation_applied: int = 0  # degrees the pixels were turned to display orientation
    rgb_path: bool = True  # False when frames went decoder -> encoder without an RGB round trip
    audio: list[dict[str, Any]] = field(default_factory=list)  # per stream: index, action, codec
    dropped_tags: list[str] = field(default_factory=list)
    dropped_streams: list[str] = field(default_factory=list)
    output_format: str = ""


@dataclass
class ProtectedTrack:
    pcm: np.ndarray  # float32 (channels, samples)
    rate: int
    layout: str
    start_s: float


def batch_size_for(width: int, height: int, requested: int | None = None) -> int:
    if requested:
        return max(1, requested)
    return int(max(1, min(32, BATCH_BYTES // max(1, width * height * 3))))


def upright(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Turn (N, H, W, 3) frames by the display rotation (counter-clockwise degrees) so they look as players show."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def pad_even(frames: np.ndarray) -> np.ndarray:
    """Replicate the last row/column when a side is odd: yuv420p needs even sizes; no pixel is lost."""
    _, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if not (ph or pw):
        return frames
    return np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")


def transcode(
    info: MediaInfo,
    output_path: str | Path,
    *,
    transform: FrameTransform | None = None,
    protected_audio: dict[int, ProtectedTrack] | None = None,
    encode: EncodeSettings | None = None,
    observe: BatchObserver | None = None,
    progress: Callable[[float], None] | None = None,
    check: Callable[[], None] | None = None,
    output_format: str | None = None,
) -> TranscodeResult:
    """Write `info.path` re-encoded to `output_path`. Raises `InvalidMediaError` on undecodable input."""
    encode = encode or EncodeSettings()
    protected_audio = protected_audio or {}
    fmt = output_format or muxer_for(output_path)
    result = TranscodeResult(output_format=fmt)
    container = open_input(info.path)
    try:
        output = av.open(str(output_path), mode="w", format=fmt, options=_muxer_options(fmt, encode.keep_metadata))
        try:
            _run(info, container, output, fmt, transform, protected_audio, encode, observe, progress, check, result)
        finally:
            output.close()
    finally:
        container.close()
    return result


def _muxer_options(fmt: str, keep_metadata: bool) -> dict[str, str]:
    options: dict[str, str] = {}
    if fmt in ("mp4", "mov"):
        options["movflags"] = "+faststart"
    if not keep_metadata:
        options["fflags"] = "+bitexact"  # no "encoder=Lavf..." tag and no muxing timestamps in the header
    return options


def _run(
    info: MediaInfo,
    container: av.container.InputContainer,
    output: av.container.OutputContainer,
    fmt: str,
    transform: FrameTransform | None,
    protected_audio: dict[int, ProtectedTrack],
    encode: EncodeSettings,
    observe: BatchObserver | None,
    progress: Callable[[float], None] | None,
    check: Callable[[], None] | None,
    result: TranscodeResult,
) -> None:
    vin = next(s for s in container.streams if s.index == info.video.index)
    vin.codec_context.thread_type = "AUTO"
    rotation = info.video.rotation
    disp_w, disp_h = info.video.display_width, info.video.display_height
    out_w, out_h = disp_w + disp_w % 2, disp_h + disp_h % 2
    result.width, result.height, result.rotation_applied = out_w, out_h, rotation
    if (out_w, out_h) != (disp_w, disp_h):
        result.padded = f"{disp_w}x{disp_h} -> {out_w}x{out_h}"
    # Frames go straight from decoder to encoder only when nothing can change them: provably identity.
    result.rgb_path = transform is not None or observe is not None or rotation != 0 or result.padded is not None

    kept, dropped = filter_tags(dict(container.metadata), encode.keep_metadata)
    output.metadata.update(kept)
    result.dropped_tags.extend(dropped)

    time_base = vin.time_base or Fraction(1, 90000)
    rate = vin.average_rate or vin.guessed_rate or Fraction(round(info.video.fps * 1000), 1000)
    vout = output.add_stream("libx264", rate=rate)
    vout.width, vout.height, vout.pix_fmt = out_w, out_h, "yuv420p"
    vout.time_base = time_base
    vout.codec_context.time_base = time_base
    vout.options = {"crf": str(encode.crf), "preset": encode.preset}
    in_ctx = vin.codec_context
    for attr in ("color_primaries", "color_trc", "colorspace", "color_range"):
        try:
            setattr(vout.codec_context, attr, getattr(in_ctx, attr))
        except (AttributeError, ValueError, TypeError):
            pass
    sar = in_ctx.sample_aspect_ratio
    if sar and sar != 1:  # anamorphic video keeps its display shape (inverted when the pixels were turned)
        vout.codec_context.sample_aspect_ratio = 1 / sar if rotation in (90, 270) else sar
    _copy_stream_tags(vin, vout, encode.keep_metadata, result)

    # The output starts at 0: every stream is shifted by the file's start time (as the ffmpeg CLI does).
    start_us = container.start_time if container.start_time and container.start_time > 0 else 0
    # Audio plan: one output stream per usable input audio stream, in input order.
    audio_plan: dict[int, tuple[str, Any, Any]] = {}
    for a in info.audio:
        ain = next(s for s in container.streams if s.index == a.index)
        if a.index in protected_audio:
            track = protected_audio[a.index]
            aout = add_aac_stream(output, track.rate, track.layout, encode.audio_bitrate)
            feeder = PcmFeeder(aout, track.pcm, track.rate, track.layout, track.start_s - start_us / 1e6)
            audio_plan[a.index] = ("protected", aout, feeder)
            action, codec = "protected", "aac"
        elif can_copy(a.codec, fmt):
            aout = output.add_stream_from_template(ain)
            audio_plan[a.index] = ("copy", aout, None)
            action, codec = "copy", a.codec
        else:
            aout = add_aac_stream(output, a.sample_rate, a.layout, encode.audio_bitrate)
            ain.codec_context.thread_type = "AUTO"
            audio_plan[a.index] = ("transcode", aout, Transcoder(ain, aout, start_us / 1e6))
            action, codec = "transcode", "aac"
        _copy_stream_tags(ain, aout, encode.keep_metadata, result)
        result.audio.append({"index": a.index, "action": action, "codec": codec, "source_codec": a.codec})
    result.dropped_streams = list(info.other_streams)

    selected = [vin, *(s for s in container.streams if s.index in audio_plan)]
    batch_size = batch_size_for(out_w, out_h, encode.batch_frames)
    expected = max(1, info.video.frame_count or 1)
    encoder = _VideoEncoder(vout, output, time_base, start_us, rate)
    # With a transform, decoding (a reader thread) and every output call (a writer thread, in the same order as
    # without threads, so the file is the same) run beside the transform, which stays on this thread with the
    # progress and cancel checks. Without one the transcode is I/O-bound and stays on one thread.
    overlap = encode.overlap and transform is not None and result.rgb_path
    to_rgb = (lambda b: _to_rgb(b, rotation, info.video.width, info.video.height)) if result.rgb_path else None
    items = _items(container, selected, vin, batch_size, to_rgb)
    writer = _Writer(threaded=overlap, nice=encode.background_nice)
    source = _Ahead(items, nice=encode.background_nice) if overlap else None
    try:
        for kind, item in source if source is not None else items:
            if kind == "video":
                _video_batch(item, transform, observe, encoder, writer, rotation, out_w, out_h, in_ctx, check, result)
                if progress:
                    progress(min(0.99, result.frames / expected))
            else:
                writer.run(_audio_packet, output, audio_plan, item, start_us)
        writer.wait()
    finally:
        if source is not None:
            source.close()
        writer.close()
    if result.frames == 0:
        raise InvalidMediaError("no decodable video frame (truncated or corrupt file)")
    encoder.flush()
    for kind, _aout, helper in audio_plan.values():
        if kind == "protected":
            output.mux(helper.packets_until(None))
        elif kind == "transcode" and not helper.flushed:
            output.mux(helper.packets_for(None))
    if progress:
        progress(1.0)


def _items(
    container: av.container.InputContainer,
    selected: list[av.stream.Stream],
    vin: av.video.stream.VideoStream,
    batch_size: int,
    to_rgb: Callable[[list[av.VideoFrame]], np.ndarray] | None,
) -> Iterator[tuple[str, Any]]:
    """The input in file order: ("audio", packet) and ("video", (decoded frames, their RGB or None)) per batch."""
    pending: list[av.VideoFrame] = []
    for packet in _demux(container, selected):
        if packet.stream.index != vin.index:
            yield "audio", packet
            continue
        for frame in _decode(vin, packet):
            pending.append(frame)
            if len(pending) >= batch_size:
                yield "video", (pending, to_rgb(pending) if to_rgb else None)
                pending = []
    if pending:
        yield "video", (pending, to_rgb(pending) if to_rgb else None)


def _video_batch(
    item: tuple[list[av.VideoFrame], np.ndarray | None],
    transform: FrameTransform | None,
    observe: BatchObserver | None,
    encoder: _VideoEncoder,
    writer: _Writer,
    rotation: int,
    out_w: int,
    out_h: int,
    in_ctx: av.codec.context.CodecContext,
    check: Callable[[], None] | None,
    result: TranscodeResult,
) -> None:
    """Transform one decoded batch here and hand its encoding to the writer (after the previous batch's, so at most
    one batch waits to be encoded while the next one is transformed)."""
    pending, originals = item
    if check:
        check()
    if originals is None:
        writer.wait()
        writer.run(encoder.encode_frames, pending)
        result.frames += len(pending)
        return
    # a transform's change goes into the decoded YUV as is (no RGB -> YUV round trip of every pixel)
    delta = transform is not None and rotation == 0 and encoder.can_add_delta(pending, out_w, out_h)
    # The observer (and the delta) need the untouched frames even if a transform writes into its input.
    given = originals.copy() if (observe is not None or delta) and transform is not None else originals
    frames = transform(given) if transform is not None else originals
    if frames.shape != originals.shape or frames.dtype != np.uint8:
        raise ValueError(f"video transform returned {frames.shape} {frames.dtype}, expected {originals.shape}")
    if observe is not None:
        observe(originals, frames)
    writer.wait()  # the previous batch's encoding ran beside this batch's transform
    if delta:
        writer.run(lambda: encoder.encode_delta(pending, frames.astype(np.int16) - originals))
    else:
        writer.run(encoder.encode_rgb, pad_even(frames), [f.pts for f in pending], in_ctx)
    result.frames += len(pending)


def _audio_packet(
    output: av.container.OutputContainer, plan: dict[int, tuple[str, Any, Any]], packet: av.Packet, start_us: int
) -> None:
    kind, aout, helper = plan[packet.stream.index]
    if kind == "copy":
        _mux_copy(output, aout, packet, start_us)
    elif kind == "transcode":
        output.mux(helper.packets_for(packet if packet.size else None))
    elif packet.pts is not None and packet.time_base:
        end = float((packet.pts + (packet.duration or 0)) * packet.time_base) - start_us / 1e6
        output.mux(helper.packets_until(end))


def lower_thread_priority(nice: int) -> None:
    """Add `nice` to the calling thread's niceness (Linux keeps it per thread, and threads it starts inherit it, e.g.
    x264's); a no-op where that is not possible."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:  # pragma: no cover - not permitted here
        pass


class _Writer:
    """Every call on the output (muxing, encoding) in submission order: on one thread of its own when `threaded`
    (PyAV releases the GIL inside libav's calls, so they run while the transform computes), else right away."""

    def __init__(self, threaded: bool, nice: int = 0) -> None:
        self.pool = None
        if threaded:
            self.pool = ThreadPoolExecutor(
                1, thread_name_prefix="video-writer", initializer=lower_thread_priority, initargs=(nice,)
            )
        self.last: Future | None = None

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.pool is None:
            fn(*args)
        else:
            self.last = self.pool.submit(fn, *args)

    def wait(self) -> None:
        """Until every call so far is done; raises the first one's error."""
        if self.last is not None:
            last, self.last = self.last, None
            last.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _Ahead:
    """An iterator run on a thread of its own, at most `depth` items ahead (decoding beside the transform)."""

    _END = object()

    def __init__(self, items: Iterator[Any], depth: int = 1, nice: int = 0) -> None:
        self.items, self.nice = items, nice
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._fill, name="video-reader", daemon=True)
        self.thread.start()

    def _put(self, value: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        lower_thread_priority(self.nice)
        try:
            for item in self.items:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put((self._END, exc))

    def __iter__(self) -> Iterator[Any]:
        while True:
            item, exc = self.queue.get()
            if exc is not None:
                raise exc
            if item is self._END:
                return
            yield item

    def close(self) -> None:
        """Stop reading and wait for the thread (the input container is closed after this)."""
        self.stop.set()
        self.thread.join()


def _demux(container: av.container.InputContainer, streams: list[av.stream.Stream]) -> Iterator[av.Packet]:
    """Packets in file order; read errors become `InvalidMediaError` (encoder errors stay what they are)."""
    packets = container.demux(streams)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            raise InvalidMediaError(f"reading failed (corrupt or truncated input): {exc.strerror or exc}") from exc
        yield packet


def _decode(stream: av.video.stream.VideoStream, packet: av.Packet) -> list[av.VideoFrame]:
    try:
        return packet.decode()
    except av.InvalidDataError:
        return []  # one damaged packet (a truncated tail, a broken slice) costs its frame, not the whole job
    except av.FFmpegError as exc:
        raise InvalidMediaError(f"video decoding failed: {exc.strerror or exc}") from exc


def _to_rgb(frames: list[av.VideoFrame], rotation: int, width: int, height: int) -> np.ndarray:
    batch = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        # Explicit size: a mid-stream size change is scaled back to the probed size rather than breaking the batch.
        batch[i] = frame.to_ndarray(format="rgb24", width=width, height=height, src_color_range=frame.color_range)
    return upright(batch, rotation)


def _copy_stream_tags(src: av.stream.Stream, dst: av.stream.Stream, keep_all: bool, result: TranscodeResult) -> None:
    kept, dropped = filter_tags(dict(src.metadata), keep_all)
    dst.metadata.update(kept)
    result.dropped_tags.extend(f"stream{src.index}:{k}" for k in dropped)


def _mux_copy(output: av.container.OutputContainer, stream: av.stream.Stream, packet: av.Packet, start_us: int) -> None:
    if not packet.size:
        return  # demuxer's end-of-stream marker
    if packet.pts is None:
        if packet.dts is None:
            return
        packet.pts = packet.dts
    if start_us and packet.time_base:
        shift = int(round(start_us / 1e6 / packet.time_base))
        packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
    packet.stream = stream
    output.mux(packet)


# RGB -> Y, U, V weights of BT.601 limited range (studio swing): a change in RGB levels as a change in YUV levels
_BT601_LIMITED = np.array(
    [[0.2568, 0.5041, 0.0979], [-0.1482, -0.2910, 0.4392], [0.4392, -0.3678, -0.0714]], dtype=np.float32
)


def add_rgb_delta(i420: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """An I420 frame (H*3/2, W uint8, BT.601 limited) plus a change in RGB levels (H, W, 3): luma per pixel, chroma
    as the 2x2 mean of the change (as an RGB -> I420 conversion averages it). Even H and W."""
    if not delta.any():
        return i420
    yuv = i420.astype(np.float32)
    h, w = delta.shape[:2]
    d = delta.astype(np.float32)
    yuv[:h] += d @ _BT601_LIMITED[0]
    c = d.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    yuv[h : h + h // 4] += (c @ _BT601_LIMITED[1]).reshape(h // 4, w)
    yuv[h + h // 4 :] += (c @ _BT601_LIMITED[2]).reshape(h // 4, w)
    return np.clip(np.rint(yuv), 0, 255).astype(np.uint8)


def add_delta_where_changed(i420: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """`add_rgb_delta` computed on the even-aligned bounding box of the change only (the same values:
    luma per pixel and chroma per 2x2 block are local), a fraction of its cost when faces are small."""
    h, w = delta.shape[:2]
    rows = np.flatnonzero(delta.reshape(h, -1).any(axis=1))
    if not len(rows):
        return i420
    cols = np.flatnonzero(delta[rows[0] : rows[-1] + 1].any(axis=(0, 2)))
    # even corners (whole chroma blocks) and a height of 4k rows (the sub-frame's I420 packs chroma 2 rows a line)
    y0, x0 = rows[0] // 2 * 2, cols[0] // 2 * 2
    y1, x1 = y0 + -(-(rows[-1] + 1 - y0) // 4) * 4, min(w, (cols[-1] // 2 + 1) * 2)
    if y1 > h:
        y0, y1 = y0 - (y1 - h), h
    if y0 < 0:
        return add_rgb_delta(i420, delta)
    ch, cw = (y1 - y0) // 2, (x1 - x0) // 2
    u = i420[h : h + h // 4].reshape(h // 2, w // 2)
    v = i420[h + h // 4 :].reshape(h // 2, w // 2)
    sub = np.concatenate(
        [
            i420[y0:y1, x0:x1],
            u[y0 // 2 : y0 // 2 + ch, x0 // 2 : x0 // 2 + cw].reshape(-1, x1 - x0),
            v[y0 // 2 : y0 // 2 + ch, x0 // 2 : x0 // 2 + cw].reshape(-1, x1 - x0),
        ]
    )
    sub = add_rgb_delta(sub, delta[y0:y1, x0:x1])
    out = i420.copy()
    out[y0:y1, x0:x1] = sub[: y1 - y0]
    ou, ov = out[h : h + h // 4].reshape(h // 2, w // 2), out[h + h // 4 :].reshape(h // 2, w // 2)
    n = ch * cw
    ou[y0 // 2 : y0 // 2 + ch, x0 // 2 : x0 // 2 + cw] = sub[y1 - y0 :].reshape(-1)[:n].reshape(ch, cw)
    ov[y0 // 2 : y0 // 2 + ch, x0 // 2 : x0 // 2 + cw] = sub[y1 - y0 :].reshape(-1)[n:].reshape(ch, cw)
    return out


class _VideoEncoder:
    """libx264 encoding with timestamps carried from the input (shifted so the file starts at 0)."""

    def __init__(
        self,
        stream: av.video.stream.VideoStream,
        output: av.container.OutputContainer,
        time_base: Fraction,
        start_us: int,
        rate: Fraction,
    ) -> None:
        self.stream = stream
        self.output = output
        self.time_base = time_base
        self.shift = int(round(start_us / 1e6 / time_base)) if start_us else 0
        self.step = max(1, int(round(1 / (float(rate) * time_base)))) if rate else 1
        self.last: int | None = None
        ctx = stream.codec_context
        self.colorspace = ctx.colorspace or None
        self.color_range = ctx.color_range or None
        # BT.601 limited range is what swscale assumes for untagged video; OpenCV's RGB->I420 gives the same values
        # (within 1 level) about 4x faster than swscale's rgb24 path.
        self.fast_601 = cv2 is not None and (ctx.colorspace or 2) in (2, 5, 6) and (ctx.color_range or 1) == 1

    def _pts(self, pts: int | None) -> int:
        value = pts - self.shift if pts is not None else (self.last + self.step if self.last is not None else 0)
        if self.last is not None and value <= self.last:
            value = self.last + 1  # the encoder needs strictly increasing timestamps (duplicate/garbled input pts)
        self.last = value
        return value

    def encode_rgb(self, frames: np.ndarray, pts: list[int | None], in_ctx: av.codec.context.CodecContext) -> None:
        for rgb, ts in zip(frames, pts, strict=True):
            if self.fast_601:
                frame = av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
                frame.pts = self._pts(ts)
                frame.time_base = self.time_base
                self.output.mux(self.stream.encode(frame))
                continue
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            kwargs: dict[str, Any] = {"format": "yuv420p"}
            if self.colorspace:
                kwargs["dst_colorspace"] = self.colorspace
            if self.color_range:
                kwargs["dst_color_range"] = self.color_range
            frame = frame.reformat(**kwargs)
            frame.pts = self._pts(ts)
            frame.time_base = self.time_base
            self.output.mux(self.stream.encode(frame))

    def can_add_delta(self, frames: list[av.VideoFrame], width: int, height: int) -> bool:
        """Whether `encode_delta` applies: decoded yuv420p frames of the output's (even) size, BT.601 limited range
        (the conversion `_to_rgb` and `encode_rgb` both assume for such frames)."""
        return (
            self.fast_601
            and width % 2 == 0
            and height % 2 == 0
            and all(f.format.name == "yuv420p" and f.width == width and f.height == height for f in frames)
        )

    def encode_delta(self, frames: list[av.VideoFrame], delta: np.ndarray) -> None:
        """Encode the decoded frames plus an RGB change (N,H,W,3 int) added in YUV: pixels the transform left alone
        keep their decoded values exactly. Going YUV -> RGB -> YUV instead loses ~1.5-2 dB PSNR on every pixel
        (chroma resampling and rounding twice), more than a small protective perturbation itself costs."""
        for frame, d in zip(frames, delta, strict=True):
            yuv = add_delta_where_changed(frame.to_ndarray(format="yuv420p"), d)
            out = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            out.pts = self._pts(frame.pts)
            out.time_base = self.time_base
            self.output.mux(self.stream.encode(out))

    def encode_frames(self, frames: list[av.VideoFrame]) -> None:
        for frame in frames:
            frame.pts = self._pts(frame.pts)
            frame.time_base = self.time_base
            frame.pict_type = av.video.frame.PictureType.NONE  # let x264 place keyframes, as the ffmpeg CLI does
            self.output.mux(self.stream.encode(frame))

    def flush(self) -> None:
        self.output.mux(self.stream.encode(None))
