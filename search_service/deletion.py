"""Deleting a study, safe against the workers that still search it.

``delete_search`` (by ``mro-search delete``):

1. marks the study ``mro:deleting`` (``ownership``): workers stop at their next trial with one
   line, and no command joins it any more;
2. removes its artifacts but the checkpoint, then the study (Optuna's delete, tried again while a
   trial inserted at that moment makes it fail), and looks it up again: a study still there is a
   one-line error (exit 2), its checkpoint artifact kept, and ``delete`` can be run again;
3. removes the checkpoint artifact, last;
4. removes the study's own files: its report, its default database file when no other study is
   left in it, its checkpoint when it is not the latest training, and the folders its creation
   made (``mro:files``) when they are empty. Never a folder it did not make (the store that
   ``$MRO_ARTIFACTS`` names stays), never another study's files.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from search_service.keys import DELETING_KEY, FILES_KEY
from search_service.lifecycle import Joined, artifacts_location, own_dir
from search_service.ownership import StudyNotGone, remove_study, stamp
from search_service.storage import mask_password
from supernet.checkpoint import checkpoint_file, latest_checkpoint
from supernet.errors import ConfigError, MROError

log = logging.getLogger("mro_search")


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
    try:
        removed["artifacts"] = remove_study(storage, study_id, attrs, location, record.get("artifact_id"))
    except StudyNotGone as exc:
        raise MROError(
            f"study {name!r} in {mask_password(url)} was not deleted: {exc}; it is marked as being deleted (its workers stop "
            f"at their next trial) and keeps its checkpoint artifact: run `mro-search delete --study {name} --yes` again"
        ) from exc
    removed["files"] = _remove_files(joined, attrs, record, location, storage)
    return removed


def _remove_files(joined: Joined, attrs: dict[str, Any], record: dict[str, Any], location: str | None, storage: Any) -> list[str]:
    """The study's own files and the folders its creation made (when empty); returns the files."""
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
    default_db = (run_dir / "study.db").resolve()
    if url == f"sqlite:///{default_db}" and not storage.get_all_studies():
        getattr(storage, "_backend", storage).engine.dispose()
        files += [default_db, Path(f"{default_db}-wal"), Path(f"{default_db}-shm")]
    gone = []
    for file in files:
        if file.is_file():
            file.unlink()
            gone.append(str(file))
    if files_record is not None:
        folders = [Path(p) for p in files_record.get("made") or []]
        if folder != run_dir:  # RUN_DIR/BACKEND-HASH: a folder only mro-search names so
            folders.append(folder)
    else:  # before mro:files: the default store RUN_DIR/artifacts was the study's own
        default_store = str((run_dir / "artifacts").resolve())
        folders = [Path(location)] if location == default_store else []
    for path in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # innermost first
        with contextlib.suppress(OSError):
            path.rmdir()  # only if empty
    return gone
