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
  right after the first timestamp plus the no-speech probability (an empty transcript is the best protection);
- silence: end-of-text after the first timestamp and no-speech only;
- phrase: teacher-force a chosen phrase.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from media_cleaner.protect.audio.masking import istft, mask_shape, sliding_budget_gain
from media_cleaner.protect.audio.surrogate import HOP, N_FRAMES, SAMPLE_RATE, Prompt, WhisperSurrogate


@dataclass
class AttackConfig:
    """Defaults are the measured best at the weak level on this CPU (see README, "Audio protection")."""

    snr_db: float = 40.0
    steps: int = 40
    lr: float = 0.3
    objective: str = "untargeted"  # untargeted | silence | phrase
    phrase: str = ""
    language: str | None = None  # None: detected per window on the clean audio
    decoder_weight: float = 1.0  # untargeted: teacher-forced log-probability of the clean transcript
    language_weight: float = 1.0  # untargeted: log-probability of the track's language at language detection
    language_floor: float = -8.0  # ... pushed down to here only, then the budget goes to the other terms
    eot_weight: float = 0.5  # untargeted: end-of-text right after the first timestamp
    no_speech_weight: float = 0.5  # untargeted: no-speech probability (faster-whisper drops such a window)
    retarget_every: int = 5  # untargeted: steps between greedy decodes of the current state (0: never)
    max_targets: int = 3  # transcripts pushed per window: the clean one and those it drifts to
    codec_aware: bool = True  # the real output codec in the loop (straight-through), see `run`
    codec_every: int = 4  # steps between passes through the real codec
    shift: bool = True  # a random sub-frame delay each step: recognisers' frames never line up with ours
    priming_delay: int = 0  # 16 kHz samples of codec priming the delivered file starts with (set by the protector)
    mask_power: float = 0.0  # amplitude = speech mask ** power: 0 = flat (measured strongest), 1 = under the speech
    mask_floor_db: float = 0.0  # spectral floor of the mask below each frame's loudest band
    margin_db: float = 0.3
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
        width = max((len(t) for t in targets), default=0)
        rows, weights = [], []
        for prompt in prompts:
            prefix = [*prompt.sot_sequence, prompt.first_timestamp]
            for target in targets or [[]]:
                rows.append(prefix + target + [prompt.eot] * (width - len(target)))
                weights.append([0.0] * (len(prefix) - 1) + [1.0] * len(target) + [0.0] * (width - len(target)))
        return torch.tensor(rows, device=device), torch.tensor(weights, device=device)

    def _loss(
        self, logp: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, prompt: Prompt, cfg: AttackConfig
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss for one window from teacher-forced log-probabilities (T, L, vocab) of its token rows."""
        prefix = len(prompt.sot_sequence) + 1  # SOT, language, task, <|0.00|>
        eot = logp[0, prefix - 1, prompt.eot]
        no_speech = logp[0, 0, prompt.no_speech]  # faster-whisper reads it right after SOT
        token_logp = logp[:, :-1].gather(-1, rows[:, 1:, None])[..., 0]
        counts = weights.sum(-1)
        has = counts > 0

        def value(t: torch.Tensor) -> float:
            return float(t.detach())

        if cfg.objective == "silence":
            return -(eot + no_speech), {"eot": value(eot), "no_speech": value(no_speech)}
        if cfg.objective == "phrase":
            phrase = (token_logp * weights).sum(-1)[0] / counts[0].clamp(min=1.0)
            return -phrase, {"phrase": value(phrase)}
        loss = -cfg.eot_weight * eot - cfg.no_speech_weight * no_speech
        terms = {"eot": value(eot), "no_speech": value(no_speech)}
        if cfg.decoder_weight and bool(has.any()):
            # Each transcript's tokens pushed down until unlikely (floored so one token cannot take the budget).
            per_row = (token_logp.clamp(min=-12.0) * weights).sum(-1) / counts.clamp(min=1.0)
            clean = per_row[has].mean()
            loss = loss + cfg.decoder_weight * clean
            terms["clean"] = value(clean)
        if cfg.language_weight:
            language = logp[0, 0, prompt.sot_sequence[1]]
            loss = loss + cfg.language_weight * language.clamp(min=cfg.language_floor)
            terms["language"] = value(language)
        return loss, terms

    def run(
        self,
        x: np.ndarray,
        cfg: AttackConfig,
        codec: Callable[[np.ndarray], np.ndarray] | None = None,
        check: Callable[[], None] = lambda: None,
        progress: Callable[[float], None] = lambda f: None,
    ) -> tuple[np.ndarray, dict[str, object]]:
        """Returns (perturbation at 16 kHz, figures)."""
        s = self.s
        device = s.device
        gen = torch.Generator().manual_seed(cfg.seed)
        signal = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        n = signal.shape[0]
        windows = plan_windows(n)

        def coded_base(delta_now: torch.Tensor) -> torch.Tensor:
            """The real output codec, straight-through (BPDA): the forward pass sees exactly what the listener
            gets, gradients pass as if the codec were the identity. AAC's own noise (~26-30 dB below the speech)
            is louder than the perturbation, so this is what makes it transfer."""
            if codec is None:
                return signal
            coded = np.asarray(codec(delta_now.detach().cpu().numpy()), dtype=np.float32)[:n]
            coded = np.pad(coded, (0, n - coded.shape[0]))
            return torch.from_numpy(coded).to(device) - delta_now.detach()

        with torch.no_grad():
            base = coded_base(torch.zeros_like(signal))
            clean_features = s.features(signal[None])
            coded_features = s.features((base + 0.0)[None])
            full = [s.encode(s.window_mel(clean_features, w.seek)) for w in windows]
            languages = [cfg.language] * len(windows) if cfg.language else s.detect_language(torch.cat(full))
            prompts = [s.prompt(lang) for lang in languages]
            if cfg.objective == "phrase":
                phrase = s.tokenizer.encode(" " + cfg.phrase.strip())
                targets = [phrase + [p.eot] for p in prompts]
            elif cfg.objective == "untargeted" and cfg.decoder_weight:
                targets = [
                    s.greedy_text(f, p, max_tokens=int(8 + 5 * w.frames * HOP / SAMPLE_RATE))[0]
                    for f, p, w in zip(full, prompts, windows, strict=True)
                ]
            else:
                targets = [[] for _ in prompts]
            # The padded part of each window, fixed from the coded clean track (see surrogate.py).
            contexts = [s.frozen_context(s.window_mel(coded_features, w.seek), w.content) for w in windows]
            targets = [[t] if t else [] for t in targets]  # per window, every transcript seen so far
            decoding = [[p] for p in prompts]  # per window, the language prompts the transcript is pushed under
            rows = [self._rows(d, t, device) for d, t in zip(decoding, targets, strict=True)]

            shape = mask_shape(signal, floor_db=cfg.mask_floor_db).pow(cfg.mask_power)  # (F, T)
            shape = shape / shape.max().clamp(min=1e-12)
        v = (0.5 * torch.randn((2, *shape.shape), generator=gen)).to(device).requires_grad_(True)
        opt = torch.optim.Adam([v], lr=cfg.lr)
        history: list[float] = []
        last_terms: dict[str, float] = {}

        def perturbation() -> torch.Tensor:
            delta = istft(shape * torch.complex(v[0], v[1]), n)
            return delta * sliding_budget_gain(delta, signal, SAMPLE_RATE, cfg.snr_db + cfg.margin_db)

        for step in range(cfg.steps):
            check()
            opt.zero_grad(set_to_none=True)
            delta = perturbation()
            if codec is not None and step and step % cfg.codec_every == 0:
                base = coded_base(delta)
            heard = base + delta
            if cfg.shift:
                lag = int(torch.randint(0, HOP, (1,), generator=gen))
                if cfg.priming_delay and float(torch.rand(1, generator=gen)) < 0.5:
                    lag += cfg.priming_delay
                heard = _delay(heard, lag)
            features = s.features(heard[None])
            loss = torch.zeros((), device=device)
            retarget = (
                cfg.objective == "untargeted"
                and cfg.decoder_weight
                and cfg.retarget_every
                and step
                and step % cfg.retarget_every == 0
            )
            for i, (w, ctx, prompt) in enumerate(zip(windows, contexts, prompts, strict=True)):
                content = s.encode_content(s.window_mel(features, w.seek), ctx)
                if retarget:
                    # The transcript may have moved to another wording ("1, 2, 3" for "One, two, three") or, once
                    # the language is pushed away, be decoded under another language prompt: push those too.
                    full = torch.cat([content.detach(), ctx.tail], 1)
                    current = s.prompt(s.detect_language(full)[0])
                    if current.sot_sequence not in [d.sot_sequence for d in decoding[i]] and len(decoding[i]) < 2:
                        decoding[i].append(current)
                    # Bounded by the window's audio (3 tokens/s of speech, with room): a drifted decode that loops
                    # would otherwise make every later step pay for a 30 s window's worth of tokens.
                    limit = int(8 + 5 * w.frames * HOP / SAMPLE_RATE)
                    now = s.greedy_text(full, decoding[i][-1], max_tokens=limit)[0][:limit]
                    if now and now not in targets[i] and len(targets[i]) < cfg.max_targets:
                        targets[i].append(now)
                    rows[i] = self._rows(decoding[i], targets[i], device)
                logp = torch.log_softmax(s.decode_logits(rows[i][0], content, ctx), dim=-1)
                term, last_terms = self._loss(logp, *rows[i], prompt, cfg)
                loss = loss + term / len(windows)
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            progress((step + 1) / cfg.steps)

        with torch.no_grad():
            delta = perturbation().cpu().numpy().astype(np.float32)
        figures = {
            "windows": len(windows),
            "window_s": [round(w.frames * HOP / SAMPLE_RATE, 2) for w in windows],
            "languages": sorted(set(languages)),
            "languages_drifted_to": sorted({d[-1].language for d in decoding if len(d) > 1}),
            "transcripts_pushed": [len(t) for t in targets],
            "loss_first": round(history[0], 4) if history else None,
            "loss_last": round(history[-1], 4) if history else None,
            "last_window_terms": {k: round(val, 3) for k, val in last_terms.items()},
        }
        return delta, figures
