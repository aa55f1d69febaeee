from __future__ import annotations

import pytest
import torch

from supernet.rank_loss import RANK_LOSSES, hard_ranks, rank_loss, soft_ranks, spearman

LOSSES = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7])
ALIGNED = -50.0 * LOSSES  # lower loss -> higher score; gaps of 10 >> temperature 1


@pytest.mark.parametrize("kind", RANK_LOSSES)
def test_aligned_scores_cost_little_and_reversed_cost_more(kind: str) -> None:
    aligned = rank_loss(ALIGNED, LOSSES, kind)
    reversed_ = rank_loss(-ALIGNED, LOSSES, kind)
    assert aligned.item() < 0.05
    assert reversed_.item() > 0.2
    assert reversed_.item() > 10 * aligned.item()


def test_hinge_matches_table_1_term_at_small_temperature() -> None:
    # Table 1: sum over pairs of max(0, (L_i - L_j) * sign(s_i - s_j)), here averaged.
    scores = torch.tensor([0.2, -0.4, 1.1, 0.7, -1.5])
    i, j = torch.triu_indices(5, 5, offset=1)
    paper = torch.relu((LOSSES[i] - LOSSES[j]) * torch.sign(scores[i] - scores[j])).mean()
    torch.testing.assert_close(rank_loss(scores, LOSSES, "hinge", temperature=1e-4), paper)
    assert rank_loss(ALIGNED, LOSSES, "hinge").item() < 1e-6


@pytest.mark.parametrize("kind", RANK_LOSSES)
def test_tied_scores_are_not_a_minimum(kind: str) -> None:
    tied = rank_loss(torch.zeros(5), LOSSES, kind)
    assert tied.item() > 10 * rank_loss(ALIGNED, LOSSES, kind).item()


@pytest.mark.parametrize("kind", RANK_LOSSES)
def test_gradient_step_moves_misaligned_pair_towards_alignment(kind: str) -> None:
    losses = torch.tensor([0.2, 0.8])  # subnet 0 is better ...
    scores = torch.tensor([-0.5, 0.5], requires_grad=True)  # ... but the prior prefers 1
    before = rank_loss(scores, losses, kind)
    before.backward()
    assert scores.grad is not None
    assert scores.grad[0] < 0 < scores.grad[1]  # descent raises s0, lowers s1
    with torch.no_grad():
        stepped = scores - 0.5 * scores.grad
    assert (stepped[0] - stepped[1]) > (scores[0] - scores[1])
    assert rank_loss(stepped, losses, kind) < before


def test_soft_ranks_approach_hard_ranks_at_small_temperature() -> None:
    scores = torch.tensor([0.3, -1.2, 2.0, 0.3, 0.9])
    expected = hard_ranks(-scores)  # descending scores: [3.5, 5, 1, 3.5, 2]
    assert expected.tolist() == [3.5, 5.0, 1.0, 3.5, 2.0]
    coarse = (soft_ranks(scores, 1.0) - expected).abs().max()
    fine = (soft_ranks(scores, 1e-3) - expected).abs().max()
    assert fine < 1e-4 < coarse


def test_hard_ranks_average_ties() -> None:
    assert hard_ranks(torch.tensor([0.5, 0.1, 0.5, 0.9])).tolist() == [2.5, 1.0, 2.5, 4.0]


def test_losses_are_treated_as_constants() -> None:
    scores = torch.tensor([0.1, 0.4, -0.2], requires_grad=True)
    losses = torch.tensor([0.5, 0.2, 0.9], requires_grad=True)
    for kind in RANK_LOSSES:
        rank_loss(scores, losses, kind).backward()
    assert losses.grad is None
    assert scores.grad is not None


@pytest.mark.parametrize(
    ("scores", "losses", "kind", "temperature", "word"),
    [
        (torch.zeros(3), torch.zeros(3), "l3", 1.0, "kind"),
        (torch.zeros(3), torch.zeros(4), "l2", 1.0, "losses"),
        (torch.zeros(1), torch.zeros(1), "l2", 1.0, "N=1"),
        (torch.zeros(2, 2), torch.zeros(2, 2), "hinge", 1.0, "prior_scores"),
        (torch.zeros(3), torch.zeros(3), "l1", 0.0, "temperature"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(
    scores: torch.Tensor, losses: torch.Tensor, kind: str, temperature: float, word: str
) -> None:
    with pytest.raises(ValueError, match=word):
        rank_loss(scores, losses, kind, temperature=temperature)


def test_spearman_values_and_constant_input() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(
        -1.0
    )
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])


@pytest.mark.parametrize("kind", RANK_LOSSES)
def test_joint_rank_loss_has_the_same_value_and_reaches_the_losses(kind: str) -> None:
    """``loss_gradient=True`` (joint optimization): R's value is unchanged, and a gradient step on
    R lowers the loss of a subnet the prior ranks above where its loss puts it."""
    scores = torch.tensor([2.0, 0.5, -1.0, 1.0, -0.5])  # the prior's order: 0, 3, 1, 4, 2
    losses = LOSSES.clone().requires_grad_(True)  # the losses' order: 2, 0, 3, 4, 1
    joint = rank_loss(scores, losses, kind, loss_gradient=True)
    torch.testing.assert_close(joint, rank_loss(scores, LOSSES, kind))
    joint.backward()
    assert losses.grad is not None and losses.grad.abs().sum() > 0
    # subnet 1 (prior rank 3, loss rank 5: worse than the prior says) is pushed to a lower loss:
    # its gradient is positive, so a descent step decreases it (l0 saturates: a subnet two ranks
    # off counts almost fully already, so its own term hardly pulls and the others' decide)
    if kind != "l0":
        assert losses.grad[1] > 0
    stepped = rank_loss(scores, (LOSSES - 0.05 * losses.grad.sign() * (losses.grad.abs() > 0)).detach(), kind)
    assert stepped <= joint.detach() + 1e-6


@pytest.mark.parametrize("kind", RANK_LOSSES)
def test_joint_rank_loss_gradient_stays_bounded_when_losses_lie_close(kind: str) -> None:
    """R's gradient in the losses stays below ``N / temperature`` however close the losses lie
    (with the losses' spread as the only temperature it grew as 1 / spread, and a supernet
    trained with ``joint_rank`` on the planted data stayed at chance), and it is still there."""
    scores = torch.tensor([2.0, 0.5, -1.0, 1.0, -0.5])
    n = scores.numel()
    for temperature in (1.0, 0.25):
        for gap in (1e-1, 1e-3, 1e-6, 1e-8):
            losses = (0.693 + gap * torch.tensor([2.0, 4.0, 0.0, 3.0, 1.0], dtype=torch.float64)).requires_grad_(True)
            rank_loss(scores.double(), losses, kind, temperature=temperature, loss_gradient=True).backward()
            assert losses.grad is not None and torch.isfinite(losses.grad).all()
            assert losses.grad.abs().max() <= n / temperature, (kind, temperature, gap, losses.grad)
            assert losses.grad.abs().sum() > 0


def test_joint_rank_loss_is_scale_free_once_the_losses_spread_beyond_the_temperature() -> None:
    scores = torch.tensor([2.0, 0.5, -1.0, 1.0, -0.5])
    grads = []
    for scale in (10.0, 1000.0):  # spread 3.2 and 320: above the temperature 1
        losses = (LOSSES * scale).requires_grad_(True)
        rank_loss(scores, losses, "l1", loss_gradient=True).backward()
        grads.append(losses.grad * scale)  # d R / d (loss / scale)
    torch.testing.assert_close(grads[0], grads[1])
