"""The loss that removes a face from MTCNN's output, on one face's region, through all three stages.

A face survives MTCNN only if some P-Net window fires near it, R-Net keeps the refined box and O-Net keeps it again.
Suppressing P-Net alone is not enough (the coarse pyramid levels and the R-/O-Net crops average fine perturbations
away), so the loss pushes the face logit below a margin everywhere it matters at once: every P-Net cell of the
pyramid levels at which this face is 9-30 px tall, and R-Net / O-Net on randomly jittered boxes around the face
(the boxes the cascade would actually evaluate, up to regression error).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from media_cleaner.models.mtcnn import MTCNN, normalise
from media_cleaner.protect.video.codec import gaussian_blur

LOGIT_06 = 0.405  # log(0.6/0.4): the P-Net threshold as a logit difference


@dataclass
class LossConfig:
    pnet_margin: float = 1.5  # push P-Net's logit difference below threshold - margin
    rnet_margin: float = 2.0
    onet_margin: float = 3.0
    rnet_boxes: int = 4
    onet_boxes: int = 4
    jitter: float = 0.12  # box centre jitter, in face sizes
    size_range: tuple[float, float] = (0.8, 1.3)
    pnet_face_px: tuple[float, float] = (7.0, 48.0)  # pyramid levels where the face is this tall
    pnet_weight: float = 0.1  # per P-Net cell above the margin
    hard_boxes: int = 4  # at most this many of the detector's own candidates per stage (from the last check)


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


def crop_resize(img: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable crop-and-resize of K boxes from one (1,3,H,W) image: a Gaussian pre-blur matched to the
    downscale stands in for area averaging, then bilinear sampling (one grid_sample for all boxes)."""
    h, w = img.shape[2:]
    side = float((boxes[:, 2] - boxes[:, 0]).mean())
    src = gaussian_blur(img, 0.45 * side / size) if side > size * 1.5 else img
    k = boxes.shape[0]
    t = torch.linspace(0.5 / size, 1 - 0.5 / size, size, dtype=img.dtype, device=img.device)
    xs = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * t  # (K, size) pixel coords
    ys = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * t
    gx = (xs / w) * 2 - 1
    gy = (ys / h) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(k, size, size), gy[:, :, None].expand(k, size, size)], dim=3)
    return F.grid_sample(src.expand(k, -1, -1, -1), grid.to(img.device), mode="bilinear", align_corners=False)


def face_loss(
    model: MTCNN,
    img: torch.Tensor,
    box: tuple[float, float, float, float],
    scales: list[float],
    cfg: LossConfig,
    gen: torch.Generator,
    hard_r: torch.Tensor | None = None,
    hard_o: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge loss on (1,3,H,W) pixels `img` (a region) with the face at `box` (region coordinates); `hard_r` /
    `hard_o` are boxes (K,4) the detector itself sent to R-Net / O-Net at the last check."""
    h, w = img.shape[2:]
    _, _, side = square(box)
    lo, hi = cfg.pnet_face_px
    terms = []
    p_max = -1e9
    for scale in scales:
        if not lo <= side * scale <= hi:
            continue
        size = (int(h * scale + 1), int(w * scale + 1))
        if min(size) < 12:
            continue
        level = F.interpolate(img, size=size, mode="bilinear", antialias=True, align_corners=False)
        _, logits = model.pnet(normalise(level))
        d = logits[:, 1] - logits[:, 0]
        p_max = max(p_max, float(d.detach().max()))
        terms.append(F.relu(d - (LOGIT_06 - cfg.pnet_margin)).sum() * cfg.pnet_weight)
    loss_p = torch.stack(terms).sum() if terms else img.new_zeros(())
    rb = jittered_boxes(box, cfg.rnet_boxes, cfg, gen)
    if hard_r is not None and len(hard_r):
        rb = torch.cat([rb, hard_r[: cfg.hard_boxes].float()])
    _, r_logits = model.rnet(normalise(crop_resize(img, rb, 24)))
    dr = r_logits[:, 1] - r_logits[:, 0]
    ob = jittered_boxes(box, cfg.onet_boxes, cfg, gen)
    if hard_o is not None and len(hard_o):
        ob = torch.cat([ob, hard_o[: cfg.hard_boxes].float()])
    _, _, o_logits = model.onet(normalise(crop_resize(img, ob, 48)))
    do = o_logits[:, 1] - o_logits[:, 0]
    loss_r = F.relu(dr + cfg.rnet_margin).sum()
    loss_o = F.relu(do + cfg.onet_margin).sum()
    loss = loss_p + loss_r + 1.5 * loss_o
    return loss, {"pnet": p_max, "rnet": float(dr.detach().max()), "onet": float(do.detach().max())}
