-- candle_gaps: missing periods between consecutive stored candles of a series.
--
-- Why "between consecutive candles" and not "every expected period start": markets close at
-- night, at weekends and on holidays, and a period with no trades yields no candle at all
-- (dxlink-protocol.md §6.4). A calendar of expected starts would need a session calendar per
-- instrument, which the store does not have. Instead each row here says: after the candle at
-- `gap_start - period` the next stored candle is at `gap_end`, so `missing_periods` period
-- starts in between hold nothing. Overnight and weekend closures therefore show up as (large)
-- gaps; filter them with `missing_periods`, a time-of-day condition, or a join to a calendar.
--
-- Only fixed-length periods have gaps: seconds, minutes, hours, days and weeks
-- (period labels such as '15s', '5m', '1h', '1d', '1w', also with attributes: '5m,tho=true').
-- Months, years, option-expiration months and tick/volume/price candles have no fixed length
-- and are left out (they are also the only candles whose `sequence` is not 0: several can share a
-- millisecond, §4.2). Candles aligned to the session (a=s) are measured from the previous candle,
-- so their offset from midnight does not matter.
CREATE OR REPLACE TEMP VIEW candle_gaps AS
WITH labelled AS (
    SELECT
        symbol,
        period,
        time,
        -- '5m,tho=true' -> value 5, unit 'm'; NULL for labels without a fixed length.
        TRY_CAST(regexp_extract(period, '^([0-9]+(\.[0-9]+)?)(s|m|h|d|w)(,|$)', 1) AS DOUBLE)
            AS period_value,
        regexp_extract(period, '^([0-9]+(\.[0-9]+)?)(s|m|h|d|w)(,|$)', 3) AS period_unit
    FROM candles
),
sized AS (
    SELECT
        symbol,
        period,
        time,
        CAST(period_value * CASE period_unit
            WHEN 's' THEN 1000
            WHEN 'm' THEN 60000
            WHEN 'h' THEN 3600000
            WHEN 'd' THEN 86400000
            WHEN 'w' THEN 604800000
        END AS BIGINT) AS period_ms
    FROM labelled
    WHERE period_unit <> ''
),
paired AS (
    SELECT
        symbol,
        period,
        period_ms,
        lag(time) OVER (PARTITION BY symbol, period ORDER BY time) AS previous_time,
        time
    FROM sized
)
SELECT
    symbol,
    period,
    previous_time + to_milliseconds(period_ms) AS gap_start,
    time AS gap_end,
    -- Whole periods that fit between the two candles; a fraction left over (a candle that
    -- does not sit on the previous one's grid) is not a missing period.
    (epoch_ms(time) - epoch_ms(previous_time)) // period_ms - 1 AS missing_periods
FROM paired
WHERE previous_time IS NOT NULL
  AND (epoch_ms(time) - epoch_ms(previous_time)) // period_ms > 1;
