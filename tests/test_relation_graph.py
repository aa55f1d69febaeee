from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch_geometric.nn import GATv2Conv

from supernet.paths import all_masks, num_masks, num_paths
from supernet.rank_loss import rank_loss
from supernet.relation_graph import (
    KEEP_MAPPINGS,
    PRIOR_GNNS,
    PathStatistics,
    RelationGraphPrior,
    mask_log_prob,
    path_keep_logits,
)


def _feed_statistics(prior: RelationGraphPrior, steps: int = 6, seed: int = 1) -> None:
    """Give every statistic distinct, well-defined values per path."""
    gen = torch.Generator().manual_seed(seed)
    p = prior.n_paths
    everywhere = torch.ones(p, dtype=torch.bool)
    for _ in range(steps):
        prior.statistics.update_cosine(torch.rand(p, generator=gen) * 2 - 1, everywhere)
        prior.statistics.update_grad(
            torch.rand(p, generator=gen) * torch.arange(1, p + 1), everywhere
        )
        prior.statistics.update_attention(torch.rand(p, generator=gen), everywhere)


# Edge probabilities (Eq. 1) -----------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_edge_probs_sum_to_one_over_each_sources_outgoing_edges(k: int) -> None:
    prior = RelationGraphPrior(k, seed=k)
    _feed_statistics(prior)
    p = prior.edge_probs()
    assert p.shape == (num_paths(k),)
    assert (p > 0).all()
    torch.testing.assert_close(p.view(k, k - 1).sum(dim=1), torch.ones(k))


def test_gat_is_torch_geometric_and_gradients_reach_every_parameter() -> None:
    prior = RelationGraphPrior(3, seed=0)
    assert isinstance(prior.gat, GATv2Conv)
    assert prior.gat.edge_dim == 1 and prior.gat.add_self_loops is False
    _feed_statistics(prior)
    masks = all_masks(prior.n_paths)[::5]
    losses = torch.linspace(0.0, 1.0, masks.shape[0])
    rank_loss(prior.log_prob(masks), losses, "l2").backward()
    for name in ("alpha", "beta", "gamma", "raw_tau", "node_embeddings"):
        grad = getattr(prior, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    gat_grads = [p.grad for p in prior.gat.parameters()]
    assert gat_grads and all(g is not None for g in gat_grads)
    assert sum(g.abs().sum() for g in gat_grads) > 0
    assert all(p.grad is not None for p in prior.scorer.parameters())


def test_edge_features_combine_statistics_with_alpha_beta_gamma() -> None:
    prior = RelationGraphPrior(3, seed=0)
    _feed_statistics(prior)
    f = prior.statistics.features().float()
    with torch.no_grad():
        prior.alpha.fill_(2.0)
        prior.beta.fill_(-1.0)
        prior.gamma.fill_(0.5)
    expected = 2.0 * f[:, 0] - 1.0 * f[:, 1] + 0.5 * f[:, 2]
    torch.testing.assert_close(prior.edge_features().squeeze(1), expected)


# The distribution over masks ----------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_uniform_edge_probs_give_uniform_masks(k: int, tau: float) -> None:
    n = num_paths(k)
    log_p = torch.full((n,), -math.log(k - 1))
    logits = path_keep_logits(log_p, k, tau)
    torch.testing.assert_close(torch.sigmoid(logits), torch.full((n,), 0.5))
    log_probs = mask_log_prob(all_masks(n), logits)
    torch.testing.assert_close(log_probs, torch.full_like(log_probs, -math.log(num_masks(k))))


def test_prior_with_equal_logits_is_uniform_over_masks() -> None:
    prior = RelationGraphPrior(3, seed=0)
    _feed_statistics(prior)
    with torch.no_grad():  # the scorer's last layer outputs one constant: all logits equal
        prior.scorer[-1].weight.zero_()
        prior.raw_tau.fill_(2.0)
    torch.testing.assert_close(prior.edge_probs(), torch.full((6,), 0.5))
    torch.testing.assert_close(prior.path_probs(), torch.full((6,), 0.5))
    log_probs = prior.log_prob(all_masks(6))
    torch.testing.assert_close(log_probs, torch.full((63,), -math.log(63)))


def test_k2_per_source_prior_is_uniform_whatever_its_parameters() -> None:
    prior = RelationGraphPrior(2, seed=3, keep="per_source")
    _feed_statistics(prior)
    torch.testing.assert_close(prior.log_prob(all_masks(2)), torch.full((3,), -math.log(3)))


@pytest.mark.parametrize("keep", KEEP_MAPPINGS)
@pytest.mark.parametrize("k", [2, 3, 4])
def test_mask_probabilities_sum_to_one_over_all_nonempty_masks(k: int, keep: str) -> None:
    prior = RelationGraphPrior(k, seed=7, keep=keep)
    _feed_statistics(prior)
    with torch.no_grad():
        prior.raw_tau.fill_(2.5)  # a sharp, far from uniform prior
    masks = all_masks(num_paths(k)).double()
    total = prior.double().log_prob(masks).exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("keep", KEEP_MAPPINGS)
def test_sample_frequencies_match_log_prob(keep: str) -> None:
    prior = RelationGraphPrior(3, seed=11, keep=keep)
    _feed_statistics(prior)
    with torch.no_grad():  # sharpen the near-uniform initial prior
        prior.scorer[-1].weight.mul_(4.0)
        prior.raw_tau.fill_(1.5)
    n = 20_000
    samples = prior.sample(n, torch.Generator().manual_seed(0))
    assert samples.shape == (n, 6)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    assert (samples.sum(dim=1) > 0).all()
    codes = (samples.long() * (2 ** torch.arange(5, -1, -1))).sum(dim=1)  # all_masks order
    observed = torch.bincount(codes, minlength=64)[1:].double().numpy()
    with torch.no_grad():
        probs = prior.log_prob(all_masks(6)).exp().double().numpy()
    expected = probs / probs.sum() * n  # renormalised only against float32 rounding
    assert expected.min() >= 5  # chi-square needs it
    assert expected.max() / expected.min() > 10  # a flat prior would make the test weak
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # ... and the test has power: the same samples reject the uniform distribution.
    assert stats.chisquare(observed, np.full(63, n / 63)).pvalue < 1e-12


def test_sample_is_reproducible_with_a_generator() -> None:
    prior = RelationGraphPrior(4, seed=0)
    a = prior.sample(50, torch.Generator().manual_seed(5))
    b = prior.sample(50, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert prior.sample(0).shape == (0, 12)


def test_log_prob_rejects_bad_masks() -> None:
    prior = RelationGraphPrior(3)
    with pytest.raises(ValueError, match="shape"):
        prior.log_prob(torch.ones(2, 5))
    with pytest.raises(ValueError, match="all zero"):
        prior.log_prob(torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="0 and 1"):
        prior.log_prob(torch.full((1, 6), 0.5))
    with pytest.raises(ValueError, match="k"):
        RelationGraphPrior(1)


@pytest.mark.parametrize("kind", ["hinge", "l2"])
def test_rank_loss_training_favours_the_path_that_lowers_loss(kind: str) -> None:
    prior = RelationGraphPrior(3, seed=0)
    _feed_statistics(prior)
    masks = all_masks(6)
    noise = torch.Generator().manual_seed(1)
    losses = 1.0 - 0.5 * masks[:, 0] + 0.05 * torch.rand(masks.shape[0], generator=noise)
    with_path0 = masks[:, 0] == 1
    q0_before = prior.path_probs()[0].item()
    mass_before = prior.log_prob(masks[with_path0]).exp().sum().item()

    optimizer = torch.optim.Adam(prior.parameters(), lr=0.05)
    for _ in range(100):
        loss = rank_loss(prior.log_prob(masks), losses, kind)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        log_probs = prior.log_prob(masks)
        q0_after = prior.path_probs()[0].item()
    assert q0_after > q0_before + 0.1
    assert log_probs[with_path0].exp().sum().item() > mass_before + 0.1
    assert log_probs[with_path0].mean() > log_probs[~with_path0].mean() + 0.5


# Statistics ---------------------------------------------------------------------------------


def test_welford_variance_equals_torch_var_per_path() -> None:
    stats_ = PathStatistics(4)
    gen = torch.Generator().manual_seed(0)
    fed: list[list[float]] = [[] for _ in range(4)]
    for _ in range(40):
        values = torch.randn(4, generator=gen) * 3 + 10
        active = torch.rand(4, generator=gen) < 0.6
        active[3] = False  # path 3 is never active
        stats_.update_grad(values, active)
        for p in range(4):
            if active[p]:
                fed[p].append(values[p].item())
    raw = stats_.raw_features()
    for p in range(3):
        expected = torch.tensor(fed[p], dtype=torch.float64).var()
        assert stats_.grad_count[p].item() == len(fed[p])
        assert raw[p, 1].item() == pytest.approx(expected.item(), rel=1e-9)
    assert math.isnan(raw[3, 1].item())


def test_ema_statistics_and_skipped_values() -> None:
    stats_ = PathStatistics(3, momentum=0.5)
    stats_.update_cosine(torch.tensor([0.2, 0.4, math.nan]), torch.tensor([True, True, True]))
    stats_.update_cosine(torch.tensor([0.6, 9.0, 0.1]), torch.tensor([True, False, True]))
    torch.testing.assert_close(stats_.cosine, torch.tensor([0.4, 0.4, 0.1], dtype=torch.float64))
    torch.testing.assert_close(
        stats_.cosine_count, torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    )
    assert torch.isnan(stats_.raw_features()[:, 2]).all()  # attention never observed
    with pytest.raises(ValueError, match="active"):
        stats_.update_attention(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="values"):
        stats_.update_attention(torch.zeros(4), torch.ones(4, dtype=torch.bool))


def test_features_are_z_scored_and_zero_where_undefined() -> None:
    stats_ = PathStatistics(4)
    stats_.update_cosine(
        torch.tensor([1.0, 2.0, 3.0, 0.0]), torch.tensor([True, True, True, False])
    )
    stats_.update_attention(torch.full((4,), 0.7), torch.ones(4, dtype=torch.bool))  # no spread
    f = stats_.features()
    assert f.shape == (4, 3)
    torch.testing.assert_close(
        f[:3, 0], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) * math.sqrt(1.5)
    )
    assert f[3, 0] == 0.0
    assert (f[:, 1] == 0).all() and (f[:, 2] == 0).all()  # grad undefined, attention constant
    assert PathStatistics(4).features().eq(0).all()


# Persistence ---------------------------------------------------------------------------------


def test_state_dict_round_trip_with_weights_only_load() -> None:
    prior = RelationGraphPrior(4, seed=0)
    _feed_statistics(prior)
    with torch.no_grad():
        prior.alpha.fill_(0.3)
    buffer = io.BytesIO()
    torch.save(prior.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert "statistics.grad_m2" in state and "edge_index" not in state

    clone = RelationGraphPrior(4, seed=123)
    clone.load_state_dict(state)
    masks = all_masks(12)[::97]
    torch.testing.assert_close(clone.log_prob(masks), prior.log_prob(masks))
    torch.testing.assert_close(clone.statistics.features(), prior.statistics.features())


# The paper's GAT (gnn="gat") ------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_gat_logits_are_the_attention_torch_geometric_computes(k: int) -> None:
    """``gat_attention_logits`` re-derives GATConv's pre-softmax attention from its weights; its
    softmax over each target's incoming edges must be what the layer itself returns."""
    from torch_geometric.utils import softmax

    prior = RelationGraphPrior(k, seed=k, gnn="gat")
    _feed_statistics(prior)
    e = prior.edge_features()
    _, (edge_index, attention) = prior.gat(prior.node_embeddings, prior.edge_index, edge_attr=e,
                                           return_attention_weights=True)
    assert torch.equal(edge_index, prior.edge_index)
    ours = softmax(prior.gat_attention_logits(e), prior.edge_index[1], num_nodes=k)
    torch.testing.assert_close(ours, attention.view(-1), rtol=1e-5, atol=1e-6)
    # and Eq. 1 normalises the same logits over each SOURCE's outgoing edges
    torch.testing.assert_close(prior.edge_logits(), prior.gat_attention_logits(e))
    torch.testing.assert_close(prior.edge_probs().view(k, k - 1).sum(dim=1), torch.ones(k))


def test_gat_prior_learns_through_every_parameter() -> None:
    from torch_geometric.nn import GATConv

    prior = RelationGraphPrior(3, seed=0, gnn="gat")
    assert isinstance(prior.gat, GATConv) and not isinstance(prior.gat, GATv2Conv)
    assert prior.scorer is None
    _feed_statistics(prior)
    masks = all_masks(prior.n_paths)[::5]
    losses = torch.linspace(0.0, 1.0, masks.shape[0])
    rank_loss(prior.log_prob(masks), losses, "l2").backward()
    for name, param in prior.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_gat_prior_state_round_trips_and_refuses_the_other_gnn() -> None:
    prior = RelationGraphPrior(4, seed=5, gnn="gat")
    _feed_statistics(prior)
    buffer = io.BytesIO()
    torch.save(prior.state_dict(), buffer)
    buffer.seek(0)
    clone = RelationGraphPrior(4, seed=99, gnn="gat")
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(clone.path_probs(), prior.path_probs())
    with pytest.raises(RuntimeError):
        RelationGraphPrior(4, gnn="gatv2").load_state_dict(prior.state_dict())
    with pytest.raises(ValueError, match="gnn must be one of"):
        RelationGraphPrior(3, gnn="gcn")


# What the keep mapping can express (issue 17, item 1) ------------------------------------------


def _fit_keep_probs(prior: RelationGraphPrior, target: torch.Tensor, steps: int = 100) -> torch.Tensor:
    """Fit the prior's keep probabilities to ``target`` by Adam on the cross-entropy of its keep
    logits (minimised at ``q = target`` where the mapping can reach it); returns ``q``."""
    optimizer = torch.optim.Adam(prior.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(prior.keep_logits(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return prior.path_probs().detach()


@pytest.mark.parametrize("gnn", PRIOR_GNNS)
@pytest.mark.parametrize("level", [0.97, 0.03])
def test_two_sibling_paths_can_both_be_kept_or_both_dropped(gnn: str, level: float) -> None:
    """Paths 0 and 1 (text->audio, text->vision) leave the same source; the independent mapping
    learns to keep both (or drop both), the others at 1/2."""
    prior = RelationGraphPrior(3, seed=0, gnn=gnn)
    _feed_statistics(prior)
    target = torch.tensor([level, level, 0.5, 0.5, 0.5, 0.5])
    q = _fit_keep_probs(prior, target)
    if level > 0.5:
        assert q[0] > 0.9 and q[1] > 0.9, q
    else:
        assert q[0] < 0.1 and q[1] < 0.1, q
    assert (q[2:] - 0.5).abs().max() < 0.1, q


def test_per_source_mapping_makes_siblings_compete() -> None:
    """The older mapping, for contrast: with k = 3 a source's two x sum to 2, so at most one of
    its paths can exceed 1/2 and at least one stays at 1/2 or above, whatever training does."""
    for level in (0.97, 0.03):
        prior = RelationGraphPrior(3, seed=0, keep="per_source")
        _feed_statistics(prior)
        q = _fit_keep_probs(prior, torch.tensor([level, level, 0.5, 0.5, 0.5, 0.5]))
        assert min(q[0], q[1]) <= 0.5 + 1e-4 and max(q[0], q[1]) >= 0.5 - 1e-4, q


@pytest.mark.parametrize("bigger_is_better", [True, False])
def test_rank_loss_learns_how_many_paths_to_keep(bigger_is_better: bool) -> None:
    """Masks with more paths lose less (or more): the rank loss moves the global size bias, and
    the expected number of kept paths follows, on every path."""
    prior = RelationGraphPrior(3, seed=0)
    _feed_statistics(prior)
    masks = all_masks(6)
    noise = torch.Generator().manual_seed(2)
    sign = -1.0 if bigger_is_better else 1.0
    losses = sign * masks.sum(dim=1) + 0.1 * torch.rand(masks.shape[0], generator=noise)
    optimizer = torch.optim.Adam(prior.parameters(), lr=0.05)
    for _ in range(150):
        loss = rank_loss(prior.log_prob(masks), losses, "l2")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    q = prior.path_probs().detach()
    if bigger_is_better:
        assert prior.size_bias.item() > 1.0 and q.min() > 0.75, q
    else:
        assert prior.size_bias.item() < -1.0 and q.max() < 0.25, q


def test_log_prob_stays_proper_and_finite_when_every_path_is_nearly_dropped() -> None:
    prior = RelationGraphPrior(3, seed=0).double()
    _feed_statistics(prior)
    with torch.no_grad():
        prior.size_bias.fill_(-800.0)  # prod(1 - q) rounds to 1 in float64
    masks = all_masks(6).double()
    log_probs = prior.log_prob(masks)
    assert torch.isfinite(log_probs).all()
    assert log_probs.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    log_probs.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in prior.parameters() if p.grad is not None)
    one_path = prior.sample(200, torch.Generator().manual_seed(0))
    assert (one_path.sum(dim=1) == 1).all()  # nearly every mass on single paths; no endless redraws


def test_sample_frequencies_match_log_prob_when_empty_draws_are_likely() -> None:
    """``prod(1 - q) > 1/2``: masks come from the first-kept-path construction, not rejection."""
    prior = RelationGraphPrior(3, seed=11)
    _feed_statistics(prior)
    with torch.no_grad():
        prior.scorer[-1].weight.mul_(4.0)
        prior.size_bias.fill_(-2.5)
    q = prior.path_probs().detach()
    assert torch.log1p(-q).sum() > -math.log(2.0)  # the construction is the one used
    n = 20_000
    samples = prior.sample(n, torch.Generator().manual_seed(0))
    assert (samples.sum(dim=1) > 0).all()
    codes = (samples.long() * (2 ** torch.arange(5, -1, -1))).sum(dim=1)
    observed = torch.bincount(codes, minlength=64)[1:].double().numpy()
    with torch.no_grad():
        probs = prior.log_prob(all_masks(6)).exp().double().numpy()
    expected = probs / probs.sum() * n
    keep = expected >= 5  # chi-square needs it: pool the rare masks into one cell
    observed = np.append(observed[keep], observed[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    assert stats.chisquare(observed, expected).pvalue > 1e-3
