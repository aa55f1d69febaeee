"""The refinement: the prior's keep logits ``theta`` fitted to the completed trials by the rank loss.

Completed masks are ranked by non-domination (Optuna's fast non-dominated sort over the study's
objectives), ties by the first objective (``performance_losses``), and ``theta`` is fitted so that
the prior's score of those masks (``supernet.relation_graph.mask_log_prob``) ranks them the same
way, with an L2 pull back towards the pretrained prior ``theta0``:

    min_theta  rank_loss(mask_log_prob(masks, theta), losses, kind) + anchor * |theta - theta0|^2

by Adam (torch's defaults), warm-started from this process's last fit. ``theta`` is one free keep
logit per path (``theta0 = logit(mro:prior_keep_probs)``), so like the pretrained prior's
``independent`` keep mapping (``supernet.relation_graph``) it can raise two paths of one source
together, or every path, whatever mapping the checkpoint's prior was trained with. The gradient of each rank
loss is written out in NumPy (``_rank_loss_grad``), equal to autograd's through
``supernet.rank_loss`` (``tests/test_sampler_rank_loss.py`` proves it to 1e-9 for every kind), so
a refinement costs about a millisecond instead of the tens of an autograd loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from optuna.study import StudyDirection
from optuna.study._multi_objective import _fast_non_domination_rank

from search_service.trial_index import TrialIndex
from supernet.rank_loss import L0_EPSILON


class PriorRefinement:
    """Fits ``theta`` to a study's completed trials (``refine``); keeps, per process, only what
    can be recomputed from the study: the last fit (to warm-start the next) and the fit for the
    current set of completed trials (claim rounds of one proposal see the same trials).

    Args:
        steps: Adam steps per refinement.
        trials: at most this many completed trials (the best ranked) enter the rank loss.
        anchor: weight of the L2 pull of ``theta`` towards the pretrained prior.
    """

    def __init__(self, *, steps: int, trials: int, anchor: float) -> None:
        self.steps = steps
        self.trials = trials
        self.anchor = anchor
        self._last: dict[tuple[str, ...], torch.Tensor] = {}  # paths -> last refined theta
        self._current: dict[tuple, torch.Tensor] = {}  # (paths, completed trials) -> its theta

    def losses(self, directions: Sequence[StudyDirection], index: TrialIndex) -> np.ndarray:
        """``performance_losses`` of ``index.complete``, exact for the trials that enter the fit."""
        if len(index.complete) < 2:
            return np.zeros(len(index.complete))
        return performance_losses(directions, index, self.trials)

    def refine(self, directions: Sequence[StudyDirection], index: TrialIndex, theta0: torch.Tensor, kind: str, losses: np.ndarray | None = None) -> torch.Tensor:
        """``theta`` fitted by the rank loss ``kind`` to the ranking of ``index.complete``
        (``losses``: their ``performance_losses`` when already computed); ``theta0`` when fewer
        than two trials are complete or they all rank alike."""
        complete = index.complete
        if len(complete) < 2:
            return theta0
        # the completed trials only grow: their number and the last one name the set
        key = (index.paths, len(complete), complete[-1].number, complete[0].number)
        cached = self._current.get(key)
        if cached is not None:
            return cached
        if losses is None:
            losses = performance_losses(directions, index, self.trials)
        order = np.argsort(losses, kind="stable")[: self.trials]
        target = np.asarray(losses[order], dtype=np.float64)
        if float(target.max() - target.min()) == 0.0:
            return theta0
        masks = np.array([index.complete_masks[i] for i in order], dtype=np.float64)  # (n, P)
        start = self._last.get(index.paths)
        if start is None or start.shape != theta0.shape:
            start = theta0
        theta = _fit_theta(masks, target, theta0.numpy(), start.numpy(), kind, self.steps, self.anchor)
        refined = torch.as_tensor(theta, dtype=torch.float64)  # (P,)
        self._last[index.paths] = refined
        self._current = {key: refined}
        return refined


def performance_losses(directions: Sequence[StudyDirection], index: TrialIndex, n_below: int | None = None) -> np.ndarray:
    """Lower is better, for ``index.complete``: non-domination rank, then the first objective
    as a tie-breaker in [0, 1).

    With ``n_below``, ranks are exact only for the best ``n_below`` trials (and the front);
    the rest rank behind them (Optuna's early-stopping sort: only those enter the rank loss)."""
    values, penalty = index.complete_arrays()  # (n, objectives), (n,) or None
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    loss_values = values * signs
    rank = _fast_non_domination_rank(loss_values, penalty=penalty, n_below=n_below).astype(float)
    first = loss_values[:, 0]
    spread = first.max() - first.min()
    tie = (first - first.min()) / spread * 0.99 if spread > 0 else np.zeros_like(first)
    return rank + tie


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def _mask_scores(masks: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``mask_log_prob(masks, theta)`` (the prior score of each mask under independent keeps
    ``q = sigmoid(theta)`` given a non-empty mask) and ``d score / d theta`` per path, shared by
    all masks up to ``masks`` itself: ``d s_i / d theta_p = b_ip - q_p / (1 - prod(1 - q))``."""
    log_keep, log_drop = _log_sigmoid(theta), _log_sigmoid(-theta)
    log_empty = float(log_drop.sum())
    nonempty = -math.expm1(log_empty)
    scores = masks @ log_keep + (1.0 - masks) @ log_drop - math.log(nonempty)
    return scores, np.exp(log_keep) / nonempty


def _rank_loss_grad(scores: np.ndarray, target: np.ndarray, perf_ranks: np.ndarray, kind: str, temperature: float = 1.0) -> np.ndarray:
    """Gradient with respect to ``scores`` of ``supernet.rank_loss.rank_loss(scores, target,
    kind)`` (the same surrogates, written out so that a refinement step costs microseconds, not
    the milliseconds of an autograd step)."""
    n = len(scores)
    if kind == "hinge":
        i, j = np.triu_indices(n, 1)
        t = np.tanh((scores[i] - scores[j]) / temperature)
        coef = 0.5 * (target[i] - target[j]) * (1.0 - t * t) / temperature / len(i)
        grad = np.zeros(n)
        np.add.at(grad, i, coef)
        np.add.at(grad, j, -coef)
        return grad
    x = (scores[None, :] - scores[:, None]) / temperature  # (n, n): [i, j] = s_j - s_i
    sig = 0.5 * (1.0 + np.tanh(0.5 * x))  # sigmoid, overflow-free
    d = 0.5 + sig.sum(axis=1) - perf_ranks  # soft rank (1 = highest score) - rank of the loss
    if kind == "l1":
        g = np.sign(d) / n
    elif kind == "l2":
        g = 2.0 * d / n
    elif kind == "l0":
        g = 2.0 * d * L0_EPSILON / (d * d + L0_EPSILON) ** 2 / n
    else:  # linf: the gradient is shared by the worst-ranked subnets
        a = np.abs(d)
        worst = a == a.max()
        g = np.sign(d) * worst / worst.sum()
    slope = sig * (1.0 - sig)
    np.fill_diagonal(slope, 0.0)
    return (slope.T @ g - g * slope.sum(axis=1)) / temperature


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """``scipy.stats.rankdata(x, method="average")`` (ranks from 1, ties share their mean rank),
    the same algorithm without SciPy's per-call overhead, which was most of a refinement's cost."""
    order = np.argsort(x, kind="mergesort")
    inverse = np.empty(len(x), dtype=np.intp)
    inverse[order] = np.arange(len(x))
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]  # first of each run of equal values
    dense = np.cumsum(starts)[inverse]  # 1-based index of each value's run
    bounds = np.r_[np.nonzero(starts)[0], len(x)]  # where each run starts; then the end
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def _fit_theta(masks: np.ndarray, target: np.ndarray, theta0: np.ndarray, start: np.ndarray, kind: str, steps: int, anchor: float, lr: float = 0.1) -> np.ndarray:
    """Adam on ``rank_loss(mask_log_prob(masks, theta), target, kind) + anchor * |theta - theta0|^2``
    (torch's Adam defaults: betas 0.9, 0.999, eps 1e-8), from ``start``."""
    perf_ranks = _average_ranks(target)
    theta = np.array(start, dtype=np.float64)
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, steps + 1):
        scores, shared = _mask_scores(masks, theta)
        g_s = _rank_loss_grad(scores, target, perf_ranks, kind)
        grad = masks.T @ g_s - shared * g_s.sum() + 2.0 * anchor * (theta - theta0)
        m = beta1 * m + (1.0 - beta1) * grad
        v = beta2 * v + (1.0 - beta2) * grad * grad
        denom = np.sqrt(v) / math.sqrt(1.0 - beta2**step) + eps
        theta = theta - lr / (1.0 - beta1**step) * m / denom
    return theta
