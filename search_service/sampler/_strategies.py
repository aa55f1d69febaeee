"""The ways ``MROSampler`` proposes a mask, one small class each, and their shares.

Every strategy returns a non-empty mask that is not in ``taken`` (the masks other trials hold,
the scored ones and the ones this trial lost) while untried masks remain, drawing its random
numbers from the trial's generator. Which one runs is decided in ``MROSampler._propose``; how
often, by ``Shares`` (the one place the probabilities live):

* ``Enumeration``: when the untried masks fit in the remaining budget, the best untried one under
  the (refined) prior: the search becomes exhaustive, best first.
* ``UniformDraw``: a uniform untried mask; the start-up trials, and the exploration share after.
* ``LocalMove``: a move around the Pareto front (one path added or dropped, or several dropped).
* ``PriorDraw``: a mask of a drawn size whose paths follow the refined keep probabilities.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from search_service.trial_index import Mask, space_size
from supernet.relation_graph import mask_log_prob

MAX_ENUMERATED_PATHS = 20  # 2**20 masks: beyond this the space is never enumerated


@dataclass(frozen=True)
class Shares:
    """How often each strategy runs after the start-up trials (when the space is not enumerated).

    Tuned on ``benchmarks/bench_search.py`` (k = 4) and ``bench_planted.py`` (k = 5); the figures
    behind each value are in ``benchmarks/README.md`` (bench_search).
    """

    # a uniform untried mask (``UniformDraw``) instead of one from the refined prior: keeps every
    # part of the space reachable when the prior is wrong
    exploration: float = 0.1
    # of the rest, a move around the front (``LocalMove``); the others draw from the refined prior
    # (``PriorDraw``). 0.5 -> 0.7 took bench_search at 60 trials from 99.50 % to 99.99 % (median
    # of 12 seeds); the size draw stays for fronts that one-path moves do not connect
    local: float = 0.7
    # of a front member's moves, drops (the rest adds): with many paths, additions would crowd
    # out the few drops, which are the cheaper masks the front needs
    drop: float = 0.7
    # of the drops from a member of 3 or more paths, several paths at once (``_shrink``): a member
    # found by chance with many paths gets down to the few that matter in a few steps
    # (bench_planted k = 5: the planted mask within 60 trials in 9 of 10 seeds, 5 without)
    shrink: float = 0.8

    def __post_init__(self) -> None:
        for name in ("exploration", "local", "drop", "shrink"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")


class Enumeration:
    """When the untried masks fit in the remaining budget, every one of them will be scored: the
    best first, by the refined prior's score (ties: fewer paths first)."""

    def applies(self, P: int, untried: float, remaining: int) -> bool:
        """Whether to enumerate: ``untried`` masks of ``P`` paths left, ``remaining`` trials of
        the budget not complete or running."""
        return P <= MAX_ENUMERATED_PATHS and 0 < untried <= remaining

    def propose(self, theta: torch.Tensor, taken: set[Mask], P: int) -> Mask:
        return _best_untried(theta, taken, P)


class UniformDraw:
    """A uniformly random untried mask (rejection sampling, then a sweep of the untried masks):
    the start-up trials, before the prior is used, and the exploration share after them."""

    def propose(self, P: int, taken: set[Mask], untried: float, rng: np.random.Generator) -> Mask:
        return _sample(np.zeros(P), taken, rng, untried)


class LocalMove:
    """An untried neighbour of a Pareto-front member, or None when they are all tried.

    The member is drawn uniformly (among those with untried neighbours); then whether to add or
    to drop a path, drops with probability ``Shares.drop``; a drop from a member of 3 or more
    paths is, with probability ``Shares.shrink``, a drop of several (``_shrink``); otherwise the
    path, with probability ``softmax(score)``, where adding path p scores ``theta[p]`` and
    dropping it ``-theta[p]``: the change of the mask's refined prior score (log-odds). Good
    trials pull the proposals towards themselves: a local search along the front, which is where
    the front's missing points usually are.
    """

    def __init__(self, shares: Shares) -> None:
        self.drop = shares.drop
        self.shrink = shares.shrink

    def propose(self, theta: np.ndarray, front: list[Mask], taken: set[Mask], rng: np.random.Generator) -> Mask | None:
        for index in rng.permutation(len(front)):
            member = front[index]
            moves: dict[int, tuple[list[Mask], list[float]]] = {0: ([], []), 1: ([], [])}  # 1: add, 0: drop
            for p in range(len(member)):
                bits = list(member)
                bits[p] ^= 1
                flipped = tuple(bits)
                if any(flipped) and flipped not in taken:
                    moves[flipped[p]][0].append(flipped)
                    moves[flipped[p]][1].append(theta[p] if flipped[p] else -theta[p])
            kinds = [kind for kind, (candidates, _) in moves.items() if candidates]
            if kinds:
                kind = (0 if rng.random() < self.drop else 1) if len(kinds) > 1 else kinds[0]
                if kind == 0 and sum(member) >= 3 and rng.random() < self.shrink:
                    shrunk = _shrink(theta, member, taken, rng)
                    if shrunk is not None:
                        return shrunk
                candidates, scores = moves[kind]
                w = np.exp(np.asarray(scores) - max(scores))
                return candidates[int(rng.choice(len(candidates), p=w / w.sum()))]
        return None


class PriorDraw:
    """A mask whose number of paths is uniform over the sizes that still have untried masks (up
    to ``max_size``), and whose paths, given the size, follow the refined keep probabilities
    ``q = sigmoid(theta)`` conditioned on the size (conditional Bernoulli sampling: probability
    proportional to the product of the paths' odds ``q/(1-q)``).

    The Pareto front needs masks of every cost, and cost grows with the number of paths; sampling
    the size first spends the trials evenly over the front instead of around ``sum(q)`` paths.
    """

    def propose(
        self, theta: np.ndarray, taken: set[Mask], rng: np.random.Generator, untried: float, per_size: np.ndarray | None = None, max_size: int | None = None
    ) -> Mask:
        P = len(theta)
        theta = np.clip(theta, -30.0, 30.0)
        avoid = untried > 0
        if P <= MAX_ENUMERATED_PATHS:
            if per_size is None:  # how many masks of each size are taken
                per_size = np.zeros(P + 1, dtype=np.int64)
                for m in taken:
                    per_size[sum(m)] += 1
            sizes = [c for c in range(1, P + 1) if not avoid or per_size[c] < math.comb(P, c)]
        else:
            sizes = list(range(1, P + 1))
        if max_size is not None and any(c <= max_size for c in sizes):
            sizes = [c for c in sizes if c <= max_size]
        draw: Mask | None = None
        while sizes:
            size = sizes[int(rng.integers(len(sizes)))]
            log_e = _log_esp(theta, size)
            for _ in range(64):
                draw = _draw_of_size(theta, log_e, size, rng)
                if not avoid or draw not in taken:
                    return draw
            if P <= MAX_ENUMERATED_PATHS:  # nearly exhausted size: its best untried mask
                return _best_untried(torch.as_tensor(theta, dtype=torch.float64), taken, P, size=size)
            sizes.remove(size)
        return draw if draw is not None else _sample(theta, taken, rng, untried)


# --- the draws the strategies share -------------------------------------------------------------


def random_untried(held: set[Mask], excluded: set[Mask], P: int, rng: np.random.Generator) -> Mask | None:
    """A uniformly random non-empty mask outside ``held`` and ``excluded``; outside ``held``
    only when ``excluded`` covers the rest (the rivals may have moved on); None when every
    mask is held. (A claim lost to another trial is followed by one of these.)"""
    space = space_size(P)
    taken = held | excluded
    if len(taken) >= space:
        taken = held
    if len(taken) >= space:
        return None
    mask = _sample(np.zeros(P), taken, rng, space - len(taken))
    return None if mask in taken else mask


def _sample(theta: np.ndarray, taken: set[Mask], rng: np.random.Generator, untried: float) -> Mask:
    """A non-empty mask from independent keeps ``sigmoid(theta)``, avoiding ``taken`` while
    untried masks remain (rejection sampling, then a sweep of the untried masks)."""
    P = len(theta)
    q = 1.0 / (1.0 + np.exp(-theta))
    avoid = untried > 0
    best: Mask | None = None
    for _ in range(2000):
        bits = tuple(int(b) for b in (rng.random(P) < q))
        if not any(bits):
            continue
        if not avoid or bits not in taken:
            return bits
        best = best or bits
    if avoid and P <= MAX_ENUMERATED_PATHS:
        return _best_untried(torch.as_tensor(theta), taken, P)
    if best is None:
        best = tuple(int(i == int(np.argmax(q))) for i in range(P))
    return best


def _best_untried(theta: torch.Tensor, taken: set[Mask], P: int, size: int | None = None) -> Mask:
    """The untried mask with the highest prior score (ties: fewer paths first); of ``size``
    paths when given."""
    masks = _all_masks(P)  # (2**P - 1, P)
    if size is not None:
        masks = masks[masks.sum(dim=1) == size]
    scores = mask_log_prob(masks, theta.to(torch.float64)) - 1e-9 * masks.sum(dim=1)  # (n,)
    for index in torch.argsort(scores, descending=True).tolist():
        bits = tuple(int(b) for b in masks[index].tolist())
        if bits not in taken:
            return bits
    return tuple(int(b) for b in masks[int(torch.argmax(scores))].tolist())


@functools.lru_cache(maxsize=4)
def _all_masks(P: int) -> torch.Tensor:
    """Every non-empty mask of ``P`` paths as float64 rows (built once per process and P)."""
    from supernet.paths import all_masks

    return all_masks(P).to(torch.float64)


def _shrink(theta: np.ndarray, member: Mask, taken: set[Mask], rng: np.random.Generator) -> Mask | None:
    """An untried mask made of 1 to ``|member| - 2`` of ``member``'s paths (the number uniform),
    the kept paths drawn by their refined keep probabilities (conditional Bernoulli): a front
    member found by chance with many paths gets down to the few that matter in a few steps
    rather than one path at a time."""
    on = [p for p, b in enumerate(member) if b]
    for _ in range(8):
        size = int(rng.integers(1, len(on) - 1))
        kept = _conditional_bernoulli(theta[on], size, rng)
        bits = [0] * len(member)
        for p, keep in zip(on, kept):
            bits[p] = keep
        mask = tuple(bits)
        if mask not in taken:
            return mask
    return None


def _conditional_bernoulli(theta: np.ndarray, size: int, rng: np.random.Generator) -> Mask:
    """A mask with exactly ``size`` paths, drawn with probability proportional to
    ``prod(odds of its paths)``, odds ``exp(theta)``: independent keeps ``sigmoid(theta)``
    conditioned on the number of kept paths (exact, sequentially, via elementary symmetric
    polynomials in log space)."""
    return _draw_of_size(theta, _log_esp(theta, size), size, rng)


def _log_esp(theta: np.ndarray, size: int) -> np.ndarray:
    """``log_e[r, i] = log e_r(odds[i:])`` for r = 0..size: the elementary symmetric polynomials
    of the odds of the paths from i on, which ``_draw_of_size`` samples by (the same table for
    every draw of one size: ``PriorDraw`` draws many)."""
    P = len(theta)
    log_e = np.full((size + 1, P + 1), -np.inf)  # (size + 1, P + 1)
    log_e[0, :] = 0.0
    for i in range(P - 1, -1, -1):
        log_e[1:, i] = np.logaddexp(log_e[1:, i + 1], theta[i] + log_e[:-1, i + 1])
    return log_e


def _draw_of_size(theta: np.ndarray, log_e: np.ndarray, size: int, rng: np.random.Generator) -> Mask:
    """One conditional Bernoulli draw of ``size`` paths, path by path, from ``_log_esp``'s table."""
    P = len(theta)
    bits, r = [], size
    for i in range(P):
        if r == 0:
            bits.append(0)
            continue
        keep = math.exp(theta[i] + log_e[r - 1, i + 1] - log_e[r, i]) if np.isfinite(log_e[r, i]) else 1.0
        b = int(rng.random() < keep)
        bits.append(b)
        r -= b
    return tuple(bits)
