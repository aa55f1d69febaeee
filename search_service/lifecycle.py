"""A study's life: created once, joined from anywhere, deleted on request.

**Create** (``creation.create_search``, by ``mro-search run``). The study is created with its
checkpoint uploaded to its artifact store (``artifacts.py``) and everything a worker needs
recorded as study system attributes: the path names, the pretrained prior, the budget, the
metric, the study configuration (storage password removed), the artifact store, which artifact
is the checkpoint (identity and file SHA-256), its own files (``mro:files``), and last the mark
``mro:format`` that says it is whole. Until then it is half-made (``ownership``).

**Own what is yours.** Every command refuses, in one line and before writing anything, a study
of that name that mro-search did not make (no mark), or whose directions, metric, paths or
scoring configuration differ from the study file it was given; and one that is half-made or
being deleted, saying which command finishes it. Commands that only read
(``pareto``, ``report``, ``export``, ``dashboard``, ``resume``, ``worker``, ``delete``) open
the storage without creating a database file, a table or a study (``open_storage``).

**Join** (``join_search``). A machine with only the package and the storage URL joins a study
by name: the configuration comes from the study, the checkpoint from the artifact store
(verified against the identity and SHA-256 the study recorded). A study file given as well
must describe the same study.

**Checkpoints** stay immutable (``supernet.checkpoint``): training again writes a new file and
never invalidates the one a study was made with; a study always scores with its own.

**Delete** (``deletion.delete_search``): marked first, then the study, its artifacts (the
checkpoint last), its default database file when no other study is left in it, its local report
and the folders its creation made.

**Own files** (``own_dir``): ``runs/NAME`` for the study in its default database, else
``runs/NAME/BACKEND-HASH`` (keyed by the storage URL without its password).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection

from search_service import artifacts
from search_service.evaluator import objective_metric
from search_service.keys import CREATING_KEY, DELETING_KEY
from search_service.objectives import Objectives
from search_service.ownership import (
    CREATING,
    DELETING,
    is_alive,
    life_state,
    who,
)
from search_service.sampler import BUDGET_KEY
from search_service.search import (
    ARTIFACTS_KEY,
    CONFIG_KEY,
    FORMAT_KEY,
    METRIC_KEY,
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
)
from supernet.errors import CheckpointError, ConfigError

log = logging.getLogger("mro_search")

DIRECTIONS = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]  # the default objectives: the metric up, MFLOPs down


# --- finding and owning a study ---------------------------------------------------------------


def find_study(storage, name: str):
    for summary in storage.get_all_studies():
        if summary.study_name == name:
            return summary
    return None


def check_owned(name: str, url: str, summary, attrs: dict[str, Any], *, allow: tuple[str, ...] = ()) -> None:
    """Refuse a study that mro-search did not make, or whose directions are not ours; and one
    that is half-made or being deleted (``ownership``), unless ``allow`` names that state."""
    where = mask_password(url)
    state = life_state(attrs, FORMAT_KEY, STUDY_FORMAT)
    if state == DELETING and DELETING not in allow:
        raise ConfigError(
            f"study {name!r} in {where} is being deleted (by {who(attrs[DELETING_KEY])}); "
            f"finish that with `mro-search delete --study {name} --yes`"
        )
    if state == CREATING and CREATING not in allow:
        mark = attrs[CREATING_KEY]
        how = {True: "still running", False: "that process is gone"}.get(is_alive(mark), "on another machine")
        raise ConfigError(
            f"study {name!r} in {where} is half-made: its creation by {who(mark)} has not finished ({how}); "
            f"`mro-search run --study {name}` finishes it, `mro-search delete --study {name} --yes` removes it"
        )
    if state is None:
        if BUDGET_KEY in attrs:  # made by mro-search 0.1 (checkpoint by path, no artifact store)
            raise ConfigError(
                f"study {name!r} in {where} was made by an older mro-search (no artifact store); "
                f"start it over with `mro-search delete --study {name} --yes`"
            )
        raise ConfigError(
            f"study {name!r} in {where} was not created by mro-search; it is left alone: "
            "give this search another study name or another --storage"
        )
    objectives = Objectives.from_attrs(attrs, str(attrs.get(METRIC_KEY, "")))
    if list(summary.directions) != objectives.directions:
        got = ", ".join(d.name.lower() for d in summary.directions)
        want = ", ".join(f"{d.name.lower()} {n}" for d, n in zip(objectives.directions, objectives.names))
        raise ConfigError(f"study {name!r} in {where} has directions ({got}), not ({want}); use another study name")


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
    stored, wanted = Objectives.from_attrs(attrs, metric), Objectives.from_config(study.search, metric)
    if stored.names != wanted.names or dict(stored.limits) != dict(wanted.limits):
        def said(o: Objectives) -> str:
            limits = ", ".join(f"{q} <= {v:g}" for q, v in o.limits.items())
            return f"{o.names}" + (f" with {limits}" if limits else "")
        raise ConfigError(
            f"study {search.name!r} in {where} searches {said(stored)}, but {study.path} says {said(wanted)}; "
            "use another study name for other objectives or limits"
        )
    if attrs.get(SCORING_KEY) != study.scoring_sha256:
        raise ConfigError(
            f"{study.path} describes other [data] or [model] settings than study {search.name!r} in {where} was created with; "
            f"use another study name, or start over with `mro-search delete --study {search.name} --yes`"
        )


def load_search(name: str, url: str, *, allow: tuple[str, ...] = ()) -> SearchStudy:
    """Open an existing study that mro-search made, creating nothing (``check_owned``)."""
    optuna_quiet()
    try:
        storage = open_storage(url, create=False)
    except NoDatabase as exc:
        raise ConfigError(f"no study named {name!r}: {exc}; create it with `mro-search run --study {name}`") from exc
    summary = find_study(storage, name)
    if summary is None:
        raise ConfigError(f"no study named {name!r} in {mask_password(url)}; create it with `mro-search run --study {name}`")
    attrs = storage.get_study_system_attrs(summary._study_id)
    check_owned(name, url, summary, attrs, allow=allow)
    return SearchStudy(optuna.load_study(study_name=name, storage=storage), url)


def existing_search(name: str, url: str) -> SearchStudy | None:
    """The study ``name`` if the storage holds one (refused if mro-search did not make it, or
    while it is being deleted); None when there is no such study, no database file or no Optuna
    tables yet, and for a half-made study (``run`` finishes it). Creates nothing."""
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
    if life_state(attrs, FORMAT_KEY, STUDY_FORMAT) == CREATING:
        return None
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


def join_search(name_or_path: str, cli_storage: str | None, *, allow: tuple[str, ...] = ()) -> Joined:
    """The study named by ``--study``, from its file if there is one here, else from storage;
    ``allow``: states of a study that are not refused (``delete`` takes a half-made study, and
    one whose deletion was cut off)."""
    file = study_file_or_none(name_or_path)
    if file is not None:
        study = load_study(str(file))
        url = resolve_url(study, cli_storage)
        search = load_search(study.name, url, allow=allow)
        if FORMAT_KEY in search.attrs:  # a half-made study may lack what is compared
            check_matches(search, study)
        return Joined(study, search, True)
    name = check_study_name(name_or_path)
    url = resolve_url(None, cli_storage, name=name)
    search = load_search(name, url, allow=allow)
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


def own_dir(study: Study, url: str) -> Path:
    """The folder of a study's own files (its report, its default artifact store): the run
    directory for the study's default SQLite database (``runs/NAME``, as before), else a folder in
    it keyed by the storage, ``runs/NAME/BACKEND-HASH``: two studies of one name on two storages
    never share a file."""
    db = sqlite_file(url)
    if db is not None and db.resolve() == (study.run_dir / "study.db").resolve():
        return study.run_dir
    where = mask_password(url)
    backend = where.split(":", 1)[0].split("+", 1)[0] or "storage"
    return study.run_dir / f"{backend}-{hashlib.sha256(where.encode('utf-8')).hexdigest()[:10]}"


def report_path(study: Study, url: str) -> Path:
    """Where ``run``, ``resume`` and ``report`` write a study's report by default."""
    return own_dir(study, url) / "report.html"


def stored_config(study: Study) -> dict[str, Any]:
    """The study configuration as the study records it: the storage URL without its password
    (the attributes are shown by optuna-dashboard and copied into reports)."""
    config = study.as_dict()
    if config["search"].get("storage"):
        config["search"]["storage"] = mask_password(config["search"]["storage"])
    return config




def short(identity: str) -> str:
    return identity[:SHORT_ID]
