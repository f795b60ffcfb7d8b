"""Schema migrations (Alembic) for SQLite and PostgreSQL: `media-cleaner db upgrade`, also run on node start.

Databases created before Alembic (by `create_all`) are stamped at the initial revision, then upgraded. On
PostgreSQL an advisory lock serialises nodes that start at the same moment.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
INITIAL = "0001_initial"
LOCK_KEY = 0x6D635F6D6967  # "mc_mig": one advisory lock id for all media-cleaner migrations


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the schema at `url` to `revision`; returns (before, after) revisions."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
                conn.commit()
            try:
                before = MigrationContext.configure(conn).get_current_revision()
                if before is None and inspect(conn).has_table("tasks"):
                    command.stamp(alembic_config(url, conn), INITIAL)  # made by create_all before migrations
                    conn.commit()
                command.upgrade(alembic_config(url, conn), revision)
                conn.commit()
                after = MigrationContext.configure(conn).get_current_revision()
            finally:
                if postgres:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
                    conn.commit()
        return before, after
    finally:
        engine.dispose()
