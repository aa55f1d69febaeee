"""Creating a study, whole or not at all (``lifecycle`` finds, joins and owns studies).

``create_search`` (by ``mro-search run``) makes the study with everything a worker needs recorded
as study system attributes (``lifecycle``'s docstring lists them) and its checkpoint uploaded to
its artifact store, in an order that every interruption leaves recognisable (``ownership``):

1. the study, its directions and all its attributes, among them ``mro:creating`` (who, since
   when), the checkpoint's artifact id and ``mro:files``, in one transaction;
2. the checkpoint artifact's metadata, then the object, written whole (``artifacts.upload``),
   then read back and compared with the checkpoint's SHA-256;
3. the metric names, and last ``mro:format``: the study is whole.

A failure on the way (an exception, Ctrl-C) removes the half-made study and what it uploaded. A
SIGKILL leaves it half-made: the next ``run`` sees its creator is gone and makes it again (a
creator still running is waited for, then joined: two ``run``s of one new study, one makes it,
the other joins it), ``delete`` removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from search_service import artifacts
from search_service.evaluator import Evaluator, objective_metric
from search_service.hardware import build_tables, latency_setting, limit_tables, study_tables
from search_service.keys import CREATING_KEY, FILES_KEY, PRIOR_SOURCE_KEY
from search_service.lifecycle import (
    check_matches,
    check_owned,
    find_study,
    own_dir,
    stored_config,
)
from search_service.objectives import (
    HARDWARE_KEY,
    LIMIT_TABLES_KEY,
    OBJECTIVES_KEY,
    TABLES_KEY,
    Objectives,
    costs_of,
)
from search_service.ownership import (
    CREATING,
    StudyNotGone,
    create_marked_study,
    is_alive,
    life_state,
    remove_study,
    stamp,
    who,
)
from search_service.proposal_prior import proposal_prior
from search_service.sampler import BUDGET_KEY, PATHS_KEY, PRIOR_KEY, RANK_LOSS_KEY
from search_service.search import (
    ARTIFACTS_KEY,
    CHECKPOINT_KEY,
    CONFIG_KEY,
    FLOPS_BUDGET_KEY,
    FORMAT_KEY,
    FULL_MASK_KEY,
    METRIC_KEY,
    SCORING_KEY,
    STUDY_DIR_KEY,
    STUDY_FORMAT,
    SearchStudy,
)
from search_service.storage import mask_password, open_storage, optuna_quiet, sqlite_file
from search_service.study_file import Study
from supernet.checkpoint import Checkpoint, file_sha256, save_checkpoint
from supernet.errors import CheckpointError, ConfigError, MROError

log = logging.getLogger("mro_search")

CREATE_WAIT_S = 300.0  # how long ``run`` waits for another process that is creating the study


def create_search(
    study: Study,
    url: str,
    evaluator: Evaluator,
    *,
    trials: int | None = None,
    artifacts_at: str | None = None,
    latency_device: str | None = None,
) -> SearchStudy:
    """Create the study in storage (or load it if it exists, after checking it is this one).
    ``latency_device`` (``--device``) overrides where a new study measures latency and memory."""
    optuna_quiet()
    folder = own_dir(study, url)
    location = artifacts.resolve_location(study, artifacts_at, default=folder / "artifacts")
    db = sqlite_file(url)
    made = _missing_paths(Path(location)) if not location.startswith("s3://") else []
    new_paths = _missing_paths(db) + made
    storage = None
    try:
        storage = open_storage(url, create=True)
        files = {"dir": str(Path(os.path.abspath(folder))), "made": [str(p) for p in made]}
        return _create_or_load(study, url, storage, evaluator, trials, location, files, latency_device)
    except BaseException:
        # nothing half-made is left: the SQLite file (if no study is in it) and the folders this
        # call made go again
        _dispose(storage)
        _remove_new(new_paths, db)
        raise


def _missing_paths(path: Path | None) -> list[Path]:
    """``path`` and those of its ancestors that do not exist yet, outermost first."""
    missing: list[Path] = []
    if path is None:
        return missing
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    return missing[::-1]


def _dispose(storage: Any) -> None:
    engine = getattr(getattr(storage, "_backend", storage), "engine", None)
    if engine is not None:
        with contextlib.suppress(Exception):
            engine.dispose()


def _remove_new(paths: list[Path], db: Path | None) -> None:
    """Remove what a failed creation made: the SQLite database with its journal files, if no
    study is in it (another ``run`` may have made one there meanwhile), and the folders,
    innermost first, each only if it is empty by then."""
    for path in reversed(paths):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # OSError (suppressed) when something else is in it by now
            elif db is not None and Path(os.path.abspath(db)) == path and not _holds_studies(path):
                for extra in ("-wal", "-shm", "-journal"):
                    Path(f"{path}{extra}").unlink(missing_ok=True)
                path.unlink(missing_ok=True)


def _holds_studies(db: Path) -> bool:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return bool(conn.execute("SELECT 1 FROM studies LIMIT 1").fetchone())
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return "no such table" not in str(exc)  # unreadable: keep it


def _create_or_load(study: Study, url: str, storage: Any, evaluator: Evaluator, trials: int | None, location: str,
                    files: dict[str, Any], latency_device: str | None = None) -> SearchStudy:
    """The study ``study.name``: made here, or joined. A half-made one (``ownership``) whose
    creator still runs is waited for, then joined; one whose creator is gone is removed and
    made again; two processes that create it at once: one makes it, the other joins."""
    name, where = study.name, mask_password(url)
    deadline = time.monotonic() + CREATE_WAIT_S
    waited_for = None
    while True:
        summary = find_study(storage, name)
        if summary is None:
            try:
                return _create(study, url, storage, evaluator, trials, location, files, latency_device)
            except optuna.exceptions.DuplicatedStudyError:
                continue  # another process made it first: wait for it, then join
        attrs = storage.get_study_system_attrs(summary._study_id)
        if life_state(attrs, FORMAT_KEY, STUDY_FORMAT) == CREATING:
            mark = attrs[CREATING_KEY]
            alive = is_alive(mark)
            if alive is False:
                log.warning(f"mro-search: study {name} was left half-made by {who(mark)}, which is no longer running: "
                            "removing it and making it again")
                _remove_half_made(storage, summary._study_id, attrs, name, where)
                continue
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"study {name!r} in {where} is still being created by {who(mark)} after {CREATE_WAIT_S:.0f} s; if that "
                    f"process is gone, remove the half-made study with `mro-search delete --study {name} --yes` and run again"
                )
            if waited_for is None:
                log.info(f"study {name} is being created by {who(mark)}: waiting to join it")
            waited_for = mark
            time.sleep(0.5)
            continue
        check_owned(name, url, summary, attrs)
        if waited_for is not None:
            log.info(f"joining study {name}, created meanwhile by {who(waited_for)}")
        return _load_made(study, url, storage, evaluator, trials, summary)


def _load_made(study: Study, url: str, storage: Any, evaluator: Evaluator, trials: int | None, summary) -> SearchStudy:
    search = SearchStudy(optuna.load_study(study_name=study.name, storage=storage), url)
    check_matches(search, study)
    from search_service.search import check_checkpoint

    check_checkpoint(search, evaluator.checkpoint)
    if trials is not None and trials != search.budget:
        storage.set_study_system_attr(summary._study_id, BUDGET_KEY, int(trials))
    return search


def _remove_half_made(storage: Any, study_id: int, attrs: dict[str, Any], name: str, where: str) -> None:
    record = attrs.get(CHECKPOINT_KEY) if isinstance(attrs.get(CHECKPOINT_KEY), dict) else {}
    location = attrs.get(ARTIFACTS_KEY)
    try:
        remove_study(storage, study_id, attrs, artifacts.normalize(str(location)) if location else None, record.get("artifact_id"))
    except StudyNotGone as exc:
        raise ConfigError(f"the half-made study {name!r} in {where} could not be removed ({exc}); try again") from exc


def _create(study: Study, url: str, storage: Any, evaluator: Evaluator, trials: int | None, location: str,
            files: dict[str, Any], latency_device: str | None = None) -> SearchStudy:
    """Make the study: its attributes and the mark ``mro:creating`` with it in one transaction,
    then its checkpoint artifact (stored, read back and verified), then ``mro:format``, last."""
    name = study.name
    checkpoint = evaluator.checkpoint
    metric = objective_metric(study)
    full = evaluator.evaluate((1,) * evaluator.model.num_paths, study.search.split)
    objectives = Objectives.from_config(study.search, metric)
    hardware: dict[str, Any] = {}
    tables: dict[str, Any] = {}
    if objectives.measured:  # measured before the study exists: a measurement cut off leaves nothing
        setting = latency_setting(study.search, study.train.device, latency_device)
        tables, hardware = build_tables(evaluator.model, objectives, setting, progress=log.info)
    full_costs = costs_of(full, (1,) * evaluator.model.num_paths, study_tables({TABLES_KEY: tables}))
    with _checkpoint_file(checkpoint) as path:
        sha = file_sha256(path)
        artifact_id = artifacts.new_artifact_id()
        attrs = {
            CREATING_KEY: stamp(),  # first: the study is mro-search's, and half-made
            FILES_KEY: files,
            PATHS_KEY: evaluator.path_names,
            PRIOR_KEY: proposal_prior(study.search.prior, evaluator, study.search.split),
            PRIOR_SOURCE_KEY: study.search.prior,
            BUDGET_KEY: int(trials if trials is not None else study.search.trials),
            RANK_LOSS_KEY: study.train.rank_loss,
            METRIC_KEY: metric,
            FLOPS_BUDGET_KEY: study.search.max_mflops,  # read by older mro-search
            OBJECTIVES_KEY: objectives.to_attr(),
            TABLES_KEY: tables,
            HARDWARE_KEY: hardware,
            LIMIT_TABLES_KEY: limit_tables(evaluator.model, evaluator.flops, objectives),
            SCORING_KEY: study.scoring_sha256,
            CONFIG_KEY: json.dumps(stored_config(study), sort_keys=True),
            STUDY_DIR_KEY: str(study.base_dir.resolve()),
            ARTIFACTS_KEY: location,
            FULL_MASK_KEY: {"mask": full["mask"], "metrics": full["metrics"], **full_costs},
            CHECKPOINT_KEY: {"artifact_id": artifact_id, "identity": checkpoint.identity, "sha256": sha, "file": f"{checkpoint.short_id}.pt"},
        }
        study_id = create_marked_study(storage, name, objectives.directions, attrs)
        try:
            store = artifacts.open_store(location, create=True)
            created = optuna.load_study(study_name=name, storage=storage)
            artifacts.upload(store, location, created, path, mimetype="application/octet-stream", artifact_id=artifact_id)
            stored = hashlib.sha256(artifacts.read(store, location, artifact_id)).hexdigest()
            if stored != sha:
                raise CheckpointError(f"checkpoint artifact {artifact_id} in {location} reads back other bytes than were written "
                                      f"(SHA-256 {stored[:12]}…, written {sha[:12]}…); check the store")
            created.set_metric_names(objectives.names)
            storage.set_study_system_attr(study_id, FORMAT_KEY, STUDY_FORMAT)  # last: the study is whole
        except BaseException as exc:
            _undo(storage, study_id, name, location, artifact_id, exc)
            raise
    return SearchStudy(created, url)


def _undo(storage: Any, study_id: int, name: str, location: str, artifact_id: str, exc: BaseException) -> None:
    """A creation failed: remove the half-made study (what it uploaded with it). When the study
    is gone already (``delete`` removed it meanwhile) say so."""
    try:
        attrs = storage.get_study_system_attrs(study_id)
    except KeyError:
        if isinstance(exc, Exception) and not isinstance(exc, MROError):
            raise ConfigError(f"study {name!r} was deleted while it was being created (mro-search delete); nothing is left of it") from exc
        return
    try:
        remove_study(storage, study_id, attrs, location, artifact_id)
    except Exception:
        log.debug("could not remove the half-made study %r", name, exc_info=True)


class _checkpoint_file:
    """The checkpoint's file, or a temporary copy of one loaded from bytes."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Path:
        if self.checkpoint.path is not None and Path(self.checkpoint.path).is_file():
            return Path(self.checkpoint.path)
        self.tmp = tempfile.TemporaryDirectory(prefix="mro-checkpoint-")
        c = self.checkpoint
        return save_checkpoint(Path(self.tmp.name) / f"{c.short_id}.pt", c.model, c.prior, c.config, c.history)

    def __exit__(self, *exc: Any) -> None:
        if self.tmp is not None:
            self.tmp.cleanup()


