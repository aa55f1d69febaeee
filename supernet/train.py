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
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from supernet.config import ModelConfig, TrainConfig
from supernet.data.dataset import MultimodalData, Split
from supernet.errors import ConfigError, TrainingError
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


def device_problem(device: torch.device) -> str | None:
    """Why ``device`` cannot be used on this machine (``[train] device`` is checked in the study
    file only for its form: ``cuda:1`` is a fine device elsewhere), or None."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "this machine's torch sees no CUDA device"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    if device.type == "mps" and not torch.backends.mps.is_available():
        return "this machine has no MPS device"
    return None


def _build_model(data: MultimodalData, model_cfg: ModelConfig, train_cfg: TrainConfig) -> Supernet:
    """The supernet, once the device is known to exist and the memory a training step needs to
    be there."""
    device = torch.device(train_cfg.device)
    problem = device_problem(device)
    if problem:
        raise ConfigError(f"[train] device {train_cfg.device!r} is not available: {problem}; set [train] device = 'cpu'")
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
    features = [f.to(device) for f in features]
    lengths = [None if n is None else n.to(device) for n in lengths]
    return features, lengths, labels.to(device)


class _Statistics:
    """Feeds the relation graph's statistics from the supernet while it trains."""

    def __init__(self, model: Supernet, prior: RelationGraphPrior) -> None:
        self.model, self.prior = model, prior
        self.pairs = path_pairs(model.k)

    @torch.no_grad()
    def gradients(self, active: torch.Tensor) -> None:
        norms = torch.zeros(len(self.pairs))
        for p in active.nonzero().flatten().tolist():
            sq = sum(float(q.grad.pow(2).sum()) for q in self.model.paths[p].parameters() if q.grad is not None)
            norms[p] = math.sqrt(sq)
        self.prior.statistics.update_grad(norms, active)

    @torch.no_grad()
    def embeddings_and_attention(self, features, lengths) -> None:
        model = self.model
        h, keep = model.embed(features, lengths, range(model.k))
        pooled = [
            h[m].mean(dim=1) if keep[m] is None else (h[m] * keep[m][:, :, None]).sum(1) / keep[m].sum(1, keepdim=True)
            for m in range(model.k)
        ]
        cos = torch.stack([F.cosine_similarity(pooled[i], pooled[j], dim=-1).mean() for i, j in self.pairs])
        variance = torch.stack(
            [model.paths[p].attention_weights(h[j], h[i], keep[i]).var() for p, (i, j) in enumerate(self.pairs)]
        )
        everything = torch.ones(len(self.pairs), dtype=torch.bool)
        self.prior.statistics.update_cosine(cos.cpu(), everything)
        self.prior.statistics.update_attention(variance.cpu(), everything)


def train_supernet(
    data: MultimodalData,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a supernet and its relation-graph prior on ``data``; returns both and the history."""
    torch.manual_seed(train_cfg.seed)
    g = torch.Generator().manual_seed(train_cfg.seed)
    device = torch.device(train_cfg.device)
    model = _build_model(data, model_cfg, train_cfg)
    prior = RelationGraphPrior(model.k)
    stats = _Statistics(model, prior)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    prior_optimizer = torch.optim.Adam(prior.parameters(), lr=train_cfg.prior_lr)
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
            features, lengths, labels = _to(device, features, lengths, labels)
            # 1. train subnets on this batch (masks uniform in warm-up, else from the prior)
            n = len(labels) if train_cfg.per_sample_masks else train_cfg.masks_per_step
            if warmup:
                masks = uniform_masks(n, P, g)
            else:
                with torch.no_grad():
                    masks = prior.sample(n, g)
            optimizer.zero_grad(set_to_none=True)
            loss = _subnet_step(model, features, lengths, labels, masks, data.task, train_cfg)
            if not math.isfinite(loss):
                raise _diverged(f"the training loss ({loss})", epoch + 1, train_cfg, data)
            if not _finite_gradients(model):
                raise _diverged("a gradient", epoch + 1, train_cfg, data)
            loss_sum += loss * len(labels)
            stats.gradients(masks.amax(dim=0).bool())
            optimizer.step()
            seen += len(labels)
            # 2. every rank_every steps: refine the prior with the rank loss on this batch
            if step % train_cfg.rank_every == 0:
                value = _refine_prior(model, prior, prior_optimizer, stats, features, lengths, labels, data.task, train_cfg, g, warmup)
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


def _subnet_step(model, features, lengths, labels, masks, task, cfg: TrainConfig) -> float:
    """Backpropagate the loss of the subnets ``masks`` selects on one batch; returns their mean
    task loss.

    ``per_sample_masks``: mask ``b`` applies to sample ``b`` only. Every path runs once on the
    batch and each sample averages its own active paths (exactly ``forward`` per sample, since a
    path's output does not depend on the mask): many subnets per step for the cost of one full
    pass. Otherwise each mask is one subnet trained on the whole batch.

    ``distill`` > 0 (in-place distillation, BigNAS): the full supernet is trained on the labels
    too, and each subnet's loss is ``(1 - distill) * task loss + distill * the distance to the
    full supernet's detached output`` (KL divergence of the softmax for classification, the task
    loss against it for regression).
    """
    if cfg.per_sample_masks:
        pooled = model.pooled_paths(features, lengths)  # (B, P, C): every path once
        outputs = model.forward_per_sample(pooled, masks)[None]  # (1, B, out)
        full = model.head(pooled.mean(dim=1)) if cfg.distill > 0 else None
    elif cfg.distill == 0:
        total = 0.0
        for mask in masks:  # one backward per subnet: only one subnet's activations held at a time
            loss = task_loss(model(features, mask, lengths), labels, task) / len(masks)
            loss.backward()
            total += float(loss.detach())
        return total
    else:
        outputs = torch.stack([model(features, mask, lengths) for mask in masks])  # (M, B, out)
        full = model(features, torch.ones(masks.shape[1]), lengths)
    loss = task_loss(outputs, labels, task).mean()
    subnet_loss = float(loss.detach())
    if full is not None:
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
        loss = (1 - cfg.distill) * loss + cfg.distill * soft + task_loss(full, labels, task)
    loss.backward()
    return subnet_loss


def _refine_prior(model, prior, optimizer, stats, features, lengths, labels, task, cfg: TrainConfig, g, warmup) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pooled = model.pooled_paths(features, lengths)  # (B, P, C): every path, once
        stats.embeddings_and_attention(features, lengths)
        # rank masks: uniform in warm-up, else half from the prior and half uniform, so the prior
        # also sees subnets it currently dislikes
        n_prior = 0 if warmup else cfg.rank_masks // 2
        masks = torch.cat([prior.sample(n_prior, g), uniform_masks(cfg.rank_masks - n_prior, model.num_paths, g)])
        losses = task_loss(model.forward_from_pooled(pooled, masks.to(pooled.device)), labels, task).cpu()
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
    device = torch.device(train_cfg.device)
    model = _build_model(data, model_cfg, train_cfg)
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
