"""``TrialIndex``: incremental answers equal the answers computed from scratch over every trial,
through a study's life (trials started, completed, pruned, failed by the heartbeat, retried),
on the list Optuna's caching storage returns and on copies of it."""

from __future__ import annotations

import copy
import datetime
import random

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from search_service.storage import STALE_KEY, open_storage
from search_service.trial_index import MASK_KEY, TrialIndex, budget_place, holds_mask, trial_mask

PATHS = ["a->b", "a->c", "b->a", "b->c"]
BIT = CategoricalDistribution((0, 1))


def _brute(trials, number, mask, place):
    """The answers, straight from the definitions, over all trials."""
    others = [t for t in trials if t.number != number and holds_mask(t)]
    held = {m for t in others if (m := trial_mask(t, PATHS)) is not None}
    running = sum(1 for t in others if t.state != TrialState.COMPLETE)
    rivals = sorted(t.number for t in others if trial_mask(t, PATHS) == mask)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    live = (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE)
    before = 0
    for t in trials:
        if t.number == number or budget_place(t) >= place:
            continue
        if t.state in live or (holds_mask(t) and t.number not in retried):
            before += 1
    complete = sorted(t.number for t in trials if t.state == TrialState.COMPLETE and t.values is not None and trial_mask(t, PATHS) is not None)
    return held, running, rivals, counts, before, complete


def _answers(index: TrialIndex, number, mask, place):
    completed, open_rivals = index.rivals(number, mask)
    rivals = sorted([t.number for t in open_rivals] + ([-1] if completed else []))
    return (index.held_masks(number), index.running_others(number), rivals, index.state_counts(), index.places_before(place, number), sorted(t.number for t in index.complete))


def _check(index: TrialIndex, trials, rng):
    index.update(trials)
    for _ in range(5):
        number = rng.choice([t.number for t in trials] + [len(trials)])
        mask = tuple(rng.randint(0, 1) for _ in PATHS)
        place = (rng.randint(0, len(trials)), number)
        held, running, rivals, counts, before, complete = _brute(trials, number, mask, place)
        got = _answers(index, number, mask, place)
        assert got[0] == held and got[1] == running and got[3] == counts and got[4] == before and got[5] == complete
        # rivals: a complete one shows as -1 (the index knows that one holds it, not which)
        complete_rivals = [n for n in rivals if next(t for t in trials if t.number == n).state == TrialState.COMPLETE]
        open_rivals = [n for n in rivals if n not in complete_rivals]
        assert got[2] == sorted(open_rivals + ([-1] if complete_rivals else []))
        if not any(t.number == number and t.state == TrialState.COMPLETE for t in trials):  # a running trial asks
            excluded = {tuple(rng.randint(0, 1) for _ in PATHS) for _ in range(3)}
            sizes = index.size_counts(index.open_masks(number) | excluded)
            expected = [sum(1 for m in held | excluded if sum(m) == size) for size in range(len(PATHS) + 1)]
            assert sizes.tolist() == expected


@pytest.mark.parametrize("copies", [False, True], ids=["cached-list", "fresh-copies"])
def test_incremental_answers_equal_answers_from_scratch(tmp_path, copies):
    rng = random.Random(0)
    storage = open_storage(f"sqlite:///{tmp_path / 'index.db'}", heartbeat=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    sid = study._study_id
    backend = study._storage
    index = TrialIndex(PATHS)

    def read():
        trials = backend.get_all_trials(sid, deepcopy=False)
        return copy.deepcopy(trials) if copies else trials

    running = []
    for _step in range(120):
        action = rng.random()
        if action < 0.45 or not running:  # start a trial: its claim, maybe its parameters
            trial = study.ask()
            mask = tuple(rng.randint(0, 1) for _ in PATHS)
            backend.set_trial_system_attr(trial._trial_id, MASK_KEY, "".join(map(str, mask)))
            if rng.random() < 0.7:
                for name, bit in zip(PATHS, mask):
                    backend.set_trial_param(trial._trial_id, name, float(bit), BIT)
            running.append(trial)
        else:
            trial = running.pop(rng.randrange(len(running)))
            kind = rng.random()
            if kind < 0.6:
                study.tell(trial, [rng.random(), rng.random()])
            elif kind < 0.75:
                study.tell(trial, state=TrialState.PRUNED)
            else:  # failed by the heartbeat: stale, and retried (or not yet)
                backend.set_trial_system_attr(trial._trial_id, STALE_KEY, True)
                study.tell(trial, state=TrialState.FAIL)
                if rng.random() < 0.5:
                    frozen = backend.get_trial(trial._trial_id)
                    retry = optuna.trial.create_trial(
                        state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
                        system_attrs={"failed_trial": trial.number, "retry_history": [trial.number]},
                    )
                    study.add_trial(retry)
        _check(index, read(), rng)


def test_a_heartbeat_failure_settles_once_its_retry_grace_is_over(tmp_path, monkeypatch):
    """A trial failed by the heartbeat holds its mask for ``PENDING_RETRY_S``; after that the
    index lets it go (it is settled then), as the definition does."""
    import search_service.trial_index as trial_index

    storage = open_storage(f"sqlite:///{tmp_path / 'grace.db'}", heartbeat=False)
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, MASK_KEY, "1010")
    study._storage.set_trial_system_attr(trial._trial_id, STALE_KEY, True)
    study.tell(trial, state=TrialState.FAIL)
    index = TrialIndex(PATHS)
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    assert index.update(trials).held_masks(99) == {(1, 0, 1, 0)}
    later = datetime.datetime.now() + datetime.timedelta(seconds=trial_index.PENDING_RETRY_S + 1)

    class _Later(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return later

    monkeypatch.setattr(trial_index.datetime, "datetime", _Later)
    assert index.update(trials).held_masks(99) == set()
    assert index.update(trials).state_counts()["fail"] == 1
