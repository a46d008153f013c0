"""Suite-wide pytest options. Fixtures live next to the tests that use them."""

from __future__ import annotations

import pytest

# A fatal signal (SIGBUS, SIGSEGV) leaves its traceback in build/crash/ (issue 14).
pytest_plugins = ["tests.helpers.crash_trace"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-soak",
        action="store_true",
        default=False,
        help="also run the long soak/chaos tests (marked 'soak'); they take minutes",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-soak"):
        return
    skip = pytest.mark.skip(reason="long soak/chaos run; opt in with --run-soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
