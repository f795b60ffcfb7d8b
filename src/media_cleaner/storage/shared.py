"""Shared-path storage for clusters: every node mounts the same directory (NFS, CephFS, SMB, a Docker volume) and
sees the same input/output/temp areas there. Uploads and results travel through that mount, never the database.

Differences from plain local directories, all for a filesystem that other machines read at the same time:
- processing scratch (`work_dir`) stays on the node's own disk: encoders seek and rewrite, which is slow over NFS;
- results are published by copying to a hidden `.part` name in the output area, fsync, then an atomic rename, so
  no node ever sees a half-written file (a rename across filesystems would fail with EXDEV anyway);
- temp sweeping covers the node's scratch too (a worker killed mid-task leaves its scratch behind).

An object store (S3) fits the same `Storage` interface: `local_path` downloads into scratch, `new_upload` streams a
multipart upload, `publish_output` uploads then deletes the local copy.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

from media_cleaner.config import Settings
from media_cleaner.storage.local import LocalStorage, _tree_bytes

COPY_CHUNK = 4 * 1024 * 1024


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some network filesystems refuse O_RDONLY on directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SharedPathStorage(LocalStorage):
    def __init__(self, settings: Settings, root: Path, scratch: Path | None = None) -> None:
        """`root`: the shared mount (`storage_url=shared:///mnt/media`). `scratch`: node-local work space,
        default `<base_dir>/<temp_dir>/scratch` on this node."""
        super().__init__(settings, root=root)
        self.root = root
        self.scratch = scratch or settings.path("temp") / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)

    def work_dir(self, task_id: str) -> Path:
        path = self.scratch / f"task_{task_id}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def clear_work_dir(self, task_id: str) -> None:
        shutil.rmtree(self.scratch / f"task_{task_id}", ignore_errors=True)
        super().clear_work_dir(task_id)

    def publish_output(self, produced: Path, name: str) -> Path:
        final = self._in("output", name)
        partial = final.with_name(f".{name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with open(produced, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
                dst.flush()
                os.fsync(dst.fileno())  # the bytes are on the server before the name appears
            os.replace(partial, final)
            _fsync_dir(final.parent)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        produced.unlink(missing_ok=True)
        return final

    def sweep_temp(self, older_than_s: float) -> int:
        freed = super().sweep_temp(older_than_s)
        cutoff = time.time() - older_than_s
        for entry in self.scratch.iterdir():
            try:
                if entry.lstat().st_mtime < cutoff:
                    size = _tree_bytes(entry) if entry.is_dir() else entry.lstat().st_size
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                    freed += size
            except OSError:
                continue
        # Half-published outputs of a worker killed during the copy.
        for entry in self.dirs["output"].glob(".*.part"):
            try:
                if entry.lstat().st_mtime < cutoff:
                    freed += entry.lstat().st_size
                    entry.unlink(missing_ok=True)
            except OSError:
                continue
        return freed
