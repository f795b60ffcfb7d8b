"""Where the perturbation may go and how loud it may be.

Two parts:
- a spectral mask (shape): a simple psychoacoustic model on a 512-point STFT of the 16 kHz speech — energy is
  spread across frequency (steeper downward than upward, as simultaneous masking is) and forward in time (post-
  masking), with a per-frame floor below the frame's loudest band. The perturbation lives in this shape, so it
  sits under the speech and vanishes in silence;
  (`AttackConfig.mask_floor_db` = 0, the default, keeps only the time shape: flat within a frame, which measured
  far stronger against Whisper than a speech-shaped spectrum at the same SNR — see docs/audio-protection.md)
- the level's SNR floor (scale), enforced exactly by projection: the whole track and every 1 s window on ten
  staggered grids (any 1 s window with speech is then within a fraction of a dB of the floor), per channel,
  against the original PCM at its own sample rate, with smooth gain curves so the projection adds no clicks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

LEVEL_SNR_DB = {"weak": 40.0, "medium": 35.0, "strong": 30.0}
N_FFT = 512
GRIDS = 10  # staggered 1 s grids (hop 0.1 s): any 1 s window is then within a fraction of a dB of the floor
HOP = 128


def stft(x: torch.Tensor) -> torch.Tensor:
    return torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT, device=x.device), return_complex=True)


def istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    window = torch.hann_window(N_FFT, device=spec.device)
    return torch.istft(spec, N_FFT, HOP, window=window, length=length)


def _spread_frequency(power: torch.Tensor) -> torch.Tensor:
    """out[f] = sum_m power[m] * w(f - m): masking reaches ~3x further up in frequency than down (dB per bin)."""
    up, down = 32, 16
    offsets = torch.arange(up, -down - 1, -1, device=power.device, dtype=power.dtype)  # kernel tap k <-> f - m
    atten = torch.where(offsets < 0, 3.0 * -offsets, 0.8 * offsets)
    kernel = (10.0 ** (-atten / 10.0))[None, None]
    padded = F.pad(power.T[:, None], (up, down))  # (T, 1, F + up + down)
    return F.conv1d(padded, kernel)[:, 0].T


def mask_shape(x: torch.Tensor, floor_db: float = 30.0, forward_frames: int = 6, decay_db: float = 2.5) -> torch.Tensor:
    """Amplitude mask (F, T) for the 16 kHz mono signal `x` (N,): where a perturbation is least audible.

    Only the shape matters; the scale is set by the SNR budget.
    """
    power = stft(x).abs() ** 2  # (F, T)
    spread = _spread_frequency(power)
    # Forward (post-) masking: a loud frame covers the next few frames, decaying.
    held = spread.clone()
    for k in range(1, forward_frames + 1):
        shifted = F.pad(spread[:, :-k], (k, 0)) * 10.0 ** (-decay_db * k / 10.0)
        held = torch.maximum(held, shifted)
    held = torch.maximum(held, F.pad(spread[:, 1:], (0, 1)) * 10.0 ** (-decay_db / 10.0))  # brief pre-masking
    # Quiet bands of a loud frame are still masked by its loud bands (spread of masking at high levels).
    floor = held.amax(dim=0, keepdim=True) * 10.0 ** (-floor_db / 10.0)
    return torch.maximum(held, floor).sqrt()


def sliding_budget_gain(
    delta: torch.Tensor, reference: torch.Tensor, rate: int, snr_db: float, grids: int = GRIDS
) -> torch.Tensor:
    """Differentiable per-sample gain (N,) that brings `delta` to the SNR floor in every 1 s window of `grids`
    staggered grids, the same windows `project_to_floor` enforces (so the projection afterwards is a no-op and the
    optimiser spends exactly the budget the output will have). Each hop-long block takes the smallest gain of
    the windows covering it; windows without signal allow nothing."""
    n = delta.shape[-1]
    size = int(rate)
    hop = size // grids
    tail = size + (-n) % hop
    d = F.pad(delta * delta, (size, tail))
    r = F.pad(reference.double() ** 2, (size, tail)).float()
    cd, cr = F.pad(torch.cumsum(d, 0), (1, 0)), F.pad(torch.cumsum(r, 0), (1, 0))
    starts = torch.arange(0, cd.shape[0] - size, hop, device=delta.device)
    energy, budget = cd[starts + size] - cd[starts], (cr[starts + size] - cr[starts]).clamp(min=0)
    gain = torch.sqrt(budget * 10.0 ** (-snr_db / 10.0)) / torch.sqrt(energy + 1e-20)
    blocks = torch.arange(-(-n // hop), device=delta.device)
    # Window j covers track samples [(j - grids) * hop, j * hop): block b lies inside windows b + 1 .. b + grids.
    covering = torch.stack([gain[(blocks + grids - k).clamp(0, gain.shape[0] - 1)] for k in range(grids)])
    return covering.amin(0).repeat_interleave(hop)[:n]


def _min_filter(values: np.ndarray, width: int) -> np.ndarray:
    from scipy.ndimage import minimum_filter1d

    return minimum_filter1d(values, size=max(1, width), mode="nearest")


def _smooth_below(gain: np.ndarray, width: int) -> np.ndarray:
    """A smooth curve that is <= `gain` everywhere: min-filter then moving average of the same width."""
    if width <= 1:
        return gain
    low = _min_filter(gain, width)
    kernel = np.ones(width) / width
    smooth = np.convolve(np.pad(low, (width // 2, width - 1 - width // 2), mode="edge"), kernel, mode="valid")
    return np.minimum(smooth, gain)


def project_to_floor(
    original: np.ndarray, protected: np.ndarray, rate: int, snr_db: float, margin_db: float = 0.3
) -> np.ndarray:
    """Scale the perturbation (protected - original) of each channel down so that its SNR is >= `snr_db` over the
    whole track and over every 1 s window of ten grids staggered by 0.1 s. Returns the new protected PCM."""
    target = 10.0 ** (-(snr_db + margin_db) / 10.0)
    size = int(rate)
    ramp = max(1, int(rate * 0.02))
    out = np.empty_like(protected, dtype=np.float32)
    for c in range(original.shape[0]):
        ref = original[c].astype(np.float64)
        delta = protected[c].astype(np.float64) - ref
        n = ref.shape[0]
        ref_energy = np.concatenate([[0.0], np.cumsum(ref * ref)])
        for _ in range(3):  # smoothing lowers gains further, so a second pass is nearly always a no-op
            gain = np.ones(n)
            delta_energy = np.concatenate([[0.0], np.cumsum(delta * delta)])  # window sums in O(1)
            for offset in range(0, size, max(1, size // GRIDS)):
                for start in range(offset - size if offset else 0, n, size):
                    lo, hi = max(0, start), min(n, start + size)
                    if hi <= lo:
                        continue
                    budget = (ref_energy[hi] - ref_energy[lo]) * target
                    energy = delta_energy[hi] - delta_energy[lo]
                    if energy > budget:
                        gain[lo:hi] = np.minimum(gain[lo:hi], np.sqrt(max(budget, 0.0) / energy))
            if np.all(gain >= 1.0):
                break
            delta *= _smooth_below(gain, ramp)
        total_budget = float(np.dot(ref, ref)) * target
        total = float(np.dot(delta, delta))
        if total > total_budget:
            delta *= np.sqrt(total_budget / total)
        out[c] = (ref + delta).astype(np.float32)
    return out
