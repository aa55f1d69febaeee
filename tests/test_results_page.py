"""``benchmarks/figures.py`` and ``benchmarks/results_page.py``: the figures are drawn from the
benchmarks' JSON (not from hand-typed numbers), and the page shows a figure only where its SVG
exists and says "not run yet" for a result that does not. SVG export itself needs kaleido and a
Chrome, which CI machines lack; what is tested here is every number that goes into a figure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import figures  # noqa: E402
import results_page  # noqa: E402


def _fidelity(study: str) -> dict:
    per_seed = []
    for seed, tau in ((0, 0.5), (1, 0.7)):
        per_mask = [{"mask": f"{i:03b}", "paths": bin(i).count("1"), "supernet": 0.1 * i + seed / 100,
                     "standalone": 0.1 * i} for i in range(1, 8)]
        per_seed.append({"seed": seed, "kendall_tau": tau, "per_mask": per_mask})
    return {"settings": {"study": study, "quick": False}, "metric": "accuracy", "masks_per_seed": 7,
            "per_seed": per_seed, "summary": {"kendall_tau": {"mean": 0.6, "std": 0.1414}}}


def _planted() -> dict:
    summary = {str(k): {"seeds": 10, "needed": 9, "paths": k * (k - 1), "masks_in_space": 2 ** (k * (k - 1)) - 1,
                        "hits_within": {"10": k - 3, "20": 5, "40": 8, "60": 13 - k}} for k in (3, 4, 5)}
    return {"settings": {"quick": False}, "summary": summary}


def _tables(dataset: str) -> dict:
    def run(acc: float, mflops: float) -> dict:
        return {"test": {"accuracy": acc}, "mflops": mflops}

    rows = {"concat_mlp": {"per_seed": [run(0.5, 0.01), run(0.7, 0.01)]},
            "cmt": {"per_seed": [run(0.9, 3.0), run(0.8, 3.0)]},
            "full": {"per_seed": [run(0.95, 1.0), run(0.85, 2.0)]}}
    table4 = {"rows": {"l0": {"spearman_last": [-0.2, 0.2]}, "l1": {"spearman_last": [0.5, 0.6]},
                       "linf": {"spearman_last": [0.1, 0.3]}}}
    return {"settings": {"dataset": dataset, "seeds": [0, 1], "trials": 20, "quick": False},
            "metric": "accuracy", "table5": {"rows": rows}, "table4": table4}


def _write(folder: Path, stem: str, result: dict) -> None:
    path = folder / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result), encoding="utf-8")


def test_figures_plot_the_numbers_in_the_results(tmp_path):
    _write(tmp_path, "bench_fidelity_demo", _fidelity("demo"))
    _write(tmp_path, "bench_planted", _planted())
    _write(tmp_path, "bench_tables_planted", _tables("planted"))
    quick = _tables("mfeat")
    quick["settings"]["quick"] = True
    _write(tmp_path, "bench_tables_mfeat", quick)

    drawn, missing = figures.build(tmp_path)

    assert set(drawn) == {"fidelity_demo", "planted_hits", "table5_planted", "table4_planted"}
    assert any("bench_fidelity_mfeat.json" in m for m in missing)
    assert any("bench_tables_mfeat.json" in m and "--quick" in m for m in missing)

    fid = drawn["fidelity_demo"]
    seeds = [t for t in fid.data if t.name.startswith("seed")]
    assert [t.name for t in seeds] == ["seed 0: τ = 0.500", "seed 1: τ = 0.700"]
    assert list(seeds[1].x) == pytest.approx([0.1 * i + 0.01 for i in range(1, 8)])
    assert list(seeds[1].y) == pytest.approx([0.1 * i for i in range(1, 8)])

    hits = {t.name.split(" (")[0]: (list(t.x), list(t.y)) for t in drawn["planted_hits"].data}
    assert hits["k = 5"] == ([10, 20, 40, 60], [2, 5, 8, 8])

    t5 = {t.name: t for t in drawn["table5_planted"].data}
    full = t5["Full MRO"]
    assert full.y[0] == pytest.approx(0.9) and full.x[0] == pytest.approx(1.5)
    assert full.error_y.array[0] == pytest.approx(0.0707107, rel=1e-4)  # sample std of 0.95, 0.85
    assert set(t5) == {"Concat+MLP", "Pairwise CMT (all paths)", "Full MRO"}

    bars = drawn["table4_planted"].data[0]
    assert list(bars.x) == ["p = 0", "p = 1", "p = ∞"]
    assert list(bars.y) == pytest.approx([0.0, 0.55, 0.2])


def test_results_page_links_only_existing_figures_and_names_missing_results(tmp_path):
    results, figs = tmp_path / "results", tmp_path / "figures"
    results.mkdir()
    figs.mkdir()
    (results / "bench_planted.md").write_text("**bench_planted** table", encoding="utf-8")
    (results / "bench_fidelity_demo.md").write_text("**bench_fidelity** table", encoding="utf-8")
    (figs / "planted_hits.svg").write_text("<svg/>", encoding="utf-8")

    (results / "bench_planted.reading.md").write_text("**Reading** (run of today): it worked.", encoding="utf-8")
    (results / "bench_fidelity_mfeat_variants.reading.md").write_text("**Reading**: variants.", encoding="utf-8")

    page = results_page.build(results, figs, tmp_path)

    # the hand-written reading follows its result (and its figures), in its own section
    planted = page.index("## Planted structure")
    assert planted < page.index("**bench_planted** table") < page.index("planted_hits.svg") < page.index(
        "**Reading** (run of today): it worked.") < page.index("## The paper's Tables 5 and 4 on the planted data")
    variants = page.index("## Ranking fidelity on mfeat: supernet training variants")
    assert variants < page.index("**Reading**: variants.") < planted

    assert "**bench_planted** table" in page and "**bench_fidelity** table" in page
    assert "](figures/planted_hits.svg)" in page
    assert "fidelity_demo.svg" not in page  # its fragment exists but its figure was not drawn
    assert "*Not run yet: no `docs/results/bench_tables_mfeat.md`" in page
    for _title, _stem, command, _what in results_page.SECTIONS:
        assert f"```bash\n{command}\n```" in page


def test_fidelity_comparison_lists_the_baseline_and_every_variant(tmp_path):
    def run(tau: list[float], overrides: dict, ceiling: float | None = None) -> dict:
        result = _fidelity("mfeat")
        for row in result["per_seed"]:
            row["supernet_train_s"] = 60.0
        mean = sum(tau) / len(tau)
        summary = {k: {"mean": mean, "std": 0.01} for k in ("kendall_tau", "spearman_rho", "kendall_tau_loss", "top1_regret")}
        if ceiling is not None:
            summary["ceiling_tau"] = summary["ceiling_tau_loss"] = {"mean": ceiling, "std": float("nan")}
            summary["reliable_pairs_agreement"] = {"mean": 0.9, "std": float("nan")}
        result.update(summary=summary, machine={"date": "2026-11-28T11:00:00+00:00"})
        result["settings"]["train_overrides"] = overrides
        return result

    _write(tmp_path, "bench_fidelity_mfeat", run([0.3, 0.5], {}))
    _write(tmp_path, "bench_fidelity_mfeat_ps", run([0.6, 0.7], {"per_sample_masks": True}, ceiling=0.45))
    _write(tmp_path, "bench_fidelity_mfeat_x_quick", run([0.9, 0.9], {}))

    table = results_page.fidelity_comparison(tmp_path, "bench_fidelity_mfeat").splitlines()

    assert len(table) == 4  # header, rule, baseline, one variant (the quick run is left out)
    assert table[2].startswith("| `bench_fidelity_mfeat` | none (the study) | **0.400 ± 0.010** |")
    assert table[3].startswith("| `bench_fidelity_mfeat_ps` | per_sample_masks = true | **0.650 ± 0.010** |")
    assert "| 0.450 (0.450) | – | – | 0.900 |" in table[3] and "| – | – | – | – |" in table[2]
    assert results_page.fidelity_comparison(tmp_path, "bench_fidelity_demo") is None
