"""Hypothesis strategies for the fuzz suite: study files, masks, npz data sets, storage URLs and
command lines, each as a careless or hostile user could give them.

Every strategy draws *near* something that works (a tiny study that trains in a second, a valid
npz layout, a reachable storage URL) and then breaks it in one or a few places: wrong types,
values out of range, NaN and inf, unicode, missing and extra keys, odd shapes and dtypes. So a
good share of examples gets past validation and exercises training, scoring and storage, and the
rest exercises the checks.
"""

from __future__ import annotations

import datetime as dt
import math
import string
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

import numpy as np
from hypothesis import strategies as st

from supernet.metrics import METRICS

# --- TOML text ----------------------------------------------------------------------------------

_BARE_KEY = set(string.ascii_letters + string.digits + "_-")


def toml_key(key: str) -> str:
    return key if key and set(key) <= _BARE_KEY else toml_string(key)


def toml_string(text: str) -> str:
    """A TOML basic string: every character that TOML does not allow raw is escaped."""
    out = ['"']
    for c in text:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def render_toml(doc: dict[str, Any]) -> str:
    """A study document (top-level scalars, then one table per section) as TOML text."""
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"\n[{toml_key(section)}]")
            lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


# --- values -------------------------------------------------------------------------------------

# Text as users paste it: any printable or control character, unicode of every plane (no
# surrogates: they cannot be written as UTF-8), and the characters that mean something somewhere
# ('->', '..', '/', quotes, '%', NUL).
SPECIAL_TEXT = st.sampled_from([
    "", " ", "..", "../..", "/", "a->b", "->", "a-b", "\x00", "\n", "\t", "\u202e", "\ufeff", "é", "名前", "🙂",
    "a" * 101, "x" * 300, "%00", "%2e%2e", "nul\x00byte", "CON", "a b", " a", "a ", "'", '"', "\\", "$HOME", "`id`",
])
TEXT = st.one_of(SPECIAL_TEXT, st.text(max_size=20), st.text(st.characters(codec="utf-8"), max_size=8))
NAMEISH = st.one_of(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True), TEXT)

# Study names: letters and digits of any script (accepted), and what must stay refused around
# them: separators, '..', control and format characters (bidi overrides, zero-width joiners), a
# leading '-' or '.', forms that normalise differently (NFD accents, ligatures, full-width letters),
# and names too long for a file name in characters or in UTF-8 bytes.
_SCRIPT_LETTERS = st.characters(categories=["Lu", "Ll", "Lo", "Nd"])
_NAME_PIECE = st.one_of(
    st.text(_SCRIPT_LETTERS, min_size=1, max_size=6),
    st.sampled_from(["研究", "é", "Ω", "хз", "हिन्दी", "٣", "demo", "v2", "-", "_", ".", "ü"]),
    st.sampled_from(["/", "\\", "..", "\x00", "\n", "\u202e", "\u200d", "\ufeff", "e\u0301", "\ufb01", "\uff21", " ", ":", "*", "~"]),
)
STUDY_NAME = st.one_of(
    st.lists(_NAME_PIECE, min_size=1, max_size=5).map("".join),
    st.builds(lambda head, piece, n: head + piece * n, st.sampled_from(["", "-", ".", "a"]), st.sampled_from(["研", "a", "é"]),
              st.integers(60, 110)),
    TEXT,
)

FLOAT_SPECIAL = st.sampled_from([
    float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, 1.0, 0.5, 0.9, 0.999999, 1.5, 10.0, 11.0,
    1e-300, 5e-324, 1e30, -1e30, 1.7976931348623157e308,
])
FLOATS = st.one_of(FLOAT_SPECIAL, st.floats(allow_nan=True, allow_infinity=True))
INT_SPECIAL = st.sampled_from([0, 1, 2, -1, 3, 7, 64, 1025, 2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63), 10**12, 10**30])
INTS = st.one_of(INT_SPECIAL, st.integers(-5, 100), st.integers())
DATES = st.one_of(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)), st.dates(), st.times())
SCALARS = st.one_of(INTS, FLOATS, TEXT, st.booleans(), DATES)
# any TOML value, nested a little
ANY_VALUE = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(NAMEISH, inner, max_size=3)),
    max_leaves=6,
)

# --- study files --------------------------------------------------------------------------------

# A study that trains in well under a second: 3 modalities (6 paths), 40 samples, width 4.
TINY_STUDY: dict[str, Any] = {
    "name": "fz",
    "data": {
        "source": "synthetic",
        "modalities": ["a", "b", "c"],
        "dims": [3, 2, 2],
        "length": 2,
        "samples": [24, 8, 8],
        "planted_paths": [],
        "task": "classification",
        "noise": 0.1,
        "seed": 0,
    },
    "model": {"width": 4, "heads": 1, "ffn_mult": 1, "dropout": 0.0, "vector_tokens": 2, "layers_per_path": 1},
    "train": {"epochs": 1, "warmup_epochs": 1, "batch_size": 16, "rank_every": 1, "rank_masks": 4, "masks_per_step": 1, "seed": 0},
    "search": {"trials": 3, "n_startup_trials": 1},
}

MODALITY_NAME = st.one_of(st.sampled_from(["a", "b", "c", "text", "audio", "vision"]), NAMEISH)

# Values that keep a training cheap (tiny sizes) but probe everything else: NaN, inf, out-of-range
# floats, odd strings. ``name -> strategy`` per section.
CHEAP_VALUES: dict[str, dict[str, st.SearchStrategy]] = {
    "data": {
        "source": st.one_of(st.sampled_from(["synthetic", "npz", "mmsa", "meld", "mfeat"]), TEXT),
        "modalities": st.lists(MODALITY_NAME, min_size=0, max_size=4),
        "dims": st.lists(st.integers(-1, 6), max_size=4),
        "length": st.one_of(st.integers(-1, 5), INT_SPECIAL),
        "samples": st.lists(st.integers(-1, 40), max_size=4),
        "planted_paths": st.lists(st.sampled_from(["a->b", "b->c", "c->a", "a->a", "x->y", "", "a->b->c"]), max_size=3),
        "task": st.one_of(st.sampled_from(["classification", "regression"]), TEXT),
        "noise": FLOATS,
        "valid_fraction": FLOATS,
        "test_fraction": FLOATS,
        "seed": INTS,
        "classes": st.integers(-1, 5),
        "path": TEXT,
    },
    "model": {
        "width": st.integers(-1, 8),
        "heads": st.integers(-1, 4),
        "layers_per_path": st.integers(-1, 2),
        "ffn_mult": st.integers(-1, 2),
        "dropout": FLOATS,
        "pooling": st.one_of(st.sampled_from(["mean", "max"]), TEXT),
        "head": st.one_of(st.sampled_from(["linear", "mlp"]), TEXT),
        "vector_tokens": st.integers(-1, 4),
    },
    "train": {
        "epochs": st.integers(-1, 2),
        "batch_size": st.integers(-1, 40),
        "lr": FLOATS,
        "weight_decay": FLOATS,
        "warmup_epochs": st.integers(-1, 3),
        "masks_per_step": st.integers(-1, 3),
        "per_sample_masks": st.booleans(),
        "distill": FLOATS,
        "rank_loss": st.one_of(st.sampled_from(["hinge", "l0", "l1", "l2", "linf"]), TEXT),
        "rank_every": st.integers(-1, 4),
        "rank_masks": st.integers(-1, 8),
        "prior_lr": FLOATS,
        "seed": INTS,
        "device": st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:99", "mps", "tpu", "", "CPU", "cpu "]),
    },
    "search": {
        "metric": st.one_of(st.sampled_from(["", *METRICS]), TEXT),
        "trials": st.integers(-1, 4),
        "n_startup_trials": st.integers(-1, 4),
        "flops_budget": FLOATS,
        "split": st.one_of(st.sampled_from(["valid", "test"]), TEXT),
        "objectives": st.one_of(
            st.sampled_from([["accuracy", "mflops"], ["accuracy", "params"], ["accuracy", "latency_ms"], ["accuracy", "params", "mflops"],
                             ["f1", "peak_memory_mb"], ["accuracy"], ["accuracy", "mflops", "mflops"], ["mflops", "accuracy"]]),
            st.lists(st.one_of(st.sampled_from(["accuracy", "mflops", "params", "latency_ms", "peak_memory_mb"]), TEXT), max_size=4),
        ),
        "max_params": st.integers(-1, 10**5),
        "max_mflops": FLOATS,
        "max_latency_ms": FLOATS,
        "latency_precision": st.one_of(st.sampled_from(["fp32", "bf16", "fp16"]), TEXT),
        "latency_batch_size": st.integers(-1, 3),
    },
}

# Everything a key could be given, for validation only (nothing is trained): any type, any size.
WILD_VALUES: dict[str, dict[str, st.SearchStrategy]] = {
    section: {key: st.one_of(strategy, ANY_VALUE) for key, strategy in keys.items()}
    for section, keys in CHEAP_VALUES.items()
}
WILD_VALUES["data"].update(
    samples=st.one_of(st.lists(INTS, max_size=4), ANY_VALUE),
    dims=st.one_of(st.lists(INTS, max_size=17), ANY_VALUE),
    modalities=st.one_of(st.lists(MODALITY_NAME, max_size=17), ANY_VALUE),
    length=st.one_of(INTS, ANY_VALUE),
)
WILD_VALUES["model"].update(width=INTS, heads=INTS, layers_per_path=INTS, ffn_mult=INTS, vector_tokens=INTS)
WILD_VALUES["train"].update(epochs=INTS, batch_size=INTS, rank_masks=INTS, masks_per_step=INTS)
WILD_VALUES["search"].update(
    latency_device=st.one_of(st.sampled_from(["", "cpu", "cuda:7", "tpu"]), TEXT),
    max_peak_memory_mb=FLOATS,
    trials=INTS,
    n_startup_trials=INTS,
    storage=TEXT,
    run_dir=TEXT,
    artifacts=TEXT,
)


@dataclass
class StudyDoc:
    """A generated study file: its TOML text (or raw bytes) and what was changed (for messages)."""

    text: str | None
    raw: bytes | None = None
    changes: list[str] = field(default_factory=list)

    def write(self, path) -> None:
        if self.raw is not None:
            path.write_bytes(self.raw)
        else:
            path.write_text(self.text or "", encoding="utf-8")


def _copy(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}


@st.composite
def study_docs(draw: st.DrawFn, *, values: dict[str, dict[str, st.SearchStrategy]] = CHEAP_VALUES,
               base: dict[str, Any] | None = None, max_changes: int = 4) -> StudyDoc:
    """The tiny study with 0 to ``max_changes`` changes: a key set to a drawn value, a key or a
    whole table removed, an unknown key or table added, a table replaced by a scalar, the name."""
    doc = _copy(base or TINY_STUDY)
    changes: list[str] = []
    for _ in range(draw(st.integers(0, max_changes))):
        kind = draw(st.sampled_from(["set", "set", "set", "set", "set", "drop_key", "drop_table", "extra_key",
                                     "extra_table", "not_a_table", "name"]))
        section = draw(st.sampled_from(["data", "model", "train", "search"]))
        table = doc.get(section)
        if kind == "set":
            key = draw(st.sampled_from(sorted(values[section])))
            value = draw(values[section][key])
            if not isinstance(table, dict):
                table = doc[section] = {}
            table[key] = value
            changes.append(f"[{section}] {key} = {value!r}")
        elif kind == "drop_key" and isinstance(table, dict) and table:
            key = draw(st.sampled_from(sorted(table)))
            del table[key]
            changes.append(f"[{section}] drop {key}")
        elif kind == "drop_table":
            doc.pop(section, None)
            changes.append(f"drop [{section}]")
        elif kind == "extra_key":
            key = draw(NAMEISH.filter(bool))
            if not isinstance(table, dict):
                table = doc[section] = {}
            table[key] = draw(SCALARS)
            changes.append(f"[{section}] extra {key!r}")
        elif kind == "extra_table":
            name = draw(NAMEISH.filter(lambda s, taken=frozenset(doc): s and s not in taken))
            doc[name] = {"x": 1}
            changes.append(f"extra [{name!r}]")
        elif kind == "not_a_table":
            doc.pop(section, None)
            doc = {section: draw(SCALARS), **doc}  # scalars go before the tables in TOML
            changes.append(f"[{section}] is a scalar")
        elif kind == "name":
            value = draw(st.one_of(STUDY_NAME, NAMEISH, ANY_VALUE))
            doc = {"name": value, **{k: v for k, v in doc.items() if k != "name"}}
            changes.append(f"name = {value!r}")
    return StudyDoc(render_toml(doc), changes=changes)


RAW_STUDY_TEXT = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["", "\n", "[data]\n", "name = 'x'\n", "[data]\nsource = 'synthetic'\n", "[data\n", "= 1", "a.b.c = 1\n",
                     "[data]\n[data]\n", "[[data]]\nsource='synthetic'\n", "\ufeff[data]\nsource = 'synthetic'\n"]),
)


@st.composite
def raw_study_files(draw: st.DrawFn) -> StudyDoc:
    """Study files that are barely (or not) TOML: random text, bytes that are not UTF-8, junk
    appended to a good file."""
    kind = draw(st.sampled_from(["text", "bytes", "junk"]))
    if kind == "text":
        return StudyDoc(draw(RAW_STUDY_TEXT), changes=["raw text"])
    if kind == "bytes":
        return StudyDoc(None, raw=draw(st.binary(max_size=100)), changes=["raw bytes"])
    return StudyDoc(render_toml(TINY_STUDY) + draw(RAW_STUDY_TEXT), changes=["junk appended"])


# --- masks --------------------------------------------------------------------------------------


def masks(n_paths: int) -> st.SearchStrategy[str]:
    """What a user types after ``--mask``: good masks, wrong lengths, all zeros, other digits,
    separators, unicode digits, whitespace."""
    good = st.lists(st.sampled_from("01"), min_size=n_paths, max_size=n_paths).map("".join)
    near = st.lists(st.sampled_from("01"), min_size=0, max_size=2 * n_paths + 1).map("".join)
    decorated = st.tuples(good, st.sampled_from(["", " ", ",", "[", "]", "\t", "\n"])).map(
        lambda t: t[1] + ",".join(t[0]) + t[1]
    )
    odd = st.sampled_from(["0" * n_paths, "1" * n_paths, "2" * n_paths, "-1", "0b" + "1" * n_paths, "１" * n_paths,
                           "١" * n_paths, "1" * 10_000, "", " ", "[]", "1,1", "--", "x"])
    return st.one_of(good, good, near, decorated, odd, st.text(alphabet="01 ,[]\t-+x١", max_size=2 * n_paths + 2),
                     st.text(max_size=12))


# --- npz data sets ------------------------------------------------------------------------------


@dataclass
class NpzCase:
    """How to write one data file: ``arrays`` for ``np.savez`` (``pickle`` arrays need
    ``allow_pickle``), or ``raw`` bytes for a file that is not an npz."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    raw: bytes | None = None
    huge_header: str | None = None  # key whose header declares far more rows than it holds
    changes: list[str] = field(default_factory=list)

    def write(self, path) -> None:
        if self.raw is not None:
            path.write_bytes(self.raw)
            return
        import zipfile

        with zipfile.ZipFile(path, "w") as archive:
            for key, array in self.arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    if key == self.huge_header:
                        _write_huge_header(member, array)
                    else:
                        np.lib.format.write_array(member, array, allow_pickle=True)


def _write_huge_header(member, array: np.ndarray) -> None:
    """An .npy member whose header declares 10^12 rows but whose data is ``array``'s."""
    shape = (10**12, *array.shape[1:])
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(member, header)
    member.write(np.ascontiguousarray(array).tobytes())


SIZES = {"train": 24, "valid": 8, "test": 8}
ODD_DTYPES = st.sampled_from([np.float16, np.float64, np.int8, np.int64, np.uint8, np.bool_, np.complex64, "U3", "S3",
                              "datetime64[s]", object, [("a", "f4"), ("b", "i4")]])
ODD_VALUES = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38, 1e-45, 0.0])


def _base_arrays(rng: np.random.Generator, seq: bool, regression: bool) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"modalities": np.array(["a", "b"])}
    for split, n in SIZES.items():
        arrays[f"{split}/a"] = (rng.normal(size=(n, 3, 2)) if seq else rng.normal(size=(n, 3))).astype(np.float32)
        arrays[f"{split}/b"] = rng.normal(size=(n, 4)).astype(np.float32)
        labels = rng.normal(size=n).astype(np.float32) if regression else np.arange(n) % 3
        arrays[f"{split}/label"] = labels
    return arrays


def _cast(array: np.ndarray, dtype: Any) -> np.ndarray:
    """``array`` in another dtype, whatever the two are (names become numbers 0, 1, ...)."""
    if dtype is object:
        out = np.empty(array.shape, dtype=object)
        out[...] = array.tolist() if array.ndim else array.item()
        return out
    if isinstance(dtype, list):  # structured
        out = np.zeros(array.shape, dtype=dtype)
        return out
    if array.dtype.kind not in "biuf":
        array = np.arange(array.size, dtype=np.float64).reshape(array.shape)
    if np.dtype(dtype).kind == "M":
        return (np.nan_to_num(array).astype(np.int64)).astype(dtype)
    if np.dtype(dtype).kind in "US":
        return array.astype(str).astype(dtype)
    with np.errstate(all="ignore"):
        return np.nan_to_num(array).astype(dtype) if np.dtype(dtype).kind in "biu" else array.astype(dtype)


@st.composite
def npz_cases(draw: st.DrawFn) -> NpzCase:
    """A small valid npz (2 modalities, 24/8/8 samples) with 0 to 3 changes: a value poked
    (NaN, inf, 1e30), a dtype or a shape changed, a key removed or added, odd modality names or
    lengths, labels out of range, an object array, a header declaring 10^12 rows; or a file that
    is no npz at all."""
    if draw(st.integers(0, 9)) == 0:
        raw = draw(st.one_of(
            st.binary(max_size=64),
            st.just(b"PK\x03\x04" + b"\x00" * 26),
            st.just(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94."),  # a pickle
            st.just(np.lib.format.MAGIC_PREFIX + b"\x01\x00"),  # a bare .npy start
        ))
        return NpzCase(raw=raw, changes=["raw bytes"])
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    seq = draw(st.booleans())
    regression = draw(st.booleans())
    arrays = _base_arrays(rng, seq, regression)
    case = NpzCase(arrays=arrays, changes=[f"seq={seq} regression={regression}"])
    if draw(st.booleans()):  # no valid split: carved from train
        for key in [k for k in arrays if k.startswith("valid/")]:
            del arrays[key]
        case.changes.append("no valid split")
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["poke", "poke", "dtype", "shape", "drop", "extra", "names", "lengths", "labels",
                                     "huge_header", "object"]))
        keys = sorted(arrays)
        key = draw(st.sampled_from(keys)) if keys else None
        if kind == "poke" and key and arrays[key].dtype.kind == "f" and arrays[key].size:
            value = draw(ODD_VALUES)
            flat = arrays[key].reshape(-1).copy()
            how_many = draw(st.sampled_from([1, flat.size]))
            flat[:how_many] = value
            arrays[key] = flat.reshape(arrays[key].shape)
            case.changes.append(f"{key}[:{how_many}] = {value}")
        elif kind == "dtype" and key:
            dtype = draw(ODD_DTYPES)
            arrays[key] = _cast(arrays[key], dtype)
            case.changes.append(f"{key} as {dtype}")
        elif kind == "shape" and key:
            shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
            arrays[key] = rng.normal(size=shape).astype(arrays[key].dtype if arrays[key].dtype.kind in "biuf" else np.float32)
            case.changes.append(f"{key} shape {shape}")
        elif kind == "drop" and key:
            del arrays[key]
            case.changes.append(f"drop {key}")
        elif kind == "extra":
            name = draw(st.one_of(st.sampled_from(["train/c", "valid/label", "test/a_lengths", "x", "train/a/b", "modalities2"]),
                                  st.text(st.characters(codec="utf-8", exclude_characters="\x00/"), min_size=1, max_size=8)))
            arrays[name] = rng.normal(size=(SIZES["train"], 2)).astype(np.float32)
            case.changes.append(f"extra {name!r}")
        elif kind == "names":
            names = draw(st.lists(MODALITY_NAME, max_size=4))
            as_bytes = draw(st.booleans())
            try:
                arrays["modalities"] = np.array([n.encode("utf-8") for n in names] if as_bytes else names)
            except ValueError:
                arrays["modalities"] = np.array(names, dtype=object)
            case.changes.append(f"modalities {names!r} bytes={as_bytes}")
        elif kind == "lengths":
            split = draw(st.sampled_from(list(SIZES)))
            n = draw(st.sampled_from([SIZES[split], SIZES[split] - 1]))
            values = draw(st.lists(st.integers(-2, 5), min_size=n, max_size=n))
            dtype = draw(st.sampled_from([np.int64, np.int32, np.uint8, np.float32]))
            arrays[f"{split}/a_lengths"] = np.array(values).astype(dtype)
            case.changes.append(f"{split}/a_lengths = {values} {np.dtype(dtype)}")
        elif kind == "labels":
            split = draw(st.sampled_from(list(SIZES)))
            value = draw(st.sampled_from([-1, 3, 99, 10**12, 2**62, 0.5, np.nan, np.inf]))
            label = arrays.get(f"{split}/label")
            if label is not None and label.size:
                label = label.astype(np.float64 if isinstance(value, float) else label.dtype).copy()
                label.reshape(-1)[0] = value  # (a "shape" change may have left it 0-dimensional)
                arrays[f"{split}/label"] = label
                case.changes.append(f"{split}/label[0] = {value}")
        elif kind == "huge_header" and key and arrays[key].dtype.kind in "biuf" and arrays[key].ndim:
            case.huge_header = key
            case.changes.append(f"{key} header declares 10^12 rows")
        elif kind == "object" and key:
            arrays[key] = _cast(arrays[key], object)
            case.changes.append(f"{key} as object")
    return case


# --- storage URLs -------------------------------------------------------------------------------


@dataclass
class StorageCase:
    url: str
    secret: str  # the password this URL carries ("" when it carries none)
    marker: str  # an ASCII-alphanumeric core of the secret: found in any output, it is a leak
    kind: str  # sqlite-file, postgres-ok, postgres-refused, garbage, ...
    sqlite_file: str | None = None  # the SQLite file the URL names (must not appear on failure)


# The password: a distinctive alphanumeric core with arbitrary text around it (the characters
# that mean something in a URL included), so a leak is found however it is encoded.
PASSWORD_EDGES = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
MARKER = st.text(string.ascii_letters + string.digits, min_size=10, max_size=14).map(lambda s: "Pw" + s)


def _userinfo_password(password: str, how: str) -> str:
    if how == "raw" and not any(c in password for c in "@/?#[]% "):
        return password
    return quote(password, safe="") if how != "plus" else quote_plus(password)


def _query_password(password: str, how: str) -> str:
    if how == "raw" and not any(c in password for c in "&#%+ =\n"):
        return password
    return quote_plus(password) if how == "plus" else quote(password, safe="")


@st.composite
def storage_cases(draw: st.DrawFn, *, folder: str, pg_database: str | None) -> StorageCase:
    """A storage URL with a password in it: SQLite files (password in a query parameter, where
    SQLite has none), PostgreSQL on this machine (trust authentication: the password is ignored
    and the connection works, so the study is created) in a fresh database, a database that
    does not exist, a closed port, other schemes, and garbage around a password."""
    marker = draw(MARKER)
    password = draw(PASSWORD_EDGES) + marker + draw(PASSWORD_EDGES)
    how = draw(st.sampled_from(["raw", "quote", "plus"]))
    user = draw(st.sampled_from(["postgres", "postgres", "mro", "u%40x", ""]))
    where = draw(st.sampled_from(["userinfo", "query", "both", "sslpassword", "encoded-name"]))

    def with_secret(prefix: str, hostpart: str, path: str) -> str:
        userinfo = ""
        query: list[str] = []
        if where in ("userinfo", "both"):
            userinfo = f"{user}:{_userinfo_password(password, how)}@"
        elif user:
            userinfo = f"{user}@"
        if where in ("query", "both"):
            query.append(f"password={_query_password(password, how)}")
        if where == "sslpassword":
            query.append(f"sslpassword={_query_password(password, how)}")
        if where == "encoded-name":
            query.append(f"pass%77ord={_query_password(password, how)}")
        if draw(st.booleans()):
            query.insert(draw(st.integers(0, len(query))), draw(st.sampled_from(["connect_timeout=3", "application_name=fz", "x=1", "sslmode=disable"])))
        return f"{prefix}{userinfo}{hostpart}{path}" + (("?" + "&".join(query)) if query else "")

    kind = draw(st.sampled_from(["sqlite-file", "sqlite-file", "postgres-ok", "postgres-ok", "postgres-nodb",
                                 "postgres-refused", "other-scheme", "garbage"]))
    if kind == "postgres-ok" and pg_database is None:
        kind = "postgres-refused"
    if kind == "sqlite-file":
        name = draw(st.sampled_from(["s.db", "sub/dir/s.db", "ü n i.db", "s%20x.db"]))
        query = f"?password={_query_password(password, how)}" if where != "userinfo" else ""
        url = f"sqlite:///{folder}/{name}{query}"
        return StorageCase(url, password, marker, kind, sqlite_file=f"{folder}/{name}")
    if kind == "postgres-ok":
        driver = draw(st.sampled_from(["postgresql", "postgresql+psycopg"]))
        return StorageCase(with_secret(f"{driver}://", "127.0.0.1:5432", f"/{pg_database}"), password, marker, kind)
    if kind == "postgres-nodb":
        return StorageCase(with_secret("postgresql+psycopg://", "127.0.0.1:5432", "/mro_fuzz_no_such_db"), password, marker, kind)
    if kind == "postgres-refused":
        host = draw(st.sampled_from(["127.0.0.1:1", "localhost:1", "[::1]:1", "127.0.0.1:99999", "127.0.0.1:abc"]))
        return StorageCase(with_secret("postgresql+psycopg://", host, "/db"), password, marker, kind)
    if kind == "other-scheme":
        scheme = draw(st.sampled_from(["mysql://", "mysql+pymysql://", "redis://", "oracle://", "http://", "file://", "sqlite://",
                                       "postgresql+asyncpg://", "postgresql+nosuchdriver://", "://"]))
        return StorageCase(with_secret(scheme, "127.0.0.1:1", "/db"), password, marker, kind)
    # garbage: the password in text that only looks like a URL, or not at all
    junk = draw(st.text(max_size=10))
    form = draw(st.sampled_from([
        "{p}", "postgresql://{u}:{p}", "postgresql://{u}:{p}@", "{j}://{u}:{p}@{j}", "postgresql+psycopg://:{p}@/",
        "host=127.0.0.1 port=1 password={p}", "postgresql://h/db?password={p}&password={p}", "{j}?password={p}",
        "postgresql://{u}:{p}@127.0.0.1:1/db?{j}", "sqlite:///{j}?password={p}",
    ]))
    secret_text = _query_password(password, how) if "password=" in form else _userinfo_password(password, how)
    return StorageCase(form.format(p=secret_text, u=user, j=junk), password, marker, "garbage")


# --- command lines ------------------------------------------------------------------------------

ARG_VALUES = st.one_of(
    st.sampled_from(["0", "1", "2", "-1", "3", "07", "1e3", "1.5", "0x10", "4294967295", "4294967296", "99999999999999999999",
                     "", " ", "-", "--", "--json", "nan", "inf", "١", "+1", "1_000", " 1", "t", "t.toml", "nope", "runs", ".", "..",
                     "/", "valid", "test", "011011", "111111", "000000"]),
    st.integers(-3, 70).map(str),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
)
