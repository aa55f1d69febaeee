"""docker-compose.yml: PostgreSQL, scalable workers, optuna-dashboard and the artifact store they
share, validated offline by ``docker-compose config`` (Debian's docker-compose package; no Docker
engine needed)."""

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


@pytest.fixture(scope="module")
def config_with_setup() -> dict:
    """The configuration with the ``setup`` profile's one-off job (newer docker-compose leaves
    services of a profile out unless it is named)."""
    result = _compose("--profile", "setup", "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_validates(config):
    assert set(config["services"]) >= {"postgres", "worker", "dashboard"}
    assert {"pgdata", "runs", "artifacts"} <= set(config["volumes"])


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


def _mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes, in the short form of docker-compose 1 (``name:/path:rw``)
    or the long form of docker-compose 2 (``{type, source, target}``)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source")), str(volume["target"])))
        else:
            source, target = str(volume).split(":")[:2]
            mounts.append((source, target))
    return mounts


def _mro_services(config: dict) -> dict[str, dict]:
    return {name: svc for name, svc in config["services"].items() if (svc.get("command") or [""])[0] == "mro-search"}


def test_every_mro_service_shares_the_artifact_store(config_with_setup):
    services = _mro_services(config_with_setup)
    assert set(services) >= {"setup", "worker", "dashboard"}
    for name, svc in services.items():
        location = svc["environment"].get("MRO_ARTIFACTS")
        assert location and location.startswith("/"), f"{name}: MRO_ARTIFACTS must name the mounted store"
        assert ("artifacts", location) in _mounts(svc), f"{name}: the artifacts volume is not mounted at {location}"
    assert len({svc["environment"]["MRO_ARTIFACTS"] for svc in services.values()}) == 1, "one store, one path"


def test_workers_need_only_the_storage_and_the_store(config_with_setup):
    """The setup job trains into its runs volume; the workers and the dashboard get the study's
    checkpoint from the artifact store (as a worker on another machine does), not from runs."""
    services = config_with_setup["services"]
    assert ("runs", "/app/runs") in _mounts(services["setup"])
    for name in ("worker", "dashboard"):
        assert [source for source, _ in _mounts(services[name])] == ["artifacts"], name


def test_the_image_owns_the_artifact_store_path(config):
    """A new named volume takes the owner of its mount point in the image: the store must exist
    there, owned by the image's user, or the setup job cannot upload the checkpoint."""
    location = config["services"]["worker"]["environment"]["MRO_ARTIFACTS"]
    text = DOCKERFILE.read_text(encoding="utf-8")
    user = re.search(r"^USER (\S+)", text, re.M)[1]
    assert re.search(rf"mkdir -p [^&\n]*{re.escape(location)}(\s|$)", text), f"the Dockerfile does not make {location}"
    assert re.search(rf"chown {user}:{user} [^&\n]*{re.escape(location)}(\s|$)", text), f"{location} is not owned by {user}"


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
