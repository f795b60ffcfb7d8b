"""Face-detection efficacy on decoded files: how often detectors still find a face after protection.

Three detectors: the surrogate the attack optimises against (MTCNN, facenet-pytorch 2.6 weights, its default
thresholds) and two it never sees: OpenCV's Haar cascade (`haarcascade_frontalface_default.xml`, Viola-Jones, a
completely different family of detector) and MediaPipe's full-range BlazeFace (a neural SSD detector, see
`evaluate.blazeface`), reported under "blazeface" (left out, with the reason under "unavailable", when its runtime
or weights are not installed). Both files are decoded (never the in-memory frames), frame i of one is compared with
frame i of the other, on every `every`-th frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from media_cleaner.config import Settings
from media_cleaner.errors import ModelNotAvailableError

Detector = Callable[[np.ndarray], int]  # RGB frame -> number of faces


def decoded_frames(path: str | Path, every: int = 1, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB frames of the first video stream, every `every`-th one, at most `max_frames` of them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        taken = 0
        for i, frame in enumerate(container.decode(stream)):
            if i % every:
                continue
            yield frame.to_ndarray(format="rgb24")
            taken += 1
            if max_frames is not None and taken >= max_frames:
                return


def haar_detector(min_size: int = 20) -> Detector:
    """OpenCV's frontal-face Haar cascade with its usual settings (scale 1.1, 5 neighbours)."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def count(frame: np.ndarray) -> int:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_size, min_size))
        return len(faces)

    return count


def mtcnn_detector(settings: Settings) -> Detector:
    from media_cleaner.models.mtcnn import load_mtcnn

    model = load_mtcnn(settings)

    def count(frame: np.ndarray) -> int:
        return len(model.detect(frame[None]).boxes[0])

    return count


def default_detectors(settings: Settings) -> tuple[dict[str, Detector], dict[str, str], dict[str, str]]:
    """The surrogate and the unseen detectors: (detectors, their descriptions, unavailable ones with the reason)."""
    detectors: dict[str, Detector] = {"mtcnn": mtcnn_detector(settings), "haar": haar_detector()}
    described = {
        "mtcnn": "surrogate (optimised against): MTCNN, facenet-pytorch 2.6 weights, thresholds 0.6/0.7/0.7",
        "haar": "unseen: OpenCV Haar cascade frontalface_default (scale 1.1, 5 neighbours, min 20 px)",
    }
    unavailable: dict[str, str] = {}
    try:
        from media_cleaner.evaluate.blazeface import blazeface_detector

        blazeface = blazeface_detector(settings)
    except (ImportError, ModelNotAvailableError) as exc:  # an optional install: the other two still measure
        unavailable["blazeface"] = f"{type(exc).__name__}: {exc}"
    else:
        detectors["blazeface"] = blazeface
        described["blazeface"] = blazeface.describe()
    return detectors, described, unavailable


def _summary(original: list[int], protected: list[int]) -> dict[str, Any]:
    n = min(len(original), len(protected))
    o = np.asarray(original[:n]) > 0
    p = np.asarray(protected[:n]) > 0
    before = int(o.sum())
    kept = int((o & p).sum())
    return {
        "frames": n,
        "frames_with_face_original": before,
        "frames_with_face_protected": int(p.sum()),
        "fraction_original": round(before / n, 4) if n else None,
        "fraction_protected": round(float(p.sum()) / n, 4) if n else None,
        # the target: of the frames where a face was found before, the share where one is still found
        "still_found_fraction": round(kept / before, 4) if before else None,
        "faces_original": int(sum(original[:n])),
        "faces_protected": int(sum(protected[:n])),
    }


def face_efficacy(
    original_path: str | Path,
    protected_path: str | Path,
    settings: Settings,
    *,
    every: int = 1,
    max_frames: int | None = None,
    detectors: dict[str, Detector] | None = None,
) -> dict[str, Any]:
    """Fraction of frames with a face found, original vs protected, per detector (decoding both files)."""
    if detectors:
        described, unavailable = {name: name for name in detectors}, {}
    else:
        detectors, described, unavailable = default_detectors(settings)
    counts: dict[str, tuple[list[int], list[int]]] = {name: ([], []) for name in detectors}
    pairs = zip(
        decoded_frames(original_path, every, max_frames),
        decoded_frames(protected_path, every, max_frames),
        strict=False,
    )
    for a, b in pairs:
        for name, detect in detectors.items():
            counts[name][0].append(detect(a))
            counts[name][1].append(detect(b if b.shape == a.shape else cv2.resize(b, a.shape[1::-1])))
    result: dict[str, Any] = {
        "sampling": f"every {every} frame(s)" + (f", at most {max_frames}" if max_frames else ""),
        "detectors": described,
    }
    if unavailable:
        result["unavailable"] = unavailable
    for name, (o, p) in counts.items():
        result[name] = _summary(o, p)
    return result
