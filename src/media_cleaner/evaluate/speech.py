"""Speech efficacy: how much of the spoken content recognisers still get from a file, original vs protected.

Two recognisers, always on the decoded file:
- Whisper base through faster-whisper (CTranslate2, int8): the model the attack optimises against (the fast path);
- PocketSphinx 5 (en-us acoustic model + LM, MFCC / HMM): a recogniser the optimisation never sees.
Text is normalised with Whisper's English normaliser (numbers, spelling, punctuation) before jiwer's WER.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from media_cleaner.config import Settings

RATE = 16000
_DIGITS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine".split())}
_LOCK = threading.Lock()


def load_pcm(path: str | Path, rate: int = RATE, stream: int = 0) -> np.ndarray:
    """The `stream`-th audio stream of a file, downmixed to mono float32 at `rate` (what recognisers take)."""
    import av

    with av.open(str(path)) as container:
        return resample_mono(container.decode(container.streams.audio[stream]), rate)


def resample_mono(frames: Iterable[Any], rate: int = RATE) -> np.ndarray:
    """Audio frames downmixed and resampled to mono float32 at `rate` by FFmpeg's resampler, as faster-whisper's
    own decode_audio does: the one path by which recognisers (and the attack's loop) hear a track."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks = [f.to_ndarray().reshape(-1) for frame in frames for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def _has_audio(path: str | Path) -> bool:
    import av

    with av.open(str(path)) as container:
        return bool(container.streams.audio)


@lru_cache(maxsize=1)
def _normaliser():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalise(text: str) -> str:
    """Lower case, no punctuation, numbers and spellings unified (Whisper's English normaliser).

    Digits are then spelt one per word: the normaliser joins "one two three" into "123" but "1, 2, 3" into
    "1 2 3", and "eighteen thirteen" / "1813" must compare equal either way.
    """
    words = re.sub(r"(\d)", r" \1 ", _normaliser()(text)).split()
    return " ".join(_DIGITS.get(w, w) for w in words)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after normalisation (can exceed 1.0 with insertions); 0.0 for two empty texts."""
    import jiwer

    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp or "<empty>")) if hyp else 1.0


def words_recovered(reference: str, hypothesis: str) -> float:
    """Share of reference words the hypothesis gets right (aligned hits / reference length)."""
    import jiwer

    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        return 0.0
    if not hyp:
        return 0.0
    out = jiwer.process_words(ref, hyp)
    return out.hits / max(1, len(ref.split()))


@lru_cache(maxsize=2)
def faster_whisper_model(model_dir: str, threads: int):
    """faster-whisper (CTranslate2, int8, CPU) on a model directory, loaded once per (directory, threads)."""
    from faster_whisper import WhisperModel

    return WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads)


def whisper_transcribe(pcm: np.ndarray, settings: Settings, language: str | None = None) -> str:
    """Whisper base via faster-whisper with its default decoding (beam 5, temperature fallback, language detection)."""
    from media_cleaner.models.registry import ModelRegistry

    if pcm.size == 0:
        return ""
    model = faster_whisper_model(str(ModelRegistry(settings).resolve("whisper-base-ct2")), settings.torch_threads or 2)
    with _LOCK:
        segments, _ = model.transcribe(pcm.astype(np.float32), language=language, beam_size=5)
        return " ".join(s.text.strip() for s in segments).strip()


def sphinx_transcribe(pcm: np.ndarray) -> str:
    """PocketSphinx 5 with its bundled en-us acoustic model, dictionary and language model."""
    from pocketsphinx import Decoder

    if pcm.size == 0:
        return ""
    decoder = Decoder(samprate=RATE, loglevel="FATAL")
    data = (np.clip(pcm, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    decoder.start_utt()
    decoder.process_raw(data, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr if hyp is not None else ""


def _scores(name: str, original: str, protected: str, reference: str | None) -> dict[str, Any]:
    ref = reference if reference is not None else original
    return {
        "recogniser": name,
        "reference": "given" if reference is not None else "own transcript of the original",
        "original_text": original,
        "protected_text": protected,
        "wer_original": round(wer(ref, original), 4),
        "wer_protected": round(wer(ref, protected), 4),
        "words_recovered_protected": round(words_recovered(ref, protected), 4),
        "wer_vs_own_original": round(wer(original, protected), 4),
    }


def speech_efficacy(
    original_path: str | Path,
    protected_path: str | Path,
    settings: Settings,
    reference: str | None = None,
    *,
    stream: int = 0,
) -> dict[str, Any]:
    """WER of Whisper base (attacked) and PocketSphinx (never seen by the attack) on both files' decoded audio."""
    if not (_has_audio(original_path) and _has_audio(protected_path)):
        return {"available": True, "skipped": "no audio stream in one of the files"}
    original, protected = load_pcm(original_path, stream=stream), load_pcm(protected_path, stream=stream)
    return speech_efficacy_pcm(original, protected, settings, reference)


def speech_efficacy_pcm(
    original: np.ndarray, protected: np.ndarray, settings: Settings, reference: str | None = None
) -> dict[str, Any]:
    """As `speech_efficacy`, on mono 16 kHz PCM already decoded."""
    whisper_o, whisper_p = whisper_transcribe(original, settings), whisper_transcribe(protected, settings)
    sphinx_o, sphinx_p = sphinx_transcribe(original), sphinx_transcribe(protected)
    return {
        "whisper": _scores("whisper-base (faster-whisper, int8)", whisper_o, whisper_p, reference),
        "unseen": _scores("pocketsphinx-5.1.1 en-us", sphinx_o, sphinx_p, reference),
    }


def encode_aac(pcm: np.ndarray, rate: int, path: str | Path, bitrate: str = "128k") -> Path:
    """Write (channels, samples) float PCM as AAC in an .m4a/.mp4 file with PyAV (what the product delivers)."""
    import av

    from media_cleaner.media.audio import add_aac_stream

    layout = {1: "mono", 2: "stereo", 6: "5.1"}.get(pcm.shape[0], f"{pcm.shape[0]}c")
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        stream = add_aac_stream(out, rate, layout, bitrate)
        write_pcm(out, stream, pcm, rate, layout, "fltp")
    return path


def write_pcm(out: Any, stream: Any, pcm: np.ndarray, rate: int, layout: str, sample_fmt: str) -> None:
    """Encode (channels, samples) float PCM at `rate` into `stream` of the open container `out` (clipped, in
    4096-sample frames, resampled to the stream's rate and `sample_fmt`), flushing resampler and encoder."""
    import av

    resampler = av.AudioResampler(format=sample_fmt, layout=layout, rate=stream.rate)
    data = np.ascontiguousarray(np.clip(pcm, -1.0, 1.0), dtype=np.float32)

    def frames() -> Iterable[Any]:  # one at a time: a long track is not held twice
        for start in range(0, data.shape[1], 4096):
            frame = av.AudioFrame.from_ndarray(data[:, start : start + 4096], format="fltp", layout=layout)
            frame.sample_rate = rate
            yield frame
        yield None  # flushes the resampler

    for frame in frames():
        for chunk in resampler.resample(frame):
            for packet in stream.encode(chunk):
                out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
