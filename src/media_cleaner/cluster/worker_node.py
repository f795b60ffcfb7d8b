"""`media-cleaner worker`: a worker process on any node. PostgreSQL -> a Procrastinate worker (jobs from every API
node); SQLite -> the local executor's pool on this machine. One process per GPU: `--device cuda:N`."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from media_cleaner.config import Settings
from media_cleaner.jobs.backend import open_store
from media_cleaner.jobs.migrate import upgrade
from media_cleaner.logs import QUEUE_LOGGER, configure_logging
from media_cleaner.storage import open_storage

log = logging.getLogger(QUEUE_LOGGER + ".node")


def run_worker_node(settings: Settings, *, concurrency: int = 1, device: str | None = None) -> int:
    if device:
        settings = settings.model_copy(update={"device": device})
    upgrade(settings.effective_database_url)
    from media_cleaner.jobs.backends.procrastinate_backend import is_postgres

    if is_postgres(settings.effective_database_url):
        if concurrency > 1:
            return _run_many(settings, concurrency)
        return _run_procrastinate(settings, 1)
    return _run_local(settings, concurrency)


def _child_main(settings_data: dict[str, Any]) -> None:
    sys.exit(_run_procrastinate(Settings(**settings_data), 1))


class WorkerProcesses:
    """N Procrastinate worker processes (spawned, like the local pool), each with its own models and one job at a
    time, respawned if one dies. Same `start()` / `stop()` / `size` as `worker.WorkerPool`, so `run_server.py
    --workers N` and `media-cleaner api --workers N` use it when the database is PostgreSQL."""

    def __init__(self, settings: Settings, size: int) -> None:
        self.settings, self.size = settings, size
        self._ctx = mp.get_context("spawn")
        self._data = settings.model_dump(mode="json")
        self._procs: list[Any] = [None] * size
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WorkerProcesses:
        self._supervise_once()
        self._thread = threading.Thread(target=self._supervise, name="worker-processes", daemon=True)
        self._thread.start()
        return self

    def _supervise_once(self) -> None:
        for i, proc in enumerate(self._procs):
            if proc is None or not proc.is_alive():
                if proc is not None:
                    log.warning("worker process %d exited (%s); restarting", proc.pid, proc.exitcode)
                self._procs[i] = self._ctx.Process(target=_child_main, args=(self._data,), name=f"worker-{i}")
                self._procs[i].start()

    def _supervise(self) -> None:
        while not self._halt.wait(2.0):
            self._supervise_once()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.is_alive()]

    def stop(self) -> None:
        if self._halt.is_set():
            return
        self._halt.set()
        if self._thread:
            self._thread.join(timeout=5)
        for proc in self._procs:
            if proc is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)  # each finishes or hands back its job (cancel_grace_seconds)
        for proc in self._procs:
            if proc is not None:
                proc.join(timeout=self.settings.cancel_grace_seconds + 30)
                if proc.is_alive():
                    proc.kill()


def _run_many(settings: Settings, count: int) -> int:
    """`media-cleaner worker --concurrency N` on PostgreSQL: N processes until SIGTERM/SIGINT."""
    configure_logging(settings, server=False, queue=True, console=True)
    group = WorkerProcesses(settings, count).start()
    try:
        _wait_for_signal()
    finally:
        group.stop()
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def _run_local(settings: Settings, concurrency: int) -> int:
    """SQLite: the server's own worker pool (spawned processes polling the tasks table), without the API."""
    from media_cleaner.worker import WorkerPool

    configure_logging(settings, server=False, queue=True, console=True)
    pool = WorkerPool(settings, size=concurrency, device=settings.device).start()
    log.info(
        "local worker pool of %d on %s (database %s)", concurrency, settings.device, settings.effective_database_url
    )
    try:
        _wait_for_signal()
    finally:
        pool.stop()
    return 0


def _run_procrastinate(settings: Settings, concurrency: int) -> int:
    from media_cleaner import engine
    from media_cleaner.jobs.backends.procrastinate_backend import QUEUE, Upkeep, WorkerRuntime, build_app

    configure_logging(settings, server=False, queue=True, console=True)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    store, storage = open_store(settings), open_storage(settings)
    host, pid = socket.gethostname(), os.getpid()
    slot_ids = [f"{host}:{pid}:{i}" for i in range(concurrency)]
    for slot_id in slot_ids:
        store.register_worker(slot_id, host, pid, settings.device)
    t0 = time.monotonic()
    try:
        protectors = engine.load_protectors(settings)  # once per process; every job on this worker reuses them
    except Exception:
        log.exception("worker %s:%d could not load its models; exiting", host, pid)
        for slot_id in slot_ids:
            store.unregister_worker(slot_id)
        raise
    for note in protectors.notes:
        log.warning("%s", note)
    for slot_id in slot_ids:
        store.worker_heartbeat(slot_id, models_loaded=True)
    log.info(
        "worker %s:%d ready on %s in %.1f s (concurrency %d)",
        host,
        pid,
        settings.device,
        time.monotonic() - t0,
        concurrency,
    )
    # Jobs run in threads and defer/list synchronously: they get their own (sync) pool; the worker loop the async one.
    sync_app = build_app(settings, pool_max=concurrency + 2).open()
    rt = WorkerRuntime(settings, store, storage, protectors, sync_app, slot_ids)
    worker_app = build_app(settings, pool_max=concurrency + 4)
    heartbeat = settings.heartbeat_timeout_seconds

    async def main() -> None:
        async with worker_app.open_async():
            upkeep = asyncio.create_task(Upkeep(rt, worker_app).run(), name="media-cleaner upkeep")
            try:
                await worker_app.run_worker_async(
                    queues=[QUEUE],
                    concurrency=concurrency,
                    name=f"media-cleaner@{host}:{pid}",
                    additional_context={"runtime": rt},
                    update_heartbeat_interval=max(heartbeat / 4, 0.5),
                    stalled_worker_timeout=heartbeat,
                    fetch_job_polling_interval=2.0,
                    abort_job_polling_interval=1.0,
                    shutdown_graceful_timeout=settings.cancel_grace_seconds,
                    install_signal_handlers=True,
                )
            finally:
                rt.stop.set()
                upkeep.cancel()

    try:
        asyncio.run(main())
    finally:
        rt.stop.set()
        sync_app.close()
        for slot_id in slot_ids:
            store.unregister_worker(slot_id)
        log.info("worker %s:%d stopped", host, pid)
    return 0
