"""The engine's entry point: `protect(input, output, options, progress, cancel) -> ProtectionReport`.

Knows nothing of HTTP or databases. Works as a library, from the CLI and inside a worker process.
"""

from __future__ import annotations

import importlib
import math
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from media_cleaner.config import (
    AudioLevel,
    AudioObjective,
    Settings,
    check_audio_target,
    load_settings,
    normalise_audio_level,
)
from media_cleaner.errors import MediaCleanerError
from media_cleaner.progress import CancelToken, ProgressCallback, no_progress, scaled

if TYPE_CHECKING:  # protect/ imports torch at run time in its implementations; the engine stays import-light
    from media_cleaner.protect.base import AudioProtector, VideoProtector


@dataclass
class ProtectionOptions:
    epsilon: float = 0.12  # L-inf bound in ImageNet-normalised units; x 57.6 = 8-bit levels
    audio_level: AudioLevel = "weak"
    # untargeted: the true transcript is lost; silence: nothing is heard; phrase: `audio_phrase` is heard instead
    audio_objective: AudioObjective = "untargeted"
    audio_phrase: str = ""
    protect_video: bool = True
    protect_audio: bool = True
    keep_metadata: bool = False
    crf: int | None = None  # None -> settings.video_crf
    measure_quality: bool = True
    measure_efficacy: bool = False  # run the face detectors and recognisers on the delivered file (sampled)

    def __post_init__(self) -> None:
        self.audio_level = normalise_audio_level(self.audio_level)
        self.audio_objective, self.audio_phrase = check_audio_target(self.audio_objective, self.audio_phrase)
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be within [0, 1], got {self.epsilon}")

    @property
    def pixel_bound(self) -> float:
        """The epsilon in 8-bit levels (ImageNet sigma ~0.226)."""
        return self.epsilon * 0.226 * 255.0


@dataclass
class ProtectionReport:
    """JSON-serialisable account of one run: inputs, parameters, timings per phase, quality and efficacy."""

    input: str
    output: str
    parameters: dict[str, Any]
    probe: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    efficacy: dict[str, Any] = field(default_factory=dict)
    video: dict[str, Any] = field(default_factory=dict)  # the video protector's own figures
    audio: dict[str, Any] = field(default_factory=dict)  # the audio protector's own figures
    pipeline: dict[str, Any] = field(default_factory=dict)  # what the media pipeline did (audio actions, padding...)
    notes: list[str] = field(default_factory=list)  # anything a user should know (fallbacks, padding, dropped)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Protectors:
    """The loaded protectors; None means identity. Load once per worker and reuse so models stay warm."""

    video: VideoProtector | None = None
    audio: AudioProtector | None = None
    notes: list[str] = field(default_factory=list)


def _load_one(kind: str, settings: Settings, registry: Any) -> tuple[Any, str | None]:
    module_name = f"media_cleaner.protect.{kind}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None, f"{kind} protector not installed ({module_name} missing): {kind} passes through unchanged"
        raise
    create = getattr(module, "create", None)
    if create is None:
        return None, f"{module_name}.create not found: {kind} passes through unchanged"
    return create(settings, registry), None


def load_protectors(settings: Settings, *, video: bool = True, audio: bool = True) -> Protectors:
    """Import `media_cleaner.protect.video` / `.audio` lazily and call their `create(settings, registry)`."""
    from media_cleaner.models import ModelRegistry

    registry = ModelRegistry(settings)
    loaded = Protectors()
    for kind, wanted in (("video", video), ("audio", audio)):
        if not wanted:
            continue
        protector, note = _load_one(kind, settings, registry)
        setattr(loaded, kind, protector)
        if note:
            loaded.notes.append(note)
    return loaded


def default_options(settings: Settings) -> ProtectionOptions:
    return ProtectionOptions(
        epsilon=settings.default_video_epsilon,
        audio_level=settings.default_audio_level,
        keep_metadata=settings.keep_metadata,
    )


def protect(
    input_path: str | Path,
    output_path: str | Path,
    options: ProtectionOptions | None = None,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    *,
    settings: Settings | None = None,
    protectors: Protectors | None = None,
) -> ProtectionReport:
    """Protect one media file. Output is written to a temp file and renamed atomically on success."""
    settings = settings or load_settings()
    options = options or default_options(settings)
    cancel = cancel or CancelToken()
    if protectors is None:
        protectors = load_protectors(settings, video=options.protect_video, audio=options.protect_audio)
    return _run(Path(input_path), Path(output_path), options, progress, cancel, settings, protectors)


def _temp_output(output: Path) -> Path:
    # Next to the output: same filesystem, so the final rename is atomic. Hidden and unique per run.
    return output.with_name(f".{output.stem}.{uuid.uuid4().hex[:8]}.partial{output.suffix}")


def _run(
    input_path: Path,
    output_path: Path,
    options: ProtectionOptions,
    progress: ProgressCallback,
    cancel: CancelToken,
    settings: Settings,
    protectors: Protectors,
) -> ProtectionReport:
    from media_cleaner.media import EncodeSettings, muxer_for, probe, transcode

    if output_path.resolve() == input_path.resolve():
        raise ValueError(f"output {output_path} would overwrite the input")
    crf = settings.video_crf if options.crf is None else options.crf
    video_protector = protectors.video if options.protect_video else None
    audio_protector = protectors.audio if options.protect_audio else None
    report = ProtectionReport(
        input=str(input_path),
        output=str(output_path),
        parameters={
            "epsilon": options.epsilon,
            "pixel_bound": round(options.pixel_bound, 3),
            "audio_level": options.audio_level,
            "audio_objective": options.audio_objective,
            "audio_phrase": options.audio_phrase,
            "protect_video": options.protect_video,
            "protect_audio": options.protect_audio,
            "keep_metadata": options.keep_metadata,
            "crf": crf,
            "preset": settings.video_preset,
            "audio_bitrate": settings.audio_bitrate,
            "video_protector": getattr(video_protector, "name", None),
            "audio_protector": getattr(audio_protector, "name", None),
        },
        notes=list(protectors.notes),
    )
    started = time.perf_counter()
    progress(0.0, "probe")
    info = probe(input_path)
    fmt = muxer_for(output_path)  # before any work: a bad output name fails fast
    report.probe = info.to_dict()
    report.timings["probe"] = _elapsed(started)
    cancel.check()

    has_audio_work = audio_protector is not None and info.has_audio
    audio_share = 0.3 if has_audio_work else 0.0
    video_start = 0.02 + audio_share
    quality_share = 0.05 if options.measure_quality else 0.0

    protected_audio = {}
    if has_audio_work:
        protected_audio = _protect_audio(
            info, audio_protector, options, settings, cancel, scaled(progress, 0.02, video_start), report
        )
    elif options.protect_audio and info.has_audio:
        report.quality["audio"] = {"identical": True, "reason": "no audio protector: audio passes through unchanged"}

    output_path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_output(output_path)
    try:
        video_progress = scaled(progress, video_start, 1.0 - quality_share - 0.01)
        meter = _VideoMeter(info.video.fps) if video_protector is not None else None
        transform, ctx = None, None
        if video_protector is not None:
            ctx, transform = _video_transform(info, video_protector, options, crf, settings, cancel, video_progress)
        t0 = time.perf_counter()
        result = transcode(
            info,
            temp,
            transform=transform,
            protected_audio=protected_audio,
            encode=EncodeSettings(
                crf=crf,
                preset=settings.video_preset,
                audio_bitrate=settings.audio_bitrate,
                keep_metadata=options.keep_metadata,
            ),
            observe=meter.observe if meter else None,
            progress=lambda f: video_progress(f, "video"),
            check=cancel.check,
            output_format=fmt,
        )
        total_video = _elapsed(t0)
        if video_protector is not None and ctx is not None:
            video_protector.finish(ctx)
            report.video = {"protector": video_protector.name, **ctx.stats}
        protect_s = transform.seconds if transform is not None else 0.0
        quality_s = meter.seconds if meter else 0.0
        report.timings["video_protect"] = round(protect_s, 3)
        report.timings["video_quality"] = round(quality_s, 3)
        report.timings["decode_encode"] = round(max(0.0, total_video - protect_s - quality_s), 3)
        report.quality["video"] = meter.summary() if meter else _identical_video(options)
        report.pipeline = asdict(result)
        if result.padded:
            report.notes.append(f"odd frame size padded to even for yuv420p (edge pixels repeated): {result.padded}")
        if result.rotation_applied:
            report.notes.append(
                f"rotation {result.rotation_applied} deg applied to the pixels (output is stored upright, no matrix)"
            )
        if result.dropped_streams:
            report.notes.append(f"streams not carried over: {', '.join(result.dropped_streams)}")
        cancel.check()
        progress(1.0 - quality_share - 0.01, "encode")
        os.replace(temp, output_path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise

    if options.measure_quality:
        progress(1.0 - quality_share, "quality")
        t0 = time.perf_counter()
        try:
            report.quality["encoded"] = _encoded_quality(input_path, output_path)
        except (MediaCleanerError, ValueError, OSError) as exc:  # the output is good; only its measurement failed
            report.quality["encoded"] = {"error": f"{type(exc).__name__}: {exc}"}
            report.notes.append(f"measuring the delivered file failed: {exc}")
        report.timings["quality"] = _elapsed(t0)
    if options.measure_efficacy and (report.video or report.audio):
        progress(1.0 - quality_share / 2, "efficacy")
        t0 = time.perf_counter()
        report.efficacy = _measure_efficacy(input_path, output_path, info, report, settings)
        report.timings["efficacy"] = _elapsed(t0)
    report.timings["total"] = _elapsed(started)
    progress(1.0, "done")
    return report


# Efficacy on the delivered file is a sample, not a census: it must cost little next to the protection itself.
EFFICACY_FRAMES_PER_SECOND = 2.0
EFFICACY_MAX_FRAMES = 40


def _measure_efficacy(
    input_path: Path, output_path: Path, info: Any, report: ProtectionReport, settings: Settings
) -> dict[str, Any]:
    """Detectors and recognisers on original vs delivered file, for the modalities that were protected."""
    result: dict[str, Any] = {}
    try:
        if report.video:
            from media_cleaner.evaluate.faces import face_efficacy

            every = max(1, round(info.video.fps / EFFICACY_FRAMES_PER_SECOND))
            result["faces"] = face_efficacy(
                input_path, output_path, settings, every=every, max_frames=EFFICACY_MAX_FRAMES
            )
        if report.audio:
            from media_cleaner.evaluate.speech import speech_efficacy

            result["speech"] = speech_efficacy(input_path, output_path, settings)
    except (MediaCleanerError, ValueError, OSError, RuntimeError) as exc:  # the output is good; only a check failed
        result["error"] = f"{type(exc).__name__}: {exc}"
        report.notes.append(f"measuring efficacy on the delivered file failed: {exc}")
    return result


def _elapsed(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def _identical_video(options: ProtectionOptions) -> dict[str, Any]:
    reason = "video protection switched off" if not options.protect_video else "no video protector loaded"
    return {"identical": True, "reason": f"{reason}: frames were not changed before encoding"}


class _TimedTransform:
    """Wraps a protector's `protect_batch` as the pipeline's frame transform, timing it and reporting progress."""

    def __init__(self, protector: Any, ctx: Any, progress: ProgressCallback, total: int) -> None:
        self.protector, self.ctx, self.progress, self.total = protector, ctx, progress, max(1, total)
        self.seconds = 0.0
        self.done = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.ctx.cancel.check()
        t0 = time.perf_counter()
        out = self.protector.protect_batch(frames, self.ctx)
        self.seconds += time.perf_counter() - t0
        self.done += len(frames)
        if out.dtype != np.uint8:  # a float result is rounded and clipped, never wrapped around
            out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return out


def _video_transform(
    info: Any,
    protector: Any,
    options: ProtectionOptions,
    crf: int,
    settings: Settings,
    cancel: CancelToken,
    progress: ProgressCallback,
) -> tuple[Any, _TimedTransform]:
    from media_cleaner.protect.base import VideoContext

    ctx = VideoContext(
        settings=settings,
        epsilon=options.epsilon,
        width=info.video.display_width,
        height=info.video.display_height,
        fps=info.video.fps,
        frame_count=info.video.frame_count,
        cancel=cancel,
        progress=lambda f, phase="video": progress(f, phase),
        crf=crf,  # the output's, as `_run` resolved it
        preset=settings.video_preset,
    )
    protector.prepare(ctx)
    return ctx, _TimedTransform(protector, ctx, progress, info.video.frame_count or 1)


class _VideoMeter:
    """Perturbation quality on the in-memory frames, before encoding.

    PSNR and L-inf on every frame (RGB); SSIM on luma of one frame per second of video (every round(fps)-th
    frame), since full-resolution SSIM costs ~0.1-0.3 s a frame at 1080p.
    """

    def __init__(self, fps: float) -> None:
        self.every = max(1, int(round(fps or 1)))
        self.index = 0
        self.psnrs: list[float] = []
        self.ssims: list[float] = []
        self.sq_sum = 0.0
        self.samples = 0
        self.linf = 0
        self.seconds = 0.0

    def observe(self, original: np.ndarray, protected: np.ndarray) -> None:
        from media_cleaner.evaluate.quality import frame_errors, ssim

        t0 = time.perf_counter()
        size = original[0].size if len(original) else 1
        for i in range(len(original)):
            squares, linf = frame_errors(original[i], protected[i])
            self.psnrs.append(math.inf if squares == 0 else 10 * math.log10(255.0**2 * size / squares))
            self.sq_sum += squares
            self.samples += size
            self.linf = max(self.linf, linf)
            if (self.index + i) % self.every == 0:
                self.ssims.append(ssim(original[i], protected[i]))
        self.index += len(original)
        self.seconds += time.perf_counter() - t0

    def summary(self) -> dict[str, Any]:
        from media_cleaner.evaluate.quality import finite

        mse = self.sq_sum / max(1, self.samples)
        finite_psnr = [p for p in self.psnrs if math.isfinite(p)]
        return {
            "measured": "perturbation before encoding, on the in-memory RGB frames",
            "frames": len(self.psnrs),
            "identical": mse == 0.0,
            "psnr_db": finite(10 * math.log10(255.0**2 / mse)) if mse > 0 else None,
            "psnr_min_db": finite(min(finite_psnr)) if finite_psnr else None,
            "psnr_mean_db": finite(float(np.mean(finite_psnr))) if finite_psnr else None,
            "ssim_mean": finite(float(np.mean(self.ssims)), 5) if self.ssims else None,
            "ssim_min": finite(float(np.min(self.ssims)), 5) if self.ssims else None,
            "ssim_frames": len(self.ssims),
            "ssim_sampling": f"luma, every {self.every}th frame (1 per second)",
            "linf_max": self.linf,
        }


def _protect_audio(
    info: Any,
    protector: Any,
    options: ProtectionOptions,
    settings: Settings,
    cancel: CancelToken,
    progress: ProgressCallback,
    report: ProtectionReport,
) -> dict[int, Any]:
    from media_cleaner.evaluate.quality import finite, snr_db, worst_window_snr_db
    from media_cleaner.media import ProtectedTrack, decode_track
    from media_cleaner.protect.base import AudioContext

    tracks: dict[int, Any] = {}
    stats: list[dict[str, Any]] = []
    quality: list[dict[str, Any]] = []
    decode_s = protect_s = 0.0
    count = len(info.audio)
    for i, stream in enumerate(info.audio):
        track_progress = scaled(progress, i / count, (i + 1) / count)
        cancel.check()
        t0 = time.perf_counter()
        track_progress(0.0, "audio")
        pcm, rate, layout, start = decode_track(info.path, stream.index)
        decode_s += time.perf_counter() - t0
        ctx = AudioContext(
            settings=settings,
            level=options.audio_level,
            objective=options.audio_objective,
            phrase=options.audio_phrase,
            sample_rate=rate,
            channels=pcm.shape[0],
            cancel=cancel,
            progress=scaled(track_progress, 0.1, 1.0),
        )
        t0 = time.perf_counter()
        protector.prepare(ctx)
        protected = np.asarray(protector.protect_track(pcm, ctx), dtype=np.float32)
        protect_s += time.perf_counter() - t0
        if protected.shape != pcm.shape:
            raise ValueError(f"audio protector returned shape {protected.shape}, expected {pcm.shape}")
        tracks[stream.index] = ProtectedTrack(protected, rate, layout, start)
        stats.append({"stream": stream.index, **ctx.stats})
        quality.append(
            {
                "stream": stream.index,
                "measured": "perturbation before encoding, on the decoded PCM",
                "snr_db": finite(snr_db(pcm, protected)),
                "worst_window_snr_db": finite(worst_window_snr_db(pcm, protected, rate, 1.0)),
                "identical": bool(np.array_equal(pcm, protected)),
            }
        )
    report.audio = {"protector": protector.name, **(stats[0] if stats else {}), "tracks": stats}
    report.quality["audio"] = {**quality[0], "tracks": quality} if quality else {}
    report.timings["audio_decode"] = round(decode_s, 3)
    report.timings["audio_protect"] = round(protect_s, 3)
    return tracks


def _encoded_quality(original: Path, protected: Path) -> dict[str, Any]:
    """The delivered file against the original: decoded, time-aligned (see evaluate.quality.compare_videos)."""
    from media_cleaner.evaluate.quality import compare_videos

    summary = compare_videos(original, protected)
    summary.pop("per_frame", None)
    return summary
