"""Read a CTranslate2 `model.bin` and convert Whisper's variables to an openai-whisper state dict.

The file holds: u32 version, name string, u32 revision, u32 variable count, then per variable name / rank / dims /
dtype / byte count / raw data, then aliases. Strings are a u16 length followed by NUL-terminated bytes.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

# CTranslate2's DataType enum, in order.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}  # 5 = bfloat16


def _u32(handle: BinaryIO) -> int:
    return struct.unpack("<I", handle.read(4))[0]


def _string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<H", handle.read(2))
    return handle.read(length).rstrip(b"\0").decode("utf-8")


def read_ct2_variables(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All variables of a CTranslate2 model file as numpy arrays, plus the alias table (alias -> name)."""
    variables: dict[str, np.ndarray] = {}
    with Path(path).open("rb") as handle:
        version = _u32(handle)
        if version < 5:
            raise ValueError(f"unsupported CTranslate2 model version {version}")
        _string(handle)  # spec name, e.g. WhisperSpec
        _u32(handle)  # spec revision
        for _ in range(_u32(handle)):
            name = _string(handle)
            rank = handle.read(1)[0]
            dims = struct.unpack(f"<{rank}I", handle.read(4 * rank)) if rank else ()
            dtype_id = handle.read(1)[0]
            raw = handle.read(_u32(handle))
            if dtype_id == 5:  # bfloat16: widen to float32 through the upper half of the bits
                array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                array = np.frombuffer(raw, _DTYPES[dtype_id])
            variables[name] = array.reshape(dims)
        aliases = {_string(handle): _string(handle) for _ in range(_u32(handle))}
    return variables, aliases


def _layer_count(variables: dict[str, np.ndarray], side: str) -> int:
    pattern = re.compile(rf"^{side}/layer_(\d+)/")
    return 1 + max(int(m.group(1)) for n in variables if (m := pattern.match(n)))


def ct2_to_openai(model_dir: Path) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """Convert a faster-whisper model directory to (openai-whisper dims, float32 state dict)."""
    variables, aliases = read_ct2_variables(Path(model_dir) / "model.bin")
    for alias, target in aliases.items():
        variables.setdefault(alias, variables[target])

    def get(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(variables[name], dtype=np.float32))

    state: dict[str, torch.Tensor] = {}
    d_model = variables["encoder/conv1/weight"].shape[0]

    def attention(src: str, dst: str, fused_qkv: bool) -> None:
        if fused_qkv:  # linear_0 = [q; k; v]; Whisper's key projection has no bias (CT2 stores zeros)
            weight, bias = get(f"{src}/linear_0/weight"), get(f"{src}/linear_0/bias")
            for i, part in enumerate(("query", "key", "value")):
                state[f"{dst}.{part}.weight"] = weight[i * d_model : (i + 1) * d_model].clone()
                if part != "key":
                    state[f"{dst}.{part}.bias"] = bias[i * d_model : (i + 1) * d_model].clone()
            out = "linear_1"
        else:  # cross-attention: linear_0 = q, linear_1 = [k; v], linear_2 = out
            state[f"{dst}.query.weight"] = get(f"{src}/linear_0/weight")
            state[f"{dst}.query.bias"] = get(f"{src}/linear_0/bias")
            weight = get(f"{src}/linear_1/weight")
            state[f"{dst}.key.weight"] = weight[:d_model].clone()
            state[f"{dst}.value.weight"] = weight[d_model:].clone()
            kv_bias = f"{src}/linear_1/bias"
            state[f"{dst}.value.bias"] = (
                get(kv_bias)[d_model:].clone() if kv_bias in variables else torch.zeros(d_model)
            )
            out = "linear_2"
        state[f"{dst}.out.weight"] = get(f"{src}/{out}/weight")
        state[f"{dst}.out.bias"] = get(f"{src}/{out}/bias")

    def norm(src: str, dst: str) -> None:
        state[f"{dst}.weight"] = get(f"{src}/gamma")
        state[f"{dst}.bias"] = get(f"{src}/beta")

    def ffn(src: str, dst: str) -> None:
        norm(f"{src}/layer_norm", f"{dst}.mlp_ln")
        for i, j in ((0, 0), (1, 2)):
            state[f"{dst}.mlp.{j}.weight"] = get(f"{src}/linear_{i}/weight")
            state[f"{dst}.mlp.{j}.bias"] = get(f"{src}/linear_{i}/bias")

    for conv in ("conv1", "conv2"):
        state[f"encoder.{conv}.weight"] = get(f"encoder/{conv}/weight")
        state[f"encoder.{conv}.bias"] = get(f"encoder/{conv}/bias")
    state["encoder.positional_embedding"] = get("encoder/position_encodings/encodings")
    n_audio_layer = _layer_count(variables, "encoder")
    for i in range(n_audio_layer):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        attention(f"{src}/self_attention", f"{dst}.attn", fused_qkv=True)
        ffn(f"{src}/ffn", dst)
    norm("encoder/layer_norm", "encoder.ln_post")

    state["decoder.token_embedding.weight"] = get("decoder/embeddings/weight")
    state["decoder.positional_embedding"] = get("decoder/position_encodings/encodings")
    n_text_layer = _layer_count(variables, "decoder")
    for i in range(n_text_layer):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        attention(f"{src}/self_attention", f"{dst}.attn", fused_qkv=True)
        norm(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
        attention(f"{src}/attention", f"{dst}.cross_attn", fused_qkv=False)
        ffn(f"{src}/ffn", dst)
    norm("decoder/layer_norm", "decoder.ln")

    heads = int(np.asarray(variables["encoder/num_heads"]).reshape(-1)[0])
    dims = {
        "n_mels": int(variables["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(variables["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(d_model),
        "n_audio_head": heads,
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(variables["decoder/embeddings/weight"].shape[0]),
        "n_text_ctx": int(variables["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(variables["decoder/embeddings/weight"].shape[1]),
        "n_text_head": int(np.asarray(variables["decoder/num_heads"]).reshape(-1)[0]),
        "n_text_layer": n_text_layer,
    }
    return dims, state


def alignment_heads(model_dir: Path) -> list[list[int]] | None:
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get("alignment_heads")
