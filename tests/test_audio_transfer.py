"""The transfer term's options: its gradient kept from working against the Whisper terms (`feature_project`), and
the dynamic, whitened front-end distance run inside the real optimisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from media_cleaner.config import load_settings
from media_cleaner.evaluate.speech import load_pcm
from media_cleaner.models.registry import ModelRegistry
from media_cleaner.progress import CancelToken
from media_cleaner.protect.audio import AttackConfig, create
from media_cleaner.protect.audio.attack import _without_conflict
from media_cleaner.protect.audio.features import SpeechFrontEnd, feature_distance
from media_cleaner.protect.base import AudioContext

MODEL_CACHE = Path(__file__).resolve().parent.parent / ".venv" / "model_cache"


def test_without_conflict_removes_only_an_opposing_component() -> None:
    primary = torch.tensor([1.0, 0.0, 0.0])
    agreeing = torch.tensor([0.5, 2.0, -1.0])
    assert torch.equal(_without_conflict(agreeing, primary), agreeing)  # nothing to remove
    opposing = torch.tensor([-3.0, 2.0, -1.0])
    kept = _without_conflict(opposing, primary)
    assert torch.allclose(kept, torch.tensor([0.0, 2.0, -1.0]))  # the part along the primary gradient is gone
    rng = torch.Generator().manual_seed(0)
    for _ in range(20):
        g, r = torch.randn(50, generator=rng), torch.randn(50, generator=rng)
        assert float((_without_conflict(g, r) * r).sum()) >= -1e-5  # never against the primary direction
        assert float((_without_conflict(g, r) + r).dot(r)) >= float(r.dot(r)) - 1e-4  # the sum still descends


@pytest.fixture(scope="module")
def protector(tmp_path_factory):
    settings = load_settings(base_dir=tmp_path_factory.mktemp("transfer"), model_cache_dir=MODEL_CACHE, torch_threads=1)
    prot = create(settings, ModelRegistry(settings), AttackConfig(precision="float32"))
    prot.prepare(AudioContext(settings=settings, level="weak", sample_rate=16000, channels=1, cancel=CancelToken()))
    return prot


def test_projected_dynamic_term_moves_the_features(protector, shared_data) -> None:
    """The c + d + dd, whitened distance with a projected gradient: the run reports the term, and the features
    move further than with the Whisper terms alone in the same steps."""
    audio = load_pcm(shared_data / "audio" / "LJ002-0020.wav")
    x = torch.from_numpy(audio)
    front = SpeechFrontEnd()
    distances = []
    for weight in (0.0, 1.0):
        cfg = AttackConfig(
            steps=6,
            candidate_every=2,
            feature_weight=weight,
            feature_dynamics=2,
            feature_whiten=True,
            feature_project=True,
        )
        delta, figures = protector._attack.run(audio, cfg)
        assert figures["steps_run"] == 6 and np.isfinite(delta).all()
        assert ("feature_distance" in figures["last_window_terms"]) == bool(weight)
        d = feature_distance(front, x + torch.from_numpy(delta), x, front.peak(x), dynamics=2, whiten=True)
        distances.append(float(d))
    assert distances[1] > 1.2 * distances[0], distances
