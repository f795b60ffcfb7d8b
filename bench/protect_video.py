"""Video protection benchmark: efficacy, quality and speed of `engine.protect` on real clips.

    python bench/protect_video.py [--clips 720p 1080p grid crowd] [--seconds S] [--every K] [--epsilon E]

For each clip (optionally its first S seconds, cut with `ffmpeg -t S -c copy`, so the original stays the original):
  off        engine.protect with video and audio protection off: the product's plain transcode (same x264 settings)
  protected  engine.protect with the video protector on (audio off, so the timing is the video attack's own)
and then, always on the decoded files:
  efficacy   frames with a face found, original vs protected, by the surrogate MTCNN and by OpenCV's Haar cascade
             (never seen by the optimisation), every K-th frame
  quality    the perturbation before encoding (PSNR, SSIM from the engine's in-run meter; flicker from the
             protector), and end to end: protected file vs original next to the protection-off file vs original,
             and both files' sizes (same encoder settings: what the perturbation costs in bits)
  speed      wall and CPU seconds (user + system of this process) per frame, realtime factor, ratio to `off`
The machine is shared: CPU time is the steadier measure of the work done; wall time is what a user waits.
Prints a table and writes bench/results/protect_video.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CLIPS = {
    "720p": DATA / "bench" / "talking_crowd_720p.mp4",
    "1080p": DATA / "bench" / "talking_crowd_1080p.mp4",
    "grid": DATA / "video" / "grid_bbaf2n.mpg",
    "crowd": DATA / "video" / "crowd_1080p_faces.mp4",
}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cut(source: Path, seconds: float | None, workdir: Path) -> Path:
    if not seconds:
        return source
    out = workdir / f"{source.stem}_first{seconds:g}s{source.suffix}"
    cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(source), "-t", str(seconds), "-c", "copy", str(out)]
    subprocess.run(cmd, check=True)
    return out


def timed(fn: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), cpu_seconds()
    result = fn()
    return result, time.perf_counter() - w, cpu_seconds() - c


def bench_clip(name: str, source: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from media_cleaner.config import load_settings
    from media_cleaner.engine import ProtectionOptions, load_protectors, protect
    from media_cleaner.evaluate.faces import face_efficacy
    from media_cleaner.evaluate.quality import compare_videos
    from media_cleaner.media import probe

    settings = load_settings(base_dir=workdir)
    clip = cut(source, args.seconds, workdir)
    info = probe(clip)
    frames = info.video.frame_count or 0
    duration = info.duration or (frames / (info.video.fps or 25))
    protectors = load_protectors(settings, video=True, audio=False)  # loaded once, outside the timing

    off_path, protected_path = workdir / f"{name}_off.mp4", workdir / f"{name}_protected.mp4"
    off_opts = ProtectionOptions(epsilon=args.epsilon, protect_video=False, protect_audio=False)
    on_opts = ProtectionOptions(epsilon=args.epsilon, protect_video=True, protect_audio=False)
    off, off_wall, off_cpu = timed(lambda: protect(clip, off_path, off_opts, settings=settings, protectors=protectors))
    on, on_wall, on_cpu = timed(
        lambda: protect(clip, protected_path, on_opts, settings=settings, protectors=protectors)
    )
    e2e_on = compare_videos(clip, protected_path)
    e2e_off = compare_videos(clip, off_path)
    efficacy = face_efficacy(clip, protected_path, settings, every=args.every)
    pre = on.quality.get("video", {})
    stats = on.video
    return {
        "clip": str(source),
        "seconds_used": round(duration, 3),
        "frames": frames,
        "size": f"{info.video.display_width}x{info.video.display_height}",
        "epsilon": args.epsilon,
        "pixel_bound": on.parameters.get("pixel_bound"),
        "efficacy": efficacy,
        "quality": {
            "perturbation_psnr_db": pre.get("psnr_db"),
            "perturbation_psnr_min_db": pre.get("psnr_min_db"),
            "perturbation_ssim_mean": pre.get("ssim_mean"),
            "perturbation_ssim_min": pre.get("ssim_min"),
            "perturbation_linf": pre.get("linf_max"),
            "perturbation_flicker_mean_abs": stats.get("flicker_mean_abs"),
            "e2e_psnr_protected_db": e2e_on.get("psnr_mean_db"),
            "e2e_psnr_off_db": e2e_off.get("psnr_mean_db"),
            "e2e_ssim_protected": e2e_on.get("ssim_mean"),
            "e2e_ssim_off": e2e_off.get("ssim_mean"),
            "e2e_flicker_protected": e2e_on.get("flicker_mean_abs"),
            "e2e_flicker_off": e2e_off.get("flicker_mean_abs"),
            "output_bytes_protected": protected_path.stat().st_size,
            "output_bytes_off": off_path.stat().st_size,
        },
        "speed": {
            "off_wall_s": round(off_wall, 2),
            "off_cpu_s": round(off_cpu, 2),
            "protected_wall_s": round(on_wall, 2),
            "protected_cpu_s": round(on_cpu, 2),
            "s_per_frame_wall": round(on_wall / max(1, frames), 3),
            "s_per_frame_cpu": round(on_cpu / max(1, frames), 3),
            "realtime_factor_wall": round(duration / on_wall, 4) if on_wall else None,
            "ratio_to_plain_transcode_wall": round(on_wall / off_wall, 2) if off_wall else None,
            "ratio_to_plain_transcode_cpu": round(on_cpu / off_cpu, 2) if off_cpu else None,
            "video_protect_s": on.timings.get("video_protect"),
            "protected_timings": on.timings,  # the engine's phases (decode_encode, video_quality, quality, ...)
            "off_timings": off.timings,
        },
        "protector": stats,
    }


def fmt(v: Any, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def table(results: dict[str, dict[str, Any]]) -> str:
    head = (
        f"{'clip':7} {'frames':>6} {'MTCNN found o->p':>17} {'still%':>7} {'Haar o->p':>10} {'still%':>7} "
        f"{'BlazeF o->p':>11} {'still%':>7} "
        f"{'PSNR':>6} {'SSIM':>6} {'e2e on/off dB':>14} {'s/fr':>6} {'x plain':>8}"
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        m, h, q, s = r["efficacy"]["mtcnn"], r["efficacy"]["haar"], r["quality"], r["speed"]
        still_m = None if m["still_found_fraction"] is None else 100 * m["still_found_fraction"]
        still_h = None if h["still_found_fraction"] is None else 100 * h["still_found_fraction"]
        # the unseen neural detector; absent when its runtime or weights are not installed
        b = r["efficacy"].get("blazeface", {})
        still_b = None if b.get("still_found_fraction") is None else 100 * b["still_found_fraction"]
        lines.append(
            f"{name:7} {r['frames']:>6} "
            f"{m['frames_with_face_original']:>8}->{m['frames_with_face_protected']:<8} {fmt(still_m, '.1f'):>7} "
            f"{h['frames_with_face_original']:>4}->{h['frames_with_face_protected']:<5} {fmt(still_h, '.1f'):>7} "
            f"{fmt(b.get('frames_with_face_original')):>5}->{fmt(b.get('frames_with_face_protected')):<5} "
            f"{fmt(still_b, '.1f'):>7} "
            f"{fmt(q['perturbation_psnr_db'], '.1f'):>6} {fmt(q['perturbation_ssim_mean'], '.3f'):>6} "
            f"{fmt(q['e2e_psnr_protected_db'], '.1f'):>6}/{fmt(q['e2e_psnr_off_db'], '.1f'):<7} "
            f"{fmt(s['s_per_frame_wall'], '.2f'):>6} {fmt(s['ratio_to_plain_transcode_wall'], '.1f'):>8}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", nargs="+", default=["grid", "720p"], choices=sorted(CLIPS))
    parser.add_argument("--seconds", type=float, help="use only the first S seconds of each clip")
    parser.add_argument("--every", type=int, default=1, help="efficacy on every K-th frame")
    parser.add_argument("--epsilon", type=float, default=0.12)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "protect_video.json")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_protect_video_") as tmp:
        for name in args.clips:
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
            results[name] = bench_clip(name, CLIPS[name], args, Path(tmp))
            print(table({name: results[name]}).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(results))
    payload = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "arguments": {k: str(v) for k, v in vars(args).items()},
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
