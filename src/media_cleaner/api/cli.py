"""`media-cleaner api [--host H] [--port P] [--workers N]` and `media-cleaner db upgrade` (registered by cli.py)."""

from __future__ import annotations

import argparse
from typing import Any

from media_cleaner.config import Settings


def register(sub: Any) -> None:
    p = sub.add_parser("api", help="run the REST API (uvicorn)", description="Serve the REST API and web page.")
    p.add_argument("--host", help="listen address (default from config)")
    p.add_argument("--port", type=int, help="listen port (default from config)")
    p.add_argument("--workers", type=int, default=0, help="also run N local worker processes (default 0: API only)")
    p.add_argument("--debug", action="store_true", help="debug logging")
    p.set_defaults(handler=_api)

    db = sub.add_parser("db", help="database schema", description="Manage the task database schema.")
    db.add_argument("action", choices=["upgrade"], help="create missing tables (safe to repeat)")
    db.set_defaults(handler=_db)


def _api(args: argparse.Namespace, settings: Settings) -> int:
    from media_cleaner.server import check_settings, serve

    updates = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    if args.debug:
        updates["debug"] = True
    settings = settings.model_copy(update=updates)
    errors, _warnings = check_settings(settings, check_models=args.workers > 0)
    if errors:
        for error in errors:
            print(f"error: {error}")
        return 1
    return serve(settings, max(args.workers, 0))


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from media_cleaner.jobs import open_store

    store = open_store(settings)
    store.ping()
    print(f"schema up to date at {store.engine.url.render_as_string(hide_password=True)}")
    return 0
