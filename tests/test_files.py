"""``supernet.files``: outputs are written whole, only onto regular files, with one-line errors.

Real special files (a FIFO, /dev/null, a socket), real pseudo file systems (/proc, /sys) and a
real read-only folder (a read-only bind mount when run as root, whom permissions do not stop;
mode 0o555 otherwise)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from supernet.errors import MROError, OutputError
from supernet.files import check_output_directory, check_output_file, pseudo_file_system, write_file


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[str]:
    """``folder`` made read-only for this process; yields the errno name the write must fail with.
    Root ignores permission bits, so as root the folder is bind-mounted read-only on itself
    (unmounted afterwards); skips where neither works."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield "permission denied"
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root and a read-only bind mount failed: {mounted.stderr.strip()}")
    try:
        if not os.statvfs(folder).f_flag & os.ST_RDONLY:  # old util-linux: remount to apply ro
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield "read-only file system"
    finally:
        subprocess.run(["umount", str(folder)], check=True, capture_output=True)


def test_writes_whole_files_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.html"
    assert write_file(target, "first") == target
    assert target.read_text() == "first" and _listing(tmp_path) == ["out.html"]
    write_file(target, b"second")
    write_file(target, lambda f: f.write("third ✓".encode()))
    assert target.read_text(encoding="utf-8") == "third ✓" and _listing(tmp_path) == ["out.html"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "private.pt"
    write_file(target, "x")
    target.chmod(0o600)
    write_file(target, "y")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text() == "y"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "supernet.pt"
    write_file(target, "old")

    def full_disk(f) -> None:
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"cannot write the checkpoint to .*supernet\.pt: no space left on the disk of"):
        write_file(target, full_disk, what="the checkpoint")
    assert target.read_text() == "old" and _listing(tmp_path) == ["supernet.pt"]

    def interrupted(f) -> None:
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_file(target, interrupted)
    assert target.read_text() == "old" and _listing(tmp_path) == ["supernet.pt"]


def test_special_files_are_refused_and_left_as_they_are(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link-to-pipe"
    link.symlink_to(fifo)
    sock_path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    try:
        for target, kind in ((fifo, "a FIFO (named pipe)"), (link, "a FIFO (named pipe)"), (sock_path, "a socket"), (Path("/dev/null"), "a character device"), (tmp_path, "a folder")):
            with pytest.raises(OutputError) as info:
                write_file(target, "x", what="the report")
            message = str(info.value)
            assert message.startswith("cannot write the report to ") and f"it is {kind}, not a regular file" in message, message
            assert "\n" not in message
        assert "(the real target of" in _message(lambda: write_file(link, "x"))
        assert stat.S_ISFIFO(fifo.stat().st_mode) and link.is_symlink() and stat.S_ISSOCK(sock_path.stat().st_mode)
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
        assert _listing(tmp_path) == ["link-to-pipe", "pipe", "sock"]  # no temporary file
    finally:
        server.close()


def test_a_symlink_to_a_regular_file_writes_the_file_and_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real.html"
    real.write_text("old")
    link = tmp_path / "link.html"
    link.symlink_to(real)
    write_file(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


@pytest.mark.parametrize("target", ["/proc/mro-search-test.html", "/proc/sys/kernel/hostname", "/sys/kernel/mro-search-test", "/dev/mro-search-test"])
def test_pseudo_file_systems_are_refused(target: str) -> None:
    before = Path(target).read_bytes() if Path(target).exists() else None
    with pytest.raises(OutputError, match="pseudo file system .*choose a path on a disk"):
        write_file(target, "x", what="the report")
    assert (Path(target).read_bytes() if Path(target).exists() else None) == before


def test_missing_folders_and_files_in_the_way(tmp_path: Path) -> None:
    assert "the folder" in _message(lambda: write_file(tmp_path / "no" / "such" / "r.html", "x")) and "does not exist" in _message(
        lambda: write_file(tmp_path / "no" / "r.html", "x")
    )
    write_file(tmp_path / "made" / "here" / "r.html", "x", parents=True)
    assert (tmp_path / "made" / "here" / "r.html").read_text() == "x"
    (tmp_path / "file").write_text("")
    assert "is not a folder" in _message(lambda: write_file(tmp_path / "file" / "r.html", "x"))
    assert "not a folder" in _message(lambda: write_file(tmp_path / "file" / "r.html", "x", parents=True))
    assert "too long" in _message(lambda: write_file(tmp_path / ("n" * 300), "x"))


def test_a_read_only_folder_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "old.html").write_text("old")
    with read_only_folder(folder) as reason:
        for target in (folder / "new.html", folder / "old.html"):
            message = _message(lambda target=target: write_file(target, "x", what="the report"))
            assert reason in message and str(folder) in message and "\n" not in message, message
        assert reason in _message(lambda: check_output_directory(folder / "subnet", what="the export"))
        assert _listing(folder) == ["old.html"] and (folder / "old.html").read_text() == "old"


def test_output_directories(tmp_path: Path) -> None:
    assert pseudo_file_system(tmp_path) is None and pseudo_file_system(Path("/proc/self")) == ("/proc", "proc")
    assert check_output_directory(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checks, creates nothing
    os.mkfifo(tmp_path / "pipe")
    assert "is a FIFO (named pipe), not a folder" in _message(lambda: check_output_directory(tmp_path / "pipe"))
    assert "is a character device, not a folder" in _message(lambda: check_output_directory("/dev/null"))
    assert "pseudo file system" in _message(lambda: check_output_directory("/proc/subnet"))
    assert check_output_file(tmp_path / "x.html") == tmp_path / "x.html"


def test_errors_are_mro_errors() -> None:
    assert issubclass(OutputError, MROError)


def _message(call) -> str:
    with pytest.raises(OutputError) as info:
        call()
    return str(info.value)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
