"""Load benchmark: N concurrent clients upload short clips to API nodes on 127.0.0.1 while workers process them.

Reports upload throughput, processing throughput, p50/p95 latency of the API (uploads, and status/list/stats reads
sampled while the workers are busy), and that nothing was lost (every accepted upload ends completed). Bounded in
count (--uploads) and time (--max-seconds). Prints a table and writes bench/results/load.json.

    python bench/load.py                               # cluster: temp PostgreSQL, 2 API nodes, 2 workers
    python bench/load.py --backend sqlite              # one node: SQLite + local workers
    python bench/load.py --target http://host:8000     # an already running server (nothing started)

Processing is a real transcode with protect_video=false / protect_audio=false unless --protect is given, so the
figure measures the server (queue, storage, API), not the attack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CLIP = REPO.parent / "shared" / "data" / "video" / "grid_bbaf2n.mpg"
RESULTS = REPO / "bench" / "results" / "load.json"
CLI = [sys.executable, "-c", "import sys; from media_cleaner.cli import main; sys.exit(main())"]
TERMINAL = {"completed", "failed", "cancelled"}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@dataclass
class Samples:
    upload_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)  # GET /task, /tasks, /stats while workers are busy
    errors: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)


class Servers:
    """Starts the nodes for a run and stops them afterwards."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pg: Any = None
        self.tmp = Path(tempfile.mkdtemp(prefix="mc-load-"))
        self.urls: list[str] = []

    def _spawn(self, verb: str, extra: list[str], env: dict[str, str], home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        log = open(home / "node.log", "wb")  # noqa: SIM115 - lives as long as the process
        env = {**env, "MEDIA_CLEANER_BASE_DIR": str(home)}
        self.procs.append(subprocess.Popen([*CLI, verb, *extra], env=env, stdout=log, stderr=log, cwd=home))

    def start(self) -> list[str]:
        from media_cleaner.cluster.pgtemp import free_port

        a = self.args
        env = {
            **os.environ,
            "MEDIA_CLEANER_MODEL_CACHE_DIR": str(REPO / ".venv" / "model_cache"),
            "MEDIA_CLEANER_TORCH_THREADS": "1",
            "MEDIA_CLEANER_MAX_CONCURRENT_UPLOADS": "64",
        }
        if a.backend == "postgres":
            from media_cleaner.cluster.pgtemp import start_temp_postgres

            self.pg = start_temp_postgres()
            env["MEDIA_CLEANER_DATABASE_URL"] = self.pg.create_database("media_cleaner_load")
            env["MEDIA_CLEANER_STORAGE_URL"] = f"shared://{self.tmp / 'shared'}"
            for i in range(a.api_nodes):
                port = free_port()
                self._spawn("api", ["--host", "127.0.0.1", "--port", str(port)], env, self.tmp / f"api{i}")
                self.urls.append(f"http://127.0.0.1:{port}")
            for i in range(a.workers):
                self._spawn("worker", ["--concurrency", "1"], env, self.tmp / f"worker{i}")
        else:
            port = free_port()
            env["MEDIA_CLEANER_BASE_DIR"] = str(self.tmp / "node")
            self._spawn(
                "api", ["--host", "127.0.0.1", "--port", str(port), "--workers", str(a.workers)], env, self.tmp / "node"
            )
            self.urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 300
        for url in self.urls:
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        while time.monotonic() < deadline:  # workers load their models before they count as ready
            stats = httpx.get(f"{self.urls[0]}/stats", timeout=5).json()["workers"]
            if stats.get("ready", stats["alive"]) >= a.workers:
                break
            time.sleep(1.0)
        else:
            raise RuntimeError(f"workers not ready; logs under {self.tmp}")
        return self.urls

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.pg is not None:
            self.pg.stop()

    def cleanup(self, keep: bool) -> None:
        if keep:
            print(f"node logs kept under {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


async def client(
    n: int,
    urls: list[str],
    clip: bytes,
    name: str,
    fields: dict[str, str],
    budget: dict[str, int],
    s: Samples,
    deadline: float,
) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        while budget["left"] > 0 and time.monotonic() < deadline:
            budget["left"] -= 1
            url = urls[(n + budget["left"]) % len(urls)]
            t0 = time.perf_counter()
            try:
                reply = await http.post(f"{url}/upload", files={"file": (name, clip)}, data=fields)
            except httpx.HTTPError as exc:
                s.errors.append(f"upload: {type(exc).__name__}: {exc}")
                continue
            if reply.status_code == 202:
                s.upload_ms.append((time.perf_counter() - t0) * 1000)
                s.accepted.append(reply.json()["task_id"])
            else:
                s.errors.append(f"upload: HTTP {reply.status_code}: {reply.text[:200]}")


async def prober(urls: list[str], s: Samples, busy: asyncio.Event, stop: asyncio.Event) -> None:
    """Reads the API keeps answering while the workers transcode: one request every 50 ms, round-robin."""
    async with httpx.AsyncClient(timeout=60) as http:
        i = 0
        while not stop.is_set():
            url = urls[i % len(urls)]
            paths = ["/stats", "/tasks?limit=20"] + ([f"/task/{s.accepted[-1]}"] if s.accepted else [])
            path = paths[i % len(paths)]
            t0 = time.perf_counter()
            try:
                reply = await http.get(url + path)
                if busy.is_set() and reply.status_code == 200:
                    s.read_ms.append((time.perf_counter() - t0) * 1000)
            except httpx.HTTPError as exc:
                s.errors.append(f"read {path}: {type(exc).__name__}")
            i += 1
            await asyncio.sleep(0.05)


async def watch_busy(urls: list[str], busy: asyncio.Event, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        while not stop.is_set():
            try:
                workers = (await http.get(f"{urls[0]}/stats")).json()["workers"]
                busy.set() if workers["busy"] > 0 else busy.clear()
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.25)


async def run(args: argparse.Namespace, urls: list[str]) -> dict[str, Any]:
    clip = args.clip.read_bytes()
    fields = {} if args.protect else {"protect_video": "false", "protect_audio": "false"}
    s = Samples()
    busy, stop = asyncio.Event(), asyncio.Event()
    started = time.monotonic()
    deadline = started + args.max_seconds
    side = [asyncio.create_task(prober(urls, s, busy, stop)), asyncio.create_task(watch_busy(urls, busy, stop))]
    budget = {"left": args.uploads}
    await asyncio.gather(
        *(client(n, urls, clip, args.clip.name, fields, budget, s, deadline) for n in range(args.clients))
    )
    upload_done = time.monotonic()
    final: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(timeout=60) as http:
        while time.monotonic() < deadline and len(final) < len(s.accepted):
            for task_id in [t for t in s.accepted if t not in final]:
                reply = await http.get(f"{urls[0]}/task/{task_id}")
                if reply.status_code == 200 and reply.json()["status"] in TERMINAL:
                    final[task_id] = reply.json()
            await asyncio.sleep(0.5)
        gone = [t for t in s.accepted if t not in final and (await http.get(f"{urls[0]}/task/{t}")).status_code == 404]
        stats = (await http.get(f"{urls[0]}/stats")).json()
    stop.set()
    await asyncio.gather(*side)
    finished = time.monotonic()
    completed = [t for t in final.values() if t["status"] == "completed"]
    missing = [t for t in s.accepted if t not in final]
    processing = [t["finished_at"] for t in completed]
    span = finished - started
    return {
        "config": {
            "backend": args.backend if not args.target else "external",
            "api_nodes": len(urls),
            "workers": args.workers,
            "clients": args.clients,
            "uploads_requested": args.uploads,
            "max_seconds": args.max_seconds,
            "clip": args.clip.name,
            "clip_bytes": len(clip),
            "protect": args.protect,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "uploads": {
            "accepted": len(s.accepted),
            "errors": len(s.errors),
            "seconds": round(upload_done - started, 2),
            "per_second": round(len(s.accepted) / max(upload_done - started, 1e-9), 2),
            "latency_ms_p50": _r(pct(s.upload_ms, 50)),
            "latency_ms_p95": _r(pct(s.upload_ms, 95)),
        },
        "api_reads_while_busy": {
            "samples": len(s.read_ms),
            "latency_ms_p50": _r(pct(s.read_ms, 50)),
            "latency_ms_p95": _r(pct(s.read_ms, 95)),
            "latency_ms_max": _r(max(s.read_ms) if s.read_ms else None),
        },
        "processing": {
            "completed": len(completed),
            "failed": sum(1 for t in final.values() if t["status"] == "failed"),
            "not_finished_in_time": len(missing),
            "tasks_per_minute": round(len(completed) / span * 60, 2),
            "mean_task_seconds": _r(statistics.mean(_durations(completed))) if completed else None,
            "wall_seconds": round(span, 2),
            "last_finished_at": max(processing) if processing else None,
        },
        "lost": len(gone),  # accepted (202) but unknown to the API afterwards
        "nothing_lost": not missing and len(completed) == len(s.accepted),
        "stats_at_end": stats["queue"],
        "errors_sample": s.errors[:5],
    }


def _durations(tasks: list[dict[str, Any]]) -> list[float]:
    from datetime import datetime

    out = []
    for t in tasks:
        if t.get("started_at") and t.get("finished_at"):
            out.append(
                (datetime.fromisoformat(t["finished_at"]) - datetime.fromisoformat(t["started_at"])).total_seconds()
            )
    return out or [0.0]


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def print_table(result: dict[str, Any]) -> None:
    c, u, r, p = result["config"], result["uploads"], result["api_reads_while_busy"], result["processing"]
    rows = [
        ("setup", f"{c['backend']}: {c['api_nodes']} API node(s), {c['workers']} worker(s), {c['clients']} clients"),
        ("uploads accepted / errors", f"{u['accepted']} / {u['errors']} in {u['seconds']} s ({u['per_second']}/s)"),
        ("upload latency p50 / p95", f"{u['latency_ms_p50']} / {u['latency_ms_p95']} ms"),
        (
            "API reads while busy p50 / p95 / max",
            f"{r['latency_ms_p50']} / {r['latency_ms_p95']} / {r['latency_ms_max']} ms ({r['samples']} samples)",
        ),
        ("completed / failed / unfinished", f"{p['completed']} / {p['failed']} / {p['not_finished_in_time']}"),
        ("processing throughput", f"{p['tasks_per_minute']} tasks/min (mean {p['mean_task_seconds']} s per task)"),
        ("nothing lost", "yes" if result["nothing_lost"] else "NO"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--target", help="benchmark this running server instead of starting nodes")
    parser.add_argument("--api-nodes", type=int, default=2, help="API processes (postgres backend)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--clients", type=int, default=8, help="concurrent uploading clients")
    parser.add_argument("--uploads", type=int, default=40, help="total uploads (bound on count)")
    parser.add_argument("--max-seconds", type=float, default=300, help="bound on time for the whole run")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--protect", action="store_true", help="run the real protection (slow on CPU)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    servers = None if args.target else Servers(args)
    result: dict[str, Any] | None = None
    try:
        urls = [args.target.rstrip("/")] if args.target else servers.start()  # type: ignore[union-attr]
        result = asyncio.run(run(args, urls))
    finally:
        if servers is not None:
            servers.stop()
            servers.cleanup(keep=result is None or not result["nothing_lost"])
    print_table(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON: {args.output}")
    return 0 if result["nothing_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
