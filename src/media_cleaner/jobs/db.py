"""Database engine: SQLite in WAL mode (many processes, one file) or any SQLAlchemy URL (PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from media_cleaner.jobs.models import Base

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """Engine with the SQLite settings that make multi-process use safe; creates the schema if missing."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, pool_pre_ping=True)
        _create_schema(engine)
        return engine

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # Take over transaction control: pysqlite's implicit BEGIN cannot be made IMMEDIATE.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        # Writers take the lock up front (BEGIN IMMEDIATE) so busy_timeout applies instead of a
        # read->write upgrade failing at once with "database is locked"; readers stay lock-free under WAL.
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    _create_schema(engine)
    return engine


def _create_schema(engine: Engine) -> None:
    # Several processes may start at once on a fresh file; the loser of the race sees "already exists".
    for attempt in range(3):
        try:
            Base.metadata.create_all(engine)
            return
        except OperationalError:
            if attempt == 2:
                raise
