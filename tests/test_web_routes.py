"""The web router inside the real app: page and assets served offline, config, and previews with the API's auth."""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient

from media_cleaner.api import create_app
from media_cleaner.api.web import STATIC_DIR
from media_cleaner.config import Settings

WORKER = "test-worker"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _png_pixels(data: bytes, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "preview.png"
    path.write_bytes(data)
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def _perturbed_copy(source: Path, target: Path, amplitude: int = 4) -> None:
    """What a worker would publish: every frame changed by a small bounded pattern, encoded H.264."""
    rng = np.random.default_rng(1)
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream = None
        for frame in src.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            if stream is None:
                stream = out.add_stream("libx264", rate=25)
                stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
                stream.options = {"crf": "10"}
            noise = rng.integers(-amplitude, amplitude + 1, rgb.shape)
            changed = np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(changed, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _client(settings: Settings) -> TestClient:
    return TestClient(create_app(settings, configured_workers=0, maintenance=False))


def _upload(client: TestClient, clip: Path, **kwargs) -> str:  # noqa: ANN003
    with clip.open("rb") as handle:
        response = client.post("/upload", files={"file": (clip.name, handle, "video/mpeg")}, **kwargs)
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def _complete(client: TestClient, task_id: str, clip: Path) -> None:
    """Play the worker's part (claim, publish an output, complete) through the real store and storage."""
    ctx = client.app.state.ctx
    claimed = ctx.store.claim(WORKER)
    assert claimed is not None and claimed.id == task_id
    output = ctx.storage.local_path("output", claimed.output_name)
    _perturbed_copy(clip, output)
    report = {"probe": {"duration": 3.0}, "timings": {"total": 1.0}, "quality": {}, "efficacy": {}}
    assert ctx.store.complete(task_id, WORKER, output_size=output.stat().st_size, report=report) is not None


@pytest.fixture
def clip(shared_data: Path) -> Path:
    return shared_data / "video" / "grid_bbaf2n.mpg"


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with _client(settings) as test_client:
        yield test_client


def test_page_and_assets_are_served_without_external_references(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert "static/app.js" in assets and "static/style.css" in assets  # relative: works under a proxy sub-path
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000
    assert (
        client.get("/static/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
    )
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    # Offline servers: nothing may load from another host (the SVG namespace is an identifier, not a fetch).
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            urls = set(re.findall(r"https?://[^\s'\"`)]+", text)) - {"http://www.w3.org/2000/svg"}
            assert not urls, f"{path.name} references {urls}"
            assert "@import" not in text and "cdn" not in text.lower()
    # Every form control the page shows has a label (accessibility).
    for control_id in re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', html):
        has_label = f'for="{control_id}"' in html or re.search(rf'id="{control_id}"[^>]*aria-label', html)
        wrapped = re.search(rf'<label[^>]*>\s*<input[^>]*id="{control_id}"', html)
        assert has_label or wrapped, f"#{control_id} has no label"


def test_static_files_cannot_escape_their_folder(client: TestClient) -> None:
    for path in ("/static/../web.py", "/static/%2e%2e/web.py", "/static/..%2fweb.py", "/static/nope.js", "/static/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "def " not in response.text


def test_config_tells_the_page_the_limits(tmp_path: Path) -> None:
    settings = Settings(base_dir=tmp_path, max_video_size_gb=0.5, api_keys={"k": "alice"}, default_audio_level="strong")
    with _client(settings) as client:
        config = client.get("/web/config").json()  # no key needed: the page must learn that it needs one
    assert config["max_upload_bytes"] == 512 * 1024**2
    assert config["max_video_size_gb"] == 0.5
    assert config["auth_required"] is True
    assert config["default_audio_level"] == "strong"


def test_previews_of_a_completed_task(client: TestClient, clip: Path, tmp_path: Path) -> None:
    task_id = _upload(client, clip, data={"epsilon": "0.06"})
    pending = client.get(f"/task/{task_id}/preview", params={"kind": "original"})
    assert pending.status_code == 409 and pending.json()["error"]["code"] == "not_ready"

    _complete(client, task_id, clip)
    images = {}
    for kind in ("original", "protected", "diff"):
        response = client.get(f"/task/{task_id}/preview", params={"kind": kind, "t": 1.0})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert _png_size(response.content) == (360, 288)
        assert float(response.headers["x-frame-time"]) == pytest.approx(1.0, abs=0.02)
        images[kind] = _png_pixels(response.content, tmp_path)
        if kind == "diff":
            gain = int(response.headers["x-diff-gain"])
            mean = float(response.headers["x-diff-mean"])
    # The protected frame is close to the original (a +-4 pattern plus codec loss) but not identical...
    change = np.abs(images["protected"].astype(int) - images["original"].astype(int))
    assert 0.5 < change.mean() < 6
    # ...and the difference image is that change, made visible.
    assert mean == pytest.approx(change.mean(), rel=0.01)
    assert 4 <= gain <= 64
    assert images["diff"].mean() > 5 * change.mean()

    small = client.get(f"/task/{task_id}/preview", params={"kind": "protected", "max_width": 180})
    assert _png_size(small.content) == (180, 144)
    small_diff = client.get(f"/task/{task_id}/preview", params={"kind": "diff", "t": 1.0, "max_width": 180})
    assert _png_size(small_diff.content) == (180, 144)
    assert _png_pixels(small_diff.content, tmp_path).mean() >= images["diff"].mean()  # peaks kept, not averaged
    bad = client.get(f"/task/{task_id}/preview", params={"kind": "sideways"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    assert client.get("/task/000000000000/preview").json()["error"]["code"] == "not_found"

    # Decoded frames are cached between the three requests, but a replaced file is read afresh.
    ctx = client.app.state.ctx
    output = ctx.storage.local_path("output", ctx.store.get(task_id).output_name)
    _perturbed_copy(clip, output, amplitude=12)
    again = client.get(f"/task/{task_id}/preview", params={"kind": "diff", "t": 1.0})
    assert float(again.headers["x-diff-mean"]) > 2 * mean

    ctx.storage.delete("output", ctx.store.get(task_id).output_name)
    gone = client.get(f"/task/{task_id}/preview", params={"kind": "diff"})
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "gone"


def test_previews_follow_api_key_ownership(tmp_path: Path, clip: Path) -> None:
    settings = Settings(base_dir=tmp_path, api_keys={"key-alice": "alice", "key-bob": "bob"})
    with _client(settings) as client:
        task_id = _upload(client, clip, headers={"X-API-Key": "key-alice"})
        _complete(client, task_id, clip)
        url = f"/task/{task_id}/preview"
        assert client.get(url).json()["error"]["code"] == "unauthorized"
        assert client.get(url, headers={"X-API-Key": "nope"}).status_code == 401
        assert client.get(url, headers={"X-API-Key": "key-bob"}).status_code == 403
        assert client.get(url, headers={"Authorization": "Bearer key-bob"}).status_code == 403
        assert client.get(url, headers={"X-API-Key": "key-alice"}).status_code == 200
        assert client.get(url, headers={"Authorization": "Bearer key-alice"}).status_code == 200


def test_previews_follow_user_id_isolation(client: TestClient, clip: Path) -> None:
    task_id = _upload(client, clip, data={"user_id": "alice"})
    _complete(client, task_id, clip)
    url = f"/task/{task_id}/preview"
    assert client.get(url).json()["error"]["code"] == "access_denied"
    assert client.get(url, params={"user_id": "bob"}).status_code == 403
    assert client.get(url, params={"user_id": "alice"}).status_code == 200
    assert client.get(url, headers={"X-User-Id": "alice"}).status_code == 200


def test_web_modules_never_import_torch() -> None:
    """The API process must stay torch-free: the page and its previews use PyAV and numpy only."""
    import subprocess
    import sys

    code = "import sys, media_cleaner.api.web, media_cleaner.api.web_preview; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
