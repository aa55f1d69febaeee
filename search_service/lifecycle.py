"""A study's life: created once, joined from anywhere, deleted on request.

**Create** (``create_search``, by ``mro-search run``). The study is created with its checkpoint
uploaded to its artifact store (``artifacts.py``) and everything a worker needs recorded as
study system attributes: the path names, the pretrained prior, the budget, the metric, the
study configuration (storage password removed), the artifact store, which artifact is the
checkpoint (identity and file SHA-256), and last the mark ``mro:format`` that says mro-search
made it. A failure on the way deletes the half-made study and its uploaded checkpoint.

**Own what is yours.** Every command refuses, in one line and before writing anything, a study
of that name that mro-search did not make (no mark), or whose directions, metric, paths or
scoring configuration differ from the study file it was given. Commands that only read
(``pareto``, ``report``, ``export``, ``dashboard``, ``resume``, ``worker``, ``delete``) open
the storage without creating a database file, a table or a study (``open_storage``).

**Join** (``join_search``). A machine with only the package and the storage URL joins a study
by name: the configuration comes from the study, the checkpoint from the artifact store
(verified against the identity and SHA-256 the study recorded). A study file given as well
must describe the same study.

**Checkpoints** stay immutable (``supernet.checkpoint``): training again writes a new file and
never invalidates the one a study was made with; a study always scores with its own.

**Delete** (``delete_search``): the study, its artifacts, its default database file when no
other study is left in it, and its local report.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection

from search_service import artifacts
from search_service.evaluator import Evaluator, objective_metric
from search_service.sampler import BUDGET_KEY, PATHS_KEY, PRIOR_KEY, RANK_LOSS_KEY
from search_service.search import (
    ARTIFACTS_KEY,
    CHECKPOINT_KEY,
    CONFIG_KEY,
    FLOPS_BUDGET_KEY,
    FORMAT_KEY,
    FULL_MASK_KEY,
    METRIC_KEY,
    MFLOPS,
    SCORING_KEY,
    STUDY_DIR_KEY,
    STUDY_FORMAT,
    SearchStudy,
)
from search_service.storage import (
    NoDatabase,
    mask_password,
    open_storage,
    optuna_quiet,
    resolve_url,
    sqlite_file,
)
from search_service.study_file import (
    Study,
    check_study_name,
    find_study_file,
    load_study,
    parse_study,
)
from supernet.checkpoint import (
    SHORT_ID,
    Checkpoint,
    checkpoint_file,
    file_sha256,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from supernet.errors import CheckpointError, ConfigError

log = logging.getLogger("mro_search")

DIRECTIONS = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]  # the metric up, MFLOPs down


# --- finding and owning a study ---------------------------------------------------------------


def find_study(storage, name: str):
    for summary in storage.get_all_studies():
        if summary.study_name == name:
            return summary
    return None


def check_owned(name: str, url: str, summary, attrs: dict[str, Any]) -> None:
    """Refuse a study that mro-search did not make, or whose directions are not ours."""
    where = mask_password(url)
    if attrs.get(FORMAT_KEY) != STUDY_FORMAT:
        if BUDGET_KEY in attrs:  # made by mro-search 0.1 (checkpoint by path, no artifact store)
            raise ConfigError(
                f"study {name!r} in {where} was made by an older mro-search (no artifact store); "
                f"start it over with `mro-search delete --study {name} --yes`"
            )
        raise ConfigError(
            f"study {name!r} in {where} was not created by mro-search; it is left alone: "
            "give this search another study name or another --storage"
        )
    if list(summary.directions) != DIRECTIONS:
        got = ", ".join(d.name.lower() for d in summary.directions)
        raise ConfigError(f"study {name!r} in {where} has directions ({got}), not (maximize metric, minimize MFLOPs); use another study name")


def check_matches(search: SearchStudy, study: Study) -> None:
    """Refuse a study file that describes another study than the one in storage."""
    attrs = search.attrs
    where = mask_password(search.url)
    metric = objective_metric(study)
    if attrs.get(METRIC_KEY) != metric:
        raise ConfigError(
            f"study {search.name!r} in {where} maximizes {attrs.get(METRIC_KEY)!r}, but {study.path} says {metric!r}; "
            "use another study name for another metric"
        )
    if attrs.get(SCORING_KEY) != study.scoring_sha256:
        raise ConfigError(
            f"{study.path} describes other [data] or [model] settings than study {search.name!r} in {where} was created with; "
            f"use another study name, or start over with `mro-search delete --study {search.name} --yes`"
        )


def load_search(name: str, url: str) -> SearchStudy:
    """Open an existing study that mro-search made, creating nothing."""
    optuna_quiet()
    try:
        storage = open_storage(url, create=False)
    except NoDatabase as exc:
        raise ConfigError(f"no study named {name!r}: {exc}; create it with `mro-search run --study {name}`") from exc
    summary = find_study(storage, name)
    if summary is None:
        raise ConfigError(f"no study named {name!r} in {mask_password(url)}; create it with `mro-search run --study {name}`")
    attrs = storage.get_study_system_attrs(summary._study_id)
    check_owned(name, url, summary, attrs)
    return SearchStudy(optuna.load_study(study_name=name, storage=storage), url)


def existing_search(name: str, url: str) -> SearchStudy | None:
    """The study ``name`` if the storage holds one (refused if mro-search did not make it);
    None when there is no such study, no database file or no Optuna tables yet. Creates
    nothing."""
    optuna_quiet()
    try:
        storage = open_storage(url, create=False)
    except NoDatabase:
        return None
    except ConfigError as exc:
        if "not an Optuna database" in str(exc):
            return None
        raise
    summary = find_study(storage, name)
    if summary is None:
        return None
    attrs = storage.get_study_system_attrs(summary._study_id)
    check_owned(name, url, summary, attrs)
    return SearchStudy(optuna.load_study(study_name=name, storage=storage), url)


@dataclass
class Joined:
    """A study found in storage, with its configuration and where it came from."""

    study: Study
    search: SearchStudy
    from_file: bool  # the configuration came from a study file here (else from the study)


def study_file_or_none(name_or_path: str) -> Path | None:
    """The study file for ``--study``: None for a plain name with no file here (the study is then
    known from its storage alone); a path that does not exist is an error."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.parent != Path("."):
        return find_study_file(name_or_path)
    try:
        return find_study_file(name_or_path)
    except ConfigError:
        return None


def join_search(name_or_path: str, cli_storage: str | None) -> Joined:
    """The study named by ``--study``, from its file if there is one here, else from storage."""
    file = study_file_or_none(name_or_path)
    if file is not None:
        study = load_study(str(file))
        url = resolve_url(study, cli_storage)
        search = load_search(study.name, url)
        check_matches(search, study)
        return Joined(study, search, True)
    name = check_study_name(name_or_path)
    url = resolve_url(None, cli_storage, name=name)
    search = load_search(name, url)
    return Joined(stored_study(search), search, False)


def stored_study(search: SearchStudy) -> Study:
    """The study configuration recorded in the study (for a machine without the study file)."""
    attrs = search.attrs
    try:
        raw = json.loads(attrs[CONFIG_KEY])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"study {search.name!r} holds no readable configuration; it was not made by this mro-search") from exc
    raw = dict(raw)
    raw["search"] = {k: v for k, v in (raw.get("search") or {}).items() if k != "storage"}
    folder = Path(str(attrs.get(STUDY_DIR_KEY) or "."))
    return parse_study(raw, folder / f"{search.name}.toml")


# --- the study's checkpoint ---------------------------------------------------------------------


def study_checkpoint(search: SearchStudy, run_dir: Path, *, artifacts_override: str | None = None) -> Checkpoint:
    """The checkpoint the study was created with: the local copy in ``RUN_DIR/checkpoints`` if
    it is there and intact, else read from the study's artifact store (nothing is written)."""
    record = search.checkpoint_record
    identity, sha, artifact_id = record.get("identity"), record.get("sha256"), record.get("artifact_id")
    if not (identity and sha and artifact_id):
        raise CheckpointError(f"study {search.name!r} records no checkpoint artifact; start it over with `mro-search delete --study {search.name} --yes`")
    local = checkpoint_file(run_dir, identity)
    if local.is_file() and file_sha256(local) == sha:
        return load_checkpoint(local, expected_identity=identity)
    location = artifacts_location(search, artifacts_override)
    store = artifacts.open_store(location)
    data = artifacts.read(store, location, artifact_id)
    if hashlib.sha256(data).hexdigest() != sha:
        raise CheckpointError(
            f"checkpoint artifact {artifact_id} in {location} is not the one study {search.name!r} recorded "
            f"(SHA-256 {hashlib.sha256(data).hexdigest()[:12]}…, recorded {sha[:12]}…): the store was changed"
        )
    checkpoint = load_checkpoint(data, expected_identity=identity, source=f"checkpoint artifact {artifact_id} in {location}")
    return checkpoint


def artifacts_location(search: SearchStudy, override: str | None = None) -> str:
    value = override or os.environ.get(artifacts.ENV_VAR) or search.attrs.get(ARTIFACTS_KEY)
    if not value:
        raise ConfigError(f"study {search.name!r} records no artifact store; give one with --artifacts")
    return artifacts.normalize(str(value))


def local_checkpoint(study: Study, given: str | None = None) -> Checkpoint:
    """A checkpoint for a study file: ``given`` (a file), else the latest training in its run
    directory; it must have been trained for the study's data and model."""
    path = Path(given) if given else latest_checkpoint(study.run_dir)
    if path is None:
        raise CheckpointError(f"no supernet checkpoint in {study.run_dir / 'checkpoints'}; train one with `mro-search train --study {study.name}`")
    return load_checkpoint(path, expected_scoring=study.scoring_sha256)


# --- creating a study ---------------------------------------------------------------------------


def create_search(
    study: Study,
    url: str,
    evaluator: Evaluator,
    *,
    trials: int | None = None,
    artifacts_at: str | None = None,
) -> SearchStudy:
    """Create the study in storage (or load it if it exists, after checking it is this one)."""
    optuna_quiet()
    location = artifacts.resolve_location(study, artifacts_at)
    new_paths = _missing_paths(sqlite_file(url)) + (_missing_paths(Path(location)) if not location.startswith("s3://") else [])
    storage = None
    try:
        storage = open_storage(url, create=True)
        return _create_or_load(study, url, storage, evaluator, trials, location)
    except BaseException:
        # nothing half-made is left: the SQLite file and the folders this call made go again
        _dispose(storage)
        _remove_new(new_paths)
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


def _remove_new(paths: list[Path]) -> None:
    """Remove what a failed creation made: files (a SQLite database with its journal files) and
    the folders, innermost first, each only if it is empty by then."""
    for path in reversed(paths):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # OSError (suppressed) when something else is in it by now
            else:
                for extra in ("-wal", "-shm", "-journal"):
                    Path(f"{path}{extra}").unlink(missing_ok=True)
                path.unlink(missing_ok=True)


def _create_or_load(study: Study, url: str, storage: Any, evaluator: Evaluator, trials: int | None, location: str) -> SearchStudy:
    name = study.name
    summary = find_study(storage, name)
    if summary is not None:
        attrs = storage.get_study_system_attrs(summary._study_id)
        check_owned(name, url, summary, attrs)
        search = SearchStudy(optuna.load_study(study_name=name, storage=storage), url)
        check_matches(search, study)
        from search_service.search import check_checkpoint

        check_checkpoint(search, evaluator.checkpoint)
        if trials is not None and trials != search.budget:
            storage.set_study_system_attr(summary._study_id, BUDGET_KEY, int(trials))
        return search
    checkpoint = evaluator.checkpoint
    metric = objective_metric(study)
    store = artifacts.open_store(location, create=True)
    full = evaluator.evaluate((1,) * evaluator.model.num_paths, study.search.split)
    attrs = {
        PATHS_KEY: evaluator.path_names,
        PRIOR_KEY: [float(q) for q in checkpoint.prior.path_probs().detach()],
        BUDGET_KEY: int(trials if trials is not None else study.search.trials),
        RANK_LOSS_KEY: study.train.rank_loss,
        METRIC_KEY: metric,
        FLOPS_BUDGET_KEY: study.search.flops_budget,
        SCORING_KEY: study.scoring_sha256,
        CONFIG_KEY: json.dumps(stored_config(study), sort_keys=True),
        STUDY_DIR_KEY: str(study.base_dir.resolve()),
        ARTIFACTS_KEY: location,
        FULL_MASK_KEY: {"mask": full["mask"], "metrics": full["metrics"], "mflops": full["mflops"]},
    }
    created = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"])
    artifact_id = None
    try:
        with _checkpoint_file(checkpoint) as path:
            sha = file_sha256(path)
            artifact_id = artifacts.upload(store, location, created, path, mimetype="application/octet-stream")
        attrs[CHECKPOINT_KEY] = {"artifact_id": artifact_id, "identity": checkpoint.identity, "sha256": sha, "file": f"{checkpoint.short_id}.pt"}
        for key, value in attrs.items():
            storage.set_study_system_attr(created._study_id, key, value)
        created.set_metric_names([metric, MFLOPS])
        storage.set_study_system_attr(created._study_id, FORMAT_KEY, STUDY_FORMAT)  # last: the study is whole
    except BaseException:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except Exception:
            log.debug("could not delete the half-made study %r", name, exc_info=True)
        if artifact_id is not None:
            try:
                artifacts.remove(store, artifact_id)
            except Exception:
                log.debug("could not remove artifact %s", artifact_id, exc_info=True)
        raise
    return SearchStudy(created, url)


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


def stored_config(study: Study) -> dict[str, Any]:
    """The study configuration as the study records it: the storage URL without its password
    (the attributes are shown by optuna-dashboard and copied into reports)."""
    config = study.as_dict()
    if config["search"].get("storage"):
        config["search"]["storage"] = mask_password(config["search"]["storage"])
    return config


# --- deleting a study ---------------------------------------------------------------------------


def delete_search(joined: Joined, *, artifacts_override: str | None = None) -> dict[str, Any]:
    """Delete the study, then its artifacts, its default database file if no other study is left
    in it, and its local report. Checkpoints trained here stay (``RUN_DIR/checkpoints``), but
    the study's own if it is not the latest training. Returns what was removed."""
    search = joined.search
    name, url = search.name, search.url
    attrs = search.attrs
    ids = artifacts.study_artifact_ids(attrs)
    record = search.checkpoint_record
    storage = search.optuna_study._storage
    try:
        location = artifacts_location(search, artifacts_override)
    except ConfigError:
        location = None
    optuna.delete_study(study_name=name, storage=storage)  # first: no worker can use it from now on
    removed: dict[str, Any] = {"study": name, "storage": mask_password(url), "artifacts": 0, "files": []}
    if location and ids:
        try:
            store = artifacts.open_store(location)
            removed["artifacts"] = sum(artifacts.remove(store, i) for i in ids)
        except Exception as exc:
            log.warning(f"mro-search: study deleted, but its artifacts in {location} were not removed ({exc})")
    run_dir = joined.study.run_dir
    files: list[Path] = [run_dir / "report.html"]
    identity = record.get("identity")
    if identity:
        own = checkpoint_file(run_dir, identity)
        latest = latest_checkpoint(run_dir)
        if latest is None or latest.resolve() != own.resolve():
            files.append(own)
    default_db = (run_dir / "study.db").resolve()
    if url == f"sqlite:///{default_db}" and not storage.get_all_studies():
        getattr(storage, "_backend", storage).engine.dispose()
        files += [default_db, Path(f"{default_db}-wal"), Path(f"{default_db}-shm")]
    for file in files:
        if file.is_file():
            file.unlink()
            removed["files"].append(str(file))
    if location and not location.startswith("s3://"):
        try:
            Path(location).rmdir()  # only if empty
        except OSError:
            pass
    return removed


def short(identity: str) -> str:
    return identity[:SHORT_ID]
