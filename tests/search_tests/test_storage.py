"""Where a study lives, and that its password never shows.

``--storage`` beats ``MRO_STORAGE`` beats the study file's ``[search] storage`` beats
``sqlite:///RUN_DIR/study.db``; passwords are masked in everything the commands print, in what
the study stores, and in errors; an unreachable or unusable storage is one line and exit 2.
"""

from __future__ import annotations

import json

import pytest

from search_service.cli import main
from search_service.storage import ENV_VAR, mask_password, resolve_url, scrub
from search_service.study_file import load_study

SECRET = "s3cretpw"


def _pw_url(database: str, port: int = 5432) -> str:
    # trust authentication accepts any password: the URL works and carries a secret
    return f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{port}/{database}"


# --- URL resolution -----------------------------------------------------------------------------


def test_storage_precedence(tiny, mro, tmp_path, monkeypatch):
    file_url = f"sqlite:///{tmp_path / 'file.db'}"
    env_url = f"sqlite:///{tmp_path / 'env.db'}"
    cli_url = f"sqlite:///{tmp_path / 'cli.db'}"
    with_storage = load_study(str(tiny.variant(tmp_path, "with_storage.toml", storage=file_url)))
    plain = load_study(str(tiny.file))

    assert resolve_url(with_storage, cli_url) == cli_url
    assert resolve_url(plain) == f"sqlite:///{(tiny.run_dir / 'study.db').resolve()}"
    assert resolve_url(with_storage) == file_url
    monkeypatch.setenv(ENV_VAR, env_url)
    assert resolve_url(with_storage) == env_url
    assert resolve_url(plain) == env_url
    assert resolve_url(with_storage, cli_url) == cli_url
    monkeypatch.delenv(ENV_VAR)

    # no run_dir in the study file: runs/NAME under the working directory
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "tiny.toml").write_text(mro.study_toml("tiny", None), encoding="utf-8")
    monkeypatch.chdir(bare)
    assert resolve_url(load_study(str(bare / "tiny.toml"))) == f"sqlite:///{(bare / 'runs' / 'tiny' / 'study.db').resolve()}"


def test_commands_use_the_resolved_storage(tiny, mro, tmp_path, monkeypatch, capsys):
    """End to end: the study exists only in the MRO_STORAGE database; ``pareto`` finds it there,
    though the study file names another storage, and ``--storage`` overrides both."""
    env_url = f"sqlite:///{tmp_path / 'env.db'}"
    file_url = f"sqlite:///{tmp_path / 'file.db'}"
    cli_url = f"sqlite:///{tmp_path / 'cli.db'}"
    study_file = str(tiny.variant(tmp_path, "with_storage.toml", storage=file_url))
    mro.create(tiny.file, env_url, trials=5)

    monkeypatch.setenv(ENV_VAR, env_url)
    assert main(["pareto", "--study", study_file, "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["storage"] == env_url

    assert main(["pareto", "--study", study_file, "--storage", cli_url, "-q"]) == 2
    assert "cli.db" in capsys.readouterr().err

    monkeypatch.delenv(ENV_VAR)
    assert main(["pareto", "--study", study_file, "-q"]) == 2
    assert "file.db" in capsys.readouterr().err


# --- passwords ----------------------------------------------------------------------------------


def test_mask_password():
    assert mask_password(f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/test") == "postgresql+psycopg://postgres:***@127.0.0.1:5432/test"
    assert mask_password("postgresql://u:p%40ss%3Aw@db.example/x") == "postgresql://u:***@db.example/x"
    assert mask_password("postgresql+psycopg://postgres@127.0.0.1/test") == "postgresql+psycopg://postgres@127.0.0.1/test"
    assert mask_password("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"
    assert SECRET not in mask_password(f"no such scheme at all://u:{SECRET}@h/x")
    # error texts may quote the password decoded or as it is written in the URL
    url = "postgresql://u:p%40ss%3Aw@db.example/x"
    assert scrub("auth failed for u:p@ss:w", url) == "auth failed for u:***"
    assert "p%40ss%3Aw" not in scrub(f"bad url {url}", url)


@pytest.mark.postgres
@pytest.mark.slow
def test_password_never_printed_nor_stored(tiny, mro, pg_database, tmp_path, capfd, monkeypatch):
    url = _pw_url(pg_database)
    # the URL in the study file, as a user of a private cluster might write it
    study_file = tiny.variant(tmp_path, "secret.toml", storage=url)
    result = mro.run(["run", "--study", str(study_file), "--trials", "4", "--workers", "2", "--no-report"], cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert SECRET not in result.stdout + result.stderr
    assert "postgres:***@127.0.0.1" in result.stderr  # the log line names the storage, masked

    study = mro.open_study(url)
    assert len(mro.complete(study)) == 4
    stored = json.dumps(study._storage.get_study_system_attrs(study._study_id))
    stored += json.dumps([t.user_attrs for t in study.get_trials(deepcopy=False)])
    stored += json.dumps([t.system_attrs for t in study.get_trials(deepcopy=False)])
    assert SECRET not in stored, "the study stores the storage password (optuna-dashboard shows it)"

    capfd.readouterr()
    assert main(["pareto", "--study", str(study_file), "--json"]) == 0
    out, err = capfd.readouterr()
    assert SECRET not in out + err
    assert json.loads(out)["storage"] == mask_password(url)

    # a worker that joins later, with the URL from the environment: two more trials
    from search_service.search import BUDGET_KEY

    study._storage.set_study_system_attr(study._study_id, BUDGET_KEY, 6)
    monkeypatch.setenv(ENV_VAR, url)
    assert main(["worker", "--study", str(tiny.file), "--debug"]) == 0
    out, err = capfd.readouterr()
    assert SECRET not in out + err
    assert "worker finished: 2 trials" in err
    assert len(mro.complete(study)) == 6


def test_unreachable_storage_is_one_line(tiny, mro, tmp_path):
    url = _pw_url("test", port=1)  # nothing listens on port 1
    result = mro.run(["run", "--study", str(tiny.file), "--storage", url, "--trials", "3", "--no-report"], cwd=tmp_path)
    assert result.returncode == 2, f"{result.stdout}\n{result.stderr}"
    err_lines = [line for line in result.stderr.splitlines() if line.startswith("mro-search: error:")]
    assert len(err_lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "postgres:***@127.0.0.1:1" in err_lines[0]
    assert not (tiny.run_dir / "study.db").exists()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["pareto", "worker", "resume"])
def test_unreachable_or_unusable_storage_for_other_commands(tiny, tmp_path, capfd, command):
    for url in (_pw_url("test", port=1), f"sqlite:////proc/mro-{SECRET}/study.db"):
        capfd.readouterr()
        code = main([command, "--study", str(tiny.file), "--storage", url, "-q"])
        out, err = capfd.readouterr()
        assert code == 2, (url, out, err)
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("mro-search: error:"), err
        if "postgres" in url:
            assert SECRET not in out + err
    assert not (tiny.run_dir / "study.db").exists()


@pytest.mark.postgres
def test_braces_in_a_url_are_the_url_not_a_template(tmp_path, pg_url):
    """Optuna fills a storage URL as a ``str.format`` template: a password such as ``{Pw1}`` made
    it raise KeyError('Pw1'), and that message printed the password past the masking (found by
    the storage-URL fuzz); a SQLite path with braces failed the same way. Both open now, as given."""
    import optuna

    from search_service.storage import open_storage

    secret = "{Pw0000000001}"
    for url in (pg_url.replace("postgres@", f"postgres:{secret}@"), f"sqlite:///{tmp_path / 'a{b}c' / 'study.db'}"):
        storage = open_storage(url, create=True)
        assert storage.url == url
        optuna.create_study(storage=storage, study_name="braces")
        assert "braces" in optuna.get_all_study_names(storage)
        optuna.delete_study(study_name="braces", storage=storage)
    assert (tmp_path / "a{b}c" / "study.db").is_file()
