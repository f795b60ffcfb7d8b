"""Shared fixtures: paths to the real clips in ../shared/data and isolated settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from media_cleaner.config import Settings, load_settings

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
