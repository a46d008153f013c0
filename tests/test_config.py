"""Tests for pipeline/config/: sections, profiles, env overrides and error messages."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest

from pipeline.config import (
    Config,
    ConfigError,
    describe_options,
    is_loopback_host,
    load_config,
    loads_config,
    parse_duration,
)
from pipeline.dxlink import ConfigurationError

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.toml"
LINE = re.compile(
    r"^(?P<source>.+?): (?P<key>\S+|line \d+, column \d+): (?P<problem>.+); allowed: .+$"
)


def load(text: str, **kwargs: Any) -> Config:
    kwargs.setdefault("environ", {})
    return loads_config(text, source="test.toml", now=NOW, **kwargs)


def problems(text: str, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text, **kwargs)
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.problems)
    for line in lines:
        assert LINE.match(line), line
    return lines


def one_problem(text: str, **kwargs: Any) -> str:
    lines = problems(text, **kwargs)
    assert len(lines) == 1, lines
    return lines[0]


# --- loading -----------------------------------------------------------------------------


def test_no_file_gives_simulator_defaults() -> None:
    """With no file and no CANDLES_CONFIG, the defaults describe the simulator."""
    config = load_config(None, environ={}, now=NOW)
    assert config == Config()
    assert config.source.kind == "simulator"
    assert config.client.batch_max_bytes == 6000
    assert config.schedule.flush_interval == 5.0
    assert config.metrics.port == 9464


def test_repository_config_toml_loads_with_every_profile() -> None:
    """The default config.toml is valid as is and with its simulator and production profiles."""
    base = load_config(REPO_CONFIG, environ={}, now=NOW)
    simulator = load_config(REPO_CONFIG, "simulator", environ={}, now=NOW)
    production = load_config(REPO_CONFIG, "production", environ={}, now=NOW)
    assert base.source.kind == "simulator"
    assert simulator.source.kind == "simulator"
    assert production.source.kind == "tastytrade"
    assert production.source.tastytrade.api_url == "https://api.tastyworks.com"


def test_repository_config_toml_base_equals_the_defaults() -> None:
    """The shipped config.toml sets the defaults; its store is data/ beside it, not in the cwd
    (and its recordings/, when recording is on)."""
    loaded = load_config(REPO_CONFIG, environ={}, now=NOW)
    assert loaded.store.path == str(REPO_CONFIG.parent / "data")
    assert loaded.record.dir == str(REPO_CONFIG.parent / "recordings")
    unpathed = {"store": {"path"}, "record": {"dir"}}
    assert loaded.model_dump(exclude=unpathed) == Config().model_dump(exclude=unpathed)


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    """A config file named explicitly but absent is a ConfigError naming the path."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, environ={})
    assert str(missing) in str(info.value)
    assert "No such file" in str(info.value)
    assert isinstance(info.value, ConfigurationError)


def test_config_env_var_names_the_file(tmp_path: Path) -> None:
    """CANDLES_CONFIG selects the file when no path is given."""
    path = tmp_path / "c.toml"
    path.write_text('[logging]\nlevel = "debug"\n')
    config = load_config(None, environ={"CANDLES_CONFIG": str(path)}, now=NOW)
    assert config.logging.level == "DEBUG"


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    """A TOML syntax error names the file, line and column."""
    path = tmp_path / "bad.toml"
    path.write_text("[client]\nqueue_size = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: line 2, column ")
    assert "TOML syntax error" in str(info.value)


def test_non_utf8_file_is_reported() -> None:
    """Bytes that are not UTF-8 give a ConfigError, not a UnicodeDecodeError."""
    with pytest.raises(ConfigError, match="not UTF-8"):
        loads_config(b"[client]\nx = '\xff'\n", environ={})


def test_every_problem_is_listed_at_once() -> None:
    """All problems come back together, one formatted line each."""
    lines = problems(
        '[client]\nqueue_size = 0\n[metrics]\nport = 70000\n[logging]\nlevel = "loud"\n'
    )
    assert [line.split(": ")[1] for line in lines] == [
        "client.queue_size",
        "metrics.port",
        "logging.level",
    ]


def test_config_is_frozen() -> None:
    """Loaded sections cannot be changed."""
    config = load("")
    with pytest.raises(pydantic.ValidationError):
        config.client.queue_size = 5


# --- unknown keys and secrets --------------------------------------------------------------


def test_unknown_key_suggests_closest_and_lists_valid_keys() -> None:
    """An unknown key is named, the closest valid key suggested, and the valid keys listed."""
    line = one_problem('[subscriptions]\nsymbls = ["AAPL"]\n')
    assert line.startswith("test.toml: subscriptions.symbls: unknown key 'symbls'")
    assert "did you mean 'symbols'?" in line
    assert "allowed: the keys symbols, intervals, extended_hours, lookback, from_time" in line


def test_unknown_section_lists_sections() -> None:
    """A misspelt section is named with the list of sections."""
    line = one_problem("[clinet]\nqueue_size = 3\n")
    assert "clinet: unknown key 'clinet' (did you mean 'client'?)" in line
    assert "profiles" in line


@pytest.mark.parametrize(
    ("key", "env_var"),
    [
        ("refresh_token", "TASTYTRADE_REFRESH_TOKEN"),
        ("client_secret", "TASTYTRADE_CLIENT_SECRET"),
        ("password", None),
    ],
)
def test_secret_keys_in_toml_are_rejected(key: str, env_var: str | None) -> None:
    """A secret-looking key under tastytrade is refused, pointing at env vars, value hidden."""
    line = one_problem(f'[source.tastytrade]\n{key} = "s3cr3t-VALUE"\n')
    assert f"source.tastytrade.{key}" in line
    assert "secrets never go in the config file" in line
    assert "s3cr3t-VALUE" not in line
    if env_var:
        assert env_var in line


def test_pasting_the_secret_into_an_env_name_key_does_not_echo_it() -> None:
    """A secret pasted where the env var *name* belongs is rejected without echoing it."""
    line = one_problem('[source.tastytrade]\nrefresh_token_env = "eyJ.secret.value"\n')
    assert "source.tastytrade.refresh_token_env" in line
    assert "eyJ.secret.value" not in line


# --- sections ------------------------------------------------------------------------------


def test_source_kind_is_checked_with_suggestion() -> None:
    """source.kind accepts only simulator or tastytrade and suggests the closest."""
    line = one_problem('[source]\nkind = "tastytrad"\n')
    assert "source.kind" in line and "did you mean 'tastytrade'?" in line


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("port = 65536", "source.simulator.port"),
        ("port = -1", "source.simulator.port"),
        ("speed = 0", "source.simulator.speed"),
        ("history_days = 99999", "source.simulator.history_days"),
        ('token = ""', "source.simulator.token"),
        ('seed = "one"', "source.simulator.seed"),
    ],
)
def test_simulator_values_are_bounded(toml: str, key: str) -> None:
    """Out-of-range or wrongly typed simulator values name their key."""
    assert f": {key}: " in one_problem(f"[source.simulator]\n{toml}\n")


def test_simulator_values_load() -> None:
    """Valid simulator settings come through typed."""
    config = load("[source.simulator]\nport = 8765\nspeed = 1.5\nseed = 7\nhistory_days = 2\n")
    assert config.source.simulator.port == 8765
    assert config.source.simulator.speed == 1.5


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://api.cert.tastyworks.com/", True),
        ("http://127.0.0.1:8080", True),
        ("http://[::1]:9", True),
        ("http://localhost:9", True),
        ("http://api.tastyworks.com", False),
        ("ftp://api.tastyworks.com", False),
        ("https://user:pw@api.tastyworks.com", False),
        ("https://api.tastyworks.com/?x=1", False),
        ("api.tastyworks.com", False),
    ],
)
def test_tastytrade_api_url_requires_tls_off_loopback(url: str, ok: bool) -> None:
    """api_url must be https:// except on loopback, without credentials or a query."""
    text = f'[source.tastytrade]\napi_url = "{url}"\n'
    if ok:
        assert not load(text).source.tastytrade.api_url.endswith("/")
    else:
        line = one_problem(text)
        assert "source.tastytrade.api_url" in line
        assert "pw@" not in line


def test_tastytrade_missing_env_lists_unset_variables() -> None:
    """missing_env names the credential variables that are unset or blank."""
    tastytrade = load("").source.tastytrade
    assert tastytrade.missing_env({}) == ["TASTYTRADE_CLIENT_SECRET", "TASTYTRADE_REFRESH_TOKEN"]
    env = {"TASTYTRADE_CLIENT_SECRET": "x", "TASTYTRADE_REFRESH_TOKEN": "  "}
    assert tastytrade.missing_env(env) == ["TASTYTRADE_REFRESH_TOKEN"]


@pytest.mark.parametrize(
    ("toml", "key", "fragment"),
    [
        ('symbols = ["AAPL{=5m}"]', "subscriptions.symbols[0]", "put periods in"),
        ('symbols = ["AAPL", "MS FT"]', "subscriptions.symbols[1]", "MS FT"),
        ('symbols = [""]', "subscriptions.symbols[0]", "empty; write a streamer symbol"),
        ("symbols = []", "subscriptions.symbols", "list at least one"),
        ('symbols = ["SPY", "SPY"]', "subscriptions.symbols", "listed twice"),
        ('intervals = ["7x"]', "subscriptions.intervals[0]", "not a candle period"),
        ('intervals = ["5m", "5min"]', "subscriptions.intervals", "listed twice"),
        ('intervals = ["0m"]', "subscriptions.intervals[0]", "positive"),
        ('lookback = "2 weeks"', "subscriptions.lookback", "not a duration"),
        ('lookback = "0s"', "subscriptions.lookback", "outside"),
        ('lookback = "4000d"', "subscriptions.lookback", "outside"),
        ("extended_hours = 3", "subscriptions.extended_hours", "boolean"),
    ],
)
def test_subscription_values_are_validated(toml: str, key: str, fragment: str) -> None:
    """Bad symbols, intervals and lookbacks name their key and say what is wrong."""
    line = one_problem(f"[subscriptions]\n{toml}\n")
    assert "{=" not in line.partition("; allowed:")[0].replace("AAPL{=5m}", "")
    assert f": {key}: " in line
    assert fragment in line


def test_any_valid_period_is_accepted_and_combined() -> None:
    """Intervals are any dxFeed period, not an enum; symbols x intervals give candle symbols."""
    config = load(
        '[subscriptions]\nsymbols = ["AAPL", "/ESZ25:XCME"]\n'
        'intervals = ["15s", "2h", "1mo", "100t"]\nextended_hours = false\n'
    )
    symbols = [s.normalized for s in config.subscriptions.candle_symbols()]
    assert symbols[:4] == [
        "AAPL{=15s,tho=true}",
        "AAPL{=2h,tho=true}",
        "AAPL{=mo,tho=true}",
        "AAPL{=100t,tho=true}",
    ]
    assert len(symbols) == 8


def test_extended_hours_true_sends_no_session_attribute() -> None:
    """With extended hours, candle symbols carry no tho attribute."""
    config = load('[subscriptions]\nsymbols = ["SPY"]\nintervals = ["1d"]\n')
    assert [s.normalized for s in config.subscriptions.candle_symbols()] == ["SPY{=d}"]


def test_start_time_uses_lookback_or_from_time() -> None:
    """start_time is now - lookback, unless from_time is set."""
    by_lookback = load('[subscriptions]\nlookback = "1d12h"\n').subscriptions
    assert by_lookback.start_time(NOW) == NOW - timedelta(hours=36)
    fixed = load('[subscriptions]\nfrom_time = "2025-01-02T03:04:05Z"\n').subscriptions
    assert fixed.start_time(NOW) == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"2025-01-02T03:04:05+02:00"', datetime(2025, 1, 2, 1, 4, 5, tzinfo=UTC)),
        ("2025-01-02T03:04:05Z", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2025-01-02", datetime(2025, 1, 2, tzinfo=UTC)),
    ],
)
def test_from_time_accepts_iso_strings_and_toml_datetimes(value: str, expected: datetime) -> None:
    """from_time takes quoted ISO-8601, TOML offset datetimes and dates, stored in UTC."""
    assert load(f"[subscriptions]\nfrom_time = {value}\n").subscriptions.from_time == expected


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ('"2025-06-03T00:00:00Z"', ["in the future"]),
        ("2025-01-02T03:04:05", ["no time zone", "add Z"]),
        ('"yesterday"', ["not an ISO-8601 time"]),
        ("1691402400", ["is a number", "as epoch seconds it would be 2023-08-07T10:00:00Z"]),
        ("1691402400000", ["as epoch milliseconds it would be 2023-08-07T10:00:00Z"]),
        ('"1691402400"', ["as epoch seconds it would be 2023-08-07T10:00:00Z"]),
        ('"1970-01-01T00:00:01Z"', ["before 1990"]),
    ],
)
def test_from_time_rejects_future_naive_and_epoch_numbers(value: str, fragments: list[str]) -> None:
    """from_time in the future, without zone, or as an epoch number gets a specific hint."""
    line = one_problem(f"[subscriptions]\nfrom_time = {value}\n")
    assert ": subscriptions.from_time: " in line
    for fragment in fragments:
        assert fragment in line


def test_client_max_message_size_and_the_dead_peer_cap_are_options() -> None:
    """client.max_message_size and client.max_dead_peer_timeout load (issue 14: the former
    was refused as an unknown key); the dead-peer default is 10 s, the cap 60 s."""
    config = loads_config("[client]\nmax_message_size = 1048576\nmax_dead_peer_timeout = 120\n")
    assert config.client.max_message_size == 1_048_576
    assert config.client.max_dead_peer_timeout == 120
    defaults = loads_config("")
    assert (defaults.client.dead_peer_timeout, defaults.client.max_dead_peer_timeout) == (10, 60)
    assert defaults.client.max_message_size == 16 * 2**20
    line = one_problem("[client]\ndead_peer_timeout = 30\nmax_dead_peer_timeout = 20\n")
    assert ": client.max_dead_peer_timeout: 20 is below client.dead_peer_timeout (30)" in line


def test_client_backoff_max_must_not_be_below_initial() -> None:
    """client.backoff_max below backoff_initial is reported on backoff_max."""
    line = one_problem("[client]\nbackoff_initial = 30\nbackoff_max = 5\n")
    assert ": client.backoff_max: 5 is below client.backoff_initial (30)" in line


@pytest.mark.parametrize(
    "toml",
    [
        "batch_max_bytes = 100",
        "queue_size = 0",
        "subscribe_rate = 0",
        "subscribe_burst = 0",
        "max_attempts = -1",
        "keepalive_timeout = 0.5",
        "max_message_size = 1000",
        "max_dead_peer_timeout = 0",
        "aggregation_period = -0.1",
        'connect_timeout = "fast"',
    ],
)
def test_client_values_are_bounded(toml: str) -> None:
    """Each client limit rejects out-of-range values, naming the key and its range."""
    key = toml.split(" = ")[0]
    line = one_problem(f"[client]\n{toml}\n")
    assert f": client.{key}: " in line
    assert "allowed: number" in line or "allowed: integer" in line


@pytest.mark.parametrize(
    ("section", "toml"),
    [
        ("manager", "max_series = 0"),
        ("manager", "grace_seconds = -1"),
        ("schedule", "flush_interval = 0"),
        ("schedule", "compaction_interval = -5"),
        ("metrics", "port = 70000"),
        ("metrics", 'enabled = "maybe"'),
        ("store", 'path = ""'),
        ("logging", 'level = "verbose"'),
        ("ingest", "shutdown_timeout = -1"),
        ("ingest", 'shutdown_timeout = "soon"'),
    ],
)
def test_other_sections_are_validated(section: str, toml: str) -> None:
    """Manager, schedule, metrics, store, ingest and logging values name their key when invalid."""
    key = toml.split(" = ")[0]
    assert f": {section}.{key}: " in one_problem(f"[{section}]\n{toml}\n")


def test_shutdown_timeout_defaults_to_a_minute_and_zero_means_forever() -> None:
    """ingest.shutdown_timeout: 60 s unless set; 0 (wait forever) and env overrides load."""
    assert load("").ingest.shutdown_timeout == 60.0
    assert load("[ingest]\nshutdown_timeout = 0\n").ingest.shutdown_timeout == 0.0
    environ = {"CANDLES_INGEST__SHUTDOWN_TIMEOUT": "2.5"}
    assert load("", environ=environ).ingest.shutdown_timeout == 2.5
    assert "allowed: number >= 0 and <= 86400" in one_problem("[ingest]\nshutdown_timeout = -1\n")


def test_logging_level_is_case_insensitive() -> None:
    """logging.level accepts any case and stores the canonical upper case."""
    assert load('[logging]\nlevel = "warning"\n').logging.level == "WARNING"


@pytest.mark.parametrize(
    "catalog", ["sqlite:data/catalog.sqlite", "postgres:host=db dbname=lake user=ingest"]
)
def test_store_catalog_accepts_sqlite_and_postgres(catalog: str) -> None:
    """store.catalog takes sqlite:<path> or postgres:<conninfo>."""
    assert load(f'[store]\ncatalog = "{catalog}"\n').store.catalog == catalog


@pytest.mark.parametrize(
    "catalog",
    [
        "duckdb:x.db",
        "sqlite:",
        "postgres:host=db password=hunter2",
        "postgres:postgresql://u:hunter2@db/x",
    ],
)
def test_store_catalog_rejects_other_kinds_and_passwords(catalog: str) -> None:
    """Other catalog kinds, empty targets and inline passwords are refused without echo."""
    line = one_problem(f'[store]\ncatalog = "{catalog}"\n')
    assert ": store.catalog: " in line
    assert "hunter2" not in line


# --- profiles ------------------------------------------------------------------------------

PROFILED = """
[client]
queue_size = 10
backoff_max = 30.0

[profiles.fast.client]
queue_size = 99

[profiles.live.source]
kind = "tastytrade"
"""


def test_profile_deep_merges_over_base() -> None:
    """A profile overrides only the keys it sets; the rest of the section stays."""
    config = load(PROFILED, profile="fast")
    assert config.client.queue_size == 99
    assert config.client.backoff_max == 30.0
    assert load(PROFILED).client.queue_size == 10


def test_profile_from_env_and_argument_precedence() -> None:
    """CANDLES_PROFILE selects a profile; the argument wins over it."""
    assert load(PROFILED, environ={"CANDLES_PROFILE": "live"}).source.kind == "tastytrade"
    chosen = load(PROFILED, profile="fast", environ={"CANDLES_PROFILE": "live"})
    assert (chosen.source.kind, chosen.client.queue_size) == ("simulator", 99)


def test_unknown_profile_lists_the_defined_ones() -> None:
    """Selecting an undefined profile names it and lists the defined profiles."""
    line = one_problem(PROFILED, environ={"CANDLES_PROFILE": "prod"})
    assert line == (
        "environment variable CANDLES_PROFILE: profiles: no profile 'prod'; allowed: fast, live"
    )


def test_problem_in_selected_profile_is_located_in_the_profile() -> None:
    """An error set by the selected profile is shown at its profiles.<name> path."""
    text = PROFILED + "\n[profiles.bad.client]\nqueue_size = -1\n"
    line = one_problem(text, profile="bad")
    assert line.startswith("test.toml: profiles.bad.client.queue_size: ")


def test_problems_in_unselected_profiles_are_reported() -> None:
    """A typo in a profile that is not selected still fails validation."""
    text = PROFILED + "\n[profiles.bad.metrics]\nprot = 1\n"
    line = one_problem(text)
    assert "profiles.bad.metrics.prot: unknown key 'prot' (did you mean 'port'?)" in line


def test_profile_must_be_a_table() -> None:
    """profiles.<name> that is not a table is reported."""
    assert ": profiles.broken: must be a table" in one_problem("[profiles]\nbroken = 3\n")


# --- env overrides and overrides argument ------------------------------------------------------


def test_env_overrides_parse_toml_values() -> None:
    """CANDLES_<SECTION>__<KEY> values are read as TOML when they parse as TOML."""
    environ = {
        "CANDLES_CLIENT__QUEUE_SIZE": "64",
        "CANDLES_SUBSCRIPTIONS__SYMBOLS": '["MSFT", "QQQ"]',
        "CANDLES_METRICS__ENABLED": "false",
        "CANDLES_SOURCE__TASTYTRADE__API_URL": "http://127.0.0.1:9000",
        "CANDLES_STORE__PATH": "1234",
        "CANDLES_LAKE": "ignored: not a section override",
    }
    config = load(PROFILED, profile="fast", environ=environ)
    assert config.client.queue_size == 64
    assert config.subscriptions.symbols == ("MSFT", "QQQ")
    assert config.metrics.enabled is False
    assert config.source.tastytrade.api_url == "http://127.0.0.1:9000"
    assert config.store.path == "1234"


def test_env_override_problems_name_the_variable() -> None:
    """A bad or unknown env override is reported against the variable."""
    lines = sorted(
        problems("", environ={"CANDLES_CLIENT__QUEUE_SIZE": "x", "CANDLES_CLIENT__NOPE": "1"})
    )
    assert lines[0].startswith("environment variable CANDLES_CLIENT__NOPE: client.nope: unknown")
    assert lines[1].startswith("environment variable CANDLES_CLIENT__QUEUE_SIZE: client.queue_size")


def test_secret_env_override_is_rejected_without_echo() -> None:
    """Secrets cannot be smuggled in as CANDLES_ overrides either."""
    environ = {"CANDLES_SOURCE__TASTYTRADE__REFRESH_TOKEN": "rt-VALUE"}
    line = one_problem("", environ=environ)
    assert "TASTYTRADE_REFRESH_TOKEN" in line and "rt-VALUE" not in line


def test_overrides_argument_wins_and_accepts_dotted_keys() -> None:
    """overrides beat env and profile; dotted and nested keys both work."""
    environ = {"CANDLES_CLIENT__QUEUE_SIZE": "64"}
    config = load(
        PROFILED,
        profile="fast",
        environ=environ,
        overrides={"client.queue_size": 5, "metrics": {"port": 0}},
    )
    assert (config.client.queue_size, config.metrics.port) == (5, 0)
    line = one_problem("", overrides={"client.queue_size": 0})
    assert line.startswith("overrides: client.queue_size: ")


# --- helpers -------------------------------------------------------------------------------


def test_describe_options_documents_every_option() -> None:
    """Every leaf option has a unique key, a type, a default and a description."""
    options = describe_options()
    keys = [option.key for option in options]
    assert len(keys) == len(set(keys))
    expected = {
        "source.kind", "source.simulator.port", "source.tastytrade.api_url",
        "subscriptions.from_time", "client.subscribe_burst", "client.aggregation_period",
        "manager.grace_seconds", "store.catalog", "schedule.compaction_interval",
        "metrics.port", "logging.level",
    }  # fmt: skip
    assert expected <= set(keys)
    for option in options:
        assert option.type and option.default and option.description, option
    by_key = {option.key: option for option in options}
    assert by_key["client.batch_max_bytes"].default == "6000"
    assert by_key["metrics.host"].default == '"127.0.0.1"'
    assert by_key["metrics.port"].type == "integer >= 0 and <= 65535"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("2h", 7200), ("3d", 259200), ("1w", 604800), ("1d12h", 129600)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    """Durations are <number><unit> runs with units s, m, h, d, w."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5", "h", "5x", "1h 30m", "-1h"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    """Anything else is a ValueError that shows the accepted form."""
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.5.0.1", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("10.0.0.1", False), ("example.com", False)],
)  # fmt: skip
def test_is_loopback_host(host: str, loopback: bool) -> None:
    """Loopback means localhost, 127.0.0.0/8 or ::1."""
    assert is_loopback_host(host) is loopback
