"""Supervisor of local worker processes: spawn N, respawn the dead, recover their tasks, enforce timeouts,
and kill a worker that does not stop within `cancel_grace_seconds` of its task being cancelled or timed out.

Runs as a thread inside the server process (or `media-cleaner worker`); it never imports torch itself.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from media_cleaner.config import Settings
from media_cleaner.jobs.backend import open_store
from media_cleaner.jobs.models import TaskStatus, utcnow
from media_cleaner.logs import QUEUE_LOGGER, QueueDrain
from media_cleaner.storage import open_storage
from media_cleaner.worker.process import new_worker_id, worker_main

log = logging.getLogger(QUEUE_LOGGER + ".supervisor")
CHECK_EVERY_S = 0.5
SWEEP_EVERY_S = 2.0
CRASH_WINDOW_S = 30.0  # a worker dying this soon after start counts as a crash loop


@dataclass
class Slot:
    index: int
    process: Any = None
    worker_id: str = ""
    started: float = 0.0
    crashes: int = 0
    not_before: float = 0.0
    kill_reason: str | None = None
    drain: Any = None
    history: list[int] = field(default_factory=list)  # pids, for tests and logs


class WorkerPool:
    def __init__(self, settings: Settings, size: int | None = None, *, device: str | None = None) -> None:
        self.settings = settings if device is None else settings.model_copy(update={"device": device})
        self.size = size if size is not None else settings.max_concurrent_tasks
        self.store = open_store(self.settings)
        self.storage = open_storage(self.settings)
        self._ctx = mp.get_context("spawn")
        self.slots = [Slot(i) for i in range(self.size)]
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> WorkerPool:
        self._sweep()  # tasks orphaned by a previous run whose heartbeat is already stale
        for slot in self.slots:
            self._spawn(slot)
        self._thread = threading.Thread(target=self._monitor, name="worker-supervisor", daemon=True)
        self._thread.start()
        log.info("started %d worker process(es)", self.size)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask workers to stop (running tasks go back to the queue), then kill what is left."""
        self._halt.set()
        if self._thread:
            self._thread.join(timeout=5)
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.terminate()  # SIGTERM: the worker releases its task and exits
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(max(deadline - time.monotonic(), 0.1))
        leftovers = []
        for slot in self.slots:
            if slot.process is not None and slot.process.is_alive():
                slot.process.kill()
                slot.process.join(5)
                leftovers.append(slot.worker_id)
        if leftovers:
            self.store.recover(worker_ids=leftovers)
            for worker_id in leftovers:
                self.store.unregister_worker(worker_id)
        for slot in self.slots:
            if slot.drain is not None:
                slot.drain.close()
                slot.drain = None
        log.info("worker pool stopped")

    # -- introspection --------------------------------------------------------------------------------------
    def pids(self) -> list[int]:
        with self._lock:
            return [s.process.pid for s in self.slots if s.process is not None and s.process.is_alive()]

    def alive(self) -> int:
        return len(self.pids())

    # -- internals ------------------------------------------------------------------------------------------
    def _spawn(self, slot: Slot) -> None:
        worker_id = new_worker_id(slot.index)
        # One log queue per worker process: a worker killed with -9 can only wedge its own queue's lock.
        log_queue = self._ctx.Queue()
        drain = QueueDrain(log_queue)
        process = self._ctx.Process(
            target=worker_main,
            args=(self.settings.model_dump(mode="json"), worker_id, log_queue),
            name=f"worker-{slot.index}",
            daemon=True,
        )
        process.start()
        with self._lock:
            slot.process, slot.worker_id, slot.started, slot.kill_reason = process, worker_id, time.monotonic(), None
            slot.drain = drain
            slot.history.append(process.pid or 0)
        log.info("spawned worker %s (pid %s)", worker_id, process.pid)

    def _monitor(self) -> None:
        last_sweep = 0.0
        while not self._halt.wait(CHECK_EVERY_S):
            try:
                for slot in self.slots:
                    self._check(slot)
                if time.monotonic() - last_sweep >= SWEEP_EVERY_S:
                    self._sweep()
                    last_sweep = time.monotonic()
            except Exception:
                log.exception("supervisor iteration failed")

    def _check(self, slot: Slot) -> None:
        process = slot.process
        if process is None:
            if time.monotonic() >= slot.not_before and not self._halt.is_set():
                self._spawn(slot)
            return
        if not process.is_alive():
            self._reap(slot)
            return
        task_id = self.store.worker_task(slot.worker_id)
        if not task_id:
            return
        task = self.store.get(task_id)
        if task is None or (task.status == TaskStatus.PROCESSING and task.worker_id == slot.worker_id):
            return
        # The task was cancelled, timed out or handed to another worker, yet this worker still runs it.
        since = task.cancel_requested_at or task.finished_at or utcnow()
        if (utcnow() - since).total_seconds() >= self.settings.cancel_grace_seconds:
            log.warning(
                "worker %s ignored the end of task %s (%s) for %.0f s; killing it",
                slot.worker_id,
                task_id,
                task.status,
                self.settings.cancel_grace_seconds,
                extra={"task_id": task_id},
            )
            slot.kill_reason = f"task {task_id} {task.status}"
            os.kill(process.pid, signal.SIGKILL)
            process.join(5)
            self.storage.clear_work_dir(task_id)
            self._reap(slot)

    def _reap(self, slot: Slot) -> None:
        """A worker process ended: recover its task now (no need to wait for the heartbeat to go stale)."""
        process, worker_id = slot.process, slot.worker_id
        code = process.exitcode
        recovered = self.store.recover(worker_ids=[worker_id])
        # Partial output of the dead run: a failed task's is removed now; a requeued task's next run may already
        # have started in the same work dir, and clears it when it ends.
        for task_id in recovered.failed:
            self.storage.clear_work_dir(task_id)
        self.store.unregister_worker(worker_id)
        lived = time.monotonic() - slot.started
        slot.crashes = slot.crashes + 1 if lived < CRASH_WINDOW_S and not slot.kill_reason else 0
        delay = min(2.0 ** max(slot.crashes - 1, 0), 60.0) if slot.crashes else 0.0
        for task_id in recovered.requeued:
            log.warning("worker %s died while running this task; requeued", worker_id, extra={"task_id": task_id})
        for task_id in recovered.failed:
            log.warning(
                "worker %s died while running this task; out of attempts: failed", worker_id, extra={"task_id": task_id}
            )
        log.warning(
            "worker %s exited (code %s, %s) after %.1f s; requeued %s, failed %s; respawn in %.0f s",
            worker_id,
            code,
            slot.kill_reason or "unexpected",
            lived,
            recovered.requeued,
            recovered.failed,
            delay,
        )
        if slot.drain is not None:
            slot.drain.close()
        with self._lock:
            slot.process, slot.drain, slot.not_before = None, None, time.monotonic() + delay
        if not self._halt.is_set() and delay == 0:
            self._spawn(slot)

    def _sweep(self) -> None:
        """Stale leases (any worker on any host) and timeouts."""
        stale = utcnow() - timedelta(seconds=self.settings.heartbeat_timeout_seconds)
        recovered = self.store.recover(stale_before=stale)
        if recovered.requeued or recovered.failed:
            log.warning("recovered stale tasks: requeued %s, failed %s", recovered.requeued, recovered.failed)
        for task_id in recovered.failed:  # terminal: nobody reuses the work dir (a requeued run clears it itself)
            self.storage.clear_work_dir(task_id)
        for task_id in recovered.requeued + recovered.failed:
            log.warning("its worker stopped sending heartbeats; recovered", extra={"task_id": task_id})
        expired = self.store.expire(timedelta(hours=self.settings.task_timeout_hours))
        for task_id in expired:
            log.warning(
                "task timed out (task_timeout_hours=%g)", self.settings.task_timeout_hours, extra={"task_id": task_id}
            )
