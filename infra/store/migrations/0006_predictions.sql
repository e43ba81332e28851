-- The prediction agent (streams/agents/predict.py): every forecast, its realised outcome, and the
-- models' checkpoints. Idempotent: a re-delivered or replayed event has the same key and
-- collapses into one row (readers use FINAL); forecasts are deterministic functions of the
-- candles, so a duplicate carries the same values.

-- One row per forecast: stream, candle interval, model, horizon and as-of time (the close time of
-- the candle it was issued at). The scores are the model's prequential scores on that horizon at
-- issue time (over outcomes known then): `recent_*` over the last scoring window. Forecast
-- columns are NULL while the model's features warm up; only `status = 'ready'` rows are served.
CREATE TABLE IF NOT EXISTS predictions
(
    venue                    LowCardinality(String),
    symbol                   LowCardinality(String),
    interval                 LowCardinality(String),
    model                    LowCardinality(String),
    horizon                  LowCardinality(String),
    as_of                    DateTime64(9, 'UTC'),
    target_ts                DateTime64(9, 'UTC'),
    model_version            LowCardinality(String),
    features_version         LowCardinality(String),
    price                    Decimal(38, 8),
    prediction               Nullable(Decimal(38, 8)),
    log_return               Nullable(Float64),
    raw_log_return           Nullable(Float64),
    direction                Int8,
    confidence               Nullable(Float64),
    status                   LowCardinality(String),
    remaining_candles        UInt32,
    scored                   UInt32,
    mae                      Nullable(Float64),
    mae_naive                Nullable(Float64),
    skill                    Nullable(Float64),
    r2                       Nullable(Float64),
    hit_rate                 Nullable(Float64),
    up_rate                  Nullable(Float64),
    mean_confidence          Nullable(Float64),
    calibration_error        Nullable(Float64),
    recent_scored            UInt32,
    recent_mae               Nullable(Float64),
    recent_mae_naive         Nullable(Float64),
    recent_skill             Nullable(Float64),
    recent_r2                Nullable(Float64),
    recent_hit_rate          Nullable(Float64),
    recent_up_rate           Nullable(Float64),
    recent_mean_confidence   Nullable(Float64),
    recent_calibration_error Nullable(Float64),
    recv_ts                  DateTime64(9, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(as_of)
ORDER BY (venue, symbol, model, horizon, interval, as_of);

-- A forecast's realised value, written when its horizon has passed (same key as the forecast).
CREATE TABLE IF NOT EXISTS prediction_outcomes
(
    venue               LowCardinality(String),
    symbol              LowCardinality(String),
    interval            LowCardinality(String),
    model               LowCardinality(String),
    horizon             LowCardinality(String),
    as_of               DateTime64(9, 'UTC'),
    target_ts           DateTime64(9, 'UTC'),
    price               Decimal(38, 8),
    realised_price      Decimal(38, 8),
    realised_log_return Float64,
    log_return          Float64,
    direction           Int8,
    confidence          Float64,
    hit                 UInt8,
    recv_ts             DateTime64(9, 'UTC')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(as_of)
ORDER BY (venue, symbol, model, horizon, interval, as_of);

-- The audit trail: every forecast with its realised value (NULL until its horizon has passed).
CREATE VIEW IF NOT EXISTS prediction_audit AS
SELECT
    p.venue AS venue, p.symbol AS symbol, p.interval AS interval, p.model AS model, p.horizon AS horizon,
    p.as_of AS as_of, p.target_ts AS target_ts, p.model_version AS model_version,
    p.features_version AS features_version, p.price AS price, p.prediction AS prediction,
    p.log_return AS log_return, p.direction AS direction, p.confidence AS confidence, p.status AS status,
    o.realised_price AS realised_price, o.realised_log_return AS realised_log_return, o.hit AS hit
FROM (SELECT * FROM predictions FINAL) AS p
LEFT JOIN (SELECT * FROM prediction_outcomes FINAL) AS o
    ON p.venue = o.venue AND p.symbol = o.symbol AND p.interval = o.interval AND p.model = o.model
   AND p.horizon = o.horizon AND p.as_of = o.as_of
SETTINGS join_use_nulls = 1;

-- Model checkpoints of the prediction agent: one per stream and candle interval, the newest
-- (by the last candle folded into it) replacing older ones. `payload` is the base64 of the
-- predictor's checkpoint bytes (streams/core/predict/engine.py: format header, digest, pickle
-- of the river models and the network's state_dict).
CREATE TABLE IF NOT EXISTS prediction_checkpoints
(
    venue        LowCardinality(String),
    symbol       LowCardinality(String),
    interval     LowCardinality(String),
    last_open_ts DateTime64(9, 'UTC'),
    bytes        UInt32,
    payload      String,
    saved_at     DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(last_open_ts)
ORDER BY (venue, symbol, interval);
