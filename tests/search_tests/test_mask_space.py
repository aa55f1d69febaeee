"""The space can run out: a budget above the number of masks (2**(k(k-1)) - 1) is not reached by
scoring masks twice. Workers stop when every mask is scored and say so once; racing workers
never complete one mask twice; the Pareto front lists each mask once (also in a study that holds
repeats from before); ``validate`` notes a budget above the mask space.

A k = 2 study has 3 masks, so it runs out after three trials."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.storages import RDBStorage
from optuna.trial import TrialState, create_trial

from search_service.sampler import BUDGET_KEY, MASK_KEY, MROSampler

PATHS_K2 = ["text->audio", "audio->text"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def notice(n_masks: int, budget: int) -> str:
    return f"mro-search: all {n_masks} masks scored; budget {budget} not reachable"


def k2_toml(name: str, run_dir: Path, **search: object) -> str:
    """A tiny synthetic study of two modalities: 2 paths, 3 masks, a 1-epoch supernet."""
    lines = [
        f'name = "{name}"',
        "",
        "[data]",
        'source = "synthetic"',
        'modalities = ["text", "audio"]',
        "dims = [9, 9]",
        "length = 4",
        "samples = [128, 64, 64]",
        'planted_paths = ["audio->text"]',
        'task = "classification"',
        "seed = 0",
        "",
        "[model]",
        "width = 16",
        "heads = 2",
        "ffn_mult = 2",
        "dropout = 0.0",
        "",
        "[train]",
        "epochs = 1",
        "warmup_epochs = 1",
        "batch_size = 64",
        "seed = 0",
        "",
        "[search]",
        'metric = "accuracy"',
        "trials = 3",
        "n_startup_trials = 1",
        f'run_dir = "{run_dir.as_posix()}"',
    ]
    lines += [f"{key} = {value!r}" for key, value in search.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tiny_k2(mro, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The k = 2 study file, its supernet trained once for this module."""
    root = tmp_path_factory.mktemp("tiny_k2")
    file = root / "tiny2.toml"
    file.write_text(k2_toml("tiny2", root / "run"), encoding="utf-8")
    result = mro.run(["train", "--study", str(file), "-q"], cwd=root, timeout=300)
    assert result.returncode == 0, f"mro-search train failed:\n{result.stdout}\n{result.stderr}"
    return file


def _masks(mro, study, paths) -> list[str]:
    return [mro.mask(t, paths) for t in mro.complete(study)]


def _assert_each_mask_once(masks: list[str], expected: int) -> None:
    assert len(masks) == expected, masks
    assert len(set(masks)) == expected, f"masks scored twice: {[m for m, n in Counter(masks).items() if n > 1]}"


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_budget_above_the_masks_stops_when_every_mask_is_scored(tiny_k2, mro, sqlite_url, tmp_path, workers):
    """``run --trials 5`` on a study with 3 masks: 3 trials complete, each a different mask; the
    workers stop and say so once (also with 2 local workers, who each say it), exit 0; the
    front lists each mask once."""
    result = mro.run(
        ["run", "--study", str(tiny_k2), "--storage", sqlite_url, "--trials", "5", "--workers", str(workers), "--no-report", "--json"],
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert result.stderr.count(notice(3, 5)) == 1, result.stderr
    study = mro.open_study(sqlite_url, "tiny2")
    _assert_each_mask_once(_masks(mro, study, PATHS_K2), 3)
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL))
    summary = json.loads(result.stdout)
    assert summary["counts"]["complete"] == 3
    front = [row["mask"] for row in summary["pareto_front"]]
    assert front and len(front) == len(set(front))


@pytest.mark.slow
def test_resume_beyond_the_masks_of_a_finished_study(tiny, mro, sqlite_url, tmp_path):
    """A 63-mask study finished at 60 trials, resumed with ``--trials 70``: the last 3 masks are
    scored, then the worker stops and says so (exit 0); resumed again, it starts no trial."""
    result = mro.run(["run", "--study", str(tiny.file), "--storage", sqlite_url, "--trials", "60", "--no-report", "-q"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "not reachable" not in result.stderr
    study = mro.open_study(sqlite_url)
    _assert_each_mask_once(_masks(mro, study, mro.paths), 60)

    result = mro.run(["resume", "--study", str(tiny.file), "--storage", sqlite_url, "--trials", "70", "-q"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert result.stderr.count(notice(63, 70)) == 1, result.stderr
    assert "63/70 trials complete" in result.stdout
    _assert_each_mask_once(_masks(mro, study, mro.paths), 63)
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state != TrialState.COMPLETE], Counter(t.state.name for t in trials)

    result = mro.run(["resume", "--study", str(tiny.file), "--storage", sqlite_url, "--trials", "70", "-q"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert result.stderr.count(notice(63, 70)) == 1, result.stderr
    assert len(study.get_trials(deepcopy=False)) == len(trials), "a trial was started with no mask left"


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_on_postgres_race_for_the_last_masks(tiny_k2, mro, pg_url, tmp_path):
    """Two worker processes on a 3-mask study with budget 5, both holding a trial before either
    goes on: they race for every mask, yet no mask completes twice, and each stops with the
    notice once and exit 0."""
    from search_service.study_file import load_study

    mro.create(tiny_k2, pg_url, trials=5)
    study = mro.open_study(pg_url, load_study(str(tiny_k2)).name)
    args = ["worker", "--study", str(tiny_k2), "--storage", pg_url]
    procs = [mro.start([*args, "--seed", str(seed)], cwd=tmp_path) for seed in (1, 2)]
    try:
        mro.line_up(study, procs)
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            mro.stop(p)
    mro.assert_clean_exits(procs, outputs)
    for _, err in outputs:
        assert err.count(notice(3, 5)) == 1, err
    _assert_each_mask_once(_masks(mro, study, PATHS_K2), 3)
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL))


@pytest.mark.postgres
def test_threads_racing_past_the_last_mask_never_share_one(pg_url):
    """Two samplers (threads, each with its own connection pool) ask at the same moment, 40
    times each, on 63 masks: every mask is completed once, and the trials that find none left
    are pruned with the reason, not given a repeat."""
    study = optuna.create_study(directions=["maximize", "minimize"], storage=RDBStorage(pg_url))
    study._storage.set_study_system_attr(study._study_id, BUDGET_KEY, 1000)
    paths = ["text->audio", "text->vision", "audio->text", "audio->vision", "vision->text", "vision->audio"]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    reasons: list[str] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        bits = [trial.suggest_categorical(p, (0, 1)) for p in paths]
        return float(sum(bits)), float(sum(bits))

    def worker(seed: int) -> None:
        try:
            sampler = MROSampler(paths=paths, n_startup_trials=100, seed=seed)
            mine = optuna.load_study(study_name=study.study_name, storage=RDBStorage(pg_url), sampler=sampler)
            for _ in range(40):
                barrier.wait(timeout=60)
                ran: list[optuna.trial.FrozenTrial] = []
                mine.optimize(objective, n_trials=1, callbacks=[lambda _s, t, out=ran: out.append(t)])
                if ran[-1].state == TrialState.PRUNED:
                    reasons.append(sampler.no_mask_reason(mine, ran[-1].number))
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    masks = ["".join(str(t.params[p]) for p in paths) for t in done]
    _assert_each_mask_once(masks, 63)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(pruned) == 80 - 63, Counter(t.state.name for t in trials)
    assert all(not t.params and not t.system_attrs.get(MASK_KEY) for t in pruned), "a pruned trial kept a claim or a mask"
    assert len(reasons) == len(pruned) and all(reasons), reasons
    assert "all 63 masks scored" in reasons


def test_the_front_lists_each_mask_once_in_a_study_with_repeats(tiny, mro, sqlite_url, tmp_path):
    """A study from before masks were never repeated holds one mask in several complete trials
    (added here with Optuna directly): ``pareto`` shows it once, from its lowest trial number."""
    mro.create(tiny.file, sqlite_url, trials=20)
    study = mro.open_study(sqlite_url)
    bit = CategoricalDistribution((0, 1))
    rows = [("011000", 0.9, 2.0), ("011000", 0.9, 2.0), ("000001", 0.5, 1.0), ("011000", 0.9, 2.0), ("000001", 0.5, 1.0), ("111111", 0.4, 6.0)]
    for mask, accuracy, mflops in rows:
        params = {p: int(b) for p, b in zip(mro.paths, mask)}
        study.add_trial(
            create_trial(
                params=params,
                distributions=dict.fromkeys(mro.paths, bit),
                values=[accuracy, mflops],
                user_attrs={"mask": mask, "active_paths": [p for p in mro.paths if params[p]], "metrics": {"accuracy": accuracy}, "mflops": mflops},
            )
        )
    result = mro.run(["pareto", "--study", str(tiny.file), "--storage", sqlite_url, "--json"], cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    front = json.loads(result.stdout)["pareto_front"]
    assert [(row["trial"], row["mask"]) for row in front] == [(2, "000001"), (0, "011000")]


@pytest.mark.parametrize(
    ("data", "trials", "expected"),
    [
        ({"source": "synthetic", "modalities": ["text", "audio"], "dims": [9, 9], "planted_paths": ["audio->text"]}, 4, "trials 4 > the 3 masks of 2 modalities"),
        ({"source": "synthetic", "modalities": ["text", "audio"], "dims": [9, 9], "planted_paths": ["audio->text"]}, 3, None),
        ({"source": "synthetic"}, 64, "trials 64 > the 63 masks of 3 modalities"),
        ({"source": "synthetic"}, 63, None),
        ({"source": "mfeat"}, 1000, None),
        ({"source": "mmsa", "path": "x.pkl"}, 70, "trials 70 > the 63 masks of 3 modalities"),
        ({"source": "meld", "path": "x.pkl"}, 70, "trials 70 > the 63 masks of 3 modalities"),
        ({"source": "meld", "path": "x.pkl"}, 10, "trials 10 > the 3 masks of a MELD file without visual features"),
        ({"source": "meld", "path": "x.pkl"}, 3, None),
    ],
    ids=["k2-over", "k2-equal", "k3-over", "k3-equal", "mfeat", "mmsa-over", "meld-over", "meld-no-visual", "meld-small"],
)
def test_a_budget_above_the_masks_is_noted(tmp_path, data, trials, expected):
    """The study file's notes (what ``validate`` prints), for k known without reading data."""
    from search_service.study_file import load_study

    notes = [n for n in load_study(str(_study_file(tmp_path, data, trials))).notes if n.startswith("[search] trials")]
    if expected is None:
        assert not notes
    else:
        assert len(notes) == 1 and notes[0].startswith(f"[search] {expected}"), notes
        assert "every mask is scored" in notes[0]


def test_validate_prints_the_note(mro, tmp_path):
    file = _study_file(tmp_path, {"source": "synthetic"}, 70)
    result = mro.run(["validate", str(file)], cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "note: [search] trials 70 > the 63 masks of 3 modalities: the search stops when every mask is scored" in result.stdout


def _study_file(folder: Path, data: dict, trials: int) -> Path:
    body = ["[data]"] + [f"{key} = {json.dumps(value)}" for key, value in data.items()]
    body += ["", "[search]", f"trials = {trials}", "n_startup_trials = 1"]
    file = folder / "study.toml"
    file.write_text("\n".join(body) + "\n", encoding="utf-8")
    return file


def test_the_start_up_warning_names_the_budget_and_the_masks():
    from search_service.search import mask_space_warning

    assert mask_space_warning(paths=PATHS_K2, budget=3) is None
    assert mask_space_warning(paths=PATHS_K2, budget=5) == (
        "mro-search: budget 5 trials exceeds the 3 masks of 2 paths; the search stops when every mask is scored"
    )
