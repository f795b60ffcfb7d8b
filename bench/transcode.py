"""Time the media pipeline with identity transforms against the ffmpeg CLI doing the same re-encode.

    python bench/transcode.py [--input CLIP] [--runs 3] [--preset medium] [--crf 18]

Variants (same x264 settings: CRF, preset, yuv420p, +faststart, audio stream-copied):
  ffmpeg            `ffmpeg -i IN -c:v libx264 -crf C -preset P -pix_fmt yuv420p -c:a copy -movflags +faststart OUT`
  passthrough       engine.protect with no protector: frames go decoder -> encoder (provably identity, no RGB)
  rgb_identity      media.transcode with an identity transform: full RGB round trip per frame, no metering
  engine_identity   engine.protect with an identity VideoProtector: RGB round trip + in-run PSNR/SSIM metering
Runs are interleaved (one of each variant per round) so machine load drifts affect all alike. Medians of wall time
and of CPU time (user + system, all threads; ffmpeg's from its child rusage) are reported: on a shared, loaded
machine CPU time is the steadier measure of the work done. The JSON goes to bench/results/transcode.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "bench" / "talking_crowd_720p.mp4"


class IdentityProtector:
    name = "identity"

    def prepare(self, ctx: object) -> None:
        pass

    def protect_batch(self, frames: np.ndarray, ctx: object) -> np.ndarray:
        return frames

    def finish(self, ctx: object) -> None:
        pass


def variants(source: Path, workdir: Path, crf: int, preset: str) -> dict[str, Callable[[], Path]]:
    from media_cleaner.config import load_settings
    from media_cleaner.engine import ProtectionOptions, Protectors, protect
    from media_cleaner.media import EncodeSettings, probe, transcode

    settings = load_settings(base_dir=workdir, video_crf=crf, video_preset=preset)
    options = ProtectionOptions(measure_quality=False)
    ffmpeg = shutil.which("ffmpeg")

    def run_ffmpeg() -> Path:
        out = workdir / "ffmpeg.mp4"
        cmd = [ffmpeg, "-v", "error", "-y", "-i", str(source), "-map", "0:v:0", "-map", "0:a?", "-c:v", "libx264"]
        cmd += ["-crf", str(crf), "-preset", preset, "-pix_fmt", "yuv420p", "-c:a", "copy"]
        subprocess.run([*cmd, "-movflags", "+faststart", str(out)], check=True)
        return out

    def run_passthrough() -> Path:
        out = workdir / "passthrough.mp4"
        protect(source, out, options, settings=settings, protectors=Protectors())
        return out

    def run_rgb_identity() -> Path:
        out = workdir / "rgb_identity.mp4"
        transcode(probe(source), out, transform=lambda f: f, encode=EncodeSettings(crf=crf, preset=preset))
        return out

    def run_engine_identity() -> Path:
        out = workdir / "engine_identity.mp4"
        protect(source, out, options, settings=settings, protectors=Protectors(video=IdentityProtector()))
        return out

    table: dict[str, Callable[[], Path]] = {}
    if ffmpeg:
        table["ffmpeg"] = run_ffmpeg
    table.update(passthrough=run_passthrough, rgb_identity=run_rgb_identity, engine_identity=run_engine_identity)
    return table


def cpu_seconds() -> float:
    """User + system CPU of this process (all threads) and of finished children (the ffmpeg CLI)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def ffmpeg_version() -> str | None:
    if not shutil.which("ffmpeg"):
        return None
    return subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--crf", type=int, default=18)
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "transcode.json")
    args = parser.parse_args(argv)

    from media_cleaner.media import probe

    info = probe(args.input)
    load = os.getloadavg()
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="mc-bench-") as tmp:
        table = variants(args.input, Path(tmp), args.crf, args.preset)
        if "ffmpeg" not in table:
            print("ffmpeg CLI not found: install it (apt-get install ffmpeg) for the comparison", file=sys.stderr)
        for _ in range(args.runs):
            for name, fn in table.items():
                c0 = cpu_seconds()
                t0 = time.perf_counter()
                out = fn()
                times.setdefault(name, []).append(time.perf_counter() - t0)
                cpu.setdefault(name, []).append(cpu_seconds() - c0)
                sizes[name] = out.stat().st_size
    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    base = medians.get("ffmpeg")
    cpu_base = cpu_medians.get("ffmpeg")
    frames = info.video.frame_count or 0
    rows = []
    for name, median in medians.items():
        ratio = median / base if base else None
        rows.append(
            {
                "variant": name,
                "median_s": round(median, 3),
                "runs_s": [round(t, 3) for t in times[name]],
                "fps": round(frames / median, 1) if median else None,
                "ratio_vs_ffmpeg": round(ratio, 3) if ratio else None,
                "cpu_median_s": round(cpu_medians[name], 3),
                "cpu_runs_s": [round(t, 3) for t in cpu[name]],
                "cpu_ratio_vs_ffmpeg": round(cpu_medians[name] / cpu_base, 3) if cpu_base else None,
                "output_bytes": sizes[name],
            }
        )
    print(f"input: {args.input.name} ({info.video.width}x{info.video.height}, {frames} frames, {info.duration} s)")
    print(f"x264: crf {args.crf}, preset {args.preset}; {args.runs} runs each, medians; {os.cpu_count()} CPUs")
    print(f"load average at start: {load[0]:.2f}")
    print(f"{'variant':16} {'wall s':>8} {'fps':>6} {'x ffmpeg':>9} {'cpu s':>8} {'x ffmpeg':>9} {'bytes':>10}")
    for row in rows:
        ratio = f"{row['ratio_vs_ffmpeg']:.2f}" if row["ratio_vs_ffmpeg"] else "-"
        cpu_ratio = f"{row['cpu_ratio_vs_ffmpeg']:.2f}" if row["cpu_ratio_vs_ffmpeg"] else "-"
        print(
            f"{row['variant']:16} {row['median_s']:8.2f} {row['fps']:6.1f} {ratio:>9}"
            f" {row['cpu_median_s']:8.2f} {cpu_ratio:>9} {row['output_bytes']:10d}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "input": str(args.input),
        "frames": frames,
        "crf": args.crf,
        "preset": args.preset,
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "ffmpeg": ffmpeg_version(),
        "results": rows,
    }
    args.output.write_text(json.dumps(payload, indent=2))
    print(f"written {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
