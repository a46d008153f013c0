"""One path rule (issue 17): a config file's relative paths are relative to that file.

The config is ``--config``, else ``$CANDLES_CONFIG``, else the nearest ``config.toml`` in the
working directory or above; relative paths in it (and the defaults it leaves alone) are
relative to its folder; relative paths from the environment or a flag are relative to the
working directory. ``candles`` and ``pipeline.connect()`` both follow it, so a command run
from ``notebooks/`` reads the store that ``candles ingest`` filled from the project root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import pipeline
from pipeline.cli import cli
from pipeline.config import find_config_file, load_config, resolve_config
from tests.helpers.store import candle_frame, open_store

CONFIG = '[store]\npath = "lake"\n'


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with config.toml (store 'lake'), a filled lake and a notebooks/ folder;
    no CANDLES_* settings from outside."""
    for name in list(os.environ):
        if name in ("CANDLES_CONFIG", "CANDLES_PROFILE", "CANDLES_STORE") or (
            name.startswith("CANDLES_") and "__" in name
        ):
            monkeypatch.delenv(name)
    (tmp_path / "config.toml").write_text(CONFIG)
    (tmp_path / "notebooks").mkdir()
    store = open_store(tmp_path / "lake")
    store.upsert(candle_frame(n=7))
    store.close()
    return tmp_path


# ----------------------------------------------------------------------- finding the file


def test_the_nearest_config_toml_upward_is_found(tmp_path: Path) -> None:
    """From a subfolder two levels down, the project's config.toml is the one found."""
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    (tmp_path / "config.toml").write_text("")
    assert find_config_file(deep, {}) == tmp_path / "config.toml"
    (tmp_path / "a" / "config.toml").write_text("")
    assert find_config_file(deep, {}) == tmp_path / "a" / "config.toml"


def test_candles_config_wins_over_the_search(tmp_path: Path) -> None:
    """$CANDLES_CONFIG names the file even when a config.toml lies nearer."""
    (tmp_path / "config.toml").write_text("")
    assert find_config_file(tmp_path, {"CANDLES_CONFIG": "/etc/candles.toml"}) == Path(
        "/etc/candles.toml"
    )


# ----------------------------------------------------------------------- resolving paths


def test_relative_paths_in_a_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """store.path, data_path and a sqlite: catalog in the file resolve against its folder,
    whatever the working directory."""
    (tmp_path / "conf").mkdir()
    file = tmp_path / "conf" / "candles.toml"
    file.write_text(
        '[store]\npath = "../lake"\ndata_path = "parquet"\ncatalog = "sqlite:meta/c.sqlite"\n'
    )
    monkeypatch.chdir("/")
    store = load_config(file, environ={}).store
    assert store.path == str(tmp_path / "lake")
    assert store.data_path == str(tmp_path / "conf" / "parquet")
    assert store.catalog == f"sqlite:{tmp_path / 'conf' / 'meta' / 'c.sqlite'}"


def test_a_default_the_file_leaves_alone_is_relative_to_the_file(tmp_path: Path) -> None:
    """A config.toml without [store] puts the store in 'data' beside it."""
    file = tmp_path / "config.toml"
    file.write_text('[logging]\nlevel = "INFO"\n')
    resolved = resolve_config(file, environ={})
    assert resolved.config.store.path == str(tmp_path / "data")
    assert resolved.sources["store.path"].kind == "default"


def test_environment_and_flag_paths_stay_relative_to_the_working_directory(
    tmp_path: Path,
) -> None:
    """CANDLES_STORE__PATH and --store are the user's words in the cwd: left as given."""
    file = tmp_path / "config.toml"
    file.write_text(CONFIG)
    from_env = resolve_config(file, environ={"CANDLES_STORE__PATH": "here"})
    assert from_env.config.store.path == "here"
    assert str(from_env.sources["store.path"]) == "environment CANDLES_STORE__PATH"
    from_flag = resolve_config(
        file, overrides={"store.path": "there"}, flags={"store.path": "--store"}, environ={}
    )
    assert from_flag.config.store.path == "there"
    assert str(from_flag.sources["store.path"]) == "flag --store"


def test_absolute_urls_postgres_and_home_paths(tmp_path: Path) -> None:
    """Absolute paths, object-storage URLs and PostgreSQL catalogs are left alone; ~ expands."""
    file = tmp_path / "config.toml"
    file.write_text(
        '[store]\npath = "~/candles"\ndata_path = "s3://bucket/lake"\n'
        'catalog = "postgres:dbname=lake host=db"\n'
    )
    store = load_config(file, environ={}).store
    assert store.path == str(Path.home() / "candles")
    assert store.data_path == "s3://bucket/lake"
    assert store.catalog == "postgres:dbname=lake host=db"


def test_a_profile_path_is_relative_to_the_file_too(tmp_path: Path) -> None:
    """[profiles.x.store] path resolves against the file like the base sections."""
    file = tmp_path / "config.toml"
    file.write_text('[profiles.x.store]\npath = "px"\n')
    resolved = resolve_config(file, "x", environ={})
    assert resolved.config.store.path == str(tmp_path / "px")
    assert str(resolved.sources["store.path"]) == "profile x"


# ----------------------------------------------------------------------- the CLI and connect()


def test_candles_query_from_a_subfolder_reads_the_projects_store(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from notebooks/, `candles query` finds ../config.toml and its store ../lake."""
    monkeypatch.chdir(project / "notebooks")
    result = CliRunner().invoke(
        cli, ["query", "SELECT count(*) AS n FROM candles", "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["n", "7"]


def test_store_flag_is_relative_to_the_working_directory(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--store lake from the project root is the same store; from notebooks/ it is not."""
    monkeypatch.chdir(project)
    argv = ["query", "SELECT count(*) AS n FROM candles", "--format", "csv", "--store", "lake"]
    assert CliRunner().invoke(cli, argv).output.splitlines() == ["n", "7"]
    monkeypatch.chdir(project / "notebooks")
    missing = CliRunner().invoke(cli, argv)
    assert missing.exit_code == 1 and "no candle store at lake" in missing.output


def test_pipeline_connect_from_a_subfolder_reads_the_projects_store(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pipeline.connect() with no argument, from notebooks/: the store of ../config.toml."""
    monkeypatch.chdir(project / "notebooks")
    con = pipeline.connect(verify_extensions=False)
    try:
        assert con.execute("SELECT count(*) FROM candles").fetchone() == (7,)
    finally:
        con.close()


def test_candles_store_still_wins_for_connect(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$CANDLES_STORE points connect() elsewhere, overriding the config file."""
    other = tmp_path_factory.mktemp("other") / "store"
    store = open_store(other)
    store.upsert(candle_frame(n=2))
    store.close()
    monkeypatch.chdir(project / "notebooks")
    monkeypatch.setenv("CANDLES_STORE", str(other))
    con = pipeline.connect(verify_extensions=False)
    try:
        assert con.execute("SELECT count(*) FROM candles").fetchone() == (2,)
    finally:
        con.close()


def test_config_check_names_the_file_it_found(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`config check` says which file it used and the absolute store it resolves to."""
    monkeypatch.chdir(project / "notebooks")
    result = CliRunner().invoke(cli, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert f"store {project / 'lake'}; config file {project / 'config.toml'}" in result.output
