"""`media-cleaner nginx-site`: print the reverse-proxy site for API nodes (registered into `media_cleaner.cli`).

`api`, `worker` and `db` live in `api/cli.py` and `worker/cli.py`; with a PostgreSQL `database_url` they run the
cluster mode from this package (Procrastinate workers, Alembic migrations).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from media_cleaner.config import Settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "nginx-site",
        help="print the nginx site for API nodes",
        description="client_max_body_size follows max_video_size_gb; one `server` line per API node.",
    )
    p.add_argument("--upstream", action="append", help="API node host:port (repeat; default 127.0.0.1:PORT)")
    p.add_argument("--server-name", default="_", help="nginx server_name (default _)")
    p.add_argument("--listen", default="80", help="nginx listen directive value (default 80)")
    p.set_defaults(handler=_nginx)


def _nginx(args: argparse.Namespace, settings: Settings) -> int:
    from media_cleaner.cluster.nginx import render_site

    upstreams = args.upstream or [f"127.0.0.1:{settings.port}"]
    sys.stdout.write(render_site(settings, upstreams=upstreams, server_name=args.server_name, listen=args.listen))
    return 0
