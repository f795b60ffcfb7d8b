"""The web page end to end: headless Debian Chromium (Playwright) against a real `run_server.py` on 127.0.0.1.

Each main state is photographed; with UPDATE_SCREENSHOTS=1 into docs/screenshots/ (the README shows them). Needs /usr/bin/chromium (`.ci/run`
installs it); skipped with a reason where it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import pytest

from conftest import REPO_ROOT, SHARED_DATA

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Taken on every run (and size-checked); written over the committed docs images only when asked, so a plain test
# run leaves the working tree clean: UPDATE_SCREENSHOTS=1 pytest tests/test_web_e2e.py
SCREENSHOTS = (
    REPO_ROOT / "docs" / "screenshots"
    if os.environ.get("UPDATE_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / "media_cleaner_web_screenshots"
)
CLIP = SHARED_DATA / "video" / "grid_bbaf2n.mpg"
# Full protection of a 3 s clip on 2 shared CPU cores, plus worker start-up (model loading): bounded but generous.
PROCESSING_TIMEOUT_S = 900
API_KEY = "web-test-key-1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (apt-get install chromium)"),
    pytest.mark.skipif(not CLIP.exists(), reason=f"shared clip missing: {CLIP}"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright not installed (dev extra)"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python run_server.py` in its own process group, rooted in a temp dir, stopped by its own pid."""

    def __init__(self, base_dir: Path, workers: int, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_dir = base_dir
        full_env = {
            **os.environ,
            "MEDIA_CLEANER_BASE_DIR": str(base_dir),
            "MEDIA_CLEANER_MODEL_CACHE_DIR": str(REPO_ROOT / ".venv" / "model_cache"),
            **env,
        }
        self.log = open(base_dir / "server_stdout.log", "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "run_server.py", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--workers", str(workers)]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout:.0f} s: {self.output()[-3000:]}")

    def output(self) -> str:
        self.log.flush()
        return (self.base_dir / "server_stdout.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the server stops its own workers on SIGTERM
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test created: server and workers
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("web_server"), workers=1, env={})
    yield srv
    srv.stop()


def _page(browser, width: int = 1100, height: int = 900):  # noqa: ANN001, ANN202 - Playwright types
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # JS exceptions: every test asserts there were none
    return page


def _shot(page, name: str, full_page: bool = True, element: str | None = None) -> Path:  # noqa: ANN001
    """Screenshot for the docs (the page, or one element of it), kept small."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    if element:
        page.locator(element).screenshot(path=str(path), animations="disabled")
    else:
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")
    assert path.stat().st_size < 300_000, f"{path.name} is {path.stat().st_size} bytes; docs images stay small"
    return path


def _throttle_upload(page, bytes_per_second: int) -> None:  # noqa: ANN001
    """Slow the browser's own network so the byte-level upload progress is visible (Chromium DevTools)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": bytes_per_second},
    )
    page.cdp = cdp


def _unthrottle(page) -> None:  # noqa: ANN001
    page.cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )


def _drop_file(page, selector: str, path: Path) -> None:  # noqa: ANN001
    """Drag a real file onto an element: the browser's own DataTransfer carrying a File with the file's bytes."""
    data = list(path.read_bytes())
    page.evaluate(
        """([selector, name, bytes]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, { type: 'video/mp4' }));
            const target = document.querySelector(selector);
            for (const type of ['dragenter', 'dragover', 'drop']) {
              target.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
            }
        }""",
        [selector, path.name, data],
    )


def test_keyboard_only(server: Server, browser) -> None:  # noqa: ANN001
    """Every control is reached with Tab in reading order and works from the keyboard."""
    page = _page(browser)
    page.goto(server.url + "/")
    page.get_by_text("Drop a video here").wait_for()
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert reached[0] == "skip-link"
    for control in ("file-input", "eps-012", "audio-weak", "submit"):
        assert control in reached, (control, reached)
    assert (
        reached.index("file-input") < reached.index("eps-012") < reached.index("audio-weak") < reached.index("submit")
    )
    # The drop zone shows that its (hidden) file input has focus.
    page.focus("#file-input")
    outline = page.evaluate("getComputedStyle(document.getElementById('dropzone')).outlineStyle")
    assert outline == "solid"
    # Arrow keys move between the strengths; Enter on the button without a file explains what is missing.
    page.focus("#eps-012")
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.querySelector('input[name=strength]:checked').value") == "0.20"
    page.focus("#submit")
    page.keyboard.press("Enter")
    assert page.inner_text("#banner-text") == "Please choose a video first."
    assert page.evaluate("document.activeElement.id") == "file-input"  # focus goes where the fix is
    assert page.errors == []


def test_upload_progress_completion_download_and_comparison(server: Server, browser, tmp_path: Path) -> None:  # noqa: ANN001
    page = _page(browser)
    page.goto(server.url + "/")
    page.get_by_text("Drop a video here").wait_for()
    _shot(page, "01_start")

    # Upload the real clip with the browser's network slowed so the byte counter is seen moving.
    _throttle_upload(page, 200_000)
    page.set_input_files("#file-input", str(CLIP))
    assert "grid_bbaf2n.mpg" in page.inner_text("#file-chosen")
    page.get_by_label("Invisible").check()
    # Speech protection is exercised by the cancel test below; here the picture path runs to the end.
    page.get_by_label("Leave audio as it is").check()
    page.get_by_role("button", name="Protect video").click()
    page.wait_for_function("document.getElementById('upload-bar').value > 5")
    upload_text = page.inner_text("#upload-text")
    assert " of " in upload_text and "sent" in upload_text, upload_text
    _shot(page, "02_uploading")
    _unthrottle(page)

    # Processing: status, phase, percent and ETA come from polling GET /task/{id}.
    page.locator("#current").wait_for(state="visible")
    page.wait_for_function(
        "['Processing', 'Done'].includes(document.getElementById('current-status').textContent)",
        timeout=120_000,
    )
    page.wait_for_function(
        "document.getElementById('current-status').textContent === 'Done'", timeout=PROCESSING_TIMEOUT_S * 1000
    )
    assert "ready" in page.inner_text("#current-text")
    assert page.get_attribute("#current-title", "id")  # the section stays labelled
    row = page.locator("#tasks-body tr").first
    row.get_by_text("Done").wait_for()
    assert "grid_bbaf2n.mpg" in row.inner_text()
    _shot(page, "04_done")

    # Download: a real file, a real video.
    with page.expect_download() as info:
        page.get_by_role("button", name="Download protected video").click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert saved.name.endswith("_protected.mp4") or "_protected" in saved.name
    with av.open(str(saved)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 70  # 75 frames in, every one comes back

    # Comparison: the three previews load as images, the report shows figures and plots.
    page.get_by_role("button", name="See what changed", exact=True).click()
    page.locator("#result").wait_for(state="visible")
    page.wait_for_function(
        "['img-original', 'img-protected', 'img-diff'].every(id => document.getElementById(id).naturalWidth > 0)"
    )
    assert page.evaluate("document.getElementById('img-original').naturalWidth") == 360
    assert "times brighter" in page.inner_text("#diff-caption")
    assert page.locator("#timings-chart svg").count() == 1
    assert page.locator("#quality-chart svg").count() == 1
    assert "PSNR" in page.inner_text("#quality-chart")
    page.locator("#wipe").focus()
    page.keyboard.press("ArrowLeft")  # keyboard moves the divider
    assert page.evaluate("document.getElementById('wipe').value") == "49"
    _shot(page, "06_report", element=".report")
    # Photographic frames make big PNGs: the comparison shots are taken at tablet and phone widths.
    page.set_viewport_size({"width": 560, "height": 900})
    page.wait_for_timeout(400)  # charts redraw for the new width
    _shot(page, "05_compare_slider", element=".compare")
    page.get_by_role("button", name="Difference").click()
    assert page.locator("#view-diff").is_visible() and not page.locator("#view-slider").is_visible()
    page.set_viewport_size({"width": 360, "height": 780})
    page.wait_for_timeout(400)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling on a phone
    _shot(page, "07_compare_difference_phone", element=".compare")
    assert page.errors == []


def test_stop_an_upload(server: Server, browser) -> None:  # noqa: ANN001
    before = httpx.get(f"{server.url}/tasks").json()["total"]
    page = _page(browser)
    page.goto(server.url + "/")
    _throttle_upload(page, 20_000)  # 450 KB at 20 KB/s: plenty of time to stop it
    page.set_input_files("#file-input", str(CLIP))
    page.get_by_role("button", name="Protect video").click()
    page.wait_for_function("document.getElementById('upload-bar').value > 0")
    page.get_by_role("button", name="Stop upload").click()
    page.locator("#banner").wait_for(state="visible")
    assert page.inner_text("#banner-text") == "Upload stopped."
    assert page.locator("#upload-progress").is_hidden()
    assert page.locator("#submit").is_enabled()
    page.wait_for_timeout(1000)
    assert httpx.get(f"{server.url}/tasks").json()["total"] == before  # nothing was queued
    assert page.errors == []


def test_cancel_a_running_task(server: Server, browser) -> None:  # noqa: ANN001
    page = _page(browser)
    page.goto(server.url + "/")
    page.set_input_files("#file-input", str(CLIP))
    # Full protection, picture and speech at the strong settings: the slow path, so it is still running.
    page.check('input[name="strength"][value="0.20"]')
    page.check('input[name="audio_level"][value="strong"]')
    page.get_by_role("button", name="Protect video").click()
    page.wait_for_function("document.getElementById('current-status').textContent === 'Processing'", timeout=120_000)
    page.wait_for_function("/% done/.test(document.getElementById('current-text').textContent)", timeout=120_000)
    assert page.inner_text("#current-phase")  # the phase in words
    _shot(page, "03_processing")
    page.click("#current-cancel")
    page.wait_for_function("document.getElementById('current-status').textContent === 'Cancelled'")
    assert "Cancelled" in page.inner_text("#current-text")
    row = page.locator("#tasks-body tr").first
    row.get_by_text("Cancelled").wait_for()
    assert row.get_by_role("button", name="Download").count() == 0
    # The server agrees, and the worker lets go within seconds (the next test's upload needs it).
    task_id = row.get_attribute("data-task-id")
    assert httpx.get(f"{server.url}/task/{task_id}").json()["status"] == "cancelled"
    _wait_worker_idle(server)
    assert page.errors == []


def _wait_worker_idle(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{server.url}/stats").json()["workers"]["busy"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert httpx.get(f"{server.url}/stats").json()["workers"]["busy"] == 0


def test_private_name_keeps_the_list_separate(server: Server, browser) -> None:  # noqa: ANN001
    """Without API keys, the spec's optional user_id: a name typed once keeps that browser's list to itself."""
    carol = _page(browser)
    carol.goto(server.url + "/")
    carol.get_by_text("Keep my videos to myself").click()
    carol.get_by_label("Your name, or a code only you use").fill("carol")
    carol.get_by_label("Your name, or a code only you use").press("Tab")
    carol.set_input_files("#file-input", str(CLIP))
    carol.get_by_label("Leave audio as it is").check()
    carol.get_by_role("button", name="Protect video").click()
    carol.locator("#tasks-body tr").first.wait_for()
    task_id = carol.locator("#tasks-body tr").first.get_attribute("data-task-id")
    assert httpx.get(f"{server.url}/task/{task_id}", params={"user_id": "carol"}).json()["user_id"] == "carol"
    assert carol.evaluate("localStorage.getItem('mediaCleaner.userId')") == "carol"

    stranger = _page(browser)  # another browser profile: no name
    stranger.goto(server.url + "/")
    stranger.get_by_role("button", name="Refresh").click()
    stranger.wait_for_timeout(500)
    assert stranger.locator(f'#tasks-body tr[data-task-id="{task_id}"]').count() == 0

    carol.reload()  # the name is remembered
    assert carol.get_by_label("Your name, or a code only you use").input_value() == "carol"
    carol.locator(f'#tasks-body tr[data-task-id="{task_id}"]').wait_for()
    httpx.post(f"{server.url}/cancel/{task_id}", params={"user_id": "carol"})  # frees the worker (or is done)
    _wait_worker_idle(server)
    assert carol.errors == [] and stranger.errors == []


def test_not_a_video_shows_a_human_error(server: Server, browser, tmp_path: Path) -> None:  # noqa: ANN001
    bogus = tmp_path / "holiday.mp4"
    bogus.write_text("These are my notes, not a video.\n" * 50)
    page = _page(browser)
    page.goto(server.url + "/")
    _drop_file(page, "#dropzone", bogus)  # dragged onto the page, not picked
    assert "holiday.mp4" in page.inner_text("#file-chosen")
    page.get_by_role("button", name="Protect video").click()
    banner = page.locator("#banner")
    banner.wait_for(state="visible")
    text = banner.inner_text()
    assert "doesn't look like a video" in text
    assert "Traceback" not in text and "{" not in text
    _shot(page, "08_error_not_a_video", full_page=False)
    # A real sound file: the reason comes in plain words too.
    page.get_by_role("button", name="Dismiss message").click()
    page.set_input_files("#file-input", str(SHARED_DATA / "audio" / "jfk.flac"))
    page.get_by_role("button", name="Protect video").click()
    banner.wait_for(state="visible")
    assert page.inner_text("#banner-text").startswith("This file has no picture in it")
    assert "jfk.flac" not in page.inner_text("#banner-text")  # no internal file names
    assert page.errors == []


def test_oversize_upload_shows_the_limit(browser, tmp_path: Path) -> None:  # noqa: ANN001
    # 0.0002 GB = 214,748 bytes: the 452,608-byte clip is over it.
    srv = Server(tmp_path, workers=0, env={"MEDIA_CLEANER_MAX_VIDEO_SIZE_GB": "0.0002"})
    try:
        page = _page(browser)
        # 1) The page knows the limit and says so before sending anything.
        page.goto(srv.url + "/")
        assert "up to 210 KB" in page.inner_text("#drop-hint")
        page.set_input_files("#file-input", str(CLIP))
        page.get_by_role("button", name="Protect video").click()
        page.locator("#banner").wait_for(state="visible")
        assert page.inner_text("#banner-text") == "This file is larger than the server accepts (210 KB)."
        _shot(page, "09_error_too_large", full_page=False)

        # 2) The server's own 413: the page is told a larger limit so the upload really reaches the server.
        page.route(
            "**/web/config",
            lambda route: route.fulfill(
                status=200,
                content_type="application/json",
                body=json.dumps({"max_upload_bytes": 10**12, "max_video_size_gb": 0.0002}),
            ),
        )
        page.reload()
        page.set_input_files("#file-input", str(CLIP))
        page.get_by_role("button", name="Protect video").click()
        page.wait_for_function("!document.getElementById('banner').hidden")
        assert page.inner_text("#banner-text").startswith("This file is larger than the server accepts")
        assert httpx.get(f"{srv.url}/tasks").json()["total"] == 0  # nothing was queued
        assert page.errors == []
    finally:
        srv.stop()


def test_api_key_is_asked_once_and_kept_and_busy_server(browser, tmp_path: Path) -> None:  # noqa: ANN001
    env = {"MEDIA_CLEANER_API_KEYS": json.dumps({API_KEY: "alice"}), "MEDIA_CLEANER_MAX_PENDING_TASKS": "1"}
    srv = Server(tmp_path, workers=0, env=env)
    try:
        page = _page(browser, width=360, height=780)  # phone width
        page.goto(srv.url + "/")
        dialog = page.locator("#key-dialog")
        dialog.wait_for(state="visible")
        _shot(page, "10_api_key_phone", full_page=False)
        page.get_by_role("textbox", name="API key").fill("wrong-key")
        page.get_by_role("button", name="Use this key").click()
        page.wait_for_function("document.getElementById('key-dialog').open")  # asked again: key refused
        assert "did not accept" in page.inner_text("#key-error")
        page.get_by_role("textbox", name="API key").fill(API_KEY)
        page.get_by_role("button", name="Use this key").click()
        page.wait_for_function("!document.getElementById('key-dialog').open")
        page.wait_for_function("!document.getElementById('tasks-empty').textContent.includes('Could not')")
        assert page.evaluate("localStorage.getItem('mediaCleaner.apiKey')") == API_KEY
        assert "…" + API_KEY[-4:] in page.inner_text("#account-text")
        # No horizontal scrolling at 360 px.
        assert page.evaluate("document.documentElement.scrollWidth") <= 360
        # A reload does not ask again: the key is kept in this browser.
        page.reload()
        page.wait_for_timeout(500)
        assert not page.evaluate("document.getElementById('key-dialog').open")

        # No worker here and room for one waiting task: the first upload waits in line, the second is refused.
        page.set_input_files("#file-input", str(CLIP))
        page.get_by_role("button", name="Protect video").click()
        page.wait_for_function("/free worker/.test(document.getElementById('current-text').textContent)")
        assert page.inner_text("#current-status") == "Waiting in line"
        row = page.locator("#tasks-body tr").first
        row.get_by_text("Waiting in line").wait_for()
        page.set_input_files("#file-input", str(CLIP))
        page.get_by_role("button", name="Protect video").click()
        page.locator("#banner").wait_for(state="visible")
        assert page.inner_text("#banner-text") == "The server is busy right now. Please try again in a minute."
        _shot(page, "11_error_busy_phone", full_page=False)
        # The list refreshes itself while the task waits; a keyboard user's focus stays on the button it was on.
        page.evaluate("document.querySelector('#tasks-body tr').dataset.marker = 'before'")
        page.get_by_role("button", name="Cancel grid_bbaf2n.mpg").focus()
        page.wait_for_function("document.querySelector('#tasks-body tr').dataset.marker !== 'before'")  # redrawn
        assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Cancel grid_bbaf2n.mpg"
        assert page.evaluate("document.activeElement.closest('#tasks-body') !== null")
        # Back on the page later, the waiting video is followed again without asking.
        page.reload()
        page.wait_for_function("/free worker/.test(document.getElementById('current-text').textContent)")
        assert page.locator("#current").is_visible()
        row = page.locator("#tasks-body tr").first
        # The waiting task is the key's user's, and can be cancelled from the list.
        tasks = httpx.get(f"{srv.url}/tasks", headers={"X-API-Key": API_KEY}).json()
        assert tasks["total"] == 1 and tasks["tasks"][0]["user_id"] == "alice"
        row.get_by_role("button", name="Cancel grid_bbaf2n.mpg").click()
        row.get_by_text("Cancelled").wait_for()
        assert page.errors == []
    finally:
        srv.stop()
        shutil.rmtree(tmp_path / "videos_input", ignore_errors=True)


# A report shaped like the engine's (engine.protect + evaluate.speech), with known figures, so the page's reading
# of every section can be checked; it is never used for the docs screenshots (those show real runs only).
RICH_REPORT = {
    "parameters": {"epsilon": 0.12, "pixel_bound": 6.912, "audio_level": "weak"},
    "probe": {"duration": 3.0},
    "timings": {"probe": 0.02, "audio_protect": 2.5, "video_protect": 12.0, "decode_encode": 1.5, "total": 16.5},
    "quality": {
        "video": {"psnr_db": 43.25, "ssim_mean": 0.9712, "linf_max": 7, "frames": 75, "measured": "before encoding"},
        "audio": {"snr_db": 40.4, "worst_window_snr_db": 38.2, "stream": 1},
        "encoded": {"psnr_mean_db": 41.9, "ssim_mean": 0.985},
    },
    "efficacy": {
        "faces": {"frames_with_face_original": 1.0, "frames_with_face_protected": 0.04},
        "speech": {
            "whisper": {
                "recogniser": "whisper-base (faster-whisper, int8)",
                "original_text": "bin blue at f two now",
                "protected_text": "been to the office",
                "wer_original": 0.0,
                "wer_protected": 1.0,
            }
        },
    },
}


class InProcessServer:
    """The real app (or an app mounting it) served by uvicorn in a thread of this process."""

    def __init__(self, app) -> None:  # noqa: ANN001
        import threading

        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def test_page_works_under_a_proxy_sub_path(browser, tmp_path: Path) -> None:  # noqa: ANN001
    """Behind a reverse proxy at /media-cleaner/ (here: the real app mounted under that prefix) nothing breaks."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from media_cleaner.api import create_app
    from media_cleaner.config import load_settings

    app = create_app(load_settings(base_dir=tmp_path), configured_workers=0, maintenance=False)
    srv = InProcessServer(Starlette(routes=[Mount("/media-cleaner", app=app)]))
    try:
        page = _page(browser)
        page.goto(srv.url + "/media-cleaner/")
        page.wait_for_function("/up to 2 GB/.test(document.getElementById('drop-hint').textContent)")  # web/config
        bogus = tmp_path / "notes.mov"
        bogus.write_text("not a video\n" * 100)
        page.set_input_files("#file-input", str(bogus))
        page.get_by_role("button", name="Protect video").click()  # XHR upload to the prefixed URL
        page.locator("#banner").wait_for(state="visible")
        assert "doesn't look like a video" in page.inner_text("#banner-text")
        assert "No videos yet" in page.inner_text("#tasks-empty")  # the list loaded through the prefix too
        assert page.errors == []
    finally:
        srv.stop()


def test_report_view_reads_every_section(browser, tmp_path: Path) -> None:  # noqa: ANN001
    """The real app in this process; a task completed through the real store and storage."""
    from media_cleaner.api import create_app
    from media_cleaner.config import load_settings

    settings = load_settings(base_dir=tmp_path)
    app = create_app(settings, configured_workers=0, maintenance=False)
    srv = InProcessServer(app)
    try:
        url = srv.url
        with CLIP.open("rb") as handle:
            task_id = httpx.post(f"{url}/upload", files={"file": (CLIP.name, handle)}).json()["task_id"]
        ctx = app.state.ctx
        claimed = ctx.store.claim("browser-test")
        output = ctx.storage.local_path("output", claimed.output_name)
        shutil.copyfile(CLIP, output)  # identical frames: the difference view must say so, not divide by zero
        ctx.store.complete(task_id, "browser-test", output_size=output.stat().st_size, report=RICH_REPORT)

        page = _page(browser)
        page.goto(url + "/")
        page.locator("#tasks-body tr").first.get_by_role("button", name="See what changed in grid_bbaf2n.mpg").click()
        page.wait_for_function("document.getElementById('img-diff').naturalWidth > 0")
        quality = page.inner_text("#quality-chart")
        assert "Picture change (PSNR)" in quality and "43.3 dB ✓" in quality
        assert "0.971 ✗" in quality  # SSIM under its 0.98 target is marked, not hidden
        assert "Sound change, worst second" in quality and "38.2 dB ✗" in quality  # under the weak floor (40 dB)
        assert "Delivered file vs original (PSNR)" in quality
        efficacy = page.inner_text("#efficacy-chart")
        assert "before 100.0%" in efficacy and "after 4.0%" in efficacy
        heard = page.inner_text("#efficacy-heard")
        assert "What whisper-base (faster-whisper, int8) heard" in heard
        assert "“bin blue at f two now”" in heard and "“been to the office”" in heard
        timings = page.inner_text("#timings-chart")
        assert "Protecting faces" in timings and "12 s" in timings and "In all 17 s" in timings
        assert "total" not in timings.lower().replace("in all", "")
        assert "6.91" in page.inner_text("#params-list")
        assert "changed by 0.00 of 255" in page.inner_text("#diff-caption")
        # The frame picker spans the clip and asks the server for the chosen time.
        page.locator("#frame-time").fill("2.4")
        page.wait_for_function("/at 2\\.40 s/.test(document.getElementById('compare-status').textContent)")
        page.get_by_role("button", name="Close").click()
        assert page.locator("#result").is_hidden()
        assert page.evaluate("document.activeElement.id") == "tasks-title"  # focus is not lost
        assert page.errors == []
    finally:
        srv.stop()


def test_download_and_previews_with_an_api_key(browser, tmp_path: Path) -> None:  # noqa: ANN001
    """Links cannot carry X-API-Key: with keys on, the page fetches the file itself and hands it over."""
    from media_cleaner.api import create_app
    from media_cleaner.config import load_settings

    app = create_app(
        load_settings(base_dir=tmp_path, api_keys={API_KEY: "alice"}), configured_workers=0, maintenance=False
    )
    srv = InProcessServer(app)
    try:
        with CLIP.open("rb") as handle:
            response = httpx.post(
                f"{srv.url}/upload", files={"file": (CLIP.name, handle)}, headers={"X-API-Key": API_KEY}
            )
        task_id = response.json()["task_id"]
        ctx = app.state.ctx
        claimed = ctx.store.claim("browser-test")
        output = ctx.storage.local_path("output", claimed.output_name)
        shutil.copyfile(CLIP, output)
        ctx.store.complete(task_id, "browser-test", output_size=output.stat().st_size, report=RICH_REPORT)

        page = _page(browser)
        page.goto(srv.url + "/")
        page.get_by_role("textbox", name="API key").fill(API_KEY)
        page.get_by_role("button", name="Use this key").click()
        row = page.locator(f'#tasks-body tr[data-task-id="{task_id}"]')
        with page.expect_download() as info:
            row.get_by_role("button", name="Download protected grid_bbaf2n.mpg").click()
        saved = tmp_path / "downloaded.bin"
        info.value.save_as(saved)
        assert info.value.suggested_filename == ctx.store.get(task_id).download_name  # from Content-Disposition
        assert saved.read_bytes() == output.read_bytes()
        row.get_by_role("button", name="See what changed in grid_bbaf2n.mpg").click()
        page.wait_for_function(
            "['img-original', 'img-protected', 'img-diff'].every(id => document.getElementById(id).naturalWidth > 0)"
        )
        assert page.errors == []
    finally:
        srv.stop()


def test_failed_tasks_are_explained_in_words(browser, tmp_path: Path) -> None:  # noqa: ANN001
    """What a worker records when it fails (typed code + message) reaches people as a sentence, never a trace."""
    from media_cleaner.api import create_app
    from media_cleaner.config import load_settings

    app = create_app(load_settings(base_dir=tmp_path), configured_workers=0, maintenance=False)
    srv = InProcessServer(app)
    try:
        ctx = app.state.ctx
        failures = {
            "internal_error": 'RuntimeError: boom\nTraceback (most recent call last):\n  File "x.py", line 1',
            "invalid_media": "video stream cannot be decoded (corrupt or truncated): Invalid data",
            "timeout": "task exceeded task_timeout_hours=24",
        }
        for code, message in failures.items():
            with CLIP.open("rb") as handle:
                httpx.post(f"{srv.url}/upload", files={"file": (f"{code}.mpg", handle)})
            claimed = ctx.store.claim("browser-test")
            ctx.store.fail(claimed.id, "browser-test", code, message)

        page = _page(browser)
        page.goto(srv.url + "/")
        page.locator("#tasks-body tr").nth(2).wait_for()
        texts = {name: page.locator(f'#tasks-body tr:has-text("{name}.mpg") .error-text') for name in failures}
        assert texts["internal_error"].inner_text().startswith("Processing failed because of a problem on the server")
        assert texts["internal_error"].get_attribute("title") == "RuntimeError: boom"  # first line only, for admins
        assert texts["invalid_media"].inner_text().startswith("This video seems cut short or damaged")
        assert "longer than the server allows" in texts["timeout"].inner_text()
        body = page.inner_text("#tasks")
        assert "Traceback" not in body and 'File "' not in body
        assert page.locator("#tasks-body .badge.failed").count() == 3
        assert page.errors == []
    finally:
        srv.stop()
