"""Frames with a face, per detector, on ORIGINAL clips: the surrogate (MTCNN) and the unseen ones (Haar, BlazeFace).

The baseline the efficacy figures start from: a detector that misses faces in the original cannot show an effect
of the protection. Decodes every `--every`-th frame, one thread.

    python bench/face_detectors.py [--clips grid 720p] [--every 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CLIPS = {
    "grid": sorted((DATA / "video").glob("grid_*.mpg")),
    "720p": [DATA / "bench" / "talking_crowd_720p.mp4"],
    "crowd1080": [DATA / "video" / "crowd_1080p_faces.mp4"],
}


def count_clip(path: Path, detectors: dict[str, Any], every: int) -> dict[str, Any]:
    from media_cleaner.evaluate.faces import decoded_frames

    counts: dict[str, list[int]] = {name: [] for name in detectors}
    seconds = dict.fromkeys(detectors, 0.0)
    for frame in decoded_frames(path, every):
        for name, detect in detectors.items():
            t0 = time.perf_counter()
            counts[name].append(detect(frame))
            seconds[name] += time.perf_counter() - t0
    n = len(next(iter(counts.values())))
    return {
        "frames": n,
        **{
            name: {
                "frames_with_face": sum(c > 0 for c in found),
                "faces_per_frame_mean": round(sum(found) / n, 2) if n else None,
                "ms_per_frame": round(1000 * seconds[name] / n, 1) if n else None,
            }
            for name, found in counts.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", default=["grid", "720p"], choices=sorted(CLIPS))
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "face_detectors.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from media_cleaner.config import load_settings
    from media_cleaner.evaluate.faces import default_detectors

    detectors, described, unavailable = default_detectors(load_settings(base_dir=ROOT))
    results: dict[str, Any] = {}
    for group in args.clips:
        for path in CLIPS[group]:
            print(f"[{time.strftime('%H:%M:%S')}] {path.name} ...", file=sys.stderr, flush=True)
            results[path.name] = count_clip(path, detectors, args.every)
    names = list(detectors)
    print(f"{'clip':28} {'frames':>6} " + " ".join(f"{n + ' frames (faces/fr, ms)':>34}" for n in names))
    for clip, r in results.items():
        cells = [
            f"{r[n]['frames_with_face']:>5} ({r[n]['faces_per_frame_mean']:.2f}, {r[n]['ms_per_frame']:.0f} ms)"
            for n in names
        ]
        print(f"{clip:28} {r['frames']:>6} " + " ".join(f"{c:>34}" for c in cells))
    payload = {
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "threads": 1},
        "arguments": {"every": args.every, "clips": args.clips},
        "detectors": described,
        "unavailable": unavailable,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
