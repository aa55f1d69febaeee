"""supernet.metrics: hand-computed values for every metric, then batch_metric == compute_metrics."""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch

from supernet.metrics import (
    METRICS,
    batch_metric,
    compute_metrics,
    default_metric,
    metric_names,
)

M, N = 5, 50  # models and samples of the random cases
SEEDS = range(30)


def _reg(pred: list[float], truth: list[float]) -> dict[str, float]:
    return compute_metrics(np.array(pred), np.array(truth), "regression")


def _cls(pred: np.ndarray | list[int], truth: list[int]) -> dict[str, float]:
    return compute_metrics(np.asarray(pred), np.array(truth), "classification")


# ---------------------------------------------------------------- the table


def test_metric_table() -> None:
    assert metric_names("regression") == [
        "mae", "corr", "acc_7", "acc_5", "acc_2_has0", "f1_has0", "acc_2_non0", "f1_non0",
    ]  # fmt: skip
    assert metric_names("classification") == ["accuracy", "f1_weighted", "f1_macro"]
    assert set(METRICS) == set(metric_names("regression")) | set(metric_names("classification"))
    assert default_metric("regression") == "acc_7"
    assert default_metric("classification") == "accuracy"
    assert [n for n, i in METRICS.items() if i.direction == "minimize"] == ["mae"]
    assert all(i.direction in ("maximize", "minimize") and i.description for i in METRICS.values())


def test_compute_metrics_returns_every_metric_as_float() -> None:
    for task, pred, truth in [
        ("regression", np.array([0.1, -1.0]), np.array([0.0, -2.0])),
        ("classification", np.array([0, 1]), np.array([1, 1])),
    ]:
        out = compute_metrics(pred, truth, task)
        assert list(out) == metric_names(task)
        assert all(type(v) is float for v in out.values())


# ---------------------------------------------------------------- hand-computed: regression


def test_torch_round_is_half_to_even_like_numpy() -> None:
    halves = [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5]
    expected = [-4.0, -2.0, -2.0, -0.0, 0.0, 2.0, 2.0, 4.0]
    assert torch.round(torch.tensor(halves, dtype=torch.float64)).tolist() == expected
    assert np.round(halves).tolist() == expected


def test_acc_7_and_acc_5_round_half_to_even_and_clip() -> None:
    pred = [2.5, -0.5, 3.7, 1.5, 3.7]
    truth = [2.0, 0.0, 3.0, 2.0, 2.2]
    out = _reg(pred, truth)
    # acc_7, clip to [-3, 3] then round: pred -> [2, -0, 3, 2, 3], truth -> [2, 0, 3, 2, 2]
    # (2.5 -> 2 and 1.5 -> 2 half to even, -0.5 -> -0 == 0, 3.7 -> 3 clipped); 4 of 5 equal.
    assert out["acc_7"] == pytest.approx(4 / 5)
    # acc_5, clip to [-2, 2]: pred -> [2, -0.5, 2, 1.5, 2] -> [2, -0, 2, 2, 2],
    # truth -> [2, 0, 2, 2, 2]; 5 of 5 equal.
    assert out["acc_5"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("pred", "truth"),
    [(2.5, 3.0), (-0.5, -1.0), (0.5, 1.0), (-2.5, -3.0)],  # half-up / away-from-zero would match
)
def test_acc_7_halves_go_to_even(pred: float, truth: float) -> None:
    assert _reg([pred], [truth])["acc_7"] == 0.0
    assert batch_metric(torch.tensor([[pred]]), torch.tensor([truth]), "acc_7").item() == 0.0


def test_has0_and_non0_differ_when_a_truth_is_zero() -> None:
    pred = [-0.2, 0.5, 0.3, 0.0]
    truth = [0.0, 1.0, -1.0, 2.0]
    out = _reg(pred, truth)
    # has0: truth >= 0 -> [T, T, F, T], pred >= 0 -> [F, T, T, T]; equal at 1 and 3: 2/4.
    assert out["acc_2_has0"] == pytest.approx(0.5)
    # F1(T): TP 2, FP 1 (idx 2), FN 1 (idx 0) -> 2*2 / (2*2 + 1 + 1) = 2/3, support 3;
    # F1(F): TP 0 -> 0, support 1. Weighted: (3 * 2/3 + 1 * 0) / 4 = 0.5.
    assert out["f1_has0"] == pytest.approx(0.5)
    # non0 drops idx 0: truth > 0 -> [T, F, T], pred > 0 -> [T, T, F]; equal at 1 of 3.
    assert out["acc_2_non0"] == pytest.approx(1 / 3)
    # F1(T): TP 1, FP 1, FN 1 -> 2 / 4 = 0.5, support 2; F1(F): 0, support 1.
    # Weighted: (2 * 0.5 + 1 * 0) / 3 = 1/3.
    assert out["f1_non0"] == pytest.approx(1 / 3)


def test_non0_is_nan_when_every_truth_is_zero() -> None:
    out = _reg([0.3, -0.2], [0.0, 0.0])
    assert math.isnan(out["acc_2_non0"]) and math.isnan(out["f1_non0"])
    assert out["acc_2_has0"] == pytest.approx(0.5)  # [T, T] vs [T, F]
    for name in ("acc_2_non0", "f1_non0"):
        got = batch_metric(torch.tensor([[0.3, -0.2]] * 2), torch.zeros(2), name)
        assert got.shape == (2,) and bool(got.isnan().all())


def test_mae() -> None:
    # |1 - 0| + |-1 - 1| + |0.5 - 0.5| = 1 + 2 + 0 = 3, over 3 samples -> 1.0
    assert _reg([1.0, -1.0, 0.5], [0.0, 1.0, 0.5])["mae"] == pytest.approx(1.0)


def test_corr() -> None:
    # pred [1, 2, 3], truth [2, 4, 7]: means 2 and 13/3; centered dx = [-1, 0, 1],
    # dy = [-7/3, -1/3, 8/3]; sum dx*dy = 7/3 + 8/3 = 5; sum dx^2 = 2; sum dy^2 = 114/9.
    # r = 5 / sqrt(2 * 114/9) = 15 / sqrt(228)
    assert _reg([1.0, 2.0, 3.0], [2.0, 4.0, 7.0])["corr"] == pytest.approx(15 / math.sqrt(228))
    assert _reg([3.0, 2.0, 1.0], [1.0, 2.0, 3.0])["corr"] == pytest.approx(-1.0)


def test_corr_of_a_constant_is_zero_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _reg([0.7, 0.7, 0.7], [1.0, 2.0, 3.0])["corr"] == 0.0
        assert _reg([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])["corr"] == 0.0
        assert _reg([1.0], [2.0])["corr"] == 0.0
    got = batch_metric(
        torch.tensor([[0.7, 0.7, 0.7], [1.0, 2.0, 3.0]]), torch.tensor([1.0, 2, 3]), "corr"
    )
    assert got.tolist() == pytest.approx([0.0, 1.0])


def test_regression_accepts_column_vectors_tensors_and_float32() -> None:
    pred, truth = [2.5, -0.5, 3.7, 1.5, 3.7], [2.0, 0.0, 3.0, 2.0, 2.2]
    reference = _reg(pred, truth)
    as_columns = compute_metrics(
        torch.tensor(pred, dtype=torch.float32, requires_grad=True).reshape(-1, 1),
        torch.tensor(truth, dtype=torch.float32).reshape(-1, 1),
        "regression",
    )
    assert as_columns["acc_7"] == reference["acc_7"]
    assert as_columns["mae"] == pytest.approx(reference["mae"], abs=1e-6)


# ---------------------------------------------------------------- hand-computed: classification


def test_weighted_and_macro_f1_on_imbalanced_classes() -> None:
    truth = [0, 0, 0, 0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    # class 0: TP 5 (idx 0-4), FP 3 (idx 7, 8, 9), FN 1 (idx 5) -> 10 / 14 = 5/7, support 6
    # class 1: TP 1 (idx 6), FP 1 (idx 5), FN 1 (idx 7) -> 2 / 4 = 1/2, support 2
    # class 2: never predicted, TP 0 -> 0, support 2
    expected = {
        "accuracy": 6 / 10,  # idx 0-4 and 6
        "f1_weighted": (6 * 5 / 7 + 2 * 1 / 2 + 2 * 0) / 10,  # = 37/70
        "f1_macro": (5 / 7 + 1 / 2 + 0) / 3,  # = 17/42
    }
    assert _cls(pred, truth) == pytest.approx(expected)
    logits = np.eye(3)[pred] + 0.1  # (N, C), argmax == pred
    assert _cls(logits, truth) == pytest.approx(expected)
    batch = torch.tensor(logits).unsqueeze(0)  # (1, N, C)
    for name, value in expected.items():
        assert batch_metric(batch, torch.tensor(truth), name).item() == pytest.approx(value)


def test_f1_averages_over_labels_in_truth_or_prediction_only() -> None:
    truth = [0, 0, 1]
    logits = np.eye(4)[[0, 2, 1]]  # predicts 0, 2, 1; class 3 is in neither, so not averaged
    # class 0: TP 1, FN 1 -> 2/3 (support 2); class 1: TP 1 -> 1 (support 1);
    # class 2: FP 1 -> 0 (support 0, zero_division=0 never needed: 2TP + FP + FN = 1).
    expected = {
        "accuracy": 2 / 3,
        "f1_weighted": (2 * 2 / 3 + 1 * 1 + 0 * 0) / 3,  # = 7/9
        "f1_macro": (2 / 3 + 1 + 0) / 3,  # = 5/9, over {0, 1, 2}
    }
    assert _cls(logits, truth) == pytest.approx(expected)
    for name, value in expected.items():
        got = batch_metric(torch.tensor(logits).unsqueeze(0), torch.tensor(truth), name)
        assert got.item() == pytest.approx(value)


# ---------------------------------------------------------------- batch_metric == compute_metrics


def _regression_case(rng: np.random.Generator, variant: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, N) predictions and (N,) truths; variants stress ties at .5, zeros and constants."""
    halves = np.arange(-4.0, 4.01, 0.5)  # clipping and half-to-even ties of acc_7 / acc_5
    thirds = np.round(np.arange(-3.0, 3.01, 1 / 3), 6)  # MOSEI-like averaged annotations
    pred = rng.normal(0.0, 1.7, size=(M, N))
    truth = rng.choice(thirds, size=N)
    if variant % 4 == 1:
        pred = rng.choice(halves, size=(M, N))
        truth = rng.choice(halves, size=N)
    elif variant % 4 == 2:
        pred[0] = 0.25  # constant model: corr 0.0
        pred[1] = rng.choice([-0.5, 0.0, 0.5], size=N)
        truth[rng.random(N) < 0.5] = 0.0  # many zero truths: has0 != non0
    elif variant % 4 == 3:
        truth = np.abs(truth)  # one sign only after dropping zeros
        pred[2] = np.abs(pred[2])  # a model that never predicts negative
    return pred, truth


def _classification_case(rng: np.random.Generator, variant: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, N, C) logits and (N,) class ids; some classes absent from truth or predictions."""
    c = 5
    logits = rng.normal(size=(M, N, c))
    truth = rng.choice([0, 1, 1, 2, 2, 2], size=N)  # imbalanced; classes 3, 4 never true
    if variant % 4 == 1:
        logits = rng.integers(0, 3, size=(M, N, c)).astype(np.float64)  # argmax ties
    elif variant % 4 == 2:
        logits[0, :, 4] += 10.0  # model 0 always predicts 4, a class absent from truth
        logits[1, :, :3] -= 10.0  # model 1 predicts only 3 and 4: no true positive at all
    elif variant % 4 == 3:
        truth[:] = 1  # one true class
    return logits, truth


@functools.cache
def _random_case(task: str, seed: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, float]]]:
    rng = np.random.default_rng(seed)
    case = _regression_case if task == "regression" else _classification_case
    pred, truth = case(rng, seed)
    return pred, truth, [compute_metrics(p, truth, task) for p in pred]


@pytest.mark.parametrize("name", list(METRICS))
def test_batch_metric_equals_compute_metrics(name: str) -> None:
    task = METRICS[name].task
    for seed in SEEDS:
        pred, truth, reference = _random_case(task, seed)
        expected = np.array([r[name] for r in reference])
        got = batch_metric(torch.from_numpy(pred), torch.from_numpy(truth), name)
        assert got.dtype == torch.float64 and got.shape == (M,)
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-9, err_msg=f"seed {seed}")


@pytest.mark.parametrize("name", metric_names("classification"))
def test_batch_metric_accepts_class_ids(name: str) -> None:
    pred, truth, reference = _random_case("classification", 2)
    ids = torch.from_numpy(pred).argmax(dim=2)  # (M, N) int64
    got = batch_metric(ids, torch.from_numpy(truth), name)
    np.testing.assert_allclose(got.numpy(), [r[name] for r in reference], rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", metric_names("regression"))
def test_batch_metric_accepts_float32_column_predictions(name: str) -> None:
    pred, truth, _ = _random_case("regression", 1)
    pred32 = torch.from_numpy(pred).float().unsqueeze(-1)  # (M, N, 1)
    truth32 = torch.from_numpy(truth).float()
    expected = [compute_metrics(p, truth32, "regression")[name] for p in pred32]
    got = batch_metric(pred32, truth32.unsqueeze(-1), name)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-9)


# ---------------------------------------------------------------- argument errors


def test_unknown_task_or_metric() -> None:
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        compute_metrics(np.zeros(3), np.zeros(3), "ranking")
    with pytest.raises(ValueError, match="unknown task"):
        metric_names("ranking")
    with pytest.raises(ValueError, match="unknown task"):
        default_metric("ranking")
    with pytest.raises(ValueError, match="unknown metric 'acc7'"):
        batch_metric(torch.zeros(2, 3), torch.zeros(3), "acc7")


def test_length_mismatch() -> None:
    with pytest.raises(ValueError, match="predictions have 3 samples but labels have 4"):
        compute_metrics(np.zeros(3), np.zeros(4), "regression")
    with pytest.raises(ValueError, match="predictions have 3 samples but labels have 4"):
        compute_metrics(np.zeros((3, 2)), np.zeros(4, dtype=int), "classification")
    with pytest.raises(ValueError, match="predictions have 3 samples but labels have 4"):
        batch_metric(torch.zeros(2, 3), torch.zeros(4), "mae")
    with pytest.raises(ValueError, match="predictions have 3 samples but labels have 4"):
        batch_metric(torch.zeros(2, 3, 5), torch.zeros(4, dtype=torch.long), "f1_macro")
    with pytest.raises(ValueError, match="empty"):
        compute_metrics(np.zeros(0), np.zeros(0), "regression")


def test_bad_shapes_and_labels() -> None:
    with pytest.raises(ValueError, match=r"shape \(N,\) or \(N, 1\)"):
        compute_metrics(np.zeros((3, 2)), np.zeros(3), "regression")
    with pytest.raises(ValueError, match=r"\(M, N\) or \(M, N, 1\)"):
        batch_metric(torch.zeros(3), torch.zeros(3), "mae")
    with pytest.raises(ValueError, match=r"logits \(M, N, C\)"):
        batch_metric(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), "accuracy")
    with pytest.raises(ValueError, match="non-negative integer class ids"):
        compute_metrics(np.zeros((2, 3)), np.array([0.5, 1.0]), "classification")
    with pytest.raises(ValueError, match="non-negative integer class ids"):
        batch_metric(torch.zeros(1, 2, 3), torch.tensor([-1, 0]), "f1_weighted")
