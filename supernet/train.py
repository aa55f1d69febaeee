"""One-shot supernet training with the Modal Relation Graph prior (Table 1 of the paper).

Each step takes one batch and trains ``masks_per_step`` subnets on it, sharing the weights (or,
with ``per_sample_masks``, a subnet per sample; with ``distill``, in-place distillation from the
full supernet): masks are uniform during the warm-up epochs and drawn from the current prior
afterwards. Every ``rank_every`` steps the prior is refined: the pooled outputs of *all* paths
are computed once on the batch, the task loss of ``rank_masks`` sampled subnets follows exactly from them (a path's
output does not depend on the mask), and the rank loss between the prior's scores of those masks
and their losses updates α, β, γ, the graph-attention layer and the rest of the prior. The same
step refreshes the relation-graph statistics (cosine similarity of the modalities' pooled
embeddings, attention-weight variance); the gradient variance is tracked on every step.

Spearman ρ between the prior's scores and the observed validation losses of many masks is logged
after every epoch. Training is seeded: the same configuration and seed give the same weights.

Training never hands on a broken model: a loss or gradient that is NaN or infinite (a learning
rate far too high, features of 1e30) stops it at once with a :class:`TrainingError` naming the
epoch and the likely cause, so the caller saves nothing; so do non-finite validation losses and,
at the end, non-finite weights. Before the model is built, the memory one training step needs is
checked against what the machine has available (``supernet.memory``).

Where it runs: ``[train] device`` (``auto``: CUDA, else MPS, else the CPU; ``supernet.device``),
with bf16 autocast on CUDA (``precision``), all paths batched and optionally the whole step in
one CUDA graph (``batched_paths``, ``cuda_graph``; :class:`TrainStep`), and under ``torchrun`` as
one of several data-parallel ranks (``supernet.distributed``). On the CPU the step is the one it
always was: the same weights, bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from supernet.batched import batched_pooled_paths
from supernet.config import ModelConfig, TrainConfig
from supernet.data.dataset import MultimodalData, Split
from supernet.device import describe, device_problem, resolve_device, resolve_precision  # noqa: F401 (device_problem: re-exported)
from supernet.distributed import Distributed
from supernet.errors import TrainingError
from supernet.memory import gib, require_memory, training_bytes
from supernet.model import Supernet, SupernetSpec
from supernet.paths import all_masks, num_paths, path_pairs
from supernet.rank_loss import rank_loss, spearman
from supernet.relation_graph import RelationGraphPrior
from supernet.scoring import batches

RANK_EVAL_SAMPLES = 512  # validation samples used for the per-epoch Spearman ρ
RANK_EVAL_MASKS = 512  # masks ranked for it (all of them when there are fewer)
LARGE_FEATURES = 1e4  # |feature| above this: the data was likely not normalized
HIGH_LR = 0.1  # AdamW learning rates above this rarely train a transformer


@dataclass
class TrainResult:
    model: Supernet
    prior: RelationGraphPrior
    history: list[dict[str, Any]] = field(default_factory=list)


def task_loss(output: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """Cross-entropy for classification; L1 for regression (MMSA's choice for MOSEI/MOSI).

    ``output`` may carry leading model axes: ``(..., B, out)``; the loss is averaged over the
    batch and returned per model: ``(...)``.
    """
    if task == "classification":
        lead = output.shape[:-2]
        flat = output.reshape(-1, output.shape[-1])
        target = labels.expand(*lead, labels.shape[0]).reshape(-1)
        return F.cross_entropy(flat, target, reduction="none").view(*lead, -1).mean(dim=-1)
    return (output.squeeze(-1) - labels).abs().mean(dim=-1)


def uniform_masks(n: int, n_paths: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` masks drawn uniformly from the non-empty masks."""
    out = torch.randint(0, 2, (n, n_paths), generator=generator).float()
    while (empty := out.sum(dim=1) == 0).any():
        out[empty] = torch.randint(0, 2, (int(empty.sum()), n_paths), generator=generator).float()
    return out


def model_spec(data: MultimodalData) -> SupernetSpec:
    return SupernetSpec(tuple(data.modalities), data.task, data.output_dim)


def _build_model(data: MultimodalData, model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device | None = None) -> Supernet:
    """The supernet on ``device`` (default: ``[train] device`` resolved here), once the memory a
    training step needs is known to be there."""
    if device is None:
        device, _ = resolve_device(train_cfg.device)
    need = training_bytes(data.modalities, data.output_dim, model_cfg, train_cfg, train_samples=len(data.splits["train"]))
    limit = None
    if device.type == "cuda" and torch.cuda.is_available():
        limit = torch.cuda.mem_get_info(device)[0]
    what = f"training this supernet ({gib(need)} for weights, optimizer state and one step's activations)"
    fix = "lower [model] width, layers_per_path or ffn_mult, or [train] batch_size or masks_per_step"
    if device.type == "cpu" or limit is not None:
        require_memory(need, what=what, fix=fix, limit=limit)
    return Supernet(model_spec(data), model_cfg).to(device)


def _feature_scale(data: MultimodalData) -> float:
    """The largest |feature| of the train split (read only to explain a divergence)."""
    scale = 0.0
    for x in data.splits["train"].features.values():
        for chunk in x.split(4096):
            finite = chunk[torch.isfinite(chunk)]
            if finite.numel():
                scale = max(scale, float(finite.abs().max()))
    return scale


def _diverged(what: str, epoch: int, cfg: TrainConfig, data: MultimodalData, *, prior: bool = False) -> TrainingError:
    """The one-line error of a training run that produced NaN or infinity, with its likely cause."""
    causes = []
    scale = _feature_scale(data)
    if scale > LARGE_FEATURES:
        causes.append(f"features too large (|value| up to {scale:.3g} in the train split): normalize them to mean 0, std 1")
    if prior and cfg.prior_lr > HIGH_LR:
        causes.append(f"[train] prior_lr = {cfg.prior_lr:g} too high: lower it (e.g. 0.02)")
    if cfg.lr > HIGH_LR:
        causes.append(f"[train] lr = {cfg.lr:g} too high: lower it (e.g. 1e-3)")
    if not causes:
        causes.append(f"the learning rate: lower [train] lr = {cfg.lr:g} (e.g. by 10x), or check the features' scale")
    return TrainingError(
        f"training diverged at epoch {epoch}/{cfg.epochs}: {what} is not finite; likely cause: "
        + "; or ".join(causes) + "; nothing was saved"
    )


def _finite_gradients(model: torch.nn.Module) -> bool:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack([torch.linalg.vector_norm(g) for g in grads])).all())


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _to(device: torch.device, features, lengths, labels):
    """A batch on ``device``. To CUDA through pinned (page-locked) host memory with non-blocking
    copies, so the copy overlaps the previous step's kernels; elsewhere a plain ``.to``."""
    if device.type == "cuda":
        move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
    else:
        move = lambda t: t.to(device)  # noqa: E731
    features = [move(f) for f in features]
    lengths = [None if n is None else move(n) for n in lengths]
    return features, lengths, move(labels)


class _Statistics:
    """Feeds the relation graph's statistics from the supernet while it trains.

    Under ``torchrun`` (``dist``) the gradients are already averaged over the ranks when they
    are read; the embedding and attention statistics are measured on each rank's share of the
    batch and combined exactly (weighted means; the variance from its first two moments), so
    every rank updates its statistics with the same numbers."""

    def __init__(self, model: Supernet, prior: RelationGraphPrior, dist: Distributed | None = None) -> None:
        self.model, self.prior = model, prior
        self.pairs = path_pairs(model.k)
        self.dist = dist or Distributed()

    @torch.no_grad()
    def gradients(self, active: torch.Tensor) -> None:
        on_cpu = next(self.model.parameters()).device.type == "cpu"
        self.prior.statistics.update_grad(path_grad_norms(self.model, active, one_sync=not on_cpu), active)

    @torch.no_grad()
    def embeddings_and_attention(self, features, lengths, n: int = 0, total: int = 0) -> None:
        """``n`` of the batch's ``total`` samples are this rank's (both 0: not distributed)."""
        model, dist = self.model, self.dist
        if dist.active:
            sums = torch.zeros(3, len(self.pairs), dtype=torch.float64, device=next(model.parameters()).device)
            if n:
                cos, attention = self._measure(features, lengths)
                for p, w in enumerate(attention):
                    w = w.double()
                    sums[0, p], sums[1, p], sums[2, p] = w.sum(), w.pow(2).sum(), w.numel()
                cos = cos.double() * (n / total)
            else:  # an empty share of a last, short batch
                cos = torch.zeros(len(self.pairs), dtype=torch.float64, device=sums.device)
            cos, sums = dist.sum(cos), dist.sum(sums)
            count = sums[2]
            variance = (sums[1] - sums[0].pow(2) / count) / (count - 1)  # unbiased, as Tensor.var
            cos, variance = cos.float(), variance.float()
        else:
            cos, attention = self._measure(features, lengths)
            variance = torch.stack([w.var() for w in attention])
        everything = torch.ones(len(self.pairs), dtype=torch.bool)
        self.prior.statistics.update_cosine(cos.cpu(), everything)
        self.prior.statistics.update_attention(variance.cpu(), everything)

    def _measure(self, features, lengths) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean cosine similarity of each path's pooled modality embeddings ``(P,)`` and each
        path's first-block attention probabilities."""
        model = self.model
        h, keep = model.embed(features, lengths, range(model.k))
        pooled = [
            h[m].mean(dim=1) if keep[m] is None else (h[m] * keep[m][:, :, None]).sum(1) / keep[m].sum(1, keepdim=True)
            for m in range(model.k)
        ]
        cos = torch.stack([F.cosine_similarity(pooled[i], pooled[j], dim=-1).mean() for i, j in self.pairs])
        attention = [model.paths[p].attention_weights(h[j], h[i], keep[i]) for p, (i, j) in enumerate(self.pairs)]
        return cos, attention


@torch.no_grad()
def path_grad_norms(model: Supernet, active: torch.Tensor, *, one_sync: bool = False) -> torch.Tensor:
    """The gradient norm of each active path ``(P,)`` on the CPU, 0 for the others.

    ``one_sync`` (accelerators): computed on the device and copied once, instead of one host
    sync per parameter; on the CPU the loop is as fast and keeps today's exact numbers."""
    params = [[q for q in path.parameters() if q.grad is not None] for path in model.paths]
    if not one_sync:
        norms = torch.zeros(len(params))
        for p in active.nonzero().flatten().tolist():
            norms[p] = math.sqrt(sum(float(q.grad.pow(2).sum()) for q in params[p]))
        return norms
    zero = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    squares = torch.stack([sum((q.grad.double().pow(2).sum() for q in ps), zero) for ps in params])  # (P,)
    return squares.sqrt().float().cpu() * active.cpu()


class _NotFinite(Exception):
    """A training step's loss or gradient is NaN or infinite (``train_supernet`` says why)."""


def use_batched_paths(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether a per-sample step runs all paths as one batched operation
    (``supernet.batched``): ``[train] batched_paths``, ``auto`` = on CUDA only (one kernel launch
    per layer for all paths; on the CPU the path-by-path loop was faster, benchmarks/README.md)."""
    if not cfg.per_sample_masks:
        return False
    return device.type == "cuda" if cfg.batched_paths == "auto" else bool(cfg.batched_paths)


class TrainStep:
    """One training step of ``train_supernet``, as ``mro-search train`` runs it: forward and
    backward of the batch's subnets (``_subnet_step``), the gradients averaged over ``torchrun``
    ranks, the finiteness checks, the per-path gradient statistics, AdamW.

    On its device: ``autocast`` (bf16 when ``[train] precision`` says so), all paths batched
    (``use_batched_paths``), and with ``[train] cuda_graph`` the forward, backward and AdamW step
    of a per-sample batch captured once in a CUDA graph and replayed (``_GraphStep``).
    ``benchmarks/bench_gpu.py`` times this class."""

    def __init__(self, model: Supernet, optimizer: torch.optim.Optimizer, stats: _Statistics, cfg: TrainConfig,
                 task: str, device: torch.device, *, dist: Distributed | None = None, log: Callable[[str], None] | None = None,
                 prior: RelationGraphPrior | None = None, prior_optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model, self.optimizer, self.stats, self.cfg, self.task = model, optimizer, stats, cfg, task
        # [train] joint_rank: the step's loss includes rank_weight * R, which also trains the prior
        self.prior, self.prior_optimizer = prior, prior_optimizer
        self.joint = bool(cfg.joint_rank and prior is not None and prior_optimizer is not None)
        self.rank_value = float("nan")  # R of the last joint step
        self.device, self.dist = device, dist or Distributed()
        self.dtype = resolve_precision(cfg.precision, device)
        self.batched = use_batched_paths(cfg, device)
        self.graph: _GraphStep | None = None
        why = _graph_problem(cfg, device, self.dist)
        if cfg.cuda_graph and why and log:
            log(f"[train] cuda_graph ignored: {why}")
        if cfg.cuda_graph and not why:
            self.graph = _GraphStep(self)

    def autocast(self, *, cache: bool = True):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=cache)

    def backward(self, features, lengths, labels, masks) -> torch.Tensor:
        """Forward and backward of one batch share; returns the detached mean task loss (0-d)."""
        with self.autocast():
            if self.joint:
                loss, rank = _joint_step(self.model, self.prior, features, lengths, labels, masks, self.task, self.cfg)
                self.rank_value = rank
                return loss
            return _subnet_step(self.model, features, lengths, labels, masks, self.task, self.cfg,
                                batched=self.batched, as_tensor=True)

    def __call__(self, features, lengths, labels, masks, *, total: int | None = None, active: torch.Tensor | None = None) -> float:
        """Train on one batch (this rank's share of ``total`` samples under torchrun, ``active``
        the paths the whole batch's masks use) and return the batch's mean task loss. Raises :class:`_NotFinite` on a NaN or infinite loss or
        gradient (the step is then not applied, except inside a CUDA graph, where the caller
        saves nothing anyway)."""
        n = len(labels)
        total = n if total is None else total
        active = _active_paths(masks) if active is None else active
        if self.graph is not None and self.graph.fits(features, lengths, labels, masks):
            return self._checked(self.graph(features, lengths, labels, masks), active)
        if self.graph is not None:  # keep the graph's gradient tensors: zero them, do not drop them
            self.optimizer.zero_grad(set_to_none=False)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        if self.joint:
            self.prior_optimizer.zero_grad(set_to_none=True)
            self.rank_value = 0.0
        if n:
            loss = self.backward(features, lengths, labels, masks).float()
        else:  # an empty share of a last, short batch
            loss = torch.zeros((), device=self.device)
        if self.dist.active:
            loss = self.dist.weighted_mean(loss.reshape(1), n, total)[0]
            self.dist.average_gradients(list(self.model.parameters()), n, total)
            if self.joint:
                self.dist.average_gradients(list(self.prior.parameters()), n, total)
                rank = torch.tensor([self.rank_value], dtype=torch.float64, device=self.device)
                self.rank_value = float(self.dist.weighted_mean(rank, n, total)[0])
        value = self._checked(loss, active)
        self.optimizer.step()
        if self.joint:
            if not (math.isfinite(self.rank_value) and _finite_gradients(self.prior)):
                raise _NotFinite(f"the prior's rank loss ({self.rank_value}) or its gradient")
            self.prior_optimizer.step()
        return value


    def _checked(self, loss: torch.Tensor, active: torch.Tensor) -> float:
        """The step's loss as a float once it and every gradient are finite; feeds the per-path
        gradient statistics."""
        value = float(loss)
        if not math.isfinite(value):
            raise _NotFinite(f"the training loss ({value})")
        if not _finite_gradients(self.model):
            raise _NotFinite("a gradient")
        self.stats.gradients(active)
        return value


def _active_paths(masks: torch.Tensor) -> torch.Tensor:
    return masks.amax(dim=0).bool().cpu()


def _graph_problem(cfg: TrainConfig, device: torch.device, dist: Distributed) -> str | None:
    """Why ``[train] cuda_graph`` cannot be honoured here, or None."""
    if device.type != "cuda":
        return f"it needs a CUDA device, this run trains on {device}"
    if not cfg.per_sample_masks:
        return "it needs [train] per_sample_masks = true (static shapes: one mask per sample)"
    if cfg.distill > 0:
        return "it needs [train] distill = 0"
    if dist.active:
        return "not under torchrun (the gradient all-reduce runs outside the graph)"
    return None


class _GraphStep:
    """The per-sample step (forward, backward, AdamW) captured in one CUDA graph.

    PyTorch's whole-network capture recipe (``torch.cuda.graphs``, "Whole-network capture"): a
    few eager iterations on a side stream first (they are real training steps, on real batches:
    they also create AdamW's state, which must exist before capture), gradients set to None so
    that backward allocates them from the graph's private pool, then one capture, after which
    every batch of the captured shape is copied into the static inputs and the graph replayed.
    The optimizer must be built with ``capturable=True`` (``train_supernet`` does), and autocast
    runs without its weight cache (a cast cached during capture would go stale)."""

    WARMUP = 3

    def __init__(self, step: TrainStep) -> None:
        self.step = step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple | None = None
        self.loss: torch.Tensor | None = None
        self.warm = 0
        self.shape: tuple | None = None

    @staticmethod
    def _shape(features, lengths, labels, masks) -> tuple:
        return (tuple(f.shape for f in features), tuple(None if n is None else n.shape for n in lengths),
                labels.shape, masks.shape)

    def fits(self, features, lengths, labels, masks) -> bool:
        shape = self._shape(features, lengths, labels, masks)
        if self.shape is None:
            self.shape = shape  # the first batch's shape is the captured one
        return shape == self.shape

    def _body(self, features, lengths, labels, masks) -> torch.Tensor:
        step = self.step
        with step.autocast(cache=False):
            loss = _subnet_step(step.model, features, lengths, labels, masks, step.task, step.cfg,
                                batched=step.batched, as_tensor=True)
        step.optimizer.step()
        return loss

    def __call__(self, features, lengths, labels, masks) -> torch.Tensor:
        step, device = self.step, self.step.device
        masks = masks.to(device, non_blocking=True)
        if self.warm < self.WARMUP:  # eager, on a side stream
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                step.optimizer.zero_grad(set_to_none=True)
                loss = self._body(features, lengths, labels, masks)
            torch.cuda.current_stream(device).wait_stream(side)
            self.warm += 1
            return loss
        if self.graph is None:
            self.static = ([f.clone() for f in features], [None if n is None else n.clone() for n in lengths],
                           labels.clone(), masks.clone())
            step.optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss = self._body(*self.static)
        sf, sn, sy, sm = self.static
        for dst, src in zip(sf, features):
            dst.copy_(src, non_blocking=True)
        for dst, src in zip(sn, lengths):
            if dst is not None:
                dst.copy_(src, non_blocking=True)
        sy.copy_(labels, non_blocking=True)
        sm.copy_(masks, non_blocking=True)
        self.graph.replay()
        return self.loss


def train_supernet(
    data: MultimodalData,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    dist: Distributed | None = None,
) -> TrainResult:
    """Train a supernet and its relation-graph prior on ``data``; returns both and the history.

    ``dist``: this process's rank under ``torchrun`` (``supernet.distributed``); every rank
    returns the same model and prior, and only rank 0 logs and shows progress."""
    dist = dist or Distributed()
    device, why = resolve_device(train_cfg.device, local_rank=dist.local_rank if dist.active else None)
    if not dist.is_main:
        log, progress = None, False
    if log:
        ranks = f", {dist.world_size} ranks (torchrun), batch {train_cfg.batch_size} split across them" if dist.active else ""
        log(describe(device, why) + f"; precision {_precision_name(train_cfg, device)}{ranks}")
    torch.manual_seed(train_cfg.seed)
    g = torch.Generator().manual_seed(train_cfg.seed)
    model = _build_model(data, model_cfg, train_cfg, device)
    prior = RelationGraphPrior(model.k, gnn=train_cfg.prior_gnn, keep=train_cfg.prior_keep, seed=train_cfg.seed)
    if dist.active:
        dist.broadcast_parameters(model)
        torch.manual_seed(train_cfg.seed + dist.rank)  # dropout: each rank its own draws
    stats = _Statistics(model, prior, dist)
    capturable = bool(train_cfg.cuda_graph and _graph_problem(train_cfg, device, dist) is None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                                  **({"capturable": True} if capturable else {}))
    prior_optimizer = torch.optim.Adam(prior.parameters(), lr=train_cfg.prior_lr)
    step_fn = TrainStep(model, optimizer, stats, train_cfg, data.task, device, dist=dist, log=log,
                        prior=prior, prior_optimizer=prior_optimizer)
    names = data.modality_names
    train, valid = data.splits["train"], data.splits["valid"]
    P = num_paths(model.k)
    eval_index = torch.randperm(len(valid), generator=g)[:RANK_EVAL_SAMPLES]
    eval_masks = all_masks(P) if 2**P - 1 <= RANK_EVAL_MASKS else uniform_masks(RANK_EVAL_MASKS, P, g)
    eval_masks[-1] = 1.0  # the full mask, whose loss is logged as valid_loss_full (all_masks ends with it)

    steps_per_epoch = math.ceil(len(train) / train_cfg.batch_size)
    bar = tqdm(
        total=train_cfg.epochs * steps_per_epoch,
        desc="supernet",
        unit="step",
        disable=not progress or not sys.stderr.isatty(),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    history: list[dict[str, Any]] = []
    step = 0
    for epoch in range(train_cfg.epochs):
        warmup = epoch < train_cfg.warmup_epochs
        model.train()
        started, seen, loss_sum, rank_sum, rank_n = time.perf_counter(), 0, 0.0, 0.0, 0
        order = torch.randperm(len(train), generator=g)
        for features, lengths, labels in batches(train, names, train_cfg.batch_size, order):
            total = len(labels)
            # 1. train subnets on this batch (masks uniform in warm-up, else from the prior); under
            # torchrun every rank draws the same masks and trains on its share of the batch
            n = total if train_cfg.per_sample_masks else train_cfg.masks_per_step
            if warmup:
                masks = uniform_masks(n, P, g)
            else:
                with torch.no_grad():
                    masks = prior.sample(n, g)
            active = _active_paths(masks)  # of the whole batch: the same statistics on every rank
            if dist.active:
                share = dist.shard(total)
                features, labels = [f[share] for f in features], labels[share]
                lengths = [None if x is None else x[share] for x in lengths]
                if train_cfg.per_sample_masks:
                    masks = masks[share]
            features, lengths, labels = _to(device, features, lengths, labels)
            try:
                loss = step_fn(features, lengths, labels, masks.to(device), total=total, active=active)
            except _NotFinite as exc:
                raise _diverged(str(exc), epoch + 1, train_cfg, data) from None
            loss_sum += loss * total
            seen += total
            if step_fn.joint:  # the prior learned from this step's subnets (rank_weight * R)
                rank_sum, rank_n = rank_sum + step_fn.rank_value, rank_n + 1
            # 2. every rank_every steps: refine the prior with the rank loss on this batch (joint:
            #    measure the statistics only)
            if step % train_cfg.rank_every == 0 and step_fn.joint:
                _measure_statistics(model, stats, features, lengths, dist=dist, n=len(labels), total=total)
            elif step % train_cfg.rank_every == 0:
                value = _refine_prior(model, prior, prior_optimizer, stats, features, lengths, labels, data.task, train_cfg, g, warmup,
                                      dist=dist, total=total)
                if not math.isfinite(value):
                    raise _diverged(f"the prior's rank loss ({value})", epoch + 1, train_cfg, data, prior=True)
                rank_sum, rank_n = rank_sum + value, rank_n + 1
            step += 1
            bar.update(1)
        elapsed = time.perf_counter() - started
        record = _evaluate_epoch(model, prior, valid, eval_index, eval_masks, names, data.task, device)
        if not (math.isfinite(record["valid_loss_best"]) and math.isfinite(record["valid_loss_full"])):
            raise _diverged(f"the validation loss ({record['valid_loss_full']})", epoch + 1, train_cfg, data)
        record.update(
            epoch=epoch + 1,
            phase="warmup" if warmup else "prior",
            train_loss=loss_sum / max(seen, 1),
            rank_loss=rank_sum / max(rank_n, 1),
            samples_per_s=seen / elapsed if elapsed > 0 else float("nan"),
            seconds=elapsed,
        )
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", rho=f"{record['spearman']:.2f}")
        if log:
            log(
                f"epoch {epoch + 1}/{train_cfg.epochs} ({record['phase']}): train loss {record['train_loss']:.4f}, "
                f"valid loss full mask {record['valid_loss_full']:.4f}, rank loss {record['rank_loss']:.4f}, "
                f"Spearman rho {record['spearman']:.3f}, {record['samples_per_s']:.0f} samples/s"
            )
    bar.close()
    if not (_all_finite(model) and _all_finite(prior)):
        raise _diverged("a weight", train_cfg.epochs, train_cfg, data)
    model.eval()
    return TrainResult(model, prior, history)


def _precision_name(cfg: TrainConfig, device: torch.device) -> str:
    return "bf16 autocast" if resolve_precision(cfg.precision, device) is not None else "fp32"


def _subnet_step(model, features, lengths, labels, masks, task, cfg: TrainConfig, *, batched: bool = False,
                 as_tensor: bool = False) -> float | torch.Tensor:
    """Backpropagate the loss of the subnets ``masks`` selects on one batch; returns their mean
    task loss (a float, or a detached 0-d tensor with ``as_tensor``: no host sync).

    ``per_sample_masks``: mask ``b`` applies to sample ``b`` only. Every path runs once on the
    batch and each sample averages its own active paths (exactly ``forward`` per sample, since a
    path's output does not depend on the mask): many subnets per step for the cost of one full
    pass. ``batched``: the paths run as one batched operation (``supernet.batched``), same
    values. Otherwise each mask is one subnet trained on the whole batch.

    ``distill`` > 0 (in-place distillation, BigNAS): the full supernet is trained on the labels
    too, and each subnet's loss is ``(1 - distill) * task loss + distill * the distance to the
    full supernet's detached output`` (KL divergence of the softmax for classification, the task
    loss against it for regression).
    """
    if cfg.per_sample_masks:
        if batched:
            pooled = batched_pooled_paths(model, features, lengths)  # (B, P, C): all paths, one op
        else:
            pooled = model.pooled_paths(features, lengths)  # (B, P, C): every path once
        outputs = model.forward_per_sample(pooled, masks)[None]  # (1, B, out)
        full = model.head(pooled.mean(dim=1)) if cfg.distill > 0 else None
    elif cfg.distill == 0:
        total = 0.0
        for mask in masks:  # one backward per subnet: only one subnet's activations held at a time
            loss = task_loss(model(features, mask, lengths), labels, task) / len(masks)
            loss.backward()
            total = total + loss.detach()
        return total if as_tensor else float(total)
    else:
        outputs = torch.stack([model(features, mask, lengths) for mask in masks])  # (M, B, out)
        full = model(features, torch.ones(masks.shape[1]), lengths)
    loss = task_loss(outputs, labels, task).mean()
    subnet_loss = loss.detach()
    if full is not None:
        loss = _distilled(loss, outputs, full, labels, task, cfg)
    loss.backward()
    return subnet_loss if as_tensor else float(subnet_loss)


def _distilled(loss, outputs, full, labels, task, cfg: TrainConfig) -> torch.Tensor:
    """In-place distillation: ``(1 - distill) * loss + distill * distance to the full supernet's
    detached output + the full supernet's own task loss`` (see ``_subnet_step``)."""
    target = full.detach()
    if task == "classification":
        soft = F.kl_div(
            F.log_softmax(outputs, dim=-1),
            F.log_softmax(target, dim=-1).expand_as(outputs),
            log_target=True,
            reduction="none",
        ).sum(dim=-1).mean()
    else:
        soft = (outputs - target).abs().mean()
    return (1 - cfg.distill) * loss + cfg.distill * soft + task_loss(full, labels, task)


def _joint_step(model, prior, features, lengths, labels, masks, task, cfg: TrainConfig) -> tuple[torch.Tensor, float]:
    """``[train] joint_rank``: backpropagate ``task loss + rank_weight * R`` of the subnets
    ``masks`` selects on one batch (Table 1 of the paper), R ranking the prior's scores of those
    masks against their task losses with gradient into both (``rank_loss(loss_gradient=True)``).
    The subnets run together (their activations held at once). Returns the detached mean task
    loss (0-d) and R."""
    outputs = torch.stack([model(features, mask, lengths) for mask in masks])  # (M, B, out)
    losses = task_loss(outputs, labels, task).float()  # (M,)
    loss = losses.mean()
    subnet_loss = loss.detach()
    if cfg.distill > 0:  # in-place distillation as in _subnet_step
        full = model(features, torch.ones(masks.shape[1], device=masks.device), lengths)
        loss = _distilled(loss, outputs, full, labels, task, cfg)
    rank = rank_loss(prior.log_prob(masks), losses, cfg.rank_loss, loss_gradient=True)
    (loss + cfg.rank_weight * rank.to(loss.device)).backward()
    return subnet_loss, float(rank.detach())


@torch.no_grad()
def _measure_statistics(model, stats, features, lengths, *, dist: Distributed, n: int, total: int) -> None:
    """The embedding and attention statistics of ``_refine_prior``, without its prior update."""
    was_training = model.training
    model.eval()
    if dist.active:
        stats.embeddings_and_attention(features, lengths, n, total)
    else:
        stats.embeddings_and_attention(features, lengths)
    model.train(was_training)


def _refine_prior(model, prior, optimizer, stats, features, lengths, labels, task, cfg: TrainConfig, g, warmup, *,
                  dist: Distributed | None = None, total: int | None = None) -> float:
    """One rank-loss update of the prior on this batch. Under torchrun each rank scores the same
    masks on its share and the losses are averaged over the ranks (weighted by share): every
    rank then makes the same update."""
    dist = dist or Distributed()
    n = len(labels)
    total = n if total is None else total
    was_training = model.training
    model.eval()
    with torch.no_grad():
        # rank masks: uniform in warm-up, else half from the prior and half uniform, so the prior
        # also sees subnets it currently dislikes
        n_prior = 0 if warmup else cfg.rank_masks // 2
        masks = torch.cat([prior.sample(n_prior, g), uniform_masks(cfg.rank_masks - n_prior, model.num_paths, g)])
        device = next(model.parameters()).device
        if n:
            pooled = model.pooled_paths(features, lengths)  # (B, P, C): every path, once
            losses = task_loss(model.forward_from_pooled(pooled, masks.to(pooled.device)), labels, task).float()
        else:  # an empty share of a last, short batch
            losses = torch.zeros(len(masks), device=device)
        stats.embeddings_and_attention(features, lengths, n, total) if dist.active else stats.embeddings_and_attention(features, lengths)
        losses = dist.weighted_mean(losses, n, total).cpu()
    model.train(was_training)
    optimizer.zero_grad(set_to_none=True)
    loss = rank_loss(prior.log_prob(masks), losses, cfg.rank_loss)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def _evaluate_epoch(model, prior, valid: Split, index, masks, names, task, device) -> dict[str, Any]:
    """Validation losses of many masks from one pass over all paths; Spearman ρ against the prior."""
    model.eval()
    losses = []
    weights = []
    for features, lengths, labels in batches(valid, names, 256, index):
        features, lengths, labels = _to(device, features, lengths, labels)
        pooled = model.pooled_paths(features, lengths)
        losses.append(task_loss(model.forward_from_pooled(pooled, masks.to(device)), labels, task).cpu())
        weights.append(len(labels))
    w = torch.tensor(weights, dtype=torch.float32)
    mask_losses = (torch.stack(losses, dim=1) * w).sum(dim=1) / w.sum()  # (M,)
    scores = prior.log_prob(masks)
    full = masks.sum(dim=1) == masks.shape[1]
    return {
        "spearman": spearman(scores.numpy(), (-mask_losses).numpy()),
        "valid_loss_full": float(mask_losses[full][0]) if full.any() else float("nan"),
        "valid_loss_best": float(mask_losses.min()),
        "edge_probs": [round(float(p), 4) for p in prior.edge_probs()],
    }


@dataclass
class SubnetResult:
    """A subnet trained stand-alone: the model (only the mask's paths were ever run) and its history."""

    model: Supernet
    mask: tuple[int, ...]
    history: list[dict[str, Any]] = field(default_factory=list)


def train_subnet(
    data: MultimodalData,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    mask: Any,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> SubnetResult:
    """Train one fixed subnet from scratch, stand-alone (no weight sharing, no prior).

    The baseline a supernet's inherited scores are judged against: the same model class and
    initialisation as ``train_supernet`` (same seed), the same optimizer, epochs, batch size,
    learning rate and batch order, but every step trains the one subnet ``mask`` selects. The
    paths the mask leaves out are never run and keep their initial weights. Each epoch records
    the training loss and the validation loss of the subnet.
    """
    torch.manual_seed(train_cfg.seed)
    g = torch.Generator().manual_seed(train_cfg.seed)
    device, _ = resolve_device(train_cfg.device)
    model = _build_model(data, model_cfg, train_cfg, device)
    bits = tuple(int(b) for b in (mask.tolist() if isinstance(mask, torch.Tensor) else mask))
    if len(bits) != model.num_paths:
        raise ValueError(f"mask has {len(bits)} bits but the model has {model.num_paths} paths")
    active = [p for p, bit in enumerate(bits) if bit]
    # the left-out paths never get a gradient, so AdamW skips them (no step, no weight decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    names = data.modality_names
    train, valid = data.splits["train"], data.splits["valid"]
    steps_per_epoch = math.ceil(len(train) / train_cfg.batch_size)
    bar = tqdm(
        total=train_cfg.epochs * steps_per_epoch,
        desc=f"subnet {''.join(map(str, bits))}",
        unit="step",
        disable=not progress or not sys.stderr.isatty(),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    history: list[dict[str, Any]] = []
    for epoch in range(train_cfg.epochs):
        model.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        order = torch.randperm(len(train), generator=g)
        for features, lengths, labels in batches(train, names, train_cfg.batch_size, order):
            features, lengths, labels = _to(device, features, lengths, labels)
            optimizer.zero_grad(set_to_none=True)
            loss = task_loss(model(features, bits, lengths), labels, data.task)
            loss.backward()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise _diverged(f"the training loss ({value})", epoch + 1, train_cfg, data)
            if not _finite_gradients(model):
                raise _diverged("a gradient", epoch + 1, train_cfg, data)
            optimizer.step()
            loss_sum += value * len(labels)
            seen += len(labels)
            bar.update(1)
        elapsed = time.perf_counter() - started
        model.eval()
        with torch.no_grad():
            total, n = 0.0, 0
            for features, lengths, labels in batches(valid, names, 256):
                features, lengths, labels = _to(device, features, lengths, labels)
                total += float(task_loss(model(features, bits, lengths), labels, data.task)) * len(labels)
                n += len(labels)
        if not math.isfinite(total):
            raise _diverged(f"the validation loss ({total / max(n, 1)})", epoch + 1, train_cfg, data)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "valid_loss": total / max(n, 1),
            "samples_per_s": seen / elapsed if elapsed > 0 else float("nan"),
            "seconds": elapsed,
        }
        history.append(record)
        if log:
            log(
                f"subnet {''.join(map(str, bits))} ({len(active)} paths) epoch {epoch + 1}/{train_cfg.epochs}: "
                f"train loss {record['train_loss']:.4f}, valid loss {record['valid_loss']:.4f}"
            )
    bar.close()
    if not _all_finite(model):
        raise _diverged("a weight", train_cfg.epochs, train_cfg, data)
    model.eval()
    return SubnetResult(model, bits, history)
