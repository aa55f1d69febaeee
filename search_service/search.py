"""Multi-objective Optuna studies over path masks, and the workers that run their trials.

A study maximizes the study file's accuracy metric and minimizes MFLOPs. It records, as study
system attributes, the path names, the pretrained prior's keep probabilities, the trial budget,
the rank loss, the study configuration and the supernet checkpoint's SHA-256 and location; a
worker whose checkpoint differs refuses to start. Each trial records the mask string, the active
path names, every metric, MFLOPs, the parameter count and the worker that ran it (``host:pid``)
as user attributes.

Budget: a trial may complete only if fewer than ``budget`` trials before it hold a place in
the budget when it starts. The order is the trial number, except that a retry of a trial whose
worker died (``storage.RetryStaleTrialCallback``) takes the place of the trial it retries. A
trial holds its place while it is running, waiting or complete, and so does a trial failed by
the heartbeat whose retry is not queued yet (it is marked ``mro:stale`` before it is failed): a
new trial started in that moment cannot take the retry's place, so the dead worker's mask is
not lost. Trial numbers are assigned atomically by the storage, so across any number of workers
and resumes there are never more COMPLETE trials than the budget; a trial refused this way is
pruned and its worker stops.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState
from tqdm import tqdm

from search_service.evaluator import Evaluator, objective_metric
from search_service.sampler import (
    BUDGET_KEY,
    MASK_KEY,
    PATHS_KEY,
    PRIOR_KEY,
    RANK_LOSS_KEY,
    MROSampler,
)
from search_service.storage import (
    OUTAGE_RETRIES,
    FaultTolerantRDBStorage,
    StorageError,
    StorageOutage,
    is_storage_outage,
    mask_password,
    open_storage,
    optuna_quiet,
    outage_reason,
    set_trial_attrs,
)
from search_service.study_file import Study
from search_service.trial_index import TrialIndex, budget_place
from supernet.errors import CheckpointError, ConfigError
from supernet.paths import format_mask

log = logging.getLogger("mro_search")

CHECKPOINT_SHA_KEY = "mro:checkpoint_sha256"
CHECKPOINT_PATH_KEY = "mro:checkpoint_path"
CONFIG_SHA_KEY = "mro:config_sha256"
CONFIG_KEY = "mro:study_config"
METRIC_KEY = "mro:metric"
FLOPS_BUDGET_KEY = "mro:flops_budget"
FULL_MASK_KEY = "mro:full_mask"  # the full mask's metrics, for the report
MFLOPS = "mflops"
WORKER_ATTR = "worker"  # trial user attribute: "host:pid" of the process that ran the trial


@dataclass
class SearchStudy:
    """An Optuna study and what the service knows about it."""

    optuna_study: optuna.Study
    url: str

    @property
    def attrs(self) -> dict[str, Any]:
        s = self.optuna_study
        return s._storage.get_study_system_attrs(s._study_id)

    @property
    def budget(self) -> int:
        return int(self.attrs.get(BUDGET_KEY, 0))

    def counts(self) -> dict[str, int]:
        return _count_states(self.optuna_study.get_trials(deepcopy=False))


def _count_states(trials) -> dict[str, int]:
    out = {state.name.lower(): 0 for state in TrialState}
    for t in trials:
        out[t.state.name.lower()] += 1
    return out


def create_search(study: Study, url: str, evaluator: Evaluator, *, trials: int | None = None) -> SearchStudy:
    """Create the study in storage, or load it and check it belongs to this checkpoint."""
    optuna_quiet()
    storage = open_storage(url)
    name = study.name
    checkpoint_sha = evaluator.checkpoint.file_sha256
    existing = _find_study(storage, name)
    if existing is not None:
        search = SearchStudy(optuna.load_study(study_name=name, storage=storage), url)
        _check_checkpoint(search, checkpoint_sha)
        if trials is not None and trials != search.budget:
            storage.set_study_system_attr(search.optuna_study._study_id, BUDGET_KEY, int(trials))
        return search
    metric = objective_metric(study)
    budget = int(trials if trials is not None else study.search.trials)
    prior = [float(q) for q in evaluator.checkpoint.prior.path_probs().detach()]
    full = evaluator.evaluate((1,) * evaluator.model.num_paths, study.search.split)
    attrs = {
        PATHS_KEY: evaluator.path_names,
        PRIOR_KEY: prior,
        BUDGET_KEY: budget,
        RANK_LOSS_KEY: study.train.rank_loss,
        METRIC_KEY: metric,
        FLOPS_BUDGET_KEY: study.search.flops_budget,
        CHECKPOINT_SHA_KEY: checkpoint_sha,
        CHECKPOINT_PATH_KEY: str(Path(evaluator.checkpoint.path).resolve()),
        CONFIG_SHA_KEY: study.sha256,
        CONFIG_KEY: json.dumps(_stored_config(study), sort_keys=True),
        FULL_MASK_KEY: {"mask": full["mask"], "metrics": full["metrics"], "mflops": full["mflops"]},
    }
    try:
        # all attributes are written before any worker can see a half-made study: create the
        # study, write them, and only then is it announced (workers wait for BUDGET_KEY)
        created = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"], load_if_exists=True)
        for key, value in attrs.items():
            storage.set_study_system_attr(created._study_id, key, value)
        created.set_metric_names([metric, MFLOPS])
    except Exception:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except Exception:
            pass
        raise
    return SearchStudy(created, url)


def _stored_config(study: Study) -> dict[str, Any]:
    """The study configuration as the study records it: a storage URL's password masked (the
    attributes are shown by optuna-dashboard and copied into reports)."""
    config = study.as_dict()
    if config["search"].get("storage"):
        config["search"]["storage"] = mask_password(config["search"]["storage"])
    return config


def load_search(name: str, url: str) -> SearchStudy:
    optuna_quiet()
    storage = open_storage(url)
    if _find_study(storage, name) is None:
        raise ConfigError(f"no study named {name!r} in {mask_password(url)}; create it with `mro-search run --study {name}`")
    search = SearchStudy(optuna.load_study(study_name=name, storage=storage), url)
    if BUDGET_KEY not in search.attrs:
        raise ConfigError(f"study {name!r} in {mask_password(url)} was not made by mro-search (no {BUDGET_KEY} attribute)")
    return search


def _find_study(storage, name: str):
    for summary in storage.get_all_studies():
        if summary.study_name == name:
            return summary
    return None


def _check_checkpoint(search: SearchStudy, checkpoint_sha: str) -> None:
    recorded = search.attrs.get(CHECKPOINT_SHA_KEY)
    if recorded and recorded != checkpoint_sha:
        raise CheckpointError(
            f"this worker's supernet checkpoint (SHA-256 {checkpoint_sha[:12]}…) differs from the one study "
            f"{search.optuna_study.study_name!r} was created with ({recorded[:12]}…); copy that checkpoint "
            f"here (recorded at {search.attrs.get(CHECKPOINT_PATH_KEY)})"
        )


class Objective:
    """Scores a trial's mask with the pretrained supernet: (accuracy metric, MFLOPs)."""

    def __init__(self, search: SearchStudy, evaluator: Evaluator, split: str = "valid") -> None:
        self.search = search
        self.evaluator = evaluator
        self.split = split
        self.paths = evaluator.path_names
        self.metric = search.attrs.get(METRIC_KEY, evaluator.metric)
        self.flops_budget = float(search.attrs.get(FLOPS_BUDGET_KEY, 0.0) or 0.0)
        self.budget = search.budget
        self.last_counts: dict[str, int] | None = None  # trial states as the last budget check saw them

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        try:
            return self._score(trial)
        except Exception as exc:
            if is_storage_outage(exc):  # leave the trial RUNNING: its heartbeat stops, it is retried
                raise StorageOutage(outage_reason(exc, self.search.url)) from exc
            raise

    def _score(self, trial: optuna.Trial) -> tuple[float, float]:
        # which process ran the trial (also for pruned and failed ones): "host:pid", written
        # with the trial itself by a worker's storage (``stamp_trials``), else here
        if trial.user_attrs.get(WORKER_ATTR) != worker_id():
            trial.set_user_attr(WORKER_ATTR, worker_id())
        mask, pending = self._suggest_mask(trial)
        try:
            if not any(mask):
                raise optuna.TrialPruned("the all-zero mask is not an architecture")
            if not self._admitted(trial):
                raise optuna.TrialPruned("the study's trial budget is already taken by earlier trials")
            result = self.evaluator.evaluate(mask, self.split)
            system_attrs: dict[str, Any] = {MASK_KEY: format_mask(mask)}
            if self.flops_budget > 0:
                # the legacy list form: Optuna reads it, and optuna-dashboard 0.21 reads only this
                system_attrs["constraints"] = [result["mflops"] - self.flops_budget]
            user_attrs: dict[str, Any] = {"mask": result["mask"], "active_paths": result["active_paths"], "metrics": result["metrics"]}
            user_attrs.update(result["metrics"])
            user_attrs[MFLOPS] = result["mflops"]
            user_attrs["params"] = result["params"]
            # one transaction for the path parameters and all the attributes: each separate
            # write is a commit (bench_overhead.py)
            set_trial_attrs(trial.storage, trial._trial_id, user_attrs, system_attrs, params=pending)
            pending = {}
        finally:
            if pending:  # pruned or failed: its parameters are recorded all the same
                set_trial_attrs(trial.storage, trial._trial_id, {}, params=pending)
        value = result["metrics"][self.metric]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise optuna.TrialPruned(f"metric {self.metric} is undefined for this mask")
        return float(value), float(result["mflops"])

    def _suggest_mask(self, trial: optuna.Trial) -> tuple[tuple[int, ...], dict[str, tuple[float, Any]]]:
        """The trial's mask, one ``suggest_categorical(path, (0, 1))`` per path, and the path
        parameters still to write (``{name: (internal value, distribution)}``).

        The sampler proposes the whole mask at once (``relative_params``) and has written it as
        its claim (``MASK_KEY``), which is what other workers and the retry of a dead worker's
        trial go by. The bits are put in the trial's cache, so that ``suggest_categorical``
        finds them and writes nothing; the caller writes them with the trial's attributes, in
        one transaction instead of one commit per path (``bench_overhead.py``). For an enqueued
        or retried mask (its parameters are given) ``suggest_categorical`` works as usual.
        """
        bit = CategoricalDistribution((0, 1))
        pending: dict[str, tuple[float, Any]] = {}
        try:
            relative = trial.relative_params
            cached = trial._cached_frozen_trial
            if all(name in relative for name in self.paths) and not any(name in cached.params for name in self.paths):
                for name in self.paths:
                    pending[name] = (bit.to_internal_repr(relative[name]), bit)
                    cached.distributions[name] = bit
                    cached.params[name] = relative[name]
        except AttributeError:
            pending = {}
        return tuple(int(trial.suggest_categorical(name, (0, 1))) for name in self.paths), pending

    def _admitted(self, trial: optuna.Trial) -> bool:
        """Whether the trial's place in the budget order is within the budget, judged on the
        trials as the sampler read them after this trial's claim (else read now)."""
        seen = getattr(trial.study.sampler, "index_seen", None)
        index = seen(trial.study, trial.number) if seen is not None else None
        if index is None:
            index = TrialIndex(self.paths).update(trial.study.get_trials(deepcopy=False))
        me = index.find(trial.number)
        place = budget_place(me) if me is not None else (trial.number, trial.number)
        self.last_counts = index.state_counts()
        return index.places_before(place, trial.number) < self.budget


def worker_id() -> str:
    """This process as a worker: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_worker(
    search: SearchStudy,
    evaluator: Evaluator,
    *,
    max_trials: int | None = None,
    seed: int | None = None,
    progress: bool = False,
    split: str = "valid",
    poll_seconds: float = 2.0,
) -> int:
    """Run trials until the study's budget of COMPLETE trials is reached (or ``max_trials``).

    While the budget is covered by trials that other workers are still running, wait: if one of
    them dies, its trial is failed after the heartbeat grace period and retried, and this worker
    may be the one to run it. Returns the number of trials this worker completed.
    """
    study = search.optuna_study
    attrs = search.attrs
    _check_checkpoint(search, evaluator.checkpoint.file_sha256)
    sampler = MROSampler(n_startup_trials=evaluator.study.search.n_startup_trials, seed=seed)
    study.sampler = sampler
    objective = Objective(search, evaluator, split)
    backend = getattr(study._storage, "_backend", study._storage)
    if isinstance(backend, FaultTolerantRDBStorage):
        backend.stamp_trials({WORKER_ATTR: worker_id()})  # written with each trial it starts
    budget = int(attrs[BUDGET_KEY])
    done = 0
    bar = tqdm(total=budget, desc=f"study {study.study_name}", unit="trial", disable=not progress or not sys.stderr.isatty(), file=sys.stderr)
    outages = 0  # consecutive turns that failed because the storage was unreachable
    stop = _StopBetweenTrials()
    room = False  # the last trial completed, and the study had room for another one
    try:
        while max_trials is None or done < max_trials:
            stop.check()
            try:
                if not room:
                    # (after a completed trial with room to spare this read is skipped: Optuna
                    # fails stale trials as it starts the next one, and the budget check of
                    # that trial's objective stops it if others took the room meanwhile)
                    fail_stale_trials(study)
                    counts = _count_states(study.get_trials(deepcopy=False))
                    outages = 0
                    bar.n = counts["complete"]
                    bar.refresh()
                    if counts["complete"] >= budget:
                        break
                    if counts["complete"] + counts["running"] >= budget and counts["waiting"] == 0:
                        time.sleep(poll_seconds)  # others hold the rest of the budget; wait and see
                        continue
                room = False
                objective.last_counts = None
                finished: list[optuna.trial.FrozenTrial] = []  # this worker's trial, as told
                study.optimize(objective, n_trials=1, catch=(), gc_after_trial=False, callbacks=[lambda _s, t, out=finished: out.append(t)])
                outages = 0
                last = finished[-1] if finished else None
                if last is not None and last.state == TrialState.COMPLETE:
                    done += 1
                    seen = objective.last_counts  # as the trial's budget check saw the study
                    if seen is not None:
                        bar.n = seen["complete"] + 1
                        bar.refresh()
                        # this trial was running then; room if the others left a place free
                        room = seen["complete"] + seen["running"] < budget
                elif last is not None and last.state == TrialState.PRUNED and not _budget_left(search, budget):
                    break
            except (Exception, StorageOutage) as exc:
                # the database restarted or the network dropped: wait and go on. A trial cut off
                # this way stays RUNNING without heartbeats; it is failed and retried after the
                # grace period (storage.RetryStaleTrialCallback), so no mask is lost
                if not is_storage_outage(exc):
                    raise
                outages += 1
                reason = outage_reason(exc, search.url)
                if outages > OUTAGE_RETRIES:
                    raise StorageError(
                        f"storage {mask_password(search.url)} unreachable for {OUTAGE_RETRIES} tries in a row ({reason}); "
                        f"the study is intact: run `mro-search resume --study {study.study_name}` when the database is back"
                    ) from exc
                delay = min(2.0 ** (outages - 1), 10.0)
                log.warning(f"mro-search: storage {mask_password(search.url)} unreachable ({reason}); retry {outages}/{OUTAGE_RETRIES} in {delay:.0f} s")
                time.sleep(delay)
    finally:
        stop.restore()
        bar.close()
    return done


class _StopBetweenTrials:
    """Ctrl-C (SIGINT) or SIGTERM (``docker stop``, ``kill``) stops a worker between trials.

    The first signal lets the running trial finish and then raises ``KeyboardInterrupt`` at the
    top of the worker's loop, where no storage transaction is open: an interrupt that lands in
    the middle of a database write can leave the write lock held (SQLite then blocks the
    worker's own next write until its busy timeout). The same signal again stops at once. Only
    in the main thread (Python runs signal handlers there); elsewhere it does nothing. A signal
    ignored when the worker starts (a background job of a shell ignores SIGINT) stays ignored, as
    in the ``run`` process that started the workers.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN:  # ignored on entry (a shell's background job, nohup): stays so
                continue
            self.previous[signum] = previous
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum in self.received:
            raise KeyboardInterrupt  # asked twice: now
        if not self.received:
            log.warning("mro-search: stopping after the running trial (the same signal again stops at once)")
        self.received.append(signum)

    def check(self) -> None:
        if self.received:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}


def _budget_left(search: SearchStudy, budget: int) -> bool:
    counts = search.counts()
    return counts["complete"] + counts["running"] < budget


def pareto_front(search: SearchStudy) -> list[dict[str, Any]]:
    """The front: trial number, mask, active paths, metrics, MFLOPs; sorted by MFLOPs."""
    rows = []
    for t in search.optuna_study.best_trials:
        rows.append(
            {
                "trial": t.number,
                "mask": t.user_attrs.get("mask"),
                "active_paths": t.user_attrs.get("active_paths"),
                "metrics": t.user_attrs.get("metrics"),
                "mflops": t.user_attrs.get(MFLOPS, t.values[1]),
                "params": t.user_attrs.get("params"),
                "values": list(t.values),
            }
        )
    return sorted(rows, key=lambda r: (r["mflops"], -r["values"][0]))
