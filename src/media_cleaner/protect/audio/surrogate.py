"""Whisper as the attack's differentiable surrogate: batched log-mel, a length-aware encoder, decoder scores.

The encoder runs on as many mel frames as the window holds (its positional table sliced), not always 3000: a
12 s window costs a third of a full 30 s one, and the gradients transfer to the padded 30 s inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
WINDOW_SAMPLES = 30 * SAMPLE_RATE


@dataclass
class Prompt:
    """Token ids around one window's decoding (multilingual Whisper vocabulary)."""

    sot_sequence: list[int]  # SOT, language, transcribe
    first_timestamp: int  # <|0.00|>: faster-whisper decodes with timestamps, so text follows it
    eot: int
    no_speech: int
    language_tokens: list[int]


class WhisperSurrogate:
    """Wraps an openai-whisper `Whisper` model (eval, frozen) for the attack."""

    def __init__(self, model) -> None:
        import whisper
        from whisper.tokenizer import get_tokenizer

        self.model = model
        self.device = next(model.parameters()).device
        self.filters = whisper.audio.mel_filters(self.device, model.dims.n_mels)
        self.window = torch.hann_window(N_FFT, device=self.device)
        self.tokenizer = get_tokenizer(multilingual=model.is_multilingual, num_languages=model.num_languages)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) 16 kHz audio -> (B, n_mels, N // 160) Whisper log-mel, dynamic range clamped per item."""
        stft = torch.stft(audio, N_FFT, HOP, window=self.window, return_complex=True)
        power = stft[..., :-1].real ** 2 + stft[..., :-1].imag ** 2
        mel = self.filters @ power
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return (log_spec + 4.0) / 4.0

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Encoder on (B, n_mels, T) with T even and <= 3000 -> (B, T // 2, d_model)."""
        enc = self.model.encoder
        x = F.gelu(enc.conv1(mel))
        x = F.gelu(enc.conv2(x))
        x = x.permute(0, 2, 1)
        x = x + enc.positional_embedding[: x.shape[1]]
        for block in enc.blocks:
            x = block(x)
        return enc.ln_post(x)

    def prompt(self, language: str) -> Prompt:
        from whisper.tokenizer import get_tokenizer

        tok = get_tokenizer(
            multilingual=True, num_languages=self.model.num_languages, language=language, task="transcribe"
        )
        return Prompt(
            sot_sequence=list(tok.sot_sequence),
            first_timestamp=tok.timestamp_begin,
            eot=tok.eot,
            no_speech=tok.no_speech,
            language_tokens=list(tok.all_language_tokens),
        )

    @torch.no_grad()
    def detect_language(self, features: torch.Tensor) -> list[str]:
        """Most likely language per window from the decoder's first step."""
        tok = self.tokenizer
        sot = torch.full((features.shape[0], 1), tok.sot, device=self.device)
        logits = self.model.decoder(sot, features)[:, -1]
        ids = list(tok.all_language_tokens)
        best = logits[:, ids].argmax(-1).tolist()
        codes = list(tok.all_language_codes)
        return [codes[i] for i in best]

    @torch.no_grad()
    def greedy_text(self, features: torch.Tensor, prompt: Prompt, max_tokens: int | None = None) -> list[list[int]]:
        """Greedy transcript tokens per window, without timestamps (the clean target the untargeted loss pushes
        away from). Incremental decoding with openai-whisper's key/value cache."""
        batch = features.shape[0]
        seconds = features.shape[1] * 2 * HOP / SAMPLE_RATE
        limit = max_tokens or int(12 + 6 * seconds)  # speech runs at ~3 tokens/s; leave room, bound the cost
        no_ts = self.tokenizer.no_timestamps
        tokens = torch.tensor([[*prompt.sot_sequence, no_ts]] * batch, device=self.device)
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        cache, hooks = self.model.install_kv_cache_hooks()
        try:
            step_input = tokens
            for _ in range(min(limit, self.model.dims.n_text_ctx - tokens.shape[1] - 1)):
                logits = self.model.decoder(step_input, features, kv_cache=cache)[:, -1]
                logits[:, prompt.first_timestamp :] = -torch.inf
                nxt = torch.where(done, torch.full_like(logits[:, 0], prompt.eot, dtype=torch.long), logits.argmax(-1))
                tokens = torch.cat([tokens, nxt[:, None]], dim=1)
                step_input = nxt[:, None]
                done |= nxt == prompt.eot
                if bool(done.all()):
                    break
        finally:
            for hook in hooks:
                hook.remove()
        start = len(prompt.sot_sequence) + 1
        out = []
        for row in tokens[:, start:].tolist():
            out.append(row[: row.index(prompt.eot)] if prompt.eot in row else row)
        return out
