"""Probe: real and synthetic clips, and bad inputs rejected with typed errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clips import make_clip, rotate_with_ffmpeg
from media_cleaner.errors import InvalidMediaError, UnsupportedMediaError
from media_cleaner.media import output_extension_for, probe


def test_probe_grid_mpg(shared_data: Path) -> None:
    info = probe(shared_data / "video" / "grid_bbaf2n.mpg")
    assert info.container == "mpeg"
    assert (info.video.width, info.video.height, info.video.fps) == (360, 288, 25.0)
    assert info.video.codec == "mpeg1video" and info.video.bit_depth == 8 and not info.video.vfr
    assert [(a.codec, a.sample_rate, a.channels) for a in info.audio] == [("mp2", 44100, 2)]
    assert info.duration == pytest.approx(3.0, abs=0.1)
    json.dumps(info.to_dict())  # JSON-serialisable for the API


def test_probe_six_channel_audio(shared_data: Path) -> None:
    info = probe(shared_data / "video" / "cartoon_6ch_audio.mp4")
    assert info.audio[0].channels == 6 and info.audio[0].layout == "5.1"
    assert info.video.frame_count == 132


def test_probe_vfr_10bit_several_audio(tmp_path: Path) -> None:
    times = [0, 0.05, 0.1, 0.3, 0.35, 0.6, 0.65, 0.7, 1.0, 1.04, 1.2, 1.5]
    vfr = probe(make_clip(tmp_path / "vfr.mkv", frame_times=times))
    assert vfr.video.vfr
    cfr = probe(make_clip(tmp_path / "cfr.mp4"))
    assert not cfr.video.vfr and cfr.video.frame_count == 12
    ten = probe(make_clip(tmp_path / "ten.mkv", pix_fmt="yuv420p10le"))
    assert ten.video.bit_depth == 10 and ten.video.pix_fmt.startswith("yuv420p10")
    multi = probe(make_clip(tmp_path / "multi.mov", audio=(("aac", 44100, "mono"), ("aac", 48000, "stereo"))))
    assert [(a.sample_rate, a.channels) for a in multi.audio] == [(44100, 1), (48000, 2)]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI to write a display matrix")
def test_probe_rotation(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "land.mp4", width=96, height=64)
    info = probe(rotate_with_ffmpeg(source, tmp_path / "portrait.mp4", 90))
    assert info.video.rotation in (90, 270)
    assert (info.video.display_width, info.video.display_height) == (64, 96)


def _truncate(source: Path, target: Path, keep: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


@pytest.mark.parametrize("kind", ["empty", "text", "truncated_head", "truncated_faststart", "absurd_size", "missing"])
def test_bad_inputs_raise_typed_errors(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is a text file renamed to .mp4\n" * 20)
    elif kind == "truncated_head":
        _truncate(make_clip(tmp_path / "ok.mp4", frames=24), path, 0.3)
    elif kind == "truncated_faststart":
        # moov first, then the samples: the header promises frames that the cut file no longer holds
        clip = make_clip(tmp_path / "fs.mp4", frames=60, width=160, height=120, options={"crf": "10"})
        import av  # noqa: PLC0415

        faststart = tmp_path / "fs2.mp4"
        with av.open(str(clip)) as src, av.open(str(faststart), "w", options={"movflags": "+faststart"}) as dst:
            streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
            for packet in src.demux():
                if packet.size:
                    packet.stream = streams[packet.stream.index]
                    dst.mux(packet)
        _truncate(faststart, path, 0.5)
    elif kind == "absurd_size":
        path = tmp_path / "absurd.y4m"
        path.write_bytes(b"YUV4MPEG2 W20000 H16 F25:1 Ip C420jpeg\nFRAME\n" + b"\0" * 64)
    with pytest.raises(InvalidMediaError) as err:
        probe(path)
    assert err.value.code == "invalid_media" and path.name in err.value.message


def test_audio_only_is_unsupported(shared_data: Path) -> None:
    with pytest.raises(UnsupportedMediaError, match="no video stream"):
        probe(shared_data / "audio" / "jfk.flac")


def test_output_extension_rules() -> None:
    assert output_extension_for("a.MP4") == "mp4"
    assert output_extension_for("a.mov") == "mov"
    assert output_extension_for("a.mkv") == "mkv"
    for other in ("a.webm", "a.avi", "a.mpg", "a", "a.ts"):
        assert output_extension_for(other) == "mp4"


def test_media_engine_cli_do_not_import_torch() -> None:
    """The API process probes uploads and builds options: that must never pull in torch."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = (
        "import sys, media_cleaner.media, media_cleaner.engine, media_cleaner.evaluate.quality, media_cleaner.cli;"
        "media_cleaner.cli.build_parser(); assert 'torch' not in sys.modules, 'torch imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
