"""The video protector on real GRID frames: bound, shaping, optimisation effect, engine integration."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from clips import write_frames
from media_cleaner.config import Settings
from media_cleaner.evaluate.quality import psnr
from media_cleaner.models.mtcnn import normalise
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.progress import CancelToken
from media_cleaner.protect.base import VideoContext
from media_cleaner.protect.video import VideoAttackConfig, create, pixel_bound
from media_cleaner.protect.video.attack import exact_crops
from media_cleaner.protect.video.codec import h264_roundtrip

FAST = VideoAttackConfig(group=4, first_steps=6, steps=2)


def grid_frames(shared_data: Path, count: int) -> np.ndarray:
    with av.open(str(shared_data / "video" / "grid_bbaf2n.mpg")) as c:
        return np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(count), c.decode(video=0), strict=False)])


def context(settings: Settings, frames: np.ndarray, epsilon: float = 0.12) -> VideoContext:
    n, h, w = frames.shape[:3]
    return VideoContext(
        settings=settings, epsilon=epsilon, width=w, height=h, fps=25.0, frame_count=n, cancel=CancelToken()
    )


def onet_logit(protector, frame: np.ndarray, box: np.ndarray) -> float:  # noqa: ANN001
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    crop = exact_crops(x, torch.tensor(box[None], dtype=torch.float32), (0, 0), frame.shape[:2], 48)
    _, _, logits = protector.model.onet(normalise(crop))
    return float(logits[0, 1] - logits[0, 0])


def test_pixel_bound_from_epsilon() -> None:
    assert pixel_bound(0.12) == pytest.approx(6.9156, abs=1e-3)
    assert pixel_bound(0.20) == pytest.approx(11.526, abs=1e-3)


def test_round_trips_code_as_the_output(settings: Settings, shared_data: Path) -> None:
    frames = grid_frames(shared_data, 2)
    protector = create(settings, ModelRegistry(settings), FAST)
    ctx = context(settings, frames)
    protector.prepare(ctx)
    assert (protector.crf, protector.preset) == (FAST.crf, FAST.preset)  # no output settings given: its own
    ctx.crf, ctx.preset = 30, "veryfast"
    protector.prepare(ctx)
    assert (protector.crf, protector.preset) == (30, "veryfast")
    coarse, _ = protector._coded(frames, frames, [], 0.0)
    fine = h264_roundtrip(frames, FAST.crf, FAST.preset)
    assert psnr(frames, coarse) < psnr(frames, fine) - 2  # coded at the output's CRF 30, not the default 18


def test_quality_guards_relax_with_a_larger_epsilon(settings: Settings, shared_data: Path) -> None:
    frames = grid_frames(shared_data, 1)
    protector = create(settings, ModelRegistry(settings), FAST)
    default = settings.default_video_epsilon
    for epsilon, relax in ((default / 2, 0.0), (default, 0.0), (2 * default, 20 * np.log10(2))):
        protector.prepare(context(settings, frames, epsilon))
        assert protector.stats()["min_psnr_db"] == pytest.approx(FAST.min_psnr - relax, abs=0.01)
        assert protector.stats()["max_output_gap_db"] == pytest.approx(FAST.output_gap_db + relax, abs=0.01)


def test_bound_shaping_and_stats(settings: Settings, shared_data: Path) -> None:
    frames = grid_frames(shared_data, 6)
    protector = create(settings, ModelRegistry(settings), FAST)
    ctx = context(settings, frames)
    protector.prepare(ctx)
    out = np.concatenate([protector.protect_batch(frames[:4], ctx), protector.protect_batch(frames[4:], ctx)])
    protector.finish(ctx)
    assert out.shape == frames.shape and out.dtype == np.uint8
    diff = out.astype(int) - frames
    assert np.abs(diff).max() <= pixel_bound(0.12)
    assert np.abs(diff).max() >= 3  # something was added
    assert psnr(frames, out) >= 40.0
    # only around the face (x 105..207 on these frames): the frame's side strips stay untouched
    assert not diff[:, :, :20].any() and not diff[:, :, -40:].any()
    assert (diff != 0).mean() < 0.6
    stats = ctx.stats
    assert stats["pixel_bound"] == pytest.approx(6.916, abs=1e-3)
    assert stats["frames"] == 6 and stats["steps"] >= FAST.first_steps
    assert stats["faces_found_on_key_frames"] >= 2
    assert stats["flicker_mean_abs"] < 1.0  # one perturbation per group, moving with the face


def test_optimisation_lowers_the_face_score(settings: Settings, shared_data: Path) -> None:
    frames = grid_frames(shared_data, 1)
    protector = create(settings, ModelRegistry(settings), VideoAttackConfig(group=1, first_steps=10))
    ctx = context(settings, frames)
    protector.prepare(ctx)
    box = protector.model.detect(frames).boxes[0][0]
    out = protector.protect_batch(frames, ctx)
    before, after = onet_logit(protector, frames[0], box), onet_logit(protector, out[0], box)
    assert after < before - 2.0, (before, after)


def test_zero_epsilon_is_identity(settings: Settings, shared_data: Path) -> None:
    frames = grid_frames(shared_data, 2)
    protector = create(settings, ModelRegistry(settings), FAST)
    ctx = context(settings, frames, epsilon=0.0)
    protector.prepare(ctx)
    assert np.array_equal(protector.protect_batch(frames, ctx), frames)


def test_no_face_leaves_frames_alone(settings: Settings) -> None:
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(100, 140, size=(1, 96, 128, 3), dtype=np.uint8), 3, axis=0)
    protector = create(settings, ModelRegistry(settings), FAST)
    ctx = context(settings, frames)
    protector.prepare(ctx)
    assert np.array_equal(protector.protect_batch(frames, ctx), frames)
    protector.finish(ctx)
    assert ctx.stats["faces_found_on_key_frames"] == 0


@pytest.mark.slow
def test_engine_protect_writes_a_protected_file(settings: Settings, shared_data: Path, tmp_path: Path) -> None:
    from media_cleaner.engine import ProtectionOptions, Protectors, protect  # noqa: PLC0415

    source = tmp_path / "grid_1s.mp4"
    frames = grid_frames(shared_data, 6)
    write_frames(source, frames, crf=12)
    config = VideoAttackConfig(group=6, first_steps=3, steps=1)
    protectors = Protectors(video=create(settings, ModelRegistry(settings), config))
    out = tmp_path / "out.mp4"
    report = protect(source, out, ProtectionOptions(protect_audio=False), settings=settings, protectors=protectors)
    assert out.is_file()
    assert report.video["protector"] == "mtcnn-eot"
    assert report.video["pixel_bound"] == pytest.approx(6.916, abs=1e-3)
    assert report.quality["video"]["linf_max"] <= 6
    assert report.quality["video"]["psnr_db"] >= 40.0


@pytest.mark.slow
def test_crowd_faces_disappear_from_the_encoded_output(settings: Settings, shared_data: Path, tmp_path: Path) -> None:
    """Small crowd faces (25-45 px), the detector's candidates attacked frame by frame: on the decoded H.264 file
    MTCNN finds clearly fewer faces than on the same frames encoded without protection."""
    from media_cleaner.evaluate.faces import decoded_frames  # noqa: PLC0415

    with av.open(str(shared_data / "bench" / "talking_crowd_720p.mp4")) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(4), c.decode(video=0), strict=False)])
    frames = np.ascontiguousarray(frames[:, 360:616, 540:780])  # four faces of the crowd
    protector = create(settings, ModelRegistry(settings), VideoAttackConfig(group=4, first_steps=20, steps=8))
    ctx = context(settings, frames)
    protector.prepare(ctx)
    out = protector.protect_batch(frames, ctx)
    protector.finish(ctx)
    assert psnr(frames, out) >= 40.0
    model = protector.model
    counts = {}
    for name, clip in (("original", frames), ("protected", out)):
        path = write_frames(tmp_path / f"{name}.mp4", clip)
        counts[name] = sum(len(model.detect(f[None]).boxes[0]) for f in decoded_frames(path))
    assert counts["original"] >= 12, counts
    # measured 12 -> 10 (seeds 1, 2: 9, 8; 8 with the round trip half way through the steps and no skipping)
    assert counts["protected"] <= counts["original"] - 2, counts


def crowd_frames(shared_data: Path, count: int) -> np.ndarray:
    """Four small faces (25-45 px) of the bench crowd clip: a 240x256 crop of its first frames."""
    with av.open(str(shared_data / "bench" / "talking_crowd_720p.mp4")) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(count), c.decode(video=0), strict=False)])
    return np.ascontiguousarray(frames[:, 360:616, 540:780])


def test_batched_loss_equals_per_face_loss(settings: Settings, shared_data: Path) -> None:
    """One R-Net and one O-Net call for all faces of a frame gives each face the loss and gradient of its own call;
    back-propagating through the active crops only changes neither."""
    from media_cleaner.models.mtcnn import load_mtcnn  # noqa: PLC0415
    from media_cleaner.protect.video.attack import FaceView, LossConfig, channels_last, face_loss, frame_loss  # noqa: PLC0415

    frame = crowd_frames(shared_data, 1)[0]
    model = load_mtcnn(settings, device="cpu")
    det = model.detect(frame[None])
    boxes = det.boxes[0]
    assert len(boxes) >= 3
    pixels = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    noise = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(1)) * 3
    cfg = LossConfig()
    hard_o = torch.from_numpy(det.onet_inputs[:, 1:]).float()
    hard_r = torch.from_numpy(det.rnet_inputs[:, 1:]).float()

    def run(batched: bool, active_only: bool = False, guess: str = "") -> tuple[list[float], list[torch.Tensor]]:
        gen = torch.Generator().manual_seed(7)
        deltas = [noise.clone().requires_grad_(True) for _ in boxes]
        views = [
            FaceView(pixels + d, (0, 0), tuple(b.tolist()), hard_r, hard_o) for d, b in zip(deltas, boxes, strict=True)
        ]
        if batched:
            rows = 2 + min(len(hard_r), cfg.hard_boxes), 2 + min(len(hard_o), cfg.hard_boxes)
            flags = {"all": lambda k, j: True, "none": lambda k, j: False, "some": lambda k, j: (k + j) % 3 == 0}
            hint = (
                [tuple([flags[guess](k, j) for j in range(n)] for n in rows) for k in range(len(views))] if guess else 0
            )
            kwargs = {"guess": hint} if guess else {}
            losses, _ = frame_loss(model, views, frame.shape[:2], cfg, gen, active_only=active_only, **kwargs)
        else:
            args = (frame.shape[:2],)
            losses = torch.stack(
                [face_loss(model, v.img, v.origin, *args, v.box, [], cfg, gen, v.hard_r, v.hard_o)[0] for v in views]
            )
        grads = torch.autograd.grad(losses.sum(), deltas)
        return losses.tolist(), list(grads)

    per_face, g_face = run(False)
    channels_last(model)  # the protector's layout: numerically the same nets
    # crops guessed above their margin skip the screening forward (a wrong guess only costs time)
    runs = [run(True), run(True, active_only=True), *(run(True, True, guess) for guess in ("all", "none", "some"))]
    for losses, grads in runs:
        assert losses == pytest.approx(per_face, rel=1e-4, abs=1e-3)
        for a, b in zip(grads, g_face, strict=True):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)
    assert sum(per_face) > 0  # the faces are found: the hinge is active


def test_skipped_faces_are_ones_the_detector_no_longer_finds(settings: Settings, shared_data: Path) -> None:
    """Faces skipped on a frame are those MTCNN misses on that frame after the codec round trip: on the protected
    frames encoded as one clip (the output's own GOP, not the round trip's two frames) most of them stay gone."""
    from media_cleaner.protect.video.codec import h264_roundtrip  # noqa: PLC0415
    from media_cleaner.protect.video.protector import iou  # noqa: PLC0415

    frames = crowd_frames(shared_data, 10)
    config = VideoAttackConfig(group=5, first_steps=20, steps=8, removed_steps=0)
    protector = create(settings, ModelRegistry(settings), config)
    ctx = context(settings, frames)
    protector.prepare(ctx)
    out = np.concatenate([protector.protect_batch(frames[:5], ctx), protector.protect_batch(frames[5:], ctx)])
    protector.finish(ctx)
    assert len(protector.skipped) == len(frames)
    skipped = [(t, b) for t, boxes in enumerate(protector.skipped) for b in boxes]
    assert ctx.stats["face_frames_removed_at_round_trip"] == len(skipped) >= 4, ctx.stats
    seen = h264_roundtrip(out)
    found = [any(iou(b, d) > 0.3 for d in protector.model.detect(seen[t][None]).boxes[0]) for t, b in skipped]
    assert sum(found) <= len(skipped) // 2, (found, skipped)  # measured: 3-4 of 11 (why they still get 4 steps)


def test_moving_faces_are_matched_across_key_frames(settings: Settings, shared_data: Path) -> None:
    """The crowd faces detected on frames 0 and 11 of the bench clip pair up one to one by closest centre (IoU alone
    split a face that moved a third of its size into two tracks); neighbours are not swapped."""
    from media_cleaner.models.mtcnn import load_mtcnn  # noqa: PLC0415
    from media_cleaner.protect.video.protector import iou, match_boxes  # noqa: PLC0415

    with av.open(str(shared_data / "bench" / "talking_crowd_720p.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(12), c.decode(video=0), strict=False)]
    model = load_mtcnn(settings, device="cpu")
    first, last = model.detect(frames[0][None]).boxes[0], model.detect(frames[11][None]).boxes[0]
    pairs = match_boxes(first, last, 1.0)
    by_iou = [(i, j) for i, a in enumerate(first) for j, b in enumerate(last) if iou(a, b) > 0.3]
    assert len(pairs) > len(by_iou)  # faces IoU matching lost
    assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
    side = lambda b: max(b[2] - b[0], b[3] - b[1])  # noqa: E731
    centre = lambda b: (b[:2] + b[2:4]) / 2  # noqa: E731
    for i, j in pairs:
        # each pair is the nearest of the other frame's faces of a similar size (no neighbour swapped in)
        similar = [k for k, b in enumerate(last) if max(side(b), side(first[i])) <= 1.35 * min(side(b), side(first[i]))]
        assert j == min(similar, key=lambda k: np.linalg.norm(centre(first[i]) - centre(last[k])))
        assert np.linalg.norm(centre(first[i]) - centre(last[j])) <= side(first[i])


def test_change_on_its_bounding_box_equals_the_pipeline(shared_data: Path) -> None:
    """The round trip adds the change to the frame's YUV on the change's bounding box only: bit-identical to the
    pipeline's whole-frame `add_rgb_delta`, for a face-sized change anywhere (edges included) and none."""
    import cv2  # noqa: PLC0415

    from media_cleaner.media.pipeline import add_delta_where_changed, add_rgb_delta  # noqa: PLC0415

    frame = crowd_frames(shared_data, 1)[0]
    i420 = cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420)
    rng = np.random.default_rng(0)
    h, w = frame.shape[:2]
    for y0, y1, x0, x1 in [(31, 97, 45, 130), (0, h, 0, w), (h - 3, h, w - 1, w), (0, 1, 0, 5), (1, 2, 7, 9)]:
        delta = np.zeros(frame.shape, np.int16)
        delta[y0:y1, x0:x1] = rng.integers(-6, 7, (y1 - y0, x1 - x0, 3))
        assert np.array_equal(add_delta_where_changed(i420, delta), add_rgb_delta(i420, delta)), (y0, y1, x0, x1)
    assert add_delta_where_changed(i420, np.zeros(frame.shape, np.int16)) is i420


def test_attack_workers_give_the_one_thread_loss_and_gradient(settings: Settings, shared_data: Path) -> None:
    """A step shared by 2 or 3 threads (crops cut into contiguous shares, a face cut in two summed; its own graph per
    thread, boxes drawn before the split) gives every face the loss and gradient of the one-thread step."""
    from dataclasses import replace  # noqa: PLC0415

    frames = crowd_frames(shared_data, 2)
    config = VideoAttackConfig(group=2, first_steps=3, steps=2)
    local = settings.model_copy(update={"video_attack_workers": 1, "torch_threads": 1})
    one = create(local, ModelRegistry(local), config)
    ctx = context(local, frames)
    one.prepare(ctx)
    steps, step = [], one._step

    def recording(setups, residual, frame, active):  # noqa: ANN001, ANN202
        state, params = one.gen.get_state(), [s[0].param.detach().clone() for s in setups]
        result = step(setups, residual, frame, active)
        steps.append((state, [(replace(s[0], param=q), *s[1:]) for s, q in zip(setups, params, strict=True)], residual))
        steps[-1] += (frame, result)
        return result

    one._step = recording
    one.protect_batch(frames, ctx)
    assert len(steps) >= config.first_steps and max(len(s[1]) for s in steps) >= 3
    for workers in (2, 3):
        many = create(local.model_copy(update={"video_attack_workers": workers}), ModelRegistry(local), config)
        many.prepare(ctx)
        assert many.workers == workers
        for state, setups, residual, frame, (losses, grads) in steps:
            many.gen.set_state(state)
            got_losses, got_grads = many._step(setups, residual, frame, {})
            assert got_losses == pytest.approx(losses, rel=1e-4, abs=1e-4)
            for a, b in zip(got_grads, grads, strict=True):
                assert (a is None) == (b is None)
                assert a is None or torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
    assert any(loss > 0 for s in steps for loss in s[4][0])  # the faces were still found: real gradients compared


def test_workers_and_shares(settings: Settings) -> None:
    """The default worker count follows the CPUs and torch's per-worker threads; shares are contiguous and balanced."""
    import os  # noqa: PLC0415

    from media_cleaner.protect.video.protector import attack_workers, chunks  # noqa: PLC0415

    cpus = os.cpu_count() or 1
    assert attack_workers(settings.model_copy(update={"video_attack_workers": 3})) == 3
    assert attack_workers(settings.model_copy(update={"torch_threads": 1})) == max(1, min(4, cpus))
    assert attack_workers(settings.model_copy(update={"torch_threads": cpus})) == 1
    assert attack_workers(settings.model_copy(update={"torch_threads": 1}), "cuda") == 1
    costs = [1.0, 8.0, 1.0, 1.0, 8.0, 8.0, 1.0, 2.0]
    share = chunks(costs, 2)
    assert share == sorted(share) and set(share) == {0, 1}
    assert abs(sum(c for c, s in zip(costs, share, strict=True) if s == 0) - sum(costs) / 2) <= 4.0
    assert chunks(costs, 1) == [0] * len(costs)
    assert chunks([], 2) == []
    assert set(chunks([1.0] * 9, 3)) == {0, 1, 2}


def test_round_trip_codes_a_macroblock_aligned_crop_around_the_faces(settings: Settings) -> None:
    from media_cleaner.protect.video.codec import h264_roundtrip  # noqa: PLC0415
    from media_cleaner.protect.video.protector import Face, region_of  # noqa: PLC0415

    rng = np.random.default_rng(0)
    base = np.repeat(np.repeat(rng.integers(40, 200, (2, 45, 80, 3), dtype=np.uint8), 16, 1), 16, 2)  # 720x1280
    clip = base.copy()
    clip[:, 300:340, 500:540] += 3
    face = Face(np.array([500.0, 300, 540, 340]), np.array([500.0, 300, 540, 340]), torch.zeros(3, 8, 8))
    protector = create(settings, ModelRegistry(settings), VideoAttackConfig())
    protector.prepare(context(settings, clip))  # the output's crf / preset
    seen, (y0, y1, x0, x1) = protector._coded(clip, base, [face], 0.5)
    assert all(v % 16 == 0 for v in (y0, y1, x0, x1)) and (y1 - y0) * (x1 - x0) < 0.1 * 720 * 1280
    cfg = protector.config
    reach = max(cfg.trip_margin, cfg.region_margin + cfg.context)  # everything the detection and the steps read
    ry0, ry1, rx0, rx1 = region_of(face.first, reach, 720, 1280)[1]
    assert y0 <= ry0 - 16 and ry1 + 16 <= y1 and x0 <= rx0 - 16 and rx1 + 16 <= x1
    outside = np.ones((720, 1280), dtype=bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(seen[:, outside], clip[:, outside])  # uncoded there
    whole = h264_roundtrip(clip, 18, base=base)[:, y0:y1, x0:x1]
    assert psnr(seen[:, y0:y1, x0:x1], whole) > 40  # the crop coded alone: close to the whole frame's coding
    assert not np.array_equal(seen[:, y0:y1, x0:x1], clip[:, y0:y1, x0:x1])
