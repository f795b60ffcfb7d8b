"""What the attacked recogniser really hears: faster-whisper (CTranslate2, int8) with its default decoding, as the
evaluator runs it, on the protected track after the real output codec.

The attack asks it every few steps: it stops as soon as the transcript is lost (most tracks need far fewer steps
than the hard ones), and what it hears instead (another wording, another language) is the next thing to push away.
A check decodes greedily at temperature 0 (on the surrogate's encoder output where the attack has it: `encoded`);
a loss it reports is confirmed with the evaluator's full decoding, faster-whisper's own from end to end, before the
attack stops.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    """`check(audio16) -> Heard`; the model is loaded on the first call and kept.

    A repeated full decode of the same audio (a redraw of a sampled confirmation) reuses that audio's deterministic
    parts, the encoder passes, language detection and the temperature-0 beam search, and draws only the sampled
    temperatures afresh: the same outcome distribution as a fresh run of the evaluator, without paying for what
    cannot change."""

    def __init__(self, model_dir: str, threads: int = 1) -> None:
        self.model_dir, self.threads = model_dir, threads
        self._memo_key: bytes | None = None
        self._memo: dict[Any, Any] = {}

    def __call__(self, audio: np.ndarray, exact: bool = True, language: str | None = None) -> Heard:
        """`exact`: the evaluator's decoding (beam 5, temperature fallback, language detection); else greedy at
        temperature 0 only (several times cheaper on gibberish, where the fallback samples five more decodes),
        under `language` when given (detection is a second encoder pass)."""
        if audio.size == 0:
            return Heard("", language or "en")
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        model = faster_whisper_model(self.model_dir, self.threads)
        if exact:
            key = hashlib.sha1(audio.tobytes()).digest()
            if key != self._memo_key:
                self._memo_key, self._memo = key, {}
            model = copy.copy(model)  # shares the loaded weights; the evaluator's instance stays untouched
            model.model = _Deterministic(model.model, self._memo)
            return self._transcribe(model, audio, beam_size=5)
        options = {"temperature": 0.0, "language": language, "max_new_tokens": token_cap(audio.size)}
        return self._transcribe(model, audio, beam_size=1, **options)

    def encoded(self, audio: np.ndarray, language: str, encoder: Callable[[np.ndarray], np.ndarray | None]) -> Heard:
        """The cheap check (greedy, temperature 0, under `language`) with the encoder output of each window taken
        from `encoder(mel window) -> (1, 1500, d) array`, or faster-whisper's own where it returns None: the
        decoding stays the real recogniser's, the 30 s encoder pass (most of a check's cost on a short clip) is
        left to a caller that has it already."""
        import ctranslate2

        if audio.size == 0:
            return Heard("", language)
        model = copy.copy(faster_whisper_model(self.model_dir, self.threads))
        own, kept = model.encode, []

        def encode(features: np.ndarray) -> Any:
            out = encoder(features[0] if features.ndim == 3 else features)
            if out is None:
                return own(features)
            kept.append(np.ascontiguousarray(out, dtype=np.float32))  # the StorageView shares this memory
            return ctranslate2.StorageView.from_array(kept[-1])

        model.encode = encode
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        return self._transcribe(
            model, audio, beam_size=1, temperature=0.0, language=language, max_new_tokens=token_cap(audio.size)
        )

    @staticmethod
    def _transcribe(model: Any, audio: np.ndarray, **options: Any) -> Heard:
        segments, info = model.transcribe(audio, **options)
        segments = list(segments)
        parts = [(float(s.start), s.text.strip()) for s in segments]
        sampled = any(s.temperature and s.temperature > 0 for s in segments)
        return Heard(" ".join(t for _, t in parts).strip(), info.language, parts, sampled)


class _Deterministic:
    """A CTranslate2 Whisper whose deterministic calls (encoder, language detection, greedy or beam generation) are
    answered from `memo` when asked again with the same inputs; sampled generation always runs."""

    def __init__(self, model: Any, memo: dict[Any, Any]) -> None:
        self._model, self._memo = model, memo

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def _cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def encode(self, features: Any, **kwargs: Any) -> Any:
        data = np.asarray(features)
        key = ("encode", data.shape, hashlib.sha1(data.tobytes()).digest(), _frozen(kwargs))
        # The memo keeps each output alive, so its identity names it in the keys below.
        return self._cached(key, lambda: self._model.encode(features, **kwargs))

    def detect_language(self, features: Any, **kwargs: Any) -> Any:
        return self._cached(
            ("language", id(features), _frozen(kwargs)), lambda: self._model.detect_language(features, **kwargs)
        )

    def generate(self, features: Any, prompts: Any, **kwargs: Any) -> Any:
        if kwargs.get("sampling_topk", 1) != 1:  # sampled: a redraw must draw again
            return self._model.generate(features, prompts, **kwargs)
        key = ("generate", id(features), _frozen(prompts), _frozen(kwargs))
        return self._cached(key, lambda: self._model.generate(features, prompts, **kwargs))


def _frozen(value: Any) -> Any:
    """A hashable form of nested call arguments."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value
