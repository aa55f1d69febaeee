"""Deleting a study, safe against the workers that still search it, and against being killed.

``delete_search`` (by ``mro-search delete``):

1. marks the study ``mro:deleting`` (``ownership``): workers stop at their next trial with one
   line, and no command joins it any more;
2. removes its artifacts but the checkpoint; writes the *pending deletion record* (below); then
   removes the study (Optuna's delete, tried again while a trial inserted at that moment makes it
   fail), and looks it up again: a study still there is a one-line error (exit 2), its checkpoint
   artifact kept (and the record dropped), and ``delete`` can be run again;
3. removes the checkpoint artifact, last of the artifacts: a study that stays keeps it;
4. removes the study's own files: its report, its default database file when no other study is
   left in it, its checkpoint when it is not the latest training; then the record; then the
   folders its creation made (``mro:files``) when they are empty. Never a folder it did not make
   (the store that ``$MRO_ARTIFACTS`` names stays), never another study's files.

Once the study is gone nothing in the storage names its checkpoint artifact or its files, so a
``delete`` killed between 2 and 4 would leave them orphaned. The pending deletion record says
what is left: ``RUN_DIR/.mro-deleting-NAME-HASH.json`` (``pending_path``; HASH of the storage URL,
password masked), written whole or not at all (``supernet.files.write_file``) just before the
study goes, holding the artifact store's location, the checkpoint artifact's id and the files
and folders to remove. Running ``mro-search delete --study NAME --yes`` again (the same study
file or name and storage) finds no study but the record, finishes the removal
(``finish_cut_off``) and says so in one line, exit 0. A ``run`` that makes a new study of that
name meanwhile is not in the way: its checkpoint is another artifact, and its own ``delete``
first removes the earlier study's checkpoint artifact that the record names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from search_service import artifacts
from search_service.keys import DELETING_KEY, FILES_KEY
from search_service.lifecycle import (
    Joined,
    artifacts_location,
    find_study,
    own_dir,
    study_file_or_none,
)
from search_service.ownership import StudyNotGone, remove_study, stamp
from search_service.storage import NoDatabase, mask_password, open_storage, resolve_url
from search_service.study_file import check_study_name, load_study
from supernet.checkpoint import checkpoint_file, latest_checkpoint
from supernet.errors import ConfigError, MROError
from supernet.files import write_file

log = logging.getLogger("mro_search")

PENDING_PREFIX = ".mro-deleting-"  # RUN_DIR/.mro-deleting-NAME-HASH.json: what a cut-off delete left to remove


def delete_search(joined: Joined, *, artifacts_override: str | None = None) -> dict[str, Any]:
    """Delete the study, its artifacts and its own files (the module's docstring says in which
    order). Checkpoints trained here stay (``RUN_DIR/checkpoints``), but the study's own if it is
    not the latest training. Returns what was removed."""
    search = joined.search
    name, url = search.name, search.url
    storage, study_id = search.optuna_study._storage, search.optuna_study._study_id
    if DELETING_KEY not in search.attrs:
        storage.set_study_system_attr(study_id, DELETING_KEY, stamp())  # first: workers stop, nothing joins
    attrs = search.attrs  # read again: an artifact uploaded meanwhile is in it
    record = search.checkpoint_record
    try:
        location = artifacts_location(search, artifacts_override)
    except ConfigError:
        location = None
    removed: dict[str, Any] = {"study": name, "storage": mask_password(url), "artifacts": 0, "files": []}
    pending = pending_path(joined.study.run_dir, name, url)
    removed["artifacts"] += _finish_earlier(pending, keep=record.get("artifact_id"))
    files, folders = _own_files(joined, attrs, record, location)
    note = {"study": name, "storage": mask_password(url), "location": location, "checkpoint": record.get("artifact_id"),
            "files": [str(f) for f in files], "folders": [str(f) for f in folders]}
    try:
        removed["artifacts"] += remove_study(storage, study_id, attrs, location, record.get("artifact_id"),
                                             before_delete=lambda: _write_pending(pending, note))
    except StudyNotGone as exc:
        pending.unlink(missing_ok=True)  # the study stays and names its checkpoint itself
        raise MROError(
            f"study {name!r} in {mask_password(url)} was not deleted: {exc}; it is marked as being deleted (its workers stop "
            f"at their next trial) and keeps its checkpoint artifact: run `mro-search delete --study {name} --yes` again"
        ) from exc
    removed["files"] = _finish(pending, note, run_dir=joined.study.run_dir, url=url, storage=storage)
    return removed


def pending_path(run_dir: Path, name: str, url: str) -> Path:
    """Where ``delete`` records what is left to remove once study ``name`` of storage ``url`` is
    gone: in the study's run directory, which a ``delete`` run again with the same study file or
    name finds; one record per study name and storage."""
    key = hashlib.sha256(mask_password(url).encode("utf-8")).hexdigest()[:10]
    return Path(run_dir).resolve() / f"{PENDING_PREFIX}{name}-{key}.json"


def finish_cut_off(name_or_path: str, cli_storage: str | None, *, artifacts_override: str | None = None) -> dict[str, Any] | None:
    """Finish a ``delete`` that was killed after the study's removal: when the storage holds no
    study of the name but its pending deletion record is there, remove the checkpoint artifact
    and files that the record names, and the record. Returns what was removed (as
    ``delete_search``), or None when there is nothing to finish (or the storage cannot say that
    the study is gone: a study that is still there keeps its checkpoint). ``artifacts_override``
    (``--artifacts``): where this machine sees the store the record names."""
    file = study_file_or_none(name_or_path)
    if file is not None:
        study = load_study(str(file))
        name, run_dir, url = study.name, study.run_dir, resolve_url(study, cli_storage)
    else:
        name = check_study_name(name_or_path)
        run_dir, url = Path("runs") / name, resolve_url(None, cli_storage, name=name)
    pending = pending_path(run_dir, name, url)
    note = _read_pending(pending)
    if note is None:
        return None
    try:
        storage = open_storage(url, heartbeat=False, create=False)
    except NoDatabase:
        storage = None  # no database file: no study in it
    except Exception:  # unreachable, or not an Optuna database: the study may be there
        return None
    if storage is not None and find_study(storage, name) is not None:
        return None  # the study is there: the ordinary delete removes it
    if artifacts_override:
        note["location"] = artifacts.normalize(artifacts_override)
    removed = _remove_checkpoint(note)
    files = _finish(pending, note, run_dir=run_dir, url=url, storage=storage)
    return {"study": name, "storage": mask_password(url), "artifacts": removed, "files": files, "cut_off": True}


def _finish_earlier(pending: Path, *, keep: str | None) -> int:
    """The checkpoint artifact of an earlier study of this name whose ``delete`` was cut off
    (a ``run`` made the study again since): removed, unless it is this study's own (a delete cut
    off before the study went). Returns how many artifacts were removed."""
    note = _read_pending(pending)
    if note is None or note.get("checkpoint") in (None, keep):
        return 0
    try:
        return _remove_checkpoint(note)
    except MROError as exc:  # this study's delete goes on; the earlier artifact is named once more
        log.warning(f"mro-search: warning: an earlier delete of study {note.get('study')} left {exc}")
        return 0


def _write_pending(pending: Path, note: dict[str, Any]) -> None:
    """Write the pending deletion record (a run directory made for it is among the folders to
    remove). A record that cannot be written is a one-line warning: the delete goes on as it did
    before records, and only a kill before its end would orphan the checkpoint artifact."""
    made = [p for p in (pending.parent, *pending.parent.parents) if not p.exists()]
    note["folders"] = [*note["folders"], *(str(p) for p in made)]
    try:
        write_file(pending, json.dumps(note, indent=1), what="the pending deletion record", parents=True)
    except MROError as exc:
        log.warning(f"mro-search: warning: {' '.join(str(exc).split())[:300]}; a delete cut off now would leave checkpoint "
                    f"artifact {note.get('checkpoint')} in {note.get('location')}")


def _read_pending(pending: Path) -> dict[str, Any] | None:
    try:
        note = json.loads(pending.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def _remove_checkpoint(note: dict[str, Any]) -> int:
    """Remove the checkpoint artifact a pending deletion record names; 1 if it was there."""
    location, artifact_id = note.get("location"), note.get("checkpoint")
    if not (isinstance(location, str) and isinstance(artifact_id, str)):
        return 0
    try:
        store = artifacts.open_store(location)
        return int(artifacts.remove(store, artifact_id))
    except (FileNotFoundError, NotADirectoryError):  # no store there: nothing to remove
        return 0
    except Exception as exc:
        raise MROError(f"checkpoint artifact {artifact_id} in {location} was not removed ({' '.join(str(exc).split())[:200]}); "
                       f"run `mro-search delete --study {note.get('study')} --yes` again once the store can be reached") from exc


def _own_files(joined: Joined, attrs: dict[str, Any], record: dict[str, Any], location: str | None) -> tuple[list[Path], list[Path]]:
    """The study's own files (but its default database file: ``_default_db``) and the folders its
    creation made, to remove once it is gone."""
    run_dir, url = joined.study.run_dir, joined.search.url
    files_record = attrs.get(FILES_KEY) if isinstance(attrs.get(FILES_KEY), dict) else None
    folder = own_dir(joined.study, url)
    files: list[Path] = []
    if files_record is not None or folder == run_dir:
        # a study from before mro:files shares RUN_DIR/report.html with every study of its name:
        # only the one in the default database owned it
        files.append(folder / "report.html")
    identity = record.get("identity")
    if identity:
        own = checkpoint_file(run_dir, identity)
        latest = latest_checkpoint(run_dir)
        if latest is None or latest.resolve() != own.resolve():
            files.append(own)
    if files_record is not None:
        folders = [Path(p) for p in files_record.get("made") or []]
        if folder != run_dir:  # RUN_DIR/BACKEND-HASH: a folder only mro-search names so
            folders.append(folder)
    else:  # before mro:files: the default store RUN_DIR/artifacts was the study's own
        default_store = str((run_dir / "artifacts").resolve())
        folders = [Path(location)] if location == default_store else []
    return files, folders


def _finish(pending: Path, note: dict[str, Any], *, run_dir: Path, url: str, storage: Any) -> list[str]:
    """Once the study is gone: its files and default database file, the record, then its
    folders (innermost first, only if empty). Returns the files removed."""
    files = [Path(f) for f in note.get("files") or [] if isinstance(f, str)] + _default_db(run_dir, url, storage)
    gone = []
    for file in files:
        if file.is_file():
            file.unlink()
            gone.append(str(file))
    pending.unlink(missing_ok=True)
    folders = [Path(p) for p in note.get("folders") or [] if isinstance(p, str)]
    for path in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()  # only if empty
    return gone


def _default_db(run_dir: Path, url: str, storage: Any) -> list[Path]:
    """The default database file ``RUN_DIR/study.db`` (and its WAL files) when it is the study's
    storage and no other study is left in it; the storage is closed first."""
    default_db = (Path(run_dir) / "study.db").resolve()
    if url != f"sqlite:///{default_db}" or (storage is not None and storage.get_all_studies()):
        return []
    if storage is not None:
        getattr(storage, "_backend", storage).engine.dispose()
    return [default_db, Path(f"{default_db}-wal"), Path(f"{default_db}-shm")]
