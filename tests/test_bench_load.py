"""bench/load.py keeps working: a tiny run (3 uploads, 2 clients, 1 API node, 1 worker on a temp PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pg import start_cluster

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO.parent / "shared" / "data" / "video" / "grid_bbaf2n.mpg"


@pytest.mark.slow
def test_load_bench_small_run(tmp_path: Path) -> None:
    if not CLIP.is_file():
        pytest.skip(f"clip missing: {CLIP}")
    start_cluster().stop()  # skip (or fail in CI) here when PostgreSQL is not installed
    out = tmp_path / "load.json"
    argv = [
        "--api-nodes",
        "1",
        "--workers",
        "1",
        "--clients",
        "2",
        "--uploads",
        "3",
        "--max-seconds",
        "240",
        "--clip",
        str(CLIP),
        "--output",
        str(out),
    ]
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "load.py"), *argv], capture_output=True, text=True, timeout=400
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["nothing_lost"] and result["lost"] == 0
    assert result["uploads"]["accepted"] == 3 and result["processing"]["completed"] == 3
    assert result["uploads"]["latency_ms_p95"] is not None
    assert "nothing lost" in run.stdout and "yes" in run.stdout
