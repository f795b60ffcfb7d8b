"""The loss that removes a face from MTCNN's output, on one face's region, through all three stages.

A face survives MTCNN only if some P-Net window fires near it, R-Net keeps the refined box and O-Net keeps it again.
Suppressing P-Net alone is not enough (the coarse pyramid levels and the R-/O-Net crops average fine perturbations
away), so the loss pushes the face logit below a margin everywhere it matters at once: every P-Net cell of the
pyramid levels at which this face is 9-30 px tall, and R-Net / O-Net on randomly jittered boxes around the face
(the boxes the cascade would actually evaluate, up to regression error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    # jittered boxes per stage and face (the first is the face's own box) next to the detector's candidates (bench
    # 720p first 3 s: 2 each -> 445 -> 269 faces at 0.91 s/frame, 1 each -> 281 at 0.84 s/frame)
    rnet_boxes: int = 2
    onet_boxes: int = 2
    jitter: float = 0.12  # box centre jitter, in face sizes
    size_range: tuple[float, float] = (0.8, 1.3)
    pnet_face_px: tuple[float, float] = (7.0, 48.0)  # pyramid levels where the face is this tall
    pnet_weight: float = 0.0  # per P-Net cell above the margin (0: P-Net is not attacked)
    rnet_weight: float = 0.5
    onet_weight: float = 1.0
    # at most this many of the detector's own candidates per stage (first 27 frames of the 720p clip: 12 -> 122 faces
    # left on the encoded output at 1.52 s/frame, 6 -> 125 at 1.35)
    hard_boxes: int = 6


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
    """The detector's integer crop windows of `boxes` (facenet's `pad`), those that lie inside the context, and the
    rows of `boxes` they come from."""
    (oy, ox), (h, w) = origin, shape
    out, rows = [], []
    for row, (y0, y1, x0, x1) in enumerate(
        crop_windows(boxes.detach().cpu().numpy().astype(np.float64), frame[1], frame[0])
    ):
        if y1 - y0 >= 4 and x1 - x0 >= 4 and y0 >= oy and x0 >= ox and y1 <= oy + h and x1 <= ox + w:
            out.append((y0 - oy, y1 - oy, x0 - ox, x1 - ox))
            rows.append(row)
    return out, rows


def exact_crops(img: torch.Tensor, boxes: torch.Tensor, origin, frame, size: int) -> torch.Tensor | None:  # noqa: ANN001
    """The detector's own R-/O-Net inputs for `boxes` (absolute), cut from the context `img` (1,3,h,w)."""
    crops, _ = _crops_and_rows(img, boxes, origin, frame, size)
    return crops


def _crops_and_rows(img: torch.Tensor, boxes: torch.Tensor, origin, frame, size: int):  # noqa: ANN001, ANN202
    wins, rows = _windows(boxes, origin, tuple(img.shape[2:]), frame)
    if not wins:
        return None, rows
    return torch.cat([resize_area(img[:, :, y0:y1, x0:x1], (size, size)) for y0, y1, x0, x1 in wins]), rows


@dataclass
class FaceView:
    """One face's share of a frame for the loss: its context pixels (1,3,h,w) from `origin` (y, x), its box and
    the detector's own candidates for R-Net / O-Net (K,4), all in frame coordinates."""

    img: torch.Tensor
    origin: tuple[int, int]
    box: tuple[float, float, float, float]
    hard_r: torch.Tensor | None = None
    hard_o: torch.Tensor | None = None


def stage_boxes(view: FaceView, cfg: LossConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(R-Net boxes, O-Net boxes) of one face: jittered draws (R first, then O) plus the detector's candidates."""
    return draw_boxes(view.box, view.hard_r, view.hard_o, cfg, gen)


def draw_boxes(
    box: tuple[float, float, float, float],
    hard_r: torch.Tensor | None,
    hard_o: torch.Tensor | None,
    cfg: LossConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`stage_boxes` from a face's box and candidates alone (drawn before the views exist: one generator, one order,
    whichever thread later evaluates them)."""
    out = []
    for count, hard in ((cfg.rnet_boxes, hard_r), (cfg.onet_boxes, hard_o)):
        boxes = jittered_boxes(box, count, cfg, gen)
        if hard is not None and len(hard):
            boxes = torch.cat([boxes, hard[: cfg.hard_boxes].float()])
        out.append(boxes)
    return out[0], out[1]


def channels_last(model: MTCNN) -> None:
    """R-/O-Net in channels-last layout: their ceil-mode max pooling is several times faster so on CPU."""
    model.rnet.to(memory_format=torch.channels_last)
    model.onet.to(memory_format=torch.channels_last)


def frame_loss(
    model: MTCNN,
    views: list[FaceView],
    frame: tuple[int, int],
    cfg: LossConfig,
    gen: torch.Generator | None,
    active_only: bool = False,
    boxes: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    guess: list[tuple[list[bool], list[bool]] | None] | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The R-/O-Net hinge of every face of a frame of size `frame` (H, W) in one R-Net and one O-Net call.

    Returns (per-face losses (F,), per-face maxima of the logit differences, counts of crops above their margin
    `rnet_active` / `onet_active`, and per box row whether its crop was above its margin, `rnet_rows` /
    `onet_rows`); face k's loss equals `face_loss` on view k alone (same boxes drawn in the same order), so one
    batched call replaces F. `boxes` (per view, as `draw_boxes` gives them) replaces the draws from `gen`.

    `active_only` back-propagates through the crops still above their margin only (same loss and gradient): the
    others run forward without a graph first. `guess` (per view, per stage, per box row: expected above its margin,
    e.g. the rows of the previous step) sends those crops straight to the forward with a graph instead, so a crop
    guessed right runs forward once instead of twice; a wrong guess costs only time (a crop below its margin adds
    zero to the hinge and its gradient), so the loss and gradient stay the same."""
    if boxes is None:
        boxes = [stage_boxes(v, cfg, gen) for v in views]
    losses = views[0].img.new_zeros(len(views)) if views else torch.zeros(0)
    maxima: list[dict[str, Any]] = [
        {"pnet": -1e9, "rnet": -1e9, "onet": -1e9, "rnet_active": 0, "onet_active": 0} for _ in views
    ]
    for stage, size, margin, weight in (
        (0, 24, cfg.rnet_margin, cfg.rnet_weight),
        (1, 48, cfg.onet_margin, cfg.onet_weight),
    ):
        name = ("rnet", "onet")[stage]
        parts, owners, guessed = [], [], []
        for k, v in enumerate(views):
            data, rows = _crops_and_rows(v.img, boxes[k][stage], v.origin, frame, size)
            maxima[k][name + "_rows"] = [False] * len(boxes[k][stage])
            maxima[k][name + "_kept"] = rows
            if data is not None:
                parts.append(data)
                owners += [k] * len(data)
                hint = guess[k][stage] if guess is not None and guess[k] is not None else None
                guessed += [bool(hint[r]) if hint is not None and r < len(hint) else False for r in rows]
        if not parts:
            continue
        data = normalise(torch.cat(parts)).contiguous(memory_format=torch.channels_last)
        net = (lambda x: model.rnet(x)[1]) if stage == 0 else (lambda x: model.onet(x)[2])
        index = torch.tensor(owners, device=data.device)
        if active_only and data.requires_grad:
            # a crop already below its margin adds nothing to the hinge or its gradient: the net runs forward on
            # the crops not guessed active without a graph, then forward and backward on the guessed and the
            # active ones only (same loss, same gradient, a fraction of the backward cost once most are beaten)
            d_all = torch.empty(len(data), device=data.device)
            sure = torch.tensor(guessed, dtype=torch.bool, device=data.device)
            screen = torch.nonzero(~sure).flatten()
            if len(screen):
                with torch.no_grad():
                    logits = net(data[screen])
                d_all[screen] = logits[:, 1] - logits[:, 0]
                screen = screen[d_all[screen] + margin > 0]
            on = torch.sort(torch.cat([torch.nonzero(sure).flatten(), screen])).values
            if len(on):
                logits = net(data[on])
                d = logits[:, 1] - logits[:, 0]
                losses = losses.index_add(0, index[on], weight * F.relu(d + margin))
                d_all[on] = d.detach()
            d_all = d_all.tolist()
        else:
            logits = net(data)
            d = logits[:, 1] - logits[:, 0]
            losses = losses.index_add(0, index, weight * F.relu(d + margin))
            d_all = d.detach().tolist()
        seen = dict.fromkeys(range(len(views)), 0)
        for k, value in zip(owners, d_all, strict=True):
            maxima[k][name] = max(maxima[k][name], value)
            maxima[k][name + "_active"] += value + margin > 0
            maxima[k][name + "_rows"][maxima[k][name + "_kept"][seen[k]]] = value + margin > 0
            seen[k] += 1
    for m in maxima:
        m.pop("rnet_kept", None)
        m.pop("onet_kept", None)
    return losses, maxima


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
    coordinates. Pyramid levels and crops are resampled exactly as `MTCNN.detect` resamples the whole frame.
    (P-Net only when `cfg.pnet_weight` > 0; R-/O-Net as `frame_loss` on this face alone.)"""
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
    losses, maxima = frame_loss(model, [FaceView(img, origin, box, hard_r, hard_o)], frame, cfg, gen)
    maxima[0]["pnet"] = p_max
    return loss + losses[0], maxima[0]
