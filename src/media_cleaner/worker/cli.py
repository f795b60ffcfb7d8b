"""`media-cleaner worker [--concurrency N] [--device cuda:0]`: worker processes only (no HTTP), for a node that
shares the database and storage with an API node."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from media_cleaner.config import Settings


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run processing workers", description="Run local worker processes.")
    p.add_argument("--concurrency", type=int, help="worker processes (default: max_concurrent_tasks)")
    p.add_argument("--device", help="torch device for the protectors, e.g. cpu or cuda:0 (default from config)")
    p.set_defaults(handler=_worker)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from media_cleaner.logs import configure_logging
    from media_cleaner.worker import WorkerPool

    if args.concurrency is not None and args.concurrency < 1:
        print("--concurrency must be >= 1")
        return 2
    from media_cleaner.jobs.backend import backend_name

    if backend_name(settings) == "procrastinate":  # PostgreSQL: a Procrastinate worker (issue 8: cluster mode)
        from media_cleaner.cluster.devices import normalise_device
        from media_cleaner.cluster.worker_node import run_worker_node

        device = normalise_device(args.device) if args.device else None
        return run_worker_node(settings, concurrency=args.concurrency or 1, device=device)
    configure_logging(settings, server=False, queue=True, console=True)
    pool = WorkerPool(settings, args.concurrency, device=args.device).start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"{pool.size} worker(s) running on {pool.settings.device}; Ctrl-C to stop")
    while not done.wait(1.0):
        pass
    pool.stop()
    return 0
