"""Gunicorn for an API node: uvicorn workers, no processing (jobs run in `media-cleaner worker` processes).

    gunicorn --config deploy/gunicorn.conf.py

Bind address and port come from the one Settings object (config file / MEDIA_CLEANER_* env); the number of HTTP
processes from WEB_CONCURRENCY (gunicorn's own convention), default 2 x cores + 1, capped at 8: the API is I/O
bound (streaming uploads and downloads), so a few processes with an event loop each are plenty.
"""

import multiprocessing
import os

from media_cleaner.config import load_settings

_settings = load_settings()

wsgi_app = "media_cleaner.cluster.asgi:create_api_app()"
worker_class = "uvicorn_worker.UvicornWorker"
bind = [f"{_settings.host}:{_settings.port}"]
workers = int(os.environ.get("WEB_CONCURRENCY", min(2 * multiprocessing.cpu_count() + 1, 8)))

# Each process opens its own DB pool after the fork; preloading would share sockets across processes.
preload_app = False
# Uploads of several GiB stream through one request: the worker must not be killed for being "silent".
timeout = 900
graceful_timeout = 60
# Longer than nginx's upstream keepalive so the proxy, not gunicorn, closes idle connections.
keepalive = 75
# Recycle processes now and then to bound slow leaks; jitter avoids all restarting together.
max_requests = 5000
max_requests_jitter = 500
# Trust X-Forwarded-* only from the local reverse proxy (set FORWARDED_ALLOW_IPS for a remote balancer).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = "-"
errorlog = "-"
loglevel = "debug" if _settings.debug else "info"
proc_name = "media-cleaner-api"
