"""Configuration: ``config.toml`` → frozen pydantic models; secrets only from env vars.

``loader`` layers the sources (defaults, file, profile, environment, flags) and validates;
``models`` are the sections; ``errors`` turns validation errors into one line per problem;
``describe`` lists every option for the README and the CLI.
"""

from __future__ import annotations

from pipeline.config.describe import OptionDoc, describe_options
from pipeline.config.errors import ConfigError, ConfigProblem
from pipeline.config.loader import (
    CONFIG_ENV,
    CONFIG_FILE,
    ENV_PREFIX,
    PROFILE_ENV,
    ResolvedConfig,
    Source,
    find_config_file,
    load_config,
    loads_config,
    resolve_config,
)
from pipeline.config.models import (
    DEFAULT_API_URL,
    DXFEED_DEMO_URL,
    KEEP_FOREVER,
    ClientConfig,
    Config,
    DXLinkSourceConfig,
    IngestConfig,
    LoggingConfig,
    ManagerConfig,
    MetricsConfig,
    RecordConfig,
    S3Config,
    ScheduleConfig,
    SimulatorSourceConfig,
    SourceConfig,
    StoreConfig,
    SubscriptionsConfig,
    TastytradeSourceConfig,
    insecure_ws_problem,
    is_loopback_host,
    parse_duration,
    retention_label,
)

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILE",
    "DEFAULT_API_URL",
    "DXFEED_DEMO_URL",
    "ENV_PREFIX",
    "KEEP_FOREVER",
    "PROFILE_ENV",
    "ClientConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DXLinkSourceConfig",
    "IngestConfig",
    "LoggingConfig",
    "ManagerConfig",
    "MetricsConfig",
    "OptionDoc",
    "RecordConfig",
    "ResolvedConfig",
    "S3Config",
    "ScheduleConfig",
    "SimulatorSourceConfig",
    "Source",
    "SourceConfig",
    "StoreConfig",
    "SubscriptionsConfig",
    "TastytradeSourceConfig",
    "describe_options",
    "find_config_file",
    "insecure_ws_problem",
    "is_loopback_host",
    "load_config",
    "loads_config",
    "parse_duration",
    "resolve_config",
    "retention_label",
]
