"""The streaming transcode on synthetic clips of many shapes and on the real clips."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from clips import frame_image, make_clip, rotate_with_ffmpeg
from media_cleaner.evaluate.quality import psnr
from media_cleaner.media import EncodeSettings, output_extension_for, probe, transcode
from media_cleaner.media.pipeline import batch_size_for

FAST = EncodeSettings(preset="ultrafast")


def decode_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(f.pts * f.time_base) for f in container.decode(video=0)]


CASES = {
    "mp4_h264_aac": ({"audio": (("aac", 48000, "stereo"),)}, ".mp4", ["copy"]),
    "mov_two_tracks": ({"audio": (("aac", 44100, "mono"), ("aac", 48000, "stereo"))}, ".mov", ["copy", "copy"]),
    "mkv_hevc_opus": ({"codec": "libx265", "audio": (("libopus", 48000, "stereo"),)}, ".mkv", ["copy"]),
    "webm_vp9_opus": ({"codec": "libvpx-vp9", "audio": (("libopus", 48000, "stereo"),)}, ".webm", ["copy"]),
    "avi_mpeg4_mp3": ({"codec": "mpeg4", "audio": (("mp3", 44100, "stereo"),)}, ".avi", ["copy"]),
    "avi_pcm": ({"codec": "mpeg4", "audio": (("pcm_s16le", 22050, "mono"),)}, ".avi", ["transcode"]),
    "mkv_av1_silent": ({"codec": "libaom-av1", "frames": 4, "audio": ()}, ".mkv", []),
    "mp4_ten_bit": ({"pix_fmt": "yuv420p10le"}, ".mkv", ["copy"]),
    "one_frame": ({"frames": 1}, ".mp4", ["copy"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_formats_and_codecs(tmp_path: Path, name: str) -> None:
    kwargs, suffix, actions = CASES[name]
    source = make_clip(tmp_path / f"in{suffix}", **kwargs)
    info = probe(source)
    out = tmp_path / f"out.{output_extension_for(source)}"
    result = transcode(info, out, encode=FAST)
    assert [a["action"] for a in result.audio] == actions
    got = probe(out)
    assert got.video.codec == "h264" and got.video.pix_fmt == "yuv420p" and got.video.bit_depth == 8
    assert result.frames == kwargs.get("frames", 12) == len(decode_rgb(out))
    assert len(got.audio) == len(info.audio)
    for a_in, a_out in zip(info.audio, got.audio, strict=True):
        assert a_out.channels == a_in.channels
        assert a_out.codec == (a_in.codec if actions[0] == "copy" else "aac")
    # Content survives the re-encode (CRF 18): the first frame still looks like the source
    assert psnr(decode_rgb(out)[0], frame_image(0, 96, 64)) > 24


def test_webm_avi_mpg_become_mp4() -> None:
    assert [output_extension_for(p) for p in ("x.webm", "x.avi", "x.mpg")] == ["mp4"] * 3


def test_odd_size_padded_to_even(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "odd.mkv", width=95, height=63, pix_fmt="yuv444p", audio=())
    result = transcode(probe(source), tmp_path / "odd_out.mkv", encode=FAST)
    assert (result.width, result.height) == (96, 64) and result.padded == "95x63 -> 96x64"
    frame = decode_rgb(tmp_path / "odd_out.mkv")[0]
    assert psnr(frame[:63, :95], frame_image(0, 95, 63)) > 24


def test_vfr_timestamps_kept(tmp_path: Path) -> None:
    times = [0, 0.05, 0.1, 0.3, 0.35, 0.6, 0.65, 0.7, 1.0, 1.04, 1.2, 1.5]
    source = make_clip(tmp_path / "vfr.mkv", frame_times=times)
    for identity in (None, lambda frames: frames):  # passthrough and RGB paths
        out = tmp_path / "vfr_out.mkv"
        transcode(probe(source), out, transform=identity, encode=FAST)
        assert frame_times(out) == pytest.approx(times, abs=0.002)
        assert probe(out).video.vfr


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")
def test_rotation_applied_to_pixels(tmp_path: Path) -> None:
    rotated = rotate_with_ffmpeg(make_clip(tmp_path / "land.mp4"), tmp_path / "portrait.mp4", 90)
    out = tmp_path / "portrait_out.mp4"
    result = transcode(probe(rotated), out, encode=FAST)
    assert result.rotation_applied in (90, 270) and (result.width, result.height) == (64, 96)
    got = probe(out)
    assert got.video.rotation == 0 and (got.video.width, got.video.height) == (64, 96)
    # What a player shows: ffmpeg's auto-rotated decode of the input
    shown = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(rotated), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    expected = np.frombuffer(shown, np.uint8).reshape(96, 64, 3)
    assert psnr(decode_rgb(out)[0], expected) > 30


def test_transform_sees_upright_batches_and_is_applied(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mp4", frames=40, width=64, height=48)
    sizes: list[int] = []

    def invert(frames: np.ndarray) -> np.ndarray:
        sizes.append(len(frames))
        assert frames.dtype == np.uint8 and frames.shape[1:] == (48, 64, 3)
        return 255 - frames

    out = tmp_path / "inv.mp4"
    transcode(probe(source), out, transform=invert, encode=EncodeSettings(preset="ultrafast", batch_frames=16))
    assert sizes == [16, 16, 8]
    assert psnr(decode_rgb(out)[5], 255 - frame_image(5, 64, 48)) > 24


def test_batch_size_bounds_memory() -> None:
    assert batch_size_for(1920, 1080) * 1920 * 1080 * 3 <= 64 * 1024 * 1024
    assert batch_size_for(7680, 4320) == 1
    assert batch_size_for(64, 48) == 32


def test_metadata_stripped_or_kept(tmp_path: Path) -> None:
    tags = {
        "location": "+48.8577+002.2950/",
        "make": "Apple",
        "model": "iPhone 15",
        "creation_time": "2020-01-01T00:00:00Z",
        "title": "holiday",
        "comment": "hello",
    }
    source = make_clip(tmp_path / "tags.mp4", metadata=tags)
    stripped = tmp_path / "stripped.mp4"
    result = transcode(probe(source), stripped, encode=FAST)
    meta = probe(stripped).metadata
    assert meta.get("title") == "holiday" and meta.get("comment") == "hello"
    for private in ("location", "make", "model", "creation_time", "encoder"):
        assert private not in meta
    assert {"location", "creation_time"} <= set(result.dropped_tags)  # mp4 stores no make/model unless a phone did
    kept = tmp_path / "kept.mp4"
    transcode(probe(source), kept, encode=EncodeSettings(preset="ultrafast", keep_metadata=True))
    meta = probe(kept).metadata
    assert meta.get("location") == tags["location"] and meta.get("creation_time", "").startswith("2020")


def test_grid_mpg_mp2_to_aac_in_sync(shared_data: Path, tmp_path: Path) -> None:
    info = probe(shared_data / "video" / "grid_bbaf2n.mpg")
    out = tmp_path / "grid.mp4"
    result = transcode(info, out, encode=FAST)
    assert result.audio == [{"index": 1, "action": "transcode", "codec": "aac", "source_codec": "mp2"}]
    got = probe(out)
    assert got.audio[0].codec == "aac" and got.video.frame_count == 75
    assert got.audio[0].duration == pytest.approx(info.audio[0].duration, abs=0.05)


def test_six_channel_audio_copied(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cartoon.mp4"
    transcode(probe(shared_data / "video" / "cartoon_6ch_audio.mp4"), out, encode=FAST)
    got = probe(out)
    assert got.audio[0].channels == 6 and got.audio[0].codec == "aac"
    assert got.video.frame_count == 132


def test_observer_sees_originals_when_transform_works_in_place(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mp4", frames=6, audio=())
    seen: list[int] = []

    def in_place(frames: np.ndarray) -> np.ndarray:
        frames[:] = 0
        return frames

    def observe(original: np.ndarray, protected: np.ndarray) -> None:
        seen.append(int(np.abs(original.astype(int) - protected).max()))

    transcode(probe(source), tmp_path / "out.mp4", transform=in_place, observe=observe, encode=FAST)
    assert seen and min(seen) > 100


def test_mpegts_start_offset_shifted_and_in_sync(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "clip.ts", frames=24)  # MPEG-TS starts at ~1.4 s; video and audio differ
    with av.open(str(source)) as c:
        offset = {s.type: float(s.start_time * s.time_base) for s in c.streams}
    out = tmp_path / "ts.mp4"
    transcode(probe(source), out, encode=FAST)
    with av.open(str(out)) as c:
        starts = {s.type: float(s.start_time * s.time_base) for s in c.streams}
    assert min(starts.values()) == pytest.approx(0.0, abs=0.002)
    assert starts["video"] - starts["audio"] == pytest.approx(offset["video"] - offset["audio"], abs=0.003)


def top_level_boxes(path: Path) -> list[str]:
    import struct  # noqa: PLC0415

    names = []
    with path.open("rb") as f:
        while len(header := f.read(8)) == 8:
            size, kind = struct.unpack(">I4s", header)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0] - 8
            f.seek(size - 8, 1)
            names.append(kind.decode("latin-1"))
    return names


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_faststart_moov_before_mdat(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    transcode(probe(make_clip(tmp_path / f"in{suffix}")), out, encode=FAST)
    boxes = top_level_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat")


@pytest.mark.parametrize("audio", [(("aac", 48000, "stereo"),), (("pcm_s16le", 22050, "mono"),)], ids=["copy", "pcm"])
def test_overlapped_decode_and_encode_write_the_same_file(tmp_path: Path, audio: tuple) -> None:
    source = make_clip(
        tmp_path / "in.avi" if audio[0][0].startswith("pcm") else tmp_path / "in.mp4",
        frames=40,
        width=64,
        height=48,
        **({"codec": "mpeg4"} if audio[0][0].startswith("pcm") else {}),
        audio=audio,
    )
    threads: set[str] = set()

    def shift(frames: np.ndarray) -> np.ndarray:
        threads.add(threading.current_thread().name)
        out = frames.copy()
        out[:, 8:24, 8:24] = np.clip(out[:, 8:24, 8:24].astype(int) + 3, 0, 255)
        return out

    outs = []
    for overlap in (False, True):
        out = tmp_path / f"out_{overlap}.mp4"
        settings = EncodeSettings(preset="ultrafast", batch_frames=7, overlap=overlap)
        result = transcode(probe(source), out, transform=shift, encode=settings)
        assert result.frames == 40
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]  # the same calls on the output in the same order
    assert threads == {threading.main_thread().name}  # the transform (progress, cancel) stays on the caller's thread


def test_overlapped_transform_error_and_cancel_propagate(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "in.mp4", frames=40, width=64, height=48)
    calls: list[int] = []

    def fails(frames: np.ndarray) -> np.ndarray:
        calls.append(len(frames))
        if len(calls) == 2:
            raise RuntimeError("boom")
        return frames

    with pytest.raises(RuntimeError, match="boom"):
        transcode(
            probe(source), tmp_path / "a.mp4", transform=fails, encode=EncodeSettings(batch_frames=8, overlap=True)
        )
    assert calls == [8, 8]  # stopped at the failing batch; the reader thread was stopped and joined

    checks: list[int] = []

    def check() -> None:
        checks.append(1)
        if len(checks) == 3:
            raise KeyboardInterrupt  # stands in for the engine's Cancelled

    with pytest.raises(KeyboardInterrupt):
        transcode(
            probe(source),
            tmp_path / "b.mp4",
            transform=lambda f: f,
            check=check,
            encode=EncodeSettings(batch_frames=8, overlap=True),
        )
    assert len(checks) == 3
