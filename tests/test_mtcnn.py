"""The PyTorch MTCNN against known detections on real images and clips (weights from the model registry)."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from media_cleaner.config import Settings
from media_cleaner.models.mtcnn import MTCNN, load_mtcnn, nms, pyramid_scales
from media_cleaner.protect.video.protector import iou, ious, merge_rects, region_of

# facenet-pytorch 2.6 (torch 'area' resampling) on multiface.jpg: six faces, x1 y1 x2 y2
MULTIFACE = np.array(
    [
        [420, 133, 503, 240],
        [554, 45, 633, 158],
        [859, 437, 954, 559],
        [226, 249, 305, 357],
        [622, 198, 695, 297],
        [722, 464, 798, 573],
    ],
    dtype=np.float64,
)


@pytest.fixture(scope="module")
def mtcnn(tmp_path_factory: pytest.TempPathFactory) -> MTCNN:
    from tests.conftest import REPO_ROOT  # noqa: PLC0415

    from media_cleaner.config import load_settings  # noqa: PLC0415

    base = tmp_path_factory.mktemp("mtcnn")
    return load_mtcnn(load_settings(base_dir=base, model_cache_dir=REPO_ROOT / ".venv" / "model_cache"))


def frames_of(path: Path, every: int, limit: int | None = None) -> np.ndarray:
    out = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % every == 0:
                out.append(f.to_ndarray(format="rgb24"))
            if limit and len(out) >= limit:
                break
    return np.stack(out)


def test_layers_match_facenet_state_dicts(settings: Settings) -> None:
    from media_cleaner.models.registry import ModelRegistry  # noqa: PLC0415

    weights = ModelRegistry(settings).resolve("mtcnn")
    model = MTCNN(weights)
    for name in ("pnet", "rnet", "onet"):
        state = torch.load(weights / f"{name}.pt", weights_only=True)
        assert set(state) == set(getattr(model, name).state_dict())


def test_pyramid_matches_facenet_defaults() -> None:
    scales = pyramid_scales(288, 360)
    assert scales[0] == pytest.approx(0.6)
    assert scales[1] / scales[0] == pytest.approx(0.709)
    assert 288 * scales[-1] >= 12 > 288 * scales[-1] * 0.709


def test_nms_union_and_min() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 6, 6]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    keep = nms(boxes, scores, 0.5)
    assert sorted(keep.tolist()) == [0, 2, 3]  # box 1 overlaps box 0 by IoU 0.68; box 3 is small inside box 0
    keep_min = nms(boxes, scores, 0.7, "min")
    assert sorted(keep_min.tolist()) == [2, 3]  # 'Min' overlap: box 3 lies inside boxes 0 and 1


def test_multiface_image(mtcnn: MTCNN, shared_data: Path) -> None:
    image = cv2.imread(str(shared_data / "images" / "multiface.jpg"))[:, :, ::-1]
    det = mtcnn.detect(image)
    boxes, probs = det.boxes[0], det.probs[0]
    assert len(boxes) == len(MULTIFACE)
    for ref in MULTIFACE:
        assert max(iou(ref, b) for b in boxes) > 0.9
    assert probs.min() > 0.99
    assert det.landmarks[0].shape == (6, 5, 2)


def test_exact_resampling_reproduces_facenet_boxes(mtcnn: MTCNN, shared_data: Path) -> None:
    frame = frames_of(shared_data / "video" / "grid_bbaf2n.mpg", 1, 1)
    exact = mtcnn.detect(frame, exact=True).boxes[0]
    fast = mtcnn.detect(frame).boxes[0]
    assert len(exact) == len(fast) == 1
    assert iou(exact[0], fast[0]) > 0.8  # OpenCV vs torch area resampling: a few pixels apart


@pytest.mark.parametrize("clip", ["grid_bbaf2n.mpg", "grid_brbk7n.mpg", "grid_lbax4n.mpg", "grid_id2_vcd_swwp2s.mpg"])
def test_grid_one_face_per_frame(mtcnn: MTCNN, shared_data: Path, clip: str) -> None:
    frames = frames_of(shared_data / "video" / clip, 15)  # 5 frames spread over the 3 s
    det = mtcnn.detect(frames)
    assert det.counts() == [1] * len(frames)
    for box in det.boxes:
        assert 70 < box[0, 3] - box[0, 1] < 200  # a head of the right size, not a fragment


@pytest.mark.slow
def test_crowd_has_four_to_seven_faces(mtcnn: MTCNN, shared_data: Path) -> None:
    frames = frames_of(shared_data / "video" / "crowd_1080p_faces.mp4", 50)
    counts = mtcnn.detect(frames).counts()
    assert all(4 <= c <= 7 for c in counts), counts


def test_gradients_reach_the_pixels(mtcnn: MTCNN) -> None:
    x = torch.rand(1, 3, 48, 48, requires_grad=True)
    _, _, logits = mtcnn.onet(x)
    _, r = mtcnn.rnet(torch.nn.functional.interpolate(x, size=(24, 24), mode="area"))
    _, p = mtcnn.pnet(x)
    (logits[:, 1].sum() + r[:, 1].sum() + p[:, 1].sum()).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def near(det, box: np.ndarray, attr: str) -> np.ndarray:  # noqa: ANN001
    cands = getattr(det, attr)[:, 1:]
    return cands[ious(cands, box) > 0.25]


@pytest.mark.parametrize("source", ["multiface", "720p"])
def test_region_detection_equals_the_whole_frame(mtcnn: MTCNN, shared_data: Path, source: str) -> None:
    """P-Net on the faces' regions only (face + 1 face size), at the whole frame's pyramid scales and sampling: the
    same faces, and the R-/O-Net candidates near each face, as the whole-frame detection (what the attack's round
    trip reads), from a fraction of the P-Net cells. (A candidate can still differ where a P-Net window outside the
    regions would have won the NMS against it: measured 1 of 15 R-Net candidates of one face on one 720p frame.)"""
    if source == "multiface":
        image = np.ascontiguousarray(cv2.imread(str(shared_data / "images" / "multiface.jpg"))[:, :, ::-1])
    else:
        image = frames_of(shared_data / "bench" / "talking_crowd_720p.mp4", 1, 1)[0]
    h, w = image.shape[:2]
    full = mtcnn.detect(image)
    rects = merge_rects([region_of(b, 1.0, h, w)[1] for b in full.boxes[0]])
    regions = mtcnn.detect(image, regions=rects)
    assert len(full.boxes[0]) >= 6
    assert np.abs(np.sort(full.boxes[0], 0) - np.sort(regions.boxes[0], 0)).max() < 1e-3
    assert np.abs(np.sort(full.probs[0]) - np.sort(regions.probs[0])).max() < 1e-4
    total = common = 0
    for box in full.boxes[0]:
        for attr in ("rnet_inputs", "onet_inputs"):
            a, b = near(full, box, attr), near(regions, box, attr)
            total += max(len(a), len(b))
            common += sum(bool(len(b)) and np.abs(b - c).max(axis=1).min() < 1e-3 for c in a)
    assert common >= 0.95 * total, (common, total)
    assert regions.pnet_candidates < full.pnet_candidates  # the rest of the frame was not scanned
    # a region without a face in it finds nothing (no cells outside the regions leak in)
    assert mtcnn.detect(image, regions=[(0, 40, 0, 40)]).counts() == [0]


def test_merge_rects_is_the_overlap_closure() -> None:
    """The one-pass merge gives the merge-until-nothing-overlaps result: no two merged rects overlap, every input lies
    in one, each is the bounding rect of its inputs, and it is the set the restart-after-every-merge loop gave."""

    def overlap(a, b) -> bool:  # noqa: ANN001
        return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]

    def restarting(rects):  # noqa: ANN001, ANN202 - the previous implementation
        out = list(rects)
        while True:
            pair = next(((i, j) for i in range(len(out)) for j in range(i + 1, len(out)) if overlap(out[i], out[j])), 0)
            if not pair:
                return out
            (i, j), (a, b) = pair, (out[pair[0]], out[pair[1]])
            out[i] = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
            del out[j]

    rng = np.random.default_rng(0)
    for count in (0, 1, 5, 40, 120):
        y, x = rng.integers(0, 1000, count), rng.integers(0, 1800, count)
        size = rng.integers(10, 120, count)
        rects = [(int(a), int(a + s), int(b), int(b + s)) for a, b, s in zip(y, x, size, strict=True)]
        merged = merge_rects(rects)
        assert sorted(merged) == sorted(restarting(rects))
        assert not any(overlap(a, b) for i, a in enumerate(merged) for b in merged[i + 1 :])
        for m in merged:
            inside = [r for r in rects if m[0] <= r[0] and r[1] <= m[1] and m[2] <= r[2] and r[3] <= m[3]]
            assert m == (
                min(r[0] for r in inside),
                max(r[1] for r in inside),
                min(r[2] for r in inside),
                max(r[3] for r in inside),
            )
        assert (
            sum(1 for r in rects for m in merged if m[0] <= r[0] and r[1] <= m[1] and m[2] <= r[2] and r[3] <= m[3])
            == count
        )


def test_pyramid_levels_on_a_pool_give_the_same_detections(mtcnn: MTCNN, shared_data: Path) -> None:
    """P-Net's levels run on two threads (the video attack's workers): the same faces, scores and stage candidates,
    for the whole frame and for regions."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    image = np.ascontiguousarray(cv2.imread(str(shared_data / "images" / "multiface.jpg"))[:, :, ::-1])
    h, w = image.shape[:2]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: oneDNN's sums are split by the thread count
    try:
        with ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for regions in (None, merge_rects([region_of(b, 1.0, h, w)[1] for b in MULTIFACE])):
                one, two = mtcnn.detect(image, regions=regions), mtcnn.detect(image, regions=regions, pool=pool)
                assert len(one.boxes[0]) == 6
                for attr in ("rnet_inputs", "onet_inputs"):
                    assert np.array_equal(getattr(one, attr), getattr(two, attr))
                assert np.array_equal(one.boxes[0], two.boxes[0]) and np.array_equal(one.probs[0], two.probs[0])
                assert one.pnet_candidates == two.pnet_candidates
    finally:
        torch.set_num_threads(threads)
