"""The artifact store on S3: a real S3-compatible server on loopback (``moto_server``, started
and stopped by this module), real ``mro-search`` subprocesses, and two machines (two working
directories) that share only the storage and the bucket.

Each test gets a bucket of its own; objects outside the study's prefix are the test's, to check
that mro-search leaves them alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from search_service.search import ARTIFACTS_KEY, CHECKPOINT_KEY
from search_tests.conftest import one_error

pytestmark = pytest.mark.slow

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def moto_server_command() -> list[str] | None:
    script = Path(sys.executable).parent / "moto_server"
    if script.is_file():
        return [str(script)]
    found = shutil.which("moto_server")
    return [found] if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``moto_server`` on a free loopback port, for this module; its URL."""
    command = moto_server_command()
    if command is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]'; the test extra has it)")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    for _ in range(3):  # the free port may be taken by someone else before moto binds it
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log, "w") as out:
            proc = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                time.sleep(0.2)
        if proc.poll() is None:
            break
    else:
        pytest.fail(f"moto_server did not start:\n{log.read_text()}")
    assert time.monotonic() < deadline, f"moto_server did not answer within 60 s:\n{log.read_text()}"
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Bucket:
    """A fresh bucket on the loopback server, a client for it, and the environment of a machine
    that may use it (AWS variables of this machine left out)."""

    name: str
    endpoint: str
    client: object

    def env(self, mro, **extra: str):
        env = {k: v for k, v in mro.env().items() if not k.startswith("AWS_") and k != "MRO_ARTIFACTS"}
        env.update(CREDENTIALS, AWS_ENDPOINT_URL=self.endpoint)
        env.update(extra)
        return env

    def keys(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=self.name)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)


@pytest.fixture
def bucket(s3_endpoint: str) -> Bucket:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                          aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    name = f"mro-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(name, s3_endpoint, client)


def fresh_run(tiny, mro, directory: Path) -> Path:
    """Machine A: a study file with the default run directory (``runs/tiny`` under the working
    directory ``directory``, so that the study records no path of this machine), holding a copy
    of the session's trained checkpoint as its latest training. Returns the study file."""
    checkpoints = directory / "runs" / "tiny" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / tiny.checkpoint.name).write_bytes(tiny.checkpoint.read_bytes())
    (checkpoints / "latest").write_text(tiny.checkpoint.name + "\n")
    file = directory / "tiny.toml"
    file.write_text(mro.study_toml("tiny", None), encoding="utf-8")
    return file


def files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def raise_budget(url: str, name: str, trials: int) -> None:
    """Set the study's trial budget through Optuna's public storage API, as ``resume --trials``
    does before its workers start."""
    from optuna.storages import RDBStorage

    from search_service.search import BUDGET_KEY

    storage = RDBStorage(url)
    try:
        storage.set_study_system_attr(storage.get_study_id_from_name(name), BUDGET_KEY, int(trials))
    finally:
        storage.engine.dispose()


def study_attrs(mro, url: str) -> dict:
    study = mro.open_study(url)
    return study._storage.get_study_system_attrs(study._study_id)


@pytest.mark.postgres
def test_two_machines_share_only_postgres_and_a_bucket(tiny, mro, tmp_path, pg_url, bucket):
    """Machine A creates the study with ``--artifacts s3://bucket/prefix``: the checkpoint and
    the report go to the bucket under the prefix. Machine B, an empty directory with the AWS
    environment, joins with ``worker --study NAME --storage URL``: it downloads and verifies the
    checkpoint and adds trials, writing nothing locally. A replaced or missing checkpoint object
    is refused in one line; ``delete`` removes the study's objects and nothing else."""
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    machine_b.mkdir()
    file = fresh_run(tiny, mro, machine_a)
    location = f"s3://{bucket.name}/team/mro"
    bucket.put("team/other/keep.txt", b"not mro-search's")
    bucket.put("team/mro-lookalike", b"not under the prefix either")
    env = bucket.env(mro)

    # The moments are produced, not waited for (a freeze between two of A's tiny trials depended on
    # the machine's speed: A could finish its 40 before the freeze found one). A creates the study
    # and searches to a budget of 20; the budget is raised to 40 (what `resume --trials 40` writes
    # before its workers start); B joins and adds exactly 2 trials; A resumes to the budget.
    created = mro.run(["run", "--study", str(file), "--storage", pg_url, "--artifacts", location, "--trials", "20", "-q"], cwd=machine_a, env=env)
    assert created.returncode == 0, created.stderr
    assert "Traceback" not in created.stderr, created.stderr
    raise_budget(pg_url, "tiny", 40)
    joined = mro.run(["worker", "--study", "tiny", "--storage", pg_url, "--trials", "2"], cwd=machine_b, env=env)
    assert joined.returncode == 0, joined.stderr
    assert "worker finished: 2 trials completed here" in joined.stderr
    assert location in joined.stderr  # it says where the artifacts are
    assert files(machine_b) == []  # the checkpoint was read into memory and verified: nothing written on B
    resumed = mro.run(["resume", "--study", "tiny", "--storage", pg_url, "--no-report", "-q"], cwd=machine_a, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr, resumed.stderr
    trials = mro.complete(mro.open_study(pg_url))
    masks = [mro.mask(t) for t in trials]
    assert len(masks) == len(set(masks)) == 40
    by_number = sorted(trials, key=lambda t: t.number)
    b_worker = {t.user_attrs["worker"] for t in by_number[20:22]}
    assert len(b_worker) == 1  # B's two trials, one process
    assert all(t.user_attrs["worker"] not in b_worker for t in by_number[:20] + by_number[22:])  # the rest are A's

    attrs = study_attrs(mro, pg_url)
    record = attrs[CHECKPOINT_KEY]
    assert attrs[ARTIFACTS_KEY] == location
    ours = sorted(k for k in bucket.keys() if k.startswith("team/mro/"))
    assert len(ours) == 2  # the checkpoint and A's report
    checkpoint_key = f"team/mro/{record['artifact_id']}"
    assert checkpoint_key in ours
    assert hashlib.sha256(bucket.get(checkpoint_key)).hexdigest() == record["sha256"] == hashlib.sha256(tiny.checkpoint.read_bytes()).hexdigest()
    (report_key,) = [k for k in ours if k != checkpoint_key]
    assert b"<html" in bucket.get(report_key)[:2000].lower()
    assert not (machine_a / "runs" / "tiny" / "artifacts").exists()

    original = bucket.get(checkpoint_key)
    raise_budget(pg_url, "tiny", 41)  # room for a trial: a worker at the budget says so before it reads the checkpoint
    bucket.put(checkpoint_key, original[: len(original) // 2] + b"\0" * (len(original) - len(original) // 2))
    tampered = mro.run(["worker", "--study", "tiny", "--storage", pg_url, "--trials", "1"], cwd=machine_b, env=env)
    one_error(tampered, "is not the one study 'tiny' recorded", location)
    bucket.client.delete_object(Bucket=bucket.name, Key=checkpoint_key)
    missing = mro.run(["worker", "--study", "tiny", "--storage", pg_url, "--trials", "1"], cwd=machine_b, env=env)
    one_error(missing, f"artifact {record['artifact_id']} is not in artifact store {location}")
    assert files(machine_b) == []
    assert len(mro.complete(mro.open_study(pg_url))) == 40

    bucket.put(checkpoint_key, original)
    deleted = mro.run(["delete", "--study", "tiny", "--storage", pg_url, "--yes", "--json"], cwd=machine_b, env=env)
    assert deleted.returncode == 0, deleted.stderr
    removed = json.loads(deleted.stdout)
    assert removed["study"] == "tiny" and removed["artifacts"] == 2
    assert bucket.keys() == ["team/mro-lookalike", "team/other/keep.txt"]
    gone = mro.run(["worker", "--study", "tiny", "--storage", pg_url, "--trials", "1"], cwd=machine_b, env=env)
    one_error(gone, "no study named 'tiny'")


def test_mro_artifacts_names_the_bucket(tiny, mro, tmp_path, sqlite_url, bucket):
    """``$MRO_ARTIFACTS=s3://bucket`` instead of the flag, without a prefix (objects at the top
    of the bucket); ``resume`` elsewhere with only the AWS environment, and ``delete`` with the
    count of what it removed (an object already gone is not counted)."""
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    machine_b.mkdir()
    file = fresh_run(tiny, mro, machine_a)
    location = f"s3://{bucket.name}"

    created = mro.run(["run", "--study", str(file), "--storage", sqlite_url, "--trials", "2", "--no-report", "-q"],
                      cwd=machine_a, env=bucket.env(mro, MRO_ARTIFACTS=location + "/"))
    assert created.returncode == 0, created.stderr
    attrs = study_attrs(mro, sqlite_url)
    record = attrs[CHECKPOINT_KEY]
    assert attrs[ARTIFACTS_KEY] == location
    assert bucket.keys() == [record["artifact_id"]]
    assert not (machine_a / "runs" / "tiny" / "artifacts").exists()

    # B raises the budget: resume's own worker process joins by name as well
    joined = mro.run(["resume", "--study", "tiny", "--storage", sqlite_url, "--trials", "3", "--no-report", "-q"], cwd=machine_b, env=bucket.env(mro))
    assert joined.returncode == 0, joined.stderr
    assert len(mro.complete(mro.open_study(sqlite_url))) == 3
    assert files(machine_b) == []

    bucket.client.delete_object(Bucket=bucket.name, Key=record["artifact_id"])
    deleted = mro.run(["delete", "--study", "tiny", "--storage", sqlite_url, "--yes", "--json"], cwd=machine_b, env=bucket.env(mro))
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["artifacts"] == 0
    assert bucket.keys() == []


def test_a_store_that_cannot_be_used_is_refused_in_one_line(tiny, mro, tmp_path, sqlite_url, bucket):
    """A bucket that does not exist: ``run`` creates no study (nothing half-made is left), and a
    worker pointed at it says so; an endpoint where nothing listens is an error line too."""
    machine_a = tmp_path / "a"
    file = fresh_run(tiny, mro, machine_a)
    empty = tmp_path / "b"
    empty.mkdir()
    env = bucket.env(mro)
    absent = f"s3://{bucket.name}-absent/prefix"

    refused = mro.run(["run", "--study", str(file), "--storage", sqlite_url, "--artifacts", absent, "--trials", "2", "--no-report"], cwd=machine_a, env=env)
    one_error(refused, "cannot write to artifact store", absent)
    db = Path(sqlite_url[len("sqlite:///"):])
    if db.exists():
        import optuna

        assert [s.study_name for s in optuna.storages.RDBStorage(sqlite_url).get_all_studies()] == []

    created = mro.run(["run", "--study", str(file), "--storage", sqlite_url, "--artifacts", f"s3://{bucket.name}/p", "--trials", "1", "--no-report", "-q"], cwd=machine_a, env=env)
    assert created.returncode == 0, created.stderr
    raise_budget(sqlite_url, "tiny", 2)  # room for a trial: a worker at the budget says so before it reads the checkpoint
    one_error(mro.run(["worker", "--study", "tiny", "--storage", sqlite_url, "--trials", "1", "--artifacts", absent], cwd=empty, env=env),
              "the bucket does not exist", absent)
    nobody = bucket.env(mro, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_MAX_ATTEMPTS="1")
    one_error(mro.run(["worker", "--study", "tiny", "--storage", sqlite_url, "--trials", "1"], cwd=empty, env=nobody),
              "cannot read artifact store", f"s3://{bucket.name}/p")
    assert files(empty) == []
    assert len(mro.complete(mro.open_study(sqlite_url))) == 1


def test_one_report_per_study_in_the_bucket(tiny, mro, tmp_path, sqlite_url, bucket, monkeypatch, capsys):
    """``run`` then ``resume`` (each writes the report) keep one report object beside the
    checkpoint: the earlier one is removed from the bucket and from the study's artifact list;
    ``delete`` removes both and leaves other objects under the prefix alone. In this process
    (``cli.main``): only the outcome matters here."""
    from optuna.artifacts import get_all_artifact_meta

    from search_service.cli import main

    for key, value in bucket.env(mro).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    file = fresh_run(tiny, mro, tmp_path / "a")
    location = f"s3://{bucket.name}/team"
    bucket.put("team/other/keep.txt", b"not mro-search's")
    common = ["--study", str(file), "--storage", sqlite_url, "-q"]

    assert main(["run", *common, "--artifacts", location, "--trials", "2"]) == 0
    checkpoint = study_attrs(mro, sqlite_url)[CHECKPOINT_KEY]["artifact_id"]
    (first,) = [k for k in bucket.keys() if k not in (f"team/{checkpoint}", "team/other/keep.txt")]
    assert main(["resume", *common, "--trials", "3"]) == 0
    (report,) = [k for k in bucket.keys() if k not in (f"team/{checkpoint}", "team/other/keep.txt")]
    assert report != first and bucket.get(report).startswith(b"<!DOCTYPE html>")
    metas = get_all_artifact_meta(mro.open_study(sqlite_url))
    assert sorted(f"team/{m.artifact_id}" for m in metas) == sorted([f"team/{checkpoint}", report])

    capsys.readouterr()
    assert main(["delete", *common, "--yes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["artifacts"] == 2
    assert bucket.keys() == ["team/other/keep.txt"]
