"""Audio attack internals: the reduced-vocabulary loss measures what the full one does, and the check stops the
optimisation as soon as the recogniser has lost the transcript."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from media_cleaner.config import load_settings
from media_cleaner.evaluate.speech import load_pcm, normalise
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.progress import CancelToken
from media_cleaner.protect.audio import AttackConfig, create
from media_cleaner.protect.audio.attack import _band_limit, plan_windows, reached, stalled_config
from media_cleaner.protect.audio.check import MAX_NEW_TOKENS, FasterWhisperCheck, Heard, lost, token_cap
from media_cleaner.protect.base import AudioContext

MODEL_CACHE = Path(__file__).resolve().parent.parent / ".venv" / "model_cache"


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    settings = load_settings(base_dir=tmp_path_factory.mktemp("attack"), model_cache_dir=MODEL_CACHE, torch_threads=1)
    # float32: the exactness checks below compare against the full model to 1e-4 (bfloat16 has its own test).
    prot = create(settings, ModelRegistry(settings), AttackConfig(precision="float32"))
    prot.prepare(AudioContext(settings=settings, level="weak", sample_rate=16000, channels=1, cancel=CancelToken()))
    return settings, prot


def test_lost_compares_with_the_clean_transcript() -> None:
    clean = Heard("One, two, three.", "en")
    assert not lost(clean, Heard("1, 2, 3", "en"), 0.9)  # the same words in other spelling
    assert not lost(clean, Heard("one two tree", "en"), 0.9)
    assert lost(clean, Heard("", "en"), 0.9)  # nothing heard: faster-whisper dropped the window
    assert lost(clean, Heard("Bimblø af tyner", "no"), 0.9)
    assert lost(Heard("", "en"), Heard("", "en"), 0.9)  # nothing to protect
    heard = Heard("a b", "en", [(0.0, "a"), (31.0, "b")])
    assert heard.text_between(0.0, 30.0) == "a" and heard.text_between(30.0, 60.0) == "b"


def english_window(s, shared_data: Path):  # noqa: ANN001, ANN201
    """english.wav's first (only) window: its log-mel and its frozen encoder context."""
    audio = torch.from_numpy(load_pcm(shared_data / "audio" / "english.wav"))
    window = plan_windows(audio.shape[0])[0]
    mel = s.window_mel(s.features(audio[None]), window.seek)
    return mel, s.frozen_context(mel, window.content)


def test_candidate_loss_matches_the_full_vocabulary(attack, shared_data) -> None:
    """Transcript terms over the top-k candidates equal the full log-softmax where the mass is (the clean state),
    and exactly with the full vocabulary as candidates."""
    _, prot = attack
    a, s = prot._attack, prot._attack.s
    mel, ctx = english_window(s, shared_data)
    prompt = s.prompt("en")
    with torch.no_grad():
        content = s.encode_content(mel, ctx)
        target = s.greedy_text(torch.cat([content, ctx.tail], 1), prompt)[0]
        rows, weights = a._rows([prompt], [target, s.tokenizer.encode(" four five six")], s.device)
        hidden = s.decode_hidden(rows, content, ctx)
        full = torch.log_softmax(s.logits(hidden), -1)[:, :-1].gather(-1, rows[:, 1:, None])[..., 0] * (weights > 0)
        assert torch.allclose(a.token_logp(hidden, rows, weights, None), full, atol=1e-5)
        everything = torch.arange(s.model.dims.n_vocab)
        assert torch.allclose(a.token_logp(hidden, rows, weights, everything), full, atol=1e-4)
        candidates = a.candidate_set(hidden, rows, weights, prompt, 32)
        assert candidates.numel() < 1000
        reduced = a.token_logp(hidden, rows, weights, candidates)
    # The clean transcript: within 0.1 nats (measured 0.04 where the model hesitates); an unlikely phrase: an upper
    # bound, same ballpark.
    assert float((reduced[0] - full[0]).abs().max()) < 0.1
    assert bool((reduced[1] >= full[1] - 1e-4).all()) and float((reduced[1] - full[1]).abs().max()) < 1.0
    # The loss the attack optimises on the clean transcript, reduced and full: the same value and gradient.
    cfg = AttackConfig()
    h = hidden[:1].clone().requires_grad_(True)
    loss_full, _ = a._loss(h, rows[:1], weights[:1], prompt, cfg, None)
    (g_full,) = torch.autograd.grad(loss_full, h)
    loss_cut, _ = a._loss(h, rows[:1], weights[:1], prompt, cfg, candidates)
    (g_cut,) = torch.autograd.grad(loss_cut, h)
    assert abs(float(loss_full.detach()) - float(loss_cut.detach())) < 0.05
    assert float(torch.nn.functional.cosine_similarity(g_full.flatten(), g_cut.flatten(), 0)) > 0.95


def test_rows_decoded_together_equal_rows_decoded_alone(attack, shared_data) -> None:
    """Several token rows over one window's content share one cross-attention pass (the rows folded into one query
    sequence): the hidden states and the gradient reaching the encoder equal decoding each row on its own."""
    _, prot = attack
    a, s = prot._attack, prot._attack.s
    mel, ctx = english_window(s, shared_data)
    texts = [" One, two, three.", " 1, 2, 3", " four five six seven"]
    rows, _ = a._rows([s.prompt("en"), s.prompt("zh")], [s.tokenizer.encode(t) for t in texts], s.device)
    content = s.encode_content(mel, ctx).detach().requires_grad_(True)
    together = s.decode_hidden(rows, content, ctx)
    (g_together,) = torch.autograd.grad(together.square().sum(), content)
    alone = torch.cat([s.decode_hidden(rows[i : i + 1], content, ctx) for i in range(rows.shape[0])])
    (g_alone,) = torch.autograd.grad(alone.square().sum(), content)
    assert rows.shape[0] == 6
    assert float((together - alone).detach().abs().max()) < 1e-3
    assert float((g_together - g_alone).abs().max()) < 1e-3 * float(g_alone.abs().max())


def test_check_stops_the_optimisation_once_the_transcript_is_lost(attack, shared_data) -> None:
    """The loop asks the recogniser every `check_every` steps, on the coded track with the delivered priming delay,
    and stops at the first check that reports the transcript lost: what it returns is what was checked."""
    settings, prot = attack
    audio = load_pcm(shared_data / "audio" / "english.wav")
    real = FasterWhisperCheck(str(ModelRegistry(settings).resolve("whisper-base-ct2")), 1)
    calls: list[np.ndarray] = []

    def listen(pcm: np.ndarray, exact: bool, language: str | None) -> Heard:
        calls.append(pcm)
        # The clean track is really transcribed; from the second check on, the recogniser pretends the words are
        # gone (the cheap decode, then its confirmation).
        assert exact == (len(calls) in (1, 4)) and (exact or language == "en")
        return real(pcm, exact) if len(calls) == 1 else Heard("" if len(calls) >= 3 else "one two three", "en")

    cfg = AttackConfig(
        steps=40,
        check_every=2,
        codec_every=2,
        priming_delay=100,
        confirmations=1,
        check_every_holding=2,
        margin_steps=0,
    )
    delta, figures = prot._attack.run(audio, cfg, codec=lambda d: audio + d, listen=listen)
    assert "three" in figures["clean_heard"].lower() or "3" in figures["clean_heard"]
    assert figures["stopped_at"] == 4 and figures["steps_run"] == 4 and len(calls) == 4
    assert figures["heard"] == ["one two three", ""]
    assert np.allclose(calls[-1], np.pad(audio + delta, (100, 0)), atol=1e-5)  # the returned state was checked


def test_a_loss_needs_consecutive_checks_and_the_evaluators_decoding(attack, shared_data) -> None:
    """With `confirmations=2` a single lost check is not enough (a state just past the boundary flipped back on
    the file), and the stop waits for the full decoding to agree; a few unchecked steps follow it."""
    _, prot = attack
    audio = load_pcm(shared_data / "audio" / "LJ002-0020.wav")
    # What the recogniser "hears" at each call: the clean track, then checks at steps 2, 4, 6, 8 (+ confirmation).
    script = ["in 1813", "", "in 1813", "", "", "", ""]
    calls: list[bool] = []

    def listen(pcm: np.ndarray, exact: bool, language: str | None) -> Heard:
        calls.append(exact)
        return Heard(script[len(calls) - 1], "en")

    cfg = AttackConfig(steps=20, check_every=2, codec_every=2, confirmations=2, check_every_holding=2, margin_steps=4)
    _, figures = prot._attack.run(audio, cfg, codec=lambda d: audio + d, listen=listen)
    assert figures["stopped_at"] == 8 and figures["heard"] == ["", "in 1813", "", ""]
    assert calls == [True, False, False, False, False, True]  # only the stopping check is decoded in full
    # `margin_steps` more steps past the confirmed stop (an option, off by default: measured worse), unchecked.
    assert figures["steps_run"] == 8 + cfg.margin_steps


def scripted_listen(script: list[tuple[str, bool]], calls: list[bool]):  # noqa: ANN201
    """A recogniser that answers the scripted (text, sampled) in turn and records each call's `exact`."""

    def listen(pcm: np.ndarray, exact: bool, language: str | None) -> Heard:
        calls.append(exact)
        text, sampled = script[len(calls) - 1]
        return Heard(text, "en", [(0.0, text)], sampled)

    return listen


def test_a_sampled_confirmation_is_redrawn_on_a_short_transcript(attack, shared_data) -> None:
    """When the confirming decode came from the temperature fallback's sampling, another draw may give a word back
    (the evaluator samples too): on a short transcript the stop needs `redraws` more lost draws."""
    _, prot = attack
    audio = load_pcm(shared_data / "audio" / "LJ002-0020.wav")
    # Clean track; checks at 2 and 4 lost; confirmation lost but sampled, the redraw hears "1813": go on; checks
    # at 6 and 8 lost, confirmation lost and sampled, both redraws lost: stop at 8.
    script = [("in 1813", False), ("", False), ("", False), ("xy", True), ("in 1813", True)]
    script += [("", False), ("", False), ("zz", True), ("", True), ("qq", True)]
    calls: list[bool] = []
    listen = scripted_listen(script, calls)

    cfg = AttackConfig(steps=20, check_every=2, codec_every=2, confirmations=2, redraws=2, check_every_holding=2)
    _, figures = prot._attack.run(audio, cfg, codec=lambda d: audio + d, listen=listen)
    assert figures["stopped_at"] == 8 and figures["redraws"] == 3
    assert calls == [True, False, False, True, True, False, False, True, True, True]
    # A long transcript (more words than `redraw_words`) is not redrawn: one lost draw is representative.
    calls.clear()
    script[:] = [("in 1813", False), ("", False), ("", False), ("xy", True)]
    _, figures = prot._attack.run(audio, replace(cfg, redraw_words=1), codec=lambda d: audio + d, listen=listen)
    assert figures["stopped_at"] == 4 and figures["redraws"] == 0


def test_checks_thin_out_while_the_transcript_holds_and_a_capped_run_returns_the_best_state(
    attack, shared_data
) -> None:
    """A check that still hears most clean words puts the next one `check_every_holding` steps away; a run that
    reaches its cap without a confirmed stop returns the state its confirmations found lost most often."""
    _, prot = attack
    audio = load_pcm(shared_data / "audio" / "LJ002-0020.wav")
    # Clean; step 2 holds (next check at 10); step 10 lost, confirmation lost (sampled), redraw hears it: go on,
    # and the redraw holds again, so the next check would be at 18, past the 16-step cap.
    script = [("in 1813", False), ("in 1813", False), ("", False), ("zz", True), ("in 1813", True)]
    calls: list[bool] = []
    listen = scripted_listen(script, calls)

    cfg = AttackConfig(steps=16, check_every=2, check_every_holding=8, codec_every=2, confirmations=1, redraws=1)
    _, figures = prot._attack.run(audio, cfg, codec=lambda d: audio + d, listen=listen)
    assert calls == [True, False, False, True, True]
    assert figures["heard"] == ["in 1813", "in 1813"] and figures["steps_run"] == 16
    assert figures["stopped_at"] is None and figures["returned_step"] == 10


@pytest.mark.slow
def test_greedy_check_of_a_long_track_fits_the_decoder_context(attack, shared_data) -> None:
    """A 60 s track: the second 30 s window is decoded with the first one's text as prompt, and the greedy check's
    token cap must leave room for it in Whisper's 448-token context (faster-whisper refuses it otherwise)."""
    settings, _ = attack
    audio = load_pcm(shared_data / "audio" / "multilingual.mp3")
    assert audio.size > 50 * 16000
    assert token_cap(audio.size) == token_cap(30 * 16000) <= MAX_NEW_TOKENS
    check = FasterWhisperCheck(str(ModelRegistry(settings).resolve("whisper-base-ct2")), 1)
    heard = check(audio, exact=False, language="en")
    assert len(heard.text.split()) > 60 and heard.text_between(30.0, 61.0)


def test_a_transcript_with_a_surviving_word_is_not_lost() -> None:
    """Insertions lift the WER past 100% while a word of the clean transcript is still heard: not lost yet."""
    clean = Heard("Lay blue at X four now.", "en")
    heard = Heard("Lay la lo bo ki ta tu.", "cy")
    assert lost(clean, heard, 1.0)  # the WER alone says lost (7 edits for 6 words)
    assert not lost(clean, heard, 1.0, max_recovered=0.1)  # "lay" is 1 of 6 words
    assert lost(clean, Heard("Le la lo bo ki ta tu.", "cy"), 1.0, max_recovered=0.1)


def test_the_front_end_term_moves_the_features_and_keeps_the_budget(attack, shared_data) -> None:
    """With `feature_weight` the optimisation also raises the generic front end's MFCC distance from the clean
    track (the transfer term): more than the Whisper terms alone move it in the same steps, at the same budget."""
    import torch

    from media_cleaner.protect.audio.features import SpeechFrontEnd, feature_distance
    from media_cleaner.protect.audio.masking import project_to_floor

    _, prot = attack
    audio = load_pcm(shared_data / "audio" / "LJ002-0020.wav")
    front = SpeechFrontEnd()
    x = torch.from_numpy(audio)
    distances = []
    for weight in (0.0, 2.0):
        cfg = AttackConfig(steps=6, feature_weight=weight, candidate_every=2)
        delta, figures = prot._attack.run(audio, cfg)
        assert figures["steps_run"] == 6 and np.isfinite(delta).all()
        assert ("feature_distance" in figures["last_window_terms"]) == bool(weight)
        distances.append(float(feature_distance(front, x + torch.from_numpy(delta), x, front.peak(x))))
        out = project_to_floor(audio[None], (audio + delta)[None], 16000, cfg.snr_db, margin_db=cfg.margin_db)[0]
        kept = float(np.sum((out - audio) ** 2) / np.sum(delta**2))
        assert kept > 0.99  # the in-graph budget already meets the floor: the projection barely touches it
    assert distances[1] > 1.2 * distances[0], distances


def test_end_of_text_terms_read_every_language_prompt(attack, shared_data) -> None:
    """End-of-text right after <|0.00|> is pushed under each language prompt the rows carry (the recogniser decodes
    under the language it detects), and its margin term is the best text token's logit minus end-of-text's, both
    read from the full-vocabulary log-softmax at that position."""
    _, prot = attack
    a, s = prot._attack, prot._attack.s
    mel, ctx = english_window(s, shared_data)
    en, zh = s.prompt("en"), s.prompt("zh")
    targets = [s.tokenizer.encode(t) for t in (" One, two, three.", " 1, 2, 3")]
    rows, weights = a._rows([en, zh], targets, s.device)
    with torch.no_grad():
        hidden = s.decode_hidden(rows, s.encode_content(mel, ctx), ctx)
        full = torch.log_softmax(s.logits(hidden), -1)
    at = len(en.sot_sequence)  # the position right after <|0.00|>
    heads = full[[0, 2], at]  # the first row under each prompt
    assert rows[0, 1] != rows[2, 1] and rows[0, 1] == rows[1, 1]
    eot = heads[:, en.eot]
    margin = heads[:, : en.eot].amax(-1) - eot
    cfg = AttackConfig(eot_margin_weight=1.0, eot_all_prompts=True)  # as a stalling run turns them on
    _, terms = a._loss(hidden, rows, weights, en, cfg, None)
    assert abs(terms["eot"] - float(eot.mean())) < 1e-4
    assert abs(terms["eot_margin"] - float(margin.max())) < 1e-4
    assert terms["eot_margin"] > 0  # the clean track: a digit, not end-of-text, follows <|0.00|>
    # The track's prompt only: the first row's.
    _, terms = a._loss(hidden, rows, weights, en, replace(cfg, eot_all_prompts=False), None)
    assert abs(terms["eot"] - float(eot[0])) < 1e-4 and abs(terms["eot_margin"] - float(margin[0])) < 1e-4
    # The margin term's gradient raises end-of-text against the leading text token, until it leads by the margin.
    h = hidden.clone().requires_grad_(True)
    only_margin = replace(cfg, eot_weight=0.0, no_speech_weight=0.0, decoder_weight=0.0, language_weight=0.0)
    loss, _ = a._loss(h, rows, weights, en, only_margin, None)
    assert abs(float(loss.detach()) - float(margin.clamp(min=-cfg.eot_margin).mean())) < 1e-4
    (g,) = torch.autograd.grad(loss, h)
    step = h.detach() - 0.01 * g / g.norm()
    _, moved = a._loss(step, rows, weights, en, only_margin, None)
    assert moved["eot_margin"] < float(margin.max())


def test_a_stalling_run_turns_the_end_of_text_margin_on(attack, shared_data) -> None:
    """A check from `stall_after` on that still hears the clean transcript turns the end-of-text margin on under
    every language prompt (off before: from the start it slowed the clips that break early); a lost check does not."""
    _, prot = attack
    audio = load_pcm(shared_data / "audio" / "LJ002-0020.wav")
    # Clean; step 2 holds (before stall_after); step 4 lost (not holding); step 6 holds: the margin goes on.
    script = [("in 1813", False), ("in 1813", False), ("", False), ("in 1813", False), ("in 1813", False)]
    cfg = AttackConfig(steps=9, check_every=2, check_every_holding=2, codec_every=2, stall_after=4)
    calls: list[bool] = []
    _, figures = prot._attack.run(audio, cfg, codec=lambda d: audio + d, listen=scripted_listen(script, calls))
    assert figures["stalled_at"] == 6 and "eot_margin" in figures["last_window_terms"]
    calls.clear()
    off = replace(cfg, stall_margin_weight=0.0)
    _, figures = prot._attack.run(audio, off, codec=lambda d: audio + d, listen=scripted_listen(script, calls))
    assert figures["stalled_at"] is None and "eot_margin" not in figures["last_window_terms"]
    # Only a check that still hears (nearly) the whole clean transcript counts as stalling.
    calls.clear()
    partly = [("in 1813", False), ("in 1813", False), ("", False), ("in 1912", False), ("in 1813", False)]
    _, figures = prot._attack.run(audio, cfg, codec=lambda d: audio + d, listen=scripted_listen(partly, calls))
    assert figures["stalled_at"] == 8


def test_a_stalling_long_transcript_drops_the_end_of_text_terms(attack, shared_data) -> None:
    """On a transcript of more than `redraw_words` words a stall leaves the budget to the language and transcript
    terms: end-of-text and no-speech weigh nothing and no margin goes on; `stall_long_language=False` keeps the
    short-transcript rule (the margin) for every length."""
    _, prot = attack
    audio = load_pcm(shared_data / "audio" / "LJ002-0020.wav")
    sentence = "it will be seen that I did not succeed in my design and that however much I may have met"
    script = [(sentence, False)] * 5
    cfg = AttackConfig(steps=9, check_every=2, check_every_holding=2, codec_every=2, stall_after=4)
    calls: list[bool] = []
    _, figures = prot._attack.run(audio, cfg, codec=lambda d: audio + d, listen=scripted_listen(script, calls))
    assert figures["stalled_at"] == 4 and "eot_margin" not in figures["last_window_terms"]
    stalled = stalled_config(cfg, short=False)
    assert stalled.eot_weight == stalled.no_speech_weight == stalled.eot_margin_weight == 0.0
    assert stalled.decoder_weight == cfg.decoder_weight and stalled.language_weight == cfg.language_weight
    calls.clear()
    margin = replace(cfg, stall_long_language=False)
    _, figures = prot._attack.run(audio, margin, codec=lambda d: audio + d, listen=scripted_listen(script, calls))
    assert figures["stalled_at"] == 4 and "eot_margin" in figures["last_window_terms"]
    short = stalled_config(cfg, short=True)
    assert short.eot_margin_weight == cfg.stall_margin_weight and short.eot_weight == cfg.eot_weight


def test_a_lost_transcript_is_not_pushed_away_without_push_lost(attack) -> None:
    """What a check hears is pushed away when it still carries clean words; gibberish (already lost) is pushed only
    with `push_lost` (pushing it moved common_voice back to its clean wording at every other check)."""
    _, prot = attack
    a, s = prot._attack, prot._attack.s
    windows = plan_windows(3 * 16000)
    clean = Heard("Every purchase is a vote.", "en", [(0.0, "Every purchase is a vote.")])
    gibberish = Heard("Hidrall, hau, hau, hau", "cy", [(0.0, "Hidrall, hau, hau, hau")])
    variant = Heard("Can we purchase a vote?", "en", [(0.0, "Can we purchase a vote?")])
    for push_lost, pushed in ((True, 2), (False, 1)):
        prompts = [s.prompt("en")]
        targets = [[s.tokenizer.encode(" " + clean.text)]]
        decoding = [[prompts[0]]]
        cfg = AttackConfig(push_lost=push_lost)
        a._push_heard(gibberish, windows, prompts, targets, decoding, cfg, clean)
        assert len(targets[0]) == pushed
        assert [d.language for d in decoding[0]] == ["en", "cy"]  # the language it drifted to is kept either way
        assert a._push_heard(variant, windows, prompts, targets, decoding, cfg, clean)
        assert targets[0][-1] == s.tokenizer.encode(" " + variant.text)


def test_a_bfloat16_surrogate_agrees_with_float32(attack, shared_data) -> None:
    """The bfloat16 copy (weights cast once, layer norms in float32) hears the same transcript, and its gradient
    on the log-mel points the same way as float32's."""
    from media_cleaner.models.whisper import load_whisper
    from media_cleaner.protect.audio.attack import WhisperAttack
    from media_cleaner.protect.audio.surrogate import WhisperSurrogate

    settings, prot = attack
    s32 = prot._attack.s
    s16 = WhisperSurrogate(load_whisper(settings, ModelRegistry(settings)), torch.bfloat16)
    assert s16.model.encoder.blocks[0].attn.query.weight.dtype == torch.bfloat16
    assert s16.model.encoder.blocks[0].attn_ln.weight.dtype == torch.float32
    mel, ctx32 = english_window(s32, shared_data)
    ctx16 = s16.frozen_context(mel, ctx32.content)
    prompt = s32.prompt("en")
    grads, texts = [], []
    for s, ctx in ((s32, ctx32), (s16, ctx16)):
        m = mel.clone().requires_grad_(True)
        content = s.encode_content(m, ctx)
        full = torch.cat([content.detach(), ctx.tail], 1)
        texts.append(s.greedy_text(full, prompt)[0])
        assert s.detect_language(full) == ["en"]
        a = WhisperAttack(s)
        rows, weights = a._rows([prompt], [texts[0]], s.device)
        loss, _ = a._loss(s.decode_hidden(rows, content, ctx), rows, weights, prompt, AttackConfig())
        assert loss.dtype == torch.float32
        (g,) = torch.autograd.grad(loss, m)
        grads.append(g.flatten())
    # The same words (bfloat16 may punctuate differently: "1 2 3" / "1, 2, 3.").
    assert normalise(s32.tokenizer.decode(texts[0])) == normalise(s32.tokenizer.decode(texts[1]))
    assert float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)) > 0.8


def test_reached_reads_each_objective() -> None:
    """Untargeted: the clean transcript lost; silence: nothing heard; phrase: the phrase heard (once per window)."""
    clean = Heard("In 1813.", "en")
    gibberish = Heard("Bimblø af tyner", "no")
    untargeted, silence = AttackConfig(), AttackConfig(objective="silence")
    phrase = AttackConfig(objective="phrase", phrase="The weather is nice today.")
    assert reached(untargeted, clean, gibberish) and not reached(untargeted, clean, clean)
    assert not reached(silence, clean, gibberish) and reached(silence, clean, Heard(" ... ", "en"))
    assert reached(phrase, clean, Heard("the weather is nice today", "en"))
    assert not reached(phrase, clean, Heard("The weather is nice.", "en")) and not reached(phrase, clean, gibberish)
    assert reached(replace(phrase, phrase_wer=0.25), clean, Heard("The weather is nice.", "en"))
    assert reached(phrase, clean, Heard("The weather is nice today. The weather is nice today.", "en"), windows=2)


@pytest.mark.parametrize(
    ("objective", "script", "stop"),
    [
        # Silence: gibberish is lost for the untargeted goal but not silent: the run goes on until nothing is heard
        # (the lost state at step 4 is decoded once in full, as the fallback).
        ("silence", ["in 1813", "xy zz", "xy zz", "xy zz", "", "", ""], 8),
        # Phrase: only the phrase counts (a word missing at step 6 is not it), in two checks in a row and then in
        # the evaluator's decoding (the lost state at step 4 decoded in full as the fallback hears it already).
        (
            "phrase",
            ["in 1813", "", "hello there", "the weather is nice today", "Weather is nice today.", "in 1813"]
            + ["the weather is nice today"] * 3,
            12,
        ),
    ],
)
def test_a_targeted_run_stops_on_its_own_goal(attack, shared_data, objective: str, script: list[str], stop: int):
    """The stop follows the objective: checks every 2 steps, two in a row plus the evaluator's decoding."""
    _, prot = attack
    audio = load_pcm(shared_data / "audio" / "LJ002-0020.wav")
    calls: list[bool] = []
    listen = scripted_listen([(t, False) for t in script], calls)
    cfg = AttackConfig(
        objective=objective,
        phrase="The weather is nice today" if objective == "phrase" else "",
        steps=20,
        check_every=2,
        check_every_holding=2,
        codec_every=2,
        confirmations=2,
    )
    _, figures = prot._attack.run(audio, cfg, codec=lambda d: audio + d, listen=listen)
    assert figures["stopped_at"] == stop and figures["steps_run"] == stop, figures
    # The clean track, the fallback's decode of the first lost state, the confirming decode.
    assert calls[-1] is True and calls.count(True) == 3
    assert figures["last_window_terms"].keys() >= ({"eot_margin"} if objective == "silence" else {"phrase", "clean"})


def test_a_targeted_run_that_misses_its_goal_returns_the_first_lost_state(attack, shared_data) -> None:
    """Silence never reached within the cap: the run returns the first state the evaluator's decoding found lost
    (checked once, after two lost checks in a row), so a targeted run is never weaker than the untargeted stop."""
    _, prot = attack
    audio = load_pcm(shared_data / "audio" / "LJ002-0020.wav")
    script = [("in 1813", False), ("xy zz", False), ("xy zz", False), ("qq", False), ("xy", False), ("xy", False)]
    calls: list[bool] = []
    listen = scripted_listen(script, calls)
    cfg = AttackConfig(objective="silence", steps=10, check_every=2, check_every_holding=2, codec_every=2)
    _, figures = prot._attack.run(audio, cfg, codec=lambda d: audio + d, listen=listen)
    assert calls == [True, False, False, True, False, False]
    assert figures["stopped_at"] is None and not figures["target_reached"]
    assert figures["fallback_step"] == 4 and figures["returned_step"] == 4


def test_band_limit_keeps_the_low_band_and_removes_the_high() -> None:
    t = torch.arange(16000) / 16000.0
    low, high = torch.sin(2 * torch.pi * 1000 * t), torch.sin(2 * torch.pi * 6000 * t)
    out = _band_limit(low + high, 3800.0)
    assert float((out - low).pow(2).mean()) < 1e-4 * float(low.pow(2).mean())


def test_a_robust_check_needs_the_degraded_copy_lost_too(attack, shared_data) -> None:
    """With `robust_check` a check that hears nothing on the file also decodes a band-limited, noisy copy, and
    the stop needs both lost; the first state lost on the file itself is kept as the fallback."""
    _, prot = attack
    audio = load_pcm(shared_data / "audio" / "LJ002-0020.wav")
    # Clean; step 2: file lost, copy not; step 4: both lost, then the fallback's full decode; step 6: both lost,
    # then the evaluator's decoding of the file and of the copy.
    script = ["in 1813", "", "in 1813", "", "", "", "", "", "", ""]
    calls: list[bool] = []
    listen = scripted_listen([(t, False) for t in script], calls)
    cfg = AttackConfig(robust_check=True, robust_prob=0.5, steps=20, check_every=2, check_every_holding=2)
    _, figures = prot._attack.run(audio, replace(cfg, codec_every=2), codec=lambda d: audio + d, listen=listen)
    assert calls == [True, False, False, False, False, True, False, False, True, True]
    assert figures["stopped_at"] == 6 and figures["target_reached"] and figures["fallback_step"] == 4


def test_a_jobs_targeted_objective_reaches_the_attack(tmp_path) -> None:
    """The job's outcome (AudioContext.objective / phrase) replaces the protector's own when it is targeted."""
    settings = load_settings(base_dir=tmp_path, model_cache_dir=MODEL_CACHE)
    prot = create(settings, ModelRegistry(settings))
    assert prot.config_for("weak").objective == "untargeted"
    cfg = prot.config_for("strong", "phrase", "hello there")
    assert (cfg.objective, cfg.phrase, cfg.snr_db) == ("phrase", "hello there", 30.0)
    silent = create(settings, ModelRegistry(settings), AttackConfig(objective="silence"))
    assert silent.config_for("weak", "untargeted").objective == "silence"
