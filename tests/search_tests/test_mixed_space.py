"""``MROSampler`` on mixed search spaces: path bits beside ordinary hyperparameters, which go to
the ``independent_sampler`` (TPE by default). A trial is a repeat only when its mask and every
other parameter repeat: an exhausted mask space does not prune trials whose other parameters
still vary (``search_service/sampler/_mixed.py``)."""

from __future__ import annotations

import math

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from search_service.sampler import MROSampler

PATHS = ["text->audio", "text->vision", "audio->text"]  # k = 3: 7 masks

optuna.logging.set_verbosity(optuna.logging.WARNING)


def mixed_objective(trial: optuna.Trial) -> tuple[float, float]:
    mask = [trial.suggest_categorical(p, [0, 1]) for p in PATHS]
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    depth = trial.suggest_int("depth", 1, 8)
    act = trial.suggest_categorical("activation", ["relu", "gelu", "tanh"])
    fit = -abs(math.log10(lr) + 2.5) - 0.1 * abs(depth - 4) + (0.2 if act == "gelu" else 0.0)
    return mask[2] + 0.5 * mask[1] + fit, float(sum(mask) + depth)


class CountingSampler(RandomSampler):
    """A RandomSampler that counts the parameters it was asked for."""

    def __init__(self) -> None:
        super().__init__(seed=1)
        self.asked: list[str] = []

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> object:
        self.asked.append(param_name)
        return super().sample_independent(study, trial, param_name, param_distribution)


def test_an_exhausted_mask_space_does_not_prune_trials_whose_hyperparameters_vary():
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=MROSampler(paths=PATHS, n_startup_trials=3, seed=0))
    study.optimize(mixed_objective, n_trials=25)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 25
    masks = ["".join(str(t.params[p]) for p in PATHS) for t in trials]
    assert len(set(masks[:7])) == 7, "the 7 masks first, each once"
    assert "000" not in masks
    full = {tuple(sorted(t.params.items())) for t in trials}
    assert len(full) == 25, "no trial repeats another's mask and hyperparameters"


def test_hyperparameters_go_to_the_independent_sampler_and_tpe_is_the_default():
    counting = CountingSampler()
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=MROSampler(paths=PATHS, independent_sampler=counting, seed=0))
    study.optimize(mixed_objective, n_trials=9)
    assert counting.asked == ["lr", "depth", "activation"] * 9, "every hyperparameter, never a path bit"
    assert isinstance(MROSampler(seed=0)._independent_sampler, TPESampler)


def test_a_trial_is_pruned_as_a_repeat_only_when_mask_and_every_parameter_repeat():
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_categorical("p", [0, 1])
        return {"a": 1.0, "b": 2.0}[trial.suggest_categorical("choice", ["a", "b"])]

    study = optuna.create_study(sampler=MROSampler(paths=["p"], seed=0))  # one mask, two choices
    study.optimize(objective, n_trials=4)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert {t.params["choice"] for t in study.trials[:2]} == {"a", "b"}


def test_conditional_hyperparameters_single_objective():
    def objective(trial: optuna.Trial) -> float:
        bits = [trial.suggest_categorical(p, [0, 1]) for p in PATHS[:2]]
        if trial.suggest_categorical("optimizer", ["adam", "sgd"]) == "adam":
            value = trial.suggest_float("adam_lr", 1e-4, 1e-2, log=True)
        else:
            value = trial.suggest_float("momentum", 0.0, 0.99, step=0.01)
        return sum(bits) + value

    study = optuna.create_study(sampler=MROSampler(paths=PATHS[:2], n_startup_trials=2, seed=0))
    study.optimize(objective, n_trials=12)
    assert all(t.state == TrialState.COMPLETE for t in study.trials) and len(study.trials) == 12
    assert {"adam_lr", "momentum"} <= {name for t in study.trials for name in t.params}


def test_a_path_only_study_still_prunes_once_every_mask_is_scored():
    def objective(trial: optuna.Trial) -> float:
        return float(sum(trial.suggest_categorical(p, [0, 1]) for p in PATHS))

    study = optuna.create_study(sampler=MROSampler(paths=PATHS, seed=0))
    study.optimize(objective, n_trials=9)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE] * 7 + [TrialState.PRUNED] * 2


def test_independent_sampler_hooks_and_reseed_are_forwarded():
    class Hooks(BaseSampler):
        def __init__(self) -> None:
            self.calls: list[str] = []

        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, param_name, param_distribution):
            return RandomSampler(seed=0).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self.calls.append("before")

        def after_trial(self, study, trial, state, values):
            self.calls.append("after")

        def reseed_rng(self):
            self.calls.append("reseed")

    hooks = Hooks()
    sampler = MROSampler(paths=PATHS, independent_sampler=hooks, seed=0)
    optuna.create_study(sampler=sampler).optimize(lambda t: mixed_objective(t)[0], n_trials=2)
    sampler.reseed_rng()
    assert hooks.calls == ["before", "after", "before", "after", "reseed"]


def test_bench_mixed_runs_its_script_to_complete_trials():
    from benchmarks import bench_mixed

    mro, random = bench_mixed.run("mro", 0, 12), bench_mixed.run("random", 0, 12)
    assert mro["complete"] == random["complete"] == 12
    assert 0.0 < mro["hypervolume"] < float(bench_mixed.REFERENCE[1])  # accuracy <= 1: at most 1 x cost span
