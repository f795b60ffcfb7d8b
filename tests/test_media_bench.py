"""bench/transcode.py runs end to end on a tiny clip and writes its JSON (keeps the benchmark from rotting)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from clips import make_clip

BENCH = Path(__file__).resolve().parent.parent / "bench" / "transcode.py"


def test_bench_transcode_tiny(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_transcode", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clip = make_clip(tmp_path / "tiny.mp4", frames=6)
    out = tmp_path / "transcode.json"
    assert module.main(["--input", str(clip), "--runs", "1", "--preset", "ultrafast", "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    variants = {row["variant"]: row for row in data["results"]}
    expected = {"passthrough", "rgb_identity", "engine_identity"} | ({"ffmpeg"} if shutil.which("ffmpeg") else set())
    assert set(variants) == expected
    assert all(row["median_s"] > 0 and row["output_bytes"] > 0 for row in variants.values())
    assert "engine_identity" in capsys.readouterr().out
