-- The candles table of the DuckLake store (pipeline/store/writer.py runs this after `USE lake`;
-- pipeline/schema.py is the same table as polars types, and tests/test_schema.py keeps them equal).
--
-- One row per candle, keyed by (symbol, period, time, sequence): `symbol` is the streamer symbol
-- (CandleSymbol.base, e.g. 'AAPL', '/ESZ25:XCME'), `period` the store form of the candle period
-- with its attributes (CandleSymbol.period_label, e.g. '5m', '1d', '5m,tho=true'), `time` the
-- period start in UTC (dxlink-protocol.md §4.1), `sequence` the low 22 bits of the event index
-- (§4.2): 0 for time-based periods; tick, volume and price candles that start in the same
-- millisecond differ only by it. It is the last column because stores made before it existed
-- get it by ALTER TABLE ADD COLUMN (pipeline/store/lake.py), which appends; one order for both.
-- There is no PRIMARY KEY: DuckLake has none, and
-- uniqueness is kept by the single writer's upsert (dedupe the batch, then delete + insert in one
-- transaction). `revision` counts how often the candle changed after it was first handed to the
-- store; `ingested_at` is when this version was written.
--
-- Prices and volumes are DOUBLE because the feed sends doubles (NaN when absent, §3.5).
CREATE TABLE IF NOT EXISTS candles (
    symbol         VARCHAR     NOT NULL,
    period         VARCHAR     NOT NULL,
    time           TIMESTAMPTZ NOT NULL,
    open           DOUBLE,
    high           DOUBLE,
    low            DOUBLE,
    close          DOUBLE,
    volume         DOUBLE,
    vwap           DOUBLE,
    count          BIGINT,
    bid_volume     DOUBLE,
    ask_volume     DOUBLE,
    imp_volatility DOUBLE,
    open_interest  DOUBLE,
    revision       BIGINT      NOT NULL,
    ingested_at    TIMESTAMPTZ NOT NULL,
    sequence       INTEGER     NOT NULL DEFAULT 0
);

-- Files are written sorted by series and time, so per-file min/max statistics prune reads of one
-- series or one time range (DuckLake applies this on insert and on compaction).
ALTER TABLE candles SET SORTED BY (symbol, period, time, sequence);
