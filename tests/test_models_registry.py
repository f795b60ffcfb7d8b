from __future__ import annotations

from pathlib import Path

import pytest

from media_cleaner.config import load_settings
from media_cleaner.errors import ModelNotAvailableError
from media_cleaner.models import MODELS, ModelRegistry
from media_cleaner.models.registry import sha256_of


# Models shipped in weight packages; download-only ones (the openai whisper-base.pt) are covered in test_whisper_*.
@pytest.mark.parametrize("name", sorted(n for n, spec in MODELS.items() if all(f.package for f in spec.files)))
def test_installed_packages_resolve_and_verify(name: str, tmp_path: Path) -> None:
    registry = ModelRegistry(load_settings(model_cache_dir=tmp_path, allow_model_download=False))
    assert registry.locate(name).origin == "package"
    assert all(registry.verify(name).values())
    directory = registry.resolve(name)
    for weight in MODELS[name].files:
        assert sha256_of(directory / weight.name) == weight.sha256
    assert registry.locate(name).origin == "cache"


def test_explicit_model_dir_wins(tmp_path: Path) -> None:
    cache = ModelRegistry(load_settings(model_cache_dir=tmp_path / "cache")).resolve("mtcnn")
    registry = ModelRegistry(load_settings(model_dir=tmp_path / "cache", model_cache_dir=tmp_path / "other"))
    assert registry.resolve("mtcnn") == cache


def test_corrupt_cache_file_fails_verification_and_is_repaired(tmp_path: Path) -> None:
    registry = ModelRegistry(load_settings(model_cache_dir=tmp_path, allow_model_download=False))
    directory = registry.resolve("mtcnn")
    (directory / "pnet.pt").write_bytes(b"corrupt")
    assert registry.verify("mtcnn")["pnet.pt"] is False
    registry.fetch("mtcnn")
    assert registry.verify("mtcnn")["pnet.pt"] is True


def test_unknown_model_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="mtcnn"):
        ModelRegistry(load_settings(model_cache_dir=tmp_path)).resolve("yolo")


def test_missing_package_without_download_explains_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    import media_cleaner.models.registry as registry_module

    monkeypatch.setattr(registry_module, "_package_dir", lambda module: None)
    registry = ModelRegistry(load_settings(model_cache_dir=tmp_path, allow_model_download=False))
    assert registry.locate("mtcnn").origin == "missing"
    with pytest.raises(ModelNotAvailableError, match="pip install --no-deps facenet-pytorch==2.6.0"):
        registry.resolve("mtcnn")
