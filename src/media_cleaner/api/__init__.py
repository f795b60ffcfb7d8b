"""HTTP API (FastAPI). Importing this package never imports torch; `create_app` is loaded on first use so the
`media-cleaner` CLI stays quick."""

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from media_cleaner.api.app import create_app

        return create_app
    raise AttributeError(name)
