"""Face efficacy on decoded files: MTCNN (surrogate) and the Haar cascade (unseen), original vs protected."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clips import write_frames
from media_cleaner.config import Settings
from media_cleaner.evaluate.faces import decoded_frames, face_efficacy, haar_detector


def test_faces_removed_vs_kept(settings: Settings, shared_data: Path, tmp_path: Path) -> None:
    frames = np.stack(list(decoded_frames(shared_data / "video" / "grid_bbaf2n.mpg", every=20)))
    assert len(frames) == 4
    original = write_frames(tmp_path / "original.mp4", frames)
    hidden = frames.copy()
    hidden[2:, :, 60:300] = 128  # the head painted over in the last two frames
    protected = write_frames(tmp_path / "protected.mp4", hidden)
    result = face_efficacy(original, protected, settings)
    for name in ("mtcnn", "haar"):
        r = result[name]
        assert r["frames"] == 4
        assert r["frames_with_face_original"] == 4, (name, r)
        assert r["frames_with_face_protected"] == 2, (name, r)
        assert r["still_found_fraction"] == 0.5
    same = face_efficacy(original, original, settings, every=2)
    assert same["mtcnn"]["frames"] == 2 and same["mtcnn"]["still_found_fraction"] == 1.0


def test_haar_finds_nothing_in_noise() -> None:
    rng = np.random.default_rng(1)
    assert haar_detector()(rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8)) == 0
