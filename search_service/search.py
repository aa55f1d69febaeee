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

Mask space: k modalities have 2**(k(k-1)) - 1 masks, and no mask is scored twice, so a budget
above that cannot be reached. A mask is *scored* when a COMPLETE trial holds it, or a trial that
was pruned because the study's metric is undefined for the mask (the trial records its scores,
``sampler.SCORES_ATTR``): scoring it again would give the same answer. A mask held by a RUNNING
or WAITING trial (or by a trial the heartbeat has just failed, whose retry is being queued) is
not scored yet: its holder may die, and the retry may fail too. So a worker stops when every mask
is scored, saying once ``mro-search: all N masks scored; budget B not reachable`` (exit code 0:
the study is as complete as it can be); a worker whose only masks left are held by other trials
waits, as it does when others hold the rest of the budget. The check comes before a trial is
started (``MROSampler.mask_space``); a worker that loses the race for the last masks anyway gets
no mask from the sampler, never a repeat, and its trial is pruned with the reason
(``MROSampler.no_mask_reason``). The Pareto front lists each mask once (the lowest trial
number), also for studies that hold repeats from before.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState
from tqdm import tqdm

from search_service.evaluator import Evaluator
from search_service.hardware import device_spread, measured, noise_ties, study_tables
from search_service.objectives import LEGACY_FLOPS_LIMIT_KEY, Objectives, costs_of
from search_service.ownership import deletion_notice
from search_service.sampler import (
    BUDGET_KEY,
    MASK_KEY,
    MaskSpace,
    MROSampler,
)
from search_service.storage import (
    OUTAGE_RETRIES,
    FaultTolerantRDBStorage,
    StorageError,
    StorageOutage,
    is_storage_outage,
    mask_password,
    outage_reason,
    set_trial_attrs,
)
from search_service.trial_index import TrialIndex, budget_place
from supernet.checkpoint import SHORT_ID, Checkpoint
from supernet.errors import CheckpointError
from supernet.paths import format_mask

log = logging.getLogger("mro_search")

FORMAT_KEY = "mro:format"  # marks a study mro-search created; written last, when the study is whole
STUDY_FORMAT = "mro-search-study/2"
CHECKPOINT_KEY = "mro:checkpoint"  # {"artifact_id", "identity", "sha256", "file"}: the study's supernet
ARTIFACTS_KEY = "mro:artifacts"  # where the study's artifacts live (artifacts.py)
SCORING_KEY = "mro:scoring_sha256"  # the scoring configuration the study's checkpoint was trained for
CONFIG_KEY = "mro:study_config"
STUDY_DIR_KEY = "mro:study_dir"  # folder of the study file it was created from (relative data paths)
METRIC_KEY = "mro:metric"
FLOPS_BUDGET_KEY = LEGACY_FLOPS_LIMIT_KEY  # the MFLOPs limit ([search] max_mflops), also read by older mro-search
FULL_MASK_KEY = "mro:full_mask"  # the full mask's metrics, for the report
OVER_BUDGET_KEY = "mro:over_budget"  # trial system attribute: pruned because others took the budget's last places
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

    @property
    def name(self) -> str:
        return self.optuna_study.study_name

    @property
    def checkpoint_record(self) -> dict[str, Any]:
        """Which artifact is the study's checkpoint: ``artifact_id``, ``identity``, ``sha256``."""
        record = self.attrs.get(CHECKPOINT_KEY)
        return record if isinstance(record, dict) else {}

    def counts(self) -> dict[str, int]:
        return _count_states(self.optuna_study.get_trials(deepcopy=False))


def check_checkpoint(search: SearchStudy, checkpoint: Checkpoint) -> None:
    """Refuse to score a study's masks with any checkpoint but its own."""
    recorded = search.checkpoint_record.get("identity")
    if recorded and recorded != checkpoint.identity:
        raise CheckpointError(
            f"supernet checkpoint {checkpoint.short_id} is not the one study {search.name!r} was created with "
            f"({recorded[:SHORT_ID]}); leave out --checkpoint to use the study's own (read from its artifact store)"
        )


def _count_states(trials) -> dict[str, int]:
    out = {state.name.lower(): 0 for state in TrialState}
    for t in trials:
        out[t.state.name.lower()] += 1
    return out


class Objective:
    """Scores a trial's mask with the pretrained supernet: (accuracy metric, MFLOPs)."""

    def __init__(self, search: SearchStudy, evaluator: Evaluator, split: str = "valid") -> None:
        self.search = search
        self.evaluator = evaluator
        self.split = split
        self.paths = evaluator.path_names
        attrs = search.attrs
        self.metric = attrs.get(METRIC_KEY, evaluator.metric)
        self.objectives = Objectives.from_attrs(attrs, self.metric)
        self.tables = study_tables(attrs)  # every worker prices latency and memory with the study's tables
        self.budget = search.budget
        self.last_counts: dict[str, int] | None = None  # trial states as the last budget check saw them
        self.last_space: MaskSpace | None = None  # the mask space as the last budget check saw it

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        try:
            return self._score(trial)
        except Exception as exc:
            if is_storage_outage(exc):  # leave the trial RUNNING: its heartbeat stops, it is retried
                raise StorageOutage(outage_reason(exc, self.search.url)) from exc
            raise

    def _score(self, trial: optuna.Trial) -> tuple[float, ...]:
        # which process ran the trial (also for pruned and failed ones): "host:pid", written
        # with the trial itself by a worker's storage (``stamp_trials``), else here
        if trial.user_attrs.get(WORKER_ATTR) != worker_id():
            trial.set_user_attr(WORKER_ATTR, worker_id())
        why = self._no_mask_left(trial)
        if why is not None:  # every mask is scored or held by other trials: nothing to score
            raise optuna.TrialPruned(f"no mask to score: {why}")
        mask, pending = self._suggest_mask(trial)
        try:
            if not any(mask):
                raise optuna.TrialPruned("the all-zero mask is not an architecture")
            if not self._admitted(trial):
                # said by pareto/run/resume: several workers start their last trials together
                trial.storage.set_trial_system_attr(trial._trial_id, OVER_BUDGET_KEY, True)
                raise optuna.TrialPruned("the study's trial budget is already taken by earlier trials")
            result = self.evaluator.evaluate(mask, self.split)
            costs = costs_of(result, mask, self.tables)
            scored = {**costs, "metrics": result["metrics"]}
            system_attrs: dict[str, Any] = {MASK_KEY: format_mask(mask)}
            if self.objectives.limits:
                # the legacy list form: Optuna reads it, and optuna-dashboard 0.21 reads only this
                system_attrs["constraints"] = self.objectives.constraints(scored)
            user_attrs: dict[str, Any] = {"mask": result["mask"], "active_paths": result["active_paths"], "metrics": result["metrics"]}
            user_attrs.update(result["metrics"])
            user_attrs[MFLOPS] = result["mflops"]
            user_attrs["params"] = result["params"]
            for quantity in self.tables:  # priced by the study's table (measured exactly on the front)
                user_attrs[quantity] = costs[quantity]
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
        return tuple(self.objectives.values(scored))

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

    def _no_mask_left(self, trial: optuna.Trial) -> str | None:
        """Why the sampler gave this trial no mask (``MROSampler.no_mask_reason``), or None."""
        reason = getattr(trial.study.sampler, "no_mask_reason", None)
        if reason is None:
            return None
        _ = trial.relative_params  # the sampler proposes and claims the mask here
        return reason(trial.study, trial.number)

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
        space_seen = getattr(trial.study.sampler, "space_seen", None)
        self.last_space = space_seen(trial.study, trial.number) if space_seen is not None else None
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
    """Run trials until the study's budget of COMPLETE trials is reached (or ``max_trials``),
    or every mask is scored (said once, as a warning: the budget cannot be reached).

    While the budget, or every mask not scored yet, is covered by trials that other workers are
    still running, wait: if one of them dies, its trial is failed after the heartbeat grace
    period and retried, and this worker may be the one to run it. Returns the number of trials
    this worker completed.
    """
    study = search.optuna_study
    attrs = search.attrs
    check_checkpoint(search, evaluator.checkpoint)
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
                notice = deletion_notice_now(search)  # ``mro-search delete`` marks the study first
                if notice is not None:
                    log.warning(notice)
                    break
                if not room:
                    # (after a completed trial with room to spare this read is skipped: Optuna
                    # fails stale trials as it starts the next one, and the budget check of
                    # that trial's objective stops it if others took the room meanwhile)
                    fail_stale_trials(study)
                    trials = study.get_trials(deepcopy=False)
                    counts = _count_states(trials)
                    outages = 0
                    bar.n = counts["complete"]
                    bar.refresh()
                    if counts["complete"] >= budget:
                        if done == 0:
                            log.info(budget_reached_notice(study.study_name, budget))
                        break
                    space = sampler.mask_space(study, trials)
                    if space is not None and space.exhausted:
                        log.warning(exhausted_notice(space, budget))
                        break
                    if counts["waiting"] == 0 and (
                        counts["complete"] + counts["running"] >= budget or (space is not None and space.untried <= 0)
                    ):
                        time.sleep(poll_seconds)  # others hold the rest of the budget or of the masks; wait and see
                        continue
                room = False
                objective.last_counts = None
                objective.last_space = None
                study.optimize(objective, n_trials=1, catch=(), gc_after_trial=False)
                outages = 0
                # this worker's trial as told (``after_trial``; no read-back: optimize raises if the
                # tell failed, and catch=() re-raises anything the objective raised)
                told = sampler.last_told(study)
                state = told[1] if told is not None else None
                if state == TrialState.COMPLETE:
                    done += 1
                    seen = objective.last_counts  # as the trial's budget check saw the study
                    if seen is not None:
                        bar.n = seen["complete"] + 1
                        bar.refresh()
                        # this trial was running then; room if the others left a place free
                        # (and a mask: else the check above stops or waits)
                        space = objective.last_space
                        room = seen["complete"] + seen["running"] < budget and (space is None or space.untried > 0)
                elif state == TrialState.PRUNED and not _budget_left(search, budget):
                    break
            except (Exception, StorageOutage) as exc:
                # the database restarted or the network dropped: wait and go on. A trial cut off
                # this way stays RUNNING without heartbeats; it is failed and retried after the
                # grace period (storage.RetryStaleTrialCallback), so no mask is lost
                if not is_storage_outage(exc):
                    notice = _deletion_notice_after(search, exc)
                    if notice is None:
                        raise
                    log.warning(notice)  # the study went while this trial ran: not a failure of the worker
                    break
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


def over_budget_note(trials) -> str | None:
    """Why some trials are PRUNED though nothing was wrong with them, or None: each worker
    starts a trial as soon as its last one completes and the study still had room; when several
    do that for the last places of the budget, the trials started after the budget was taken
    are stopped before scoring (``Objective._admitted``): not counted, no mask lost."""
    n = sum(1 for t in trials if t.state == TrialState.PRUNED and t.system_attrs.get(OVER_BUDGET_KEY))
    if not n:
        return None
    return (f"{n} trial{'s' if n != 1 else ''} pruned at the budget: started by workers while the last places were being taken, "
            "stopped before scoring (not counted, no mask lost)")


def budget_reached_notice(name: str, budget: int) -> str:
    """The line a worker says when the study has its budget of complete trials as it starts."""
    return f"study {name} has its budget of {budget} complete trials; to search on, raise it: mro-search resume --study {name} --trials {budget + 10}"


def deletion_notice_now(search: SearchStudy) -> str | None:
    """The line a worker says when its study is being deleted or is gone, else None."""
    study = search.optuna_study
    try:
        attrs = study._storage.get_study_system_attrs(study._study_id)
    except KeyError:  # the study's row is gone
        attrs = None
    return deletion_notice(study.study_name, attrs)


def _deletion_notice_after(search: SearchStudy, exc: BaseException) -> str | None:
    """After an error in a trial: the deletion notice if the study is being deleted or gone (the
    error came from that, e.g. SQLite's ``KeyError: 'Record does not exist.'``), else None."""
    try:
        return deletion_notice_now(search)
    except Exception as again:
        if "no such table" in str(again):  # the SQLite file was removed with the study's last trial
            return deletion_notice(search.name, None)
        log.debug("study state unreadable after %r", exc, exc_info=True)
        return None


def exhausted_notice(space: MaskSpace, budget: int) -> str:
    """The line a worker says when it stops because every mask is scored (the same for every
    worker of a study: ``run`` shows it once for all its local workers)."""
    return f"mro-search: all {space.size} masks scored; budget {budget} not reachable"


def mask_space_warning(*, paths: Sequence[str], budget: int) -> str | None:
    """A one-line warning when ``budget`` exceeds the number of masks of ``paths`` (no mask is
    scored twice, so the search stops when every mask is scored), else None."""
    n_masks = 2 ** len(paths) - 1
    if budget <= n_masks:
        return None
    return f"mro-search: budget {budget} trials exceeds the {n_masks} masks of {len(paths)} paths; the search stops when every mask is scored"


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
    """The front: trial number, mask, active paths, metrics, every objective (``objectives``, by
    name; ``units``), MFLOPs and parameters, and for measured costs the front member's exact
    measurement (``measured``, once ``hardware.measure_front`` ran) and the member it ties with
    within the device's noise (``noise_tie``); sorted by the first cost. Only feasible trials
    (Optuna's ``best_trials``); each mask once, from its lowest-numbered trial (a study from
    before masks were never repeated may hold one mask in several complete trials)."""
    attrs = search.attrs
    objectives = Objectives.from_attrs(attrs, str(attrs.get(METRIC_KEY, "")))
    exact = measured(attrs)
    rows = []
    seen: set[Any] = set()
    for t in sorted(search.optuna_study.best_trials, key=lambda t: t.number):
        mask = t.user_attrs.get("mask") or tuple(sorted(t.params.items()))
        if mask in seen:
            continue
        seen.add(mask)
        names = objectives.names if len(objectives.names) == len(t.values) else [f"objective_{i}" for i in range(len(t.values))]
        rows.append(
            {
                "trial": t.number,
                "mask": t.user_attrs.get("mask"),
                "active_paths": t.user_attrs.get("active_paths"),
                "metrics": t.user_attrs.get("metrics"),
                "mflops": t.user_attrs.get(MFLOPS, t.values[1] if names[1:2] == [MFLOPS] else None),
                "params": t.user_attrs.get("params"),
                "values": list(t.values),
                "objectives": dict(zip(names, t.values)),
                "units": {n: objectives.unit(n) for n in names},
                "measured": exact.get(t.user_attrs.get("mask") or "", {}),
            }
        )
    rows.sort(key=lambda r: (*r["values"][1:], -r["values"][0]))
    ties = noise_ties(rows, objectives, device_spread(study_tables(attrs)))
    for row in rows:
        row["noise_tie"] = ties.get(row["trial"])
    return rows
