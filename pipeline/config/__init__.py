"""Configuration: ``config.toml`` → frozen pydantic models; secrets only from env vars.

``loader`` layers the sources (defaults, file, profile, environment, flags) and validates;
``models`` are the sections; ``errors`` turns validation errors into one line per problem;
``describe`` lists every option for the README and the CLI.
"""

from __future__ import annotations

from pipeline.config.describe import OptionDoc, describe_options
from pipeline.config.errors import ConfigError, ConfigProblem
from pipeline.config.loader import CONFIG_ENV, ENV_PREFIX, PROFILE_ENV, load_config, loads_config
from pipeline.config.models import (
    DEFAULT_API_URL,
    KEEP_FOREVER,
    ClientConfig,
    Config,
    IngestConfig,
    LoggingConfig,
    ManagerConfig,
    MetricsConfig,
    S3Config,
    ScheduleConfig,
    SimulatorSourceConfig,
    SourceConfig,
    StoreConfig,
    SubscriptionsConfig,
    TastytradeSourceConfig,
    is_loopback_host,
    parse_duration,
    retention_label,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_API_URL",
    "ENV_PREFIX",
    "KEEP_FOREVER",
    "PROFILE_ENV",
    "ClientConfig",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "IngestConfig",
    "LoggingConfig",
    "ManagerConfig",
    "MetricsConfig",
    "OptionDoc",
    "S3Config",
    "ScheduleConfig",
    "SimulatorSourceConfig",
    "SourceConfig",
    "StoreConfig",
    "SubscriptionsConfig",
    "TastytradeSourceConfig",
    "describe_options",
    "is_loopback_host",
    "load_config",
    "loads_config",
    "parse_duration",
    "retention_label",
]
