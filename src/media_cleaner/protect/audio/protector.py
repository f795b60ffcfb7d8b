"""The audio protector: any sample rate and channel count in, the same out, Whisper-proofed at the level's SNR."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import replace
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch
from scipy.signal import resample_poly

from media_cleaner.config import Settings
from media_cleaner.evaluate.quality import finite, snr_db, worst_window_snr_db
from media_cleaner.evaluate.speech import encode_aac, load_pcm, resample_mono
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.protect.audio.attack import AttackConfig, WhisperAttack
from media_cleaner.protect.audio.check import FasterWhisperCheck
from media_cleaner.protect.audio.codec import aac_roundtrip
from media_cleaner.protect.audio.masking import LEVEL_SNR_DB, project_to_floor
from media_cleaner.protect.audio.surrogate import SAMPLE_RATE, WhisperSurrogate, resolve_precision
from media_cleaner.protect.base import AudioContext

# At most this many optimisation steps per level: the check on the delivered file stops most tracks after 8-44, so
# the cap only spends time where the transcript still holds (common_voice: 80% at 40 steps, 100% at 44;
# grid_lbax4n: 83% at 80, lost at 104; english.wav lost at 76-80 in some runs, not in others).
LEVEL_STEPS = {"weak": 160, "medium": 160, "strong": 160}
AAC_PRIMING = 1024  # samples of encoder delay at the start of a decoded AAC track (no edit list honoured)
SILENT_DBFS = -60.0  # a channel (group) quieter than this carries no speech worth protecting
GROUP_CORRELATION = 0.8  # channels this correlated with the mix share one perturbation (keeps the image)


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst:
        return x.astype(np.float32, copy=True)
    ratio = Fraction(dst, src).limit_denominator(1000)
    return resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


def _as_heard(x: np.ndarray, rate: int) -> np.ndarray:
    """A mono track at `rate` brought to 16 kHz the way recognisers load a file (faster-whisper's decode_audio and
    our evaluator both use FFmpeg's resampler through PyAV). scipy's polyphase filter differs from it near 8 kHz by
    about a quarter of a 40 dB perturbation's amplitude, enough to move a decision the attack sits on."""
    if rate == SAMPLE_RATE:
        return x.astype(np.float32, copy=True)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x, dtype=np.float32)[None], format="flt", layout="mono")
    frame.sample_rate = rate
    return _fit(resample_mono([frame], SAMPLE_RATE), round(x.shape[0] * SAMPLE_RATE / rate))


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    return np.pad(x, (0, max(0, n - x.shape[0])))[:n]


def _dbfs(x: np.ndarray) -> float:
    power = float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0
    return 10.0 * math.log10(power) if power > 0 else -math.inf


def channel_groups(pcm: np.ndarray) -> list[list[int]]:
    """Channels that carry the same content (a centred voice in stereo, dual mono) are protected together with
    one shared perturbation; the others one by one. Silent channels are left alone."""
    channels = pcm.shape[0]
    audible = [c for c in range(channels) if _dbfs(pcm[c]) > SILENT_DBFS]
    if len(audible) <= 1:
        return [audible] if audible else []
    mix = pcm[audible].mean(axis=0)
    shared, alone = [], []
    for c in audible:
        a, b = pcm[c].astype(np.float64), mix.astype(np.float64)
        corr = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
        (shared if corr >= GROUP_CORRELATION else alone).append(c)
    groups = [shared] if shared else []
    return groups + [[c] for c in alone]


class WhisperAudioProtector:
    """Masked, codec-robust perturbation against Whisper (surrogate: Whisper base in PyTorch)."""

    name = "whisper-masked-eot"

    def __init__(self, settings: Settings, registry: ModelRegistry, config: AttackConfig | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.config = config or AttackConfig()
        self._attack: WhisperAttack | None = None
        self._listen: FasterWhisperCheck | None = None

    def prepare(self, ctx: AudioContext) -> None:
        if self._attack is None:
            from media_cleaner.models.whisper import load_whisper

            if self.settings.torch_threads:
                torch.set_num_threads(self.settings.torch_threads)
            dtype = resolve_precision(self.config.precision, self.settings.device)
            self._attack = WhisperAttack(WhisperSurrogate(load_whisper(self.settings, self.registry), dtype))
            if self.config.check_every:
                model_dir = str(self.registry.resolve("whisper-base-ct2"))
                self._listen = FasterWhisperCheck(model_dir, self.settings.torch_threads or 1)

    def config_for(self, level: str, objective: str | None = None, phrase: str = "") -> AttackConfig:
        """The attack at `level`; a targeted `objective` asked for by the job (silence, phrase) replaces the
        protector's own."""
        cfg = replace(self.config, snr_db=LEVEL_SNR_DB[level], steps=self.config.extra.get(level, LEVEL_STEPS[level]))
        if objective and objective != "untargeted":
            cfg = replace(cfg, objective=objective, phrase=phrase)
        return cfg

    def protect_track(self, pcm: np.ndarray, ctx: AudioContext) -> np.ndarray:
        self.prepare(ctx)
        assert self._attack is not None
        started, cpu_started = time.perf_counter(), time.process_time()
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        rate = int(ctx.sample_rate)
        cfg = self.config_for(ctx.level, ctx.objective, ctx.phrase)
        protected = pcm.copy()
        groups = channel_groups(pcm)
        figures: list[dict[str, Any]] = []

        def at_rate(delta16: np.ndarray) -> np.ndarray:
            """A 16 kHz perturbation at the track's rate and length."""
            return _fit(_resample(delta16, SAMPLE_RATE, rate), pcm.shape[1])

        def finish(trial: np.ndarray) -> np.ndarray:
            """The samples written to the file: projected to the level's floor, clipped."""
            return np.clip(project_to_floor(pcm, trial, rate, cfg.snr_db, margin_db=cfg.margin_db), -1.0, 1.0)

        for g, group in enumerate(groups):
            mix = pcm[group].mean(axis=0)
            x16 = _as_heard(mix, rate)

            def codec(delta16: np.ndarray, group: list[int] = group) -> np.ndarray:
                """The group's mix at 16 kHz after the real output codec, with `delta16` applied."""
                trial = pcm.copy()
                trial[group] += at_rate(delta16)
                coded = aac_roundtrip(np.clip(trial, -1.0, 1.0), rate, self.settings.audio_bitrate)
                return _as_heard(coded[group].mean(axis=0), rate)

            def deliver(delta16: np.ndarray, group: list[int] = group) -> np.ndarray:
                """What a recogniser loads from the file written with `delta16` on this group (earlier groups'
                perturbations included): projected, clipped, AAC in mp4, decoded and resampled as the evaluator
                does. The loop's coded view differs from it by the codec's alignment and the projection."""
                trial = protected.copy()
                trial[group] = pcm[group] + at_rate(delta16)
                with tempfile.TemporaryDirectory(prefix="mc_audio_") as tmp:
                    path = encode_aac(finish(trial), rate, f"{tmp}/delivered.m4a", self.settings.audio_bitrate)
                    return load_pcm(path)

            def report(fraction: float, g: int = g) -> None:
                ctx.progress((g + fraction) / max(1, len(groups)), "audio")

            run_cfg = replace(cfg, priming_delay=round(AAC_PRIMING * SAMPLE_RATE / rate)) if cfg.codec_aware else cfg
            delta16, info = self._attack.run(
                x16,
                run_cfg,
                codec if cfg.codec_aware else None,
                check=ctx.cancel.check,
                progress=report,
                listen=self._listen,
                deliver=deliver if cfg.codec_aware else None,
            )
            # The perturbation lives below 8 kHz; bring it to the track's rate and give it to every channel.
            protected[group] = pcm[group] + at_rate(delta16)
            figures.append({"channels": group, **info})
        protected = finish(protected)
        elapsed = time.perf_counter() - started
        duration = pcm.shape[1] / rate if rate else 0.0
        ctx.stats.update(
            {
                "method": "STFT-domain perturbation at the SNR floor of every 1 s window, Adam on Whisper base fed "
                "as faster-whisper feeds it (padded 30 s windows): clean transcript, language and speech pushed away, "
                "the real output codec in the loop (straight-through); for transfer, a generic MFCC front end's "
                "distance from the clean track raised alongside",
                "codec_aware": cfg.codec_aware,
                "objective": cfg.objective + (f": {cfg.phrase!r}" if cfg.objective == "phrase" else ""),
                "level": ctx.level,
                "snr_floor_db": cfg.snr_db,
                "steps": cfg.steps,
                "steps_run": [f["steps_run"] for f in figures],
                "groups": figures,
                "perturbation_snr_db": finite(snr_db(pcm, protected)),
                "perturbation_worst_1s_snr_db": finite(worst_window_snr_db(pcm, protected, rate, 1.0)),
                "seconds": round(elapsed, 3),
                "cpu_seconds": round(time.process_time() - cpu_started, 3),  # all threads: wall on an idle CPU is less
                "realtime_factor": round(elapsed / duration, 3) if duration else None,
                "device": str(self.settings.device),
            }
        )
        return protected
