"""MediaPipe BlazeFace: a neural face detector the attack never sees, for efficacy measurements.

Model: MediaPipe's full-range BlazeFace, `face_detection_full_range_sparse.tflite` (192x192 RGB input, one SSD head
of 48x48 anchors at stride 4, for faces up to about 5 m), as shipped in the `mediapipe==0.10.21` wheel under
`mediapipe/modules/face_detection/` (SHA-256 2c3728e6...). The model registry resolves it ("blazeface"); the wheel
is installed `--no-deps` and never imported (it pins numpy<2 and protobuf<5). `model="short"` selects the
short-range model of the same wheel (`face_detection_short_range.tflite`, 128x128, 896 anchors, faces within ~2 m).
It runs on the TFLite interpreter of `ai-edge-litert==2.3.0` with one thread: the sparse full-range model needs the
DENSIFY op, which OpenCV's TFLite importer lacks.

Pre- and post-processing follow MediaPipe's face_detection graphs: the frame is letterboxed to the square input
(aspect ratio kept, black border) and scaled to [-1, 1]; anchors are fixed-size SSD anchors at cell centres; a box
is (x, y, w, h) / input size around its anchor; the score is sigmoid(raw clipped to +-100) and kept at >= 0.5
(MediaPipe's default min_detection_confidence); overlapping boxes are merged at IoU 0.3 (weighted, as MediaPipe).
Checked against mediapipe 0.10.21's own FaceDetection (run in a scratch venv with numpy 1.26) on GRID frames: box
corners within 3% of the face side, scores within 0.04 (the resampling differs slightly).

One addition to MediaPipe's procedure, for crowds: frames whose long side exceeds 3x the model input (576 px) are
also run as overlapping square tiles of half the short side (360 px at 720p: 15 tiles plus the whole frame), the
detections merged where one box covers half of another. Whole-frame only, the 720p bench clip's 15-60 px faces
shrink to 2-9 px and BlazeFace finds about a third of them; tiled, about as many as MTCNN (`tile_fraction=None`
switches it off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from media_cleaner.config import Settings

MODEL_FILES = {"full": "face_detection_full_range_sparse.tflite", "short": "face_detection_short_range.tflite"}


@dataclass(frozen=True)
class _Config:
    size: int  # square input side
    strides: tuple[int, ...]  # one per anchor layer
    anchors_per_cell: tuple[int, ...]


# MediaPipe's SsdAnchorsCalculator options: the short-range model has 2 anchors per cell (aspect 1.0 plus the
# interpolated scale), the full-range one only 1 (interpolated_scale_aspect_ratio 0); fixed anchor size, so w=h=1.
_CONFIGS = {
    "full": _Config(192, (4,), (1,)),
    "short": _Config(128, (8, 16, 16, 16), (2, 2, 2, 2)),
}


def _anchors(config: _Config) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1], in the order of the model's outputs."""
    # consecutive layers with the same stride share one grid, their anchors interleaved per cell (as MediaPipe does)
    layers: list[tuple[int, int]] = []
    for stride, per_cell in zip(config.strides, config.anchors_per_cell, strict=True):
        if layers and layers[-1][0] == stride:
            layers[-1] = (stride, layers[-1][1] + per_cell)
        else:
            layers.append((stride, per_cell))
    centres = []
    for stride, per_cell in layers:
        side = config.size // stride
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        grid = np.stack([(xs + 0.5) / side, (ys + 0.5) / side], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(grid, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float, *, over_min: bool = False) -> list[int]:
    """Greedy non-maximum suppression on (x0, y0, x1, y1) boxes; indices kept, best first.

    `over_min` measures overlap as intersection over the smaller box, so that a face cut by a tile edge (a partial
    box inside the whole one) merges with it."""
    order = np.argsort(-scores)
    areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    keep: list[int] = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        lo = np.maximum(boxes[i, :2], boxes[rest, :2])
        hi = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        union = np.minimum(areas[i], areas[rest]) if over_min else areas[i] + areas[rest] - inter
        order = rest[inter / (union + 1e-9) <= iou]
    return keep


def _weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's WEIGHTED suppression: each cluster (IoU > `iou` with its best box) becomes the score-weighted
    mean of its boxes, with the best score."""
    order = np.argsort(-scores)
    areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    merged, merged_scores = [], []
    while order.size:
        i = order[0]
        lo = np.maximum(boxes[i, :2], boxes[order, :2])
        hi = np.minimum(boxes[i, 2:], boxes[order, 2:])
        inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
        cluster = inter / (areas[i] + areas[order] - inter + 1e-9) > iou
        members = order[cluster]
        merged.append((boxes[members] * scores[members, None]).sum(0) / scores[members].sum())
        merged_scores.append(scores[i])
        order = order[~cluster]
    return np.asarray(merged, np.float32), np.asarray(merged_scores, np.float32)


def _tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side `tile` covering [0, length), neighbours overlapping by at least `overlap`."""
    if length <= tile:
        return [0]
    count = int(np.ceil((length - overlap) / (tile - overlap)))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


class BlazeFaceDetector:
    """Counts (and locates) faces with MediaPipe's BlazeFace TFLite model."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: Literal["full", "short"] = "full",
        min_score: float = 0.5,
        nms_iou: float = 0.3,
        tile_fraction: float | None = 0.5,
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from media_cleaner.models.registry import ModelRegistry

        path = ModelRegistry(settings).resolve("blazeface") / MODEL_FILES[model]
        self.model = model
        self.config = _CONFIGS[model]
        self.min_score = min_score
        self.nms_iou = nms_iou
        self.tile_fraction = tile_fraction
        self._anchors = _anchors(self.config)
        self._interpreter = Interpreter(model_path=str(path), num_threads=1)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = self._interpreter.get_output_details()
        # regressors (N, 16) and classificators (N, 1): told apart by their last dimension, not their names
        self._boxes = next(o["index"] for o in outputs if o["shape"][-1] == 16)
        self._scores = next(o["index"] for o in outputs if o["shape"][-1] == 1)

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (K, 4) as (x0, y0, x1, y1) in frame pixels and their scores (K,), for an RGB uint8 frame."""
        boxes, scores = self._detect_whole(frame)
        h, w = frame.shape[:2]
        if self.tile_fraction is None or max(h, w) <= 3 * self.config.size:
            return boxes, scores
        # Small faces vanish when a big frame is shrunk to the model's input (a 30 px face at 720p becomes 4 px):
        # run it on overlapping square tiles as well (side: a fraction of the short side; overlap a quarter tile,
        # more than the faces the tiles are for) and merge.
        tile = round(min(h, w) * self.tile_fraction)
        overlap = tile // 4
        all_boxes, all_scores = [boxes], [scores]
        for y0 in _tile_origins(h, tile, overlap):
            for x0 in _tile_origins(w, tile, overlap):
                b, sc = self._detect_whole(frame[y0 : y0 + tile, x0 : x0 + tile])
                all_boxes.append(b + np.array([x0, y0, x0, y0], np.float32))
                all_scores.append(sc)
        boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
        keep = _nms(boxes, scores, 0.5, over_min=True)
        return boxes[keep], scores[keep]

    def _detect_whole(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = self.config.size
        h, w = frame.shape[:2]
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[top : top + nh, left : left + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
        tensor = canvas.astype(np.float32)[None] / 127.5 - 1.0
        self._interpreter.set_tensor(self._input, tensor)
        self._interpreter.invoke()
        raw = self._interpreter.get_tensor(self._boxes)[0]
        logits = np.clip(self._interpreter.get_tensor(self._scores)[0, :, 0].astype(np.float64), -100.0, 100.0)
        scores = 1.0 / (1.0 + np.exp(-logits))
        hit = scores >= self.min_score
        if not hit.any():
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        centre = raw[hit, :2] / size + self._anchors[hit]
        half = raw[hit, 2:4] / size / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        boxes, kept_scores = _weighted_nms(boxes, scores[hit], self.nms_iou)
        boxes = boxes * size
        # back from the letterboxed square to the frame
        boxes = (boxes - np.array([left, top, left, top], np.float32)) / scale
        return boxes.astype(np.float32), kept_scores.astype(np.float32)

    def __call__(self, frame: np.ndarray) -> int:
        return len(self.detect(frame)[1])

    def describe(self) -> str:
        return (
            f"unseen (neural): MediaPipe BlazeFace {self.model}-range ({MODEL_FILES[self.model]} from mediapipe"
            f" 0.10.21, TFLite via ai-edge-litert), score >= {self.min_score}, NMS IoU {self.nms_iou}"
            + (f", plus tiles of {self.tile_fraction} x short side above 576 px" if self.tile_fraction else "")
        )


def blazeface_detector(settings: Settings, **kwargs: Any) -> BlazeFaceDetector:
    """The default unseen neural detector: full-range BlazeFace at MediaPipe's default threshold."""
    return BlazeFaceDetector(settings, **kwargs)
