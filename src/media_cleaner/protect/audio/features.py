"""A generic speech front end in torch (differentiable): log-mel filterbank and MFCC with cepstral mean normalisation.

The textbook front end that nearly every classical recogniser (HMM/GMM toolkits: Sphinx, HTK, Kaldi's MFCC) and
many neural ones start from: pre-emphasis, 25 ms Hamming frames every 10 ms, a mel filterbank over the speech band,
log, DCT to 13 cepstra, mean normalised over the utterance. It is written here from the definition; it is not any
particular recogniser's code or model, and the attack never runs an unseen recogniser. Pushing a track's features
away from the clean track's ones under the same SNR budget aims the perturbation at what recognisers in general
listen to, not only at Whisper's own log-mel (its weights and front end are all the optimiser sees otherwise).
"""

from __future__ import annotations

import math

import torch

SAMPLE_RATE = 16000
FRAME = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512


def mel_filterbank(n_filters: int, low_hz: float, high_hz: float, n_fft: int = N_FFT, rate: int = SAMPLE_RATE):
    """(n_filters, n_fft // 2 + 1) triangular filters equally spaced on the mel scale (2595 log10(1 + f / 700))."""

    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    edges_mel = torch.linspace(mel(low_hz), mel(high_hz), n_filters + 2, dtype=torch.float64)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    freqs = torch.linspace(0.0, rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def dct_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """(n_out, n_in) orthonormal DCT-II."""
    k = torch.arange(n_out, dtype=torch.float64)[:, None]
    n = torch.arange(n_in, dtype=torch.float64)[None]
    m = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    m[0] /= math.sqrt(2.0)
    return m.float()


class SpeechFrontEnd:
    """Log-mel energies and mean-normalised MFCCs of 16 kHz audio, differentiable."""

    def __init__(
        self,
        n_filters: int = 40,
        low_hz: float = 100.0,
        high_hz: float = 7000.0,
        n_ceps: int = 13,
        floor_db: float = 60.0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.filters = mel_filterbank(n_filters, low_hz, high_hz).to(device)
        self.dct = dct_matrix(n_ceps, n_filters).to(device)
        self.window = torch.hamming_window(FRAME, periodic=False, device=device)
        self.floor_db = floor_db

    def log_mel(self, audio: torch.Tensor, reference_peak: torch.Tensor | None = None) -> torch.Tensor:
        """(..., N) audio -> (..., T, n_filters) natural-log filterbank energies. Energies are floored `floor_db`
        below the loudest band of `reference_peak` (the clean track's, so both tracks share one floor): without a
        floor the log is ruled by near-silent bands, which recognisers discard as noise anyway."""
        energy = self.energy(audio)
        peak = energy.detach().amax() if reference_peak is None else reference_peak
        return torch.log(energy + peak * 10.0 ** (-self.floor_db / 10.0))

    def mfcc(self, audio: torch.Tensor, reference_peak: torch.Tensor | None = None) -> torch.Tensor:
        """(..., T, n_ceps) cepstra with the utterance mean removed (CMN)."""
        ceps = self.log_mel(audio, reference_peak) @ self.dct.T
        return ceps - ceps.mean(-2, keepdim=True)

    def energy(self, audio: torch.Tensor) -> torch.Tensor:
        """(..., T, n_filters) filterbank energies of pre-emphasised, Hamming-windowed frames."""
        emphasised = torch.cat([audio[..., :1], audio[..., 1:] - 0.97 * audio[..., :-1]], -1)
        frames = emphasised.unfold(-1, FRAME, HOP) * self.window
        return torch.fft.rfft(frames, N_FFT).abs().pow(2) @ self.filters.T

    def peak(self, audio: torch.Tensor) -> torch.Tensor:
        """The loudest filterbank energy of `audio` (the floor's reference)."""
        with torch.no_grad():
            return self.energy(audio).amax()


def deltas(x: torch.Tensor, width: int = 2) -> torch.Tensor:
    """(..., T, D) regression deltas over +-`width` frames, the edge frames repeated: the textbook dynamic features
    (sum_k k (x[t+k] - x[t-k]) / 2 sum_k k^2) that classical recognisers append to the cepstra."""
    edge = (*x.shape[:-2], width, x.shape[-1])
    padded = torch.cat([x[..., :1, :].expand(edge), x, x[..., -1:, :].expand(edge)], -2)
    t = x.shape[-2]
    out = sum(
        k * (padded[..., width + k : width + k + t, :] - padded[..., width - k : width - k + t, :])
        for k in range(1, width + 1)
    )
    return out / (2.0 * sum(k * k for k in range(1, width + 1)))


def with_dynamics(ceps: torch.Tensor, order: int) -> torch.Tensor:
    """Cepstra with `order` levels of deltas appended (0: static only, 2: c + d + dd)."""
    parts = [ceps]
    for _ in range(order):
        parts.append(deltas(parts[-1]))
    return torch.cat(parts, -1)


def feature_distance(
    front: SpeechFrontEnd,
    audio: torch.Tensor,
    clean: torch.Tensor,
    peak: torch.Tensor,
    speech_db: float = 30.0,
    dynamics: int = 0,
    whiten: bool = False,
    per_frame: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mean squared MFCC distance (cepstra 1..12: c0 is loudness, which CMN and gain control remove) between
    `audio` and the `clean` track, over the frames whose clean energy is within `speech_db` of the loudest one:
    in pauses recognisers hear silence or noise whatever the features do, so the distance counts where words are.

    `dynamics` appends that many levels of deltas to both (CMN removes a constant cepstral offset, deltas a slowly
    varying one: what is left is what a c + d + dd recogniser scores); `whiten` divides each dimension by its
    spread over the clean track's speech frames (the per-dimension variances a diagonal-covariance acoustic model
    scores in, instead of raw units where c1-c2 dominate); `per_frame` returns the (..., T) distances, zero
    outside speech, and the speech weights, instead of their mean."""
    with torch.no_grad():
        reference = front.log_mel(clean, peak)
        energy = reference.logsumexp(-1)
        speech = (energy > energy.max() - speech_db * math.log(10.0) / 10.0).float()
        clean_ceps = reference @ front.dct.T
        clean_ceps = with_dynamics((clean_ceps - clean_ceps.mean(-2, keepdim=True))[..., 1:], dynamics)
        scale = torch.ones_like(clean_ceps[..., :1, :])
        if whiten:
            count = speech.sum(-1, keepdim=True).clamp(min=1.0)[..., None]
            mean = (clean_ceps * speech[..., None]).sum(-2, keepdim=True) / count
            var = ((clean_ceps - mean).pow(2) * speech[..., None]).sum(-2, keepdim=True) / count
            scale = var.clamp(min=1e-6).rsqrt()
    now = with_dynamics(front.mfcc(audio, peak)[..., 1:], dynamics)
    frames = ((now - clean_ceps) * scale).pow(2).sum(-1) * (12.0 / now.shape[-1])  # in units of 12 cepstra
    if per_frame:
        return frames * speech, speech
    return (frames * speech).sum(-1) / speech.sum(-1).clamp(min=1.0)
