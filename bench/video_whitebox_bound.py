"""How far can any perturbation of this size go? A white-box upper bound for the video attack's efficacy.

    python bench/video_whitebox_bound.py [--clip grid|720p|1080p] [--frame I] [--bounds 6 9 12] [--steps 200]

On one decoded frame, a per-pixel PGD (sign steps of half a level, L-inf `bound` in 8-bit levels, no shaping, no
codec, no time limit) drives MTCNN's R-Net and O-Net below their thresholds on every candidate the detector itself
produces (re-detected every 5 steps) plus the clean faces' boxes, with P-Net's candidates pushed down too
(`--pnet-weight`). It stops when no face is left; the
result then also goes through H.264 (as a P-frame after the clean frame) and is detected again. The product's attack works under far tighter conditions (its
perturbation shaped and smooth, 8-16 steps a frame, through H.264), so what this cannot remove at a bound, the
product cannot either. Prints faces left per bound and writes bench/results/video_whitebox_bound.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "data"
CLIPS = {
    "grid": DATA / "video" / "grid_bbaf2n.mpg",
    "720p": DATA / "bench" / "talking_crowd_720p.mp4",
    "1080p": DATA / "bench" / "talking_crowd_1080p.mp4",
}


def frame_at(path: Path, index: int) -> np.ndarray:
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                return frame.to_ndarray(format="rgb24")
    raise SystemExit(f"{path} has no frame {index}")


def attack(model, frame: np.ndarray, bound: float, steps: int, pnet_weight: float, crf: int) -> dict:  # noqa: ANN001
    from media_cleaner.models.mtcnn import normalise, pyramid_scales
    from media_cleaner.models.resize import resize_area
    from media_cleaner.protect.video.attack import LOGIT_06, exact_crops

    h, w = frame.shape[:2]
    clean = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    delta = torch.zeros_like(clean, requires_grad=True)
    faces = torch.tensor(model.detect(frame[None]).boxes[0], dtype=torch.float32).reshape(-1, 4)
    scales = pyramid_scales(h, w)
    history = []
    for step in range(steps + 1):
        adv = (clean + delta).clamp(0, 255)
        if step % 5 == 0:
            pixels = adv.detach()[0].permute(1, 2, 0).round().numpy().astype(np.uint8)
            found = model.detect(pixels[None])
            history.append((step, len(found.boxes[0])))
            if not len(found.boxes[0]) or step == steps:
                break
            r_boxes = torch.cat([torch.tensor(found.rnet_inputs[:, 1:], dtype=torch.float32), faces])
            o_boxes = torch.cat([torch.tensor(found.onet_inputs[:, 1:], dtype=torch.float32), faces])
        loss = adv.new_zeros(())
        crops = exact_crops(adv, r_boxes, (0, 0), (h, w), 24)
        if crops is not None:
            logits = model.rnet(normalise(crops))[1]
            loss = loss + 0.5 * F.relu(logits[:, 1] - logits[:, 0] + 2).sum()
        crops = exact_crops(adv, o_boxes, (0, 0), (h, w), 48)
        if crops is not None:
            logits = model.onet(normalise(crops))[2]
            loss = loss + F.relu(logits[:, 1] - logits[:, 0] + 3).sum()
        for scale in scales if pnet_weight > 0 else []:
            logits = model.pnet(normalise(resize_area(adv, (int(h * scale + 1), int(w * scale + 1)))))[1]
            loss = loss + pnet_weight * F.relu(logits[:, 1] - logits[:, 0] - (LOGIT_06 - 1.5)).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= 0.5 * grad.sign()
            delta.clamp_(-bound, bound)
    from media_cleaner.protect.video.codec import h264_roundtrip

    pixels = (clean + delta).detach().clamp(0, 255)[0].permute(1, 2, 0).round().numpy().astype(np.uint8)
    coded = h264_roundtrip(np.stack([frame, pixels]), crf, base=np.stack([frame, frame]))[1]  # a P-frame, as most are
    return {
        "bound": bound,
        "faces_after_h264": len(model.detect(coded[None]).boxes[0]),
        "crf": crf,
        "faces_clean": len(faces),
        "faces_left": history[-1][1],
        "steps_run": history[-1][0],
        "history": history,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="grid", choices=sorted(CLIPS))
    parser.add_argument("--frame", type=int, default=0)
    parser.add_argument("--bounds", type=float, nargs="+", default=[6.0, 9.0, 12.0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pnet-weight", type=float, default=0.0)
    parser.add_argument(
        "--crf", type=int, default=18, help="the final perturbed frame also goes through H.264 at this CRF"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "video_whitebox_bound.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from media_cleaner.config import load_settings
    from media_cleaner.models.mtcnn import load_mtcnn

    model = load_mtcnn(load_settings())
    for p in model.parameters():
        p.requires_grad_(False)
    frame = frame_at(CLIPS[args.clip], args.frame)
    results = []
    for bound in args.bounds:
        t = time.perf_counter()
        r = attack(model, frame, bound, args.steps, args.pnet_weight, args.crf)
        r["seconds"] = round(time.perf_counter() - t, 1)
        print(
            f"{args.clip} frame {args.frame} bound {bound:g} levels: faces {r['faces_clean']} -> {r['faces_left']}"
            f" after {r['steps_run']} steps ({r['seconds']} s); after H.264 CRF {args.crf}: {r['faces_after_h264']}",
            flush=True,
        )
        results.append(r)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
