"""The generic speech front end (log-mel / MFCC + CMN) the attack pushes away from the clean track for transfer."""

from __future__ import annotations

import math

import numpy as np
import torch

from media_cleaner.protect.audio.features import SpeechFrontEnd, dct_matrix, feature_distance, mel_filterbank
from media_cleaner.protect.audio.masking import istft, sliding_budget_gain


def _speechlike(seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    voice = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k for k, f in enumerate((140, 280, 420, 900), 1))
    envelope = (np.sin(2 * np.pi * 1.7 * t) > -0.3) * 1.0
    return torch.from_numpy((0.2 * voice * envelope).astype(np.float32))


def test_filterbank_and_dct() -> None:
    bank = mel_filterbank(40, 100.0, 7000.0)
    assert bank.shape == (40, 257) and float(bank.min()) >= 0.0 and float(bank.max()) <= 1.0
    hz = torch.fft.rfftfreq(512, 1 / 16000)
    assert float(bank[:, hz < 90].sum()) == 0.0 and float(bank[:, hz > 7010].sum()) == 0.0  # the speech band only
    dct = dct_matrix(13, 40)
    assert torch.allclose(dct @ dct.T, torch.eye(13), atol=1e-5)  # orthonormal rows


def test_a_tone_lands_in_its_band_and_cmn_removes_the_mean() -> None:
    front = SpeechFrontEnd()
    t = torch.arange(16000) / 16000
    tone = 0.3 * torch.sin(2 * math.pi * 1000.0 * t)
    log_mel = front.log_mel(tone)
    assert log_mel.shape == (1 + (16000 - 400) // 160, 40)
    centres = (front.filters * torch.fft.rfftfreq(512, 1 / 16000)).sum(1) / front.filters.sum(1)
    assert abs(float(centres[int(log_mel.mean(0).argmax())]) - 1000.0) < 120.0
    ceps = front.mfcc(_speechlike())
    assert ceps.shape[-1] == 13 and float(ceps.mean(0).abs().max()) < 1e-4


def test_feature_distance_is_zero_on_the_clean_track_and_its_gradient_is_finite() -> None:
    """The term the attack raises: 0 for the clean track, > 0 for a perturbation at a 40 dB budget, and a finite
    gradient through the budget scaling to the perturbation's STFT coefficients."""
    front = SpeechFrontEnd()
    x = _speechlike()
    peak = front.peak(x)
    assert float(feature_distance(front, x, x, peak)) < 1e-8
    v = torch.randn(2, 257, x.shape[0] // 128 + 1, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    delta = istft(torch.complex(v[0], v[1]), x.shape[0])
    delta = delta * sliding_budget_gain(delta, x, 16000, 40.0)
    distance = feature_distance(front, x + delta, x, peak)
    distance.backward()
    assert float(distance.detach()) > 0.0 and torch.isfinite(v.grad).all() and float(v.grad.abs().max()) > 0.0
    snr = 10 * math.log10(float(x.square().sum()) / float(delta.detach().square().sum()))
    assert snr >= 40.0 - 1e-3


def test_deltas_are_the_regression_slope_and_ignore_a_constant_offset() -> None:
    """Dynamic features: a cepstral ramp has delta = its slope (inside the edges) and delta-delta 0; a constant
    offset added to every frame (what CMN removes anyway) leaves the deltas unchanged."""
    from media_cleaner.protect.audio.features import deltas, with_dynamics

    t = torch.arange(20, dtype=torch.float32)[:, None]
    ramp = torch.cat([0.5 * t, -2.0 * t], -1)  # (T, 2)
    d = deltas(ramp)
    assert torch.allclose(d[2:-2], torch.tensor([0.5, -2.0]).expand(16, 2))
    stacked = with_dynamics(ramp, 2)
    assert stacked.shape == (20, 6) and float(stacked[4:-4, 4:].abs().max()) < 1e-6
    assert torch.allclose(deltas(ramp + 3.0), d)


def test_dynamic_whitened_per_frame_distance() -> None:
    """The transfer term's variants: zero on the clean track, per-frame values only on speech frames, and the
    whitened distance invariant to the track's loudness (it is in units of the clean track's own spread)."""
    front = SpeechFrontEnd()
    x = _speechlike()
    delta = 0.003 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    peak = front.peak(x)
    assert float(feature_distance(front, x, x, peak, dynamics=2, whiten=True)) < 1e-8
    frames, speech = feature_distance(front, x + delta, x, peak, dynamics=2, whiten=True, per_frame=True)
    assert frames.shape == speech.shape == (1 + (x.shape[0] - 400) // 160,)
    assert 0 < float(speech.sum()) < speech.numel() and float(frames[speech == 0].abs().max()) == 0.0
    assert float(frames[speech == 1].min()) > 0.0
    mean = feature_distance(front, x + delta, x, peak, dynamics=2, whiten=True)
    assert abs(float(mean) - float(frames.sum() / speech.sum())) < 1e-5
    louder = feature_distance(front, 4 * (x + delta), 4 * x, front.peak(4 * x), dynamics=2, whiten=True)
    assert abs(float(louder) / float(mean) - 1.0) < 1e-3
    static = feature_distance(front, x + delta, x, peak)
    assert abs(float(feature_distance(front, x + delta, x, peak, dynamics=0, whiten=False)) - float(static)) < 1e-9
