"""The sampler's proposal prior (``[search] prior``, search_service.proposal_prior): where the keep
probabilities a study is created with come from, and the scaling of single-path scores."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from search_service.cli import main
from search_service.evaluator import Evaluator
from search_service.keys import PRIOR_KEY, PRIOR_SOURCE_KEY
from search_service.proposal_prior import HIGH, LOW, PROPOSAL_PRIORS, proposal_prior, scaled
from search_service.study_file import load_study

from .conftest import one_error, run_cli


def test_scaled_puts_the_best_path_high_and_the_worst_low():
    assert scaled([0.5, 0.9, 0.7]) == pytest.approx([LOW, HIGH, 0.5])
    assert scaled([0.5, 0.9, 0.7], maximize=False) == pytest.approx([HIGH, LOW, 0.5])  # e.g. an error metric
    assert scaled([0.6, 0.6, 0.6]) == [0.5, 0.5, 0.5]  # nothing to tell the paths apart: flat
    assert scaled([0.6, float("nan"), 0.7]) == [0.5, 0.5, 0.5]  # an undefined score: flat, never NaN


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=30))
def test_scaled_keeps_every_probability_inside_and_the_order_of_the_scores(scores):
    q = scaled(scores)
    assert len(q) == len(scores) and all(LOW - 1e-12 <= p <= HIGH + 1e-12 and math.isfinite(p) for p in q)
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    assert all(q[i] <= q[j] + 1e-12 for i, j in zip(order, order[1:]))  # monotone in the score


def test_each_source_of_the_prior(tiny):
    evaluator = Evaluator(load_study(str(tiny.file)))
    P = evaluator.model.num_paths
    mrg = proposal_prior("mrg", evaluator, "valid")
    assert mrg == pytest.approx([float(q) for q in evaluator.checkpoint.prior.path_probs().detach()])
    assert proposal_prior("flat", evaluator, "valid") == [0.5] * P
    single = [float(x) for x in evaluator.score(torch.eye(P))]
    q = proposal_prior("single_path", evaluator, "valid")
    assert q == pytest.approx(scaled(single))
    assert q[max(range(P), key=single.__getitem__)] == pytest.approx(HIGH) or len(set(single)) == 1
    with pytest.raises(ValueError, match="one of single_path, mrg, flat"):
        proposal_prior("learned", evaluator, "valid")


@pytest.mark.parametrize("source", ["mrg", "flat"])
def test_a_study_is_created_with_the_prior_its_file_names(tiny, tmp_path, source, capsys):
    file = tiny.variant(tmp_path, f"{source}.toml", prior=source)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["run", "--study", str(file), "--storage", url, "--artifacts", str(tmp_path / "a"), "--trials", "3",
                 "--no-report", "-q"]) == 0
    study = optuna.load_study(study_name="tiny", storage=url)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert attrs[PRIOR_SOURCE_KEY] == source
    expected = proposal_prior(source, Evaluator(load_study(str(file))), "valid")
    assert attrs[PRIOR_KEY] == pytest.approx(expected)
    capsys.readouterr()
    assert main(["report", "--study", str(file), "--storage", url, "-o", str(tmp_path / "r.html"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["proposal_prior"] == source  # the report says what the sampler proposed from
    assert PROPOSAL_PRIORS[source] in (tmp_path / "r.html").read_text()


def test_an_unknown_prior_is_a_one_line_error(tiny, tmp_path):
    file = tiny.variant(tmp_path, "bad.toml", prior="learned")
    result = run_cli(["run", "--study", str(file), "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--trials", "2"], cwd=tmp_path)
    one_error(result, "prior", "single_path")
    assert not (tmp_path / "x.db").exists() or optuna.get_all_study_names(f"sqlite:///{tmp_path / 'x.db'}") == []
