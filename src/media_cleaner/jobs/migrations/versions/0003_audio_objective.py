"""Tasks remember the audio attack's objective (untargeted / silence / phrase) and the phrase to be heard.

Both columns are NOT NULL with server defaults, so tasks queued before this revision load as untargeted. A
database made by `create_all` from current models already has them (it is stamped at 0001_initial and brought
up from there): only missing columns are added.

Revision ID: 0003_audio_objective
Revises: 0002_procrastinate
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_audio_objective"
down_revision: str | None = "0002_procrastinate"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _columns() -> list[sa.Column]:
    """Fresh Column objects each time: a Column belongs to the one table it is added to."""
    return [
        sa.Column("audio_objective", sa.String(length=16), nullable=False, server_default="untargeted"),
        sa.Column("audio_phrase", sa.String(length=256), nullable=False, server_default=""),
    ]


def _existing() -> set[str]:
    return {column["name"] for column in sa.inspect(op.get_bind()).get_columns("tasks")}


def upgrade() -> None:
    existing = _existing()
    for column in _columns():
        if column.name not in existing:
            op.add_column("tasks", column)


def downgrade() -> None:
    existing = _existing()
    # Batch mode: SQLite before 3.35 cannot drop a column in place, so Alembic copies the table there.
    with op.batch_alter_table("tasks") as batch:
        for column in reversed(_columns()):
            if column.name in existing:
                batch.drop_column(column.name)
