"""What the attacked recogniser really hears: faster-whisper (CTranslate2, int8) with its default decoding, as the
evaluator runs it, on the protected track after the real output codec.

The attack asks it every few steps: it stops as soon as the transcript is lost (most tracks need far fewer steps
than the hard ones), and what it hears instead (another wording, another language) is the next thing to push away.
A check decodes greedily at temperature 0; a loss it reports is confirmed with the evaluator's full decoding before
the attack stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from media_cleaner.evaluate.speech import faster_whisper_model, wer, words_recovered


@dataclass
class Heard:
    """One faster-whisper transcription of a 16 kHz track."""

    text: str
    language: str
    segments: list[tuple[float, str]] = field(default_factory=list)  # (start in seconds, text)
    sampled: bool = False  # a window's text came from the temperature fallback's sampling: another run may differ

    def text_between(self, start: float, end: float) -> str:
        """The segments that start in [start, end): one 30 s window's share of the transcript."""
        return " ".join(t for s, t in self.segments if start <= s < end).strip()


def lost(clean: Heard, now: Heard, goal: float, max_recovered: float = 1.0) -> bool:
    """The transcript is lost when the word error rate of what is heard now against what was heard on the clean
    track reaches `goal` and at most `max_recovered` of its words are still heard (insertions can lift the WER past
    100% while a word survives); nothing heard at all counts as lost, so does a clean track with nothing to hear."""
    if not clean.text or not now.text:
        return True
    return wer(clean.text, now.text) >= goal and words_recovered(clean.text, now.text) <= max_recovered


# faster-whisper decodes each 30 s window in a 448-token context that starts with up to 223 tokens of the previous
# window's text (plus the start-of-transcript tokens), and refuses a larger `max_new_tokens` once a prompt is there.
MAX_NEW_TOKENS = 200


def token_cap(samples: int) -> int:
    """New tokens allowed per window of a greedy check: speech runs at ~3 tokens/s, so the cap only cuts decodes
    that loop on gibberish (lost either way; jfk's checks decoded up to 82 tokens of it)."""
    return min(MAX_NEW_TOKENS, int(16 + 4 * min(samples / 16000, 30.0)))


class FasterWhisperCheck:
    """`check(audio16) -> Heard`; the model is loaded on the first call and kept."""

    def __init__(self, model_dir: str, threads: int = 1) -> None:
        self.model_dir, self.threads = model_dir, threads

    def __call__(self, audio: np.ndarray, exact: bool = True, language: str | None = None) -> Heard:
        """`exact`: the evaluator's decoding (beam 5, temperature fallback, language detection); else greedy at
        temperature 0 only (several times cheaper on gibberish, where the fallback samples five more decodes),
        under `language` when given (detection is a second encoder pass)."""
        if audio.size == 0:
            return Heard("", language or "en")
        options = {} if exact else {"temperature": 0.0, "language": language, "max_new_tokens": token_cap(audio.size)}
        beam = 5 if exact else 1
        model = faster_whisper_model(self.model_dir, self.threads)
        segments, info = model.transcribe(audio.astype(np.float32), beam_size=beam, **options)
        segments = list(segments)
        parts = [(float(s.start), s.text.strip()) for s in segments]
        sampled = any(s.temperature and s.temperature > 0 for s in segments)
        return Heard(" ".join(t for _, t in parts).strip(), info.language, parts, sampled)
