"""The command line as a newcomer meets it (issue 17, items 4 and 5).

Flag errors name the flag; every option's ``--help`` shows its default; ``config check
--show`` lists every effective value with its source and never a secret; a long table says
how many rows it left out; NaN is written one way in every format.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import click
import polars as pl
import pytest
from click.testing import CliRunner, Result

from pipeline.cli import cli
from pipeline.config import describe_options
from pipeline.store import TABLE_MAX_ROWS, TABLE_SHOWN_ROWS, format_frame
from tests.helpers.store import candle_frame, open_store


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CANDLES_* settings or config.toml from outside: each test runs in an empty folder."""
    for name in list(os.environ):
        if name.startswith("CANDLES_") or name.startswith("TASTYTRADE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def run(argv: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, argv, env=env, catch_exceptions=False)


# ----------------------------------------------------------------------- flag-named errors


@pytest.mark.parametrize(
    ("argv", "flag", "fragment"),
    [
        (["ingest", "--symbol", ""], "--symbol", "the symbol is empty"),
        (["ingest", "--symbol", "AAPL{=5m}"], "--symbol", "has a candle period"),
        (["ingest", "--interval", "7x"], "--interval", "not a candle period"),
        (["ingest", "--lookback", "soon"], "--lookback", "not a duration"),
        (["ingest", "--shard", "4/3"], "--shard", "4/3"),
        (["ingest", "--store", ""], "--store", "at least 1 character"),
        (["doctor", "--source", "dxlink", "--symbol", " "], "--symbol", "the symbol is empty"),
    ],
)
def test_a_bad_flag_is_named_by_the_flag(argv: list[str], flag: str, fragment: str) -> None:
    """The error starts with the flag, not 'overrides', and suggests nothing it rejects."""
    result = run(argv)
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert line.startswith(f"Error: {flag}: "), line
    assert "overrides" not in line and fragment in line
    assert len(line.splitlines()) == 1
    assert "write e.g. AAPL{=" not in line


# ----------------------------------------------------------------------- --help defaults


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _commands(cli), ids=" ".join)
def test_every_option_shows_its_default_in_help(path: tuple[str, ...]) -> None:
    """Every option of every command says its default in --help ([default: ...])."""
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in ("help", "version"):
            continue
        if param.required:
            continue
        shown = param.show_default and param.default is not None
        said = "[default:" in (param.help or "")
        assert shown or said, f"candles {' '.join(path)} {param.opts[0]} shows no default"
    assert run([*path, "--help"]).exit_code == 0


def test_export_help_shows_the_default_format() -> None:
    """`candles export --help` names parquet as the default format."""
    text = " ".join(run(["export", "--help"]).output.split())
    assert re.search(r"--format \[parquet\|csv\].*\[default: parquet\]", text), text


# ----------------------------------------------------------------------- config check --show


def test_config_check_show_lists_every_value_and_its_source(tmp_path: Path) -> None:
    """Each option once, with its value and where it came from: default, file, profile,
    environment or flag."""
    config = tmp_path / "config.toml"
    config.write_text(
        "[client]\nqueue_size = 64\n[profiles.quick.schedule]\nflush_interval = 1.0\n"
    )
    env = {"CANDLES_METRICS__PORT": "9999"}
    result = run(["config", "check", "--show", "--profile", "quick"], env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("config OK: source simulator, ")
    assert f"config file {config}, profile quick" in lines[0]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {option.key for option in describe_options()}
    assert rows["client.queue_size"].split()[1:] == ["64", "file"]
    assert rows["schedule.flush_interval"].split()[1:] == ["1.0", "profile", "quick"]
    assert rows["metrics.port"].split()[1:] == ["9999", "environment", "CANDLES_METRICS__PORT"]
    assert rows["manager.grace_seconds"].split()[1:] == ["5.0", "default"]
    assert rows["store.path"].split()[1] == json.dumps(str(tmp_path / "data"))
    assert f"default (relative to {tmp_path})" in rows["store.path"]


def test_config_check_show_without_a_config_file_says_so(tmp_path: Path) -> None:
    """No config file anywhere up: built-in defaults, paths relative to the working directory."""
    result = run(["config", "check", "--show"])
    assert "config file none (built-in defaults)" in result.output.splitlines()[0]
    assert "default (relative to the working directory)" in result.output


def test_config_check_show_never_shows_a_secret(tmp_path: Path) -> None:
    """Env-var options show the variable's name and whether it is set, never the value."""
    (tmp_path / "config.toml").write_text(
        '[source]\nkind = "tastytrade"\n[source.dxlink]\ntoken_env = "MY_DXLINK_TOKEN"\n'
        '[source.simulator]\nurl = "ws://me:pw-very-secret-value@127.0.0.1:8765/?k=key-value"\n'
    )
    secrets = {
        "TASTYTRADE_CLIENT_SECRET": "cs-very-secret-value",
        "TASTYTRADE_REFRESH_TOKEN": "rt-very-secret-value",
    }
    result = run(["config", "check", "--show"], secrets)
    assert result.exit_code == 0, result.output
    assert "TASTYTRADE_CLIENT_SECRET (set)" in result.output
    assert "MY_DXLINK_TOKEN (not set)" in result.output
    assert "source.simulator.token               (not shown)" in result.output
    assert '"ws://127.0.0.1:8765/"' in result.output
    for value in (*secrets.values(), "pw-very-secret-value", "key-value"):
        assert value not in result.output


def test_config_check_show_lists_values_even_when_credentials_are_missing(tmp_path: Path) -> None:
    """Missing credentials fail the check (exit 1), after the table that shows which."""
    (tmp_path / "config.toml").write_text('[source]\nkind = "tastytrade"\n')
    result = run(["config", "check", "--show"])
    assert result.exit_code == 1
    assert "TASTYTRADE_REFRESH_TOKEN (not set)" in result.output
    assert "config OK" not in result.output
    assert result.output.rstrip().endswith(
        "environment variables set: TASTYTRADE_CLIENT_SECRET, TASTYTRADE_REFRESH_TOKEN"
    )


# ----------------------------------------------------------------------- query output


def test_a_cut_table_says_how_many_rows_it_shows() -> None:
    """Over the table limit, the output ends by saying it shows 40 of N rows."""
    frame = pl.DataFrame({"n": range(1686)})
    text = format_frame(frame, "table").decode()
    assert text.rstrip().endswith(
        f"showing {TABLE_SHOWN_ROWS} of 1,686 rows (the first and last 20); --format csv, "
        "json or parquet writes them all"
    )
    whole = format_frame(pl.DataFrame({"n": range(TABLE_MAX_ROWS)}), "table").decode()
    assert "showing" not in whole and whole.count("\n") > TABLE_MAX_ROWS


def test_nan_is_null_in_every_query_format() -> None:
    """A NaN is null in JSON, an empty field in CSV, null in the table and in Parquet."""
    frame = pl.DataFrame({"symbol": ["A", "B"], "vwap": [1.5, math.nan]})
    csv = format_frame(frame, "csv").decode().splitlines()
    assert csv == ["symbol,vwap", "A,1.5", "B,"]
    assert json.loads(format_frame(frame, "json"))[1]["vwap"] is None
    assert "nan" not in format_frame(frame, "table").decode().lower()
    parquet = pl.read_parquet(format_frame(frame, "parquet"))
    assert parquet["vwap"].null_count() == 1 and not parquet["vwap"].is_nan().any()


def test_nan_is_null_in_exports_too(tmp_path: Path) -> None:
    """`candles export` writes a stored NaN as an empty CSV field and a Parquet null."""
    store = open_store(tmp_path / "data")
    frame = candle_frame(n=3).with_columns(pl.lit(math.nan).alias("imp_volatility"))
    store.upsert(frame)
    store.close()
    for fmt in ("csv", "parquet"):
        out = tmp_path / f"out-{fmt}"
        result = run(["export", "--out", str(out), "--format", fmt])
        assert result.exit_code == 0, result.output
        files = sorted(out.rglob(f"*.{fmt}"))
        assert files
        read = pl.read_csv if fmt == "csv" else pl.read_parquet
        written = pl.concat([read(f) for f in files], how="diagonal_relaxed")
        assert written["imp_volatility"].null_count() == written.height == 3
