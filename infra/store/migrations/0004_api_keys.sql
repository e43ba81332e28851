-- API keys (`entasis keys create|list|revoke`; checked by the API on every X-API-Key request).
-- Only a salted HMAC-SHA256 of each key's secret is stored (api/keys.py says why), never the key.
-- key_id is the public part of the key and the lookup key. A revocation writes the same row again
-- with revoked_at set and a higher version; ReplacingMergeTree keeps the newest, readers use FINAL.
-- allowed_cidrs empty: the deployment-wide allowlist alone applies to the key.
CREATE TABLE IF NOT EXISTS api_keys
(
    key_id        String,
    account       String,
    key_hash      String,
    scopes        Array(LowCardinality(String)),
    allowed_cidrs Array(String),
    label         String,
    created_at    DateTime64(3, 'UTC'),
    revoked_at    Nullable(DateTime64(3, 'UTC')),
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_id;
