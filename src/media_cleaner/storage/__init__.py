"""Where files live: input, output and temp areas behind a small interface (local directories by default)."""

from pathlib import Path

from media_cleaner.config import Settings
from media_cleaner.storage.base import Area, Storage, UploadSink
from media_cleaner.storage.local import LocalStorage
from media_cleaner.storage.names import download_name, input_name, output_name, sanitise_filename


def open_storage(settings: Settings) -> Storage:
    """The storage backend `settings.storage_url` names; empty or `file://` -> local directories."""
    url = settings.storage_url
    if not url:
        return LocalStorage(settings)
    if url.startswith("file://"):
        return LocalStorage(settings, root=Path(url.removeprefix("file://")))
    if url.startswith("shared://"):  # a mount every node sees (NFS...): node-local scratch, fsync + atomic publish
        from media_cleaner.storage.shared import SharedPathStorage

        return SharedPathStorage(settings, root=Path(url.removeprefix("shared://")))
    raise ValueError(f"unsupported storage_url {url!r}: use file:///dir (one machine) or shared:///mount (cluster)")


__all__ = [
    "Area",
    "LocalStorage",
    "Storage",
    "UploadSink",
    "download_name",
    "input_name",
    "open_storage",
    "output_name",
    "sanitise_filename",
]
