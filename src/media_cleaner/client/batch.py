"""Batch protection of many files: bounded concurrency, a state file, and re-runs that skip finished work.

Each file is keyed by its content hash plus the parameters that change the output. The key gives
- a state-file entry (`task_id`, status, output path) so a re-run skips what is done and re-attaches to what is still
  running instead of uploading again, and
- an `Idempotency-Key` so a crash between "upload sent" and "state written" still lands on the same server task.
A file whose task failed or was cancelled is retried on the next run (a new key generation), up to `max_attempts`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from media_cleaner.client.api import MediaCleanerClient
from media_cleaner.client.errors import ClientError, GoneError, TaskNotFoundError

VIDEO_SUFFIXES = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv", ".3gp", ".ogv"}
)
STATE_FILE_NAME = ".media-cleaner-state.json"

try:  # POSIX; the client also runs on Windows laptops, where msvcrt gives the same non-blocking lock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt
STATE_VERSION = 1


class BatchReporter(Protocol):
    """Progress hooks (the CLI draws tqdm bars with them); every method is optional to act on."""

    def start(self, item: BatchItem) -> None: ...
    def upload(self, item: BatchItem, sent: int, total: int) -> None: ...
    def task(self, item: BatchItem, task: dict[str, Any]) -> None: ...
    def download(self, item: BatchItem, done: int, total: int) -> None: ...
    def finish(self, item: BatchItem) -> None: ...


@dataclass
class BatchItem:
    path: Path
    slot: int = 0
    key: str = ""
    status: str = "queued"  # queued -> uploading/processing/downloading -> done|submitted|skipped|failed|cancelled
    task_id: str | None = None
    output: Path | None = None
    error: str | None = None
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("done", "submitted", "skipped")


def collect_inputs(paths: Iterable[str | os.PathLike[str]], recursive: bool = False) -> list[tuple[Path, Path]]:
    """Expand files and folders into (file, path relative to its folder argument) pairs, sorted, de-duplicated.

    Folders contribute files with a video suffix (hidden files and our own `.part` files are skipped); a file named
    explicitly is taken whatever its suffix, so the server gets to say "not a video".
    """
    found: dict[Path, Path] = {}
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            pattern = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(pattern):
                if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES and not f.name.startswith("."):
                    found.setdefault(f.resolve(), f.relative_to(p))
        elif p.is_file():
            found.setdefault(p.resolve(), Path(p.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return sorted(found.items(), key=lambda kv: str(kv[0]))


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def task_key(digest: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"sha256": digest, **params}, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:40]


class StateFile:
    """A small JSON map key -> entry, rewritten atomically (temp + rename) so a crash never leaves it torn."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = {}
        self._digests: dict[str, dict[str, Any]] = {}  # path -> {size, mtime_ns, sha256}
        if path.exists():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                self._data = dict(raw.get("items", {}))
                self._digests = dict(raw.get("digests", {}))
            except (ValueError, AttributeError):
                # A hand-edited or foreign file: keep a copy and start over rather than crash every cron run.
                path.replace(path.with_suffix(path.suffix + ".corrupt"))

    def get(self, key: str) -> dict[str, Any]:
        with self._lock:
            return dict(self._data.get(key, {}))

    def outputs(self) -> set[Path]:
        """Every result file recorded, so a run whose output folder is also its input never re-protects them."""
        with self._lock:
            return {Path(e["output"]).resolve() for e in self._data.values() if e.get("output")}

    def digest(self, path: Path) -> str:
        """SHA-256 of a file, cached by (size, mtime): a cron run over an unchanged folder reads no video twice."""
        stat = path.stat()
        stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        with self._lock:
            cached = self._digests.get(str(path))
        if cached and all(cached.get(k) == v for k, v in stamp.items()):
            return str(cached["sha256"])
        value = file_digest(path)
        with self._lock:
            self._digests[str(path)] = {**stamp, "sha256": value}
        return value

    def update(self, key: str, **values: Any) -> None:
        with self._lock:
            entry = self._data.setdefault(key, {})
            entry.update({k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()})
            entry["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        data = {"version": STATE_VERSION, "items": self._data, "digests": self._digests}
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)


class AlreadyRunning(ClientError):
    code = "already_running"


@contextlib.contextmanager
def run_lock(state_path: Path) -> Iterator[None]:
    """One batch run per state file at a time: overlapping cron runs would upload the same files twice.

    An OS lock (not a pid file): it disappears with the process, so a killed run never blocks the next one.
    """
    state_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = state_path.with_name(state_path.name + ".lock")
    with lock_path.open("a+b") as fh:
        try:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:  # pragma: no cover - Windows
                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError as exc:
            raise AlreadyRunning(f"another batch run holds {lock_path}; skipping this one") from exc
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


class Interrupted(ClientError):
    code = "interrupted"


class BatchRunner:
    """Uploads files with at most `concurrency` in flight; optionally waits and downloads each result."""

    def __init__(
        self,
        client: MediaCleanerClient,
        *,
        epsilon: float | None = None,
        audio_level: str | None = None,
        audio_objective: str | None = None,
        audio_phrase: str | None = None,
        user_id: str | None = None,
        webhook_url: str | None = None,
        protect_video: bool | None = None,
        protect_audio: bool | None = None,
        wait: bool = False,
        download_dir: Path | None = None,
        state_path: Path | None = None,
        concurrency: int = 2,
        poll_interval: float = 2.0,
        timeout: float | None = 24 * 3600,
        max_attempts: int = 3,
        force: bool = False,
        reporter: BatchReporter | None = None,
    ) -> None:
        self.client = client
        self.params: dict[str, Any] = {
            "epsilon": epsilon,
            "audio_level": audio_level,
            "protect_video": protect_video,
            "protect_audio": protect_audio,
            "user_id": user_id,
        }
        # Added only when given: the params feed each file's task key, and a state file written before these
        # options existed must still recognise its finished files.
        for name, value in (("audio_objective", audio_objective), ("audio_phrase", audio_phrase)):
            if value is not None:
                self.params[name] = value
        self.webhook_url = webhook_url
        self.download_dir = Path(download_dir) if download_dir else None
        self.wait = wait or self.download_dir is not None
        self.state = StateFile(Path(state_path)) if state_path else None
        self.concurrency = max(1, int(concurrency))
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.force = force
        self.reporter = reporter
        self._stop = threading.Event()

    def run(self, paths: Iterable[str | os.PathLike[str]], recursive: bool = False) -> list[BatchItem]:
        inputs = collect_inputs(paths, recursive=recursive)
        if self.state:
            produced = self.state.outputs()
            inputs = [(p, rel) for p, rel in inputs if p not in produced]
        items = [BatchItem(path=p, detail={"relative": rel}) for p, rel in inputs]
        if not items:
            return items
        slots = list(range(self.concurrency))
        slot_lock = threading.Lock()

        def work(item: BatchItem) -> BatchItem:
            with slot_lock:
                item.slot = slots.pop(0)
            try:
                self._process(item)
            finally:
                with slot_lock:
                    slots.append(item.slot)
                    slots.sort()
            return item

        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="batch")
        try:
            with self._ctrl_c_stops_workers() as interrupted:
                futures = [pool.submit(work, item) for item in items]
                wait(futures)
            if interrupted.is_set():
                raise KeyboardInterrupt
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            # Workers notice the flag at their next progress tick (upload chunk, poll, download chunk) and stop;
            # the state file already holds every task id, so the next run re-attaches.
            self._stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return items

    @contextlib.contextmanager
    def _ctrl_c_stops_workers(self) -> Iterator[threading.Event]:
        """While inside, a first Ctrl-C only sets the stop flag (and the yielded event) instead of raising
        KeyboardInterrupt wherever the main thread happens to be: raised inside a lock's `with` in
        `concurrent.futures`, it can leave that lock held and the workers blocked on it for good (seen once in CI:
        the CLI hung after Ctrl-C). A second Ctrl-C raises as usual. Off the main thread, signals stay as they are."""
        interrupted = threading.Event()
        if threading.current_thread() is not threading.main_thread():
            yield interrupted
            return

        def stop(signum: int, frame: Any) -> None:
            if interrupted.is_set():
                raise KeyboardInterrupt
            interrupted.set()
            self._stop.set()

        previous = signal.signal(signal.SIGINT, stop)
        try:
            yield interrupted
        finally:
            signal.signal(signal.SIGINT, previous)

    # -- one file ------------------------------------------------------------------------------------------------
    def _process(self, item: BatchItem) -> None:
        started = time.monotonic()
        self._emit("start", item)
        try:
            self._process_inner(item)
        except ClientError as exc:
            item.status, item.error = "failed", str(exc)
        except OSError as exc:
            item.status, item.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            # Only the server's verdict (task failed/cancelled) is written as failed: after a network error the
            # entry keeps its task id, and the next run re-attaches to it instead of uploading again.
            item.seconds = time.monotonic() - started
            self._emit("finish", item)

    def _process_inner(self, item: BatchItem) -> None:
        item.key = task_key(self.state.digest(item.path) if self.state else file_digest(item.path), self.params)
        entry = self.state.get(item.key) if self.state else {}
        generation = int(entry.get("generation", 0))
        if not self.force and entry:
            if self._finished(entry):
                item.status, item.task_id = "skipped", entry.get("task_id")
                item.output = Path(entry["output"]) if entry.get("output") else None
                return
            if entry.get("status") in ("failed", "cancelled"):
                if generation + 1 >= self.max_attempts:
                    item.status, item.task_id = "failed", entry.get("task_id")
                    item.error = f"gave up after {generation + 1} attempts: {entry.get('error') or entry['status']}"
                    return
                generation += 1
            elif entry.get("task_id"):
                item.task_id = self._attach(entry["task_id"])
        if self.force:
            generation = int(entry.get("generation", 0)) + (1 if entry else 0)
        if self.state:
            self.state.update(item.key, file=str(item.path), generation=generation, params=self.params)
        if item.task_id is None:
            item.task_id = self._upload(item, generation)
        if not self.wait:
            item.status = "submitted"
            if self.state:
                self.state.update(item.key, status="submitted", task_id=item.task_id)
            return
        self._wait_and_fetch(item)

    def _finished(self, entry: dict[str, Any]) -> bool:
        if entry.get("status") == "done":
            return self.download_dir is None or (bool(entry.get("output")) and Path(entry["output"]).is_file())
        return entry.get("status") == "submitted" and not self.wait

    def _attach(self, task_id: str) -> str | None:
        """Re-use a task from an earlier run unless the server no longer has it or it ended badly."""
        try:
            task = self.client.get_task(task_id)
        except (TaskNotFoundError, GoneError):
            return None
        return None if task.get("status") in ("failed", "cancelled") else task_id

    def _upload(self, item: BatchItem, generation: int) -> str:
        item.status = "uploading"
        # --force must not land on the old task through the server's idempotency table: add a per-run nonce.
        nonce = f"-f{secrets.token_hex(4)}" if self.force else ""
        for _ in range(self.max_attempts):
            key = f"mcb-{item.key}-{generation}{nonce}"
            answer = self.client.upload_video(
                item.path,
                epsilon=self.params["epsilon"],
                audio_level=self.params["audio_level"],
                user_id=self.params["user_id"],
                webhook_url=self.webhook_url,
                idempotency_key=key,
                progress=lambda sent, total: self._emit("upload", item, sent, total),
                protect_video=self.params["protect_video"],
                protect_audio=self.params["protect_audio"],
                audio_objective=self.params.get("audio_objective"),
                audio_phrase=self.params.get("audio_phrase"),
            )
            task_id = str(answer["task_id"])
            if self.state:
                self.state.update(item.key, task_id=task_id, status="submitted", generation=generation)
            # An idempotent replay may hand back a task that already failed (state lost in a crash): next key.
            if answer.get("status") not in ("failed", "cancelled"):
                return task_id
            generation += 1
        raise ClientError(f"server keeps returning failed tasks for {item.path.name}", code="upload_failed")

    def _wait_and_fetch(self, item: BatchItem) -> None:
        assert item.task_id is not None
        item.status = "processing"
        task = self.client.wait_for_completion(
            item.task_id,
            timeout=self.timeout,
            poll_interval=self.poll_interval,
            on_update=lambda t: self._emit("task", item, t),
        )
        status = task.get("status")
        if status != "completed":
            err = task.get("error") or {}
            item.status = "cancelled" if status == "cancelled" else "failed"
            item.error = f"{err.get('code', status)}: {err.get('message', '')}".rstrip(": ") if err else str(status)
            if self.state:
                self.state.update(item.key, status=item.status, error=item.error, task_id=item.task_id)
            return
        item.detail["report"] = task.get("report")
        if self.download_dir is not None:
            item.status = "downloading"
            target = self.download_dir / Path(item.detail.get("relative", item.path.name)).parent
            fetched = self.client.download_result(
                item.task_id, target, progress=lambda done, total: self._emit("download", item, done, total)
            )
            # Named after the local file: identical content under another name reuses the same server task
            # (same key), and its server-side name would be the other file's.
            item.output = fetched.with_name(f"{item.path.stem}_protected{fetched.suffix}")
            if fetched != item.output:
                os.replace(fetched, item.output)
        item.status = "done"
        if self.state:
            self.state.update(item.key, status="done", task_id=item.task_id, output=item.output, error=None)

    def _emit(self, event: str, item: BatchItem, *args: Any) -> None:
        if self._stop.is_set() and event != "finish":
            raise Interrupted("interrupted")
        if self.reporter is not None:
            getattr(self.reporter, event)(item, *args)


def summary_rows(items: list[BatchItem]) -> list[tuple[str, str, str, str, str]]:
    """(file, task, status, seconds, output-or-error) per item, for a table."""
    rows = []
    for it in items:
        note = it.error or (str(it.output) if it.output else "")
        rows.append(
            (str(it.detail.get("relative", it.path.name)), it.task_id or "-", it.status, f"{it.seconds:.1f}", note)
        )
    return rows


def format_table(rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> str:
    widths = [max(len(str(v)) for v in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out += [line.format(*map(str, row)) for row in rows]
    return "\n".join(s.rstrip() for s in out)
