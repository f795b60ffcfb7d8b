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
    db.add_argument("action", choices=["upgrade", "current"], help="apply Alembic migrations (safe to repeat)")
    db.set_defaults(handler=_db)


def _api(args: argparse.Namespace, settings: Settings) -> int:
    from media_cleaner.server import check_settings, serve

    updates = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    if args.debug:
        updates["debug"] = True
    settings = settings.model_copy(update=updates)
    from media_cleaner.jobs.migrate import upgrade

    upgrade(settings.effective_database_url)  # every node upgrades on start; serialised on PostgreSQL
    errors, _warnings = check_settings(settings, check_models=args.workers > 0)
    if errors:
        for error in errors:
            print(f"error: {error}")
        return 1
    return serve(settings, max(args.workers, 0))


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy.engine import make_url

    from media_cleaner.jobs.migrate import current_revision, head_revision, upgrade

    url = settings.effective_database_url
    where = make_url(url).render_as_string(hide_password=True)
    if args.action == "current":
        current = current_revision(url)
        print(f"schema at {current or 'nothing'} (head {head_revision()}) at {where}")
        return 0 if current == head_revision() else 1
    before, after = upgrade(url)
    print(f"schema {before or 'empty'} -> {after} at {where}")
    return 0
