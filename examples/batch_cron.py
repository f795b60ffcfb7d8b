"""Protect every video in a folder with a Media Cleaner server; safe to run from cron.

Each run uploads the videos not protected yet (bounded concurrency), waits for them, downloads the results into
OUTPUT_DIR and prints one line per file. A state file in OUTPUT_DIR (keyed by file content + parameters) makes
re-runs skip finished files and re-attach to tasks still running after a crash; a lock file makes an overlapping
run exit quietly. Exit status: 0 all done (or nothing to do), 1 some file failed, 2 usage, 3 server unreachable.

crontab (every 10 minutes):

    */10 * * * * cd /opt/media-cleaner && MEDIA_CLEANER_SERVER=http://localhost:8000 .venv/bin/python examples/batch_cron.py /srv/videos/incoming /srv/videos/protected >> /var/log/media-cleaner-batch.log 2>&1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from media_cleaner.client import MediaCleanerClient, ServerUnavailableError
from media_cleaner.client.batch import STATE_FILE_NAME, AlreadyRunning, BatchRunner, run_lock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input_dir", type=Path, help="folder with the videos to protect")
    parser.add_argument("output_dir", type=Path, help="where protected videos (and the state file) go")
    parser.add_argument("--server", default=os.environ.get("MEDIA_CLEANER_SERVER", "http://localhost:8000"))
    parser.add_argument("--api-key", default=os.environ.get("MEDIA_CLEANER_API_KEY"))
    parser.add_argument("--epsilon", type=float)
    parser.add_argument("--audio-level")
    parser.add_argument("--audio-objective", help="untargeted (default) | silence | phrase")
    parser.add_argument("--audio-phrase", help="what speech recognisers should hear with --audio-objective phrase")
    parser.add_argument("--no-video", action="store_true", help="leave the picture untouched")
    parser.add_argument("--no-audio", action="store_true", help="leave the sound untouched")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--recursive", action="store_true")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait per video")
    parser.add_argument("--poll-interval", type=float, default=5.0)
    args = parser.parse_args(argv)

    if not args.input_dir.is_dir():
        print(f"error: {args.input_dir} is not a folder", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with MediaCleanerClient(args.server, api_key=args.api_key) as client:
        runner = BatchRunner(
            client,
            epsilon=args.epsilon,
            audio_level=args.audio_level,
            audio_objective=args.audio_objective,
            audio_phrase=args.audio_phrase,
            protect_video=False if args.no_video else None,
            protect_audio=False if args.no_audio else None,
            download_dir=args.output_dir,
            state_path=args.output_dir / STATE_FILE_NAME,
            concurrency=args.concurrency,
            timeout=args.timeout,
            poll_interval=args.poll_interval,
        )
        try:
            client.health()  # fail fast with one clear line rather than one error per file
            with run_lock(args.output_dir / STATE_FILE_NAME):
                items = runner.run([args.input_dir], recursive=args.recursive)
        except AlreadyRunning as exc:
            print(f"{stamp} {exc}")
            return 0
        except ServerUnavailableError as exc:
            print(f"{stamp} error: {exc}", file=sys.stderr)
            return 3
    for item in items:
        detail = item.error or (str(item.output) if item.output else "")
        print(f"{stamp} {item.status:<9} {item.path.name} task={item.task_id or '-'} {detail}".rstrip())
    failed = [item for item in items if not item.ok]
    print(f"{stamp} {len(items)} video(s): {len(items) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
