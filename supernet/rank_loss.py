"""Rank regularization (Table 1 and Eq. 2 of the paper): make the prior's ranking of sampled
subnets agree with the ranking of their observed task losses.

Inputs are ``prior_scores`` (differentiable, shape ``(N,)``; higher means the prior expects a
better subnet, e.g. ``RelationGraphPrior.log_prob(masks)``) and ``losses`` (shape ``(N,)``; the
observed task losses of the same subnets, lower is better, treated as constants).

Ranks are piecewise constant in the scores, so their gradient is zero almost everywhere. Each
loss therefore replaces the non-differentiable part by a smooth surrogate:

``"hinge"`` (Table 1)
    The paper's pairwise term is ``max(0, x)`` with ``x = (L_i - L_j) * sign(s_i - s_j)``.
    Wherever the scores differ, ``|x| = |L_i - L_j|``, so ``max(0, x) = (|x| + x) / 2`` equals
    ``(|L_i - L_j| + (L_i - L_j) * sign(s_i - s_j)) / 2``. The surrogate replaces ``sign`` by
    ``tanh((s_i - s_j) / temperature)`` in this form and averages over the ``N(N-1)/2``
    unordered pairs:

        ``mean_{i<j} (|L_i - L_j| + (L_i - L_j) * tanh((s_i - s_j) / temperature)) / 2``

    It agrees with the paper's term as ``temperature -> 0`` whenever the scores differ: a pair
    ordered correctly (lower loss, higher score) costs ~0, a mismatched pair ~``|L_i - L_j|``.
    Every pair with different losses has a gradient that pushes the better subnet's score up and
    the worse one's down, weighted by how far apart their losses are. The literal smoothing
    ``max(0, (L_i - L_j) * tanh(.))`` is not used: it is exactly zero when all scores are
    equal, so it is minimized by a prior that ranks nothing (in practice it collapses to ties);
    here a tied pair costs ``|L_i - L_j| / 2``.

``"l0"``, ``"l1"``, ``"l2"``, ``"linf"`` (Eq. 2)
    ``d_i = rank_prior_i - rank_perf_i`` with the prior rank replaced by the *soft rank*
    ``1 + sum_{j != i} sigmoid((s_j - s_i) / temperature)`` (rank 1 = highest score; it tends to
    the hard rank, ties averaged, as ``temperature -> 0``) and ``rank_perf`` the hard rank of the
    losses (rank 1 = lowest loss, ties averaged, via ``scipy.stats.rankdata``). Gradient flows
    through every pairwise sigmoid of the soft ranks into the scores.

    - ``"l1"``: ``mean |d|``; ``"l2"``: ``mean d**2``;
    - ``"linf"``: ``max |d|`` (the gradient reaches the worst-ranked subnet's comparisons only);
    - ``"l0"``: the paper's "number of mismatched positions" is a count with no gradient, so it
      is smoothed to ``mean(d**2 / (d**2 + eps))`` with ``eps = L0_EPSILON = 0.25``: a subnet
      half a rank off counts 0.5, one rank off 0.8, far off nearly 1.

``temperature`` sets the scale of score differences that counts as "clearly ordered"; use a
value comparable to the spread of the prior scores.

**Joint optimization** (``loss_gradient=True``, ``[train] joint_rank``: λ·R added to the task
loss, Table 1 of the paper). The losses are then the differentiable task losses of the subnets
trained in the step, and R's gradient reaches the supernet too: ``"hinge"`` is differentiable in
the losses as it stands; for the rank kinds the loss ranks keep their hard values (so R's value is
exactly the one above) and take their gradient from soft ascending ranks of the losses
(straight-through), with the temperature set to the mean absolute difference of the losses
(detached) but never below ``temperature``. The floor bounds R's gradient in the losses (by about
``N / temperature``): with the spread alone, subnets whose losses lie close together (early in
training, or on a task nothing has been learnt of yet) got gradients of order 1 / spread, and on
the planted data every supernet trained with ``joint_rank`` stayed at chance (validation loss
ln 2; docs/RESULTS.md, Table 4 after joint optimization). Either way a gradient step on R
lowers the loss of the subnets the prior ranks above where their losses put them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import stats

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor

__all__ = ["L0_EPSILON", "RANK_LOSSES", "hard_ranks", "rank_loss", "soft_ranks", "spearman"]

RANK_LOSSES: tuple[str, ...] = ("hinge", "l0", "l1", "l2", "linf")
L0_EPSILON = 0.25  # d**2 / (d**2 + eps): a rank difference of 0.5 counts as half a mismatch


def soft_ranks(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """Differentiable descending ranks: ``1 + sum_{j != i} sigmoid((s_j - s_i) / temperature)``.

    Rank 1 belongs to the highest score; equal scores share the average rank, as hard ranks do.
    """
    _check_temperature(temperature)
    diff = (scores[None, :] - scores[:, None]) / temperature  # (N, N): [i, j] = s_j - s_i
    pairwise = torch.sigmoid(diff)
    # The diagonal contributes sigmoid(0) = 0.5 to every row; remove it.
    return 0.5 + pairwise.sum(dim=1)  # (N,)


def hard_ranks(losses: Tensor) -> Tensor:
    """Ascending ranks of ``losses`` (rank 1 = lowest), ties averaged; a constant tensor."""
    ranks = stats.rankdata(losses.detach().cpu().double().numpy(), method="average")
    dtype = losses.dtype if losses.is_floating_point() else torch.float32
    return torch.as_tensor(ranks, dtype=dtype, device=losses.device)


def rank_loss(
    prior_scores: Tensor, losses: Tensor, kind: str, *, temperature: float = 1.0, loss_gradient: bool = False
) -> Tensor:
    """Rank-consistency loss of the prior's scores against observed losses (a scalar tensor).

    ``kind`` is one of ``RANK_LOSSES``; see the module docstring for the surrogate each uses.
    Only ``prior_scores`` receives gradient and ``losses`` are detached, unless ``loss_gradient``
    (joint optimization, see the module docstring).
    """
    if kind not in RANK_LOSSES:
        raise ValueError(f"kind must be one of {RANK_LOSSES}, got {kind!r}")
    _check_temperature(temperature)
    if prior_scores.dim() != 1:
        raise ValueError(f"prior_scores must have shape (N,), got {tuple(prior_scores.shape)}")
    if losses.shape != prior_scores.shape:
        raise ValueError(
            f"losses must have the shape of prior_scores {tuple(prior_scores.shape)}, "
            f"got {tuple(losses.shape)}"
        )
    n = prior_scores.shape[0]
    if n < 2:
        raise ValueError(f"prior_scores must hold at least 2 subnets to rank, got N={n}")
    losses = losses.to(device=prior_scores.device, dtype=prior_scores.dtype)
    if not loss_gradient:
        losses = losses.detach()

    if kind == "hinge":
        i, j = torch.triu_indices(n, n, offset=1, device=prior_scores.device)  # (2, N(N-1)/2)
        soft_sign = torch.tanh((prior_scores[i] - prior_scores[j]) / temperature)
        gap = losses[i] - losses[j]
        return (0.5 * (gap.abs() + gap * soft_sign)).mean()

    perf = hard_ranks(losses)  # (N,)
    if loss_gradient and losses.requires_grad:  # straight-through: hard values, soft ranks' gradient
        spread = (losses[None, :] - losses[:, None]).abs().sum().detach() / (n * (n - 1))
        soft = soft_ranks(-losses, max(float(spread), temperature))  # ascending: rank 1 = lowest loss
        perf = perf + soft - soft.detach()
    d = soft_ranks(prior_scores, temperature) - perf  # (N,)
    if kind == "l0":
        return (d.square() / (d.square() + L0_EPSILON)).mean()
    if kind == "l1":
        return d.abs().mean()
    if kind == "l2":
        return d.square().mean()
    return d.abs().max()  # "linf"


def spearman(
    a: Tensor | Sequence[float] | np.ndarray, b: Tensor | Sequence[float] | np.ndarray
) -> float:
    """Spearman's rho of two equally long sequences, via ``scipy.stats.spearmanr``.

    NaN-safe for logging: when either input is constant (rho undefined) or the result is not
    finite, returns 0.0 ("no rank agreement") instead of NaN.
    """
    x = _as_numpy(a, "a")
    y = _as_numpy(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same length, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"a and b must hold at least 2 values, got {x.shape[0]}")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    rho = float(stats.spearmanr(x, y).statistic)
    return rho if math.isfinite(rho) else 0.0


def _as_numpy(values: Tensor | Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
