"""A differentiable MTCNN (P-Net over an image pyramid, R-Net, O-Net) in plain PyTorch.

Layer names match facenet-pytorch's state dicts (pnet.pt, rnet.pt, onet.pt), which the registry resolves; the
package itself is never imported. `MTCNN.detect` reproduces facenet-pytorch 2.6's `detect_face` with its defaults
(min_face_size 20, thresholds 0.6/0.7/0.7, factor 0.709); the nets are ordinary modules, so gradients flow from
any stage's scores back to the pixels (used by the attack in `protect/video`).
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PNet(nn.Module):
    """Proposal net: fully convolutional, a 12x12 window per output cell at stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (box regression (N,4,h,w), face logits (N,2,h,w))."""
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), self.conv4_1(x)


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (box regression (N,4), face logits (N,2))."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).contiguous()  # the Caffe port's flatten order
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), self.dense5_1(x)


class ONet(nn.Module):
    """Output net on 48x48 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (box regression (N,4), landmarks (N,10), face logits (N,2))."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """MTCNN's input scaling of 0..255 pixels."""
    return (pixels - 127.5) * 0.0078125


def resample(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area resampling, as facenet-pytorch does (differentiable)."""
    return F.interpolate(img, size=size, mode="area")


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy NMS. 'union': torchvision's IoU (no +1, suppress IoU > t); 'min': facenet's numpy NMS (+1 areas)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    plus = 1.0 if method == "min" else 0.0
    area = (x2 - x1 + plus) * (y2 - y1 + plus)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + plus)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + plus)
        inter = w * h
        if method == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float, method: str = "union"):
    """NMS independently per group id (image, or image x scale)."""
    keep = [
        np.flatnonzero(groups == g)[nms(boxes[groups == g], scores[groups == g], threshold, method)]
        for g in np.unique(groups)
    ]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def rerec(boxes: np.ndarray) -> np.ndarray:
    """Make boxes square around their centre (longer side)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def bbreg(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += reg[:, 0] * w
    boxes[:, 1] += reg[:, 1] * h
    boxes[:, 2] += reg[:, 2] * w
    boxes[:, 3] += reg[:, 3] * h
    return boxes


def crop_windows(boxes: np.ndarray, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """facenet's `pad`: truncated 1-based box -> (y0, y1, x0, x1) slice bounds clipped to the image."""
    out = []
    for b in np.trunc(boxes[:, :4]).astype(np.int64):
        x, y, ex, ey = max(int(b[0]), 1), max(int(b[1]), 1), min(int(b[2]), width), min(int(b[3]), height)
        out.append((y - 1, ey, x - 1, ex))
    return out


def crops_np(images: np.ndarray, inds: np.ndarray, windows: list[tuple[int, int, int, int]], size: int):
    """`crops` on float32 (N,H,W,3) arrays with OpenCV's area resampling: the fast path for detection only."""
    out, keep = [], []
    for k, (y0, y1, x0, x1) in enumerate(windows):
        if y1 > y0 and x1 > x0:
            out.append(cv2.resize(images[int(inds[k]), y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA))
            keep.append(k)
    if not out:
        return torch.zeros((0, 3, size, size)), np.zeros(0, dtype=np.int64)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2), np.asarray(keep, dtype=np.int64)


def crops(images: torch.Tensor, inds: np.ndarray, windows: list[tuple[int, int, int, int]], size: int):
    """Cut windows out of (N,3,H,W) pixel images and resample each to size x size (differentiable)."""
    out = []
    keep = []
    for k, (y0, y1, x0, x1) in enumerate(windows):
        if y1 > y0 and x1 > x0:
            out.append(resample(images[int(inds[k]) : int(inds[k]) + 1, :, y0:y1, x0:x1], (size, size)))
            keep.append(k)
    if not out:
        return images.new_zeros((0, 3, size, size)), np.zeros(0, dtype=np.int64)
    return torch.cat(out), np.asarray(keep, dtype=np.int64)


def pyramid_scales(height: int, width: int, min_face_size: float = 20.0, factor: float = 0.709) -> list[float]:
    m = 12.0 / min_face_size
    minl = min(height, width) * m
    scales = []
    scale = m
    while minl >= 12:
        scales.append(scale)
        scale *= factor
        minl *= factor
    return scales


@dataclass
class Detections:
    """Per-image results of one `detect` call, plus the candidates each stage saw (for the attack)."""

    boxes: list[np.ndarray]  # per image (K, 4) x1 y1 x2 y2
    probs: list[np.ndarray]  # per image (K,)
    landmarks: list[np.ndarray]  # per image (K, 5, 2)
    rnet_inputs: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # [img, x1, y1, x2, y2]
    onet_inputs: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    pnet_candidates: int = 0

    def counts(self) -> list[int]:
        return [len(b) for b in self.boxes]


class MTCNN(nn.Module):
    """The three nets plus facenet-pytorch's detection procedure."""

    def __init__(
        self,
        weights_dir: str | Path | None = None,
        min_face_size: float = 20.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.min_face_size, self.thresholds, self.factor = min_face_size, thresholds, factor
        if weights_dir is not None:
            weights_dir = Path(weights_dir)
            for name in ("pnet", "rnet", "onet"):
                state = torch.load(weights_dir / f"{name}.pt", map_location="cpu", weights_only=True)
                getattr(self, name).load_state_dict(state)
        self.eval().requires_grad_(False)
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.pnet.conv1.weight.device

    @torch.no_grad()
    def detect(
        self,
        images: np.ndarray | torch.Tensor,
        exact: bool = False,
        regions: list[tuple[int, int, int, int]] | None = None,
        pool: Executor | None = None,
        windows: list[tuple[float, float]] | None = None,
    ) -> Detections:
        """Detect faces in RGB images (N,H,W,3) uint8/float 0..255 (or one (H,W,3) image).

        `exact` resamples with torch's 'area' mode like facenet-pytorch (slow on CPU); the default uses OpenCV's
        INTER_AREA, which gives the same detections to within a pixel or two and is ~10x faster on crops.

        `regions` (one image only; rects y0 y1 x0 x1) runs P-Net only on the cells of the whole frame's pyramid
        levels whose windows lie inside one of them, resampled exactly as the whole level (`pnet_regions`); the
        later stages are unchanged. A face well inside a region gets the detection the whole frame gives it.

        `pool` runs P-Net's pyramid levels on its threads (the same detections: results are taken in level order).

        `windows` (with `regions`, one (min, max) per region, in frame pixels) scans a region only at the pyramid
        levels whose 12x12 P-Net window spans that many frame pixels (12 / scale): the levels at which the faces
        around which the region was drawn can be proposed.
        """
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        if images.ndim == 3:
            images = images[None]
        host = np.ascontiguousarray(images, dtype=np.float32)
        n, h, w = host.shape[:3]
        imgs = torch.from_numpy(host).permute(0, 3, 1, 2).to(self.device) if exact else None
        dev = self.device

        def pyramid_level(size: tuple[int, int]) -> torch.Tensor:
            if exact:
                return resample(imgs, size)
            level = np.stack([cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_AREA) for im in host])
            return torch.from_numpy(level).permute(0, 3, 1, 2).to(dev)

        def cut(inds: np.ndarray, boxes: np.ndarray, size: int) -> tuple[torch.Tensor, np.ndarray]:
            windows = crop_windows(boxes, w, h)
            if exact:
                return crops(imgs, inds, windows, size)
            data, ok = crops_np(host, inds, windows, size)
            return data.to(dev), ok

        _, t2, t3 = self.thresholds

        # Stage 1: P-Net over the pyramid; NMS per scale and image, then per image.
        def level(scale: float) -> tuple[np.ndarray, np.ndarray]:
            size = (int(h * scale + 1), int(w * scale + 1))
            with torch.no_grad():  # (grad mode is per thread)
                if regions is None:
                    boxes, idx = self._pnet_cells(normalise(pyramid_level(size)), scale, (0, 0))
                else:
                    span = 12.0 / scale
                    picked = [
                        r for k, r in enumerate(regions) if windows is None or windows[k][0] <= span <= windows[k][1]
                    ]
                    boxes, idx = self.pnet_regions(host[0], size, scale, picked)
            pick = batched_nms(boxes[:, :4], boxes[:, 4], idx, 0.5) if len(idx) else idx
            return boxes[pick], idx[pick]

        scales = pyramid_scales(h, w, self.min_face_size, self.factor)
        levels = list(pool.map(level, scales) if pool is not None else map(level, scales))
        all_boxes = [boxes for boxes, idx in levels if len(idx)]
        all_inds = [idx for _, idx in levels if len(idx)]
        empty = Detections([np.zeros((0, 4))] * n, [np.zeros(0)] * n, [np.zeros((0, 5, 2))] * n)
        if not all_boxes:
            return empty
        boxes, inds = np.concatenate(all_boxes), np.concatenate(all_inds)
        pnet_candidates = len(boxes)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes, inds = boxes[pick], inds[pick]
        regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = np.stack(
            [
                boxes[:, 0] + boxes[:, 5] * regw,
                boxes[:, 1] + boxes[:, 6] * regh,
                boxes[:, 2] + boxes[:, 7] * regw,
                boxes[:, 3] + boxes[:, 8] * regh,
                boxes[:, 4],
            ],
            axis=1,
        )
        boxes = rerec(boxes)
        rnet_inputs = np.concatenate([inds[:, None], boxes[:, :4]], axis=1)

        # Stage 2: R-Net on 24x24 crops.
        data, ok = cut(inds, boxes, 24)
        boxes, inds = boxes[ok], inds[ok]
        if len(boxes) == 0:
            return empty
        reg, logits = self._batched(self.rnet, normalise(data), pool)
        score = torch.softmax(logits, dim=1)[:, 1].cpu().numpy()
        reg = reg.cpu().numpy()
        passed = score > t2
        boxes = np.concatenate([boxes[passed, :4], score[passed, None]], axis=1)
        inds, reg = inds[passed], reg[passed]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes, inds, reg = boxes[pick], inds[pick], reg[pick]
        boxes = rerec(bbreg(boxes, reg))
        onet_inputs = np.concatenate([inds[:, None], boxes[:, :4]], axis=1)
        if len(boxes) == 0:
            empty.rnet_inputs, empty.pnet_candidates = rnet_inputs, pnet_candidates
            return empty

        # Stage 3: O-Net on 48x48 crops, landmarks, final NMS with the 'Min' overlap.
        data, ok = cut(inds, boxes, 48)
        boxes, inds = boxes[ok], inds[ok]
        reg, points, logits = self._batched(self.onet, normalise(data), pool)
        score = torch.softmax(logits, dim=1)[:, 1].cpu().numpy()
        reg, points = reg.cpu().numpy(), points.cpu().numpy()
        passed = score > t3
        boxes = np.concatenate([boxes[passed, :4], score[passed, None]], axis=1)
        inds, reg, points = inds[passed], reg[passed], points[passed]
        wi = boxes[:, 2] - boxes[:, 0] + 1
        hi = boxes[:, 3] - boxes[:, 1] + 1
        px = wi[:, None] * points[:, :5] + boxes[:, 0:1] - 1
        py = hi[:, None] * points[:, 5:10] + boxes[:, 1:2] - 1
        marks = np.stack([px, py], axis=2)
        boxes = bbreg(boxes, reg)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7, "min")
        boxes, inds, marks = boxes[pick], inds[pick], marks[pick]

        out = Detections([], [], [], rnet_inputs, onet_inputs, pnet_candidates)
        for i in range(n):
            sel = inds == i
            order = np.argsort(-boxes[sel, 4], kind="stable")
            out.boxes.append(boxes[sel][order, :4])
            out.probs.append(boxes[sel][order, 4])
            out.landmarks.append(marks[sel][order])
        return out

    @staticmethod
    def _batched(net: nn.Module, data: torch.Tensor, pool: Executor | None) -> tuple[torch.Tensor, ...]:
        """`net(data)`, in two halves on `pool`'s threads when there are enough crops (each crop's output does not
        depend on the batch)."""
        if pool is None or len(data) < 64:
            return net(data)

        def half(part: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with torch.no_grad():
                return net(part)

        cut = len(data) // 2
        first, second = pool.map(half, (data[:cut], data[cut:]))
        return tuple(torch.cat(pair) for pair in zip(first, second, strict=True))

    def _pnet_cells(self, data: torch.Tensor, scale: float, offset: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """P-Net on normalised level data (N,3,h,w) whose first pixel is the level's `offset` (y, x), an even index:
        (cells above threshold as [x1 y1 x2 y2 score reg*4] in frame coordinates, their image indices)."""
        reg, logits = self.pnet(data)
        probs = torch.softmax(logits, dim=1)[:, 1]
        mask = probs >= self.thresholds[0]
        idx = mask.nonzero().cpu().numpy()
        if len(idx) == 0:
            return np.zeros((0, 9)), np.zeros(0, dtype=np.int64)
        score = probs[mask].cpu().numpy()
        r = reg.permute(1, 0, 2, 3)[:, mask].permute(1, 0).cpu().numpy()
        bb = idx[:, 1:][:, ::-1].astype(np.float32) + np.array([offset[1] // 2, offset[0] // 2], np.float32)
        q1 = np.floor((2 * bb + 1) / scale)
        q2 = np.floor((2 * bb + 12) / scale)
        return np.concatenate([q1, q2, score[:, None], r], axis=1), idx[:, 0]

    def pnet_regions(
        self, image: np.ndarray, size: tuple[int, int], scale: float, regions: list[tuple[int, int, int, int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`_pnet_cells` of one pyramid level (`size`) of `image` (H,W,3 float32), restricted to the level's cells
        whose 12x12 windows depend only on pixels inside one of `regions` (y0 y1 x0 x1), each cell once.

        Each region's level window is resampled with OpenCV's INTER_AREA weights of the whole level
        (`resize.shrink_window`), starts at an even level index and has an even size unless it reaches the level's
        edge, so P-Net's stride-2 cells and its ceil-mode pooling see exactly what they see on the whole level."""
        from media_cleaner.models.resize import inner_span, shrink_window  # noqa: PLC0415 - light module

        h, w = image.shape[:2]
        found: dict[tuple[int, int], np.ndarray] = {}
        for y0, y1, x0, x1 in regions:
            (j0, j1), (i0, i1) = inner_span(h, size[0], y0, y1), inner_span(w, size[1], x0, x1)
            j0, i0 = j0 + j0 % 2, i0 + i0 % 2
            j1 -= (j1 - j0) % 2 if j1 < size[0] else 0
            i1 -= (i1 - i0) % 2 if i1 < size[1] else 0
            if j1 - j0 < 12 or i1 - i0 < 12:
                continue
            patch = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)
            level, _ = shrink_window(patch, (y0, x0), (h, w), size)  # starts at (j0, i0)
            level = level[:, : j1 - j0, : i1 - i0]
            boxes, _ = self._pnet_cells(normalise(level[None].to(self.device)), scale, (j0, i0))
            for b in boxes:
                found.setdefault((int(b[0]), int(b[1])), b)
        if not found:
            return np.zeros((0, 9)), np.zeros(0, dtype=np.int64)
        keys = sorted(found, key=lambda k: (k[1], k[0]))  # the whole level's (row, column) order
        return np.stack([found[k] for k in keys]), np.zeros(len(keys), dtype=np.int64)


def load_mtcnn(settings, device: str | None = None) -> MTCNN:  # noqa: ANN001 - Settings, kept import-light
    """The surrogate with weights from the model registry."""
    from media_cleaner.models.registry import ModelRegistry

    return MTCNN(ModelRegistry(settings).resolve("mtcnn"), device=device or settings.device)
