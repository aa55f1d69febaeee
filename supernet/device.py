"""Which device and precision a command runs on: ``[train] device``, ``--device``, ``precision``.

One function, :func:`resolve_device`, turns a setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``,
``mps``) into a ``torch.device`` and a sentence saying why, which every command logs
(``device: cpu (auto: no CUDA or MPS device)``). ``auto`` takes CUDA if torch sees one, else
Apple's MPS, else the CPU. An explicit device this machine lacks is a :class:`ConfigError`
naming it and the fix. Under ``torchrun`` on CUDA each rank takes ``cuda:LOCAL_RANK``
(``local_rank``), as PyTorch's DDP tutorial does.

The device is how a supernet is trained or scored, never what it is: it is not part of a
checkpoint's identity (``supernet.config.scoring_config``), checkpoints are saved from CPU
copies of the tensors and load on any device.
"""

from __future__ import annotations

import re

import torch

from supernet.config import DEVICE_CHOICES, DEVICE_PATTERN
from supernet.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def device_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot be used on this machine (``[train] device`` is checked in the study
    file only for its form: ``cuda:1`` is a fine device elsewhere), or None."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "this machine's torch sees no CUDA device"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "this machine has no MPS device"
    return None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(setting: str, *, local_rank: int | None = None, where: str = "[train] device") -> tuple[torch.device, str]:
    """The device a setting names on this machine, and why (for the log line).

    ``local_rank`` (a ``torchrun`` rank's ``LOCAL_RANK``) picks ``cuda:LOCAL_RANK`` for ``auto``
    and ``cuda``; an explicit ``cuda:N`` would put every rank on one GPU and is refused then.
    ``where`` names the setting in errors (``--device`` or ``[train] device``)."""
    if not isinstance(setting, str) or not re.fullmatch(DEVICE_PATTERN, setting):
        raise ConfigError(f"{where} {setting!r} is not one of {DEVICE_CHOICES}")
    if setting == "auto":
        if torch.cuda.is_available():
            index = local_rank if local_rank is not None else torch.cuda.current_device()
            device, why = torch.device("cuda", index), f"auto: {torch.cuda.get_device_name(index)}"
        elif _mps_available():
            device, why = torch.device("mps"), "auto: Apple MPS"
        else:
            device, why = torch.device("cpu"), "auto: no CUDA or MPS device"
    else:
        device, why = torch.device(setting), f"{where} = {setting}"
        if local_rank is not None and device.type == "cuda":
            if device.index is not None:
                raise ConfigError(f"{where} {setting!r} puts every torchrun rank on one GPU; use 'cuda' or 'auto' "
                                  "(each rank then takes cuda:LOCAL_RANK)")
            device = torch.device("cuda", local_rank)
    problem = device_problem(device)
    if problem:
        raise ConfigError(f"{where} {setting!r} is not available: {problem}; use 'auto' or 'cpu'")
    return device, why


def resolve_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``[train] precision`` on ``device``, or None for plain float32.

    ``auto``: bfloat16 autocast on CUDA (tensor cores; bf16 needs no loss scaling), float32
    elsewhere (CPU autocast is slower than float32 on most CPUs, MPS's bf16 support varies).
    ``bf16`` is honoured on any device when asked for explicitly (CPU autocast supports it)."""
    if setting not in PRECISIONS:
        raise ConfigError(f"[train] precision {setting!r} is not one of {', '.join(PRECISIONS)}")
    if setting == "bf16" or (setting == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def describe(device: torch.device, why: str) -> str:
    """The log line every command prints: ``device: cpu (auto: no CUDA or MPS device)``."""
    return f"device: {device} ({why})"
