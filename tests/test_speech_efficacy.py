"""Speech efficacy: text normalisation, WER, both recognisers on real clips."""

from __future__ import annotations

import numpy as np

from media_cleaner.evaluate.speech import (
    encode_aac,
    load_pcm,
    normalise,
    speech_efficacy,
    sphinx_transcribe,
    wer,
    whisper_transcribe,
    words_recovered,
)


def test_normalisation_makes_spellings_of_numbers_agree() -> None:
    assert normalise("one two three") == normalise("1, 2, 3")
    assert normalise("In eighteen thirteen") == normalise("in 1813.")
    assert wer("And so, my fellow Americans", "and so my fellow americans") == 0.0
    assert wer("bin blue at f two now", "") == 1.0
    assert wer("a b c d", "a x c d") == 0.25
    assert words_recovered("a b c d", "a x c d") == 0.75


def test_recognisers_on_a_real_clip(settings, shared_data) -> None:
    pcm = load_pcm(shared_data / "audio" / "english.wav")
    assert pcm.dtype == np.float32 and abs(pcm.shape[0] / 16000 - 2.7) < 0.2
    assert wer("one two three", whisper_transcribe(pcm, settings)) == 0.0
    assert wer("one two three", sphinx_transcribe(pcm)) <= 0.34


def test_speech_efficacy_on_identical_files(settings, shared_data, tmp_path) -> None:
    pcm = load_pcm(shared_data / "audio" / "english.wav", rate=44100)[None]
    path = encode_aac(pcm, 44100, tmp_path / "a.m4a")
    result = speech_efficacy(shared_data / "audio" / "english.wav", path, settings, reference="one two three")
    assert result["whisper"]["wer_original"] == 0.0
    assert result["whisper"]["wer_protected"] == 0.0  # AAC alone does not hurt Whisper
    assert result["unseen"]["recogniser"].startswith("pocketsphinx")
    own = speech_efficacy(shared_data / "audio" / "english.wav", path, settings)
    assert own["whisper"]["reference"] == "own transcript of the original"
