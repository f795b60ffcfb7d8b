"""engine.protect end to end: identity, simple real protectors, progress, cancel, failures leave nothing behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from clips import make_clip, rotate_with_ffmpeg
from media_cleaner.config import Settings
from media_cleaner.engine import ProtectionOptions, Protectors, load_protectors, protect
from media_cleaner.errors import Cancelled, InvalidMediaError, UnsupportedMediaError
from media_cleaner.media import decode_track, probe
from media_cleaner.progress import CancelToken


class ShiftVideo:
    """Adds a fixed +delta to every pixel (clipped): a known perturbation to check the report's figures."""

    name = "shift"

    def __init__(self, delta: int = 3) -> None:
        self.delta = delta
        self.batches = 0
        self.encoder: tuple[int | None, str | None] | None = None

    def prepare(self, ctx) -> None:
        ctx.stats["prepared"] = True
        self.encoder = (ctx.crf, ctx.preset)

    def protect_batch(self, frames: np.ndarray, ctx) -> np.ndarray:
        self.batches += 1
        ctx.stats["frames"] = ctx.stats.get("frames", 0) + len(frames)
        return np.clip(frames.astype(np.int16) + self.delta, 0, 255).astype(np.uint8)

    def finish(self, ctx) -> None:
        ctx.stats["finished"] = True


class NoiseAudio:
    """Adds white noise at a fixed level relative to full scale."""

    name = "noise"

    def prepare(self, ctx) -> None:
        ctx.stats["rate"] = ctx.sample_rate

    def protect_track(self, pcm: np.ndarray, ctx) -> np.ndarray:
        ctx.progress(0.5, "audio")
        rng = np.random.default_rng(0)
        return pcm + rng.normal(0, 0.003, pcm.shape).astype(np.float32)


class Boom:
    name = "boom"

    def prepare(self, ctx) -> None:
        pass

    def protect_batch(self, frames: np.ndarray, ctx) -> np.ndarray:
        raise RuntimeError("protector failed")

    def finish(self, ctx) -> None:
        pass


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_identity_on_grid(shared_data: Path, tmp_path: Path, settings: Settings) -> None:
    out = tmp_path / "grid_protected.mp4"
    report = protect(shared_data / "video" / "grid_bbaf2n.mpg", out, settings=settings, protectors=Protectors())
    assert out.is_file() and probe(out).video.frame_count == 75
    data = json.loads(json.dumps(report.to_dict()))  # strictly JSON (no NaN/Infinity)
    assert data["parameters"]["crf"] == 18 and data["parameters"]["pixel_bound"] == pytest.approx(6.916, abs=0.01)
    assert data["quality"]["video"]["identical"] is True
    encoded = data["quality"]["encoded"]
    assert encoded["frames_compared"] == 75 and encoded["psnr_mean_db"] > 35 and encoded["ssim_mean"] > 0.95
    assert encoded["audio"]["snr_db"] > 10  # MP2 -> AAC re-encode only
    assert {"probe", "decode_encode", "quality", "total"} <= set(data["timings"])
    assert data["pipeline"]["audio"][0]["action"] == "transcode"
    assert data["probe"]["video"]["codec"] == "mpeg1video"


def test_protectors_applied_and_measured(tmp_path: Path, settings: Settings) -> None:
    source = make_clip(tmp_path / "in.mov", frames=30, width=128, height=96, audio=(("aac", 48000, "stereo"),))
    out = tmp_path / "out.mov"
    video = ShiftVideo(3)
    events: list[tuple[float, str]] = []
    report = protect(
        source,
        out,
        ProtectionOptions(epsilon=0.05, audio_level="средний", crf=20),
        progress=lambda f, p: events.append((f, p)),
        settings=settings,
        protectors=Protectors(video=video, audio=NoiseAudio()),
    )
    assert report.parameters["audio_level"] == "medium" and report.parameters["crf"] == 20
    assert report.video == {"protector": "shift", "prepared": True, "frames": 30, "finished": True}
    assert video.encoder == (20, settings.video_preset)  # the protector learns how the output will be coded
    assert report.audio["protector"] == "noise" and report.audio["rate"] == 48000
    q = report.quality["video"]
    assert q["linf_max"] == 3 and q["frames"] == 30 and not q["identical"]
    assert q["psnr_db"] == pytest.approx(20 * np.log10(255 / 3), abs=0.6)  # a few pixels clip at 255
    assert 0.9 < q["ssim_mean"] <= 1.0 and q["ssim_frames"] == 3  # 1 per second at 12 fps
    audio_q = report.quality["audio"]
    assert 25 < audio_q["snr_db"] < 45 and audio_q["worst_window_snr_db"] <= audio_q["snr_db"] + 3
    assert report.pipeline["audio"][0]["action"] == "protected"
    # the delivered file carries both perturbations
    assert "per_frame" not in report.quality["encoded"]  # the report keeps summaries only
    assert report.quality["encoded"]["psnr_mean_db"] < 45
    original, _, _, _ = decode_track(source, 1)
    protected, _, _, _ = decode_track(out, 1)
    assert abs(original.shape[1] - protected.shape[1]) < 2048
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0.0 <= fractions[0]
    assert {"probe", "audio", "video", "quality"} <= {p for _, p in events}


def test_switches_pass_through(tmp_path: Path, settings: Settings) -> None:
    source = make_clip(tmp_path / "in.mp4")
    video = ShiftVideo()
    report = protect(
        source,
        tmp_path / "out.mp4",
        ProtectionOptions(protect_video=False, protect_audio=False, measure_quality=False),
        settings=settings,
        protectors=Protectors(video=video, audio=NoiseAudio()),
    )
    assert video.batches == 0 and report.quality["video"]["identical"] is True
    assert report.pipeline["audio"][0]["action"] == "copy" and report.pipeline["rgb_path"] is False
    assert "encoded" not in report.quality


def test_cancel_leaves_nothing(tmp_path: Path, settings: Settings) -> None:
    source = make_clip(tmp_path / "in.mp4", frames=80, width=64, height=48)
    outdir = tmp_path / "out"
    token = CancelToken()

    def progress(fraction: float, phase: str) -> None:
        if phase == "video" and fraction > 0.3:
            token.cancel()

    with pytest.raises(Cancelled):
        protect(source, outdir / "x.mp4", progress=progress, cancel=token, settings=settings, protectors=Protectors())
    assert leftovers(outdir, set()) == []


def test_protector_failure_leaves_nothing(tmp_path: Path, settings: Settings) -> None:
    source = make_clip(tmp_path / "in.mp4")
    with pytest.raises(RuntimeError, match="protector failed"):
        protect(source, tmp_path / "x.mp4", settings=settings, protectors=Protectors(video=Boom()))
    assert leftovers(tmp_path, {"in.mp4"}) == []


@pytest.mark.parametrize("content", [b"", b"not a video at all\n" * 10])
def test_bad_input_typed_error_nothing_written(tmp_path: Path, settings: Settings, content: bytes) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(InvalidMediaError):
        protect(bad, tmp_path / "bad_protected.mp4", settings=settings, protectors=Protectors())
    assert leftovers(tmp_path, {"bad.mp4"}) == []


def test_unsupported_output_container(tmp_path: Path, settings: Settings) -> None:
    source = make_clip(tmp_path / "in.mp4")
    with pytest.raises(UnsupportedMediaError, match="output must be"):
        protect(source, tmp_path / "out.webm", settings=settings, protectors=Protectors())


def test_load_protectors_respects_switches(settings: Settings) -> None:
    loaded = load_protectors(settings, video=False, audio=False)
    assert loaded.video is None and loaded.audio is None and loaded.notes == []


def test_six_channel_audio_protected(shared_data: Path, tmp_path: Path, settings: Settings) -> None:
    out = tmp_path / "cartoon.mp4"
    report = protect(
        shared_data / "video" / "cartoon_6ch_audio.mp4",
        out,
        ProtectionOptions(measure_quality=False),
        settings=settings.model_copy(update={"video_preset": "ultrafast"}),
        protectors=Protectors(audio=NoiseAudio()),
    )
    assert report.quality["audio"]["snr_db"] is not None
    with av.open(str(out)) as container:
        assert container.streams.audio[0].codec_context.channels == 6


def test_ten_bit_and_no_audio_through_protector(tmp_path: Path, settings: Settings) -> None:
    source = make_clip(tmp_path / "ten.mkv", pix_fmt="yuv420p10le", audio=())
    out = tmp_path / "ten_out.mkv"
    report = protect(source, out, settings=settings, protectors=Protectors(video=ShiftVideo(2), audio=NoiseAudio()))
    got = probe(out)
    assert got.video.pix_fmt == "yuv420p" and not got.audio and report.pipeline["audio"] == []
    assert report.quality["video"]["linf_max"] == 2 and "audio" not in report.quality


@pytest.mark.slow
def test_crowd_1080p_metering(shared_data: Path, tmp_path: Path, settings: Settings) -> None:
    report = protect(
        shared_data / "video" / "crowd_1080p_faces.mp4",
        tmp_path / "crowd.mp4",
        ProtectionOptions(measure_quality=False),
        settings=settings.model_copy(update={"video_preset": "ultrafast"}),
        protectors=Protectors(video=ShiftVideo(1)),
    )
    q = report.quality["video"]
    assert q["frames"] == 105 and q["ssim_frames"] == 5 and q["linf_max"] == 1  # SSIM: 1 frame per second
    assert report.pipeline["width"] == 1920 and report.timings["video_quality"] < report.timings["total"]


class RecordingVideo(ShiftVideo):
    def prepare(self, ctx) -> None:
        ctx.stats["size"] = (ctx.width, ctx.height)
        self.shapes: list[tuple[int, ...]] = []

    def protect_batch(self, frames: np.ndarray, ctx) -> np.ndarray:
        self.shapes.append(frames.shape)
        return super().protect_batch(frames, ctx)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI to write a display matrix")
def test_portrait_rotation_one_frame_two_tracks(tmp_path: Path, settings: Settings) -> None:
    tracks = (("aac", 44100, "mono"), ("aac", 48000, "stereo"))
    landscape = make_clip(tmp_path / "land.mp4", frames=1, width=96, height=64, audio=tracks)
    portrait = rotate_with_ffmpeg(landscape, tmp_path / "portrait.mp4", 90)
    video = RecordingVideo(2)
    report = protect(portrait, tmp_path / "out.mp4", settings=settings, protectors=Protectors(video, NoiseAudio()))
    assert report.video["size"] == (64, 96) and video.shapes == [(1, 96, 64, 3)]
    assert [t["stream"] for t in report.audio["tracks"]] == [1, 2]
    assert [a["action"] for a in report.pipeline["audio"]] == ["protected", "protected"]
    got = probe(tmp_path / "out.mp4")
    assert got.video.frame_count == 1 and (got.video.width, got.video.height) == (64, 96)
    assert [a.channels for a in got.audio] == [1, 2]
    assert any("rotation" in note for note in report.notes)


def test_refuses_to_overwrite_input(tmp_path: Path, settings: Settings) -> None:
    source = make_clip(tmp_path / "in.mp4")
    before = source.read_bytes()
    with pytest.raises(ValueError, match="overwrite the input"):
        protect(source, tmp_path / "." / "in.mp4", settings=settings, protectors=Protectors())
    assert source.read_bytes() == before


class MaskFaces:
    """Paints every frame mid-grey: no detector can find a face in it, so efficacy must read as fully suppressed."""

    name = "grey"

    def prepare(self, ctx) -> None:
        pass

    def protect_batch(self, frames: np.ndarray, ctx) -> np.ndarray:
        return np.full_like(frames, 128)

    def finish(self, ctx) -> None:
        pass


def test_efficacy_measured_on_delivered_file(shared_data: Path, tmp_path: Path, settings: Settings) -> None:
    out = tmp_path / "grid_protected.mp4"
    options = ProtectionOptions(measure_efficacy=True)
    report = protect(
        shared_data / "video" / "grid_bbaf2n.mpg",
        out,
        options,
        settings=settings,
        protectors=Protectors(video=MaskFaces(), audio=NoiseAudio()),
    )
    faces = report.efficacy["faces"]
    # GRID: one frontal face in every frame; sampled at 2 frames per second of the 3 s clip.
    assert faces["mtcnn"]["frames"] == 7
    assert faces["mtcnn"]["frames_with_face_original"] == 7
    assert faces["mtcnn"]["frames_with_face_protected"] == 0
    assert faces["haar"]["frames_with_face_protected"] == 0
    # the unseen neural detector (MediaPipe BlazeFace) reports next to Haar
    assert (faces["blazeface"]["frames_with_face_original"], faces["blazeface"]["frames_with_face_protected"]) == (7, 0)
    speech = report.efficacy["speech"]
    assert {"whisper", "unseen"} <= set(speech)
    assert speech["whisper"]["original_text"]
    assert report.timings["efficacy"] > 0
    json.dumps(report.to_dict())


def test_efficacy_off_by_default(tmp_path: Path, settings: Settings) -> None:
    source = make_clip(tmp_path / "in.mp4", frames=5)
    report = protect(source, tmp_path / "out.mp4", settings=settings, protectors=Protectors(video=ShiftVideo()))
    assert report.efficacy == {}
