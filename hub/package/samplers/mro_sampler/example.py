"""MROSampler from OptunaHub on a mask of 3 paths searched with two hyperparameters.

Run from anywhere: ``python hub/package/samplers/mro_sampler/example.py``. It loads the package
from this folder (``optunahub.load_local_module``, offline); once published, the same sampler
would come from ``optunahub.load_module(package="samplers/mro_sampler")``.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import optunahub

PATHS = ["text->audio", "text->vision", "audio->text"]  # the cross-modal paths: 7 masks

registry_root = Path(__file__).resolve().parents[2]  # the folder holding samplers/
module = optunahub.load_local_module(package="samplers/mro_sampler", registry_root=str(registry_root))


def objective(trial: optuna.Trial) -> tuple[float, float]:
    mask = {path: trial.suggest_categorical(path, [0, 1]) for path in PATHS}
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    depth = trial.suggest_int("depth", 1, 6)
    # train and score the subnet of this mask here; a stand-in:
    accuracy = 0.5 + 0.2 * mask["audio->text"] + 0.1 * mask["text->vision"] - 0.05 * abs(math.log10(lr) + 3) + 0.02 * depth
    return accuracy, float(depth * (1 + sum(mask.values())))  # maximize accuracy, minimize cost


sampler = module.MROSampler(paths=PATHS, seed=0)
study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
study.optimize(objective, n_trials=20)
for trial in study.best_trials:
    print("".join(str(trial.params[p]) for p in PATHS), trial.params["lr"], trial.params["depth"], trial.values)
