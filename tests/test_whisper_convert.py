"""The CTranslate2 -> PyTorch Whisper conversion matches faster-whisper on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from media_cleaner.config import load_settings
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.models.whisper.ct2 import read_ct2_variables
from media_cleaner.models.whisper.loader import hf_to_openai, load_hf_directory, load_whisper

MODEL_CACHE = Path(__file__).resolve().parent.parent / ".venv" / "model_cache"


def _pcm16k(path: Path) -> np.ndarray:
    import av

    container = av.open(str(path))
    resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
    chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    container.close()
    return np.concatenate(chunks).astype(np.float32)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    settings = load_settings(base_dir=tmp_path_factory.mktemp("whisper"), model_cache_dir=MODEL_CACHE)
    return load_whisper(settings), ModelRegistry(settings)


def test_model_bin_is_read_with_split_fused_attention(converted):
    model, registry = converted
    variables, aliases = read_ct2_variables(registry.resolve("whisper-base-ct2") / "model.bin")
    assert aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    fused = variables["encoder/layer_0/self_attention/linear_0/bias"].astype(np.float32)
    # Whisper's key projection has no bias: CT2 stores zeros in the middle third of the fused QKV bias.
    assert np.all(fused[512:1024] == 0)
    q = model.encoder.blocks[0].attn.query.weight.detach().cpu().numpy()
    np.testing.assert_array_equal(
        q, variables["encoder/layer_0/self_attention/linear_0/weight"][:512].astype(np.float32)
    )
    kv = variables["decoder/layer_2/attention/linear_1/weight"].astype(np.float32)
    np.testing.assert_array_equal(model.decoder.blocks[2].cross_attn.value.weight.cpu().numpy(), kv[512:])
    assert registry.cache_path("whisper-base-ct2", "openai_state_dict.safetensors").is_file()


def test_encoder_output_and_transcript_match_ctranslate2(converted, shared_data):
    import ctranslate2
    import whisper
    from faster_whisper import WhisperModel
    from faster_whisper.feature_extractor import FeatureExtractor

    model, registry = converted
    directory = registry.resolve("whisper-base-ct2")
    audio = _pcm16k(shared_data / "audio" / "jfk.flac")

    padded = whisper.pad_or_trim(audio)
    mel_ours = whisper.log_mel_spectrogram(torch.from_numpy(padded))
    mel_fw = FeatureExtractor(feature_size=80)(padded, padding=0)[:, :3000]
    np.testing.assert_allclose(mel_ours.numpy(), mel_fw, atol=2e-3)

    ct2 = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="float32")
    ct2_out = np.array(ct2.encode(ctranslate2.StorageView.from_array(mel_fw[None].astype(np.float32)), to_cpu=True))
    with torch.no_grad():
        ours = model.encoder(torch.from_numpy(mel_fw[None].astype(np.float32))).numpy()
    assert ours.shape == ct2_out.shape == (1, 1500, 512)
    # CT2 stores the weights in float16 and we widen them exactly; only float32 arithmetic order differs.
    assert np.abs(ours - ct2_out).max() < 2e-2
    assert np.abs(ours - ct2_out).mean() < 1e-3

    fw = WhisperModel(str(directory), device="cpu", compute_type="float32", cpu_threads=2)
    segments, _ = fw.transcribe(audio, language="en", beam_size=5, condition_on_previous_text=False)
    fw_text = " ".join(s.text.strip() for s in segments)
    result = whisper.transcribe(model, audio, language="en", fp16=False, beam_size=5, temperature=0.0)
    ours_text = " ".join(s["text"].strip() for s in result["segments"])
    assert "ask not what your country can do for you" in fw_text.lower().replace(",", "")
    assert ours_text == fw_text


def test_hugging_face_layout_loads_to_the_same_model(converted, tmp_path):
    model, _ = converted
    inverse = {v: k for k, v in _hf_names(model).items()}
    hf_state = {inverse[k]: v.contiguous() for k, v in model.state_dict().items() if k in inverse}
    config = {
        "model_type": "whisper",
        "num_mel_bins": 80,
        "max_source_positions": 1500,
        "d_model": 512,
        "encoder_attention_heads": 8,
        "encoder_layers": 6,
        "vocab_size": 51865,
        "max_target_positions": 448,
        "decoder_attention_heads": 8,
        "decoder_layers": 6,
    }
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(hf_state, str(tmp_path / "model.safetensors"))
    dims, renamed = hf_to_openai(config, hf_state)
    assert set(renamed) == set(_hf_names(model).values())
    assert dims["n_audio_layer"] == 6
    loaded = load_hf_directory(tmp_path)
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(mel), model.encoder(mel))


def _hf_names(model) -> dict[str, str]:
    """transformers name -> openai name for every weight (the layout Hugging Face Whisper checkpoints use)."""
    layer = {
        "attn.query": "self_attn.q_proj",
        "attn.key": "self_attn.k_proj",
        "attn.value": "self_attn.v_proj",
        "attn.out": "self_attn.out_proj",
        "attn_ln": "self_attn_layer_norm",
        "cross_attn.query": "encoder_attn.q_proj",
        "cross_attn.key": "encoder_attn.k_proj",
        "cross_attn.value": "encoder_attn.v_proj",
        "cross_attn.out": "encoder_attn.out_proj",
        "cross_attn_ln": "encoder_attn_layer_norm",
        "mlp.0": "fc1",
        "mlp.2": "fc2",
        "mlp_ln": "final_layer_norm",
    }
    top = {
        "encoder.conv1": "model.encoder.conv1",
        "encoder.conv2": "model.encoder.conv2",
        "encoder.positional_embedding": "model.encoder.embed_positions.weight",
        "encoder.ln_post": "model.encoder.layer_norm",
        "decoder.token_embedding.weight": "model.decoder.embed_tokens.weight",
        "decoder.positional_embedding": "model.decoder.embed_positions.weight",
        "decoder.ln": "model.decoder.layer_norm",
    }
    names = {}
    for key in model.state_dict():
        for oa, hf in top.items():
            if key == oa or key.startswith(oa + "."):
                names[hf + key[len(oa) :]] = key
        if ".blocks." in key:
            side, rest = key.split(".blocks.", 1)
            index, sub = rest.split(".", 1)
            for oa, hf in sorted(layer.items(), key=lambda kv: -len(kv[0])):
                if sub.startswith(oa + "."):
                    names[f"model.{side}.layers.{index}.{hf}{sub[len(oa) :]}"] = key
                    break
    return names


def test_openai_checkpoint_resolves_through_the_registry(converted, tmp_path):
    from media_cleaner.errors import ModelNotAvailableError

    model, _ = converted
    offline = load_settings(base_dir=tmp_path, model_cache_dir=tmp_path / "cache", allow_model_download=False)
    with pytest.raises(ModelNotAvailableError, match="openaipublic.azureedge.net"):
        load_whisper(offline, name="whisper-base")
    # An openai-format checkpoint placed in model_dir (as `whisper.load_model` files are laid out) is picked up.
    folder = tmp_path / "models" / "whisper-base"
    folder.mkdir(parents=True)
    dims = {k: getattr(model.dims, k) for k in model.dims.__dataclass_fields__}
    torch.save({"dims": dims, "model_state_dict": model.state_dict()}, folder / "base.pt")
    settings = load_settings(base_dir=tmp_path, model_dir=tmp_path / "models", model_cache_dir=tmp_path / "cache")
    loaded = load_whisper(settings, name="whisper-base")
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(mel), model.encoder(mel))
