"""The restricted unpickler: arrays and containers load, anything that could run code does not."""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from supernet.data.safe_pickle import load_pickle
from supernet.errors import DataError


def _error(path: Path, *words: str) -> str:
    with pytest.raises(DataError) as info:
        load_pickle(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message, message
    return message


class _Shell:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return eval, ("1 + 1",)


def _payload() -> dict[str, object]:
    return {
        "train": {
            "audio": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            "ids": np.array(["a$_$0", "b$_$1"]),
            "raw_text": np.array(["hello", "world"], dtype=object),
            "labels": np.array([[0.5], [-1.25]], dtype=np.float64),
        },
        "scalars": [np.float64(1.5), np.int64(3), np.bool_(True), 2.5, 7, "x", b"raw", None, 1j],
        "sets": ({1, 2}, frozenset({3})),
        "ordered": collections.OrderedDict(a=np.zeros(2, np.int16)),
        "default": collections.defaultdict(list, {"k": [1, 2]}),
        "buffer": bytearray(b"ab"),
        "dtype": np.dtype("float32"),
        "slice": slice(1, 5, 2),
    }


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_arrays_containers_and_scalars_load_at_every_protocol(
    tmp_path: Path, protocol: int
) -> None:
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(_payload(), protocol=protocol))
    loaded = load_pickle(path)
    assert isinstance(loaded, dict)
    expected = _payload()
    np.testing.assert_array_equal(loaded["train"]["audio"], expected["train"]["audio"])
    assert loaded["train"]["audio"].dtype == np.float32
    assert list(loaded["train"]["ids"]) == ["a$_$0", "b$_$1"]
    assert list(loaded["train"]["raw_text"]) == ["hello", "world"]
    np.testing.assert_array_equal(loaded["train"]["labels"], expected["train"]["labels"])
    assert loaded["scalars"] == expected["scalars"]
    assert loaded["sets"] == expected["sets"]
    assert isinstance(loaded["ordered"], collections.OrderedDict)
    assert loaded["default"]["k"] == [1, 2] and loaded["default"]["new"] == []
    assert loaded["buffer"] == bytearray(b"ab")
    assert loaded["dtype"] == np.dtype("float32")
    assert loaded["slice"] == slice(1, 5, 2)


def test_pickles_written_by_numpy_1_load(tmp_path: Path) -> None:
    """numpy 1.x names its private module numpy.core; that spelling resolves without importing it."""
    data = pickle.dumps({"x": np.arange(6.0).reshape(2, 3), "s": np.float32(2.0)}, protocol=2)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old
    path = tmp_path / "old.pkl"
    path.write_bytes(old)
    loaded = load_pickle(path)
    assert isinstance(loaded, dict)
    np.testing.assert_array_equal(loaded["x"], np.arange(6.0).reshape(2, 3))
    assert loaded["s"] == np.float32(2.0)


def test_python2_pickle_of_an_array_loads(tmp_path: Path) -> None:
    """Python 2 wrote array data as a byte *string* (SHORT_BINSTRING); latin1 decoding keeps it."""

    def short(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    data = np.arange(3, dtype="<f8").tobytes()
    content = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + short(b"b")
        + b"\x87R(K\x01K\x03\x85cnumpy\ndtype\n"
        + short(b"f8")
        + b"K\x00K\x01\x87R(K\x03"
        + short(b"<")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
        + short(data)
        + b"tb."
    )
    path = tmp_path / "py2.pkl"
    path.write_bytes(content)
    np.testing.assert_array_equal(load_pickle(path), np.arange(3.0))


def test_shell_command_in_reduce_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": {"audio": np.zeros(3), "x": _Shell(marker)}}))
    message = _error(path, "refuses to load global", "system", "arrays, containers and scalars")
    assert "posix.system" in message or "os.system" in message or "nt.system" in message
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_eval_is_refused(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "eval.pkl"
    path.write_bytes(pickle.dumps([np.ones(2), _Eval()], protocol=protocol))
    _error(path, "refuses to load global builtins.eval")


def test_hand_written_getattr_gadget_is_refused(tmp_path: Path) -> None:
    # builtins.getattr(builtins, "exec")("...") written out in protocol 0 opcodes.
    path = tmp_path / "gadget.pkl"
    path.write_bytes(b"cbuiltins\ngetattr\n(cbuiltins\nglobals\n)RS'x'\ntR.")
    _error(path, "refuses to load global builtins.getattr")


def test_arbitrary_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "class.pkl"
    path.write_bytes(pickle.dumps(Path("/tmp")))
    _error(path, "refuses to load global pathlib")


def test_persistent_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pid.pkl"
    path.write_bytes(b"(lp0\nPsome-id\na.")
    _error(path, "persistent id")


def test_truncated_pickle(tmp_path: Path) -> None:
    data = pickle.dumps({"audio": np.zeros((20, 5), np.float32), "labels": list(range(50))})
    path = tmp_path / "cut.pkl"
    path.write_bytes(data[: len(data) // 2])
    _error(path, "not a readable pickle", "truncated or corrupt")


@pytest.mark.parametrize("content", [b"", b"\x80\x05garbage that is not a pickle", b"\x00\x01\x02"])
def test_corrupt_pickle(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(content)
    _error(path, "not a readable pickle", "truncated or corrupt")


def test_missing_file(tmp_path: Path) -> None:
    _error(tmp_path / "nowhere.pkl", "no such file", "[data] path")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    _error(tmp_path, "is a folder")


def test_npz_or_npy_instead_of_pickle(tmp_path: Path) -> None:
    path = tmp_path / "data.pkl"
    np.savez(tmp_path / "data.npz", x=np.zeros(2))
    path.write_bytes((tmp_path / "data.npz").read_bytes())
    _error(path, "zip archive", "not a pickle")
    with path.open("wb") as f:
        np.save(f, np.zeros(2))
    _error(path, ".npy array", "not a pickle")
