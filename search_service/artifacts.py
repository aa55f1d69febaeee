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
  (``pip install -e ".[s3]"``, boto3 1.28.57 or later: earlier ones ignore ``AWS_ENDPOINT_URL``). Objects are stored under the prefix.

The location comes from ``--artifacts``, else ``$MRO_ARTIFACTS``, else the study file's
``[search] artifacts``, else ``RUN_DIR/artifacts``, when the study is created. Later commands
use the recorded location; ``--artifacts`` or ``$MRO_ARTIFACTS`` on a machine that sees the
same store elsewhere (another mount point) override it there, without changing the record.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import re
import shutil
import tempfile
import uuid
from contextlib import closing
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from supernet.errors import ConfigError, MROError
from supernet.files import expand_home

if TYPE_CHECKING:
    import optuna

    from search_service.study_file import Study

ENV_VAR = "MRO_ARTIFACTS"
ARTIFACTS_ATTR_PREFIX = "artifacts:"  # Optuna's own key for an artifact's metadata
_S3 = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(?P<prefix>.*))?$")


class ArtifactError(MROError):
    """The artifact store cannot be reached, or lacks what the study says it holds."""


def resolve_location(study: Study, cli_value: str | None = None, *, default: Path | None = None) -> str:
    """Where a new study keeps its artifacts: ``--artifacts``, ``$MRO_ARTIFACTS``, the study
    file, else ``default`` (the study's own folder's ``artifacts``: ``lifecycle.own_dir``), else
    ``RUN_DIR/artifacts``; a directory is made absolute."""
    value = cli_value or os.environ.get(ENV_VAR) or study.search.artifacts
    if not value:
        value = str(default if default is not None else study.run_dir / "artifacts")
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
    return str(expand_home(location, what="artifact store").resolve())


def open_store(location: str, *, create: bool = False) -> Any:
    """An Optuna artifact store for ``location``. A directory is created only with ``create``
    (a command that only reads never makes one)."""
    location = normalize(location)
    match = _S3.match(location)
    if match is not None:
        return _s3_store(location, match["bucket"], (match["prefix"] or "").strip("/"))
    path = Path(location)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create artifact store {path}: {exc.strerror or exc}; give a writable directory with --artifacts") from exc
    return AtomicFileSystemArtifactStore(path)


class AtomicFileSystemArtifactStore(FileSystemArtifactStore):
    """Optuna's directory store, writing each artifact whole or not at all: to a temporary file
    beside it (``.ID.*.tmp``), flushed, renamed to its name at the end; the temporary file is
    removed on any failure (a full disk, a signal's exception), so no partial object is ever
    stored under an artifact's name."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        target = self._get_filepath(artifact_id)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(content_body, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # gone already after the rename

    def remove(self, artifact_id: str) -> None:
        """Remove the artifact, and a temporary file of it that a killed writer left behind."""
        target = self._get_filepath(artifact_id)
        for leftover in target.parent.glob(f".{target.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        super().remove(artifact_id)


def _s3_store(location: str, bucket: str, prefix: str) -> Any:
    """Optuna's ``Boto3ArtifactStore`` for ``bucket`` with its objects under ``prefix/`` (a bucket
    shared by several studies or teams), and a ``remove`` that says when there was nothing to
    remove (S3's DeleteObject succeeds either way)."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
        from optuna.artifacts import Boto3ArtifactStore
    except ImportError as exc:
        raise ConfigError(f"artifact store {location} needs boto3 (1.28.57 or later, which reads AWS_ENDPOINT_URL): pip install boto3, or install mro-search with its s3 extra") from exc

    class S3Store(Boto3ArtifactStore):
        def key(self, artifact_id: str) -> str:
            return f"{prefix}/{artifact_id}" if prefix else artifact_id

        def open_reader(self, artifact_id: str) -> BinaryIO:
            return super().open_reader(self.key(artifact_id))

        def write(self, artifact_id: str, content_body: BinaryIO) -> None:
            super().write(self.key(artifact_id), content_body)

        def remove(self, artifact_id: str) -> None:
            key = self.key(artifact_id)
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    raise ArtifactNotFound(f"no object {key} in bucket {self.bucket}") from exc
                raise
            self.client.delete_object(Bucket=self.bucket, Key=key)

    try:
        client = boto3.client("s3")  # AWS_ENDPOINT_URL, the region and the credentials come from the environment
    except (BotoCoreError, ValueError) as exc:
        raise ConfigError(f"artifact store {location}: cannot make an S3 client ({_reason(exc)}); check the AWS_* environment variables") from exc
    # avoid_buf_copy: upload straight from the file (upload_artifact opens and closes it)
    return S3Store(bucket, client=client, avoid_buf_copy=True)


def new_artifact_id() -> str:
    return str(uuid.uuid4())  # as Optuna's upload_artifact names them


def upload(store: Any, location: str, study: optuna.Study, file_path: str | Path, *, mimetype: str | None = None,
           artifact_id: str | None = None) -> str:
    """Upload a file as an artifact of ``study``; returns the artifact id.

    What Optuna's ``upload_artifact`` does, in the other order: the artifact's metadata is
    recorded in the study first (``artifacts:ID``, Optuna's format, so optuna-dashboard lists it),
    then the object is written whole (``AtomicFileSystemArtifactStore``; an S3 object is whole
    or absent anyway). So an upload cut off at any point leaves no object that the study does not
    name, and ``delete`` finds everything the study put in the store. A failed write removes the
    metadata again."""
    from optuna.artifacts import ArtifactMeta

    artifact_id = artifact_id or new_artifact_id()
    filename = os.path.basename(str(file_path))
    guess_type, guess_encoding = mimetypes.guess_type(filename)
    meta = ArtifactMeta(artifact_id=artifact_id, filename=filename, mimetype=mimetype or guess_type or "application/octet-stream",
                        encoding=guess_encoding)
    storage, key = study._storage, ARTIFACTS_ATTR_PREFIX + artifact_id
    storage.set_study_system_attr(study._study_id, key, json.dumps(asdict(meta)))
    try:
        with open(file_path, "rb") as f:
            store.write(artifact_id, f)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            forget(storage, study._study_id, key)
        if isinstance(exc, MROError) or not isinstance(exc, Exception):
            raise
        raise ArtifactError(f"cannot write to artifact store {location}: {_reason(exc)}; check the location and its credentials") from exc
    return artifact_id


def forget(storage: Any, study_id: int, key: str) -> None:
    """Remove one study system attribute (an artifact's metadata), on an RDB storage."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    backend = getattr(storage, "_backend", storage)
    with _create_scoped_session(backend.scoped_session, True) as session:
        session.query(models.StudySystemAttributeModel).filter_by(study_id=study_id, key=key).delete()


def read(store: Any, location: str, artifact_id: str) -> bytes:
    """The bytes of an artifact."""
    try:
        # closing(), not ``with reader``: an S3 object's StreamingBody is a context manager only
        # in newer botocore; read() reads it whole and checks its length
        with closing(store.open_reader(artifact_id)) as reader:
            return reader.read()
    except ArtifactNotFound as exc:
        if _no_bucket(exc):
            raise ArtifactError(f"artifact store {location}: the bucket does not exist; check the location and AWS_ENDPOINT_URL") from exc
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


def _no_bucket(exc: BaseException) -> bool:
    """Optuna reports a missing S3 bucket as a missing artifact (both are HTTP 404)."""
    cause = getattr(exc.__cause__, "response", None)
    return isinstance(cause, dict) and cause.get("Error", {}).get("Code") == "NoSuchBucket"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
