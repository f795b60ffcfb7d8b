"""Media pipeline (PyAV, torch-free): probe, batched decode, H.264 encode, audio in/out, metadata policy."""

from media_cleaner.media.audio import decode_track
from media_cleaner.media.pipeline import (
    EncodeSettings,
    ProtectedTrack,
    TranscodeResult,
    muxer_for,
    output_extension_for,
    transcode,
)
from media_cleaner.media.probe import AudioStreamInfo, MediaInfo, VideoStreamInfo, probe

__all__ = [
    "AudioStreamInfo",
    "EncodeSettings",
    "MediaInfo",
    "ProtectedTrack",
    "TranscodeResult",
    "VideoStreamInfo",
    "decode_track",
    "muxer_for",
    "output_extension_for",
    "probe",
    "transcode",
]
