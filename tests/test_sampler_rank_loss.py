"""The sampler's refinement writes the rank losses' gradients out in NumPy (a step costs
microseconds instead of an autograd step's milliseconds). These properties tie it to the one
definition, ``supernet.rank_loss.rank_loss`` over ``supernet.relation_graph.mask_log_prob``:
the scores and the gradient with respect to the keep logits agree with torch's autograd to 1e-9
on random masks, logits and losses, for every kind; and a refinement moves the logits towards the
paths of the better trials."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from search_service.sampler import _fit_theta, _mask_scores, _rank_loss_grad
from supernet.rank_loss import RANK_LOSSES, rank_loss
from supernet.relation_graph import mask_log_prob

TOL = 1e-9


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-empty masks (M x P), keep logits (P) and losses (M, ties included)."""
    p = draw(st.integers(2, 8))
    m = draw(st.integers(2, 12))
    masks = draw(arrays(np.float64, (m, p), elements=st.sampled_from([0.0, 1.0])))
    for row in masks:
        if not row.any():
            row[draw(st.integers(0, p - 1))] = 1.0
    theta = draw(arrays(np.float64, (p,), elements=st.floats(-4.0, 4.0)))
    pool = draw(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=m))  # few values: ties
    losses = np.array([draw(st.sampled_from(pool)) for _ in range(m)], dtype=np.float64)
    return masks, theta, losses


def _numpy_gradient(masks: np.ndarray, theta: np.ndarray, losses: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy.stats import rankdata

    scores, shared = _mask_scores(masks, theta)
    g_s = _rank_loss_grad(scores, losses, rankdata(losses, method="average"), kind)
    return scores, masks.T @ g_s - shared * g_s.sum()  # as _fit_theta takes it


def _torch_gradient(masks: np.ndarray, theta: np.ndarray, losses: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    logits = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    scores = mask_log_prob(torch.tensor(masks, dtype=torch.float64), logits)
    rank_loss(scores, torch.tensor(losses, dtype=torch.float64), kind).backward()
    return scores.detach().numpy(), logits.grad.numpy()


@settings(max_examples=60, deadline=None)
@given(problem=problems(), kind=st.sampled_from(RANK_LOSSES))
def test_the_refinements_gradient_is_the_rank_losss(problem, kind: str) -> None:
    masks, theta, losses = problem
    scores, grad = _numpy_gradient(masks, theta, losses, kind)
    want_scores, want_grad = _torch_gradient(masks, theta, losses, kind)
    np.testing.assert_allclose(scores, want_scores, rtol=0, atol=TOL)
    if kind in ("l1", "linf"):
        # |d| has no derivative at d = 0 and max none at a tie; both sides pick a subgradient,
        # the same one only where the choice is unambiguous
        from scipy.stats import rankdata

        x = (scores[None, :] - scores[:, None])
        d = 0.5 + (0.5 * (1.0 + np.tanh(0.5 * x))).sum(axis=1) - rankdata(losses, method="average")
        a = np.abs(d)
        if np.any(a < 1e-12) or (kind == "linf" and np.sum(np.isclose(a, a.max(), rtol=0, atol=1e-12)) > 1):
            return
    np.testing.assert_allclose(grad, want_grad, rtol=1e-7, atol=TOL)


def _loss(masks: np.ndarray, theta: np.ndarray, losses: np.ndarray, kind: str) -> float:
    scores = mask_log_prob(torch.tensor(masks), torch.tensor(theta))
    return float(rank_loss(scores, torch.tensor(losses), kind))


def test_a_refinement_moves_the_logits_towards_the_paths_of_better_trials() -> None:
    """Trials that keep path 0 score better (lower loss) than those that drop it; path 3 the
    other way round. Every kind lowers its rank loss; every kind but l0 raises path 0's logit and
    lowers path 3's. (l0, a smoothed count of misranked subnets, has almost no gradient for a
    subnet ranked far from its place, and from uniform logits every subnet of one size ties: it
    barely moves here, which is why it is not the default.)"""
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 2, size=(24, 5)).astype(np.float64)
    masks[masks.sum(axis=1) == 0, 1] = 1.0
    losses = 1.0 - masks[:, 0] + masks[:, 3] + 0.01 * rng.standard_normal(24)
    theta0 = np.zeros(5)
    for kind in RANK_LOSSES:
        theta = _fit_theta(masks, losses, theta0, theta0, kind, steps=50, anchor=0.01)
        assert _loss(masks, theta, losses, kind) < _loss(masks, theta0, losses, kind), kind
        if kind != "l0":
            assert theta[0] > theta0[0] + 0.5 and theta[3] < theta0[3] - 0.5, (kind, theta)
