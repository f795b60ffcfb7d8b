"""Metadata policy: which container/stream tags survive protection.

By default tags that identify a place, a device or a tool chain (GPS/location, make/model, software/encoder, creation
time) are dropped; descriptive tags (title, comment, language, copyright...) are kept. `keep_metadata` keeps all.
"""

from __future__ import annotations

import re

# Substrings (lower-case) of tag names that are private: matched anywhere in the key, so vendor prefixes such as
# `com.apple.quicktime.location.ISO6709` or `com.android.manufacturer` are caught too.
PRIVATE_TAG_PATTERNS = (
    "location",
    "gps",
    "iso6709",
    "xyz",
    "make",
    "model",
    "manufacturer",
    "software",
    "encoder",
    "encoded_by",
    "encoding_tool",
    "creation_time",
    "date",
    "com.apple.quicktime",
    "com.android",
    "camera",
    "device",
    "lens",
    "serial",
    "firmware",
    "vendor_id",
    "handler_name",
    "major_brand",
    "minor_version",
    "compatible_brands",
)
# Tags the muxer writes itself or that describe the old encoding, never copied.
_STRUCTURAL = re.compile(r"^(duration|bps|number_of_frames|number_of_bytes|_statistics.*|rotate)$", re.IGNORECASE)
_KEEP_ALWAYS = {"language", "title"}


def is_private(key: str) -> bool:
    lowered = key.lower()
    return lowered not in _KEEP_ALWAYS and any(p in lowered for p in PRIVATE_TAG_PATTERNS)


def filter_tags(tags: dict[str, str], keep_all: bool) -> tuple[dict[str, str], list[str]]:
    """Return (tags to write, names of tags dropped)."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in tags.items():
        if _STRUCTURAL.match(key) or key.lower() in {"major_brand", "minor_version", "compatible_brands"}:
            continue  # rewritten by the muxer; copying them would describe the old file
        if keep_all or not is_private(key):
            kept[key] = value
        else:
            dropped.append(key)
    return kept, dropped
