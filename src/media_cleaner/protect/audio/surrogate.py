"""Whisper as the attack's differentiable surrogate, fed exactly as faster-whisper feeds the real model.

faster-whisper computes the log-mel of the whole track (160 zero samples appended, dynamic range clamped against
the track's loudest frame), cuts it into 30 s windows and pads each with zero-valued frames to 3000 before the
encoder. A short clip is therefore mostly padding, and the padding matters: a perturbation optimised on the encoder
run on the clip's frames alone (positional table sliced) left "one two three" and "Every purchase is a vote."
untouched. `frozen_context` makes the padded window affordable: the padded positions' keys, values and encoder
outputs are computed once, without gradient, from the coded clean track, and each step recomputes only the
positions that carry audio (a 3 s clip: ~150 of 1500 positions) attending to them; the perturbation barely moves
the padded positions, and what the real model then sees on the file matched the loop within ~0.3 nats.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_FRAMES = 3000  # mel frames per Whisper window


@dataclass
class Prompt:
    """Token ids around one window's decoding (multilingual Whisper vocabulary)."""

    sot_sequence: list[int]  # SOT, language, transcribe
    first_timestamp: int  # <|0.00|>: faster-whisper decodes with timestamps, so text follows it
    eot: int
    no_speech: int
    language_tokens: list[int]
    language: str = "en"


@dataclass
class FrozenContext:
    """A padded window's positions >= `content`, fixed: per encoder layer keys/values, per decoder layer the
    cross-attention keys/values."""

    content: int
    tail: torch.Tensor  # encoder outputs of the frozen positions
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    cross_keys: list[torch.Tensor]
    cross_values: list[torch.Tensor]


def _attention(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """openai-whisper's MultiHeadAttention on given projections."""

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], attn.n_head, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=causal)
    return attn.out(out.transpose(1, 2).flatten(2))


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bfloat16 matrix products run natively (a CUDA GPU, or a CPU with AVX-512 BF16 / AMX); elsewhere they
    are emulated and slower than float32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """`float32`, `bfloat16`, or `auto` (bfloat16 where it runs natively)."""
    if precision == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]


class WhisperSurrogate:
    """Wraps an openai-whisper `Whisper` model (eval, frozen) for the attack.

    `dtype` bfloat16 casts the weights once (layer norms stay float32, as openai-whisper's LayerNorm computes in
    float32); the log-mel and every loss reduction stay float32, the encoder and decoder run in bfloat16: ~25% less
    per step on this CPU (jfk, one forward + backward: 1.25 -> 0.93 s on 1 thread, 0.71 -> 0.53 s on 2), input
    gradient cosine 0.94 against float32."""

    def __init__(self, model, dtype: torch.dtype = torch.float32) -> None:
        import whisper
        from whisper.tokenizer import get_tokenizer

        if dtype != torch.float32:
            model = copy.deepcopy(model).to(dtype)  # the loader may hand the same model to others
            for module in model.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    module.float()
        self.model = model
        self.dtype = dtype
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

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) 16 kHz track -> (B, n_mels, N // 160) log-mel as faster-whisper computes it for `transcribe`
        (160 zero samples appended, clamp against the track's loudest frame, last frame dropped)."""
        return self.log_mel(F.pad(audio, (0, HOP)))[..., :-1]

    @staticmethod
    def window_mel(features: torch.Tensor, seek: int) -> torch.Tensor:
        """One 30 s window of the track's features, zero-padded to 3000 frames (faster-whisper's pad_or_trim)."""
        seg = features[..., seek : seek + N_FRAMES]
        return F.pad(seg, (0, N_FRAMES - seg.shape[-1]))

    @torch.no_grad()
    def frozen_context(self, mel: torch.Tensor, content: int) -> FrozenContext:
        """Run the encoder on a full (B, n_mels, 3000) window once and keep, for positions >= `content`, each
        encoder layer's keys/values and the decoder's cross-attention keys/values."""
        enc = self.model.encoder
        mel = mel.to(self.dtype)
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(mel)))).permute(0, 2, 1) + enc.positional_embedding
        keys, values = [], []
        for block in enc.blocks:
            h = block.attn_ln(x)
            keys.append(block.attn.key(h)[:, content:])
            values.append(block.attn.value(h)[:, content:])
            x = block(x)
        tail = enc.ln_post(x[:, content:])
        blocks = self.model.decoder.blocks
        return FrozenContext(
            content,
            tail,
            keys,
            values,
            [b.cross_attn.key(tail) for b in blocks],
            [b.cross_attn.value(tail) for b in blocks],
        )

    def encode_content(self, mel: torch.Tensor, ctx: FrozenContext) -> torch.Tensor:
        """Encoder outputs of the first `ctx.content` positions of a padded window, the rest frozen."""
        enc = self.model.encoder
        n = ctx.content
        mel = mel.to(self.dtype)
        # Two convolutions (k=3, the second with stride 2): 2n + 2 frames fix the first n positions exactly.
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(mel[..., : 2 * n + 2]))))[..., :n]
        x = x.permute(0, 2, 1) + enc.positional_embedding[:n]
        for i, block in enumerate(enc.blocks):
            a = block.attn
            h = block.attn_ln(x)
            k = torch.cat([a.key(h), ctx.keys[i].expand(x.shape[0], -1, -1)], 1)
            v = torch.cat([a.value(h), ctx.values[i].expand(x.shape[0], -1, -1)], 1)
            x = x + _attention(a, a.query(h), k, v)
            x = x + block.mlp(block.mlp_ln(x))
        return enc.ln_post(x)

    def decode_logits(self, tokens: torch.Tensor, content: torch.Tensor, ctx: FrozenContext) -> torch.Tensor:
        """Teacher-forced decoder logits (B, L, vocab) over the encoder outputs `content` (B or 1 rows) + the
        frozen rest."""
        return self.logits(self.decode_hidden(tokens, content, ctx))

    def logits(self, hidden: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of decoder hidden states (..., d) over the vocabulary, or over the token ids `ids` only: the
        full 51,865-token projection (and its backward) was a fifth of the attack's time at every position."""
        weight = self.model.decoder.token_embedding.weight
        return (hidden @ (weight if ids is None else weight[ids]).T).float()

    def decode_hidden(self, tokens: torch.Tensor, content: torch.Tensor, ctx: FrozenContext) -> torch.Tensor:
        """Teacher-forced decoder hidden states (B, L, d), final layer norm applied (`logits` projects them); one
        window's content serves several token rows (its cross-attention projected once)."""
        dec = self.model.decoder
        x = dec.token_embedding(tokens) + dec.positional_embedding[: tokens.shape[1]]
        batch = tokens.shape[0]
        for i, block in enumerate(dec.blocks):
            h = block.attn_ln(x)
            x = x + _attention(block.attn, block.attn.query(h), block.attn.key(h), block.attn.value(h), causal=True)
            ca = block.cross_attn
            h = block.cross_attn_ln(x)
            k = torch.cat([ca.key(content), ctx.cross_keys[i].expand(content.shape[0], -1, -1)], 1)
            v = torch.cat([ca.value(content), ctx.cross_values[i].expand(content.shape[0], -1, -1)], 1)
            if content.shape[0] == 1:
                # Every row attends to the same keys without a mask: the rows go in as one long query sequence,
                # so the backward accumulates one key/value gradient instead of one per row (half of a short
                # clip's step was the decoder).
                x = x + _attention(ca, ca.query(h).reshape(1, -1, h.shape[-1]), k, v).view_as(h)
            else:
                x = x + _attention(ca, ca.query(h), k.expand(batch, -1, -1), v.expand(batch, -1, -1))
            x = x + block.mlp(block.mlp_ln(x))
        return dec.ln(x)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Encoder on (B, n_mels, T) with T even and <= 3000 -> (B, T // 2, d_model)."""
        enc = self.model.encoder
        x = F.gelu(enc.conv1(mel.to(self.dtype)))
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
            language=language,
        )

    @torch.no_grad()
    def detect_language(self, features: torch.Tensor) -> list[str]:
        """Most likely language per window from the decoder's first step."""
        tok = self.tokenizer
        sot = torch.full((features.shape[0], 1), tok.sot, device=self.device)
        logits = self.model.decoder(sot, features)[:, -1]
        return self._best_languages(logits[:, list(tok.all_language_tokens)])

    @torch.no_grad()
    def detect_language_content(self, content: torch.Tensor, ctx: FrozenContext) -> list[str]:
        """`detect_language` of a padded window from its content positions' encoder outputs and the frozen rest:
        the cross-attention keys/values of the frozen positions are already in `ctx`, so only the content's are
        projected (the full detection projects all 1500 positions in every decoder layer)."""
        tok = self.tokenizer
        sot = torch.full((content.shape[0], 1), tok.sot, device=self.device)
        ids = torch.tensor(list(tok.all_language_tokens), device=self.device)
        return self._best_languages(self.logits(self.decode_hidden(sot, content, ctx)[:, -1], ids))

    def _best_languages(self, scores: torch.Tensor) -> list[str]:
        """Language codes of the best column per row of (windows, languages) scores, in the tokenizer's order."""
        codes = list(self.tokenizer.all_language_codes)
        return [codes[i] for i in scores.argmax(-1).tolist()]

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
