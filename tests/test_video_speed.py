"""Speed changes to the video attack and the pipeline that must not change what they compute."""

from __future__ import annotations

import io
from pathlib import Path

import av
import cv2
import numpy as np

from media_cleaner.config import Settings
from media_cleaner.media.pipeline import add_delta_where_changed, pad_even
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.progress import CancelToken
from media_cleaner.protect.base import VideoContext
from media_cleaner.protect.video import VideoAttackConfig, create
from media_cleaner.protect.video.codec import h264_roundtrip


def grid_frames(shared_data: Path, count: int) -> np.ndarray:
    with av.open(str(shared_data / "video" / "grid_bbaf2n.mpg")) as c:
        return np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(count), c.decode(video=0), strict=False)])


def muxed_roundtrip(frames: np.ndarray, crf: int, preset: str, base: np.ndarray | None) -> np.ndarray:
    """The round trip as it was written before: an in-memory mp4 muxed and demuxed, the decoder's default threads."""
    n, h, w = frames.shape[:3]
    padded = pad_even(frames)
    delta = base is not None and h % 2 == 0 and w % 2 == 0
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = padded.shape[2], padded.shape[1], "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        for k, rgb in enumerate(padded):
            if delta:
                i420 = add_delta_where_changed(
                    cv2.cvtColor(base[k], cv2.COLOR_RGB2YUV_I420), rgb.astype(np.int16) - base[k]
                )
            else:
                i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(i420, format="yuv420p")))
        out.mux(stream.encode())
    buf.seek(0)
    with av.open(buf) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])[:, :h, :w]


def test_round_trip_without_a_container_decodes_the_same_pixels(shared_data: Path) -> None:
    base = grid_frames(shared_data, 3)
    rng = np.random.default_rng(0)
    adv = base.copy()
    adv[:, 60:200, 100:260] = np.clip(adv[:, 60:200, 100:260] + rng.integers(-6, 7, (3, 140, 160, 3)), 0, 255)
    cases = [
        (adv, base, 18, "medium"),  # the attack's call: the change added in YUV
        (adv[:2, 32:224, 48:304], base[:2, 32:224, 48:304], 18, "medium"),  # a macroblock-aligned crop
        (adv[:, :201, :299], None, 23, "veryfast"),  # odd size (padded), whole-frame conversion, other settings
    ]
    for frames, ref, crf, preset in cases:
        got = h264_roundtrip(frames, crf, preset, base=ref)
        assert got.shape == frames.shape
        assert np.array_equal(got, muxed_roundtrip(frames, crf, preset, ref))
        assert not np.array_equal(got, frames)  # it was coded


def test_background_key_frames_and_checks_give_the_same_output(settings: Settings, shared_data: Path) -> None:
    """Key-frame detections and group checks on the low-priority thread: the same frames and figures as in line
    (two batches, so a check is still pending when the next batch's first group starts, and a 1-frame group)."""
    with av.open(str(shared_data / "bench" / "talking_crowd_720p.mp4")) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(11), c.decode(video=0), strict=False)])
    frames = np.ascontiguousarray(frames[:, 352:624, 528:800])  # four small faces of the crowd
    runs = {}
    for background in (False, True):
        config = VideoAttackConfig(group=4, first_steps=4, steps=2, background=background)
        protector = create(settings, ModelRegistry(settings), config)
        ctx = VideoContext(
            settings=settings, epsilon=0.12, width=272, height=272, fps=25.0, frame_count=11, cancel=CancelToken()
        )
        protector.prepare(ctx)
        out = np.concatenate([protector.protect_batch(frames[:6], ctx), protector.protect_batch(frames[6:], ctx)])
        protector.finish(ctx)
        assert (protector.ahead is not None) == background
        stats = ctx.stats
        runs[background] = (out, {k: stats[k] for k in ("faces_left_after_optimisation", "key_frames_detected")})
        runs[background][1]["hard"] = [(f.hard_r.tolist(), f.hard_o.tolist()) for f in protector.tracks]
    assert np.array_equal(runs[False][0], runs[True][0])
    assert runs[False][1] == runs[True][1]
    assert (
        runs[True][1]["key_frames_detected"] == 4
    )  # 6 = 4 + 2, 5 = 4 + 1: frames 0, 3 (inline), 5 (ahead), 9 (inline)
    assert not np.array_equal(runs[True][0], frames)


def test_lower_thread_priority_is_per_thread() -> None:
    import os  # noqa: PLC0415
    import threading  # noqa: PLC0415

    from media_cleaner.media.pipeline import lower_thread_priority  # noqa: PLC0415

    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = []

    def run() -> None:
        lower_thread_priority(5)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [min(19, mine + 5)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine


def test_round_trip_detection_at_the_faces_levels_finds_the_same_candidates(
    settings: Settings, shared_data: Path
) -> None:
    """`trip_levels`: each face's region scanned only at the pyramid levels whose P-Net window spans 1/2.5 to 2.5
    face sizes gives, on crowd frames, each face the same R-/O-Net candidates near it and the same verdict as every
    level, from fewer P-Net cells."""
    from media_cleaner.protect.video.protector import Face, ious  # noqa: PLC0415

    with av.open(str(shared_data / "bench" / "talking_crowd_720p.mp4")) as c:
        frames = [
            f.to_ndarray(format="rgb24") for i, f in zip(range(25), c.decode(video=0), strict=False) if i % 12 == 0
        ]
    ctx = VideoContext(
        settings=settings, epsilon=0.12, width=1280, height=720, fps=25.0, frame_count=1, cancel=CancelToken()
    )
    near: dict[float | None, list] = {}  # per face: its R-/O-Net candidates and whether it is found
    cells: dict[float | None, int] = {}  # P-Net candidates over the frames
    for levels in (None, 2.5):
        protector = create(settings, ModelRegistry(settings), VideoAttackConfig(trip_levels=levels))
        protector.prepare(ctx)
        near[levels], cells[levels] = [], 0
        for frame in frames:
            boxes = protector.model.detect(frame[None]).boxes[0]
            det = protector._detect_near(frame, [Face(b, b, None) for b in boxes], 0.0, pool=None)
            cells[levels] += det.pnet_candidates
            for b in boxes:
                for cands in (det.rnet_inputs, det.onet_inputs):
                    near[levels].append(cands[ious(cands[:, 1:], b) > 0.25].round(3).tolist())
                near[levels].append(bool((ious(det.boxes[0], b) > 0.3).any()))
    assert len(near[None]) > 3 * 5
    assert near[2.5] == near[None]
    assert cells[2.5] < cells[None]


def test_faces_still_firing_after_their_steps_get_fewer_steps_on_the_next_frame(
    settings: Settings, shared_data: Path
) -> None:
    """`hopeless_steps`: a face whose crops still scored at or above `hopeless_logit` on O-Net at its last step gets
    at most that many steps on the next frame; the others keep their budget."""
    with av.open(str(shared_data / "bench" / "talking_crowd_720p.mp4")) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(3), c.decode(video=0), strict=False)])
    frames = np.ascontiguousarray(frames[:, 360:616, 540:780])  # four faces of the crowd
    ctx = VideoContext(
        settings=settings, epsilon=0.12, width=240, height=256, fps=25.0, frame_count=3, cancel=CancelToken()
    )
    runs = {}
    for logit in (-1e9, 1e9):  # every face counts as still firing / none does
        config = VideoAttackConfig(
            group=3, first_steps=3, steps=3, removed_steps=2, hopeless_steps=1, hopeless_logit=logit
        )
        protector = create(settings, ModelRegistry(settings), config)
        protector.prepare(ctx)
        protector.protect_batch(frames, ctx)
        protector.finish(ctx)
        runs[logit] = ctx.stats.copy()
    faces = runs[1e9]["face_frames"] // 3
    assert faces >= 3
    assert runs[-1e9]["face_frames_hopeless"] == 2 * faces and runs[1e9]["face_frames_hopeless"] == 0
    assert runs[-1e9]["steps"] == 3 + 1 + 1 < runs[1e9]["steps"]
    assert runs[-1e9]["crops_evaluated"] < runs[1e9]["crops_evaluated"]
