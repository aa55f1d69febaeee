"""Where a study's files live: its supernet checkpoint and its reports, in Optuna's artifact store.

A study records its artifact store when it is created (study system attribute
``mro:artifacts``) and which of its artifacts is its checkpoint (``mro:checkpoint``: artifact id,
identity, file SHA-256). A worker on another machine needs only the storage URL: it reads the
store's location from the study and the checkpoint from the store, and verifies it.

Locations:

- a directory (``/shared/mro/artifacts``, ``runs/demo/artifacts``): Optuna's
  ``FileSystemArtifactStore``; recorded as an absolute path, so workers that mount the same
  volume at the same path find it;
- ``s3://bucket/prefix``: Optuna's ``Boto3ArtifactStore`` on any S3-compatible service, with the
  usual AWS environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL`` for MinIO, Ceph or moto); needs ``boto3``
  (``pip install 'mro-search[s3]'``). Objects are stored under the prefix.

The location comes from ``--artifacts``, else ``$MRO_ARTIFACTS``, else the study file's
``[search] artifacts``, else ``RUN_DIR/artifacts``, when the study is created. Later commands
use the recorded location; ``--artifacts`` or ``$MRO_ARTIFACTS`` on a machine that sees the
same store elsewhere (another mount point) override it there, without changing the record.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from supernet.errors import ConfigError, MROError

if TYPE_CHECKING:
    import optuna

    from search_service.study_file import Study

ENV_VAR = "MRO_ARTIFACTS"
ARTIFACTS_ATTR_PREFIX = "artifacts:"  # Optuna's own key for an artifact's metadata
_S3 = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")


class ArtifactError(MROError):
    """The artifact store cannot be reached, or lacks what the study says it holds."""


def resolve_location(study: Study, cli_value: str | None = None) -> str:
    """Where a new study keeps its artifacts: ``--artifacts``, ``$MRO_ARTIFACTS``, the study
    file, ``RUN_DIR/artifacts``; a directory is made absolute."""
    value = cli_value or os.environ.get(ENV_VAR) or study.search.artifacts
    if not value:
        value = str(study.run_dir / "artifacts")
    return normalize(value)


def normalize(location: str) -> str:
    """An S3 URL as it is (checked), a directory as an absolute path."""
    if "\x00" in location:
        raise ConfigError("artifact store location contains a NUL character; give a directory or s3://bucket/prefix")
    if location.startswith("s3://"):
        match = _S3.match(location)
        if match is None:
            raise ConfigError(f"artifact store {location!r} is not a valid S3 location; use s3://bucket or s3://bucket/prefix")
        return location.rstrip("/")
    if "://" in location and not location.startswith("file://"):
        raise ConfigError(f"artifact store {location!r}: only directories and s3://bucket/prefix are supported")
    if location.startswith("file://"):
        location = location[len("file://"):]
    return str(Path(location).expanduser().resolve())


def open_store(location: str, *, create: bool = False) -> Any:
    """An Optuna artifact store for ``location``. A directory is created only with ``create``
    (a command that only reads never makes one)."""
    location = normalize(location)
    match = _S3.match(location)
    if match is not None:
        try:
            import boto3
            from optuna.artifacts import Boto3ArtifactStore
        except ImportError as exc:
            raise ConfigError(f"artifact store {location} needs boto3: pip install 'mro-search[s3]'") from exc
        client = boto3.client("s3")  # AWS_ENDPOINT_URL and the credentials come from the environment
        store = Boto3ArtifactStore(match["bucket"], client=client, avoid_buf_copy=True)
        prefix = (match["prefix"] or "").strip("/")
        return PrefixedStore(store, prefix) if prefix else store
    path = Path(location)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create artifact store {path}: {exc.strerror or exc}; give a writable directory with --artifacts") from exc
    return FileSystemArtifactStore(path)


class PrefixedStore:
    """An artifact store whose objects live under ``prefix/`` of another store (an S3 bucket
    shared by several studies or teams)."""

    def __init__(self, store: Any, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    def _key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}"

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self._key(artifact_id))


def upload(store: Any, location: str, study: optuna.Study, file_path: str | Path, *, mimetype: str | None = None) -> str:
    """Upload a file as an artifact of ``study`` (Optuna records its metadata in the study, so
    optuna-dashboard lists it); returns the artifact id."""
    from optuna.artifacts import upload_artifact

    try:
        return upload_artifact(artifact_store=store, file_path=str(file_path), study_or_trial=study, mimetype=mimetype)
    except MROError:
        raise
    except Exception as exc:
        raise ArtifactError(f"cannot write to artifact store {location}: {_reason(exc)}; check the location and its credentials") from exc


def read(store: Any, location: str, artifact_id: str) -> bytes:
    """The bytes of an artifact."""
    try:
        with store.open_reader(artifact_id) as reader:
            return reader.read()
    except ArtifactNotFound as exc:
        raise ArtifactError(f"artifact {artifact_id} is not in artifact store {location}; give the store's location on this machine with --artifacts or $MRO_ARTIFACTS") from exc
    except MROError:
        raise
    except Exception as exc:
        raise ArtifactError(f"cannot read artifact store {location}: {_reason(exc)}; check the location and its credentials") from exc


def remove(store: Any, artifact_id: str) -> bool:
    """Remove an artifact from the store; False when it was not there."""
    try:
        store.remove(artifact_id)
        return True
    except ArtifactNotFound:
        return False


def study_artifact_ids(attrs: dict[str, Any]) -> list[str]:
    """The ids of all artifacts recorded in a study's system attributes."""
    return [key[len(ARTIFACTS_ATTR_PREFIX):] for key in attrs if key.startswith(ARTIFACTS_ATTR_PREFIX)]


def read_stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
