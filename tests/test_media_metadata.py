"""Metadata policy: private tags dropped by default, descriptive ones kept, everything kept on request."""

from __future__ import annotations

from media_cleaner.media.metadata import filter_tags, is_private

PHONE_TAGS = {
    "com.apple.quicktime.location.ISO6709": "+48.8577+002.2950+035.000/",
    "com.apple.quicktime.make": "Apple",
    "com.apple.quicktime.model": "iPhone 15 Pro",
    "com.apple.quicktime.software": "17.4",
    "com.android.manufacturer": "Google",
    "com.android.model": "Pixel 8",
    "location": "+48.8577+002.2950/",
    "location-eng": "+48.8577+002.2950/",
    "creation_time": "2024-05-01T10:00:00Z",
    "encoder": "Lavf60",
    "title": "Birthday",
    "comment": "for grandma",
    "language": "eng",
    "copyright": "me",
    "major_brand": "qt  ",
    "DURATION": "00:00:03.000",
}


def test_private_tags_dropped_by_default() -> None:
    kept, dropped = filter_tags(PHONE_TAGS, keep_all=False)
    assert kept == {"title": "Birthday", "comment": "for grandma", "language": "eng", "copyright": "me"}
    assert "com.apple.quicktime.location.ISO6709" in dropped and "com.android.model" in dropped
    assert "major_brand" not in dropped and "DURATION" not in dropped  # structural: rewritten, not "private"


def test_keep_all_keeps_private_but_not_structural() -> None:
    kept, dropped = filter_tags(PHONE_TAGS, keep_all=True)
    assert dropped == [] and kept["location"] == PHONE_TAGS["location"] and kept["com.android.model"] == "Pixel 8"
    assert "major_brand" not in kept and "DURATION" not in kept


def test_is_private_case_insensitive() -> None:
    assert is_private("GPSLatitude") and is_private("Make") and is_private("ENCODED_BY")
    assert not is_private("Title") and not is_private("artist")
