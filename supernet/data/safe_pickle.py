"""A restricted unpickler for data pickles from the outside world (MMSA, MELD).

A pickle can name any importable callable and call it while loading (``os.system`` is the classic),
so :class:`SafeUnpickler` resolves only the globals that numpy arrays, numpy scalars and plain
containers need, from a fixed table, and refuses every other one before anything is imported.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from supernet.data.checks import require_file
from supernet.errors import DataError

try:  # numpy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


def _allowed_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # bytes in protocol 0-2 pickles made by Python 3
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
    }
    for name in (
        "list",
        "dict",
        "tuple",
        "set",
        "frozenset",
        "str",
        "int",
        "float",
        "complex",
        "bytes",
        "bytearray",
        "bool",
        "slice",
        "range",
    ):
        table[("builtins", name)] = getattr(__import__("builtins"), name)
    # Pickles name numpy's private modules as they were when written: numpy.core in 1.x,
    # numpy._core in 2.x. Both spellings resolve to this numpy's functions.
    for module in ("numpy.core", "numpy._core"):
        table[(f"{module}.multiarray", "_reconstruct")] = _multiarray._reconstruct
        table[(f"{module}.multiarray", "scalar")] = _multiarray.scalar
        if hasattr(_numeric, "_frombuffer"):  # protocol 5 pickles of arrays
            table[(f"{module}.numeric", "_frombuffer")] = _numeric._frombuffer
    return table


_ALLOWED = _allowed_globals()


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that admits only arrays, containers and scalars; ``file_name`` is for messages."""

    def __init__(self, file: Any, file_name: str) -> None:
        # latin1 reads the numpy arrays inside Python 2 pickles (common for MELD releases).
        super().__init__(file, encoding="latin1")
        self.file_name = file_name

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 spellings (__builtin__.set, copy_reg...) mapped as pickle itself would map them.
        key = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        key = (_compat_pickle.IMPORT_MAPPING.get(key[0], key[0]), key[1])
        if key in _ALLOWED:
            return _ALLOWED[key]
        raise DataError(
            f"{self.file_name}: the safe loader refuses to load global {key[0]}.{key[1]}: data pickles may "
            "hold only arrays, containers and scalars; re-save the data as plain numpy arrays, and do "
            "not use a file you do not trust"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(
            f"{self.file_name}: the pickle refers to external objects (persistent id {pid!r}); "
            "data pickles may hold only arrays, containers and scalars"
        )


def load_pickle(path: str | Path) -> object:
    """Load a data pickle with :class:`SafeUnpickler`; every failure is a one-line DataError."""
    path = require_file(Path(path), "the data pickle")
    try:
        with path.open("rb") as file:
            magic = file.read(6)
            if magic.startswith(b"PK\x03\x04") or magic == b"\x93NUMPY":
                kind = (
                    "a zip archive (.npz, torch checkpoint)"
                    if magic[:2] == b"PK"
                    else "a .npy array"
                )
                raise DataError(
                    f'{path}: is {kind}, not a pickle; for .npz data set [data] source = "npz"'
                )
            file.seek(0)
            return SafeUnpickler(file, str(path)).load()
    except DataError:
        raise
    except MemoryError:
        size = path.stat().st_size
        if size * 4 < _physical_memory():
            # a damaged length field (a frame or a byte string of petabytes) in a small file,
            # not a data set too large for this machine
            raise DataError(
                f"{path}: not a readable pickle (truncated or corrupt: it asks for more memory than "
                f"its {size} bytes can hold); copy or download the file again"
            ) from None
        raise DataError(
            f"{path}: not enough memory to load this pickle; use a machine with more memory"
        ) from None
    except OSError as exc:
        raise DataError(
            f"{path}: cannot read the file ({exc.strerror or exc}); check its permissions"
        ) from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, TypeError, ... from bad bytes
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        reason = " ".join(reason.split())
        raise DataError(
            f"{path}: not a readable pickle (truncated or corrupt: {reason}); copy or download the file again"
        ) from None


def _physical_memory() -> int:
    """Bytes of RAM of this machine (very large when unknown, so that a MemoryError is then
    reported as a lack of memory)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1 << 62
