"""The tests' PostgreSQL: a throwaway cluster (media_cleaner.cluster.pgtemp). Without the server binaries the tests
that need it skip, except in CI (CI=true) where they fail: CI must exercise the real database."""

from __future__ import annotations

import os

import pytest

from media_cleaner.cluster.pgtemp import TempPostgres as PgCluster
from media_cleaner.cluster.pgtemp import free_port, start_temp_postgres

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

__all__ = ["PgCluster", "free_port", "start_cluster"]


def start_cluster() -> PgCluster:
    try:
        return start_temp_postgres()
    except FileNotFoundError as exc:
        message = f"{exc} (apt-get install postgresql; .ci/run installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
