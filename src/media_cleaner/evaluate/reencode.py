"""Second encodings of a delivered file, as a platform re-encodes an upload, for checking that protection survives.

Each transform takes the delivered file's path and returns what a recogniser would load from the re-encoded
result: 16 kHz mono float32 PCM (`load_pcm`'s path, FFmpeg's resampler). Everything runs through PyAV, no CLI.

- `aac_64k`: AAC-LC at 64 kb/s, the file's rate and layout (a low-bitrate rendition);
- `opus_48k`: Opus at 48 kb/s, 48 kHz, in Ogg (what web platforms serve);
- `mp3_96k`: MP3 at 96 kb/s, 44.1 kHz (only with PyAV's libmp3lame encoder);
- `resample_8k`: down to 8 kHz and back to 16 kHz (a telephone band, no codec);
- `noise_30db`: seeded white noise at 30 dB SNR against the whole clip's power.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from media_cleaner.evaluate.speech import RATE, encode_aac, load_pcm, resample_mono, write_pcm

Transform = Callable[[str | Path], np.ndarray]


def decode_native(path: str | Path) -> tuple[np.ndarray, int]:
    """The first audio stream as (channels, samples) float32 at its own rate and layout."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate, layout = stream.codec_context.sample_rate, stream.codec_context.layout.name
        channels = stream.codec_context.channels
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        chunks = [
            f.to_ndarray().reshape(channels, -1) for fr in container.decode(stream) for f in resampler.resample(fr)
        ]
        chunks += [f.to_ndarray().reshape(channels, -1) for f in resampler.resample(None)]
    return np.concatenate(chunks, axis=1).astype(np.float32), rate


def encode_with(
    pcm: np.ndarray, rate: int, path: str | Path, codec: str, bitrate: int, out_rate: int, fmt: str, sample_fmt: str
) -> Path:
    """Write (channels, samples) float PCM with `codec` at `bitrate` b/s and `out_rate` Hz (mono or stereo)."""
    import av

    layout = "mono" if pcm.shape[0] == 1 else "stereo"
    if pcm.shape[0] > 2:  # these codecs are used in mono / stereo; a platform downmixes
        pcm = np.stack([pcm[0::2].mean(axis=0), pcm[1::2].mean(axis=0)])
    path = Path(path)
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=out_rate)
        stream.codec_context.layout = layout
        stream.codec_context.format = sample_fmt
        stream.codec_context.bit_rate = bitrate
        write_pcm(out, stream, pcm, rate, layout, sample_fmt)
    return path


def _recoded(path: str | Path, codec: str, bitrate: int, out_rate: int, fmt: str, sample_fmt: str, ext: str):
    pcm, rate = decode_native(path)
    with tempfile.TemporaryDirectory(prefix="reencode_") as tmp:
        return load_pcm(encode_with(pcm, rate, Path(tmp) / f"out.{ext}", codec, bitrate, out_rate, fmt, sample_fmt))


def aac_64k(path: str | Path) -> np.ndarray:
    """AAC at 64 kb/s (PyAV's native encoder, as the product writes), the file's own rate and layout."""
    pcm, rate = decode_native(path)
    with tempfile.TemporaryDirectory(prefix="reencode_") as tmp:
        return load_pcm(encode_aac(pcm, rate, Path(tmp) / "out.m4a", "64k"))


def opus_48k(path: str | Path) -> np.ndarray:
    """Opus (libopus) at 48 kb/s, 48 kHz, in Ogg."""
    return _recoded(path, "libopus", 48_000, 48_000, "ogg", "flt", "ogg")


def mp3_96k(path: str | Path) -> np.ndarray:
    """MP3 (libmp3lame) at 96 kb/s, 44.1 kHz."""
    return _recoded(path, "libmp3lame", 96_000, 44_100, "mp3", "fltp", "mp3")


def resample_8k(path: str | Path) -> np.ndarray:
    """Down to 8 kHz and back up to 16 kHz with FFmpeg's resampler: everything above 4 kHz is gone."""
    import av

    low = load_pcm(path, rate=8000)
    frame = av.AudioFrame.from_ndarray(low[None], format="flt", layout="mono")
    frame.sample_rate = 8000
    return resample_mono([frame], RATE)


def noise_30db(path: str | Path, snr_db: float = 30.0, seed: int = 0) -> np.ndarray:
    """White Gaussian noise at `snr_db` against the mean power of the whole clip (silences included), seeded."""
    pcm = load_pcm(path)
    power = float(np.mean(pcm.astype(np.float64) ** 2)) if pcm.size else 0.0
    noise = np.random.default_rng(seed).standard_normal(pcm.shape[0]) * np.sqrt(power / 10 ** (snr_db / 10))
    return (pcm + noise).astype(np.float32)


def has_encoder(name: str) -> bool:
    """Whether PyAV's FFmpeg build has the encoder `name`."""
    import av

    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - PyAV raises different types across versions for a missing codec
        return False
    return True


REENCODINGS: dict[str, Transform] = {
    "aac_64k": aac_64k,
    "opus_48k": opus_48k,
    "mp3_96k": mp3_96k,
    "resample_8k": resample_8k,
    "noise_30db": noise_30db,
}
_NEEDS = {"aac_64k": "aac", "opus_48k": "libopus", "mp3_96k": "libmp3lame"}


def available() -> list[str]:
    """Names of the re-encodings this PyAV build can run (MP3 needs libmp3lame, Opus libopus)."""
    return [n for n in REENCODINGS if n not in _NEEDS or has_encoder(_NEEDS[n])]


def reencode(path: str | Path, name: str) -> np.ndarray:
    """The named re-encoding of the file at `path`, as 16 kHz mono float32 PCM. ValueError for an unknown name
    or one whose encoder this PyAV build lacks."""
    if name not in REENCODINGS:
        raise ValueError(f"unknown re-encoding {name!r}; known: {', '.join(REENCODINGS)}")
    if name not in available():
        raise ValueError(f"re-encoding {name!r} needs the {_NEEDS[name]} encoder, absent from this PyAV build")
    return REENCODINGS[name](path)
