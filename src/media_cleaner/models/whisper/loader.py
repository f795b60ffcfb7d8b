"""Load Whisper as a differentiable PyTorch model (openai-whisper's implementation) from any supported checkpoint.

Sources: the CTranslate2 weights faster-whisper uses (converted once, cached as safetensors), an openai `.pt`
checkpoint, or a Hugging Face `transformers` directory (config.json + model.safetensors).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from media_cleaner.config import Settings
from media_cleaner.errors import ModelNotAvailableError
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.models.whisper.ct2 import alignment_heads, ct2_to_openai

CONVERTED_NAME = "openai_state_dict.safetensors"
_LOCK = threading.Lock()


def _build(dims: dict[str, int], state: dict[str, torch.Tensor], heads: list[list[int]] | None = None):
    from whisper.model import ModelDimensions, Whisper  # heavy import, deferred

    model = Whisper(ModelDimensions(**dims))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The encoder's sinusoid table is a buffer that some checkpoints omit; the model rebuilds it identically.
    missing = [k for k in missing if k != "encoder.positional_embedding" and k != "alignment_heads"]
    if missing or unexpected:
        raise ModelNotAvailableError(
            f"Whisper checkpoint does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if heads:
        mask = torch.zeros(dims["n_text_layer"], dims["n_text_head"], dtype=torch.bool)
        for layer, head in heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.eval()


def convert_ct2(registry: ModelRegistry, name: str = "whisper-base-ct2") -> Path:
    """Convert the CTranslate2 model to an openai-whisper state dict once; returns the cached safetensors path."""
    target = registry.cache_path(name, CONVERTED_NAME)
    with _LOCK:
        if not target.is_file():
            dims, state = ct2_to_openai(registry.resolve(name))
            temp = target.with_suffix(".tmp")
            save_file(state, str(temp), metadata={"dims": json.dumps(dims), "source": name})
            temp.replace(target)
    return target


def _read_converted(path: Path) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        dims = json.loads(handle.metadata()["dims"])
    return dims, load_file(str(path))


def load_openai_checkpoint(path: Path):
    """An openai-whisper `.pt` file (dict with `dims` and `model_state_dict`)."""
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    return _build(checkpoint["dims"], {k: v.float() for k, v in checkpoint["model_state_dict"].items()})


_HF_LAYER = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
_HF_TOP = {
    "model.encoder.conv1": "encoder.conv1",
    "model.encoder.conv2": "encoder.conv2",
    "model.encoder.embed_positions.weight": "encoder.positional_embedding",
    "model.encoder.layer_norm": "encoder.ln_post",
    "model.decoder.embed_tokens.weight": "decoder.token_embedding.weight",
    "model.decoder.embed_positions.weight": "decoder.positional_embedding",
    "model.decoder.layer_norm": "decoder.ln",
}


def hf_to_openai(config: dict, hf_state: dict[str, torch.Tensor]) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """Rename a transformers WhisperForConditionalGeneration state dict to openai-whisper's names."""
    state: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key == "proj_out.weight":  # tied to the token embedding
            continue
        new = None
        for prefix, target in _HF_TOP.items():
            if key == prefix or key.startswith(prefix + "."):
                new = target + key[len(prefix) :]
        if new is None and ".layers." in key:
            side, rest = key.removeprefix("model.").split(".layers.", 1)
            index, sub = rest.split(".", 1)
            for hf, oa in _HF_LAYER.items():
                if sub.startswith(hf + "."):
                    new = f"{side}.blocks.{index}.{oa}{sub[len(hf) :]}"
        if new is None:
            raise ModelNotAvailableError(f"unexpected key in Hugging Face Whisper checkpoint: {key}")
        state[new] = value.float()
    dims = {
        "n_mels": config["num_mel_bins"],
        "n_audio_ctx": config["max_source_positions"],
        "n_audio_state": config["d_model"],
        "n_audio_head": config["encoder_attention_heads"],
        "n_audio_layer": config["encoder_layers"],
        "n_vocab": config["vocab_size"],
        "n_text_ctx": config["max_target_positions"],
        "n_text_state": config["d_model"],
        "n_text_head": config["decoder_attention_heads"],
        "n_text_layer": config["decoder_layers"],
    }
    return dims, state


def load_hf_directory(directory: Path):
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "whisper":
        raise ModelNotAvailableError(f"{directory} is not a Whisper model (model_type={config.get('model_type')})")
    return _build(*hf_to_openai(config, load_file(str(directory / "model.safetensors"))))


def load_whisper(settings: Settings, registry: ModelRegistry | None = None, name: str = "whisper-base-ct2"):
    """A `whisper.model.Whisper` in eval mode, float32, on `settings.device`, from the registry model `name`.

    `name` may also be a path: an openai `.pt` file or a Hugging Face directory.
    """
    registry = registry or ModelRegistry(settings)
    path = Path(name)
    if path.suffix == ".pt" and path.is_file():
        model = load_openai_checkpoint(path)
    elif path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        model = load_hf_directory(path)
    else:
        spec = registry.spec(name)
        directory = registry.resolve(name)
        files = {f.name for f in spec.files}
        if "model.bin" in files:
            model = _build(*_read_converted(convert_ct2(registry, name)), alignment_heads(directory))
        elif any(f.endswith(".pt") for f in files):
            model = load_openai_checkpoint(directory / next(f for f in files if f.endswith(".pt")))
        else:
            model = load_hf_directory(directory)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.to(settings.device)
