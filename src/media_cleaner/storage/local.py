"""Local-directory storage: the spec's `videos_input/`, `videos_output/`, `videos_temp/` under `base_dir`."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from media_cleaner.config import Settings
from media_cleaner.storage.base import Area, Storage, UploadSink


class LocalUploadSink(UploadSink):
    """Writes into the temp area, then renames into the input area (same filesystem: no second copy)."""

    def __init__(self, temp_path: Path, final_path: Path) -> None:
        self._temp = temp_path
        self._final = final_path
        self._file = open(temp_path, "wb")  # noqa: SIM115 - closed in commit/abort
        self.size = 0
        self._committed = False

    @property
    def path(self) -> Path:
        return self._final if self._committed else self._temp

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.size += len(chunk)

    def commit(self) -> Path:
        self._file.close()
        os.replace(self._temp, self._final)
        self._committed = True
        return self._final

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        for path in (self._temp, self._final):
            path.unlink(missing_ok=True)


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass  # removed while walking
    return total


class LocalStorage(Storage):
    def __init__(self, settings: Settings, root: Path | None = None) -> None:
        """`root` (a shared mount, from `storage_url=file:///path`) replaces `base_dir` for the three areas."""
        self.dirs: dict[str, Path] = {}
        for area in ("input", "output", "temp"):
            self.dirs[area] = root / getattr(settings, f"{area}_dir").name if root else settings.path(area)
        for directory in self.dirs.values():
            directory.mkdir(parents=True, exist_ok=True)

    def _in(self, area: Area, name: str) -> Path:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError(f"unsafe storage name {name!r}")
        return self.dirs[area] / name

    def new_upload(self, name: str) -> LocalUploadSink:
        temp = self.dirs["temp"] / f"upload_{uuid.uuid4().hex}.part"
        return LocalUploadSink(temp, self._in("input", name))

    def local_path(self, area: Area, name: str) -> Path:
        return self._in(area, name)

    def work_dir(self, task_id: str) -> Path:
        path = self._in("temp", f"task_{task_id}")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def clear_work_dir(self, task_id: str) -> None:
        shutil.rmtree(self._in("temp", f"task_{task_id}"), ignore_errors=True)
        if "." not in task_id:  # a bare task id: every attempt's dir (`<id>.<attempt>`) goes too
            for path in self.dirs["temp"].glob(f"task_{task_id}.*"):
                shutil.rmtree(path, ignore_errors=True)

    def publish_output(self, produced: Path, name: str) -> Path:
        final = self._in("output", name)
        os.replace(produced, final)
        return final

    def size(self, area: Area, name: str) -> int | None:
        try:
            return self._in(area, name).stat().st_size
        except (OSError, ValueError):
            return None

    def delete(self, area: Area, name: str) -> int:
        size = self.size(area, name) or 0
        try:
            self._in(area, name).unlink(missing_ok=True)
        except (OSError, ValueError):
            return 0
        return size

    def usage(self) -> dict[str, int]:
        free = shutil.disk_usage(self.dirs["output"]).free
        return {f"{area}_bytes": _tree_bytes(path) for area, path in self.dirs.items()} | {"free_bytes": free}

    def usage_free(self) -> int:
        return min(shutil.disk_usage(self.dirs[area]).free for area in ("input", "output"))

    def check_writable(self) -> dict[str, bool]:
        result = {}
        for area, directory in self.dirs.items():
            try:
                with tempfile.NamedTemporaryFile(dir=directory, prefix=".probe_"):
                    pass
                result[area] = True
            except OSError:
                result[area] = False
        return result

    def sweep_temp(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        freed = 0
        for entry in self.dirs["temp"].iterdir():
            try:
                if entry.lstat().st_mtime >= cutoff:
                    continue
                if entry.is_dir():
                    size = _tree_bytes(entry)
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    size = entry.lstat().st_size
                    entry.unlink(missing_ok=True)
                freed += size
            except OSError:
                continue
        return freed
