"""The media-cleaner command line, run in-process and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clips import make_clip
from media_cleaner.cli import build_parser, default_output, main


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("MEDIA_CLEANER_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("MEDIA_CLEANER_VIDEO_PRESET", "ultrafast")
    return tmp_path


def test_protect_json_report(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_clip(isolated / "clip.mov")
    out = isolated / "result.mov"
    args = ["protect", str(source), "-o", str(out), "--no-video", "--no-audio", "--crf", "23", "--json", "-q"]
    assert main([*args, "--audio-level", "сильный", "--epsilon", "0.05"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["output"] == str(out)
    assert report["parameters"]["crf"] == 23 and report["parameters"]["audio_level"] == "strong"
    assert report["parameters"]["epsilon"] == 0.05 and report["parameters"]["preset"] == "ultrafast"
    assert report["quality"]["encoded"]["psnr_mean_db"] > 30


def test_default_output_name(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_clip(isolated / "holiday.webm", codec="libvpx-vp9", audio=(("libopus", 48000, "stereo"),))
    assert default_output(source) == isolated / "holiday_protected.mp4"
    assert main(["protect", str(source), "--no-video", "--no-audio", "--no-quality", "-q"]) == 0
    assert (isolated / "holiday_protected.mp4").is_file()
    assert "protected:" in capsys.readouterr().out


def test_bad_input_clean_error_subprocess(tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("meeting notes, not a video\n")
    run = subprocess.run(
        [sys.executable, "-m", "media_cleaner.cli", "protect", str(bad), "-q", "--no-video", "--no-audio"],
        capture_output=True,
        text=True,
        env={"MEDIA_CLEANER_BASE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 1
    assert "error (invalid_media)" in run.stderr and "notes.mp4" in run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4"]


def test_bad_audio_level_is_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["protect", "x.mp4", "--audio-level", "loud"])
    assert exc.value.code == 2


def test_evaluate_quality_only(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_clip(isolated / "a.mp4", frames=10)
    assert main(["protect", str(source), "-o", str(isolated / "b.mp4"), "--no-video", "--no-audio", "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(source), str(isolated / "b.mp4"), "--json", "--no-efficacy"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["quality"]["frames_compared"] == 10 and "per_frame" not in result["quality"]
    assert result["quality"]["audio"]["snr_db"] is None  # stream-copied audio: identical
    assert "efficacy" not in result
    assert main(["evaluate", str(source), str(isolated / "b.mp4"), "--no-efficacy"]) == 0
    assert "PSNR: mean" in capsys.readouterr().out


def test_models_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert "mtcnn" in listed and "whisper-base-ct2" in listed
    assert main(["models", "verify", "no-such-model"]) == 1
    assert "unknown model" in capsys.readouterr().err


def test_parser_is_extensible() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"protect", "evaluate", "models"} <= set(sub.choices)


def test_models_fetch_into_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MEDIA_CLEANER_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MEDIA_CLEANER_ALLOW_MODEL_DOWNLOAD", "false")
    assert main(["models", "fetch", "mtcnn"]) == 0  # from the installed facenet-pytorch wheel, SHA-256 checked
    assert sorted(p.name for p in (tmp_path / "cache" / "mtcnn").iterdir()) == ["onet.pt", "pnet.pt", "rnet.pt"]
    assert main(["models", "verify", "mtcnn"]) == 0
    assert capsys.readouterr().out.count("OK") == 3
