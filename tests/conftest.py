"""Shared fixtures: paths to the real clips in ../shared/data, isolated settings, and the client contract server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from media_cleaner.config import Settings, load_settings

if TYPE_CHECKING:
    from client_fixture_server import FakeState, ServerThread
    from pg import PgCluster

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings rooted in a temp dir; the model cache is shared across tests to avoid re-joining weights."""
    return load_settings(base_dir=tmp_path, model_cache_dir=REPO_ROOT / ".venv" / "model_cache")


# The contract fixture server for the client tests (client CLI, examples, client API). A module that needs another
# server (the real one in test_server_e2e / test_web_e2e) or another state defines its own fixture of the same name.
@pytest.fixture
def state() -> FakeState:
    from client_fixture_server import FakeState

    return FakeState(process_seconds=0.3)


@pytest.fixture
def server(state: FakeState) -> Iterator[ServerThread]:
    from client_fixture_server import ServerThread, create_fake_app

    with ServerThread(create_fake_app(state)) as srv:
        yield srv


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster per test module (skips, or fails in CI, where PostgreSQL is not installed)."""
    from pg import start_cluster

    cluster = start_cluster()
    yield cluster
    cluster.stop()
