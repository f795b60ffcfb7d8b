"""The optimisation: a perturbation of 16 kHz speech, at the level's SNR floor, that makes Whisper lose the transcript.

One perturbation for the whole track, free complex STFT coefficients under an amplitude shape (`masking.py`),
scaled inside the graph to the SNR floor in every 1 s window of the same staggered grids the final projection
enforces, and optimised with Adam on Whisper base exactly as faster-whisper runs it: the track's log-mel, cut into
consecutive 30 s windows, each padded with zero frames to 3000 (see `surrogate.py`). Every `codec_every` steps the
protected track goes through the real output codec (straight-through); each step also sees a random delay: a
sub-frame one, and half the time the AAC priming delay the delivered file starts with.

Objectives:
- untargeted (default): lower the decoder's probability of the clean transcript (teacher forcing after the first
  timestamp, as faster-whisper decodes), of the track's language at language detection, and raise end-of-text
  right after the first timestamp (its log-probability, and its logit's lead over the best text token, under every
  language prompt pushed) plus the no-speech probability (an empty transcript is the best protection);
- silence: the untargeted attack until the evaluator's decoding finds the transcript lost, then its terms with
  end-of-text (its log-probability and its margin under every language prompt) and no-speech at full weight;
  stops once the recogniser hears nothing, and returns that lost state if it never gets there;
- phrase: teacher-force a chosen phrase (then end-of-text) under the track's language, whose detection is held;
  stops once the recogniser hears the phrase (within `phrase_wer`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from media_cleaner.evaluate.speech import normalise, wer, words_recovered
from media_cleaner.protect.audio.check import Heard, lost
from media_cleaner.protect.audio.features import HOP as FEATURE_HOP
from media_cleaner.protect.audio.features import SpeechFrontEnd, feature_distance
from media_cleaner.protect.audio.masking import N_FFT as N_FFT_MASK
from media_cleaner.protect.audio.masking import istft, mask_shape, sliding_budget_gain
from media_cleaner.protect.audio.surrogate import (
    HOP,
    N_FRAMES,
    SAMPLE_RATE,
    FrozenContext,
    Prompt,
    WhisperSurrogate,
)


@dataclass
class AttackConfig:
    """Defaults are the measured best at the weak level on this CPU (see docs/audio-protection.md)."""

    snr_db: float = 40.0
    steps: int = 160  # at most; the check on the delivered file stops most tracks far earlier
    lr: float = 0.3
    objective: str = "untargeted"  # untargeted | silence | phrase
    phrase: str = ""
    phrase_wer: float = 0.0  # phrase: the stop once the recogniser's transcript is this close to the phrase (WER)
    language: str | None = None  # None: detected per window on the clean audio
    decoder_weight: float = 1.0  # untargeted: teacher-forced log-probability of the clean transcript
    language_weight: float = 1.0  # untargeted: log-probability of the track's language at language detection
    language_floor: float = -8.0  # ... pushed down to here only, then the budget goes to the other terms
    eot_weight: float = 0.5  # untargeted: end-of-text right after the first timestamp
    no_speech_weight: float = 0.5  # untargeted: no-speech probability (faster-whisper drops such a window)
    eot_margin_weight: float = 0.0  # untargeted: end-of-text's logit right after the first timestamp against the
    eot_margin: float = 2.0  # best text token's, raised until it leads by this much (the empty transcript, greedily)
    eot_all_prompts: bool = False  # end-of-text terms under every language prompt pushed, not the track's only (the
    # recogniser decodes under the language it detects; english.wav seed 1: EOT led by 2.7 under English while the
    # check, under the drifted language, heard "1 2 3")
    stall_after: int = 16  # a check from this step on that still hears `stall_recovered` of the clean words turns
    stall_recovered: float = 0.9  # both on (margin at `stall_margin_weight`, every prompt): from the start they
    stall_margin_weight: float = 1.0  # slowed jfk 16 -> 108 steps and LJ002 16-28 -> 84 (greedy empty, the beam
    # still finds words); on at half the words, grid_lbax4n (seed 1) kept "for now" to the cap (83%)
    stall_long_language: bool = True  # ... but on a transcript of more than `redraw_words` words the stall drops
    # the end-of-text and no-speech terms instead, leaving the budget to the language and transcript terms: an empty
    # transcript against a long confident sentence is the hardest outcome, one language decision the easiest
    # (LibriSpeech 2412, 35 words, seed 0: 3% at the cap with the margin, 100% at 128 steps without those terms)
    retarget_every: int = 5  # untargeted, without a check: steps between greedy decodes of the current state
    max_targets: int = 3  # transcripts pushed per window: the clean one and those it drifts to
    push_lost: bool = True  # also push away a heard transcript that is already lost (gibberish): it moves the state
    # away from a lost one, back towards the clean wording (common_voice: Welsh gibberish and "can we purchase..."
    # alternated at every check for 160 steps)
    codec_aware: bool = True  # the real output codec in the loop (straight-through), see `run`
    codec_every: int = 4  # steps between passes through the real codec
    check_every: int = 4  # steps between checks of the coded output with the real recogniser (when one is given)
    check_every_holding: int = 8  # ... while the last check still heard at least `holding` of the clean words
    check_encoder: str = "surrogate"  # the cheap check's encoder pass: surrogate (its float32 encoder output, the
    # content positions over the frozen padding, decoded greedily by faster-whisper: 7 clips, seed 0, 71 checks, the
    # same lost verdict as faster-whisper's own encoder 67 times, 3.6x cheaper) | recogniser (faster-whisper's own,
    # int8, as before); the confirmation always runs the recogniser end to end, as the evaluator does
    holding: float = 0.5
    stop_wer: float = 1.0  # ... which stop the optimisation once its WER against the clean transcript reaches this
    stop_recovered: float = 0.1  # ... and at most this share of the clean transcript's words is still heard
    confirmations: int = 2  # ... in this many consecutive checks, the last one decoded as the evaluator does: a
    # state only just past the boundary flipped back on the delivered file (jfk: lost in the loop, 64% on the file)
    redraws: int = 2  # ... and when the confirming decode fell back to sampling, this many more must agree (the
    # evaluator samples too: lbax4n's confirmation heard no word left where the evaluator then heard "now") ...
    redraw_words: int = 10  # ... on transcripts of at most this many words, where one surviving word costs > 10%
    margin_steps: int = 0  # steps past a confirmed stop, unchecked (measured worse at 4: jfk 82% / PocketSphinx
    # 64% instead of 132% / 95%, LJ002 PocketSphinx 20% instead of 60%; the idea was that a state just past the
    # boundary can flip back under the evaluator's sampled fallback and that a more confident example transfers)
    candidates: int = 32  # transcript terms: log-softmax over each position's top-k tokens (0: the full vocabulary)
    candidate_every: int = 4  # steps between refreshes of the top-k candidates (a no-grad full-vocabulary pass)
    shift: bool = True  # a random sub-frame delay each step: recognisers' frames never line up with ours
    priming_delay: int = 0  # 16 kHz samples of codec priming the delivered file starts with (set by the protector)
    mask_power: float = 0.0  # amplitude = speech mask ** power: 0 = flat (measured strongest), 1 = under the speech
    mask_floor_db: float = 0.0  # spectral floor of the mask below each frame's loudest band
    band_hz: tuple[float, float] | None = None  # the perturbation's spectrum limited to this band (None: all of it)
    feature_weight: float = 1.0  # transfer: log of the generic front end's MFCC distance from the clean track
    # (`features.py`), raised alongside the Whisper terms; recognisers the optimiser never sees share that front end
    feature_yield: float = 0.0  # ... its weight times this at each check from step `feature_grace` on that still
    feature_grace: int = 16  # hears `holding` of the clean words: where Whisper holds out, the budget goes back to
    # it (english.wav: 0% at 160 steps with a fixed weight; halved at every holding check from step 4: 152 steps)
    feature_dynamics: int = 2  # transfer: levels of deltas appended to the cepstra (2: c + d + dd, as classical
    # recognisers score; CMN removes a constant cepstral offset, so only the change over time counts)
    feature_whiten: bool = True  # ... each dimension in units of its spread over the clean speech frames. With
    # dynamics 2 the strongest front end measured alone (PocketSphinx 94.9% against the static one's 84.8%); in the
    # loop, seven clips, seeds 0/1/2: PocketSphinx 68.1 / 70.7 / 80.5% (static: 79.9 / 61.1 / 77.7%), Whisper
    # minimum 100% with every seed (static: 80% on common_voice with seed 2)
    feature_per_frame: bool = False  # ... the mean over speech frames of log(frame distance + feature_floor), not the
    feature_floor: float = 0.01  # log of the mean (measured alone: weaker, 71% against 85% PocketSphinx)
    feature_project: bool = False  # ... its gradient stripped of any component against the Whisper terms' (Whisper
    # first, at every step, instead of only by yielding at a holding check; first-order only: Adam's per-coordinate
    # scaling still lets the term slow Whisper, jfk 16 -> 36 steps)
    robust_prob: float = 0.0  # robustness beyond the output codec: the share of steps that hear the track through a
    # random band limit (`robust_lowpass_hz`) and white noise (`robust_noise_db` below the speech), as a re-encode
    # at a low bitrate, a telephone band or a noisy playback would
    robust_lowpass_hz: tuple[float, float] = (3400.0, 8000.0)
    robust_noise_db: tuple[float, float] = (30.0, 50.0)
    robust_check: bool = False  # ... and the stop also needs the goal reached on a degraded copy of the delivered
    # track (band-limited to `degraded_lowpass_hz`, white noise `degraded_noise_db` below the speech); a run that
    # never gets there returns the first state found lost on the file itself
    degraded_lowpass_hz: float = 3800.0
    degraded_noise_db: float = 35.0
    margin_db: float = 0.3
    precision: str = "float32"  # the surrogate's weights: float32 | bfloat16 | auto (bfloat16 where native). bfloat16:
    # ~25% less per step, but 7 clips x seeds 0/1/2 (2 threads): common_voice 80% Whisper with seed 2 (float32: 100%)
    seed: int = 0
    extra: dict[str, float] = field(default_factory=dict)  # per-level step overrides, e.g. {"weak": 10}


@dataclass
class Window:
    """One faster-whisper window: mel frames [seek, seek + frames) of the track, padded to 3000."""

    seek: int
    frames: int

    @property
    def content(self) -> int:
        """Encoder positions to recompute each step: those the window's frames reach, plus one at the border."""
        return min(N_FRAMES // 2, -(-self.frames // 2) + 1)


def plan_windows(n: int) -> list[Window]:
    """The windows faster-whisper decodes `n` samples in when nothing is transcribed (the outcome we aim at):
    consecutive 30 s windows, the last one shorter and padded."""
    content = max(1, n // HOP)
    return [Window(seek, min(N_FRAMES, content - seek)) for seek in range(0, content, N_FRAMES)]


def _band_limit(x: torch.Tensor, cutoff_hz: float, transition_hz: float = 300.0) -> torch.Tensor:
    """`x` (16 kHz) low-passed at `cutoff_hz` with a raised-cosine transition, in the frequency domain
    (differentiable)."""
    spectrum = torch.fft.rfft(x)
    hz = torch.fft.rfftfreq(x.shape[-1], 1.0 / SAMPLE_RATE).to(x.device)
    edge = ((hz - (cutoff_hz - transition_hz / 2)) / transition_hz).clamp(0.0, 1.0)
    return torch.fft.irfft(spectrum * (0.5 + 0.5 * torch.cos(torch.pi * edge)), n=x.shape[-1])


def _delay(x: torch.Tensor, samples: int) -> torch.Tensor:
    return torch.nn.functional.pad(x, (samples, 0))[: x.shape[-1]] if samples else x


class WhisperAttack:
    """Runs the optimisation for one mono 16 kHz signal."""

    def __init__(self, surrogate: WhisperSurrogate) -> None:
        self.s = surrogate

    @staticmethod
    def _rows(
        prompts: list[Prompt], targets: list[list[int]], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows (T, L): each prompt (the track's language, then any the detection drifted to) + <|0.00|> +
        each target, end-of-text padded; weights (T, L - 1) mark the positions whose next token is a target's."""
        items = [(prompt, target) for prompt in prompts for target in targets or [[]]]
        width = max((len(t) for _, t in items), default=0)
        rows, weights = [], []
        for prompt, target in items:
            prefix = [*prompt.sot_sequence, prompt.first_timestamp]
            rows.append(prefix + target + [prompt.eot] * (width - len(target)))
            weights.append([0.0] * (len(prefix) - 1) + [1.0] * len(target) + [0.0] * (width - len(target)))
        return torch.tensor(rows, device=device), torch.tensor(weights, device=device)

    def _loss(
        self,
        hidden: torch.Tensor,
        rows: torch.Tensor,
        weights: torch.Tensor,
        prompt: Prompt,
        cfg: AttackConfig,
        candidates: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss for one window from the teacher-forced decoder hidden states (T, L, d) of its token rows.

        Logits are computed only where the loss reads them: the full vocabulary at the head positions (no-speech
        and language right after SOT, end-of-text right after <|0.00|> under each language prompt), and for the transcript tokens a log-softmax
        over `candidates` (the union of each position's top-k, the targets, end-of-text and <|0.00|>) or the full
        vocabulary when None. The candidate set holds nearly all of the probability mass, so it measures the same."""
        prefix = len(prompt.sot_sequence) + 1  # SOT, language, task, <|0.00|>
        at_sot = torch.log_softmax(self.s.logits(hidden[0, 0]), dim=-1)
        # End-of-text after <|0.00|> under every language prompt the rows carry (the recogniser decodes under the
        # language it detects, which the language term pushes away from the track's), or the track's only.
        lang = rows[:, 1].tolist()
        first = [r for r in range(len(lang)) if not r or lang[r] != lang[r - 1]] if cfg.eot_all_prompts else [0]
        after = torch.log_softmax(self.s.logits(hidden[first, prefix - 1]), dim=-1)
        eot_each = after[:, prompt.eot]
        eot = eot_each.mean()
        no_speech = at_sot[prompt.no_speech]  # faster-whisper reads it right after SOT
        token_logp = self.token_logp(hidden, rows, weights, candidates)
        counts = weights.sum(-1)
        has = counts > 0

        def value(t: torch.Tensor) -> float:
            return float(t.detach())

        if cfg.objective == "phrase":
            phrase = (token_logp * weights).sum(-1)[0] / counts[0].clamp(min=1.0)
            # The phrase is taught under the track's language: its detection must stay (held, not pushed past ~95%).
            language = at_sot[prompt.sot_sequence[1]].clamp(max=-0.05)
            loss, terms = -phrase - language, {"phrase": value(phrase), "language": value(language)}
            if cfg.decoder_weight and bool(has[1:].any()):
                # The clean transcript (the next row) pushed down too: taught alone, the phrase left jfk's words
                # standing (27% WER at 160 steps) where the phrase was not heard.
                clean = (token_logp[1:].clamp(min=-12.0) * weights[1:]).sum(-1)[has[1:]] / counts[1:][has[1:]]
                loss = loss + cfg.decoder_weight * clean.mean()
                terms["clean"] = value(clean.mean())
            return loss, terms
        loss = -cfg.eot_weight * eot - cfg.no_speech_weight * no_speech
        terms = {"eot": value(eot), "no_speech": value(no_speech)}
        if cfg.eot_margin_weight:
            # Timestamps cannot follow <|0.00|> there: end-of-text competes with the text tokens (ids below it).
            margin = after[:, : prompt.eot].amax(-1) - eot_each
            loss = loss + cfg.eot_margin_weight * margin.clamp(min=-cfg.eot_margin).mean()
            terms["eot_margin"] = value(margin.max())
        if cfg.decoder_weight and bool(has.any()):
            # Each transcript's tokens pushed down until unlikely (floored so one token cannot take the budget).
            per_row = (token_logp.clamp(min=-12.0) * weights).sum(-1) / counts.clamp(min=1.0)
            clean = per_row[has].mean()
            loss = loss + cfg.decoder_weight * clean
            terms["clean"] = value(clean)
        if cfg.language_weight:
            language = at_sot[prompt.sot_sequence[1]]
            loss = loss + cfg.language_weight * language.clamp(min=cfg.language_floor)
            terms["language"] = value(language)
        return loss, terms

    def token_logp(
        self, hidden: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, candidates: torch.Tensor | None
    ) -> torch.Tensor:
        """(T, L - 1) log-probabilities of each row's next token where `weights` != 0 (zero elsewhere), normalised
        over `candidates` (sorted token ids holding every target) or the full vocabulary."""
        where = (weights != 0).nonzero(as_tuple=True)
        out = hidden.new_zeros(weights.shape, dtype=torch.float32)
        if not where[0].numel():
            return out
        h = hidden[:, :-1][where]
        target = rows[:, 1:][where]
        if candidates is None:
            logp = torch.log_softmax(self.s.logits(h), -1).gather(-1, target[:, None])[:, 0]
        else:
            z = self.s.logits(h, candidates)
            column = torch.searchsorted(candidates, target)
            logp = z.gather(-1, column[:, None])[:, 0] - torch.logsumexp(z, -1)
        return out.index_put(where, logp)

    @torch.no_grad()
    def candidate_set(self, hidden: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, prompt: Prompt, k: int):
        """Sorted token ids: each transcript position's top-k under the current state, the targets, end-of-text,
        <|0.00|> (None when k is 0: the full vocabulary)."""
        if not k:
            return None
        where = (weights != 0).nonzero(as_tuple=True)
        extra = torch.tensor([prompt.eot, prompt.first_timestamp], device=rows.device)
        if not where[0].numel():
            return extra.sort().values
        top = self.s.logits(hidden[:, :-1][where]).topk(k, -1).indices.flatten()
        return torch.unique(torch.cat([top, rows[:, 1:][where].flatten(), extra]))

    def run(
        self,
        x: np.ndarray,
        cfg: AttackConfig,
        codec: Callable[[np.ndarray], np.ndarray] | None = None,
        check: Callable[[], None] = lambda: None,
        progress: Callable[[float], None] = lambda f: None,
        listen: Callable[[np.ndarray, bool, str | None], Heard] | None = None,
        deliver: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[np.ndarray, dict[str, object]]:
        """Returns (perturbation at 16 kHz, figures).

        `codec(delta)`: the track with `delta` after the real output codec (16 kHz, aligned); `listen(audio, exact,
        language)`: what the attacked recogniser transcribes (see `check.py`). With `listen`, every `check_every` steps the coded
        output (with the delivered file's priming delay) is transcribed: the optimisation stops once the transcript
        is lost, and otherwise pushes what was heard (replacing the surrogate's greedy retarget decodes).
        `deliver(delta)`: the 16 kHz audio of the file the protector would write with `delta` (projection, codec,
        container, decoding as the evaluator loads it); when given, the clean transcript and every stop are
        decided on it, so the loop never stops on a state the delivered file does not share."""
        s = self.s
        device = s.device
        spent: dict[str, float] = defaultdict(float)  # seconds per phase, reported in the figures

        @contextmanager
        def timed(phase: str) -> Iterator[None]:
            started = time.perf_counter()
            try:
                yield
            finally:
                spent[phase] += time.perf_counter() - started

        gen = torch.Generator().manual_seed(cfg.seed)
        signal = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        n = signal.shape[0]
        windows = plan_windows(n)
        # Silence starts as the untargeted attack (see `silence_config`) and aims at the empty transcript once a
        # lost state is in hand.
        untargeted = cfg.objective in ("untargeted", "silence") and bool(cfg.decoder_weight)

        def coded_base(delta_now: torch.Tensor) -> torch.Tensor:
            """The real output codec, straight-through (BPDA): the forward pass sees exactly what the listener
            gets, gradients pass as if the codec were the identity. AAC's own noise (~26-30 dB below the speech)
            is louder than the perturbation, so this is what makes it transfer."""
            if codec is None:
                return signal
            coded = np.asarray(codec(delta_now.detach().cpu().numpy()), dtype=np.float32)[:n]
            coded = np.pad(coded, (0, n - coded.shape[0]))
            return torch.from_numpy(coded).to(device) - delta_now.detach()

        def hear(audio: torch.Tensor, exact: bool = True, degraded: bool = False) -> Heard:
            """The recogniser on `audio` as delivered (priming delay first). The cheap check takes the language
            from the surrogate (its own detection is a second 30 s encoder pass, as costly as the transcription) and,
            with `check_encoder="surrogate"`, the first window's encoder output too (see `_hear_on_surrogate`)."""
            assert listen is not None
            language = None
            delivered = np.pad(audio.detach().cpu().numpy(), (cfg.priming_delay, 0))
            if degraded:
                delivered = degrade(delivered)
            if not exact and check_context is not None:
                return _hear_on_surrogate(s, listen, delivered, check_context)
            if not exact:
                with torch.no_grad():
                    mel = s.window_mel(s.features(audio.detach()[None]), windows[0].seek)
                    content = s.encode_content(mel, contexts[0])
                    language = s.detect_language(torch.cat([content, contexts[0].tail], 1))[0]
            return listen(delivered, exact, language)

        check()
        with torch.no_grad():
            with timed("codec"):
                base = coded_base(torch.zeros_like(signal))
            with timed("confirm"):
                if listen is not None and deliver is not None:
                    clean_heard = listen(deliver(np.zeros(n, np.float32)), True, None)
                else:
                    clean_heard = hear(base) if listen is not None else None
            setup_started = time.perf_counter()
            coded_features = s.features((base + 0.0)[None])
            # The padded part of each window, fixed from the coded clean track (see surrogate.py).
            contexts = [s.frozen_context(s.window_mel(coded_features, w.seek), w.content) for w in windows]
            check_context = None  # the same for the cheap check's first window, as delivered (priming delay first)
            if listen is not None and cfg.check_encoder == "surrogate" and hasattr(listen, "encoded"):
                primed = torch.nn.functional.pad(base + 0.0, (cfg.priming_delay, 0))
                first = plan_windows(primed.shape[0])[0]
                check_context = s.frozen_context(s.window_mel(s.features(primed[None]), 0), first.content)
            if clean_heard is not None:  # what the recogniser hears on the coded clean track: language, transcript
                languages = [cfg.language or clean_heard.language] * len(windows)
                texts = [(clean_heard.text_between(*_span(w)), _token_limit(w)) for w in windows]
                clean = [s.tokenizer.encode(" " + t)[:limit] if t else [] for t, limit in texts]
            else:
                clean_features = s.features(signal[None])
                full = [s.encode(s.window_mel(clean_features, w.seek)) for w in windows]
                languages = [cfg.language] * len(windows) if cfg.language else s.detect_language(torch.cat(full))
                clean = [
                    s.greedy_text(f, s.prompt(lang), max_tokens=_token_limit(w))[0] if untargeted else []
                    for f, lang, w in zip(full, languages, windows, strict=True)
                ]
            prompts = [s.prompt(lang) for lang in languages]
            if cfg.objective == "phrase":
                phrase = s.tokenizer.encode(" " + cfg.phrase.strip())
                # Per window: the phrase closed by a timestamp at the window's end, then end-of-text (first row; with
                # end-of-text straight after the text, jfk at 30 dB heard the phrase repeated over its 11 s in new
                # segments), and the clean transcript pushed down beside it.
                targets = [
                    [[*phrase, _closing_timestamp(p, w), p.eot], *([c] if c else [])]
                    for p, c, w in zip(prompts, clean, windows, strict=True)
                ]
            else:  # per window, every transcript seen so far
                targets = [[t] if t else [] for t in (clean if untargeted else [[] for _ in prompts])]
            decoding = [[p] for p in prompts]  # per window, the language prompts the transcript is pushed under
            rows = [self._rows(d, t, device) for d, t in zip(decoding, targets, strict=True)]
            candidates: list[torch.Tensor | None] = [None] * len(windows)
            # Redraws of a sampled confirmation only matter on a short transcript (one surviving word > 10% WER).
            short = clean_heard is not None and len(normalise(clean_heard.text).split()) <= cfg.redraw_words
            front = SpeechFrontEnd(device=device) if cfg.feature_weight else None
            clean_track = base + 0.0  # what the listener gets without protection: the front end's reference
            peak = front.peak(clean_track) if front is not None else None
            shape = mask_shape(signal, floor_db=cfg.mask_floor_db).pow(cfg.mask_power)  # (F, T)
            shape = shape / shape.max().clamp(min=1e-12)
            if cfg.band_hz is not None:
                hz = torch.fft.rfftfreq(N_FFT_MASK, 1.0 / SAMPLE_RATE, device=device)[:, None]
                shape = shape * ((hz >= cfg.band_hz[0]) & (hz <= cfg.band_hz[1]))
            spent["setup"] += time.perf_counter() - setup_started
        v = (0.5 * torch.randn((2, *shape.shape), generator=gen)).to(device).requires_grad_(True)
        opt = torch.optim.Adam([v], lr=cfg.lr)
        history: list[float] = []
        last_terms: dict[str, float] = {}
        heard: list[str] = []
        stopped_at: int | None = None
        streak = 0  # consecutive checks that found the transcript lost
        draws = 0  # extra confirming decodes
        next_check = cfg.check_every
        best: tuple[float, int, np.ndarray] | None = None  # (share of lost draws, step, perturbation)
        # A targeted run (silence, phrase) that may never reach its goal keeps the first state the evaluator's
        # decoding finds lost, so it is never weaker than the untargeted attack's stop.
        fallback: tuple[int, np.ndarray] | None = None
        lost_streak = 0  # ... consecutive checks that found the clean transcript lost
        spent_terms: dict[str, float] = {}  # terms outside the per-window Whisper loss (the front end's distance)
        feature_weight = cfg.feature_weight
        stalled_at: int | None = None  # the check that turned the end-of-text margin on

        speech_power = float(signal.pow(2).mean())

        def degrade(audio: np.ndarray) -> np.ndarray:
            """The robust check's copy: band-limited and with white noise (seeded per call site, not per draw)."""
            low = _band_limit(torch.from_numpy(audio), cfg.degraded_lowpass_hz).numpy()
            noise = np.random.default_rng(cfg.seed).standard_normal(audio.shape).astype(np.float32)
            return low + noise * np.float32(np.sqrt(speech_power / 10 ** (cfg.degraded_noise_db / 10)))

        def as_delivered(delta: torch.Tensor) -> np.ndarray:
            """The 16 kHz audio a recogniser loads from the file written with `delta`."""
            if deliver is None:
                return np.pad(_numpy(base + delta), (cfg.priming_delay, 0))
            return deliver(_numpy(delta))

        def perturbation() -> torch.Tensor:
            delta = istft(shape * torch.complex(v[0], v[1]), n)
            return delta * sliding_budget_gain(delta, signal, SAMPLE_RATE, cfg.snr_db + cfg.margin_db)

        if clean_heard is not None and cfg.objective != "phrase" and nothing_heard(clean_heard.text):
            stopped_at = 0  # nothing recognisable to begin with (untargeted, silence)
        for step in range(cfg.steps if stopped_at is None else 0):
            if stopped_at is not None and step >= stopped_at + cfg.margin_steps:
                break
            check()
            opt.zero_grad(set_to_none=True)
            delta = perturbation()
            checking = listen is not None and step == next_check and stopped_at is None
            if codec is not None and step and (step % cfg.codec_every == 0 or checking):
                with timed("codec"):
                    base = coded_base(delta)
            retarget = False
            if checking:
                assert clean_heard is not None
                with timed("check"):
                    now = hear(base + delta, exact=False)
                lost_streak = lost_streak + 1 if lost(clean_heard, now, cfg.stop_wer, cfg.stop_recovered) else 0
                if cfg.robust_check and reached(cfg, clean_heard, now, len(windows)):
                    with timed("check"):
                        other = hear(base + delta, exact=False, degraded=True)
                    now = now if reached(cfg, clean_heard, other, len(windows)) else other
                streak = streak + 1 if reached(cfg, clean_heard, now, len(windows)) else 0
                confirmed: Heard | None = None  # the evaluator's decoding of the file itself, when it ran
                if streak >= cfg.confirmations:
                    # Confirmed as the evaluator decodes, on the file as delivered when the protector says how.
                    with timed("confirm"):
                        delivered = as_delivered(delta)
                        for draw in range(1 + (cfg.redraws if short else 0)):
                            draws += bool(draw)
                            now = confirmed = listen(delivered, True, None)
                            if cfg.robust_check and reached(cfg, clean_heard, now, len(windows)):
                                other = listen(degrade(delivered), True, None)
                                now = now if reached(cfg, clean_heard, other, len(windows)) else other
                            streak = streak if reached(cfg, clean_heard, now, len(windows)) else 0
                            if not streak or not now.sampled:
                                break
                        # The state most draws found lost (the latest on a tie) is what a capped run returns.
                        share = (draw + bool(streak)) / (draw + 1)
                        if share and (best is None or share >= best[0]):
                            best = (share, step, _numpy(delta))
                goal_beyond_lost = cfg.objective != "untargeted" or cfg.robust_check
                if goal_beyond_lost and fallback is None and lost_streak >= cfg.confirmations:
                    if confirmed is None:
                        with timed("confirm"):
                            confirmed = listen(as_delivered(delta), True, None)
                    if lost(clean_heard, confirmed, cfg.stop_wer, cfg.stop_recovered):
                        fallback = (step, _numpy(delta))
                        if cfg.objective == "silence":
                            cfg = silence_config(cfg)
                    else:
                        lost_streak = 0
                recovered = words_recovered(clean_heard.text, now.text)
                holding = recovered >= cfg.holding
                feature_weight *= cfg.feature_yield if holding and step >= cfg.feature_grace else 1.0
                if (
                    cfg.objective in ("untargeted", "silence")
                    and fallback is None
                    and recovered >= cfg.stall_recovered
                    and cfg.stall_margin_weight
                    and step >= cfg.stall_after
                    and stalled_at is None
                    and not cfg.eot_all_prompts
                ):
                    cfg = stalled_config(cfg, short)
                    stalled_at = step
                next_check = step + (cfg.check_every_holding if holding else cfg.check_every)
                heard.append(now.text)
                if streak >= cfg.confirmations:
                    stopped_at = step
                    if not cfg.margin_steps:
                        break
                if untargeted:
                    retarget = self._push_heard(now, windows, prompts, targets, decoding, cfg, clean_heard)
            step_started = time.perf_counter()
            heard_audio = base + delta
            if cfg.shift:
                lag = int(torch.randint(0, HOP, (1,), generator=gen))
                if cfg.priming_delay and float(torch.rand(1, generator=gen)) < 0.5:
                    lag += cfg.priming_delay
                heard_audio = _delay(heard_audio, lag)
            if cfg.robust_prob and float(torch.rand(1, generator=gen)) < cfg.robust_prob:
                # Expectation over what may happen to the file after delivery: a band limit and noise.
                lo, hi = cfg.robust_lowpass_hz
                heard_audio = _band_limit(heard_audio, lo + (hi - lo) * float(torch.rand(1, generator=gen)))
                quiet, loud = cfg.robust_noise_db
                snr = loud + (quiet - loud) * float(torch.rand(1, generator=gen))
                noise = torch.randn(heard_audio.shape, generator=gen).to(device)
                heard_audio = heard_audio + noise * (speech_power / 10 ** (snr / 10)) ** 0.5
            features = s.features(heard_audio[None])
            loss = torch.zeros((), device=device)
            feature_grad: torch.Tensor | None = None
            if front is not None:
                # A sub-frame delay for both tracks: the unseen recogniser's frames do not line up with ours.
                offset = int(torch.randint(0, FEATURE_HOP, (1,), generator=gen))
                distance, gain = self._feature_gain(
                    front, _delay(base + delta, offset), _delay(clean_track, offset), peak, cfg
                )
                if cfg.feature_project and feature_weight:
                    # Its own gradient, to be stripped of any part that works against the Whisper terms below.
                    feature_grad = torch.autograd.grad(-feature_weight * gain, v, retain_graph=True)[0]
                else:
                    loss = loss - feature_weight * gain
                spent_terms.update(feature_distance=float(distance.detach()), feature_weight=feature_weight)
            greedy = listen is None and untargeted and cfg.retarget_every and step and step % cfg.retarget_every == 0
            for i, (w, ctx, prompt) in enumerate(zip(windows, contexts, prompts, strict=True)):
                content = s.encode_content(s.window_mel(features, w.seek), ctx)
                if greedy:
                    self._push_greedy(s, content, ctx, w, i, targets, decoding, cfg)
                if greedy or retarget:
                    rows[i] = self._rows(decoding[i], targets[i], device)
                hidden = s.decode_hidden(rows[i][0], content, ctx)
                if greedy or retarget or candidates[i] is None or step % cfg.candidate_every == 0:
                    candidates[i] = self.candidate_set(hidden, *rows[i], prompt, cfg.candidates)
                term, last_terms = self._loss(hidden, *rows[i], prompt, cfg, candidates[i])
                last_terms.update(spent_terms)
                loss = loss + term / len(windows)
            loss.backward()
            if feature_grad is not None:
                v.grad = _without_conflict(feature_grad, v.grad) + v.grad
                feature_grad = None
            opt.step()
            spent["steps"] += time.perf_counter() - step_started
            history.append(float(loss.detach()))
            progress((step + 1) / cfg.steps)

        with torch.no_grad():
            delta = perturbation().cpu().numpy().astype(np.float32)
        returned = len(history)
        if stopped_at is None and best is not None:
            returned, delta = best[1], best[2]  # the cap came first: the state the confirmation liked best
        elif stopped_at is None and fallback is not None:
            returned, delta = fallback  # the goal was never reached: the first state found lost
        figures = {
            "windows": len(windows),
            "window_s": [round(w.frames * HOP / SAMPLE_RATE, 2) for w in windows],
            "languages": sorted(set(languages)),
            "languages_drifted_to": sorted({d[-1].language for d in decoding if len(d) > 1}),
            "transcripts_pushed": [len(t) for t in targets],
            "steps_run": len(history),
            "stopped_at": stopped_at,
            "target_reached": stopped_at is not None or (best is not None and returned == best[1]),
            "fallback_step": fallback[0] if fallback is not None else None,
            "clean_heard": clean_heard.text if clean_heard is not None else None,
            "heard": heard,
            "redraws": draws,
            "stalled_at": stalled_at,
            "returned_step": returned,
            "loss_first": round(history[0], 4) if history else None,
            "loss_last": round(history[-1], 4) if history else None,
            "last_window_terms": {k: round(val, 3) for k, val in last_terms.items()},
            "seconds": {k: round(val, 2) for k, val in spent.items()},
        }
        return delta, figures

    @staticmethod
    def _feature_gain(
        front: SpeechFrontEnd, audio: torch.Tensor, clean: torch.Tensor, peak: torch.Tensor, cfg: AttackConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean distance, the transfer term to raise): the log of the generic front end's distance from the clean
        track (scale-free: its gradient is the relative change), or with `feature_per_frame` the mean of each speech
        frame's log distance, so the budget cannot pile up on the frames that are easiest to move."""
        kw = {"dynamics": cfg.feature_dynamics, "whiten": cfg.feature_whiten}
        if not cfg.feature_per_frame:
            distance = feature_distance(front, audio, clean, peak, **kw)
            return distance, torch.log(distance + 1e-6)
        frames, speech = feature_distance(front, audio, clean, peak, per_frame=True, **kw)
        count = speech.sum(-1).clamp(min=1.0)
        gain = (torch.log(frames + cfg.feature_floor) * speech).sum(-1) / count
        return frames.sum(-1) / count, gain

    def _push_heard(
        self,
        now: Heard,
        windows: list[Window],
        prompts: list[Prompt],
        targets: list[list[list[int]]],
        decoding: list[list[Prompt]],
        cfg: AttackConfig,
        clean: Heard | None = None,
    ) -> bool:
        """Adds what the recogniser heard on the coded output, per window, to the transcripts pushed away (the
        clean one stays; the latest drift replaces the previous when full) and its language to the prompts they are
        pushed under (the track's, then the latest drift); returns whether anything changed. Without `push_lost`,
        a window's transcript already lost against `clean`'s is not pushed (it is where the attack wants to be)."""
        changed = False
        for i, w in enumerate(windows):
            text = now.text_between(*_span(w))
            if clean is not None and not cfg.push_lost and text:
                clean_text = clean.text_between(*_span(w))
                if lost(Heard(clean_text, clean.language), Heard(text, now.language), cfg.stop_wer, cfg.stop_recovered):
                    text = ""
            if now.language not in [d.language for d in decoding[i]]:
                # The latest language the recogniser drifted to replaces the previous one (english.wav: pushed
                # under one, the digits came back under Chinese).
                decoding[i][1:] = [self.s.prompt(now.language)]
                changed = True
            tokens = self.s.tokenizer.encode(" " + text)[: _token_limit(w)] if text else []
            if tokens and tokens not in targets[i]:
                targets[i][:] = [*targets[i][: max(1, cfg.max_targets - 1)], tokens]
                changed = True
        return changed

    def _push_greedy(self, s, content, ctx, w: Window, i: int, targets, decoding, cfg: AttackConfig) -> None:
        """Without a real recogniser to ask: the surrogate's greedy decode of the current state is pushed too."""
        with torch.no_grad():
            # The transcript may have moved to another wording ("1, 2, 3" for "One, two, three") or, once the
            # language is pushed away, be decoded under another language prompt.
            full = torch.cat([content.detach(), ctx.tail], 1)
            current = s.prompt(s.detect_language(full)[0])
            if current.sot_sequence not in [d.sot_sequence for d in decoding[i]] and len(decoding[i]) < 2:
                decoding[i].append(current)
            limit = _token_limit(w)
            now = s.greedy_text(full, decoding[i][-1], max_tokens=limit)[0][:limit]
            if now and now not in targets[i] and len(targets[i]) < cfg.max_targets:
                targets[i].append(now)


def _hear_on_surrogate(s: WhisperSurrogate, listen, delivered: np.ndarray, ctx: FrozenContext) -> Heard:  # noqa: ANN001
    """The cheap check with the surrogate's encoder output for the delivered track's first window (its content
    positions recomputed over the frozen padding of the coded clean track) and its language detection, decoded by
    the real recogniser (`listen.encoded`); any other window the recogniser encodes itself."""
    with torch.no_grad():
        mel = s.window_mel(s.features(torch.from_numpy(delivered).to(s.device)[None]), 0)
        content = s.encode_content(mel, ctx)
        language = s.detect_language_content(content, ctx)[0]
        full = torch.cat([content, ctx.tail], 1)
    first, out = mel[0].float().cpu().numpy(), full.float().cpu().numpy()

    def encoder(window: np.ndarray) -> np.ndarray | None:
        # faster-whisper's own log-mel of the window equals ours to ~1e-5; any other window differs by far more.
        same = window.shape == first.shape and float(np.abs(window - first).max()) < 0.05
        return out if same else None

    return listen.encoded(delivered, language, encoder)


def _without_conflict(g: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`g` less its component along `reference` when the two point against each other (a negative dot product),
    else `g`: a secondary objective's step that, to first order, never undoes the primary one's."""
    dot = (g * reference).sum()
    if float(dot) >= 0.0:
        return g
    return g - dot / reference.pow(2).sum().clamp(min=1e-30) * reference


def nothing_heard(text: str) -> bool:
    """No letter or digit: punctuation alone ("...") is nothing heard."""
    return not any(ch.isalnum() for ch in text)


def reached(cfg: AttackConfig, clean: Heard, now: Heard, windows: int = 1) -> bool:
    """Whether `now` (what the recogniser hears) is the outcome `cfg` aims at: the clean transcript lost
    (untargeted), nothing heard (silence), or the phrase once per window within `phrase_wer` (phrase)."""
    if cfg.objective == "silence":
        return nothing_heard(now.text)
    if cfg.objective == "phrase":
        return bool(now.text) and wer(" ".join([cfg.phrase] * windows), now.text) <= cfg.phrase_wer
    return lost(clean, now, cfg.stop_wer, cfg.stop_recovered)


def silence_config(cfg: AttackConfig) -> AttackConfig:
    """The silence objective once a lost state is in hand (until then it runs as the untargeted attack: with these
    terms from the first step, LJ002 and the GRID clips were not lost on the file at the 160-step cap, 60-67% WER):
    the untargeted terms (every transcript heard pushed down, the language away) with end-of-text, its margin under
    every language prompt, and no-speech at full weight. faster-whisper drops a window only when its no-speech
    probability is > 0.6 *and* the decoded text's average log-probability is < -1, and its beam ranks the empty
    transcript by end-of-text's log-probability against a sentence's *average* per token: pulling end-of-text and
    no-speech up alone (jfk, 160 steps: no-speech 0.88, end-of-text leading by 2 greedily) left the beam a confident
    sentence, so the words must lose their probability too.
    """
    return replace(
        cfg, eot_weight=1.0, no_speech_weight=1.0, eot_margin_weight=cfg.stall_margin_weight, eot_all_prompts=True
    )


def stalled_config(cfg: AttackConfig, short: bool) -> AttackConfig:
    """The objective once the checks still hear nearly every word after `stall_after` steps. A short transcript:
    the end-of-text margin under every language prompt (the empty transcript, whatever language the recogniser now
    decodes in). A long one (with `stall_long_language`): no end-of-text or no-speech terms at all, so the budget
    goes to the language decision and the transcript's own tokens."""
    if cfg.stall_long_language and not short:
        return replace(cfg, eot_weight=0.0, no_speech_weight=0.0)
    return replace(cfg, eot_margin_weight=cfg.stall_margin_weight, eot_all_prompts=True)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _span(w: Window) -> tuple[float, float]:
    """The window's time span in seconds."""
    return w.seek * HOP / SAMPLE_RATE, (w.seek + N_FRAMES) * HOP / SAMPLE_RATE


def _closing_timestamp(prompt: Prompt, w: Window) -> int:
    """The timestamp token at the end of the window's audio (Whisper's timestamps step by 20 ms)."""
    return prompt.first_timestamp + round(min(w.frames * HOP / SAMPLE_RATE, 30.0) / 0.02)


def _token_limit(w: Window) -> int:
    """Tokens a window's transcript may take (3 tokens/s of speech, with room): a drifted decode that loops would
    otherwise make every later step pay for a 30 s window's worth of tokens."""
    return int(8 + 5 * w.frames * HOP / SAMPLE_RATE)
