"""The optimisation: a masked perturbation of 16 kHz speech that makes Whisper lose the transcript.

One perturbation for the whole track, parametrised in the STFT domain (amplitude <= the psychoacoustic mask, any
phase), scaled to the SNR floor in every 1 s window inside the graph, and optimised with Adam over all 30 s
Whisper windows at once (overlapping; a shared perturbation has no seams). Each step sees the signal through a
random approximation of what happens after us (codec-like noise that follows the speech spectrum, a sub-frame
delay, band-limiting), so the result survives AAC and resampling.

Objectives:
- untargeted (default): push the encoder's features away from the clean ones, lower the decoder's probability of
  every token of the clean transcript (teacher forcing), and reward ending the transcript at once;
- silence: the decoder should emit end-of-text right after the first timestamp and call the window no-speech;
- phrase: teacher-force a chosen phrase.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from media_cleaner.protect.audio.masking import istft, mask_shape, window_budget_gain
from media_cleaner.protect.audio.surrogate import HOP, SAMPLE_RATE, WINDOW_SAMPLES, Prompt, WhisperSurrogate


@dataclass
class AttackConfig:
    """Defaults are the measured best at the weak level on this CPU (see README, "Audio protection")."""

    snr_db: float = 40.0
    steps: int = 24
    lr: float = 0.6
    objective: str = "untargeted"  # untargeted | silence | phrase
    phrase: str = ""
    language: str | None = None  # None: detected per window on the clean audio
    encoder_weight: float = 1.0  # untargeted: standardised cosine to the clean encoder features
    decoder_weight: float = 0.0  # untargeted: teacher-forced log-probability of the clean transcript
    eot_weight: float = 0.0  # untargeted: reward for end-of-text right after the first timestamp
    codec_aware: bool = True  # the real output codec in the loop (straight-through), see `run`
    codec_every: int = 3  # steps between passes through the real codec
    shift: bool = True  # a random sub-frame delay each step: recognisers' frames never line up with ours
    augment: bool = False  # also random band-limiting and codec-like noise each step
    noise_snr_db: tuple[float, float] = (38.0, 48.0)
    mask_floor_db: float = 0.0  # spectral floor below each frame's loudest band: 0 = flat spectrum per frame
    use_mask: bool = True
    flat_time: bool = False  # without the mask: also flat in time within each 1 s window
    margin_db: float = 0.3
    seed: int = 0
    extra: dict[str, float] = field(default_factory=dict)  # per-level step overrides, e.g. {"weak": 10}


@dataclass
class Windows:
    starts: list[int]
    length: int  # samples per window (<= 30 s; shorter only for a short track)


def plan_windows(n: int) -> Windows:
    """Whisper windows covering `n` samples: a short track is one window of its own length; a long one gets
    ceil(n / 30 s) full 30 s windows spread evenly, so neighbours overlap by whatever is left over."""
    frames2 = 2 * HOP  # the encoder halves the mel frames, so windows are whole multiples of 320 samples
    if n <= WINDOW_SAMPLES:
        return Windows([0], max(frames2, -(-n // frames2) * frames2))
    count = -(-n // WINDOW_SAMPLES)
    starts = np.linspace(0, n - WINDOW_SAMPLES, count).round().astype(int).tolist()
    return Windows(starts, WINDOW_SAMPLES)


def _slices(signal: torch.Tensor, windows: Windows) -> torch.Tensor:
    padded = torch.nn.functional.pad(signal, (0, max(0, windows.starts[-1] + windows.length - signal.shape[-1])))
    return torch.stack([padded[s : s + windows.length] for s in windows.starts])


class _Augment:
    """Random, cheap, differentiable stand-ins for the codec and resampler."""

    def __init__(self, clean_mag: torch.Tensor, cfg: AttackConfig, generator: torch.Generator) -> None:
        self.clean_mag = clean_mag  # (F, T) |STFT| of the clean track: codec noise follows its envelope
        self.cfg = cfg
        self.gen = generator

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if not (self.cfg.augment or self.cfg.shift):
            return batch
        b, n = batch.shape
        g = self.gen
        out = []
        for i in range(b):
            y = batch[i]
            shift = int(torch.randint(0, HOP, (1,), generator=g)) if self.cfg.shift else 0
            if shift:
                y = torch.nn.functional.pad(y, (shift, 0))[:n]
            if self.cfg.augment and float(torch.rand(1, generator=g)) < 0.5:  # band-limit (resampling, codecs)
                cutoff = 6000.0 + 2000.0 * float(torch.rand(1, generator=g))
                spec = torch.fft.rfft(y)
                freqs = torch.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
                spec = spec * torch.sigmoid((cutoff - freqs) / 150.0)
                y = torch.fft.irfft(spec, n=n)
            out.append(y)
        return torch.stack(out)

    def noise(self, shape: tuple[int, int], starts: list[int]) -> torch.Tensor:
        """Noise shaped like the clean speech at a random SNR, per window (no gradient needed)."""
        if not self.cfg.augment:
            return torch.zeros(shape)
        lo, hi = self.cfg.noise_snr_db
        snr = lo + (hi - lo) * float(torch.rand(1, generator=self.gen))
        phase = torch.randn(self.clean_mag.shape, generator=self.gen) + 1j * torch.randn(
            self.clean_mag.shape, generator=self.gen
        )
        noise = istft(self.clean_mag * phase.to(self.clean_mag.device) / math.sqrt(2.0), self.length)
        noise = noise * 10.0 ** (-snr / 20.0)
        return _slices(noise, Windows(starts, shape[1]))

    length: int = 0


class WhisperAttack:
    """Runs the optimisation for one mono 16 kHz signal."""

    def __init__(self, surrogate: WhisperSurrogate) -> None:
        self.s = surrogate

    def _decoder_terms(
        self, features: torch.Tensor, prompts: list[Prompt], targets: list[list[int]], cfg: AttackConfig
    ) -> torch.Tensor:
        """Per-window decoder loss (lower = closer to the objective)."""
        model = self.s.model
        losses = []
        batch = features.shape[0]
        width = max(len(t) for t in targets) if targets else 0
        rows, masks = [], []
        for prompt, target in zip(prompts, targets, strict=True):
            prefix = [*prompt.sot_sequence, prompt.first_timestamp]
            row = prefix + target + [prompt.eot] * (width - len(target))
            rows.append(row)
            masks.append([0.0] * (len(prefix) - 1) + [1.0] * (len(target)) + [0.0] * (width - len(target) + 1))
        tokens = torch.tensor(rows, device=features.device)
        logits = model.decoder(tokens, features).float()
        logp = torch.log_softmax(logits, dim=-1)
        prefix_len = len(prompts[0].sot_sequence) + 1
        # Position of the first content token: its prediction comes from the logits at index prefix_len - 1.
        eot_ids = torch.tensor([p.eot for p in prompts], device=features.device)
        eot_logp = logp[torch.arange(batch), prefix_len - 1, eot_ids]
        nospeech_ids = torch.tensor([p.no_speech for p in prompts], device=features.device)
        nospeech_logp = logp[torch.arange(batch), 0, nospeech_ids]
        if width:
            next_tokens = tokens[:, 1:]
            token_logp = logp[:, :-1].gather(-1, next_tokens[..., None])[..., 0]
            weight = torch.tensor(masks, device=features.device)[:, : token_logp.shape[1]]
        if cfg.objective == "silence":
            return -(eot_logp + nospeech_logp)
        if cfg.objective == "phrase":
            return -(token_logp * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)
        # Untargeted: each clean token's log-probability pushed down until it is unlikely (floored so one token
        # cannot soak up the whole budget), plus a reward for ending at once.
        term = torch.zeros(batch, device=features.device)
        if width:
            clean = (token_logp.clamp(min=-12.0) * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)
            term = term + cfg.decoder_weight * clean
        losses = term - cfg.eot_weight * eot_logp
        return losses

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
        clean = _slices(signal, windows)
        # The real output codec in the loop, straight-through (BPDA): every `codec_every` steps the current
        # protected track goes through the actual encoder and decoder; the forward pass then sees exactly what
        # the listener gets at that point, and gradients pass through as if the codec were the identity. AAC's
        # noise (~26-30 dB below the speech) is louder than the perturbation, so this is what makes it transfer.
        base = signal

        def refresh(delta_now: torch.Tensor) -> torch.Tensor:
            if codec is None:
                return signal
            d = delta_now.detach().cpu().numpy()
            coded = np.asarray(codec(d), dtype=np.float32)[:n]
            coded = np.pad(coded, (0, n - coded.shape[0]))
            return torch.from_numpy(coded).to(device) - delta_now.detach()

        with torch.no_grad():
            clean_features = s.encode(s.log_mel(clean))
            languages = [cfg.language] * len(windows.starts) if cfg.language else s.detect_language(clean_features)
            prompts = [s.prompt(lang) for lang in languages]
            if cfg.objective == "phrase":
                phrase = s.tokenizer.encode(" " + cfg.phrase.strip())
                targets = [phrase + [p.eot] for p in prompts]
            elif cfg.objective == "untargeted" and cfg.decoder_weight:
                targets = []
                for i, prompt in enumerate(prompts):
                    targets += s.greedy_text(clean_features[i : i + 1], prompt)
            else:
                targets = [[] for _ in prompts]
            needs_decoder = cfg.objective != "untargeted" or bool(cfg.decoder_weight or cfg.eot_weight)

            shape = mask_shape(signal, floor_db=cfg.mask_floor_db)  # (F, T)
            if not cfg.use_mask:  # flat spectrum, loudness still following the speech frame by frame
                shape = shape.pow(2).mean(0, keepdim=True).sqrt().expand_as(shape).contiguous()
                if cfg.flat_time:
                    shape = torch.ones_like(shape)
            # Scale the mask so a saturated perturbation carries ~2x the budget in each 1 s window; the in-graph
            # gain then brings every window to the floor exactly.
            phase = torch.exp(2j * math.pi * torch.rand(shape.shape, generator=gen)).to(device)
            gain = window_budget_gain(istft(shape * phase, n), signal, SAMPLE_RATE, cfg.snr_db)
            frames = (torch.arange(shape.shape[1], device=device) * 128).clamp(max=n - 1)
            amplitude = shape * (gain[frames] * math.sqrt(2.0))[None]
            clean_mag = torch.stft(
                signal, 512, 128, window=torch.hann_window(512, device=device), return_complex=True
            ).abs()

            scale = clean_features.std(dim=(0, 1), keepdim=True) + 1e-3
            centre = clean_features.mean(dim=(0, 1), keepdim=True)
            clean_features = clean_features - centre
        augment = _Augment(clean_mag, cfg, gen)
        augment.length = n
        v = (0.5 * torch.randn((2, *shape.shape), generator=gen)).to(device).requires_grad_(True)
        opt = torch.optim.Adam([v], lr=cfg.lr)
        history: list[float] = []

        def perturbation() -> torch.Tensor:
            spec = amplitude * torch.complex(torch.tanh(v[0]), torch.tanh(v[1])) / math.sqrt(2.0)
            delta = istft(spec, n)
            return delta * window_budget_gain(delta, signal, SAMPLE_RATE, cfg.snr_db + cfg.margin_db)

        for step in range(cfg.steps):
            check()
            opt.zero_grad(set_to_none=True)
            delta = perturbation()
            if codec is not None and step % cfg.codec_every == 0:
                base = refresh(delta)
            batch = _slices(base + delta, windows)
            with torch.no_grad():
                noise = augment.noise(tuple(batch.shape), windows.starts)
            batch = augment(batch) + noise.to(device)
            features = s.encode(s.log_mel(batch))
            loss = torch.zeros((), device=device)
            if cfg.objective == "untargeted" and cfg.encoder_weight:
                # Standardised per dimension: a few outlier dimensions dominate Whisper's raw features.
                cos = torch.nn.functional.cosine_similarity((features - centre) / scale, clean_features / scale, dim=-1)
                loss = loss + cfg.encoder_weight * cos.mean()
            if needs_decoder:
                loss = loss + self._decoder_terms(features, prompts, targets, cfg).mean()
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            progress((step + 1) / cfg.steps)

        with torch.no_grad():
            delta = perturbation().cpu().numpy().astype(np.float32)
        figures = {
            "windows": len(windows.starts),
            "window_s": round(windows.length / SAMPLE_RATE, 2),
            "languages": sorted(set(languages)),
            "clean_tokens": [len(t) for t in targets],
            "loss_first": round(history[0], 4) if history else None,
            "loss_last": round(history[-1], 4) if history else None,
        }
        return delta, figures
