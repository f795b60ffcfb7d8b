"""Procrastinate's queue schema (PostgreSQL only; a no-op on SQLite, where the local executor polls `tasks`).

The SQL is the one shipped with the pinned procrastinate version. A later procrastinate upgrade adds a revision
that runs its own migration files (procrastinate/sql/migrations/) in order.

Revision ID: 0002_procrastinate
Revises: 0001_initial
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002_procrastinate"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    from procrastinate.schema import SchemaManager

    exists = bind.exec_driver_sql("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").scalar()
    if exists:  # applied by hand with `procrastinate schema --apply` before Alembic took over
        return
    # Straight to the driver with no parameters: the SQL has literal `%` that a paramstyle would misread.
    with bind.connection.dbapi_connection.cursor() as cursor:
        cursor.execute(SchemaManager.get_schema())


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql(
        "DROP TABLE IF EXISTS procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs, "
        "procrastinate_workers, procrastinate_version CASCADE"
    )
    with bind.connection.dbapi_connection.cursor() as cursor:  # no parameters: `%` stays literal
        cursor.execute(
            "DO $$ DECLARE r record; BEGIN "
            "FOR r IN SELECT oid::regprocedure AS sig FROM pg_proc WHERE proname LIKE 'procrastinate%' LOOP "
            "EXECUTE 'DROP FUNCTION IF EXISTS ' || r.sig || ' CASCADE'; END LOOP; "
            "FOR r IN SELECT typname FROM pg_type WHERE typname LIKE 'procrastinate%' AND typtype IN ('e', 'c') LOOP "
            "EXECUTE 'DROP TYPE IF EXISTS ' || quote_ident(r.typname) || ' CASCADE'; END LOOP; END $$"
        )
