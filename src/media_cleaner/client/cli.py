"""`media-cleaner-client` / `python client.py`: the command line of the Media Cleaner client.

Errors end as one clear line on stderr and a non-zero exit code, never a traceback:
0 ok, 1 the server refused or an item failed, 2 bad usage or missing file, 3 server unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from tqdm import tqdm

from media_cleaner.client.api import MediaCleanerClient
from media_cleaner.client.batch import (
    STATE_FILE_NAME,
    AlreadyRunning,
    BatchItem,
    BatchRunner,
    format_table,
    run_lock,
    summary_rows,
)
from media_cleaner.client.errors import ClientError, ServerUnavailableError

DEFAULT_SERVER = "http://localhost:8000"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class TqdmReporter:
    """One bar per concurrent slot: upload bytes, then processing %, then download bytes."""

    def __init__(self, enabled: bool | None) -> None:
        # None lets tqdm decide: bars on a terminal, silence under cron or in a pipe.
        self.disable = None if enabled is None else not enabled
        self._bars: dict[int, tuple[str, tqdm]] = {}
        self._lock = threading.Lock()

    def _bar(self, item: BatchItem, kind: str, total: int | float, unit: str) -> tqdm:
        with self._lock:
            current = self._bars.get(id(item))
            if current and current[0] == kind:
                return current[1]
            if current:
                current[1].close()
            name = item.path.name if len(item.path.name) <= 28 else item.path.name[:25] + "..."
            bar = tqdm(
                total=total or None,
                desc=f"{kind:<8} {name}",
                unit=unit,
                unit_scale=unit == "B",
                unit_divisor=1024,
                position=item.slot,
                leave=False,
                disable=self.disable,
                dynamic_ncols=True,
            )
            self._bars[id(item)] = (kind, bar)
            return bar

    def start(self, item: BatchItem) -> None:
        pass

    def upload(self, item: BatchItem, sent: int, total: int) -> None:
        bar = self._bar(item, "upload", total, "B")
        bar.update(sent - bar.n)

    def task(self, item: BatchItem, task: dict[str, Any]) -> None:
        bar = self._bar(item, "process", 100, "%")
        bar.update(round(float(task.get("progress") or 0), 1) - bar.n)
        eta = task.get("eta_seconds")
        bar.set_postfix_str(f"{task.get('status')} {task.get('phase') or ''}" + (f" eta {eta:.0f}s" if eta else ""))

    def download(self, item: BatchItem, done: int, total: int) -> None:
        bar = self._bar(item, "download", total, "B")
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def finish(self, item: BatchItem) -> None:
        with self._lock:
            current = self._bars.pop(id(item), None)
        if current:
            current[1].close()


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    # Sub-parsers repeat the global options with SUPPRESS so `client.py status ID --server URL` works too.
    default = argparse.SUPPRESS
    parser.add_argument(
        "--server",
        default=os.environ.get("MEDIA_CLEANER_SERVER", DEFAULT_SERVER) if top else default,
        help=f"server URL (env MEDIA_CLEANER_SERVER, default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("MEDIA_CLEANER_API_KEY") if top else default,
        help="API key sent as X-API-Key (env MEDIA_CLEANER_API_KEY)",
    )
    parser.add_argument(
        "--user",
        default=os.environ.get("MEDIA_CLEANER_USER") if top else default,
        help="user id for per-user isolation when the server has no API keys (env MEDIA_CLEANER_USER)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", default=False if top else default, help="never draw progress bars"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="media-cleaner-client",
        description="Client of a Media Cleaner server: upload videos, follow and download protected results.",
    )
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p, top=False)
        return p

    up = verb("upload", "upload one or more videos (files or folders) for protection")
    up.add_argument("files", nargs="+", metavar="FILE", help="video files or folders of videos")
    up.add_argument("--epsilon", type=float, help="video perturbation strength 0..1 (server default 0.12)")
    up.add_argument("--audio-level", help="weak|medium|strong (or слабый|средний|сильный)")
    up.add_argument(
        "--audio-objective",
        help="untargeted (the true words lost; server default) | silence | phrase (recognisers hear --audio-phrase)",
    )
    up.add_argument("--audio-phrase", help="the phrase speech recognisers should hear (with --audio-objective phrase)")
    up.add_argument("--webhook-url", help="URL the server POSTs a signed event to when each task ends")
    up.add_argument("--no-video", action="store_true", help="leave the picture untouched (protect audio only)")
    up.add_argument("--no-audio", action="store_true", help="leave the sound untouched (protect video only)")
    up.add_argument("--wait", action="store_true", help="wait for processing to finish")
    up.add_argument("--download", metavar="DIR", help="download results into DIR (implies --wait)")
    up.add_argument("--concurrency", type=int, default=2, metavar="N", help="files in flight at once (default 2)")
    up.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    up.add_argument("--state", metavar="FILE", help=f"state file for re-runs (default DIR/{STATE_FILE_NAME})")
    up.add_argument("--force", action="store_true", help="process again even if a previous run finished")
    up.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait per task (default 24 h)")
    up.add_argument("--poll-interval", type=float, default=2.0, help="seconds between status polls")
    up.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")

    st = verb("status", "show one task")
    st.add_argument("task_id", metavar="ID")
    st.add_argument("--json", action="store_true")
    st.add_argument(
        "--wait", action="store_true", help="follow it (progress bar) until it ends; exit 1 unless completed"
    )
    st.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait with --wait (default 24 h)")
    st.add_argument("--poll-interval", type=float, default=2.0)

    ls = verb("list", "list tasks")
    ls.add_argument("--status", choices=["pending", "processing", "completed", "failed", "cancelled"])
    ls.add_argument("--since", help="ISO 8601 time: only tasks created after it")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--offset", type=int, default=0)
    ls.add_argument("--json", action="store_true")

    dl = verb("download", "download the protected video of a completed task")
    dl.add_argument("task_id", metavar="ID")
    dl.add_argument("dir", nargs="?", default=".", metavar="DIR", help="folder or file path (default .)")

    ca = verb("cancel", "cancel a pending or running task")
    ca.add_argument("task_id", metavar="ID")

    sa = verb("stats", "queue, workers, throughput and disk usage")
    sa.add_argument("--json", action="store_true")
    verb("health", "is the server alive")
    cl = verb("cleanup", "delete tasks and files older than a retention period")
    cl.add_argument("--older-than", type=float, metavar="HOURS", help="default: the server's retention_hours")
    return parser


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _fmt_bytes(n: Any) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def _objective_pairing_error(objective: str | None, phrase: str | None) -> str | None:
    """The server checks both fields (and knows the objectives); only the pairing is checked here, before a batch
    sends whole files to be refused one by one."""
    wants_phrase = (objective or "").strip().lower() in ("phrase", "фраза")
    if wants_phrase and not (phrase or "").strip():
        return "--audio-objective phrase needs --audio-phrase TEXT"
    if (phrase or "").strip() and not wants_phrase:
        return "--audio-phrase needs --audio-objective phrase"
    return None


def cmd_upload(client: MediaCleanerClient, args: argparse.Namespace) -> int:
    download = Path(args.download) if args.download else None
    state_path = Path(args.state) if args.state else (download / STATE_FILE_NAME if download else None)
    if args.concurrency < 1:
        print("error: --concurrency must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    pairing = _objective_pairing_error(args.audio_objective, args.audio_phrase)
    if pairing:
        print(f"error: {pairing}", file=sys.stderr)
        return EXIT_USAGE
    runner = BatchRunner(
        client,
        epsilon=args.epsilon,
        audio_level=args.audio_level,
        audio_objective=args.audio_objective,
        audio_phrase=args.audio_phrase,
        user_id=args.user,
        webhook_url=args.webhook_url,
        protect_video=False if args.no_video else None,
        protect_audio=False if args.no_audio else None,
        wait=args.wait,
        download_dir=download,
        state_path=state_path,
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        timeout=args.timeout,
        force=args.force,
        reporter=TqdmReporter(False if args.no_progress else None),
    )
    try:
        if state_path:
            with run_lock(state_path):
                items = runner.run(args.files, recursive=args.recursive)
        else:
            items = runner.run(args.files, recursive=args.recursive)
    except AlreadyRunning as exc:
        print(f"note: {exc}", file=sys.stderr)
        return EXIT_OK  # an overlapping cron run is normal, not an error worth a mail
    if not items:
        print("error: no video files found in " + ", ".join(args.files), file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        _print_json(
            [
                {
                    "file": str(it.path),
                    "task_id": it.task_id,
                    "status": it.status,
                    "output": str(it.output) if it.output else None,
                    "error": it.error,
                    "seconds": round(it.seconds, 2),
                }
                for it in items
            ]
        )
    else:
        print(format_table(summary_rows(items), ("file", "task", "status", "seconds", "output / error")))
        failed = sum(not it.ok for it in items)
        print(f"{len(items)} file(s): {len(items) - failed} ok, {failed} failed")
    return EXIT_OK if all(it.ok for it in items) else EXIT_FAILED


def _task_lines(task: dict[str, Any]) -> list[str]:
    params = task.get("parameters") or {}
    lines = [
        f"task      {task.get('task_id')}",
        f"status    {task.get('status')}  {float(task.get('progress') or 0):.1f}%  {task.get('phase') or ''}".rstrip(),
        f"file      {task.get('original_filename')}  ({_fmt_bytes(task.get('input_size_bytes'))})",
        "params    " + ", ".join(f"{k}={v}" for k, v in params.items()),
        f"created   {task.get('created_at')}",
    ]
    if task.get("eta_seconds") is not None and task.get("status") == "processing":
        lines.append(f"eta       {float(task['eta_seconds']):.0f} s")
    if task.get("finished_at"):
        lines.append(f"finished  {task['finished_at']}")
    if task.get("user_id"):
        lines.append(f"user      {task['user_id']}")
    if task.get("error"):
        lines.append(f"error     {task['error'].get('code')}: {task['error'].get('message')}")
    if task.get("status") == "completed":
        lines.append(f"result    {_fmt_bytes(task.get('output_size_bytes'))}  {task.get('download_url')}")
    return lines


def cmd_status(client: MediaCleanerClient, args: argparse.Namespace) -> int:
    if args.wait:
        bar = tqdm(total=100, unit="%", desc="process", disable=True if args.no_progress else None)

        def update(task: dict[str, Any]) -> None:
            bar.update(round(float(task.get("progress") or 0), 1) - bar.n)
            bar.set_postfix_str(f"{task.get('status')} {task.get('phase') or ''}".rstrip())

        try:
            task = client.wait_for_completion(
                args.task_id, timeout=args.timeout, poll_interval=args.poll_interval, on_update=update
            )
        finally:
            bar.close()
    else:
        task = client.get_task(args.task_id)
    if args.json:
        _print_json(task)
    else:
        print("\n".join(_task_lines(task)))
    return EXIT_OK if not args.wait or task.get("status") == "completed" else EXIT_FAILED


def cmd_list(client: MediaCleanerClient, args: argparse.Namespace) -> int:
    page = client.list_tasks(
        user_id=args.user, status=args.status, since=args.since, limit=args.limit, offset=args.offset
    )
    if args.json:
        _print_json(page)
        return EXIT_OK
    rows = [
        (
            t.get("task_id", ""),
            t.get("status", ""),
            f"{float(t.get('progress') or 0):.0f}%",
            str(t.get("created_at") or "")[:19],
            t.get("user_id") or "-",
            t.get("original_filename") or "",
        )
        for t in page.get("tasks", [])
    ]
    print(format_table(rows, ("task", "status", "progress", "created", "user", "file")))
    shown = len(rows)
    print(f"{shown} of {page.get('total', shown)} task(s) (offset {page.get('offset', args.offset)})")
    return EXIT_OK


def cmd_download(client: MediaCleanerClient, args: argparse.Namespace) -> int:
    bar = tqdm(
        unit="B", unit_scale=True, unit_divisor=1024, desc="download", disable=True if args.no_progress else None
    )

    def progress(done: int, total: int) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        path = client.download_result(args.task_id, args.dir, progress=progress)
    finally:
        bar.close()
    print(path)
    return EXIT_OK


def cmd_cancel(client: MediaCleanerClient, args: argparse.Namespace) -> int:
    task = client.cancel_task(args.task_id)
    print(f"{task.get('task_id', args.task_id)}: {task.get('status')}")
    return EXIT_OK


def cmd_stats(client: MediaCleanerClient, args: argparse.Namespace) -> int:
    stats = client.get_stats()
    if args.json:
        _print_json(stats)
        return EXIT_OK
    for section, values in stats.items():
        if isinstance(values, dict):
            shown = {k: (_fmt_bytes(v) if section == "disk" else v) for k, v in values.items()}
            print(f"{section:<11}" + "  ".join(f"{k}={v}" for k, v in shown.items()))
        else:
            print(f"{section:<11}{values}")
    return EXIT_OK


def cmd_health(client: MediaCleanerClient, args: argparse.Namespace) -> int:
    health = client.health()
    print(f"{health.get('status')} (version {health.get('version', '?')}) at {client.base_url}")
    return EXIT_OK if health.get("status") == "ok" else EXIT_FAILED


def cmd_cleanup(client: MediaCleanerClient, args: argparse.Namespace) -> int:
    result = client.cleanup(older_than_hours=args.older_than)
    print(f"deleted {result.get('deleted_tasks', 0)} task(s), freed {_fmt_bytes(result.get('freed_bytes', 0))}")
    return EXIT_OK


COMMANDS = {
    "upload": cmd_upload,
    "status": cmd_status,
    "list": cmd_list,
    "download": cmd_download,
    "cancel": cmd_cancel,
    "stats": cmd_stats,
    "health": cmd_health,
    "cleanup": cmd_cleanup,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with MediaCleanerClient(args.server, api_key=args.api_key, user_id=args.user) as client:
            return COMMANDS[args.verb](client, args)
    except ServerUnavailableError as exc:
        print(f"error: {exc}\n  is the server running? (--server / MEDIA_CLEANER_SERVER)", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (FileNotFoundError, IsADirectoryError, PermissionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
