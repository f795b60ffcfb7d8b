"""Server logging: `server_logs/server.log` (API) and `server_logs/queue.log` (queue + workers), rotating.

Spawned worker processes never open the files: they send records through a multiprocessing queue to the
supervising process, whose listener writes them (one writer per file, so rotation is safe).
Every record may carry `task_id` (pass `extra={"task_id": ...}` or use `task_logger`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import threading
import time
from typing import Any

from media_cleaner.config import Settings

SERVER_LOGGER = "media_cleaner.server"
QUEUE_LOGGER = "media_cleaner.queue"
_MAX_BYTES = 10 * 1024 * 1024
_BACKUPS = 5
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s [task=%(task_id)s] %(message)s"


class _TaskIdDefault(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "task_id"):
            record.task_id = "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "task_id": None if getattr(record, "task_id", "-") == "-" else record.task_id,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _formatter(settings: Settings) -> logging.Formatter:
    if settings.log_json:
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter(_TEXT_FORMAT)
    formatter.converter = time.gmtime  # UTC timestamps in both forms
    return formatter


def _file_handler(settings: Settings, filename: str) -> logging.Handler:
    directory = settings.path("log")
    directory.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        directory / filename, maxBytes=_MAX_BYTES, backupCount=_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(_formatter(settings))
    handler.addFilter(_TaskIdDefault())
    handler.set_name(f"media_cleaner:{filename}")
    return handler


def _replace_handler(logger: logging.Logger, handler: logging.Handler) -> None:
    for old in list(logger.handlers):
        if old.get_name() == handler.get_name():
            logger.removeHandler(old)
            old.close()
    logger.addHandler(handler)


def configure_logging(settings: Settings, *, server: bool = True, queue: bool = True, console: bool = False) -> None:
    """Attach the rotating files (idempotent: calling again replaces the handlers)."""
    level = logging.DEBUG if settings.debug else logging.INFO
    for wanted, name, filename in ((server, SERVER_LOGGER, "server.log"), (queue, QUEUE_LOGGER, "queue.log")):
        if not wanted:
            continue
        logger = logging.getLogger(name)
        logger.setLevel(level)
        _replace_handler(logger, _file_handler(settings, filename))
        if console:
            stream = logging.StreamHandler()
            stream.setFormatter(_formatter(settings))
            stream.addFilter(_TaskIdDefault())
            stream.set_name(f"media_cleaner:console:{name}")
            _replace_handler(logger, stream)


class _Dispatch(logging.Handler):
    """Listener side: hand a worker's record to the same-named logger of this process (and its file)."""

    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


class QueueDrain:
    """Listener side for one worker's log queue. Unlike `QueueListener.stop()`, `close()` never blocks: a worker
    killed with -9 may have left the queue's lock held, so nothing here writes to the queue."""

    def __init__(self, log_queue: Any) -> None:
        self.queue = log_queue
        self._done = threading.Event()
        self._dispatch = _Dispatch()
        self._thread = threading.Thread(target=self._run, name="log-drain", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                record = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self._done.is_set():
                    return
                continue
            except (EOFError, OSError, ValueError):
                return
            self._dispatch.handle(record)

    def close(self, timeout: float = 1.0) -> None:
        self._done.set()
        self._thread.join(timeout)
        self.queue.cancel_join_thread()
        self.queue.close()


def configure_child_logging(log_queue: Any, settings: Settings) -> None:
    """In a spawned worker: every `media_cleaner` record goes to the parent through `log_queue`."""
    root = logging.getLogger("media_cleaner")
    root.handlers.clear()
    root.addHandler(logging.handlers.QueueHandler(log_queue))
    root.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    root.propagate = False


def task_logger(logger: logging.Logger, task_id: str) -> logging.LoggerAdapter:
    return logging.LoggerAdapter(logger, {"task_id": task_id})
