-- resample(series_symbol, source_period, bucket): candles of one series rolled up into wider
-- buckets, e.g. 1-minute candles into 5-minute or 1-hour bars:
--
--     SELECT * FROM resample('AAPL', '1m', INTERVAL 5 MINUTE);
--     SELECT * FROM resample('AAPL', '1m', INTERVAL 1 HOUR) WHERE time >= '2025-08-27';
--
-- Buckets start at UTC multiples of `bucket` (time_bucket's default origin; the session sets
-- TimeZone to UTC). Open is the first candle's open and close the last candle's close; high,
-- low, volume, count and the bid/ask volumes aggregate over the bucket; vwap is the
-- volume-weighted mean of the candles' vwaps. `candles` says how many source candles made the
-- bucket, so a partial bucket (missing minutes, see candle_gaps) is visible, not hidden.
-- NaN values (fields the feed did not send, §3.5) are ignored by the aggregates. Candles that
-- share a `time` (tick, volume and price periods) are ordered by `sequence` (§4.2).
CREATE OR REPLACE TEMP MACRO resample(series_symbol, source_period, bucket) AS TABLE
SELECT
    symbol,
    source_period AS source_period,
    time_bucket(bucket, time) AS time,
    arg_min(open, (time, sequence)) AS open,
    max(high) FILTER (WHERE NOT isnan(high)) AS high,
    min(low) FILTER (WHERE NOT isnan(low)) AS low,
    arg_max(close, (time, sequence)) AS close,
    sum(volume) FILTER (WHERE NOT isnan(volume)) AS volume,
    sum(vwap * volume) FILTER (WHERE NOT isnan(vwap) AND NOT isnan(volume))
        / nullif(sum(volume) FILTER (WHERE NOT isnan(vwap) AND NOT isnan(volume)), 0) AS vwap,
    CAST(sum(count) AS BIGINT) AS count,
    sum(bid_volume) FILTER (WHERE NOT isnan(bid_volume)) AS bid_volume,
    sum(ask_volume) FILTER (WHERE NOT isnan(ask_volume)) AS ask_volume,
    count(*) AS candles
FROM candles
WHERE symbol = series_symbol AND period = source_period
GROUP BY symbol, time_bucket(bucket, time)
ORDER BY time;
