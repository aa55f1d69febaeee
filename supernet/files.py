"""Writing output files: whole or not at all, only where a file belongs.

Every file mro-search writes (checkpoints, reports, exports) goes through ``write_file``:

1. the target is judged by what it really is: symlinks are resolved, and a target that exists
   but is not a regular file (a FIFO, a device such as ``/dev/null``, a socket, a folder) is
   refused, as is any place on a kernel pseudo file system (``/proc``, ``/sys``, ``/dev``...):
   writing there either blocks (a FIFO), changes the machine (a device, a kernel setting) or
   replaces a special file by a regular one;
2. the content goes to a temporary file beside the target (same folder, so same file system),
   is flushed to disk, and is renamed over the target with ``os.replace``: a reader sees the old
   file or the new one, never half of one;
3. an unwritable place (permission denied, read-only file system, missing folder, full disk)
   is one ``OutputError`` line naming the path and what to do; the temporary file never stays.

A file that already exists keeps its permission bits; a new one gets ``0o666`` less the umask,
as ``open`` would give it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from supernet.errors import ConfigError, OutputError

__all__ = ["PSEUDO_FILE_SYSTEMS", "check_output_directory", "check_output_file", "expand_home", "make_directory", "write_file"]

# Kernel file systems whose "files" are kernel state or devices, never a place for output.
PSEUDO_FILE_SYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
    "configfs", "pstore", "bpf", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "binfmt_misc", "autofs",
    "rpc_pipefs", "nsfs", "selinuxfs",
})
_FALLBACK_PSEUDO_ROOTS = ("/proc", "/sys", "/dev")  # where /proc/self/mounts cannot be read

Content = bytes | str | Callable[[BinaryIO], None]


def write_file(path: str | Path, content: Content, *, what: str = "the file", parents: bool = False) -> Path:
    """Write ``content`` (bytes, text as UTF-8, or a function writing to a binary file) to
    ``path`` atomically; ``parents`` creates missing folders. Returns ``path``.

    ``what`` names the file in error messages ("the report", "the checkpoint")."""
    target = check_output_file(path, what=what, parents=parents)
    folder = target.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name[:200]}.", suffix=".tmp")
    except OSError as exc:
        raise _unwritable(exc, path, folder, what) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(target))
        _refuse_special(target, path, what)  # again, just before the rename: it may have appeared
        os.replace(tmp, target)
    except OSError as exc:
        raise _unwritable(exc, path, folder, what) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # gone already after a successful rename
    return Path(path)


def expand_home(path: str | Path, *, what: str = "path") -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; a user without a home directory (or
    none of that name) is one ``ConfigError`` line instead of pathlib's ``RuntimeError``."""
    try:
        return Path(path).expanduser()
    except RuntimeError as exc:
        head = str(path).split("/", 1)[0]
        raise ConfigError(f"{what} {str(path)[:200]}: {head[:100]!r} names no user with a home directory; give the full path") from exc


def check_output_file(path: str | Path, *, what: str = "the file", parents: bool = False) -> Path:
    """Refuse a target that ``write_file`` must not write (see the module's docstring) and return
    the real path it would write; with ``parents`` its folder is created, else it must exist."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise OutputError(f"cannot write {what} to {path}: that is a folder, not a file name; give a file name")
    real = Path(os.path.realpath(path))
    _refuse_special(real, path, what)
    _refuse_pseudo(real, path, what)
    if parents:
        make_directory(real.parent, what=what)
    elif not real.parent.is_dir():
        raise _unwritable(OSError(errno.ENOENT if not real.parent.exists() else errno.ENOTDIR, ""), path, real.parent, what)
    return real


def check_output_directory(path: str | Path, *, what: str = "the output") -> Path:
    """Refuse a folder target that is not (and cannot become) a writable folder: an existing
    non-folder, a pseudo file system, a read-only or unwritable nearest existing folder. Creates
    nothing; returns the real path."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    if real.exists() and not real.is_dir():
        raise OutputError(f"cannot write {what} to {path}: it exists and is {_kind(real.stat().st_mode)}, not a folder; give -o a folder")
    _refuse_pseudo(real, path, what)
    existing = real
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise _unwritable(OSError(errno.ENOTDIR, ""), path, existing, what)
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise _unwritable(OSError(errno.EROFS, ""), path, existing, what)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _unwritable(OSError(errno.EACCES, ""), path, existing, what)
    return real


def make_directory(path: str | Path, *, what: str = "the output") -> Path:
    """``mkdir -p`` with one-line errors (and the same refusals as for files)."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    if real.exists() and not real.is_dir():
        raise OutputError(f"cannot write {what} in {path}: it is {_kind(real.stat().st_mode)}, not a folder; choose another path")
    _refuse_pseudo(real, path, what)
    try:
        real.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(exc, path, path, what) from exc
    return path


# --- the checks ------------------------------------------------------------------------------------


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _refuse_special(real: Path, shown: Path, what: str) -> None:
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _unwritable(exc, shown, real.parent, what) from exc
    if not stat.S_ISREG(mode):
        where = f" (the real target of {shown})" if real != Path(os.path.abspath(shown)) else ""
        hint = f"give a file name, e.g. {shown / 'out'}" if stat.S_ISDIR(mode) else "choose another path"
        raise OutputError(f"cannot write {what} to {real}{where}: it is {_kind(mode)}, not a regular file; {hint}")


def _mounts() -> list[tuple[str, str]] | None:
    """(mount point, file system type) of every mount, longest mount point first."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])  # \040: a space
            found.append((point, fields[2]))
    return sorted(found, key=lambda m: len(m[0]), reverse=True)


def pseudo_file_system(real: Path) -> tuple[str, str] | None:
    """The (mount point, type) of the pseudo file system holding ``real``, else None."""
    text = str(real)
    mounts = _mounts()
    if mounts is None:
        for root in _FALLBACK_PSEUDO_ROOTS:
            if text == root or text.startswith(root + "/"):
                return root, root.strip("/")
        return None
    for point, kind in mounts:
        if text == point or text.startswith(point.rstrip("/") + "/"):
            return (point, kind) if kind in PSEUDO_FILE_SYSTEMS else None
    return None


def _refuse_pseudo(real: Path, shown: Path, what: str) -> None:
    found = pseudo_file_system(real)
    if found is not None:
        point, kind = found
        raise OutputError(
            f"cannot write {what} to {shown}: {point} is a {kind} pseudo file system (kernel state and devices, "
            "not files); choose a path on a disk"
        )


def _unwritable(exc: OSError, path: str | Path, folder: str | Path, what: str) -> OutputError:
    code = exc.errno
    head = f"cannot write {what} to {path}"
    if code in (errno.EACCES, errno.EPERM):
        return OutputError(f"{head}: permission denied in {folder}; choose a folder you can write to")
    if code == errno.EROFS:
        return OutputError(f"{head}: {folder} is on a read-only file system; choose a path on a writable disk")
    if code == errno.ENOENT:
        return OutputError(f"{head}: the folder {folder} does not exist; create it first or choose another path")
    if code == errno.ENOTDIR:
        return OutputError(f"{head}: a part of {folder} is not a folder; choose another path")
    if code in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"{head}: no space left on the disk of {folder} (or the quota is used up); free some space or choose another disk")
    if code == errno.EISDIR:
        return OutputError(f"{head}: it is a folder; give a file name")
    if code == errno.ENAMETOOLONG:
        return OutputError(f"{head}: the name is too long for the file system; choose a shorter one")
    return OutputError(f"{head}: {exc.strerror or exc}; choose another path")


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _mode_for(target: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_umask()
