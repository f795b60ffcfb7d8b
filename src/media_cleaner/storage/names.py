"""Safe file names: `<id>_<sanitised original name>` for inputs, `<id>_<stem>_protected.<ext>` for outputs."""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

MAX_NAME_CHARS = 120
_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)  # letters/digits (any script), underscore, dot, hyphen
_RUNS = re.compile(r"_{2,}")


def sanitise_filename(name: str | None, default: str = "video") -> str:
    """A name that cannot traverse paths or carry control bytes: basename only, NFC, `[\\w.-]`, bounded length."""
    raw = (name or "").replace("\\", "/").split("/")[-1]
    raw = unicodedata.normalize("NFC", raw)
    raw = "".join(ch for ch in raw if unicodedata.category(ch)[0] != "C")  # control/format/surrogate chars
    clean = _RUNS.sub("_", _UNSAFE.sub("_", raw)).strip("._- ")
    if not clean:
        clean = default
    path = PurePosixPath(clean)
    stem, suffix = path.stem or default, path.suffix.lower()
    if len(suffix) > 10 or not suffix[1:].isalnum():
        stem, suffix = clean, ""
    stem = stem[: MAX_NAME_CHARS - len(suffix)].rstrip("._-") or default
    return stem + suffix


def input_name(task_id: str, original: str | None) -> str:
    return f"{task_id}_{sanitise_filename(original)}"


def output_name(task_id: str, original: str | None, extension: str) -> str:
    stem = PurePosixPath(sanitise_filename(original)).stem
    return f"{task_id}_{stem}_protected.{extension.lstrip('.').lower()}"


def download_name(original: str | None, extension: str) -> str:
    """What the user's browser saves: `<name>_protected.<ext>` (no id)."""
    stem = PurePosixPath(sanitise_filename(original)).stem
    return f"{stem}_protected.{extension.lstrip('.').lower()}"
