"""A small Flask web app that protects uploaded videos through a Media Cleaner server (the spec's scenario 3).

Upload form -> the video is streamed on to the server -> a status page tracks progress from JavaScript (polling
this app's /api/tasks/<id>) -> the protected video is streamed back through this app. The browser never talks to
the Media Cleaner server, so the server (and its API key) can stay private.

    pip install flask
    MEDIA_CLEANER_SERVER=http://localhost:8000 flask --app examples/flask_app/app.py run --port 5000
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, render_template_string, request, url_for

from media_cleaner.client import ApiError, ClientError, MediaCleanerClient, ServerUnavailableError

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Media Cleaner demo</title>
<style>body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}
progress{width:100%}.error{color:#b00020}td,th{padding:.2rem .6rem;text-align:left}</style></head><body>
<h1>Protect a video</h1>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
<form method="post" action="{{ url_for('upload') }}" enctype="multipart/form-data">
  <p><label>Video <input type="file" name="file" accept="video/*" required></label></p>
  <p><label>Strength (epsilon) <input type="number" name="epsilon" min="0" max="1" step="0.01" value="0.12"></label></p>
  <p><label>Audio level <select name="audio_level"><option>weak</option><option>medium</option>
     <option>strong</option></select></label></p>
  <p><button type="submit">Upload</button></p>
</form>
<h2>Recent tasks</h2>
<table><tr><th>File</th><th>Status</th><th>Progress</th></tr>
{% for t in tasks %}<tr><td><a href="{{ url_for('task_page', task_id=t.task_id) }}">{{ t.original_filename }}</a></td>
<td>{{ t.status }}</td><td>{{ '%.0f' % t.progress }}%</td></tr>{% endfor %}
</table></body></html>"""

STATUS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Task {{ task.task_id }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem}progress{width:100%}</style>
</head><body>
<h1>{{ task.original_filename }}</h1>
<p>Task <code>{{ task.task_id }}</code>: <strong id="status">{{ task.status }}</strong> <span id="phase"></span></p>
<progress id="bar" max="100" value="{{ task.progress }}"></progress>
<p id="result" aria-live="polite"></p>
<p><a href="{{ url_for('index') }}">Back</a></p>
<script>
const api = {{ url_for('task_json', task_id=task.task_id) | tojson }};
const download = {{ url_for('download', task_id=task.task_id) | tojson }};
async function poll() {
  const r = await fetch(api);
  const t = await r.json();
  if (!r.ok) { document.getElementById("result").textContent = t.error.message; return; }
  document.getElementById("status").textContent = t.status;
  document.getElementById("phase").textContent = t.phase || "";
  document.getElementById("bar").value = t.progress;
  if (t.status === "completed") {
    document.getElementById("result").innerHTML = '<a href="' + download + '">Download the protected video</a>';
  } else if (t.status === "failed" || t.status === "cancelled") {
    document.getElementById("result").textContent = t.status + (t.error ? ": " + t.error.message : "");
  } else { setTimeout(poll, 1500); }
}
poll();
</script></body></html>"""


def create_app(server_url: str | None = None, api_key: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 2 * 1024**3  # match the server's default max_video_size_gb
    client = MediaCleanerClient(
        server_url or os.environ.get("MEDIA_CLEANER_SERVER", "http://localhost:8000"),
        api_key=api_key or os.environ.get("MEDIA_CLEANER_API_KEY"),
    )
    app.extensions["media_cleaner"] = client

    @app.errorhandler(ClientError)
    def client_error(exc: ClientError) -> tuple[Any, int]:
        # The server's own status and code pass through; an unreachable server is this app's 502.
        status = exc.status_code if isinstance(exc, ApiError) else 502
        if request.path.startswith("/api/"):
            return jsonify({"error": {"code": exc.code, "message": exc.message}}), status
        return render_template_string(PAGE, tasks=[], error=exc.message), status

    @app.get("/")
    def index() -> str:
        try:
            tasks = client.list_tasks(limit=20)["tasks"]
        except ServerUnavailableError as exc:
            return render_template_string(PAGE, tasks=[], error=exc.message)
        return render_template_string(PAGE, tasks=tasks, error=None)

    @app.post("/upload")
    def upload() -> Any:
        file = request.files.get("file")
        if file is None or not file.filename:
            return render_template_string(PAGE, tasks=[], error="Choose a video file first."), 400
        epsilon = request.form.get("epsilon", type=float)
        answer = client.upload_video(
            file.stream, filename=file.filename, epsilon=epsilon, audio_level=request.form.get("audio_level") or None
        )
        return redirect(url_for("task_page", task_id=answer["task_id"]), code=303)

    @app.get("/tasks/<task_id>")
    def task_page(task_id: str) -> str:
        return render_template_string(STATUS, task=client.get_task(task_id))

    @app.get("/api/tasks/<task_id>")
    def task_json(task_id: str) -> Any:
        task = client.get_task(task_id)
        keys = ("task_id", "status", "progress", "phase", "eta_seconds", "error", "original_filename")
        return jsonify({k: task.get(k) for k in keys})

    @app.get("/tasks/<task_id>/download")
    def download(task_id: str) -> Response:
        task = client.get_task(task_id)
        if task["status"] != "completed":
            abort(409)
        result = client.open_result(task_id)  # raises (-> error page) before the 200 status line is sent
        headers = {"Content-Disposition": f'attachment; filename="{_ascii(result.filename)}"'}
        if result.size is not None:
            headers["Content-Length"] = str(result.size)
        # Werkzeug closes the iterable when the response ends, which releases the upstream connection.
        return Response(result, mimetype=result.content_type, headers=headers)

    return app


def _ascii(name: str) -> str:
    return "".join(ch if ch.isascii() and ch.isalnum() or ch in "-_." else "_" for ch in name) or "video"


if __name__ == "__main__":
    create_app().run(port=int(os.environ.get("PORT", "5000")))
