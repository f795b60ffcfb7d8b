"""Alembic migrations on SQLite and on a real PostgreSQL: fresh install, pre-Alembic databases, no drift between
the migrations and the SQLAlchemy models, concurrent upgrades from several nodes, the `db` CLI verbs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from media_cleaner.cli import main as cli_main
from media_cleaner.cluster.devices import normalise_device
from media_cleaner.config import Settings
from media_cleaner.jobs.backend import backend_name
from media_cleaner.jobs.backends.procrastinate_backend import conninfo
from media_cleaner.jobs.migrate import alembic_config, current_revision, head_revision, upgrade
from media_cleaner.jobs.models import Base
from media_cleaner.jobs.store import TaskStore
from pg import PgCluster

APP_TABLES = {"tasks", "workers", "webhook_deliveries", "alembic_version"}


def drift(url: str) -> list:
    """Differences between the migrated schema and the models (procrastinate's own tables ignored)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "include_name": lambda name, kind, _p: kind != "table" or not name.startswith("procrastinate"),
                },
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_sqlite_fresh_upgrade_is_idempotent_and_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q' / 'tasks.db'}"
    assert upgrade(url) == (None, head_revision())
    assert upgrade(url) == (head_revision(), head_revision())
    tables = set(inspect(create_engine(url)).get_table_names())
    assert APP_TABLES <= tables and not any(t.startswith("procrastinate") for t in tables)
    assert drift(url) == []


def test_sqlite_database_made_before_migrations_is_stamped_and_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    store = TaskStore(url)  # create_all, as servers did before Alembic
    store.create(
        id="t1",
        original_filename="a.mp4",
        input_name="t1_a.mp4",
        output_name="t1_a_protected.mp4",
        download_name="a_protected.mp4",
        input_size_bytes=3 * 1024**3,
        epsilon=0.1,
        audio_level="weak",
    )
    assert current_revision(url) is None
    before, after = upgrade(url)
    assert (before, after) == (None, head_revision())
    task = store.get("t1")
    assert task is not None and task.input_size_bytes == 3 * 1024**3


def test_postgres_upgrade_downgrade_and_no_drift(postgres: PgCluster) -> None:
    url = postgres.create_database("mig_fresh")
    assert upgrade(url) == (None, head_revision())
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names())
    assert APP_TABLES <= tables and {"procrastinate_jobs", "procrastinate_workers"} <= tables
    assert drift(url) == []
    # Sizes above 2 GiB fit (PostgreSQL INTEGER would overflow).
    store = TaskStore(engine)
    store.create(
        id="big",
        original_filename="b.mp4",
        input_name="big_b.mp4",
        output_name="big_b_protected.mp4",
        download_name="b_protected.mp4",
        input_size_bytes=5 * 1024**3,
        epsilon=0.1,
        audio_level="weak",
    )
    assert store.get("big").input_size_bytes == 5 * 1024**3
    engine.dispose()

    from alembic import command

    command.downgrade(alembic_config(url), "0001_initial")
    engine = create_engine(url)
    assert not any(t.startswith("procrastinate") for t in inspect(engine).get_table_names())
    engine.dispose()
    assert upgrade(url)[1] == head_revision()


def test_postgres_concurrent_upgrades_from_several_nodes(postgres: PgCluster) -> None:
    url = postgres.create_database("mig_race")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: upgrade(url), range(4)))
    assert all(after == head_revision() for _before, after in results)
    assert sum(1 for before, _after in results if before is None) == 1, "exactly one node did the work"


def test_db_cli_verbs(postgres: PgCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    url = postgres.create_database("mig_cli")
    monkeypatch.setenv("MEDIA_CLEANER_DATABASE_URL", url)
    assert cli_main(["db", "current"]) == 1
    assert cli_main(["db", "upgrade"]) == 0
    assert cli_main(["db", "current"]) == 0
    out = capsys.readouterr().out
    assert head_revision() in out and "postgresql+psycopg://postgres@127.0.0.1" in out


def test_backend_selection_and_urls(tmp_path: Path) -> None:
    assert backend_name(Settings(base_dir=tmp_path)) == "local"
    pg = "postgresql+psycopg://mc:secret@db.internal:5432/media_cleaner"
    assert backend_name(Settings(database_url=pg)) == "procrastinate"
    assert backend_name(Settings(database_url=pg, queue_backend="local")) == "local"
    assert conninfo(pg) == "postgresql://mc:secret@db.internal:5432/media_cleaner"


@pytest.mark.parametrize(
    ("given", "expected"), [("0", "cuda:0"), ("3", "cuda:3"), ("cuda:1", "cuda:1"), ("CPU", "cpu"), ("cuda", "cuda")]
)
def test_device_names(given: str, expected: str) -> None:
    assert normalise_device(given) == expected


def test_bad_device_name() -> None:
    with pytest.raises(ValueError, match="unknown device"):
        normalise_device("gpu0")
