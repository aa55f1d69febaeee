"""Benchmark: does the supernet learn the family's paths at all? (issue 17, diagnosis)

Usage: python benchmarks/bench_learnable.py VARIANT [SEED]

Trains one supernet (``train_supernet``, one torch thread, CPU) on ``studies/family.toml`` with
``[data] seed`` and ``[train] seed`` = SEED (default 0), changed by VARIANT: ``base`` (the study
as shipped) or ``+``-joined changes: ``noshort`` (no shortcut modality), ``nointer`` (no
multiplicative pair), ``short=S`` (shortcut_strength), ``epochs=E``, ``warm=E`` (warm-up
epochs), ``mps=M`` (masks per step), ``lr=X``, ``width=W``, ``head=NAME``, ``train=N``
(training samples). E.g. ``noshort+nointer`` or ``short=0.5+epochs=20``.

Prints the CPU seconds of the training, then one line per epoch from the training's history:
each informative path's **single-path validation accuracy** (the subnet that keeps only that
path, scored with the shared weights on the 5,000 validation samples: 0.5 is chance), the largest
and the median single-path accuracy of the other paths, the full mask's validation loss (ln 2 =
0.693 is chance; above it the supernet is confidently wrong, as a model that reads the shortcut
is on data where the shortcut carries no label) and the prior's keep probabilities of the
informative paths. A supernet that learned a path shows it here first; bench_method's arms can
only differ where these lines show learned signal.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from search_service.study_file import load_study  # noqa: E402
from supernet.data import load_data  # noqa: E402
from supernet.paths import path_names  # noqa: E402
from supernet.train import train_supernet  # noqa: E402

# each variant part: (section, change); the change takes the section's config and the part's value
PARTS = {
    "noshort": ("data", lambda c, v: {"shortcut_modality": ""}),
    "nointer": ("data", lambda c, v: {"interaction_paths": [], "interaction_strength": 0.0}),
    "short": ("data", lambda c, v: {"shortcut_strength": float(v)}),
    "train": ("data", lambda c, v: {"samples": [int(v), *c.samples[1:]]}),
    "epochs": ("train", lambda c, v: {"epochs": int(v)}),
    "warm": ("train", lambda c, v: {"warmup_epochs": int(v)}),
    "mps": ("train", lambda c, v: {"masks_per_step": int(v)}),
    "lr": ("train", lambda c, v: {"lr": float(v)}),
    "width": ("model", lambda c, v: {"width": int(v)}),
    "head": ("model", lambda c, v: {"head": v}),
}


def configure(variant: str, seed: int):
    study = load_study("family")
    configs = {"data": replace(study.data, seed=seed), "model": study.model, "train": replace(study.train, seed=seed, device="cpu")}
    for part in variant.split("+"):
        key, _, value = part.partition("=")
        if key == "base":
            continue
        if key not in PARTS:
            raise SystemExit(f"error: unknown variant part {part!r}; see the module docstring")
        section, change = PARTS[key]
        configs[section] = replace(configs[section], **change(configs[section], value))
    return configs["data"], configs["model"], configs["train"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit(__doc__.splitlines()[2])
    variant, seed = argv[0], int(argv[1]) if len(argv) > 1 else 0
    torch.set_num_threads(1)
    data_cfg, model_cfg, train_cfg = configure(variant, seed)
    data = load_data(data_cfg)
    names = path_names(data_cfg.modalities)
    index = {n: i for i, n in enumerate(names)}
    informative = list(data.informative_paths)
    started = time.process_time()
    result = train_supernet(data, model_cfg, train_cfg, progress=False)
    print(variant, seed, "cpu", round(time.process_time() - started), flush=True)
    for epoch, h in enumerate(result.history):
        acc = h.get("single_path_valid_accuracy")
        if acc is None:
            continue
        others = sorted(a for n, a in zip(names, acc) if n not in informative)
        print(epoch, "inf", {p: acc[index[p]] for p in informative}, "others max", others[-1],
              "median", others[len(others) // 2], "full loss", round(h.get("valid_loss_full", float("nan")), 3),
              "keep", [h["keep_probs"][index[p]] for p in informative])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
