"""The video protector: per group of frames, find faces on key frames, then optimise every frame's perturbation
(warm-started from the previous frame) against the real detector's own candidates, through the real encoder, and
paint it in with a smooth mask.

What it costs and why: MTCNN's decision depends on exactly how its pyramid and its R-/O-Net crops sample the
pixels, so a perturbation tuned to one frame barely carries to the next (the face moves by fractions of a pixel);
amortising one perturbation over a group of frames was measured to remove almost nothing on the encoded output.
Speed comes from optimising face regions only (never the whole frame), one key-frame detection per group (boxes
interpolated in between), warm starts, and one real H.264 round trip per frame (straight-through).
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from media_cleaner.config import Settings
from media_cleaner.media.pipeline import lower_thread_priority
from media_cleaner.models.mtcnn import MTCNN, Detections
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.protect.base import VideoContext
from media_cleaner.protect.video.attack import FaceView, LossConfig, channels_last, draw_boxes, frame_loss, square
from media_cleaner.protect.video.codec import h264_roundtrip, random_codec
from media_cleaner.protect.video.shaping import region_mask

SIGMA = 0.226  # ImageNet std: epsilon x SIGMA x 255 = the bound in 8-bit levels


@dataclass
class VideoAttackConfig:
    group: int = 12  # frames sharing one key-frame detection (boxes interpolated in between) and one check
    first_steps: int = 16  # steps on a face's first frame (24 measured no better on the encoded output)
    steps: int = 8  # steps on every other frame, warm-started from the previous frame
    step_frac: float = 0.25  # sign-gradient step as a fraction of the bound
    region_margin: float = 0.4  # context around the face box, in face sizes (R-/O-Net jitter and P-Net windows)
    resolution: int = 64  # texels across a face region (finer than O-Net's 48x48 view of the face)
    floor: float = 1.0  # the bound on flat pixels relative to textured ones
    context: float = 0.2  # unperturbed pixels around the region the loss also sees (exact pyramid/crop sampling)
    eot: float = 1.0  # strength of the random lossy-channel draws (0: none)
    codec_check: bool = True  # real H.264 round trips: straight-through in the steps, and for the check
    crf: int = 18  # the round trips' encoder settings when the context does not give the output's
    preset: str = "medium"
    yuv_delta: bool = True  # round trips code the change added to the frame's YUV, as the pipeline writes it
    round_trips: int = 1  # real-encoder round trips per frame inside its steps (only without trip_first)
    trip_first: bool = True  # one round trip + detection before a frame's steps (its candidates, which faces remain)
    # steps on a frame for the faces that round trip's detection no longer finds (measured on the first 27 frames
    # of the 720p clip, faces left on the encoded output: 0 steps 143, 2: 136, 4: 122-129, all 8: 124-128)
    removed_steps: int = 4
    # steps on a frame for a face whose crops still scored above `hopeless_logit` on O-Net at its last step on the
    # previous frame (after all its steps): such a face was found on the coded output 20 times of 21 on the next
    # frame (first 27 frames of the 720p clip), where its full 8 steps cost 13% of the crops. Same 27 frames, faces
    # left on the coded output over seeds: 5 -> 118, 119, 116, 119 (mean 118) at 8% fewer crops and CPU; no limit
    # -> 113, 113, 120, 116, 132, 125 (mean 120); 3 -> 126, 120, 128 at 22% fewer crops (None: no such limit)
    hopeless_steps: int | None = 5
    hopeless_logit: float = 0.85  # O-Net's threshold 0.7 as a logit difference
    frame_candidates: bool = True  # the round trip also refreshes the hard boxes with a detection on that frame
    # the round trip's detection runs P-Net only on the faces' regions (face box + this many face sizes; None: the
    # whole frame); at 1.0 the detections and the candidates near each face are those of the whole frame. 0.7 scans
    # 2.4^2 instead of 3^2 face areas and codes a smaller crop: bench 720p 3 s, 445 -> 264 faces on the output
    # (0.5: 268; 1.0: 271), the wall time unchanged within the run-to-run spread (the steps dominate)
    trip_margin: float | None = 0.7
    # ... and scans each face's region only at the pyramid levels whose P-Net window spans between 1/trip_levels
    # and trip_levels face sizes (None: every level)
    trip_levels: float | None = None
    # round trips code only a crop of the frames around the faces (aligned to x264's 16-pixel macroblocks of the
    # whole frame, `crop_pad` pixels beyond every region the steps and the detection read); None: the whole frame
    trip_crop: int | None = 16
    # the same face on the group's first and last key frames: centres at most this many face sizes apart
    match_distance: float = 1.0
    # a face's step momentum carries over to the next frame (720p first 27 frames, seeds 0-2: 125, 125, 129 faces left
    # with it, 119, 118, 124 without)
    carry_momentum: bool = False
    # a crop above its margin at a face's last step goes straight to the forward pass with a graph (one forward
    # instead of a screening forward and a second one; the same loss and gradient)
    guess_active: bool = True
    # the key-frame detections of a batch's later groups (clean frames, submitted when the batch arrives) and each
    # group's check run on a thread of their own at `background_nice`, so they take the core the round trip and the
    # detection leave idle and mostly yield to the steps; the same results (the check's count and hard boxes are
    # taken in before the next group's first frame hardens its faces' boxes)
    background: bool = True
    background_nice: int = 10
    # the perturbation is scaled down on frames where it would fall below this (dB; at the default epsilon, see
    # `prepare` for a larger one)
    min_psnr: float = 40.5
    # ... and where it would put the output more than this below the protection-off output (dB), predicted from the
    # codec's error on the frame's round trip (outside the perturbation) with the two errors adding as independent
    # (GRID: 40.7 dB of perturbation on a 42.0 dB encode measured 38.6). The round trip's lone P-frame has more
    # codec error than the output's frames, so the figure is set below the 2 dB target: GRID with 2.0 measured 43.3
    # dB of perturbation and an output 2.2 dB below protection off. None: no such limit.
    output_gap_db: float | None = 1.6
    loss: LossConfig = field(default_factory=LossConfig)
    seed: int = 0


@dataclass
class Face:
    """One face in one group: where it is on the first and last key frame, and its perturbation (face coords)."""

    first: np.ndarray  # box (x1, y1, x2, y2) on the group's first key frame
    last: np.ndarray  # on the last key frame (same as first when not matched)
    param: torch.Tensor  # (3, R, R) in pixels, over the square region around the face
    fresh: bool = True
    momentum: torch.Tensor | None = None
    source: Face | None = None  # the previous group's face this one continues, until its hard boxes are handed over
    hard_r: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # detector's candidates, face-relative
    hard_o: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    onet_last: float | None = None  # O-Net's highest logit difference over the face's crops at its latest step

    def box_at(self, f: float) -> np.ndarray:
        return self.first + (self.last - self.first) * f


def ious(boxes: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of each of `boxes` (K,4) x1 y1 x2 y2 with `b`."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.maximum(0.0, np.minimum(boxes[:, 2], b[2]) - np.maximum(boxes[:, 0], b[0]))
    h = np.maximum(0.0, np.minimum(boxes[:, 3], b[3]) - np.maximum(boxes[:, 1], b[1]))
    inter = w * h
    union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """`ious` of one box."""
    return float(ious(a, b)[0])


def match_boxes(first: np.ndarray, last: np.ndarray, max_distance: float) -> list[tuple[int, int]]:
    """Pairs (i, j) of the same face on two key frames: closest centres first, at most `max_distance` face sizes
    apart and sizes within a factor 1.35 (IoU alone loses a face that moves a third of its size between them)."""
    cands = []
    for i, a in enumerate(first):
        for j, b in enumerate(last):
            (ax, ay, sa), (bx, by, sb) = square(tuple(a[:4].tolist())), square(tuple(b[:4].tolist()))
            d = math.hypot(ax - bx, ay - by) / max(sa, sb, 1.0)
            if d <= max_distance and max(sa, sb) <= 1.35 * min(sa, sb):
                cands.append((d, i, j))
    pairs, used_i, used_j = [], set(), set()
    for _, i, j in sorted(cands):
        if i not in used_i and j not in used_j:
            pairs.append((i, j))
            used_i.add(i)
            used_j.add(j)
    return pairs


def merge_rects(rects: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Rects (y0, y1, x0, x1) with every overlapping pair replaced by its bounding rect (P-Net runs once per rect).

    One pass: each rect absorbs the merged rects it overlaps (again while its growth reaches more), so the merged
    rects never overlap each other; the result is the unique such merge (any overlapping pair must end up in one
    rect), without restarting from scratch after every merge."""
    out: list[tuple[int, int, int, int]] = []
    for r in rects:
        while hit := [k for k, o in enumerate(out) if r[0] < o[1] and o[0] < r[1] and r[2] < o[3] and o[2] < r[3]]:
            for k in reversed(hit):
                o = out.pop(k)
                r = (min(r[0], o[0]), max(r[1], o[1]), min(r[2], o[2]), max(r[3], o[3]))
        out.append(r)
    return out


def background_thread(torch_threads: int, nice: int) -> None:
    """Initialises the attack's background thread: its own torch threads, a lower priority (key frames and checks
    take the core the round trip leaves idle)."""
    torch.set_num_threads(torch_threads)
    lower_thread_priority(nice)


def attack_workers(settings: Settings, device: torch.device | str = "cpu") -> int:
    """Threads sharing a step's faces: `video_attack_workers`, or the CPU count // `torch_threads`, at most 4 (1 on a
    GPU, whose kernels are already asynchronous)."""
    if settings.video_attack_workers:
        return settings.video_attack_workers
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // max(1, settings.torch_threads)))


def chunks(costs: list[float], parts: int) -> list[int]:
    """The share (0..parts-1) of each item when the sequence is cut into `parts` contiguous runs of about equal
    total cost (each item goes where the middle of its cost falls); shares are non-decreasing along the sequence."""
    total = sum(costs)
    if parts <= 1 or total <= 0:
        return [0] * len(costs)
    out, run = [], 0.0
    for c in costs:
        out.append(min(parts - 1, int((run + c / 2) * parts / total)))
        run += c
    return out


def to_face(boxes: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Boxes in units of the face's size, relative to its centre (so they follow the face)."""
    cx, cy, side = square(tuple(face.tolist()))
    return (boxes[:, :4] - np.array([cx, cy, cx, cy])) / max(side, 1.0)


def from_face(rel: np.ndarray, face: np.ndarray) -> np.ndarray:
    cx, cy, side = square(tuple(face.tolist()))
    return rel * side + np.array([cx, cy, cx, cy])


def pixel_bound(epsilon: float) -> float:
    return epsilon * SIGMA * 255.0


def region_of(box: np.ndarray, margin: float, height: int, width: int) -> tuple[float, tuple[int, int, int, int]]:
    """(square side, integer rect y0 y1 x0 x1 clipped to the frame) of the region around a face box."""
    cx, cy, side = square(tuple(box.tolist()))
    half = side * (0.5 + margin)
    y0, y1 = max(0, int(math.floor(cy - half))), min(height, int(math.ceil(cy + half)))
    x0, x1 = max(0, int(math.floor(cx - half))), min(width, int(math.ceil(cx + half)))
    return 2 * half, (y0, y1, x0, x1)


def render(param: torch.Tensor, box: np.ndarray, margin: float, rect: tuple[int, int, int, int]) -> torch.Tensor:
    """The face's perturbation on the pixels of `rect`: its texels stretched over the square region around `box`
    (bilinear, zero outside), so the pattern moves and scales with the face."""
    cx, cy, side = square(tuple(box.tolist()))
    half = side * (0.5 + margin)
    y0, y1, x0, x1 = rect
    xs = (torch.arange(x0, x1, dtype=torch.float32) + 0.5 - cx) / half
    ys = (torch.arange(y0, y1, dtype=torch.float32) + 0.5 - cy) / half
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=2)[None].to(param.device)
    return F.grid_sample(param[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class FaceVideoProtector:
    """Suppresses MTCNN's face detections under an L-inf bound; per-face perturbations carry across batches."""

    name = "mtcnn-eot"

    def __init__(self, settings: Settings, registry: ModelRegistry, config: VideoAttackConfig | None = None) -> None:
        self.settings, self.registry = settings, registry
        self.config = config or VideoAttackConfig()
        self.model: MTCNN | None = None
        self.pool: ThreadPoolExecutor | None = None  # the step's shards when `workers` > 1
        self.ahead: ThreadPoolExecutor | None = None  # key-frame detections and group checks (`background`)
        self.workers = 1
        self.universal: torch.Tensor | None = None  # mean converged face perturbation: a head start for new faces

    # -- interface -------------------------------------------------------------------------------------------
    def prepare(self, ctx: VideoContext) -> None:
        if self.model is None:
            if self.settings.torch_threads:  # small ops: extra threads mostly wait on each other on a busy CPU
                torch.set_num_threads(self.settings.torch_threads)
            device = self.settings.device if torch.cuda.is_available() or self.settings.device == "cpu" else "cpu"
            self.model = MTCNN(self.registry.resolve("mtcnn"), device=device)
            channels_last(self.model)
            # inter-op parallelism: each thread runs forward + backward of a share of the step's faces on its own
            # graph with its own single-threaded ops (torch releases the GIL inside them); torch's intra-op threads
            # spin-wait on these small ops and measured far worse on a busy machine
            self.workers = attack_workers(self.settings, self.model.device)
            if self.workers > 1:
                threads = self.settings.torch_threads or 1
                self.pool = ThreadPoolExecutor(
                    self.workers,
                    thread_name_prefix="video-attack",
                    initializer=torch.set_num_threads,
                    initargs=(threads,),
                )
            if self.config.background:
                self.ahead = ThreadPoolExecutor(
                    1,
                    thread_name_prefix="video-ahead",
                    initializer=background_thread,
                    initargs=(self.settings.torch_threads or 1, self.config.background_nice),
                )
        self.device = self.model.device
        self.bound = pixel_bound(ctx.epsilon)
        self.crf = self.config.crf if ctx.crf is None else ctx.crf
        self.preset = self.config.preset if ctx.preset is None else ctx.preset
        self.int_bound = int(math.floor(self.bound + 1e-6))
        # the two quality guards are set for the default epsilon; a user who asks for a larger bound accepts a more
        # visible change, so both relax by the bounds' ratio in dB (else a larger epsilon changed nothing wherever a
        # guard binds: GRID gave the same output at 0.12, 0.2 and 0.3)
        self.relax_db = 20 * math.log10(max(1.0, ctx.epsilon / self.settings.default_video_epsilon))
        self.max_mse = 255.0**2 / 10 ** ((self.config.min_psnr - self.relax_db) / 10)
        gap = self.config.output_gap_db
        self.output_gap_db = None if gap is None else gap + self.relax_db
        self.codec_mse: float | None = None  # the codec's own error on the latest round trip's frame
        self.keys: dict[int, Future] = {}  # id of a key frame of this batch -> its detection on `ahead`
        self.pending: tuple[Future, list[Face]] | None = None  # the last group's check on `ahead`, and its faces
        self.background_seconds = 0.0  # spent on `ahead` (beside the phases below)
        self.limited = 0  # frames scaled down by the output-gap limit
        self.gen = torch.Generator().manual_seed(self.config.seed)
        self.prev_boxes: np.ndarray | None = None  # detections on the last key frame, reused as the next first
        self.last_det: Detections | None = None  # the latest key-frame detection with its stages' candidates
        self.prev_out: np.ndarray | None = None  # the last protected frame: the reference of the codec round trips
        self.prev_in: np.ndarray | None = None  # and the same frame unprotected
        self.tracks: list[Face] = []
        self.frames = self.groups = self.steps = self.key_frames = 0
        self.faces_found = self.faces_left = self.frames_with_faces = 0
        self.frames_left = 0
        self.crops = 0  # R-/O-Net crops the steps cut and evaluated
        self.hopeless = 0  # faces x frames given `hopeless_steps`
        self.face_frames = 0  # faces x frames that went through a round trip
        self.skipped: list[list[np.ndarray]] = []  # per frame with faces: boxes the round trip found removed
        self.seconds = {"detect": 0.0, "optimise": 0.0, "check": 0.0, "apply": 0.0}
        self.prev_delta: tuple[tuple[int, int, int, int], np.ndarray] | None = None  # (rect, values) last written
        self.flicker: list[float] = []  # mean |delta_t - delta_t-1| in 8-bit levels over the whole frame

    def protect_batch(self, frames: np.ndarray, ctx: VideoContext) -> np.ndarray:
        if self.int_bound < 1:
            self.frames += len(frames)
            return frames
        out = np.empty_like(frames)
        g = self.config.group
        if self.ahead is not None:  # the key frames of the batch's later groups (the first group's: right away)
            wanted = [min(s + g, len(frames)) - 1 for s in range(g, len(frames), g) if min(s + g, len(frames)) - s > 1]
            self.keys = {i: self.ahead.submit(self._background_detect, frames[i]) for i in wanted}
        for start in range(0, len(frames), g):
            ctx.cancel.check()
            out[start : start + g] = self._group(frames[start : start + g], start)
            self.frames += len(frames[start : start + g])
            if ctx.frame_count:
                ctx.progress(min(1.0, self.frames / ctx.frame_count), "video")
        return out

    def finish(self, ctx: VideoContext) -> None:
        self._settle()
        if self.tracks:
            mean = torch.stack([t.param for t in self.tracks]).mean(0)
            self.universal = mean if self.universal is None else 0.5 * (self.universal + mean)
        ctx.stats.update(self.stats())

    def stats(self) -> dict[str, Any]:
        self._settle()
        total = sum(self.seconds.values())
        return {
            "surrogate": "MTCNN (facenet-pytorch 2.6 weights, P/R/O-Net jointly)",
            "epsilon": round(self.bound / (SIGMA * 255.0), 4),
            "pixel_bound": round(self.bound, 3),
            "pixel_bound_applied": self.int_bound,
            "frames": self.frames,
            "groups": self.groups,
            "key_frames_detected": self.key_frames,
            "steps": self.steps,
            "steps_per_frame": round(self.steps / max(1, self.frames), 3),
            "workers": self.workers,
            "crops_evaluated": self.crops,
            "faces_found_on_key_frames": self.faces_found,
            "faces_left_after_optimisation": self.faces_left,
            "groups_with_faces": self.frames_with_faces,
            "groups_with_faces_left": self.frames_left,
            "face_frames": self.face_frames,
            "face_frames_removed_at_round_trip": sum(len(s) for s in self.skipped),
            "face_frames_hopeless": self.hopeless,
            "frames_limited_by_output_gap": self.limited,
            "min_psnr_db": round(self.config.min_psnr - self.relax_db, 2),
            "max_output_gap_db": None if self.output_gap_db is None else round(self.output_gap_db, 2),
            "flicker_mean_abs": round(float(np.mean(self.flicker)), 4) if self.flicker else 0.0,
            "seconds": round(total, 3),
            "seconds_per_frame": round(total / max(1, self.frames), 4),
            "seconds_by_phase": {k: round(v, 3) for k, v in self.seconds.items()},
            "seconds_in_background": round(self.background_seconds, 3),  # on `ahead`, beside the phases
        }

    # -- one group ---------------------------------------------------------------------------------------------
    def _background_detect(self, frame: np.ndarray) -> tuple[Detections, float]:
        t0 = time.perf_counter()
        return self.model.detect(frame[None]), time.perf_counter() - t0  # (on the pool: the same detections)

    def _detect(self, frame: np.ndarray, index: int) -> np.ndarray:
        """Key-frame detection of the batch's frame `index` (`frame`): taken from `ahead` when submitted there."""
        t0 = time.perf_counter()
        if index in self.keys:
            det, seconds = self.keys.pop(index).result()
            self.background_seconds += seconds
        else:
            det = self.model.detect(frame[None], pool=self.pool)
        self.seconds["detect"] += time.perf_counter() - t0
        self.key_frames += 1
        self.last_det = det
        return det.boxes[0]

    def _new_param(self) -> torch.Tensor:
        r = self.config.resolution
        if self.universal is not None:
            return self.universal.clamp(-self.bound, self.bound).to(self.device).clone()
        return torch.zeros((3, r, r), device=self.device)

    def _faces(self, frames: np.ndarray, start: int) -> list[Face]:
        """The group's faces (`frames` from the batch's frame `start`)."""
        first = self.prev_boxes if self.prev_boxes is not None else self._detect(frames[0], start)
        last = self._detect(frames[-1], start + len(frames) - 1) if len(frames) > 1 else first
        self.prev_boxes = last
        pairs = dict(match_boxes(first, last, self.config.match_distance))
        faces = [
            Face(a.copy(), last[pairs[i]].copy() if i in pairs else a.copy(), self._new_param())
            for i, a in enumerate(first)
        ]
        used = set(pairs.values())
        faces += [Face(b.copy(), b.copy(), self._new_param()) for k, b in enumerate(last) if k not in used]
        for face in faces:  # warm start: the same face in the previous group keeps its perturbation
            best = max(self.tracks, key=lambda t: iou(face.first, t.last), default=None)
            if best is not None and iou(face.first, best.last) > 0.3:
                face.param, face.fresh, face.momentum = best.param.clone(), False, best.momentum
                face.onet_last = best.onet_last
                face.source = best  # its hard boxes once that group's check has hardened them (`_settle`)
        self.tracks = faces
        if self.pending is None:
            self._settle()
        return faces

    def _delta(self, frame: np.ndarray, face: Face, frac: float) -> tuple[tuple[int, int, int, int], torch.Tensor]:
        """(rect, bounded perturbation over rect (1,3,h,w)) of one face in one frame, shaped by the frame."""
        box = face.box_at(frac)
        _, rect = region_of(box, self.config.region_margin, *frame.shape[:2])
        mask = region_mask(frame, rect, tuple(box.tolist()), self.config.floor)
        return rect, torch.from_numpy(mask).to(self.device) * render(face.param, box, self.config.region_margin, rect)

    def _roundtrip(self, frames: np.ndarray, faces: list[Face], t: int, frac: float) -> tuple[np.ndarray, np.ndarray]:
        """Frame `t` with the faces' current perturbations through the real encoder, coded after the previous
        written frame (a predicted frame, as most of the output is): (decoded frame, codec's change (H,W,3))."""
        adv = self._apply(frames[t : t + 1], faces, frac)
        if self.prev_out is None or self.prev_out.shape != adv[0].shape:
            clip, base, at = adv, frames[t : t + 1], 0
        else:  # (coding it as a B-frame between two references measured no better)
            clip, base, at = np.stack([self.prev_out, adv[0]]), np.stack([self.prev_in, frames[t]]), 1
        coded, (y0, y1, x0, x1) = self._coded(clip, base, faces, frac)
        seen = coded[at]
        residual = seen.astype(np.float32) - adv[0]
        # the codec's error where the frame is untouched (every other row and column of what was coded): what
        # protection off costs
        same = (adv[0, y0:y1:2, x0:x1:2] == frames[t, y0:y1:2, x0:x1:2]).all(axis=2)
        if same.any():
            self.codec_mse = float(np.mean(np.square(residual[y0:y1:2, x0:x1:2][same])))
        return seen, residual

    def _coded(
        self, clip: np.ndarray, base: np.ndarray, faces: list[Face], frac: float
    ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """`clip` through the real encoder (`base`: its unprotected frames): the whole frames, or with `trip_crop` a
        macroblock-aligned crop around the faces as at `frac` coded alone and put back into `clip`'s frames (the
        pixels outside it uncoded: neither the steps nor the detection near the faces read them). Returns the frames
        and the rect (y0, y1, x0, x1) coded (the check runs this on `ahead` beside a round trip: no shared state)."""
        cfg = self.config
        base = base if cfg.yuv_delta else None
        h, w = clip.shape[1:3]
        # without `trip_margin` the detection reads the whole frame, so the whole frame is coded
        if cfg.trip_crop is None or cfg.trip_margin is None or not faces or h % 2 or w % 2:
            return h264_roundtrip(clip, self.crf, self.preset, base=base), (0, h, 0, w)
        reach = max(cfg.trip_margin, cfg.region_margin + cfg.context)
        rects = [region_of(f.box_at(frac), reach, h, w)[1] for f in faces]
        pad = cfg.trip_crop
        y0 = max(0, (min(r[0] for r in rects) - pad) // 16 * 16)
        y1 = min(h, -(-(max(r[1] for r in rects) + pad) // 16) * 16)
        x0 = max(0, (min(r[2] for r in rects) - pad) // 16 * 16)
        x1 = min(w, -(-(max(r[3] for r in rects) + pad) // 16) * 16)
        if (y1 - y0) * (x1 - x0) > 0.8 * h * w:
            return h264_roundtrip(clip, self.crf, self.preset, base=base), (0, h, 0, w)
        sub = h264_roundtrip(
            clip[:, y0:y1, x0:x1], self.crf, self.preset, base=None if base is None else base[:, y0:y1, x0:x1]
        )
        out = clip.copy()
        out[:, y0:y1, x0:x1] = sub
        return out, (y0, y1, x0, x1)

    def _detect_near(
        self, frame: np.ndarray, faces: list[Face], frac: float, pool: ThreadPoolExecutor | None | bool = True
    ) -> Detections:
        """MTCNN on `frame` around the faces as at `frac` (`trip_margin`), or on the whole frame (`pool`: True for
        the attack's pool; the same detections on any)."""
        pool = self.pool if pool is True else pool
        margin = self.config.trip_margin
        if margin is None:
            return self.model.detect(frame[None], pool=pool)
        h, w = frame.shape[:2]
        own = [region_of(f.box_at(frac), margin, h, w)[1] for f in faces]
        rects = merge_rects(own)
        if sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in rects) > 0.5 * h * w:  # OpenCV's whole levels are faster
            return self.model.detect(frame[None], pool=pool)
        windows = None
        if self.config.trip_levels is not None:  # each merged region at the levels of the faces it holds
            f, windows = self.config.trip_levels, []
            for y0, y1, x0, x1 in rects:
                sides = [
                    square(tuple(face.box_at(frac).tolist()))[2]
                    for face, r in zip(faces, own, strict=True)
                    if y0 <= r[0] and r[1] <= y1 and x0 <= r[2] and r[3] <= x1
                ]
                windows.append((min(sides) / f, max(sides) * f))
        return self.model.detect(frame[None], regions=rects, pool=pool, windows=windows)

    def _optimise(self, frames: np.ndarray, faces: list[Face], t: int) -> None:
        """Steps on the perturbations of frame `t`'s faces (`first_steps` for a face seen for the first time, `steps`
        for the others), all faces in one batched loss per step; a face whose every crop is already below its
        margins stops there (its loss and gradient are zero).

        The frame with its current (warm-started) perturbation first goes through the real encoder and the real
        detector: faces it no longer finds there get only `removed_steps` on this frame; all are optimised with the
        codec's change added (straight-through: gradient as identity). With `trip_first` off,
        the round trips sit inside the steps instead and the steps before the first one use random draws of the
        differentiable stand-in (`codec.random_codec`).
        """
        t0 = time.perf_counter()
        n, h, w = frames.shape[:3]
        frac = t / max(1, n - 1)
        cfg = self.config
        alpha = cfg.step_frac * self.bound
        setups = []  # per face: what does not change between steps
        for face in faces:
            box = face.box_at(frac)
            _, rect = region_of(box, cfg.region_margin, h, w)
            y0, y1, x0, x1 = rect
            if y1 - y0 < 12 or x1 - x0 < 12:
                continue
            _, ctx = region_of(box, cfg.region_margin + cfg.context, h, w)
            cy0, cy1, cx0, cx1 = ctx
            mask = torch.from_numpy(region_mask(frames[t], rect, tuple(box.tolist()), cfg.floor))
            pixels = torch.from_numpy(frames[t, cy0:cy1, cx0:cx1]).permute(2, 0, 1)[None].float()
            setups.append((face, box, rect, ctx, mask.to(self.device), pixels.to(self.device)))
        residual: np.ndarray | None = None
        gone: set[int] = set()
        if cfg.codec_check and cfg.trip_first and setups:
            seen, residual = self._roundtrip(frames, faces, t, frac)
            t1 = time.perf_counter()
            det = self._detect_near(seen, faces, frac)
            self.seconds["check"] += time.perf_counter() - t1
            self._settle()  # the last group's check hardens first (as when it ran before this group)
            if cfg.frame_candidates:  # what the detector itself now evaluates on this frame
                self._harden(det, faces, frac)
            if cfg.removed_steps < cfg.steps:  # spend the steps where the detector still fires
                removed = [s for s in setups if not any(iou(b, s[1]) > 0.3 for b in det.boxes[0])]
                self.face_frames += len(setups)
                self.skipped.append([s[1] for s in removed])
                gone = {id(s[0]) for s in removed}
        self._settle()
        budget = {id(s[0]): cfg.first_steps if s[0].fresh else cfg.steps for s in setups}
        if cfg.hopeless_steps is not None:  # the steps go where they have a chance of removing the face
            for face, *_ in setups:
                if face.onet_last is not None and face.onet_last >= cfg.hopeless_logit:
                    budget[id(face)] = min(budget[id(face)], cfg.hopeless_steps)
                    self.hopeless += 1
        if not cfg.carry_momentum:
            for face in faces:
                face.momentum = None
        for key in gone:
            budget[key] = min(budget[key], cfg.removed_steps)
        setups = [s for s in setups if budget[id(s[0])] > 0]
        steps = max(budget.values(), default=0)
        active: dict[int, tuple] = {}  # per face and stage: its box rows above their margin at its last step
        r = cfg.round_trips
        trips = set()
        if cfg.codec_check and not cfg.trip_first and steps >= 2 * r:
            trips = {k * steps // (r + 1) for k in range(1, r + 1)}
        for step in range(steps):
            setups = [s for s in setups if budget[id(s[0])] > step]
            if not setups:
                break
            if step in trips:
                seen, residual = self._roundtrip(frames, faces, t, frac)
                if cfg.frame_candidates:
                    t1 = time.perf_counter()
                    self._harden(self._detect_near(seen, faces, frac), faces, frac)
                    self.seconds["check"] += time.perf_counter() - t1
            losses, grads = self._step(setups, residual, (h, w), active)
            done = {id(s[0]) for s, loss in zip(setups, losses, strict=True) if loss <= 0}
            for key in done:  # every crop below its margins: nothing left to push on this frame
                budget[key] = 0
            if any(g is not None for g in grads):
                for (face, *_), g in zip(setups, grads, strict=True):
                    if g is None or id(face) in done:
                        continue
                    # momentum on the normalised gradient (MI-FGSM): steadier under the random EOT draws
                    g = g / (g.abs().mean() + 1e-12)
                    face.momentum = g if face.momentum is None else 0.8 * face.momentum + g
                    face.param = (face.param.detach() - alpha * face.momentum.sign()).clamp(-self.bound, self.bound)
            for face in faces:
                face.param = face.param.detach()
            self.steps += 1
        self.seconds["optimise"] += time.perf_counter() - t0

    def _step(
        self, setups: list[tuple], residual: np.ndarray | None, frame: tuple[int, int], active: dict[int, tuple]
    ) -> tuple[list[float], list[torch.Tensor | None]]:
        """One step's loss and gradient for every face of `setups`: (per-face losses, per-face gradients w.r.t.
        their params, None where nothing is above its margin).

        With `workers` > 1 the step's crops (every face's R-Net boxes, then its O-Net boxes, face after face) are cut
        into contiguous shares of about equal work, priced by how many of the face's crops were still above their
        margin at its last step (`active`, updated here), and each share runs its faces' views, R-/O-Net and backward
        in its own thread on its own graph; a face cut in two gets the sum of both shares' losses and gradients. The
        random boxes (and EOT draws) are drawn here first, in face order, so the result depends on the worker count
        only through float rounding (one worker: the same numbers as before the threads)."""
        cfg = self.config
        drawn = []
        for face, box, *_ in setups:
            hard = [torch.from_numpy(from_face(r, box)) for r in (face.hard_r, face.hard_o)]
            drawn.append((hard, draw_boxes(tuple(box.tolist()), *hard, cfg.loss, self.gen)))
            face.param.requires_grad_(True)
        codec = [None] * len(setups)
        if residual is None and cfg.eot > 0:  # one EOT draw per face, in face order
            codec = [torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=self.gen))) for _ in setups]
        # the work of a crop, in ~0.1 ms of this CPU: its cut, a forward pass, and forward + backward when it was
        # above its margin at the face's last step (or, at a frame's first step, a forward + a likely second one)
        items, costs = [], []
        for k, (face, *_) in enumerate(setups):
            last = active.get(id(face))
            for stage, (cut, forward) in enumerate(((0.7, 0.7), (0.7, 6.0))):
                for j in range(drawn[k][1][stage].shape[0]):
                    items.append((k, stage, j))
                    was = True if last is None or j >= len(last[stage]) else last[stage][j]
                    costs.append(cut + forward + (2.0 if last is not None else 3.0) * forward * was)
        shares: list[dict[int, tuple[list[int], list[int]]]] = [{} for _ in range(self.workers)]
        self.crops += len(items)
        for (k, stage, j), share in zip(items, chunks(costs, self.workers if self.pool else 1), strict=True):
            shares[share].setdefault(k, ([], []))[stage].append(j)
        shares = [sh for sh in shares if sh]

        def run(share: dict[int, tuple[list[int], list[int]]]) -> tuple[list[float], list, list[dict]]:
            views, boxes, guess = [], [], []
            for k, (rows_r, rows_o) in share.items():
                face, box, (y0, y1, x0, x1), (cy0, cy1, cx0, cx1), mask, pixels = setups[k]
                delta = mask * render(face.param, box, cfg.region_margin, (y0, y1, x0, x1))
                delta = F.pad(delta, (x0 - cx0, cx1 - x1, y0 - cy0, cy1 - y1))
                x = (pixels + delta).clamp(0, 255)
                if residual is not None:  # straight-through: the real codec's change, gradient as identity
                    x = x + torch.from_numpy(residual[cy0:cy1, cx0:cx1]).to(self.device).permute(2, 0, 1)[None]
                elif codec[k] is not None:
                    x = random_codec(x, codec[k], cfg.eot)
                views.append(FaceView(x, (cy0, cx0), tuple(box.tolist()), *drawn[k][0]))
                r_boxes, o_boxes = drawn[k][1]
                boxes.append((r_boxes[rows_r], o_boxes[rows_o]))
                last = active.get(id(face)) if cfg.guess_active else None
                guess.append(None if last is None else ([last[0][j] for j in rows_r], [last[1][j] for j in rows_o]))
            losses, stats = frame_loss(
                self.model, views, frame, cfg.loss, None, active_only=True, boxes=boxes, guess=guess
            )
            grads: list[torch.Tensor | None] = [None] * len(share)
            if losses.requires_grad:
                params = [setups[k][0].param for k in share]
                grads = list(torch.autograd.grad(losses.sum(), params, allow_unused=True))
            return losses.tolist(), grads, stats

        if len(shares) <= 1:
            results = [run(sh) for sh in shares]
        else:
            results = [f.result() for f in [self.pool.submit(run, sh) for sh in shares]]
        losses, grads = [0.0] * len(setups), [None] * len(setups)
        rows = [([False] * drawn[k][1][0].shape[0], [False] * drawn[k][1][1].shape[0]) for k in range(len(setups))]
        onet = [-1e9] * len(setups)
        for share, (part_losses, part_grads, stats) in zip(shares, results, strict=True):
            for (k, (rows_r, rows_o)), loss, g, st in zip(share.items(), part_losses, part_grads, stats, strict=True):
                losses[k] += loss
                onet[k] = max(onet[k], st["onet"])
                grads[k] = g if grads[k] is None else (grads[k] if g is None else grads[k] + g)
                for full, part, flags in ((rows[k][0], rows_r, st["rnet_rows"]), (rows[k][1], rows_o, st["onet_rows"])):
                    for j, flag in zip(part, flags, strict=True):
                        full[j] = flag
        for k, (face, *_) in enumerate(setups):
            active[id(face)] = rows[k]
            face.onet_last = onet[k]
        return losses, grads

    def _apply(self, frames: np.ndarray, faces: list[Face], frac: float, record: bool = False) -> np.ndarray:
        """`frames` (usually one) with the faces' current perturbations as at `frac` of the group painted in
        (integer, bounded); `record` for frames that will be written (temporal figures). Works on the faces'
        bounding rect only (the frame-wide figures divide by the whole frame)."""
        t0 = time.perf_counter()
        out = frames.copy()
        with torch.no_grad():
            for k, frame in enumerate(frames):
                parts = [self._delta(frame, face, frac) for face in faces]
                if not parts:
                    if record:
                        self._record(None, frame.size)
                    continue
                y0, y1 = min(r[0] for r, _ in parts), max(r[1] for r, _ in parts)
                x0, x1 = min(r[2] for r, _ in parts), max(r[3] for r, _ in parts)
                total = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.float32)
                for (ry0, ry1, rx0, rx1), delta in parts:
                    total[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] += delta[0].permute(1, 2, 0).cpu().numpy()
                mse, limit = float(np.sum(total * total, dtype=np.float64)) / frame.size, self.max_mse
                if self.codec_mse is not None and self.output_gap_db is not None:
                    limit = min(limit, self.codec_mse * (10 ** (self.output_gap_db / 10) - 1))
                if mse > limit:  # large faces fill the frame: keep the perturbation's PSNR at its floor
                    total *= math.sqrt(limit / mse)
                    self.limited += int(record and limit < self.max_mse)
                delta_int = np.clip(np.rint(total), -self.int_bound, self.int_bound).astype(np.int16)
                if record:
                    self._record(((y0, y1, x0, x1), delta_int), frame.size)
                patch = frame[y0:y1, x0:x1].astype(np.int16) + delta_int
                out[k, y0:y1, x0:x1] = np.clip(patch, 0, 255).astype(np.uint8)
        self.seconds["apply"] += time.perf_counter() - t0
        return out

    def _record(self, delta: tuple[tuple[int, int, int, int], np.ndarray] | None, size: int) -> None:
        """Flicker: mean |delta_t - delta_t-1| over the whole frame (`size` values), deltas as (rect, values)."""
        prev, self.prev_delta = self.prev_delta, delta
        if prev is None:
            return
        if delta is None:
            self.flicker.append(float(np.abs(prev[1]).sum()) / size)
            return
        (a, da), (b, db) = prev, delta
        y0, y1, x0, x1 = min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])
        both = np.zeros((2, y1 - y0, x1 - x0, 3), dtype=np.int16)
        both[0, a[0] - y0 : a[1] - y0, a[2] - x0 : a[3] - x0] = da
        both[1, b[0] - y0 : b[1] - y0, b[2] - x0 : b[3] - x0] = db
        self.flicker.append(float(np.abs(both[1] - both[0]).sum()) / size)

    def _check(self, adv: np.ndarray, faces: list[Face], frames: np.ndarray) -> None:
        """Faces the real detector still finds on the group's last frame after a real H.264 round trip (the product's
        own encoder settings; the frame coded as a predicted frame after the one before it, as the per-frame round
        trips code it: encoding the whole group cost 0.2 s a frame at 1080p for this one figure).

        The candidates it sent to R-Net and O-Net near each face become that face's hard boxes for the next frames.
        With `ahead` it runs there and `_settle` takes it in; else right away.
        """
        self._settle()
        if self.ahead is not None:
            self.pending = (self.ahead.submit(self._check_detect, adv[-2:].copy(), frames[-2:].copy(), faces), faces)
            return
        t0 = time.perf_counter()
        self.pending = (Future(), faces)
        self.pending[0].set_result(self._check_detect(adv[-2:], frames[-2:], faces, pool=True))
        self._settle()
        self.seconds["check"] += time.perf_counter() - t0

    def _check_detect(
        self, adv: np.ndarray, frames: np.ndarray, faces: list[Face], pool: bool | None = None
    ) -> tuple[Detections, float]:
        t0 = time.perf_counter()
        seen = self._coded(adv, frames, faces, 1.0)[0] if self.config.codec_check else adv
        return self._detect_near(seen[-1], faces, 1.0, pool=pool), time.perf_counter() - t0

    def _settle(self) -> None:
        """Takes in the pending group check (its count of faces left; its candidates become that group's faces'
        hard boxes), then hands every continued face its predecessor's hard boxes."""
        if self.pending is not None:
            (future, faces), self.pending = self.pending, None
            t0 = time.perf_counter()
            det, seconds = future.result()
            if self.ahead is not None:
                self.seconds["check"] += time.perf_counter() - t0  # the wait
                self.background_seconds += seconds
            left = sum(int(any(iou(b, face.last) > 0.3 for b in det.boxes[0])) for face in faces)
            self._harden(det, faces)
            self.faces_left += left
            self.frames_left += int(left > 0)
        for face in self.tracks:
            if face.source is not None:
                face.hard_r, face.hard_o, face.source = face.source.hard_r, face.source.hard_o, None

    @staticmethod
    def _harden(det: Detections, faces: list[Face], frac: float = 1.0) -> None:
        for face in faces:
            box = face.box_at(frac)
            for name, cands in (("hard_r", det.rnet_inputs), ("hard_o", det.onet_inputs)):
                near = cands[:, 1:][ious(cands[:, 1:], box) > 0.25]
                if len(near):
                    setattr(face, name, to_face(near, box))

    def _group(self, frames: np.ndarray, start: int) -> np.ndarray:
        """Protects `frames`, the batch's frames from `start` on."""
        self.groups += 1
        faces = self._faces(frames, start)
        if not faces:
            if self.prev_delta is not None and self.prev_delta[1].any():
                self._record(None, frames[0].size)
            self.prev_delta = None
            self.flicker += [0.0] * (len(frames) - 1)
            return frames
        self.faces_found += len(faces)
        self.frames_with_faces += 1
        fresh = any(f.fresh for f in faces)
        if fresh and self.last_det is not None:  # the detector's own candidates on the clean key frame
            self._harden(self.last_det, [f for f in faces if f.fresh])
        # every frame gets its own steps, warm-started from the previous frame's perturbation of the same face: a
        # perturbation tuned to one frame's sampling grid barely carries to the next (the face moves by fractions
        # of a pixel, the detector's crops move with it), so amortising one perturbation over frames fails
        n = len(frames)
        out = np.empty_like(frames)
        for t in range(n):
            self._optimise(frames, faces, t)
            for face in faces:
                face.fresh = False
            out[t] = self._apply(frames[t : t + 1], faces, t / max(1, n - 1), record=True)[0]
            self.prev_out, self.prev_in = out[t], frames[t]
        self._check(out, faces, frames)
        return out
