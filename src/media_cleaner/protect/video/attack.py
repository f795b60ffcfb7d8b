"""The loss that removes a face from MTCNN's output, on one face's region, through all three stages.

A face survives MTCNN only if some P-Net window fires near it, R-Net keeps the refined box and O-Net keeps it again.
Suppressing P-Net alone is not enough (the coarse pyramid levels and the R-/O-Net crops average fine perturbations
away), so the loss pushes the face logit below a margin everywhere it matters at once: every P-Net cell of the
pyramid levels at which this face is 9-30 px tall, and R-Net / O-Net on randomly jittered boxes around the face
(the boxes the cascade would actually evaluate, up to regression error).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from media_cleaner.models.mtcnn import MTCNN, crop_windows, normalise
from media_cleaner.models.resize import resize_area, shrink_window

LOGIT_06 = 0.405  # log(0.6/0.4): the P-Net threshold as a logit difference


@dataclass
class LossConfig:
    pnet_margin: float = 1.5  # push P-Net's logit difference below threshold - margin
    rnet_margin: float = 2.0
    onet_margin: float = 3.0
    rnet_boxes: int = 2
    onet_boxes: int = 2
    jitter: float = 0.12  # box centre jitter, in face sizes
    size_range: tuple[float, float] = (0.8, 1.3)
    pnet_face_px: tuple[float, float] = (7.0, 48.0)  # pyramid levels where the face is this tall
    pnet_weight: float = 0.0  # per P-Net cell above the margin (0: P-Net is not attacked)
    rnet_weight: float = 0.5
    onet_weight: float = 1.0
    hard_boxes: int = 12  # at most this many of the detector's own candidates per stage (from the last check)


def square(box: tuple[float, float, float, float]) -> tuple[float, float, float]:
    """(cx, cy, side) of MTCNN's squared box."""
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)


def jittered_boxes(box, count: int, cfg: LossConfig, gen: torch.Generator) -> torch.Tensor:  # noqa: ANN001
    """count square boxes (x1, y1, x2, y2) around `box`, the first one exact."""
    cx, cy, side = square(box)
    r = torch.rand((count, 3), generator=gen)
    r[0] = torch.tensor([0.5, 0.5, 0.4])
    lo, hi = cfg.size_range
    s = side * (lo + (hi - lo) * r[:, 2])
    x = cx + (r[:, 0] - 0.5) * 2 * cfg.jitter * side
    y = cy + (r[:, 1] - 0.5) * 2 * cfg.jitter * side
    return torch.stack([x - s / 2, y - s / 2, x + s / 2, y + s / 2], dim=1)


def _windows(boxes: torch.Tensor, origin: tuple[int, int], shape: tuple[int, int], frame: tuple[int, int]):
    """The detector's integer crop windows of `boxes` (facenet's `pad`), those that lie inside the context."""
    (oy, ox), (h, w) = origin, shape
    out = []
    for y0, y1, x0, x1 in crop_windows(boxes.detach().cpu().numpy().astype(np.float64), frame[1], frame[0]):
        if y1 - y0 >= 4 and x1 - x0 >= 4 and y0 >= oy and x0 >= ox and y1 <= oy + h and x1 <= ox + w:
            out.append((y0 - oy, y1 - oy, x0 - ox, x1 - ox))
    return out


def exact_crops(img: torch.Tensor, boxes: torch.Tensor, origin, frame, size: int) -> torch.Tensor | None:  # noqa: ANN001
    """The detector's own R-/O-Net inputs for `boxes` (absolute), cut from the context `img` (1,3,h,w)."""
    wins = _windows(boxes, origin, tuple(img.shape[2:]), frame)
    if not wins:
        return None
    return torch.cat([resize_area(img[:, :, y0:y1, x0:x1], (size, size)) for y0, y1, x0, x1 in wins])


def face_loss(
    model: MTCNN,
    img: torch.Tensor,
    origin: tuple[int, int],
    frame: tuple[int, int],
    box: tuple[float, float, float, float],
    scales: list[float],
    cfg: LossConfig,
    gen: torch.Generator,
    hard_r: torch.Tensor | None = None,
    hard_o: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge loss on a context `img` (1,3,h,w): the frame's pixels from `origin` (y, x) of a frame of size `frame`
    (H, W), with the face at `box` and the detector's own candidates `hard_r` / `hard_o` (K,4), all in frame
    coordinates. Pyramid levels and crops are resampled exactly as `MTCNN.detect` resamples the whole frame."""
    _, _, side = square(box)
    lo, hi = cfg.pnet_face_px
    terms = []
    p_max = -1e9
    for scale in scales if cfg.pnet_weight > 0 else []:
        if not lo <= side * scale <= hi:
            continue
        level, _ = shrink_window(img, origin, frame, (int(frame[0] * scale + 1), int(frame[1] * scale + 1)))
        if min(level.shape[2:]) < 12:
            continue
        _, logits = model.pnet(normalise(level))
        d = logits[:, 1] - logits[:, 0]
        p_max = max(p_max, float(d.detach().max()))
        terms.append(F.relu(d - (LOGIT_06 - cfg.pnet_margin)).sum() * cfg.pnet_weight)
    loss = torch.stack(terms).sum() if terms else img.new_zeros(())
    maxima = {"pnet": p_max, "rnet": -1e9, "onet": -1e9}
    for name, count, hard, size, margin, weight in (
        ("rnet", cfg.rnet_boxes, hard_r, 24, cfg.rnet_margin, cfg.rnet_weight),
        ("onet", cfg.onet_boxes, hard_o, 48, cfg.onet_margin, cfg.onet_weight),
    ):
        boxes = jittered_boxes(box, count, cfg, gen)
        if hard is not None and len(hard):
            boxes = torch.cat([boxes, hard[: cfg.hard_boxes].float()])
        data = exact_crops(img, boxes, origin, frame, size)
        if data is None:
            continue
        logits = model.rnet(normalise(data))[1] if name == "rnet" else model.onet(normalise(data))[2]
        d = logits[:, 1] - logits[:, 0]
        maxima[name] = float(d.detach().max())
        loss = loss + weight * F.relu(d + margin).sum()
    return loss, maxima
