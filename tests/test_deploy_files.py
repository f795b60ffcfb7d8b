"""Deployment files are checked by the tools that will read them: nginx -t, systemd-analyze, gunicorn, a YAML
parser and a Dockerfile parser. A tool missing here skips its check; in CI (CI=true) it fails instead."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from media_cleaner.cluster.nginx import client_max_body_size_mib, render_site
from media_cleaner.config import Settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str, *candidates: str) -> str:
    for candidate in (name, *candidates):
        found = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if found:
            return found
    message = f"{name} not installed (apt-get install {name}); .ci/run installs it"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def setting_names() -> set[str]:
    return set(Settings.model_fields)


def check_env_keys(env: dict[str, str], where: str) -> None:
    """Every MEDIA_CLEANER_* variable a deployment file sets must be a real setting (typos are silently ignored)."""
    for key in env:
        if key.startswith("MEDIA_CLEANER_"):
            assert key.removeprefix("MEDIA_CLEANER_").lower() in setting_names(), f"{where}: unknown setting {key}"


# -- Dockerfile -------------------------------------------------------------------------------------------------
def parse_dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    parser.content = (DEPLOY / "Dockerfile").read_text()
    return parser


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    parser = parse_dockerfile()
    instructions = parser.structure
    froms = [i for i in instructions if i["instruction"] == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    assert any(" AS builder" in i["value"] for i in froms) and any(" AS runtime" in i["value"] for i in froms)
    runtime_start = instructions.index(froms[-1])
    runtime = instructions[runtime_start:]
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runtime stage must drop root"
    health = [i["value"] for i in runtime if i["instruction"] == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0]
    assert any(i["instruction"] == "COPY" and "--from=builder" in i["value"] for i in runtime)
    entry = [i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"]
    assert entry and "media-cleaner" in entry[-1]
    assert parser.baseimage.startswith("python:3.11") or "${PYTHON_IMAGE}" in froms[-1]["value"]


def test_dockerfile_has_cpu_and_cuda_variants_and_model_choice() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    parser = parse_dockerfile()
    args = [i["value"] for i in parser.structure if i["instruction"] == "ARG"]
    assert any(a.startswith("VARIANT=cpu") for a in args)
    assert any(a.startswith("BAKE_MODELS=") for a in args)
    assert '"$VARIANT" = "cuda"' in text and "whl/cpu" in text
    # The torch pin in the image matches the project's.
    pyproject = (REPO / "pyproject.toml").read_text()
    torch_arg = next(a for a in args if a.startswith("TORCH_VERSION="))
    assert f'"torch=={torch_arg.split("=", 1)[1]}"' in pyproject


def test_dockerfile_copies_existing_paths_and_sets_real_settings() -> None:
    parser = parse_dockerfile()
    for instr in parser.structure:
        if instr["instruction"] == "COPY" and "--from=" not in instr["value"]:
            *sources, _dest = instr["value"].split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY source {source} missing from the build context"
    env: dict[str, str] = {}
    for instr in parser.structure:
        if instr["instruction"] == "ENV":
            for pair in instr["value"].split():
                if "=" in pair:
                    key, value = pair.split("=", 1)
                    env[key] = value
    check_env_keys(env, "Dockerfile")
    assert env["MEDIA_CLEANER_STORAGE_URL"].startswith("file:///")


# -- docker compose ---------------------------------------------------------------------------------------------
def test_compose_has_api_worker_postgres_sharing_storage() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "postgres", "migrate"} <= set(services)
    mounts = {}
    for name in ("api", "worker", "migrate", "worker-gpu"):
        svc = services[name]
        volumes = [v for v in svc["volumes"] if v.split(":")[0] in compose["volumes"]]
        mounts[name] = {v.split(":")[0]: v.split(":")[1] for v in volumes}
        env = svc["environment"]
        check_env_keys(env, f"compose service {name}")
        assert env["MEDIA_CLEANER_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["MEDIA_CLEANER_DATABASE_URL"]
        storage_path = env["MEDIA_CLEANER_STORAGE_URL"].removeprefix("file://")
        assert mounts[name]["storage"] == storage_path, f"{name} must mount the shared storage at {storage_path}"
    assert services["api"]["command"][0] == "api" and services["worker"]["command"][0] == "worker"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    gpu = services["worker-gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda" and "gpu" in gpu["profiles"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["worker"]["healthcheck"] == {"disable": True}, "workers have no HTTP /health"


# -- systemd ----------------------------------------------------------------------------------------------------
def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    # verify insists the ExecStart binaries exist; stand-ins at a temp path keep the rest of the check honest.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("media-cleaner", "gunicorn"):
        stub = bindir / name
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    units = []
    for unit in (DEPLOY / "systemd").glob("*.service"):
        text = unit.read_text().replace("/opt/media-cleaner/venv/bin/", f"{bindir}/")
        (tmp_path / unit.name).write_text(text)
        instance = unit.name.replace("@.service", "@0.service")
        if instance != unit.name:
            (tmp_path / instance).write_text(text)
        units.append(str(tmp_path / instance))
    assert len(units) == 2
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "media-cleaner" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
    worker = (DEPLOY / "systemd" / "media-cleaner-worker@.service").read_text()
    assert "worker --device %i" in worker, "one worker process per GPU: the instance name is the device"


# -- nginx ------------------------------------------------------------------------------------------------------
def test_nginx_site_is_the_rendered_default() -> None:
    committed = (DEPLOY / "nginx" / "media-cleaner.conf").read_text()
    assert committed == render_site(Settings()), "regenerate with `media-cleaner nginx-site > deploy/nginx/...`"
    assert "proxy_request_buffering off;" in committed
    assert "client_max_body_size 2064m;" in committed  # 2 GiB default + 16 MiB multipart slack
    assert "proxy_read_timeout 3600s;" in committed


def test_nginx_body_size_follows_max_video_size() -> None:
    assert client_max_body_size_mib(Settings(max_video_size_gb=0.5)) == 512 + 16
    assert "client_max_body_size 10256m;" in render_site(Settings(max_video_size_gb=10))
    site = render_site(Settings(), upstreams=["10.0.0.1:8000", "10.0.0.2:8000"])
    assert "server 10.0.0.1:8000" in site and "server 10.0.0.2:8000" in site


@pytest.mark.parametrize("max_gb", [2.0, 0.25])
def test_nginx_accepts_the_site(tmp_path: Path, max_gb: float) -> None:
    nginx = require_tool("nginx", "/usr/sbin/nginx")
    site = tmp_path / "media-cleaner.conf"
    site.write_text(render_site(Settings(max_video_size_gb=max_gb)))
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  client_body_temp_path {tmp_path}/body;\n  proxy_temp_path {tmp_path}/proxy;\n"
        f"  include {site};\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# -- gunicorn ---------------------------------------------------------------------------------------------------
def test_gunicorn_config_loads_with_known_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn.config import Config

    monkeypatch.setenv("MEDIA_CLEANER_PORT", "8123")
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    namespace = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    config = Config()
    for key, value in namespace.items():
        if key.startswith("_") or key in ("multiprocessing", "os", "load_settings"):
            continue
        assert key in config.settings, f"gunicorn has no setting {key!r}"
        config.set(key, value)  # validates the value's type the way gunicorn does
    assert config.worker_class_str == "uvicorn_worker.UvicornWorker"
    assert config.bind == ["0.0.0.0:8123"] and config.workers == 3
    assert config.timeout >= 600, "multi-GiB uploads must not trip the worker timeout"
    module, _, factory = namespace["wsgi_app"].partition(":")
    assert factory.endswith("()"), "an app factory, called once per gunicorn worker"


def test_gunicorn_app_factory_serves_health(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The factory the gunicorn config names builds an API-only app (schema upgraded first) that answers /health."""
    import importlib

    from fastapi.testclient import TestClient

    from media_cleaner.jobs.migrate import current_revision, head_revision

    monkeypatch.setenv("MEDIA_CLEANER_BASE_DIR", str(tmp_path))
    namespace = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    module, _, factory = namespace["wsgi_app"].partition(":")
    app = getattr(importlib.import_module(module), factory.removesuffix("()"))()
    with TestClient(app) as client:
        reply = client.get("/health")
    assert reply.status_code == 200 and reply.json()["status"] == "ok"
    assert current_revision(f"sqlite:///{tmp_path / 'queue_db' / 'tasks.db'}") == head_revision()
