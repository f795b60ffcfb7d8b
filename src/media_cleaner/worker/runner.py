"""Run one claimed task: engine.protect with DB-backed progress and cancellation, then publish or clean up."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from media_cleaner.config import Settings
from media_cleaner.errors import Cancelled, MediaCleanerError
from media_cleaner.jobs.models import Task
from media_cleaner.jobs.store import TaskStore
from media_cleaner.logs import QUEUE_LOGGER, task_logger
from media_cleaner.progress import CancelToken
from media_cleaner.storage import Storage

log = logging.getLogger(QUEUE_LOGGER + ".worker")
PROGRESS_EVERY_S = 0.5  # DB writes for progress are throttled to this
PROBE_EVERY_S = 0.5  # cancel checks hit the DB at most this often


@dataclass
class WorkerContext:
    settings: Settings
    store: TaskStore
    storage: Storage
    worker_id: str
    protectors: Any
    stop: Any  # threading.Event or multiprocessing Event: set when the worker must shut down


class _Lease:
    """Heartbeat thread for one task; notices when the task stopped being ours."""

    def __init__(self, ctx: WorkerContext, task_id: str) -> None:
        self.ctx, self.task_id = ctx, task_id
        self.lost = threading.Event()
        self._done = threading.Event()
        interval = max(min(ctx.settings.heartbeat_timeout_seconds / 4, 5.0), 0.2)
        self._thread = threading.Thread(target=self._beat, args=(interval,), name="heartbeat", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _beat(self, interval: float) -> None:
        while not self._done.wait(interval):
            try:
                if not self.ctx.store.heartbeat(self.task_id, self.ctx.worker_id):
                    self.lost.set()
                self.ctx.store.worker_heartbeat(self.ctx.worker_id)
            except Exception:  # a busy DB must not kill the task; the next beat retries
                log.warning("heartbeat failed", exc_info=True, extra={"task_id": self.task_id})


def _throttled_probe(ctx: WorkerContext, task_id: str, lease: _Lease) -> Callable[[], bool]:
    last = [0.0, False]

    def probe() -> bool:
        if ctx.stop.is_set() or lease.lost.is_set():
            return True
        now = time.monotonic()
        if now - last[0] >= PROBE_EVERY_S:
            last[0] = now
            try:
                last[1] = not ctx.store.still_owned(task_id, ctx.worker_id)
            except Exception:
                last[1] = False  # unknown is not "cancelled"
        return bool(last[1])

    return probe


def _progress_writer(ctx: WorkerContext, task_id: str) -> Callable[[float, str], None]:
    state: dict[str, Any] = {"at": 0.0, "phase": None}

    def progress(fraction: float, phase: str) -> None:
        now = time.monotonic()
        if phase == state["phase"] and now - state["at"] < PROGRESS_EVERY_S:
            return
        state.update(at=now, phase=phase)
        try:
            ctx.store.set_progress(task_id, ctx.worker_id, fraction, phase)
        except Exception:
            log.debug("progress write skipped", exc_info=True, extra={"task_id": task_id})

    return progress


def _public_report(report: dict[str, Any], task: Task) -> dict[str, Any]:
    """The report without server paths: users see their own file names only."""
    report["input"] = task.original_filename
    report["output"] = task.download_name
    if isinstance(report.get("probe"), dict):
        report["probe"].pop("path", None)
    return report


def run_task(ctx: WorkerContext, task: Task) -> str:
    """Process `task` (already claimed by this worker). Returns the outcome: completed/failed/cancelled/released."""
    from media_cleaner import engine  # imported here: the worker process pays for torch, nobody else

    tlog = task_logger(log, task.id)
    storage, store = ctx.storage, ctx.store
    source = storage.local_path("input", task.input_name)
    # One scratch dir per attempt: a run that lost its task (e.g. a stalled heartbeat) cleans up only its own files,
    # never those of the attempt that took over.
    scratch = f"{task.id}.{task.attempts}"
    produced = storage.work_dir(scratch) / task.output_name
    options = engine.ProtectionOptions(
        epsilon=task.epsilon,
        audio_level=task.audio_level,
        audio_objective=task.audio_objective or "untargeted",  # a Task built in memory, never flushed, has None
        audio_phrase=task.audio_phrase or "",
        protect_video=task.protect_video,
        protect_audio=task.protect_audio,
        keep_metadata=ctx.settings.keep_metadata,
        measure_efficacy=ctx.settings.measure_efficacy,
    )
    tlog.info(
        "start attempt %d on %s: %s (%d bytes) epsilon=%g audio=%s objective=%s video=%s audio_on=%s",
        task.attempts,
        ctx.worker_id,
        task.original_filename,
        task.input_size_bytes,
        task.epsilon,
        task.audio_level,
        task.audio_objective,
        task.protect_video,
        task.protect_audio,
    )
    started = time.monotonic()
    try:
        with _Lease(ctx, task.id) as lease:
            cancel = CancelToken(probe=_throttled_probe(ctx, task.id, lease))
            report = engine.protect(
                source,
                produced,
                options,
                _progress_writer(ctx, task.id),
                cancel,
                settings=ctx.settings,
                protectors=ctx.protectors,
            )
            cancel.check()  # a cancel that arrived during the final mux still wins
            final = storage.publish_output(produced, task.output_name)
            size = final.stat().st_size
            if (
                store.complete(task.id, ctx.worker_id, output_size=size, report=_public_report(report.to_dict(), task))
                is None
            ):
                storage.delete("output", task.output_name)
                tlog.info("finished but the task was taken away meanwhile; output dropped")
                return "cancelled"
        tlog.info("completed in %.1f s, output %s (%d bytes)", time.monotonic() - started, task.output_name, size)
        return "completed"
    except Cancelled:
        if ctx.stop.is_set() and store.release(task.id, ctx.worker_id):
            tlog.info("released back to the queue (worker shutting down)")
            return "released"
        current = store.get(task.id)
        tlog.info("stopped after %.1f s: task is %s", time.monotonic() - started, current.status if current else "gone")
        return "cancelled"
    except MediaCleanerError as exc:
        store.fail(task.id, ctx.worker_id, exc.code, exc.message)
        tlog.warning("failed: %s: %s", exc.code, exc.message)
        return "failed"
    except Exception as exc:
        store.fail(task.id, ctx.worker_id, "internal_error", f"{type(exc).__name__}: {exc}")
        tlog.exception("failed with an unexpected error")
        return "failed"
    finally:
        storage.clear_work_dir(scratch)
        try:
            store.worker_idle(ctx.worker_id)
        except Exception:
            tlog.warning("could not mark the worker idle", exc_info=True)
