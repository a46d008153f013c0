"""The candle manager is built from small modules, and pipeline.candles still exports its names."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import assembly, candle_types, candles, records, series

# The modules CandleDataManager is built from (its layers and their helpers).
MODULES = (candles, assembly, series, records, candle_types)
MAX_LINES = 500
# Names other modules, notebooks and docs import from pipeline.candles (docs/CONTRACTS.md).
EXPORTED = {
    "BYTES_PER_CANDLE",
    "CANDLE_COLUMNS",
    "CANDLE_SCHEMA",
    "KEY_COLUMNS",
    "BackpressureError",
    "Batch",
    "CandleData",
    "CandleDataManager",
    "CapacityError",
    "ManagerStats",
}


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_manager_module_stays_small(module: object) -> None:
    """Each module of the candle manager stays under 500 lines (one job per module)."""
    path = Path(str(getattr(module, "__file__", "")))
    lines = len(path.read_text().splitlines())
    assert lines < MAX_LINES, f"{path.name} has {lines} lines; split it"


def test_candles_exports_the_same_public_names() -> None:
    """pipeline.candles exports exactly the names it always did, each one importable from it."""
    assert set(candles.__all__) == EXPORTED
    for name in EXPORTED:
        assert getattr(candles, name) is not None, f"pipeline.candles.{name} is missing"
    assert candles.CandleData is candle_types.CandleData
    assert candles.CANDLE_SCHEMA is records.CANDLE_SCHEMA


def test_the_manager_is_built_on_the_assembly_and_record_layers() -> None:
    """CandleDataManager is a SnapshotAssembly, which is a SeriesRecords (one job per layer)."""
    manager = candles.CandleDataManager()
    assert isinstance(manager, assembly.SnapshotAssembly)
    assert isinstance(manager, series.SeriesRecords)
    assert candles.CandleDataManager.__mro__[1:3] == (
        assembly.SnapshotAssembly,
        series.SeriesRecords,
    )
