"""Measured costs in a study: the tables a study prices latency and peak memory by, and the
exact measurements of its front (``search_service.objectives`` says why both).

- ``build_tables`` measures the masks of a design on the study's latency device when the study
  is created and fits one ``supernet.hardware.CostTable`` per measured cost the study uses (as
  an objective or a limit); ``creation`` writes them with the study, in its first transaction.
- ``study_tables`` reads them back: every worker prices masks with the same tables.
- ``measure_front`` measures each front member's latency and peak memory on this machine (the
  median of repeated runs, and their spread) and records them as study system attributes, one
  key per mask (``mro:measured:MASK``), which any process may write at any time; ``measured``
  reads them.
- ``noise_ties`` says which front members are no better than another within the device's noise.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from search_service.objectives import HARDWARE_KEY, MEASURED, TABLES_KEY, Objectives
from supernet.device import resolve_device
from supernet.errors import ConfigError
from supernet.hardware import (
    CostTable,
    Measurement,
    autocast_dtype,
    describe_device,
    fit_cost_table,
    measure_latency,
    model_on,
    peak_memory_mb,
)

log = logging.getLogger("mro_search")

MEASURED_PREFIX = "mro:measured:"  # study system attribute per front mask: its exact measurements


def latency_setting(search_cfg: Any, train_device: str, override: str | None = None) -> dict[str, Any]:
    """Where and how a study measures: ``--device``, else ``[search] latency_device``, else the
    training device; with the batch size and precision of ``[search]``."""
    setting = override or search_cfg.latency_device or train_device
    where = "--device" if override else ("[search] latency_device" if search_cfg.latency_device else "[train] device")
    device, _ = resolve_device(setting, where=where)
    autocast_dtype(search_cfg.latency_precision, device)  # refuses fp16 on the CPU in one line
    return {"device": str(device), "batch_size": int(search_cfg.latency_batch_size), "precision": search_cfg.latency_precision}


def build_tables(model: torch.nn.Module, objectives: Objectives, setting: Mapping[str, Any], *, seed: int = 0,
                 progress: Any = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The study's cost tables (as ``CostTable.to_dict``) for the measured costs it uses, and
    where they were measured (``mro:hardware``); nothing when it uses none."""
    if not objectives.measured:
        return {}, {}
    net = model_on(model, setting["device"])
    tables = {}
    for quantity in objectives.measured:
        if progress is not None:
            progress(f"measuring {quantity} on {describe_device(setting['device'])} for the study's {quantity} table")
        table = fit_cost_table(net, quantity, device=setting["device"], batch_size=setting["batch_size"],
                               precision=setting["precision"], seed=seed)
        tables[quantity] = table.to_dict()
    where = {**setting, "label": describe_device(setting["device"]), "host": platform.node()}
    return tables, where


def study_tables(attrs: Mapping[str, Any]) -> dict[str, CostTable]:
    """The cost tables a study recorded (none for a study without measured costs)."""
    stored = attrs.get(TABLES_KEY)
    if not isinstance(stored, dict):
        return {}
    return {q: CostTable.from_dict(d) for q, d in stored.items() if q in MEASURED}


def measured_key(mask: str) -> str:
    return MEASURED_PREFIX + mask


def measured(attrs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The front masks' exact measurements: ``{mask: {"latency_ms": {...}, "peak_memory_mb": x, ...}}``."""
    return {k[len(MEASURED_PREFIX):]: v for k, v in attrs.items() if k.startswith(MEASURED_PREFIX) and isinstance(v, dict)}


def measure_mask(model: torch.nn.Module, mask: Sequence[int], quantities: Sequence[str], setting: Mapping[str, Any]) -> dict[str, Any]:
    """One mask measured exactly on this machine: the quantities asked for, and where."""
    net = model_on(model, setting["device"])
    kw = {"device": setting["device"], "batch_size": setting["batch_size"], "precision": setting["precision"]}
    out: dict[str, Any] = {"device": describe_device(setting["device"]), "host": platform.node(),
                           "batch_size": setting["batch_size"], "precision": setting["precision"]}
    if "latency_ms" in quantities:
        m: Measurement = measure_latency(net, mask, **kw)
        out["latency_ms"] = {"median": m.median_ms, "iqr": m.iqr_ms, "runs": m.runs, "spread": m.spread}
    if "peak_memory_mb" in quantities:
        out["peak_memory_mb"] = float(peak_memory_mb(net, mask, **kw))
    return out


def measure_front(search: Any, model: torch.nn.Module, rows: Sequence[Mapping[str, Any]], objectives: Objectives,
                  setting: Mapping[str, Any] | None = None) -> int:
    """Measure every front member not measured yet on this machine and record it with the study
    (``mro:measured:MASK``). Returns how many were measured."""
    if not objectives.measured or not rows:
        return 0
    attrs = search.attrs
    setting = dict(setting or attrs.get(HARDWARE_KEY) or {})
    if not setting:
        return 0
    try:
        resolve_device(setting["device"], where="the study's latency device")
    except ConfigError:
        setting["device"] = "cpu"  # measured where the table was not: said by the device label
    done = measured(attrs)
    storage, study_id = search.optuna_study._storage, search.optuna_study._study_id
    count = 0
    for row in rows:
        mask = row.get("mask")
        if not mask or mask in done:
            continue
        bits = [int(c) for c in mask]
        storage.set_study_system_attr(study_id, measured_key(mask), measure_mask(model, bits, objectives.measured, setting))
        count += 1
    return count


def noise_ties(rows: Sequence[Mapping[str, Any]], objectives: Objectives, spread: float) -> dict[int, int]:
    """Front members that are on the front only by a latency lead smaller than the device's
    noise: ``{trial: trial it ties with}``. Member B ties with A when A is at least as good on
    every other objective and B's latency is lower than A's by less than ``spread`` (relative:
    the median IQR/median of repeated measurements) of A's latency: B is not called better."""
    if "latency_ms" not in objectives.costs or spread <= 0:
        return {}
    names = objectives.names
    li = names.index("latency_ms")
    ties: dict[int, int] = {}
    for b in rows:
        for a in rows:
            if a is b:
                continue
            va, vb = a["values"], b["values"]
            others_ok = all((va[i] >= vb[i]) if i == 0 else (va[i] <= vb[i]) for i in range(len(names)) if i != li)
            close = vb[li] < va[li] and va[li] - vb[li] <= spread * va[li]
            if others_ok and close:
                ties[int(b["trial"])] = int(a["trial"])
                break
    return ties


def device_spread(tables: Mapping[str, CostTable]) -> float:
    """The latency table's measured spread (0 when the study has none)."""
    table = tables.get("latency_ms")
    return float(table.spread) if table is not None else 0.0


def limit_tables(model: Any, flops: Any, objectives: Objectives) -> dict[str, dict[str, Any]]:
    """The integer additive tables of a study's MFLOPs and parameter limits, for the sampler's
    ``MaskFilter`` (latency and memory limits use the study's cost tables): FLOPs from the FLOPs
    table, parameters per part as ``supernet.exhaustive.params_cost`` counts them."""
    from supernet.exhaustive import params_cost

    out: dict[str, dict[str, Any]] = {}
    if "mflops" in objectives.limits:
        out["mflops"] = {"base": int(flops.shared), "modality": [int(v) for v in flops.modality], "path": [int(v) for v in flops.path]}
    if "params" in objectives.limits:
        cost = params_cost(model)
        out["params"] = {"base": int(cost.base), "modality": [int(v) for v in cost.modality], "path": [int(v) for v in cost.path]}
    return out
