"""The client CLI (verbs, batch upload, re-runs, exit codes) against the contract fixture server on 127.0.0.1."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

from client_fixture_server import ServerThread
from media_cleaner.client.batch import STATE_FILE_NAME, collect_inputs
from media_cleaner.client.cli import main

REPO = Path(__file__).resolve().parent.parent


def run_cli(server: ServerThread, *args: str) -> int:
    return main(["--server", server.url, "--no-progress", *args])


def make_folder(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (root / name).write_bytes(f"video {i} {name}".encode() * 500)
    return root


def test_upload_wait_download_then_rerun_skips(server, state, tmp_path, capsys):
    clip = make_folder(tmp_path / "in", ["talk.mp4"]) / "talk.mp4"
    out = tmp_path / "results"
    assert run_cli(server, "upload", str(clip), "--wait", "--download", str(out), "--poll-interval", "0.1") == 0
    printed = capsys.readouterr().out
    assert "done" in printed and "1 ok, 0 failed" in printed
    result = out / "talk_protected.mp4"
    assert result.read_bytes() == b"PROTECTED:" + clip.read_bytes()
    state_file = json.loads((out / STATE_FILE_NAME).read_text())
    (entry,) = state_file["items"].values()
    assert entry["status"] == "done" and entry["output"] == str(result)
    uploads = len(state.uploads)
    # The cron case: same command again does nothing but report.
    assert run_cli(server, "upload", str(clip), "--download", str(out)) == 0
    assert "skipped" in capsys.readouterr().out and len(state.uploads) == uploads
    # Changing a parameter is different work; --force redoes the same work as a new task.
    fast = ("--download", str(out), "--poll-interval", "0.1")
    assert run_cli(server, "upload", str(clip), *fast, "--epsilon", "0.2") == 0
    assert run_cli(server, "upload", str(clip), *fast, "--force") == 0
    assert len(state.uploads) == uploads + 2 and len(state.tasks) == 3
    # Digests are cached by size + mtime; an edited file is new work.
    digests = json.loads((out / STATE_FILE_NAME).read_text())["digests"]
    assert digests[str(clip.resolve())]["size"] == clip.stat().st_size
    clip.write_bytes(clip.read_bytes() + b"edited")
    assert run_cli(server, "upload", str(clip), *fast) == 0
    assert len(state.uploads) == uploads + 3


def test_batch_folder_concurrency_summary_and_failure_exit(server, state, tmp_path, capsys):
    folder = make_folder(tmp_path / "in", ["a.mp4", "b.mov", "c_fail.mp4", "d.mkv", "notes.txt", ".hidden.mp4"])
    out = tmp_path / "out"
    code = run_cli(
        server, "upload", str(folder), "--download", str(out), "--concurrency", "3", "--poll-interval", "0.1"
    )
    printed = capsys.readouterr().out
    assert code == 1  # one item failed
    assert "4 file(s): 3 ok, 1 failed" in printed and "processing_failed" in printed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "a_protected.mp4",
        "b_protected.mov",
        "d_protected.mkv",
    ]
    assert len(state.uploads) == 4  # notes.txt and the hidden file are not videos of the folder
    # Re-run: the three done are skipped, the failed one is retried once more (a fresh idempotency generation).
    assert run_cli(server, "upload", str(folder), "--download", str(out), "--poll-interval", "0.1") == 1
    assert len(state.uploads) == 5
    keys = [u["idempotency_key"] for u in state.uploads]
    assert keys[-1].endswith("-1") and all(k.startswith("mcb-") for k in keys)


def test_rerun_after_crash_attaches_to_submitted_task(server, state, tmp_path, capsys):
    clip = make_folder(tmp_path / "in", ["x.mp4"]) / "x.mp4"
    out = tmp_path / "out"
    state_path = out / STATE_FILE_NAME
    # First run only submits (as if it were killed right after the upload).
    assert run_cli(server, "upload", str(clip), "--state", str(state_path), "--json") == 0
    (first,) = json.loads(capsys.readouterr().out)
    assert first["status"] == "submitted"
    assert run_cli(server, "upload", str(clip), "--download", str(out), "--poll-interval", "0.1", "--json") == 0
    (second,) = json.loads(capsys.readouterr().out)
    assert second["task_id"] == first["task_id"] and second["status"] == "done"
    assert len(state.uploads) == 1 and Path(second["output"]).is_file()


def test_upload_without_state_is_idempotent_across_runs(server, state, tmp_path, capsys):
    clip = make_folder(tmp_path, ["y.mp4"]) / "y.mp4"
    ids = []
    for _ in range(2):
        assert run_cli(server, "upload", str(clip), "--json") == 0
        ids.append(json.loads(capsys.readouterr().out)[0]["task_id"])
    assert ids[0] == ids[1] and len(state.tasks) == 1 and len(state.uploads) == 2


def test_overlapping_run_is_skipped(server, tmp_path, capsys):
    clip = make_folder(tmp_path / "in", ["z.mp4"]) / "z.mp4"
    out = tmp_path / "out"
    out.mkdir()
    with (out / (STATE_FILE_NAME + ".lock")).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert run_cli(server, "upload", str(clip), "--download", str(out)) == 0
    assert "another batch run" in capsys.readouterr().err


def test_status_list_download_cancel_stats_health_cleanup(server, state, tmp_path, capsys):
    clip = make_folder(tmp_path, ["v.mp4"]) / "v.mp4"
    assert run_cli(server, "upload", str(clip), "--wait", "--poll-interval", "0.1", "--json") == 0
    task_id = json.loads(capsys.readouterr().out)[0]["task_id"]

    assert run_cli(server, "status", task_id) == 0
    text = capsys.readouterr().out
    assert f"task      {task_id}" in text and "completed  100.0%" in text and "/download/" in text
    assert run_cli(server, "status", task_id, "--json") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
    assert run_cli(server, "upload", str(clip), "--force", "--json") == 0
    fresh = json.loads(capsys.readouterr().out)[0]["task_id"]
    assert run_cli(server, "status", fresh, "--wait", "--poll-interval", "0.05") == 0  # follows it to the end
    assert "completed  100.0%" in capsys.readouterr().out

    assert run_cli(server, "list") == 0
    assert task_id in capsys.readouterr().out
    assert run_cli(server, "list", "--status", "failed", "--json") == 0
    assert json.loads(capsys.readouterr().out)["total"] == 0

    assert run_cli(server, "download", task_id, str(tmp_path / "dl")) == 0
    assert Path(capsys.readouterr().out.strip()).read_bytes().startswith(b"PROTECTED:")

    state.process_seconds = 60
    assert run_cli(server, "upload", str(clip), "--force", "--json") == 0
    slow_id = json.loads(capsys.readouterr().out)[0]["task_id"]
    assert run_cli(server, "cancel", slow_id) == 0
    assert capsys.readouterr().out.strip() == f"{slow_id}: cancelled"
    assert run_cli(server, "cancel", slow_id) == 1
    assert "not_cancellable" in capsys.readouterr().err

    assert run_cli(server, "stats") == 0
    assert "completed=2  failed=0  cancelled=1" in capsys.readouterr().out
    assert run_cli(server, "health") == 0
    assert "ok (version fixture)" in capsys.readouterr().out
    assert run_cli(server, "status", slow_id, "--wait") == 1  # ended, but not completed
    assert "cancelled" in capsys.readouterr().out
    assert run_cli(server, "cleanup", "--older-than", "0") == 0
    assert "deleted 3 task(s)" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_codes(server, tmp_path, capsys):
    assert run_cli(server, "status", "nosuchtask") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Task nosuchtask not found") and "Traceback" not in err
    assert run_cli(server, "upload", str(tmp_path / "missing.mp4")) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"NOTAVIDEO at all")
    assert run_cli(server, "upload", str(bad)) == 1
    assert "not_a_video" in capsys.readouterr().out
    assert run_cli(server, "upload", str(tmp_path)) == 1  # a folder whose only video failed
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert run_cli(server, "upload", str(empty)) == 2
    assert "no video files" in capsys.readouterr().err


def test_shim_entry_point_and_unreachable_server(tmp_path):
    proc = subprocess.run(
        [sys.executable, "client.py", "--server", "http://127.0.0.1:9", "health"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3
    assert "cannot reach the Media Cleaner server" in proc.stderr and "Traceback" not in proc.stderr
    usage = subprocess.run([sys.executable, "client.py", "frobnicate"], cwd=REPO, capture_output=True, text=True)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def test_collect_inputs_recursive_and_relative_names(tmp_path):
    make_folder(tmp_path / "top", ["a.mp4"])
    make_folder(tmp_path / "top" / "sub", ["b.MP4", "c.txt"])
    flat = collect_inputs([tmp_path / "top"])
    deep = collect_inputs([tmp_path / "top", tmp_path / "top" / "a.mp4"], recursive=True)
    assert [rel for _, rel in flat] == [Path("a.mp4")]
    assert [rel for _, rel in deep] == [Path("a.mp4"), Path("sub/b.MP4")]


def test_batch_concurrency_is_bounded(server, state, tmp_path, capsys):
    state.process_seconds = 0.4
    folder = make_folder(tmp_path / "in", [f"clip{i}.mp4" for i in range(6)])
    assert run_cli(server, "upload", str(folder), "--wait", "--concurrency", "2", "--poll-interval", "0.05") == 0
    spans = [(t.created, t.created + t.duration) for t in state.tasks.values()]
    assert len(spans) == 6
    # At no instant were more than two tasks in flight on the server (a task is in flight from upload to done).
    peak = max(sum(start <= s < end for start, end in spans) for s, _ in spans)
    assert peak == 2


def test_progress_bars_show_upload_processing_download(server, tmp_path, capsys):
    from media_cleaner.client import MediaCleanerClient
    from media_cleaner.client.batch import BatchRunner
    from media_cleaner.client.cli import TqdmReporter

    folder = make_folder(tmp_path / "in", ["bar.mp4"])
    with MediaCleanerClient(server.url) as client:
        runner = BatchRunner(
            client, download_dir=tmp_path / "out", poll_interval=0.05, reporter=TqdmReporter(enabled=True)
        )
        (item,) = runner.run([folder])
    assert item.status == "done"
    err = capsys.readouterr().err
    assert "upload" in err and "process" in err and "download" in err and "100%" in err


def test_ctrl_c_stops_quickly_and_keeps_state(server, state, tmp_path):
    import signal
    import time

    state.process_seconds = 60
    clip = make_folder(tmp_path / "in", ["long.mp4"]) / "long.mp4"
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "client.py", "--server", server.url, "upload", str(clip), "--download", str(out)]
        + ["--poll-interval", "0.2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not state.tasks and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - started < 5
    assert "re-run" in err and "Traceback" not in err
    (entry,) = json.loads((out / STATE_FILE_NAME).read_text())["items"].values()
    assert entry["task_id"] in state.tasks and entry["status"] == "submitted"


def test_results_in_the_input_folder_are_not_protected_again(server, state, tmp_path, capsys):
    folder = make_folder(tmp_path / "videos", ["a.mp4"])
    args = ("upload", str(folder), "--download", str(folder), "--poll-interval", "0.05")
    assert run_cli(server, *args) == 0
    assert (folder / "a_protected.mp4").is_file()
    capsys.readouterr()
    assert run_cli(server, *args) == 0
    second = capsys.readouterr().out
    assert "skipped" in second and "1 file(s): 1 ok" in second  # a_protected.mp4 is not a new input
    assert len(state.uploads) == 1
