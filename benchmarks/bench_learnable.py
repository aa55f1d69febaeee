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


def configure(variant: str, seed: int):
    study = load_study("family")
    data_cfg, model_cfg = replace(study.data, seed=seed), study.model
    train_cfg = replace(study.train, seed=seed, device="cpu")
    for part in variant.split("+"):
        k, _, v = part.partition("=")
        if k == "noshort":
            data_cfg = replace(data_cfg, shortcut_modality="")
        elif k == "nointer":
            data_cfg = replace(data_cfg, interaction_paths=[], interaction_strength=0.0)
        elif k == "short":
            data_cfg = replace(data_cfg, shortcut_strength=float(v))
        elif k == "epochs":
            train_cfg = replace(train_cfg, epochs=int(v))
        elif k == "warm":
            train_cfg = replace(train_cfg, warmup_epochs=int(v))
        elif k == "mps":
            train_cfg = replace(train_cfg, masks_per_step=int(v))
        elif k == "lr":
            train_cfg = replace(train_cfg, lr=float(v))
        elif k == "width":
            model_cfg = replace(model_cfg, width=int(v))
        elif k == "head":
            model_cfg = replace(model_cfg, head=v)
        elif k == "train":
            data_cfg = replace(data_cfg, samples=[int(v), *data_cfg.samples[1:]])
        elif k != "base":
            raise SystemExit(f"error: unknown variant part {part!r}; see the module docstring")
    return data_cfg, model_cfg, train_cfg


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
