"""The Modal Relation Graph (MRG) prior of section 3.3 (Eq. 1): path statistics measured while
the supernet trains, a graph-attention network over the modalities, and the distribution over
masks that the prior defines.

Paths follow ``supernet.paths``: ``P = k(k-1)`` directed edges ``i->j`` in row-major order over
``(i, j)``, ``i != j``; a mask is a 0/1 vector in that order and the all-zero mask is excluded.

**From edge scores to keep probabilities** (``KEEP_MAPPINGS``; ``RelationGraphPrior(keep=...)``,
``[train] prior_keep``). Eq. 1 scores every edge, ``s_ij = GAT(e_ij)``, and normalises the scores
over each source's outgoing edges, ``p(i->j) = softmax_j s_ij``. A distribution over masks needs a
keep probability ``q_ij`` per path; two mappings are implemented:

- ``"independent"`` (the default): ``q_ij = sigmoid(b + tau * (s_ij - mean(s)))``, the mean over
  all ``P`` edges, with a trainable global ``b`` (``size_bias``, init 0) and temperature ``tau``.
  Why this one: the per-source softmax is what made siblings compete (their ``p`` sum to 1), so
  the keep logit takes the edge score *before* that normalisation, centred over all edges rather
  than per source. Then (a) every path's keep logit can take any value whatever its siblings'
  (given target logits ``t``, ``b = mean(t)`` and ``s = t / tau`` reproduce them exactly), so two
  useful paths leaving one modality can both be kept with probability near 1, and a source can
  say "all my paths help" or "none does"; (b) ``b`` alone is the mean keep logit, i.e. how many
  paths the prior keeps (about ``sum(q)``), separated from which paths; (c) Eq. 1 still orders
  siblings exactly as before: two paths of one source differ in keep logit by
  ``tau * (log p_ij - log p_ij')``, so ``edge_probs`` remains the within-source preference it was.
  With ``b = 0`` and equal scores every ``q`` is 1/2 (the uniform distribution over masks), the
  same start as the old mapping; and for ``k = 2`` the prior can now learn (its two scores differ).
- ``"per_source"`` (checkpoints written before it, and the ablation): ``q = x**tau / (1 + x**tau)``,
  ``x = (k - 1) * p_ij`` (``path_keep_logits``). One source's ``x`` sum to ``k - 1``, so its
  paths share a budget: at ``tau = 1`` no ``q`` exceeds ``(k - 1) / k``, two siblings cannot both
  exceed 1/2 when ``k = 3``, and ``k = 2`` is uniform whatever the parameters.

With either, masks are drawn by independent keeps conditioned on a non-empty mask
(``mask_log_prob``), a proper distribution over the ``2**P - 1`` architectures.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supernet.paths import num_paths, path_pairs

__all__ = [
    "KEEP_MAPPINGS",
    "PRIOR_GNNS",
    "PathStatistics",
    "RelationGraphPrior",
    "independent_keep_logits",
    "mask_log_prob",
    "path_keep_logits",
]

STATISTICS = ("cosine", "grad_var", "attention_var")  # the columns of PathStatistics.features()
PRIOR_GNNS = ("gatv2", "gat")  # RelationGraphPrior(gnn=...): see its docstring
# RelationGraphPrior(keep=...): how edge scores become keep probabilities (module docstring).
# "per_source" is the mapping of every checkpoint written before "independent" existed.
KEEP_MAPPINGS = ("independent", "per_source")


# 1. Statistics ------------------------------------------------------------------------------


class PathStatistics(nn.Module):
    """Running per-path statistics of Eq. 1, kept as buffers so they travel in a state_dict.

    - ``cosine``: exponential moving average of the cosine similarity between modality ``i``'s
      and modality ``j``'s pooled embeddings (semantic alignment of the pair);
    - ``grad_var``: variance across training steps of a per-step scalar summarising the gradient
      of path ``i->j``'s parameters (e.g. its norm), by Welford's algorithm with one count per
      path, since a path only has a gradient in the steps whose mask keeps it; unbiased
      (``n - 1``), like ``torch.var``;
    - ``attention_var``: exponential moving average of the variance of path ``i->j``'s attention
      weights (how selective, and how stable, the path's attention is).

    Every ``update_*`` takes ``values`` of shape ``(P,)`` and a ``(P,)`` bool ``active`` telling
    which entries to fold in; non-finite values are skipped. An EMA starts at its first
    observation, then ``value <- momentum * value + (1 - momentum) * new``.
    """

    def __init__(self, n_paths: int, *, momentum: float = 0.9) -> None:
        super().__init__()
        if n_paths < 2:
            raise ValueError(f"n_paths must be >= 2, got {n_paths}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.n_paths = n_paths
        self.momentum = momentum
        # float64: Welford's sums stay exact over long runs; .float() converts them if wanted.
        for name in (
            "cosine",
            "cosine_count",
            "grad_mean",
            "grad_m2",
            "grad_count",
            "attention_var",
            "attention_count",
        ):
            self.register_buffer(name, torch.zeros(n_paths, dtype=torch.float64))

    def update_cosine(self, values: Tensor, active: Tensor) -> None:
        """Fold in this step's mean cosine similarity per path."""
        self._update_ema(self.cosine, self.cosine_count, values, active, "values")

    def update_attention(self, values: Tensor, active: Tensor) -> None:
        """Fold in this step's attention-weight variance per path."""
        self._update_ema(self.attention_var, self.attention_count, values, active, "values")

    def update_grad(self, values: Tensor, active: Tensor) -> None:
        """Fold in this step's gradient scalar (e.g. gradient norm) per path, Welford-style."""
        x, use = self._prepare(values, active, "values")
        count = self.grad_count + use  # (P,)
        delta = torch.where(use, x - self.grad_mean, torch.zeros_like(x))
        mean = self.grad_mean + delta / count.clamp(min=1.0)
        self.grad_m2.add_(delta * (x - mean) * use)
        self.grad_mean.copy_(mean)
        self.grad_count.copy_(count)

    def raw_features(self) -> Tensor:
        """``(P, 3)`` unstandardized statistics (columns ``STATISTICS``), NaN where undefined."""
        nan = torch.full_like(self.cosine, math.nan)
        grad_var = self.grad_m2 / (self.grad_count - 1.0).clamp(min=1.0)
        return torch.stack(
            [
                torch.where(self.cosine_count > 0, self.cosine, nan),
                torch.where(self.grad_count > 1, grad_var, nan),
                torch.where(self.attention_count > 0, self.attention_var, nan),
            ],
            dim=1,
        )

    def features(self) -> Tensor:
        """``(P, 3)`` statistics, each column z-scored across the paths where it is defined.

        Undefined entries (not yet observed) and columns with fewer than two defined entries or
        no spread are 0, i.e. "average", so a missing statistic biases no path.
        """
        raw = self.raw_features()  # (P, 3)
        defined = torch.isfinite(raw)
        n = defined.sum(dim=0).to(raw.dtype)  # (3,)
        filled = torch.where(defined, raw, torch.zeros_like(raw))
        mean = filled.sum(dim=0) / n.clamp(min=1.0)
        centred = torch.where(defined, raw - mean, torch.zeros_like(raw))
        std = (centred.square().sum(dim=0) / n.clamp(min=1.0)).sqrt()
        usable = (n >= 2) & (std > 1e-12)
        z = centred / torch.where(usable, std, torch.ones_like(std))
        return torch.where(usable, z, torch.zeros_like(z))

    def _update_ema(
        self, value: Tensor, count: Tensor, values: Tensor, active: Tensor, name: str
    ) -> None:
        x, use = self._prepare(values, active, name)
        first = use & (count == 0)
        ema = self.momentum * value + (1.0 - self.momentum) * x
        value.copy_(torch.where(first, x, torch.where(use, ema, value)))
        count.add_(use.to(count.dtype))

    def _prepare(self, values: Tensor, active: Tensor, name: str) -> tuple[Tensor, Tensor]:
        shape = (self.n_paths,)
        if tuple(values.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(values.shape)}")
        if tuple(active.shape) != shape or active.dtype != torch.bool:
            raise ValueError(
                f"active must be a bool tensor of shape {shape}, "
                f"got {active.dtype} {tuple(active.shape)}"
            )
        x = values.detach().to(device=self.cosine.device, dtype=self.cosine.dtype)
        use = active.to(self.cosine.device) & torch.isfinite(x)
        return torch.where(use, x, torch.zeros_like(x)), use


# 2. From edge probabilities to a distribution over masks -------------------------------------


def path_keep_logits(log_edge_probs: Tensor, k: int, tau: Tensor | float) -> Tensor:
    """``keep="per_source"``: logits of ``q = x**tau / (1 + x**tau)``, ``x = (k - 1) * p``:
    ``tau * log x``, shape (P,).

    ``x = 1`` for a uniform ``p``, so every path is then kept with probability 1/2.
    """
    return tau * (log_edge_probs + math.log(k - 1))


def independent_keep_logits(edge_logits: Tensor, size_bias: Tensor | float, tau: Tensor | float) -> Tensor:
    """``keep="independent"``: ``b + tau * (s - mean(s))`` from the edge scores ``s`` of Eq. 1
    before its per-source softmax, shape (P,). ``b`` is the mean keep logit (how many paths)."""
    return size_bias + tau * (edge_logits - edge_logits.mean())


def _log_nonempty(log_keep: Tensor, log_drop: Tensor) -> Tensor:
    """``log(1 - prod(1 - q))``, finite (with finite gradients) even when every ``q`` is so small
    that ``prod(1 - q)`` rounds to 1: there it is ``log(sum q)``, exact to a factor ``1 + O(sum q)``."""
    log_empty = log_drop.sum()  # log prod(1 - q)
    tiny = log_empty > -1e-6  # sum q below about 1e-6
    exact = torch.log(-torch.expm1(torch.clamp(log_empty, max=-1e-6)))  # clamp: no NaN gradient
    return torch.where(tiny, torch.logsumexp(log_keep, dim=0), exact)


def mask_log_prob(masks: Tensor, keep_logits: Tensor) -> Tensor:
    """``log P(mask)`` under independent keeps ``q = sigmoid(keep_logits)`` given a non-empty mask.

    ``sum b log q + (1 - b) log(1 - q) - log(1 - prod(1 - q))``, computed in log space.
    """
    log_keep = F.logsigmoid(keep_logits)  # (P,)  log q
    log_drop = F.logsigmoid(-keep_logits)  # (P,)  log (1 - q)
    return masks @ log_keep + (1.0 - masks) @ log_drop - _log_nonempty(log_keep, log_drop)  # (M,)


# 3. The prior ---------------------------------------------------------------------------------


class RelationGraphPrior(nn.Module):
    """Modal Relation Graph prior over the ``P = k(k-1)`` paths and over masks.

    **Edge features.** ``self.statistics`` (a ``PathStatistics``) measures, per path ``i->j``,
    the cosine similarity of the two modalities' pooled embeddings, the variance across steps of
    the path's gradient, and the variance of its attention weights; each is z-scored across
    paths. Trainable ``alpha``, ``beta``, ``gamma`` (init 1) combine them into one scalar
    ``e_ij = alpha * cos + beta * var_g + gamma * var_a``.

    **Eq. 1.** ``p(i->j) = softmax_j GAT(e_ij)`` over each source ``i``'s ``k - 1`` outgoing
    edges (``edge_probs``). The graph is the complete directed graph of the ``k`` modalities
    (edge ``i -> j`` for every path, ``e_ij`` as the edge attribute, no self loops) with learnable
    node embeddings. ``gnn`` chooses what ``GAT(e_ij)`` is (``edge_logits``):

    - ``"gatv2"`` (the default): a ``GATv2Conv`` from torch_geometric computes node states
      ``h``, and an MLP turns ``[h_i || h_j || e_ij]`` into one logit per edge;
    - ``"gat"`` (the paper's reading: "this composite score is then modulated via a Graph
      Attention Network"): the edge's attention logit in one ``GATConv`` layer (Veličković et
      al.), ``LeakyReLU(a_src . W x_i + a_dst . W x_j + a_edge . W_e e_ij)``, i.e. GAT's own
      attention before its softmax, which Eq. 1 takes over the source's outgoing edges instead of
      the target's incoming ones. No other layer: the composite score enters only through GAT.

    **Masks.** ``p`` sums to 1 per source, which is not yet a distribution over masks. Each path
    is kept independently with probability ``q_ij``, by ``keep`` (the module docstring says why):

    - ``"independent"`` (default): ``q = sigmoid(b + tau * (s_ij - mean(s)))`` from the edge
      scores ``s = edge_logits()`` before the per-source softmax, with a trainable global
      ``b = size_bias`` (init 0: how many paths to keep) and ``tau = softplus(raw) > 0`` (init 1).
      Every ``q`` can take any value in (0, 1) whatever its siblings'.
    - ``"per_source"`` (older checkpoints): ``q = x**tau / (1 + x**tau)``, ``x = (k - 1) * p_ij``;
      a source's paths share a budget (their ``x`` sum to ``k - 1``).

    Both give ``q = 1/2`` for every path when all edge scores are equal (and ``b = 0``), i.e. the
    uniform distribution over all ``2**P`` bit vectors. Conditioning on a non-empty mask,
    ``P(b) = prod q**b (1 - q)**(1 - b) / (1 - prod(1 - q))``, gives every one of the
    ``2**P - 1`` architectures a positive probability, and they sum to 1: it is proper (the
    normaliser is computed so that it stays finite when every ``q`` is tiny). ``log_prob`` is the
    prior score used by the rank loss; ``sample`` draws from exactly this distribution.

    For ``k = 2`` and ``keep="per_source"`` each source has a single outgoing edge, so Eq. 1 makes
    ``p = 1``, ``q = 1/2`` and the prior is uniform over the three masks whatever its parameters.

    All state is tensors (parameters and the statistics' buffers); ``state_dict`` loads with
    ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        k: int,
        *,
        hidden: int = 16,
        node_dim: int = 16,
        momentum: float = 0.9,
        seed: int | None = 0,
        gnn: str = "gatv2",
        keep: str = "independent",
    ) -> None:
        super().__init__()
        if k < 2:
            raise ValueError(f"k (number of modalities) must be >= 2, got {k}")
        if gnn not in PRIOR_GNNS:
            raise ValueError(f"gnn must be one of {PRIOR_GNNS}, got {gnn!r}")
        if keep not in KEEP_MAPPINGS:
            raise ValueError(f"keep must be one of {KEEP_MAPPINGS}, got {keep!r}")
        self.gnn = gnn
        self.keep = keep
        if hidden < 1 or node_dim < 1:
            raise ValueError(f"hidden and node_dim must be >= 1, got {hidden} and {node_dim}")
        self.k = k
        self.n_paths = num_paths(k)
        pairs = path_pairs(k)
        edge_index = torch.tensor(pairs, dtype=torch.long).t().contiguous()  # (2, P): src, dst
        self.register_buffer("edge_index", edge_index, persistent=False)
        self.statistics = PathStatistics(self.n_paths, momentum=momentum)

        # A seed gives a reproducible init and leaves the global RNG untouched.
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            self.alpha = nn.Parameter(torch.tensor(1.0))
            self.beta = nn.Parameter(torch.tensor(1.0))
            self.gamma = nn.Parameter(torch.tensor(1.0))
            # softplus(log(e - 1)) = 1: the mask distribution starts at tau = 1.
            self.raw_tau = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))
            # keep="independent" only (a "per_source" state dict has none): the mean keep logit
            self.size_bias = nn.Parameter(torch.tensor(0.0)) if keep == "independent" else None
            self.node_embeddings = nn.Parameter(torch.randn(k, node_dim) * 0.5)  # (k, node_dim)
            # imported here: a second of start-up that commands which build no prior skip
            from torch_geometric.nn import GATConv, GATv2Conv

            if gnn == "gat":
                # no bias: only the attention logits are used, never the layer's output
                self.gat = GATConv(node_dim, hidden, heads=1, edge_dim=1, add_self_loops=False, bias=False)
                self.scorer = None
            else:
                self.gat = GATv2Conv(node_dim, hidden, heads=1, edge_dim=1, add_self_loops=False)
                self.scorer = nn.Sequential(
                    nn.Linear(2 * hidden + 1, hidden), nn.Tanh(), nn.Linear(hidden, 1)
                )

    @property
    def tau(self) -> Tensor:
        return F.softplus(self.raw_tau)

    def edge_features(self) -> Tensor:
        """``e_ij = alpha * cos + beta * var_g + gamma * var_a``, shape (P, 1)."""
        stats = self.statistics.features().to(self.alpha.dtype)  # (P, 3)
        weights = torch.stack([self.alpha, self.beta, self.gamma])  # (3,)
        return (stats @ weights).unsqueeze(1)  # (P, 1)

    def edge_logits(self) -> Tensor:
        """Unnormalised score of every edge ``i->j`` (P,), before the per-source softmax."""
        e = self.edge_features()  # (P, 1)
        src, dst = self.edge_index
        if self.scorer is None:
            return self.gat_attention_logits(e)
        h = F.elu(self.gat(self.node_embeddings, self.edge_index, edge_attr=e))  # (k, hidden)
        return self.scorer(torch.cat([h[src], h[dst], e], dim=1)).squeeze(1)  # (P,)

    def gat_attention_logits(self, e: Tensor) -> Tensor:
        """``gnn="gat"``: the attention logit ``GATConv`` gives each edge before its softmax, (P,).

        Written with the layer's own weights (``lin``, ``att_src``, ``att_dst``, ``lin_edge``,
        ``att_edge``, ``negative_slope``), as ``GATConv.forward`` and ``edge_update`` compute it;
        a test checks that its softmax over each target's incoming edges is the attention the
        layer itself returns.
        """
        gat = self.gat
        src, dst = self.edge_index
        x = gat.lin(self.node_embeddings).view(self.k, -1)  # (k, hidden)  W x
        alpha = (x * gat.att_src.view(1, -1)).sum(-1)[src] + (x * gat.att_dst.view(1, -1)).sum(-1)[dst]  # (P,)
        alpha = alpha + (gat.lin_edge(e) * gat.att_edge.view(1, -1)).sum(-1)  # (P,)  + a_edge . W_e e
        return F.leaky_relu(alpha, gat.negative_slope)  # (P,)

    def log_edge_probs(self) -> Tensor:
        """``log p(i->j)``, shape (P,). Row-major path order makes each source's outgoing
        edges one contiguous block of ``k - 1``, so the per-source softmax is a reshape."""
        logits = self.edge_logits().view(self.k, self.k - 1)  # (k, k-1)
        return torch.log_softmax(logits, dim=1).reshape(self.n_paths)

    def edge_probs(self) -> Tensor:
        """``p(i->j)`` of Eq. 1, shape (P,); sums to 1 over each source's outgoing edges."""
        return self.log_edge_probs().exp()

    def keep_logits(self) -> Tensor:
        """``logit(q)`` per path, shape (P,), by the prior's ``keep`` mapping."""
        if self.size_bias is not None:
            return independent_keep_logits(self.edge_logits(), self.size_bias, self.tau)
        return path_keep_logits(self.log_edge_probs(), self.k, self.tau)

    def path_probs(self) -> Tensor:
        """``q``: each path's keep probability before conditioning on non-empty, shape (P,)."""
        return torch.sigmoid(self.keep_logits())

    def log_prob(self, masks: Tensor) -> Tensor:
        """Differentiable log-probability (the prior score) of each non-empty mask, (M, P) -> (M,)."""
        if masks.dim() != 2 or masks.shape[1] != self.n_paths:
            raise ValueError(f"masks must have shape (M, {self.n_paths}), got {tuple(masks.shape)}")
        logits = self.keep_logits()
        masks = masks.to(device=logits.device, dtype=logits.dtype)
        if not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError("masks must contain only 0 and 1")
        empty = (masks.sum(dim=1) == 0).nonzero().flatten()
        if empty.numel():
            raise ValueError(
                f"masks rows {empty.tolist()[:5]} are all zero; the empty mask is not an architecture"
            )
        return mask_log_prob(masks, logits)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` masks drawn from the prior, float 0/1 of shape (n, P), none all zero.

        Exactly the distribution of ``log_prob``. Where an empty draw is unlikely
        (``prod(1 - q) <= 1/2``, always so for ``keep="per_source"``), paths are kept
        independently with probability ``q`` and all-zero rows are redrawn (rejection sampling);
        otherwise the first kept path ``f`` is drawn from ``P(f) = q_f prod_{r<f}(1 - q_r) /
        (1 - prod(1 - q))`` and the paths after it independently, which needs no redraws however
        small ``q`` is. Random numbers come from ``generator`` only (on the generator's device).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        logits = self.keep_logits().detach()
        device = generator.device if generator is not None else logits.device
        logits = logits.to(device)
        q = torch.sigmoid(logits)
        log_drop = F.logsigmoid(-logits)  # (P,)
        if float(log_drop.sum()) > -math.log(2.0):  # P(empty) > 1/2
            return self._sample_first_kept(n, q, logits, log_drop, generator).to(self.alpha.device)
        masks = torch.empty(n, self.n_paths, dtype=q.dtype, device=device)
        todo = torch.arange(n, device=device)
        while todo.numel():
            draw = torch.rand(todo.numel(), self.n_paths, generator=generator, device=device) < q
            masks[todo] = draw.to(q.dtype)
            todo = todo[draw.sum(dim=1) == 0]  # P(empty) <= 1/2: a few rounds at most
        return masks.to(self.alpha.device)

    def _sample_first_kept(self, n: int, q: Tensor, logits: Tensor, log_drop: Tensor, generator: torch.Generator | None) -> Tensor:
        """Non-empty masks without rejection: the first kept path, then the rest independently."""
        before = torch.cumsum(log_drop, dim=0) - log_drop  # (P,)  log prod_{r<f} (1 - q_r)
        log_first = F.logsigmoid(logits) + before  # (P,)  log P(f), unnormalised
        first = torch.multinomial((log_first - log_first.max()).exp(), n, replacement=True, generator=generator)  # (n,)
        index = torch.arange(self.n_paths, device=q.device)  # (P,)
        draw = torch.rand(n, self.n_paths, generator=generator, device=q.device) < q  # (n, P)
        after = index.unsqueeze(0) > first.unsqueeze(1)  # (n, P)
        return ((draw & after) | (index.unsqueeze(0) == first.unsqueeze(1))).to(q.dtype)
