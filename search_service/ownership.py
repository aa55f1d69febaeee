"""Whose a study is, and in what state of its life: half-made, whole, or being deleted.

Operations on a study can be cut off (SIGKILL, SIGTERM, a crash, a full disk) or race one another
(two ``run``s creating one study, ``delete`` while workers search it). The marks here make every
such moment one that the next command recognises and finishes:

1. **Created marked.** ``create_marked_study`` writes the study, its directions and its first
   system attributes, among them ``mro:creating`` (who creates it, since when), in one
   transaction: there is no moment at which the study exists unmarked. The study is *half-made*
   until ``mro:format`` is written, last, once its checkpoint artifact is stored and verified.
   A half-made study whose creator is still running is waited for and joined (``run``); one whose
   creator is gone is removed and made again (``run``), or removed (``delete``).
2. **Deleted marked.** ``delete`` first writes ``mro:deleting``: workers stop at their next trial
   (``deletion_notice``), and no command joins the study; then the study goes, and is looked up
   again to check that it is gone; its checkpoint artifact goes last, named in a pending deletion
   record beside the study's files until then, so that a ``delete`` killed in between is
   finished by the next (``deletion``).
3. **Own files.** A study records the folder that holds its files and the folders its creation
   made (``mro:files``); ``delete`` removes those folders (when empty) and no other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.study import StudyDirection

from search_service import artifacts
from search_service.keys import CREATING_KEY, DELETING_KEY

log = logging.getLogger("mro_search")

WHOLE, CREATING, DELETING = "whole", "creating", "deleting"


def stamp() -> dict[str, Any]:
    """Who does something to a study, and since when: this process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": round(time.time(), 3)}


def who(mark: Any) -> str:
    """A mark as a reader sees it: ``host:pid since HH:MM:SS UTC``."""
    if not isinstance(mark, dict):
        return "another process"
    since = mark.get("since")
    when = time.strftime(" since %H:%M:%S UTC", time.gmtime(float(since))) if isinstance(since, (int, float)) else ""
    return f"{mark.get('host')}:{mark.get('pid')}{when}"


def is_alive(mark: Any) -> bool | None:
    """Whether the process of a mark still runs: True or False on this host, None elsewhere
    (another machine's processes cannot be seen from here)."""
    if not isinstance(mark, dict) or mark.get("host") != socket.gethostname() or not isinstance(mark.get("pid"), int):
        return None
    pid = mark["pid"]
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    with contextlib.suppress(OSError):  # a zombie (killed, not reaped yet) runs no more
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    return True


def life_state(attrs: dict[str, Any], format_key: str, study_format: str) -> str | None:
    """``deleting``, ``creating`` (half-made), ``whole``, or None: not made by this mro-search."""
    if DELETING_KEY in attrs:
        return DELETING
    if attrs.get(format_key) == study_format:
        return WHOLE
    if CREATING_KEY in attrs:
        return CREATING
    return None


def create_marked_study(storage: Any, name: str, directions: list[StudyDirection], attrs: dict[str, Any]) -> int:
    """Create study ``name`` with ``attrs`` as its first system attributes, in one transaction on
    an RDB storage (else one call after the other); returns its id. Raises Optuna's
    ``DuplicatedStudyError`` when a study of that name exists (another creator won)."""
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        study_id = storage.create_new_study(directions, name)
        for key, value in attrs.items():
            storage.set_study_system_attr(study_id, key, value)
        return study_id
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy.exc import IntegrityError

    try:
        with _create_scoped_session(backend.scoped_session) as session:
            study = models.StudyModel(
                study_name=name,
                directions=[models.StudyDirectionModel(objective=i, direction=d) for i, d in enumerate(directions)],
            )
            study.system_attributes = [models.StudySystemAttributeModel(key=k, value_json=json.dumps(v)) for k, v in attrs.items()]
            session.add(study)
    except IntegrityError as exc:
        raise optuna.exceptions.DuplicatedStudyError(f"a study named {name!r} exists") from exc
    return storage.get_study_id_from_name(name)


def remove_study(storage: Any, study_id: int, attrs: dict[str, Any], location: str | None, checkpoint_id: str | None, *, tries: int = 5,
                 before_delete: Callable[[], None] | None = None) -> int:
    """Remove a study by id (never by name: a study made again under the name is another one):
    its artifacts but the checkpoint, the study itself (tried again when a concurrent write made
    the delete fail), then the checkpoint artifact. Returns how many artifacts were removed.
    Raises ``StudyNotGone`` when the study is still there after ``tries``.

    ``before_delete`` runs just before the study goes: once it is gone, nothing in the storage
    names the checkpoint artifact any more, so ``delete`` records it there (``deletion``) to
    finish its removal after a kill."""
    ids = artifacts.study_artifact_ids(attrs)
    ids = [i for i in ids if i != checkpoint_id] + ([checkpoint_id] if checkpoint_id else [])
    store = None
    if location and ids:
        try:
            store = artifacts.open_store(location)
        except Exception as exc:
            log.warning(f"mro-search: the artifacts in {location} cannot be removed ({exc})")
    removed = 0
    if store is not None:
        removed += sum(_remove_artifact(store, location, i) for i in ids if i != checkpoint_id)
    if before_delete is not None:
        before_delete()
    delete_by_id(storage, study_id, tries=tries)
    if store is not None and checkpoint_id:
        removed += _remove_artifact(store, location, checkpoint_id)  # last: a study that stays keeps its checkpoint
    return removed


class StudyNotGone(Exception):
    """The storage still holds a study after it was deleted (and the delete tried again)."""


def delete_by_id(storage: Any, study_id: int, *, tries: int = 5) -> None:
    """Optuna's delete of study ``study_id``, tried again while the study is still there (a trial
    inserted at that moment makes the delete fail); then looked up again."""
    error: BaseException | None = None
    for attempt in range(tries):
        try:
            storage.delete_study(study_id)
        except KeyError:  # gone already (another command removed it)
            pass
        except Exception as exc:  # the storage refused: a concurrent insert, a lock, a constraint
            error = exc
            log.debug("delete of study %s failed (try %d of %d)", study_id, attempt + 1, tries, exc_info=True)
        if not exists(storage, study_id):
            return
        time.sleep(min(0.2 * 2**attempt, 2.0))
    reason = f": {' '.join(str(error).split())[:200]}" if error is not None else ""
    raise StudyNotGone(f"the storage still holds it after {tries} tries{reason}")


def exists(storage: Any, study_id: int) -> bool:
    return any(s._study_id == study_id for s in storage.get_all_studies())


def _remove_artifact(store: Any, location: str | None, artifact_id: str) -> int:
    try:
        return int(artifacts.remove(store, artifact_id))
    except (FileNotFoundError, NotADirectoryError):  # no store there: nothing to remove
        return 0
    except Exception as exc:
        log.warning(f"mro-search: artifact {artifact_id} in {location} was not removed ({' '.join(str(exc).split())[:200]})")
        return 0


def deletion_notice(name: str, attrs: dict[str, Any] | None) -> str | None:
    """The one line a worker says when it stops because its study is being deleted (or is gone:
    ``attrs`` None), else None."""
    if attrs is None:
        return f"mro-search: stopping: study {name} was deleted"
    if DELETING_KEY in attrs:
        return f"mro-search: stopping: study {name} is being deleted (mro-search delete, by {who(attrs[DELETING_KEY])})"
    return None


def gone_meanwhile(exc: BaseException, study: Any) -> str | None:
    """The one line for Optuna's ``KeyError: 'Record does not exist.'`` (the study, or a trial of
    it, was removed by ``delete`` while a command was using it), else None."""
    if not (isinstance(exc, KeyError) and "Record does not exist" in str(exc)):
        return None
    name = f" {study}" if isinstance(study, str) else ""
    return f"study{name} was deleted while this command was using it (mro-search delete); nothing more to do"
