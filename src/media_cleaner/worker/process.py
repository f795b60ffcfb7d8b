"""The worker process: spawned (never forked: torch and threads), loads protectors once, then claims tasks."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from media_cleaner.config import Settings
from media_cleaner.jobs.backend import open_store
from media_cleaner.logs import QUEUE_LOGGER, configure_child_logging
from media_cleaner.storage import open_storage
from media_cleaner.worker.runner import WorkerContext, run_task

log = logging.getLogger(QUEUE_LOGGER + ".worker")


def new_worker_id(slot: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{slot}:{os.urandom(3).hex()}"


def worker_main(settings_data: dict[str, Any], worker_id: str, log_queue: Any) -> None:
    """Entry point of a spawned worker. Stops on SIGTERM (a running task goes back to the queue) or when its
    parent disappears. No lock is shared with other workers, so killing one (-9) cannot wedge the rest."""
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = Settings(**settings_data)
    if log_queue is not None:
        configure_child_logging(log_queue, settings)
    parent = os.getppid()
    store = open_store(settings)
    storage = open_storage(settings)
    store.register_worker(worker_id, socket.gethostname(), os.getpid(), settings.device)
    log.info("worker %s starting (device %s); loading models", worker_id, settings.device)
    t0 = time.monotonic()
    try:
        from media_cleaner import engine

        if settings.torch_threads:
            import torch

            torch.set_num_threads(settings.torch_threads)
        try:
            protectors = engine.load_protectors(settings)
        except Exception:
            log.exception(
                "worker %s could not load its models; exiting (the supervisor retries with backoff)", worker_id
            )
            raise
        for note in protectors.notes:
            log.warning("worker %s: %s", worker_id, note)
        store.worker_heartbeat(worker_id, models_loaded=True)
        log.info("worker %s ready in %.1f s", worker_id, time.monotonic() - t0)
        ctx = WorkerContext(settings, store, storage, worker_id, protectors, stop)
        _loop(ctx, parent)
    finally:
        try:
            store.unregister_worker(worker_id)
        finally:
            log.info("worker %s stopped", worker_id)


def _loop(ctx: WorkerContext, parent: int) -> None:
    last_beat = 0.0
    while not ctx.stop.is_set():
        if os.getppid() != parent:  # orphaned (the supervisor was killed): do not keep claiming work
            log.warning("worker %s lost its parent; exiting", ctx.worker_id)
            return
        now = time.monotonic()
        if now - last_beat > 2.0:
            ctx.store.worker_heartbeat(ctx.worker_id)
            last_beat = now
        task = ctx.store.claim(ctx.worker_id)
        if task is None:
            ctx.stop.wait(ctx.settings.poll_interval_seconds)
            continue
        run_task(ctx, task)
        last_beat = 0.0
