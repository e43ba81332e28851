"""One frozen settings object per process, read from ENTASIS_* environment variables
(and an optional `.env` file). Defaults are the embedded development profile; production
gets its addresses from the environment (see docker-compose.yml)."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENTASIS_", env_file=".env", frozen=True, extra="ignore")

    profile: Literal["dev", "production"] = "dev"

    # Broker. `broker_flavour=tansu` turns on the embedded-broker workarounds (see
    # streams/app.py); they never apply to a real Kafka.
    kafka_bootstrap: str = "127.0.0.1:19092"
    broker_flavour: Literal["tansu", "kafka"] = "tansu"
    topic_namespace: str = ""  # replays use their own, e.g. "replay-0001."
    topic_replication: int = Field(default=1, ge=1)  # 3 on a real cluster

    # Database: an HTTP(S) URL of a ClickHouse server (or of the embedded owner process,
    # which speaks the same protocol), or `chdb:///path` to open an embedded engine in
    # this very process (only one process may do that per path).
    clickhouse_url: str = "http://127.0.0.1:18123"
    clickhouse_database: str = "entasis"
    clickhouse_user: str = "default"
    clickhouse_password: str = ""

    # Where `entasis up` keeps the embedded database and its logs.
    data_dir: Path = Path(".entasis")

    # Candles: a window closes when max event time seen minus `candle_lateness_ms` passes
    # its end; a late trade within `candle_grace_ms` after that emits a new revision.
    candle_lateness_ms: int = Field(default=2000, ge=0)
    candle_grace_ms: int = Field(default=0, ge=0)
    # A stream with no trade for this long (wall clock) closes its windows anyway.
    candle_idle_timeout_s: float = Field(default=10.0, gt=0)
    # Worker state (open candles) is checkpointed this often; only then are inputs acknowledged.
    checkpoint_every_s: float = Field(default=1.0, gt=0)
    # No trade for this long marks the stream's feed stale (MARKET_002 in the API); 0 disables.
    stale_feed_seconds: float = Field(default=30.0, ge=0)

    # Order books: top-N snapshots published on change at most every `book_min_interval_ms`
    # (event time) per symbol; the top 100 levels stored every `book_snapshot_every_s`.
    book_top_depth: int = Field(default=20, ge=1, le=100)
    book_min_interval_ms: int = Field(default=100, ge=0)
    book_snapshot_every_s: float = Field(default=10.0, gt=0)

    # Sink batching: write when this many rows are buffered or this much time has passed.
    sink_batch_messages: int = Field(default=500, ge=1)
    sink_flush_seconds: float = Field(default=0.5, gt=0)

    # Paper trading: every account starts with this balance and these limits (a per-account
    # balance is set with `entasis portfolio set-balance`).
    portfolio_initial_balance: Decimal = Decimal("100000")
    portfolio_max_open_positions: int = Field(default=50, ge=1)
    portfolio_max_symbol_notional: Decimal = Decimal("1000000")

    # Live venues: a comma-separated list of `venue:SYMBOL` (e.g. `binance:ETH-USDT,kraken:BTC-USD`;
    # `entasis venues check` lists the venues). Empty: `entasis up` runs the simulated feed.
    venues: str = ""
    # Base URL of a local exchange double (`entasis double`) to reach instead of the venues.
    exchange_endpoint: str = ""
    # Connectors publish the top `connector_book_depth` levels at most every
    # `connector_book_interval_ms`; a socket silent for `connector_stale_seconds` is closed
    # (`feed_stale`) and reconnected with backoff up to `connector_backoff_max_seconds`;
    # subscriptions at start-up are `connector_stagger_ms` apart (venue rate limits).
    connector_book_depth: int = Field(default=100, ge=1, le=100)
    connector_book_interval_ms: int = Field(default=100, ge=10)
    connector_stale_seconds: float = Field(default=15.0, gt=0)
    connector_backoff_max_seconds: float = Field(default=30.0, gt=0)
    connector_stagger_ms: int = Field(default=250, ge=0)

    worker_id: str = "entasis-worker"
    worker_web_port: int = 16066

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    def to_env(self) -> dict[str, str]:
        """These settings as ENTASIS_* variables, to hand them to a child process."""
        return {f"ENTASIS_{name.upper()}": str(value) for name, value in self.model_dump().items()}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
