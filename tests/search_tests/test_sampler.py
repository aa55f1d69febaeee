"""``MROSampler`` on plain Optuna studies whose parameters are path bits (no supernet needed).

The toy problem: six paths of three modalities; accuracy is the number of kept planted paths
plus a little noise fixed per mask, MFLOPs the number of kept paths.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search_service.sampler import BUDGET_KEY, MASK_KEY, PATHS_KEY, PRIOR_KEY, MROSampler

PATHS = ["text->audio", "text->vision", "audio->text", "audio->vision", "vision->text", "vision->audio"]
PLANTED = {"audio->text", "text->vision"}
N_MASKS = 2 ** len(PATHS) - 1  # 63 non-empty masks

optuna.logging.set_verbosity(optuna.logging.WARNING)


def toy_values(bits: dict[str, int]) -> tuple[float, float]:
    key = int("".join(str(bits[p]) for p in PATHS), 2)
    noise = float(np.random.default_rng(key).normal(0.0, 0.05))
    return sum(bits[p] for p in PLANTED) + noise, float(sum(bits.values()))


def suggest_mask(trial: optuna.Trial) -> str:
    return "".join(str(trial.suggest_categorical(p, (0, 1))) for p in PATHS)


def new_study(sampler: MROSampler, storage=None, **attrs) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler, storage=storage)
    for key, value in attrs.items():
        study._storage.set_study_system_attr(study._study_id, key, value)
    return study


def run_toy(study: optuna.Study, n_trials: int) -> list[str]:
    """Run ``n_trials`` toy trials; the masks in trial order."""
    masks: list[str] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        masks.append(suggest_mask(trial))
        return toy_values(trial.params)

    study.optimize(objective, n_trials=n_trials)
    return masks


def prior_order(probs: list[float]) -> list[str]:
    """All non-empty masks by descending probability under independent keeps ``probs``."""
    p = np.array(probs)
    masks = [tuple((m >> (len(p) - 1 - i)) & 1 for i in range(len(p))) for m in range(1, 2 ** len(p))]
    score = {m: float(np.sum(np.where(np.array(m) == 1, np.log(p), np.log1p(-p)))) for m in masks}
    assert len({round(v, 9) for v in score.values()}) == len(masks), "choose probabilities without ties"
    return ["".join(map(str, m)) for m in sorted(masks, key=lambda m: (-score[m], sum(m)))]


def test_whole_masks_come_from_sample_relative():
    seen_relative: list[set[str]] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        mask = suggest_mask(trial)
        seen_relative.append(set(trial.relative_params))
        stored = trial.study._storage.get_trial_system_attrs(trial._trial_id)
        assert stored[MASK_KEY] == mask, "the claimed mask is the one the trial got"
        return toy_values(trial.params)

    study = new_study(MROSampler(paths=PATHS, n_startup_trials=3, seed=0))
    study.optimize(objective, n_trials=12)
    assert all(rel == set(PATHS) for rel in seen_relative), seen_relative


def test_paths_are_inferred_from_completed_trials():
    """Without ``paths`` (and no mro:paths attribute) the first trial is sampled independently;
    once a trial is complete, the bits are the relative search space."""
    seen_relative: list[set[str]] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        suggest_mask(trial)
        seen_relative.append(set(trial.relative_params))
        return toy_values(trial.params)

    study = new_study(MROSampler(n_startup_trials=2, seed=1))
    study.optimize(objective, n_trials=6)
    assert seen_relative[0] == set()
    assert all(rel == set(PATHS) for rel in seen_relative[1:]), seen_relative


def test_all_masks_distinct_until_the_space_is_exhausted():
    study = new_study(MROSampler(paths=PATHS, n_startup_trials=10, seed=3))
    masks = run_toy(study, N_MASKS)
    assert "000000" not in masks
    assert len(set(masks)) == N_MASKS, [m for m, n in Counter(masks).items() if n > 1]
    # with every mask tried, a further trial gets no mask: it is pruned, not given a repeat
    assert run_toy(study, 1) == []
    last = study.get_trials(deepcopy=False)[-1]
    assert last.state == TrialState.PRUNED and not last.params
    assert study.sampler.no_mask_reason(study, last.number) == f"all {N_MASKS} masks scored"
    assert study.sampler.mask_space(study).exhausted


def test_enumerates_by_prior_score_when_the_untried_masks_fit_the_budget():
    probs = [0.9, 0.25, 0.72, 0.41, 0.63, 0.18]  # no two masks tie
    sampler = MROSampler(paths=PATHS, prior_keep_probs=probs, n_startup_trials=100, seed=4)
    study = new_study(sampler, **{BUDGET_KEY: N_MASKS})
    masks = run_toy(study, N_MASKS)
    assert masks == prior_order(probs)


def test_budget_and_prior_are_read_from_the_study():
    probs = [0.12, 0.83, 0.37, 0.68, 0.46, 0.57]
    study = new_study(MROSampler(n_startup_trials=100, seed=5), **{PATHS_KEY: PATHS, PRIOR_KEY: probs, BUDGET_KEY: N_MASKS})
    assert run_toy(study, 10) == prior_order(probs)[:10]


def test_startup_trials_are_uniform_not_from_the_prior():
    """A prior that keeps every path with probability 0.97 would nearly always propose 111111;
    the startup trials ignore it: uniform over the 63 non-empty masks (mean 6*32/63 ~ 3.05 bits)."""
    first: list[str] = []
    for seed in range(300):
        study = new_study(MROSampler(paths=PATHS, prior_keep_probs=[0.97] * 6, n_startup_trials=5, seed=seed))
        first.extend(run_toy(study, 1))
    bits = [m.count("1") for m in first]
    assert 2.7 < float(np.mean(bits)) < 3.4, Counter(bits)
    assert len(set(first)) >= 50, len(set(first))
    assert Counter(first)["111111"] < 20


def test_same_seed_same_sequence_other_seed_other_sequence():
    def sequence(seed: int) -> list[str]:
        return run_toy(new_study(MROSampler(paths=PATHS, n_startup_trials=5, seed=seed)), 20)

    a, b, c = sequence(11), sequence(11), sequence(12)
    assert a == b
    assert a != c


def test_two_open_trials_never_share_a_mask():
    """study.ask() twice before telling: the second trial sees the first one's claim. Under a
    budget covering the whole space both would propose the same (best untried) mask."""
    for budget in (None, N_MASKS):
        attrs = {BUDGET_KEY: budget} if budget else {}
        study = new_study(MROSampler(paths=PATHS, n_startup_trials=4, seed=6), **attrs)
        seen: list[str] = []
        for i in range(30):
            first, second = study.ask(), study.ask()
            order = (first, second) if i % 2 else (second, first)  # either one may sample first
            masks = [suggest_mask(t) for t in order]
            assert masks[0] != masks[1]
            for t in order:
                study.tell(t, toy_values(t.params))
            seen.extend(masks)
        assert len(set(seen)) == len(seen), [m for m, n in Counter(seen).items() if n > 1]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_retried_trial_finishes_the_failed_trials_mask():
    """A worker killed between two suggestions leaves a trial with a claimed mask and only some
    of its bits; the heartbeat's retry (Optuna's RetryHeartbeatStaleTrialCallback) copies both.
    The retry must run that mask, not the copied bits completed from another proposal, which
    may be a mask already tried (here: 101111, the only other mask beginning 10111)."""
    from optuna.distributions import CategoricalDistribution
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import create_trial

    bits = CategoricalDistribution((0, 1))
    for seed in range(8):
        study = new_study(MROSampler(paths=PATHS, n_startup_trials=2, seed=seed))
        for mask in ("101111", "010000", "000011"):
            params = {p: int(b) for p, b in zip(PATHS, mask)}
            study.add_trial(create_trial(params=params, distributions=dict.fromkeys(PATHS, bits), values=list(toy_values(params))))
        partial = {p: int(b) for p, b in zip(PATHS[:5], "10111")}
        study.add_trial(
            create_trial(state=TrialState.FAIL, params=partial, distributions=dict.fromkeys(partial, bits), system_attrs={MASK_KEY: "101110"})
        )
        RetryHeartbeatStaleTrialCallback()(study, study.get_trials(deepcopy=False)[-1])
        retried = run_toy(study, 1)
        assert retried == ["101110"], f"seed {seed}: the retry ran {retried[0]}"


class _RacingStorage(RDBStorage):
    """A real SQLite storage that runs ``before_claim`` once, just before this process writes
    its first mask claim: what another worker does between this worker's read of the study and
    its write."""

    def __init__(self, url: str, before_claim) -> None:
        super().__init__(url)
        self._before_claim = before_claim

    def set_trial_system_attr(self, trial_id, key, value) -> None:
        if key == MASK_KEY and self._before_claim is not None:
            hook, self._before_claim = self._before_claim, None
            hook()
        super().set_trial_system_attr(trial_id, key, value)


@pytest.mark.parametrize("racer_first", [True, False], ids=["higher-number-claims-in-between", "lower-number-claims-in-between"])
def test_a_claim_that_lands_between_read_and_write_is_respected(tmp_path, racer_first):
    """Two workers propose the same mask: worker A has read the study, worker B proposes,
    writes its claim and checks it, and only then does A write its claim. Whichever of the two
    has the lower trial number, they must not both keep the mask."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    plain = RDBStorage(url)
    # a budget beyond the space: the masks are enumerated, so both propose the same one
    study_b = new_study(MROSampler(paths=PATHS, n_startup_trials=100, seed=1), storage=plain, **{BUDGET_KEY: 1000})
    run_toy(study_b, 3)
    trials: dict[str, optuna.Trial] = {}
    masks: dict[str, str] = {}

    def b_claims() -> None:
        masks["b"] = suggest_mask(trials["b"])

    racing = _RacingStorage(url, b_claims)
    study_a = optuna.load_study(study_name=study_b.study_name, storage=racing, sampler=MROSampler(paths=PATHS, n_startup_trials=100, seed=2))
    if racer_first:  # B has the higher number
        trials["a"], trials["b"] = study_a.ask(), study_b.ask()
    else:
        trials["b"], trials["a"] = study_b.ask(), study_a.ask()
    masks["a"] = suggest_mask(trials["a"])
    assert "b" in masks, "the racing worker did not run"
    assert masks["a"] != masks["b"], f"both workers kept mask {masks['a']}"
    for key in ("a", "b"):
        (study_a if key == "a" else study_b).tell(trials[key], toy_values(trials[key].params))
    done = [t for t in study_b.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert len({"".join(str(t.params[p]) for p in PATHS) for t in done}) == len(done) == 5


@pytest.mark.postgres
def test_threads_racing_on_postgres_never_share_a_mask(pg_url):
    """Two workers (threads, each with its own connection pool) ask at the same moment, 31
    times, with a budget beyond the space (masks are enumerated): their proposals collide;
    their claims must not."""
    from search_service.storage import open_storage

    study = new_study(MROSampler(paths=PATHS, seed=0), storage=open_storage(pg_url, heartbeat=False), **{BUDGET_KEY: 1000})
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            mine = optuna.load_study(study_name=study.study_name, storage=open_storage(pg_url, heartbeat=False), sampler=MROSampler(paths=PATHS, n_startup_trials=100, seed=seed))
            for _ in range(31):
                barrier.wait(timeout=60)
                trial = mine.ask()
                suggest_mask(trial)
                mine.tell(trial, toy_values(trial.params))
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    masks = ["".join(str(t.params[p]) for p in PATHS) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    assert len(masks) == 62
    assert len(set(masks)) == 62, [m for m, n in Counter(masks).items() if n > 1]


def test_front_moves_shrink_large_members_to_untried_subsets():
    """A drop from a front member of many paths may drop several: the result is an untried
    strict subset of the member with 1 to |member| - 2 paths, favouring high keep scores."""
    from search_service.sampler import _shrink

    rng = np.random.default_rng(0)
    member = (1, 1, 1, 1, 1, 1, 0, 0, 0, 0)
    theta = np.array([3.0, 3.0, -3.0, -3.0, -3.0, -3.0, 0, 0, 0, 0])
    taken = {member, (1, 1, 0, 0, 0, 0, 0, 0, 0, 0)}
    seen = Counter()
    for _ in range(300):
        mask = _shrink(theta, member, taken, rng)
        assert mask is not None and mask not in taken
        assert all(b <= m for b, m in zip(mask, member)) and 1 <= sum(mask) <= sum(member) - 2
        seen[mask[0] + mask[1]] += 1
    assert seen[0] < seen[1] + seen[2]  # the two high-scoring paths are kept far more often
    # nothing untried left among the small subsets: None, not a repeat
    tiny = (1, 1, 1, 0)
    assert _shrink(np.zeros(4), tiny, {tiny, (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0)}, rng) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-3, 3).map(float), st.floats(-1e6, 1e6, allow_nan=False)), min_size=1, max_size=80))
def test_the_refinements_ranks_are_scipys_rankdata(values):
    """The refinement ranks the trials' losses without SciPy (its per-call overhead was most of a
    refinement); ties, which non-domination ranks make common, share their mean rank."""
    from scipy.stats import rankdata

    from search_service.sampler._refinement import _average_ranks

    x = np.array(values)
    assert np.array_equal(_average_ranks(x), rankdata(x, method="average"))
