"""BlazeFace (MediaPipe full-range, TFLite): the unseen neural detector, on real photos and GRID frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from clips import write_frames
from media_cleaner.config import Settings
from media_cleaner.evaluate.blazeface import _CONFIGS, BlazeFaceDetector, _anchors
from media_cleaner.evaluate.faces import decoded_frames, face_efficacy


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> BlazeFaceDetector:
    from conftest import REPO_ROOT
    from media_cleaner.config import load_settings

    settings = load_settings(
        base_dir=tmp_path_factory.mktemp("bf"), model_cache_dir=REPO_ROOT / ".venv" / "model_cache"
    )
    return BlazeFaceDetector(settings)


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_anchor_counts_match_the_models() -> None:
    assert len(_anchors(_CONFIGS["full"])) == 2304  # the full-range model's 48x48 grid
    assert len(_anchors(_CONFIGS["short"])) == 896  # 16x16x2 + 8x8x6


# MediaPipe 0.10.21's own FaceDetection (model_selection 1 = full range, 0 = short range, min confidence 0.5) on
# frames 0, 15, 30, 45, 60 of grid_bbaf2n.mpg: (x0, y0, x1, y1) in pixels and score. Recorded once in a scratch venv
# with numpy 1.26, where that wheel imports; it cannot be imported here.
MEDIAPIPE_GRID = {
    "full": [
        (90.4, 120.0, 223.4, 253.0, 0.903),
        (88.5, 117.5, 224.6, 253.6, 0.911),
        (89.9, 116.0, 222.7, 248.8, 0.881),
        (90.5, 117.2, 221.4, 248.2, 0.889),
        (92.0, 118.5, 218.9, 245.5, 0.837),
    ],
    "short": [
        (90.7, 124.4, 220.9, 254.6, 0.960),
        (87.7, 123.0, 220.6, 255.9, 0.969),
        (88.8, 119.0, 220.3, 250.4, 0.957),
        (88.6, 122.0, 218.1, 251.5, 0.953),
        (91.8, 124.0, 215.9, 248.0, 0.955),
    ],
}


@pytest.mark.parametrize("model", ["full", "short"])
def test_matches_mediapipe_own_pipeline(model: str, settings: Settings, shared_data: Path) -> None:
    detector = BlazeFaceDetector(settings, model=model)  # type: ignore[arg-type]
    frames = list(decoded_frames(shared_data / "video" / "grid_bbaf2n.mpg", every=15))
    for frame, expected in zip(frames, MEDIAPIPE_GRID[model], strict=True):
        boxes, scores = detector.detect(frame)
        assert len(scores) == 1
        side = expected[2] - expected[0]
        # resampling differs slightly from MediaPipe's (bilinear warp); decoding and anchors must not
        assert np.abs(boxes[0] - np.array(expected[:4])).max() < 0.06 * side, (boxes, expected)
        assert abs(scores[0] - expected[4]) < 0.06, (scores, expected)


def test_finds_every_face_in_the_photos(detector: BlazeFaceDetector, shared_data: Path) -> None:
    images = shared_data / "images"
    for name in ("angelina_jolie_1.jpg", "kate_siegel_1.jpg", "paul_rudd_1.jpg"):
        boxes, scores = detector.detect(_rgb(images / name))
        assert len(scores) == 1, (name, scores)
        assert (scores >= 0.5).all()
    frame = _rgb(images / "multiface.jpg")
    boxes, scores = detector.detect(frame)
    assert len(scores) == 6, scores  # the six people of the group photo (MTCNN finds the same six)
    # boxes are in frame pixels: inside the image and face-sized
    h, w = frame.shape[:2]
    assert (boxes[:, :2] >= -5).all() and (boxes[:, 2] <= w + 5).all() and (boxes[:, 3] <= h + 5).all()
    sides = boxes[:, 2] - boxes[:, 0]
    assert ((sides > 40) & (sides < 200)).all(), sides


def test_one_face_in_every_grid_frame(detector: BlazeFaceDetector, shared_data: Path) -> None:
    counts = [detector(frame) for frame in decoded_frames(shared_data / "video" / "grid_bbaf2n.mpg")]
    assert len(counts) == 75
    assert counts == [1] * 75


def test_tiles_find_the_small_faces_of_a_crowd(
    detector: BlazeFaceDetector, settings: Settings, shared_data: Path
) -> None:
    frames = list(decoded_frames(shared_data / "bench" / "talking_crowd_720p.mp4", every=92, max_frames=3))
    whole = BlazeFaceDetector(settings, tile_fraction=None)
    tiled = [detector(f) for f in frames]
    # 4-7 faces of 15-60 px per frame: shrunk whole to 192 px most vanish; the 360 px tiles keep them
    assert all(n >= 4 for n in tiled), tiled
    assert sum(tiled) >= sum(whole(f) for f in frames) + 6


def test_no_face_in_synthetic_images(detector: BlazeFaceDetector) -> None:
    rng = np.random.default_rng(3)
    assert detector(rng.integers(0, 255, size=(288, 360, 3), dtype=np.uint8)) == 0
    assert detector(np.full((720, 1280, 3), 128, np.uint8)) == 0
    ramp = np.broadcast_to(np.linspace(0, 255, 640, dtype=np.uint8)[None, :, None], (480, 640, 3)).copy()
    assert detector(ramp) == 0


def test_efficacy_report_carries_blazeface(settings: Settings, shared_data: Path, tmp_path: Path) -> None:
    frames = np.stack(list(decoded_frames(shared_data / "video" / "grid_bbaf2n.mpg", every=25)))
    original = write_frames(tmp_path / "original.mp4", frames)
    hidden = frames.copy()
    hidden[1:, :, 60:300] = 128  # the head painted over from the second frame on
    protected = write_frames(tmp_path / "protected.mp4", hidden)
    result = face_efficacy(original, protected, settings)
    assert "unavailable" not in result
    assert set(result) >= {"mtcnn", "haar", "blazeface", "detectors", "sampling"}
    assert "BlazeFace full-range" in result["detectors"]["blazeface"]
    r = result["blazeface"]
    assert (r["frames"], r["frames_with_face_original"], r["frames_with_face_protected"]) == (3, 3, 1)
    assert r["still_found_fraction"] == round(1 / 3, 4)


def test_cli_evaluate_reports_blazeface(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from conftest import REPO_ROOT
    from media_cleaner.cli import main

    monkeypatch.setenv("MEDIA_CLEANER_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("MEDIA_CLEANER_MODEL_CACHE_DIR", str(REPO_ROOT / ".venv" / "model_cache"))

    frames = np.stack(list(decoded_frames(shared_data / "video" / "grid_lbax4n.mpg", every=25)))
    original = write_frames(tmp_path / "original.mp4", frames)
    protected = write_frames(tmp_path / "protected.mp4", np.full_like(frames, 90))  # no face left
    capsys.readouterr()
    assert main(["evaluate", str(original), str(protected), "--json"]) == 0
    faces = json.loads(capsys.readouterr().out)["efficacy"]["faces"]
    assert {"mtcnn", "haar", "blazeface"} <= set(faces)
    assert (faces["blazeface"]["frames_with_face_original"], faces["blazeface"]["frames_with_face_protected"]) == (3, 0)
