"""docker-compose.yml: PostgreSQL, scalable workers and optuna-dashboard, validated offline by
``docker-compose config`` (Debian's docker-compose package; no Docker engine needed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
TEST_PASSWORD = "pw-for-config-only-7f3a"


def _compose(*args: str, password: str | None = TEST_PASSWORD) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("the docker-compose binary is not installed (Debian: apt-get install docker-compose; .ci/run does it)")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    return subprocess.run([exe, "-f", str(COMPOSE), "--project-directory", str(REPO), *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def config() -> dict:
    result = _compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_validates(config):
    assert set(config["services"]) >= {"postgres", "worker", "dashboard"}
    assert {"pgdata", "runs"} <= set(config["volumes"])


def test_postgres_service(config):
    pg = config["services"]["postgres"]
    assert pg["image"].startswith("postgres:")
    assert pg["environment"]["POSTGRES_PASSWORD"] == TEST_PASSWORD  # from the environment
    assert any(v.startswith("pgdata:") for v in pg["volumes"])
    test = pg["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))


def test_workers_scale_and_share_the_storage(config):
    worker = config["services"]["worker"]
    assert worker["command"][:2] == ["mro-search", "worker"]
    assert worker["command"][worker["command"].index("--study") + 1] == "demo"  # ${MRO_STUDY:-demo}
    assert "container_name" not in worker and "ports" not in worker, "a scaled service cannot have these"
    assert worker["build"]["dockerfile"] == "Dockerfile"
    assert worker["depends_on"]["postgres"]["condition"] == "service_healthy"
    url = worker["environment"]["MRO_STORAGE"]
    assert url == f"postgresql+psycopg://mro:{TEST_PASSWORD}@postgres:5432/mro"
    assert not any(TEST_PASSWORD in part for part in worker["command"]), "the URL must not be on a command line"


def test_dashboard_is_published_on_loopback_only(config):
    dash = config["services"]["dashboard"]
    assert dash["command"][:2] == ["mro-search", "dashboard"]
    assert dash["depends_on"]["postgres"]["condition"] == "service_healthy"
    ports = dash["ports"]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), ports
    assert dash["environment"]["MRO_STORAGE"] == config["services"]["worker"]["environment"]["MRO_STORAGE"]


def test_password_is_required_and_never_literal():
    result = _compose("config", "-q", password=None)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD" in result.stderr

    # the file as written (no interpolation): every password is a ${...} reference
    raw = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    checked = 0
    for key, value in _items(raw):
        if not isinstance(value, str):
            continue
        plain = re.sub(r"\$\{[^}]*\}", "VAR", value)  # each ${...} reference -> VAR
        if "password" in str(key).lower():
            assert plain == "VAR", f"{key}: literal password"
            checked += 1
        for password in re.findall(r"://[^:/@\s]+:([^@\s]*)@", plain):
            assert password == "VAR", f"{key}: literal password in a URL"
            checked += 1
    assert checked >= 2  # POSTGRES_PASSWORD and the password in MRO_STORAGE


def _items(node, key=None):
    """Every (key, value) of a parsed YAML document, at any depth (list items keep their key)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _items(v, k)
    elif isinstance(node, list):
        for v in node:
            yield key, v
            yield from _items(v, key)


def test_dockerfile_builds_the_cpu_image():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert re.search(r"pip install torch==2\.13\.0 --index-url https://download\.pytorch\.org/whl/cpu", text)
    assert "pip install ." in text
    assert re.search(r"^USER ", text, re.M), "the image should not run as root"
