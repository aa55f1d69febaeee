"""Evaluation metrics, one spelling per name, computed two ways that agree to 1e-9.

Regression (CMU-MOSI / CMU-MOSEI sentiment in [-3, 3]) follows MMSA
(thuiar/MMSA, ``src/MMSA/utils/metricsTop.py``, ``MetricsTop.__eval_mosei_regression``):

- ``mae``, ``corr``: mean absolute error and Pearson correlation on the raw predictions.
- ``acc_7`` / ``acc_5``: clip prediction and truth to [-3, 3] / [-2, 2], round to the nearest
  integer (numpy and torch both round half to even: 2.5 -> 2, -0.5 -> -0), compare.
- ``acc_2_has0`` / ``f1_has0``: truth >= 0 versus prediction >= 0 over all samples.
- ``acc_2_non0`` / ``f1_non0``: drop the samples whose truth is exactly 0, then truth > 0 versus
  prediction > 0. If every truth is 0 both are ``nan`` (there is nothing left to score).

Classification: ``accuracy``, ``f1_weighted`` and ``f1_macro`` on class ids (the argmax of logits).

Every F1 is scikit-learn's ``f1_score`` with ``zero_division=0``: per-class F1 over the labels
present in ``y_true ∪ y_pred``, averaged by true support ("weighted") or equally ("macro").
Accuracies are fractions in [0, 1], not percentages.

``compute_metrics`` scores one model with scikit-learn and SciPy; it is the reference.
``batch_metric`` scores one metric for M models at once in torch (the search scores thousands of
masks per second, where a scikit-learn call per mask is too slow) and must agree with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

# scikit-learn and SciPy are imported where a metric is computed: a second of start-up that
# commands which only read a study file (validate, or one that fails on bad input) never need

TASKS = ("regression", "classification")


@dataclass(frozen=True)
class MetricInfo:
    task: Literal["regression", "classification"]
    direction: Literal["maximize", "minimize"]
    description: str


METRICS: dict[str, MetricInfo] = {
    "mae": MetricInfo("regression", "minimize", "mean absolute error of the raw predictions"),
    "corr": MetricInfo("regression", "maximize", "Pearson correlation of predictions and truth"),
    "acc_7": MetricInfo("regression", "maximize", "7-class accuracy: clip to [-3, 3], round"),
    "acc_5": MetricInfo("regression", "maximize", "5-class accuracy: clip to [-2, 2], round"),
    "acc_2_has0": MetricInfo("regression", "maximize", "binary accuracy, >= 0 vs < 0, all samples"),
    "f1_has0": MetricInfo("regression", "maximize", "weighted F1, >= 0 vs < 0, all samples"),
    "acc_2_non0": MetricInfo("regression", "maximize", "binary accuracy, > 0 vs < 0, truth != 0"),
    "f1_non0": MetricInfo("regression", "maximize", "weighted F1, > 0 vs < 0, truth != 0"),
    "accuracy": MetricInfo("classification", "maximize", "fraction of correct class ids"),
    "f1_weighted": MetricInfo("classification", "maximize", "per-class F1 weighted by support"),
    "f1_macro": MetricInfo("classification", "maximize", "unweighted mean of per-class F1"),
}

_DEFAULT_METRIC = {"regression": "acc_7", "classification": "accuracy"}
_ROUNDED_ACC_BOUND = {"acc_7": 3.0, "acc_5": 2.0}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")


def metric_names(task: str) -> list[str]:
    """The metrics of ``task``, in table order."""
    _check_task(task)
    return [name for name, info in METRICS.items() if info.task == task]


def default_metric(task: str) -> str:
    """The metric a study optimizes unless it names another: acc_7 or accuracy."""
    _check_task(task)
    return _DEFAULT_METRIC[task]


# ---------------------------------------------------------------- reference: scikit-learn, SciPy


def _to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _column(x: np.ndarray, what: str) -> np.ndarray:
    """(N,) or (N, 1) -> (N,)."""
    if x.ndim == 2 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"{what} must have shape (N,) or (N, 1), got {tuple(x.shape)}")
    return x


def _class_ids(x: np.ndarray, what: str) -> np.ndarray:
    if x.size and (not np.all(np.isfinite(x)) or np.any(x != np.round(x)) or np.any(x < 0)):
        raise ValueError(f"{what} must be non-negative integer class ids")
    return x.astype(np.int64)


def _check_lengths(n_pred: int, n_true: int) -> None:
    if n_pred != n_true:
        raise ValueError(f"predictions have {n_pred} samples but labels have {n_true}")
    if n_true == 0:
        raise ValueError("predictions and labels are empty: need at least one sample")


def _f1(truth: np.ndarray, pred: np.ndarray, average: str) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, average=average, zero_division=0))


def _pearson(pred: np.ndarray, truth: np.ndarray) -> float:
    # The correlation of a constant vector is undefined (SciPy warns and returns nan); a model
    # that predicts one value carries no ranking signal, so it scores 0.0, which keeps the
    # objective finite for the search. Fewer than two samples likewise give 0.0.
    if len(pred) < 2 or np.all(pred == pred[0]) or np.all(truth == truth[0]):
        return 0.0
    from scipy.stats import pearsonr

    return float(pearsonr(pred, truth).statistic)


def _regression_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, mean_absolute_error

    out = {"mae": float(mean_absolute_error(truth, pred)), "corr": _pearson(pred, truth)}
    for name, bound in _ROUNDED_ACC_BOUND.items():
        p = np.round(np.clip(pred, -bound, bound)).astype(np.int64)
        t = np.round(np.clip(truth, -bound, bound)).astype(np.int64)
        out[name] = float(accuracy_score(t, p))
    out["acc_2_has0"] = float(accuracy_score(truth >= 0, pred >= 0))
    out["f1_has0"] = _f1(truth >= 0, pred >= 0, "weighted")
    keep = truth != 0
    if keep.any():
        out["acc_2_non0"] = float(accuracy_score(truth[keep] > 0, pred[keep] > 0))
        out["f1_non0"] = _f1(truth[keep] > 0, pred[keep] > 0, "weighted")
    else:  # every truth is 0: nothing to score
        out["acc_2_non0"] = out["f1_non0"] = math.nan
    return {name: out[name] for name in metric_names("regression")}


def _classification_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score

    return {
        "accuracy": float(accuracy_score(truth, pred)),
        "f1_weighted": _f1(truth, pred, "weighted"),
        "f1_macro": _f1(truth, pred, "macro"),
    }


def compute_metrics(
    predictions: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    task: str,
) -> dict[str, float]:
    """Every metric of ``task`` for one model, with scikit-learn and SciPy.

    Regression: predictions and labels (N,) or (N, 1). Classification: predictions are logits
    (N, C) (scored by their argmax) or class ids (N,); labels are class ids (N,).
    """
    _check_task(task)
    pred, truth = _to_numpy(predictions), _column(_to_numpy(labels), "labels")
    if task == "regression":
        pred = _column(pred, "regression predictions").astype(np.float64)
        _check_lengths(len(pred), len(truth))
        return _regression_metrics(pred, truth.astype(np.float64))
    if pred.ndim == 2:
        pred = np.argmax(pred, axis=1)
    elif pred.ndim != 1:
        raise ValueError(
            f"classification predictions must be logits (N, C) or class ids (N,), "
            f"got shape {tuple(pred.shape)}"
        )
    _check_lengths(len(pred), len(truth))
    return _classification_metrics(
        _class_ids(pred, "class predictions"), _class_ids(truth, "classification labels")
    )


# ---------------------------------------------------------------- many models at once: torch


def _batch_accuracy(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """pred (M, N), truth (N,) -> (M,) fraction equal."""
    return (pred == truth).to(torch.float64).mean(dim=1)


def _batch_f1(pred: torch.Tensor, truth: torch.Tensor, average: str) -> torch.Tensor:
    """scikit-learn's f1_score(truth, pred[m], average=..., zero_division=0) for every m.

    pred (M, N) int64, truth (N,) int64 -> (M,). Per class c: F1 = 2 TP / (2 TP + FP + FN)
    = 2 TP / (#predicted c + #true c), 0 where both counts are 0; the classes averaged over are
    those predicted or true (y_true ∪ y_pred), weighted by true support or equally.
    """
    m, n = pred.shape
    k = int(truth.max()) + 1
    if pred.numel():
        k = max(k, int(pred.max()) + 1)
    ones = torch.ones_like(pred, dtype=torch.float64)
    pred_count = torch.zeros(m, k, dtype=torch.float64, device=pred.device)
    pred_count.scatter_add_(1, pred, ones)  # (M, K)
    true_count = torch.bincount(truth, minlength=k).to(torch.float64)  # (K,)
    tp = torch.zeros(m, k, dtype=torch.float64, device=pred.device)
    tp.scatter_add_(1, truth.expand(m, n), (pred == truth).to(torch.float64))  # (M, K)
    denom = pred_count + true_count  # (M, K)
    present = denom > 0
    f1 = torch.where(present, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    if average == "weighted":
        return (f1 * true_count).sum(dim=1) / n
    return f1.sum(dim=1) / present.sum(dim=1)


def _batch_pearson(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Pearson r of every row of pred (M, N) with truth (N,) via centered sums; 0.0 where a side
    is constant or N < 2 (see ``_pearson``)."""
    m, n = pred.shape
    if n < 2 or bool((truth == truth[0]).all()):
        return torch.zeros(m, dtype=torch.float64, device=pred.device)
    xm = pred - pred.mean(dim=1, keepdim=True)  # (M, N)
    ym = truth - truth.mean()  # (N,)
    r = (xm @ ym) / torch.sqrt((xm * xm).sum(dim=1) * (ym @ ym))
    constant = (pred == pred[:, :1]).all(dim=1)
    return torch.where(constant, torch.zeros_like(r), r.clamp(-1.0, 1.0))


def _batch_regression(pred: torch.Tensor, truth: torch.Tensor, name: str) -> torch.Tensor:
    if name == "mae":
        return (pred - truth).abs().mean(dim=1)
    if name == "corr":
        return _batch_pearson(pred, truth)
    if name in _ROUNDED_ACC_BOUND:
        bound = _ROUNDED_ACC_BOUND[name]
        # torch.round, like numpy, rounds half to even.
        return _batch_accuracy(
            torch.round(pred.clamp(-bound, bound)), torch.round(truth.clamp(-bound, bound))
        )
    if name.endswith("_has0"):
        binary_pred, binary_truth = (pred >= 0).long(), (truth >= 0).long()
    else:  # _non0
        keep = truth != 0
        if not bool(keep.any()):  # every truth is 0: nothing to score
            return torch.full((pred.shape[0],), math.nan, dtype=torch.float64, device=pred.device)
        binary_pred, binary_truth = (pred[:, keep] > 0).long(), (truth[keep] > 0).long()
    if name.startswith("acc_2"):
        return _batch_accuracy(binary_pred, binary_truth)
    return _batch_f1(binary_pred, binary_truth, "weighted")


def _batch_classification(pred: torch.Tensor, truth: torch.Tensor, name: str) -> torch.Tensor:
    if name == "accuracy":
        return _batch_accuracy(pred, truth)
    return _batch_f1(pred, truth, name.removeprefix("f1_"))


def _batch_class_ids(predictions: torch.Tensor) -> torch.Tensor:
    if predictions.ndim == 3:
        return predictions.argmax(dim=2)  # (M, N); the first maximum on ties, as np.argmax
    if predictions.ndim == 2 and not predictions.is_floating_point():
        ids = predictions.long()
        if bool((ids < 0).any()):
            raise ValueError("class predictions must be non-negative integer class ids")
        return ids
    raise ValueError(
        "classification predictions must be logits (M, N, C) or integer class ids (M, N), "
        f"got shape {tuple(predictions.shape)} of dtype {predictions.dtype}"
    )


def _batch_labels(labels: torch.Tensor, task: str) -> torch.Tensor:
    truth = torch.as_tensor(labels)
    if truth.ndim == 2 and truth.shape[1] == 1:
        truth = truth[:, 0]
    if truth.ndim != 1:
        raise ValueError(f"labels must have shape (N,) or (N, 1), got {tuple(truth.shape)}")
    if task == "regression":
        return truth.to(torch.float64)
    ids = truth.long()
    if not bool((ids == truth).all()) or bool((ids < 0).any()):
        raise ValueError("classification labels must be non-negative integer class ids")
    return ids


def batch_metric(predictions: torch.Tensor, labels: torch.Tensor, name: str) -> torch.Tensor:
    """One metric for M models at once, equal (to 1e-9) to ``compute_metrics(...)[name]``.

    predictions carry a leading model axis: logits (M, N, C) or class ids (M, N) for a
    classification metric, (M, N) or (M, N, 1) for a regression metric. labels (N,) or (N, 1).
    Returns (M,) float64 on the device of ``predictions``.
    """
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}: expected one of {', '.join(METRICS)}")
    task = METRICS[name].task
    truth = _batch_labels(labels, task).to(predictions.device)
    if task == "regression":
        pred = predictions
        if pred.ndim == 3 and pred.shape[2] == 1:
            pred = pred[:, :, 0]
        if pred.ndim != 2:
            raise ValueError(
                f"regression predictions must have shape (M, N) or (M, N, 1), "
                f"got {tuple(predictions.shape)}"
            )
        pred = pred.detach().to(torch.float64)
    else:
        pred = _batch_class_ids(predictions.detach())
    _check_lengths(pred.shape[1], truth.shape[0])
    if task == "regression":
        return _batch_regression(pred, truth, name)
    return _batch_classification(pred, truth, name)
