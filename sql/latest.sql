-- latest_candles: the newest stored candle of every series (one row per (symbol, period)).
--
-- Every stored candle is complete (the manager only hands completed candles to the store), so
-- this is also the resume point of each series: the next subscription asks for candles from
-- this `time` on (DESIGN.md "Store": the store is the truth for what we have). Tick, volume and
-- price candles can share a `time`; the newest of those has the highest `sequence` (§4.2).
CREATE OR REPLACE TEMP VIEW latest_candles AS
SELECT *
FROM candles
QUALIFY row_number() OVER (PARTITION BY symbol, period ORDER BY time DESC, sequence DESC) = 1;
