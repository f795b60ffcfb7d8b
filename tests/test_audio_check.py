"""The attack's checks: the cheap check on the surrogate's encoder output hears what faster-whisper hears, and a
redrawn confirmation reuses only the evaluator's deterministic work."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from media_cleaner.config import load_settings
from media_cleaner.evaluate.speech import faster_whisper_model, load_pcm, normalise
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.progress import CancelToken
from media_cleaner.protect.audio import AttackConfig, create
from media_cleaner.protect.audio.attack import _hear_on_surrogate, plan_windows
from media_cleaner.protect.audio.check import FasterWhisperCheck, lost
from media_cleaner.protect.base import AudioContext

MODEL_CACHE = Path(__file__).resolve().parent.parent / ".venv" / "model_cache"
PRIMING = 1024


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    settings = load_settings(base_dir=tmp_path_factory.mktemp("check"), model_cache_dir=MODEL_CACHE, torch_threads=1)
    prot = create(settings, ModelRegistry(settings), AttackConfig(check_encoder="surrogate"))
    prot.prepare(AudioContext(settings=settings, level="weak", sample_rate=16000, channels=1, cancel=CancelToken()))
    check = FasterWhisperCheck(str(ModelRegistry(settings).resolve("whisper-base-ct2")), 1)
    return settings, prot, check


def surrogate_check(s, check: FasterWhisperCheck, clean: np.ndarray, audio: np.ndarray):  # noqa: ANN001, ANN201
    """The cheap check as the attack runs it: frozen padding from `clean` as delivered, `audio` decoded."""
    primed = np.pad(clean, (PRIMING, 0))
    window = plan_windows(primed.size)[0]
    with torch.no_grad():
        ctx = s.frozen_context(s.window_mel(s.features(torch.from_numpy(primed)[None]), 0), window.content)
    calls: list[bool] = []

    def encoded(delivered, language, encoder):  # noqa: ANN001, ANN202
        def counted(window: np.ndarray):  # noqa: ANN202
            out = encoder(window)
            calls.append(out is not None)
            return out

        return check.encoded(delivered, language, counted)

    class Listen:
        pass

    listen = Listen()
    listen.encoded = encoded  # type: ignore[attr-defined]
    return _hear_on_surrogate(s, listen, np.pad(audio, (PRIMING, 0)), ctx), calls


def test_the_surrogate_check_hears_the_clean_words(parts, shared_data) -> None:
    """jfk.flac as delivered: faster-whisper's greedy decode on the surrogate's encoder output (float32, padding
    frozen) hears the same words and language as on its own int8 encoder, and the surrogate's output was used."""
    _, prot, check = parts
    audio = load_pcm(shared_data / "audio" / "jfk.flac")
    heard, calls = surrogate_check(prot._attack.s, check, audio, audio)
    own = check(np.pad(audio, (PRIMING, 0)), exact=False, language="en")
    assert calls and calls[0]  # the first window's encoder output came from the surrogate
    assert heard.language == "en" and normalise(heard.text) == normalise(own.text)
    assert "ask not what your country" in normalise(heard.text)


def test_language_from_the_content_positions_equals_the_full_detection(parts, shared_data) -> None:
    """Language detection on the content positions over the frozen padding's cross-attention equals openai-whisper's
    detection on the whole padded window's encoder output (same languages, logits within float tolerance)."""
    _, prot, _ = parts
    s = prot._attack.s
    for name in ("jfk.flac", "english.wav"):
        audio = torch.from_numpy(load_pcm(shared_data / "audio" / name))
        window = plan_windows(audio.shape[0])[0]
        mel = s.window_mel(s.features(audio[None]), 0)
        ctx = s.frozen_context(mel, window.content)
        with torch.no_grad():
            content = s.encode_content(mel, ctx)
            full = torch.cat([content, ctx.tail], 1)
            sot = torch.tensor([[s.tokenizer.sot]])
            ids = list(s.tokenizer.all_language_tokens)
            reference = s.model.decoder(sot, full)[0, -1, ids]
            cheap = s.logits(s.decode_hidden(sot, content, ctx)[:, -1], torch.tensor(ids))[0]
        assert float((reference - cheap).abs().max()) < 1e-3
        assert s.detect_language_content(content, ctx) == s.detect_language(full) == ["en"]


@pytest.mark.slow
def test_the_surrogate_check_hears_what_the_recogniser_hears_on_a_lost_state(parts, shared_data) -> None:
    """A real run with the surrogate check on a GRID clip stops on a state the evaluator's decoding finds lost; the
    cheap check on that state says lost both with the surrogate's encoder output and with faster-whisper's own."""
    settings, prot, check = parts
    audio = load_pcm(shared_data / "video" / "grid_bbaf2n.mpg")
    cfg = replace(prot.config_for("weak"), priming_delay=PRIMING)
    delta, figures = prot._attack.run(audio, cfg, listen=check)
    assert figures["stopped_at"] is not None, figures["heard"]
    clean = check(audio, exact=True)
    heard, calls = surrogate_check(prot._attack.s, check, audio, audio + delta)
    own = check(np.pad(audio + delta, (PRIMING, 0)), exact=False, language=heard.language)
    assert calls[0]
    assert lost(clean, heard, cfg.stop_wer, cfg.stop_recovered) and lost(clean, own, cfg.stop_wer, cfg.stop_recovered)
    assert lost(clean, check(audio + delta, exact=True), cfg.stop_wer, cfg.stop_recovered)


@pytest.mark.slow
def test_a_redraw_reuses_only_the_deterministic_decoding(parts, shared_data) -> None:
    """Decoding the same audio again as the evaluator does answers the encoder passes, the language detection and
    the temperature-0 beam search from the first decode, and gives the evaluator's own transcript; sampled
    generation is never cached."""
    settings, _, check = parts
    audio = load_pcm(shared_data / "audio" / "LJ002-0020.wav")
    first = check(audio, exact=True)
    memo = dict(check._memo)
    kinds = sorted(k[0] for k in memo)
    assert kinds.count("encode") == 2  # language detection's window has one frame more than the transcription's
    assert "language" in kinds and "generate" in kinds
    again = check(audio, exact=True)
    assert check._memo.keys() == memo.keys() and all(check._memo[k] is memo[k] for k in memo)
    model = faster_whisper_model(check.model_dir, check.threads)
    segments, info = model.transcribe(audio, beam_size=5)  # the evaluator's decoding, nothing cached
    reference = " ".join(s.text.strip() for s in segments).strip()
    assert first.text == again.text == reference and first.language == info.language
    # Gibberish falls back to sampling: those generations are drawn afresh, only the beam search is cached.
    noise = np.random.default_rng(0).normal(0, 0.1, 16000 * 2).astype(np.float32)
    heard = check(noise, exact=True)
    generated = [k for k in check._memo if k[0] == "generate"]
    assert all(dict(k[3]).get("sampling_topk", 1) == 1 for k in generated)
    assert heard.sampled or len(generated) == 1
