"""The audio attack's objective (untargeted / silence / phrase) from every door to the protector's AudioContext.

Options validation, the engine's AudioContext and report, the upload API (422s, the stored task and its JSON), the
worker passing the task's values into ProtectionOptions, migration 0003 on SQLite and PostgreSQL, the `protect`
CLI, and the client library / client CLI. The protector here only records what it was asked: the real Whisper
attack's targeted outcomes are tested with the attack itself.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text

from client_fixture_server import ServerThread
from clips import make_clip
from media_cleaner.api import create_app
from media_cleaner.cli import main as cli_main
from media_cleaner.client import InvalidRequestError, MediaCleanerClient
from media_cleaner.client.batch import BatchRunner
from media_cleaner.client.cli import main as client_cli_main
from media_cleaner.config import AUDIO_PHRASE_MAX_CHARS, Settings, check_audio_target
from media_cleaner.engine import ProtectionOptions, Protectors, protect
from media_cleaner.jobs import open_store
from media_cleaner.jobs.migrate import alembic_config, head_revision, upgrade
from media_cleaner.jobs.store import TaskStore
from media_cleaner.progress import CancelToken
from media_cleaner.protect.base import AudioContext
from media_cleaner.storage import open_storage
from media_cleaner.worker.runner import WorkerContext, run_task
from pg import PgCluster
from test_db_migrations import drift

PHRASE = "open the door"


class RecordingAudio:
    """An audio protector that remembers each track's objective and phrase and leaves the sound unchanged."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def prepare(self, ctx: AudioContext) -> None:
        ctx.stats["prepared"] = True

    def protect_track(self, pcm: np.ndarray, ctx: AudioContext) -> np.ndarray:
        self.seen.append((ctx.objective, ctx.phrase))
        return pcm


@pytest.fixture
def grid(shared_data: Path) -> Path:
    return shared_data / "video" / "grid_bbaf2n.mpg"


def upload(client: TestClient, path: Path, **fields: str):
    with open(path, "rb") as fh:
        return client.post("/upload", files={"file": (path.name, fh, "video/mpeg")}, data=fields)


# ------------------------------------------------------------------------------------------------ options


def test_defaults_and_aliases() -> None:
    options = ProtectionOptions()
    assert (options.audio_objective, options.audio_phrase) == ("untargeted", "")
    assert ProtectionOptions(audio_objective=" ТИШИНА ").audio_objective == "silence"
    assert ProtectionOptions(audio_objective="нецелевая").audio_objective == "untargeted"
    phrase = ProtectionOptions(audio_objective="Phrase", audio_phrase=f"  {PHRASE}  ")
    assert (phrase.audio_objective, phrase.audio_phrase) == ("phrase", PHRASE)
    assert check_audio_target("фраза", "открой дверь") == ("phrase", "открой дверь")
    longest = "a" * AUDIO_PHRASE_MAX_CHARS
    assert ProtectionOptions(audio_objective="phrase", audio_phrase=longest).audio_phrase == longest
    assert ProtectionOptions(audio_objective="silence", audio_phrase="   ").audio_phrase == ""  # blank = not given


@pytest.mark.parametrize(
    ("objective", "phrase", "message"),
    [
        ("loud", "", "unknown audio objective 'loud'"),
        ("targeted", "", "expected one of: untargeted, silence, phrase"),
        ("phrase", "", "needs a non-empty audio phrase"),
        ("phrase", "  \t ", "needs a non-empty audio phrase"),
        ("phrase", "a" * (AUDIO_PHRASE_MAX_CHARS + 1), f"at most {AUDIO_PHRASE_MAX_CHARS}"),
        ("phrase", "open\nthe door", "control characters"),
        ("phrase", "open\x00door", "control characters"),
        ("untargeted", PHRASE, "audio objective is 'untargeted'"),
        ("silence", PHRASE, "audio objective is 'silence'"),
    ],
)
def test_bad_objective_or_phrase_is_a_clear_value_error(objective: str, phrase: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ProtectionOptions(audio_objective=objective, audio_phrase=phrase)


# ------------------------------------------------------------------------------------------------ engine


def test_audio_context_defaults_to_untargeted(settings: Settings) -> None:
    ctx = AudioContext(settings=settings, level="weak", sample_rate=16000, channels=1, cancel=CancelToken())
    assert (ctx.objective, ctx.phrase) == ("untargeted", "")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ("untargeted", "")),
        ({"audio_objective": "silence"}, ("silence", "")),
        ({"audio_objective": "phrase", "audio_phrase": PHRASE}, ("phrase", PHRASE)),
    ],
)
def test_engine_puts_objective_into_every_tracks_context_and_the_report(
    tmp_path: Path, settings: Settings, options: dict, expected: tuple[str, str]
) -> None:
    source = make_clip(tmp_path / "in.mkv", frames=6, audio=(("aac", 48000, "stereo"), ("libopus", 48000, "mono")))
    recorder = RecordingAudio()
    report = protect(
        source,
        tmp_path / "out.mkv",
        ProtectionOptions(protect_video=False, measure_quality=False, **options),
        settings=settings,
        protectors=Protectors(audio=recorder),
    )
    assert recorder.seen == [expected, expected]  # both audio tracks
    assert (report.parameters["audio_objective"], report.parameters["audio_phrase"]) == expected
    assert report.audio["protector"] == "recording" and report.audio["prepared"] is True


# ------------------------------------------------------------------------------------------------ API, jobs, worker


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"audio_objective": "loud"}, "unknown audio objective"),
        ({"audio_objective": "phrase"}, "needs a non-empty audio phrase"),
        ({"audio_objective": "phrase", "audio_phrase": "   "}, "needs a non-empty audio phrase"),
        ({"audio_objective": "phrase", "audio_phrase": "x" * (AUDIO_PHRASE_MAX_CHARS + 1)}, "at most"),
        ({"audio_objective": "phrase", "audio_phrase": "line one\nline two"}, "control characters"),
        ({"audio_phrase": PHRASE}, "audio objective is 'untargeted'"),  # a forgotten objective is not silent
        ({"audio_objective": "silence", "audio_phrase": PHRASE}, "audio objective is 'silence'"),
    ],
)
def test_upload_refuses_bad_objective_with_422_and_stores_nothing(
    settings: Settings, grid: Path, fields: dict, message: str
) -> None:
    with TestClient(create_app(settings)) as client:
        r = upload(client, grid, **fields)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "validation_error" and message in error["message"]
        assert error["message"].startswith("audio_objective / audio_phrase:")
        assert client.get("/tasks").json()["total"] == 0
    assert list(settings.path("input").iterdir()) == [] and list(settings.path("temp").iterdir()) == []


def test_objective_round_trips_through_api_store_and_worker(settings: Settings, grid: Path) -> None:
    settings = settings.model_copy(update={"measure_efficacy": False, "video_preset": "ultrafast"})
    with TestClient(create_app(settings)) as client:
        phrase_id = upload(client, grid, audio_objective="фраза", audio_phrase=f" {PHRASE} ", protect_video="false")
        silence_id = upload(client, grid, audio_objective="silence").json()["task_id"]
        plain_id = upload(client, grid).json()["task_id"]
        assert phrase_id.status_code == 202, phrase_id.text
        phrase_id = phrase_id.json()["task_id"]
        params = {t: client.get(f"/task/{t}").json()["parameters"] for t in (phrase_id, silence_id, plain_id)}
        listed = {t["task_id"]: t["parameters"] for t in client.get("/tasks").json()["tasks"]}
    assert (params[phrase_id]["audio_objective"], params[phrase_id]["audio_phrase"]) == ("phrase", PHRASE)
    assert (params[silence_id]["audio_objective"], params[silence_id]["audio_phrase"]) == ("silence", "")
    assert (params[plain_id]["audio_objective"], params[plain_id]["audio_phrase"]) == ("untargeted", "")
    assert listed == params

    store = open_store(settings)
    row = store.get(phrase_id)
    assert (row.audio_objective, row.audio_phrase) == ("phrase", PHRASE)
    # The worker: the claimed task's objective reaches the protector's context and the stored report.
    recorder = RecordingAudio()
    ctx = WorkerContext(
        settings, store, open_storage(settings), "w-objective", Protectors(audio=recorder), threading.Event()
    )
    claimed = store.claim_task(phrase_id, "w-objective")
    assert claimed is not None
    assert run_task(ctx, claimed) == "completed"
    assert recorder.seen == [("phrase", PHRASE)]
    report = store.get(phrase_id).report
    assert (report["parameters"]["audio_objective"], report["parameters"]["audio_phrase"]) == ("phrase", PHRASE)
    assert report["parameters"]["protect_video"] is False


# ------------------------------------------------------------------------------------------------ migration 0003


def _old_row(url: str) -> None:
    """A task as a server before 0003 wrote it: no objective columns."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tasks (id, status, original_filename, input_name, output_name, download_name,"
                " input_size_bytes, epsilon, audio_level, protect_video, protect_audio, created_at, progress,"
                " attempts) VALUES ('old1', 'pending', 'a.mp4', 'old1_a.mp4', 'old1_a_protected.mp4',"
                " 'a_protected.mp4', 10, 0.12, 'weak', :t, :t, '2026-11-24 10:00:00', 0, 0)"
            ),
            {"t": True},
        )
    engine.dispose()


def _columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("tasks")}
    finally:
        engine.dispose()


def _check_upgrade_keeps_old_rows(url: str) -> None:
    from alembic import command

    assert upgrade(url, "0002_procrastinate")[1] == "0002_procrastinate"
    assert not {"audio_objective", "audio_phrase"} & _columns(url)
    _old_row(url)
    assert upgrade(url) == ("0002_procrastinate", head_revision()) and head_revision() == "0003_audio_objective"
    assert drift(url) == []
    store = TaskStore(url)
    old = store.get("old1")
    assert old is not None and (old.audio_objective, old.audio_phrase) == ("untargeted", "")
    store.create(
        id="new1",
        original_filename="b.mp4",
        input_name="new1_b.mp4",
        output_name="new1_b_protected.mp4",
        download_name="b_protected.mp4",
        input_size_bytes=10,
        epsilon=0.1,
        audio_level="weak",
        audio_objective="phrase",
        audio_phrase="é" * AUDIO_PHRASE_MAX_CHARS,  # characters, not bytes: fits String(256) on PostgreSQL too
    )
    assert store.get("new1").audio_phrase == "é" * AUDIO_PHRASE_MAX_CHARS
    store.engine.dispose()
    command.downgrade(alembic_config(url), "0002_procrastinate")
    assert not {"audio_objective", "audio_phrase"} & _columns(url)
    assert upgrade(url)[1] == head_revision()


def test_migration_0003_on_sqlite(tmp_path: Path) -> None:
    _check_upgrade_keeps_old_rows(f"sqlite:///{tmp_path / 'tasks.db'}")


def test_migration_0003_on_postgres(postgres: PgCluster) -> None:
    _check_upgrade_keeps_old_rows(postgres.create_database("mig_objective"))


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("MEDIA_CLEANER_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("MEDIA_CLEANER_VIDEO_PRESET", "ultrafast")
    return tmp_path


def test_cli_unknown_objective_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["protect", "x.mp4", "--audio-objective", "loud"])
    assert exc.value.code == 2 and "expected one of: untargeted" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--audio-objective", "phrase"], "needs a non-empty audio phrase"),
        (["--audio-phrase", PHRASE], "audio objective is 'untargeted'"),
        (["--audio-objective", "phrase", "--audio-phrase", "x" * 201], "at most 200"),
    ],
)
def test_cli_bad_phrase_fails_before_any_work(
    isolated: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    source = make_clip(isolated / "clip.mp4", frames=4)
    assert cli_main(["protect", str(source), "-q", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert sorted(p.name for p in isolated.iterdir()) == ["clip.mp4"]  # no output, no partial file


def test_cli_objective_reaches_the_report(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_clip(isolated / "clip.mp4", frames=4)
    out = isolated / "out.mp4"
    args = ["protect", str(source), "-o", str(out), "--no-video", "--no-audio", "--no-quality", "-q"]
    assert cli_main([*args, "--json", "--audio-objective", "фраза", "--audio-phrase", PHRASE]) == 0
    params = json.loads(capsys.readouterr().out)["parameters"]
    assert (params["audio_objective"], params["audio_phrase"]) == ("phrase", PHRASE)
    assert cli_main([*args, "--audio-objective", "silence"]) == 0
    assert "audio objective: silence" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ client


def test_client_sends_objective_fields(server, state, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 4096)
    with MediaCleanerClient(server.url, retries=1, backoff=0.05) as client:
        client.upload_video(video, audio_objective="phrase", audio_phrase=PHRASE)
        assert state.uploads[-1]["fields"] == {"audio_objective": "phrase", "audio_phrase": PHRASE}
        client.upload_video(video)
        assert state.uploads[-1]["fields"] == {}  # nothing given, nothing sent: the server's default applies
    assert (
        client_cli_main(["--server", server.url, "--no-progress", "upload", str(video), "--audio-objective", "silence"])
        == 0
    )
    assert state.uploads[-1]["fields"] == {"audio_objective": "silence"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--audio-objective", "phrase"], "--audio-objective phrase needs --audio-phrase"),
        (["--audio-objective", "фраза", "--audio-phrase", "  "], "--audio-objective phrase needs --audio-phrase"),
        (["--audio-phrase", PHRASE], "--audio-phrase needs --audio-objective phrase"),
        (["--audio-objective", "silence", "--audio-phrase", PHRASE], "--audio-phrase needs --audio-objective phrase"),
    ],
)
def test_client_cli_refuses_a_bad_pair_before_uploading(
    server, state, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00" * 4096)
    assert client_cli_main(["--server", server.url, "--no-progress", "upload", str(video), *args]) == 2
    assert message in capsys.readouterr().err and state.uploads == []


def test_client_cli_unknown_objective_is_explained_by_the_real_api(
    settings: Settings, grid: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ServerThread(create_app(settings)) as real:
        code = client_cli_main(
            ["--server", real.url, "--no-progress", "upload", str(grid), "--audio-objective", "loud"]
        )
    assert code == 1
    out = capsys.readouterr().out
    assert "unknown audio objective 'loud'" in out and "HTTP 422" in out and "0 ok, 1 failed" in out
    assert list(settings.path("input").iterdir()) == []


def test_batch_task_keys_unchanged_without_objective(server, tmp_path: Path) -> None:
    with MediaCleanerClient(server.url) as client:
        # A state file written before these options existed keys its files on these params: they must not move.
        assert set(BatchRunner(client).params) == {
            "epsilon",
            "audio_level",
            "protect_video",
            "protect_audio",
            "user_id",
        }
        runner = BatchRunner(client, audio_objective="phrase", audio_phrase=PHRASE)
        assert (runner.params["audio_objective"], runner.params["audio_phrase"]) == ("phrase", PHRASE)


def test_client_against_the_real_api(settings: Settings, grid: Path) -> None:
    with ServerThread(create_app(settings)) as real, MediaCleanerClient(real.url, retries=0) as client:
        with pytest.raises(InvalidRequestError, match="needs a non-empty audio phrase"):
            client.upload_video(grid, audio_objective="phrase")
        task_id = client.upload_video(grid, audio_objective="phrase", audio_phrase=PHRASE)["task_id"]
        params = client.get_task(task_id)["parameters"]
    assert (params["audio_objective"], params["audio_phrase"]) == ("phrase", PHRASE)


# ------------------------------------------------------------------------------------------------ web page

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (apt-get install chromium)")
@pytest.mark.skipif(importlib.util.find_spec("playwright") is None, reason="playwright not installed (dev extra)")
def test_web_page_outcome_select_and_phrase(settings: Settings, grid: Path) -> None:
    from playwright.sync_api import sync_playwright

    with ServerThread(create_app(settings)) as real, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(real.url + "/")
        page.get_by_text("What speech recognisers should hear").click()
        assert not page.locator("#audio-phrase").is_visible()  # only the phrase outcome asks for one
        page.get_by_label("Outcome").select_option("phrase")
        assert page.locator("#audio-phrase").is_visible()
        page.set_input_files("#file-input", str(grid))
        page.get_by_role("button", name="Protect video").click()  # an empty phrase is explained, not sent
        assert "type the phrase" in page.inner_text("#banner-text")
        assert page.evaluate("document.activeElement.id") == "audio-phrase"
        page.get_by_label("Phrase to be heard").fill(f"  {PHRASE} ")
        page.get_by_role("button", name="Protect video").click()
        page.locator("#current").wait_for(state="visible")
        # A phrase typed and then left behind for another outcome is not sent (the server would refuse the pair).
        page.get_by_label("Outcome").select_option("silence")
        page.set_input_files("#file-input", str(grid))
        page.get_by_role("button", name="Protect video").click()
        page.wait_for_function("document.getElementById('tasks-body').rows.length === 2")
        browser.close()
    tasks = open_store(settings).list(user_id=None, any_user=True)[0]
    assert sorted((t.audio_objective, t.audio_phrase) for t in tasks) == [("phrase", PHRASE), ("silence", "")]
    assert errors == []


def test_batch_cron_example_passes_the_objective(server, state, tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "talk.mp4").write_bytes(b"talk" * 1000)
    example = Path(__file__).resolve().parent.parent / "examples" / "batch_cron.py"
    cmd = [sys.executable, str(example), str(incoming), str(tmp_path / "out"), "--server", server.url]
    cmd += ["--poll-interval", "0.1", "--audio-objective", "phrase", "--audio-phrase", PHRASE]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert state.uploads[-1]["fields"] == {"audio_objective": "phrase", "audio_phrase": PHRASE}
