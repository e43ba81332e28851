"""One frozen, typed settings tree per process, read from ENTASIS_* environment variables
(and an optional `.env` file). Defaults are the embedded development profile; production gets
its addresses from the environment (see docker-compose.yml and docs/configuration.md).

Each component gets its own frozen section (`settings.book`, `.risk`, `.predict`, `.connector`,
`.api`, ...). A section's variable is `ENTASIS_<SECTION>_<FIELD>`: `ENTASIS_RISK_WINDOW_DAYS`
sets `settings.risk.window_days`, `ENTASIS_API_JWT_SECRET` sets `settings.api.jwt_secret`. The
same flat names work as keyword arguments (`Settings(risk_window_days=30)`), which is how tests
and child processes (`to_env`) pass them.

An ENTASIS_* variable that names no setting is refused at start (`unknown_variables`): a typo
in an operator's environment must not be accepted and silently ignored."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from infra.config.api import ApiSettings

ENV_PREFIX = "ENTASIS_"
# ENTASIS_* variables that are not settings: log level of the CLI, and the test suite's own.
NOT_SETTINGS = ("ENTASIS_LOGLEVEL", "ENTASIS_TEST_")


class Section(BaseModel):
    """A frozen group of one component's settings; unknown names are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _tuple_of_names(value: Any) -> Any:
    """`"1h, 4h"` (as an environment variable gives it) or a list -> a tuple of names."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value) if isinstance(value, list | tuple) else value


# A tuple of names, from "a, b" in the environment (not JSON).
Names = Annotated[tuple[str, ...], NoDecode]


class ClickHouseSettings(Section):
    # An HTTP(S) URL of a ClickHouse server (or of the embedded owner process, which speaks the
    # same protocol), or `chdb:///path` to open an embedded engine in this very process (only one
    # process may do that per path).
    url: str = "http://127.0.0.1:18123"
    database: str = "entasis"
    user: str = "default"
    # SecretStr: never in a repr, a log line or a validation error; readers call
    # get_secret_value() where they connect (infra/store/clickhouse.py). Empty: the embedded
    # owner's per-run password file.
    password: SecretStr = SecretStr("")


class CandleSettings(Section):
    # A window closes when max event time seen minus `lateness_ms` passes its end; a late trade
    # within `grace_ms` after that emits a new revision.
    lateness_ms: int = Field(default=2000, ge=0)
    grace_ms: int = Field(default=0, ge=0)
    # A stream with no trade for this long (wall clock) closes its windows anyway.
    idle_timeout_s: float = Field(default=10.0, gt=0)


class BookSettings(Section):
    # Top-N snapshots published on change at most every `min_interval_ms` (event time) per
    # symbol; the top `snapshot_depth` levels stored every `snapshot_every_s`.
    top_depth: int = Field(default=100, ge=1, le=100)
    min_interval_ms: int = Field(default=100, ge=0)
    snapshot_every_s: float = Field(default=10.0, gt=0)
    snapshot_depth: int = Field(default=100, ge=1, le=100)
    # A book waiting for its snapshot flushes what it buffered after this long without input;
    # stored snapshots are written `store_batch` at a time; at most `max_buffer` diffs wait for a
    # snapshot before the book is resynced.
    idle_flush_ms: int = Field(default=1000, gt=0)
    store_batch: int = Field(default=100, ge=1)
    max_buffer: int = Field(default=10_000, ge=1)


class SinkSettings(Section):
    # Write when this many rows are buffered or this much time has passed.
    batch_messages: int = Field(default=500, ge=1)
    flush_seconds: float = Field(default=0.5, gt=0)


class RiskSettings(Section):
    # Candle intervals the risk agent folds (each must divide one day), the rolling window and
    # the warm-up before a first estimate, in days; methods computed (all by default).
    intervals: Names = ("1h",)
    window_days: int = Field(default=90, ge=1)
    min_days: int = Field(default=7, ge=1)
    ewma_lambda: float = Field(default=0.94, gt=0, lt=1)
    garch_min_returns: int = Field(default=250, ge=2)
    methods: Names = ("historical", "parametric", "parametric_t", "ewma", "garch")

    _names = field_validator("intervals", "methods", mode="before")(_tuple_of_names)


class PredictSettings(Section):
    # The closed candles the models learn from, the horizons and models served, and how many
    # scored forecasts (and independent horizons of them) come before a forecast is served.
    interval: str = "1h"
    horizons: Names = ("1h", "4h", "1d")
    models: Names = ("ensemble", "lstm")
    min_scored: int = Field(default=200, ge=1)
    min_independent: int = Field(default=20, ge=0)
    # event time between checkpoints of a stream: a day, so folding a 90-day history writes 90 of
    # them, not 2160 (~0.6 MB each); a restart replays at most a day of stored candles
    checkpoint_every_s: int = Field(default=86400, ge=0)
    bootstrap_bars: int = Field(default=2000, ge=0)  # stored candles replayed into a fresh stream
    book_depth: int = Field(default=5, ge=1)  # levels per side in the imbalance feature
    load_attempts: int = Field(default=3, ge=1)
    retry_delay_s: float = Field(default=0.5, ge=0)

    _names = field_validator("horizons", "models", mode="before")(_tuple_of_names)


class PortfolioSettings(Section):
    # Paper trading: every account starts with this balance and these limits (a per-account
    # balance is set with `entasis portfolio set-balance`).
    initial_balance: Decimal = Decimal("100000")
    max_open_positions: int = Field(default=50, ge=1, le=2**31 - 1)
    max_symbol_notional: Decimal = Decimal("1000000")
    # HMAC key the API signs every command with and the portfolio agent checks (issue 18, finding
    # 7: the broker takes any local producer). Unset: a random key in `<data_dir>/portfolio-signing.key`
    # (mode 0600), shared by the API and the worker of one data directory; required in production,
    # where they do not share a directory. At least 32 characters.
    signing_key: SecretStr | None = Field(default=None, min_length=32)
    # HMAC key of the operator's commands (`set_balance`, `entasis portfolio set-balance`) on their own
    # topic `pf.admin.v1`: the worker checks it, the CLI signs with it, the API never holds it, so the
    # API's key cannot set a balance. Unset: a random key in `<data_dir>/portfolio-admin.key` (0600);
    # required in production. At least 32 characters.
    admin_key: SecretStr | None = Field(default=None, min_length=32)
    # The portfolio agent stores every changed account of an events partition each time this many
    # events of it were folded (ClickHouse `portfolio_snapshots`): a restart or a rebalance folds at
    # most about this many events per partition instead of the whole `pf.events.v1`.
    snapshot_every: int = Field(default=1000, ge=1)


class ConnectorSettings(Section):
    # Connectors publish the top `book_depth` levels at most every `book_interval_ms`; a socket
    # silent for `stale_seconds` is closed (`feed_stale`) and reconnected with backoff up to
    # `backoff_max_seconds`; subscriptions at start-up are `stagger_ms` apart (venue rate limits).
    book_depth: int = Field(default=100, ge=1, le=100)
    book_interval_ms: int = Field(default=100, ge=10)
    stale_seconds: float = Field(default=15.0, gt=0)
    backoff_max_seconds: float = Field(default=30.0, gt=0)
    stagger_ms: int = Field(default=250, ge=0)
    # `/metrics`, `/healthz`, `/readyz` of `entasis connect` (and of `up --venues`' feed) on
    # `metrics_host:metrics_port`; 0 = not served. Loopback by default: no auth, as the worker's.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"


class VwapSettings(Section):
    # The rolling VWAP agent's window, in minutes of final 1m candles.
    window_minutes: int = Field(default=15, ge=1, le=10_080)


class WorkerSettings(Section):
    id: str = "entasis-worker"
    web_port: int = 16066
    # `/metrics`, `/healthz`, `/readyz` of the worker on `metrics_host:metrics_port`; 0 = not served
    # (the metrics are still counted, for tests). Loopback by default: the worker has no auth.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # False: no metric is counted at all (no sink timing, no per-batch observation; the
    # endpoints still answer, with what is read at scrape time). For measuring what they cost.
    metrics: bool = True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", frozen=True, extra="forbid",
        env_nested_delimiter="_", env_nested_max_split=1,
    )
    SECTIONS: ClassVar[tuple[str, ...]] = (
        "clickhouse", "candle", "book", "sink", "risk", "predict", "portfolio", "connector", "vwap", "worker", "api",
    )

    profile: Literal["dev", "production"] = "dev"

    # Broker. `broker_flavour=tansu` turns on the embedded-broker workarounds (see
    # streams/app.py); they never apply to a real Kafka.
    kafka_bootstrap: str = "127.0.0.1:19092"
    # How every Kafka client of this process authenticates (infra/config/kafka.py). PLAINTEXT: not
    # at all (the embedded broker, on loopback). SASL_PLAINTEXT / SASL_SSL: as `kafka_username` with
    # `kafka_password` and `kafka_sasl_mechanism` (docker-compose: SCRAM-SHA-512 on every listener a
    # client can reach, one user per service, ACLs per user); SASL_SSL checks the broker's
    # certificate against `kafka_ssl_cafile` (or the system's authorities).
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_username: str = ""
    kafka_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: Path | None = None
    broker_flavour: Literal["tansu", "kafka"] = "tansu"
    topic_namespace: str = ""  # replays use their own, e.g. "replay-0001."
    topic_replication: int = Field(default=1, ge=1)  # 3 on a real cluster

    # Where `entasis up` keeps the embedded database and its logs.
    data_dir: Path = Path(".entasis")

    # Worker state (open candles) is checkpointed this often; only then are inputs acknowledged.
    checkpoint_every_s: float = Field(default=1.0, gt=0)
    # No trade for this long marks the stream's feed stale (MARKET_002 in the API); 0 disables.
    stale_feed_seconds: float = Field(default=30.0, ge=0)

    # Live venues: a comma-separated list of `venue:SYMBOL` (e.g. `binance:ETH-USDT,kraken:BTC-USD`;
    # `entasis venues check` lists the venues). Empty: `entasis up` runs the simulated feed.
    venues: str = ""
    # Base URL of a local exchange double (`entasis double`) to reach instead of the venues.
    exchange_endpoint: str = ""

    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    candle: CandleSettings = Field(default_factory=CandleSettings)
    book: BookSettings = Field(default_factory=BookSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    risk: RiskSettings = Field(default_factory=RiskSettings)
    predict: PredictSettings = Field(default_factory=PredictSettings)
    portfolio: PortfolioSettings = Field(default_factory=PortfolioSettings)
    connector: ConnectorSettings = Field(default_factory=ConnectorSettings)
    vwap: VwapSettings = Field(default_factory=VwapSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_names(cls, data: Any) -> Any:
        """`risk_window_days=30` -> `risk={"window_days": 30}`: the flat names of the environment
        work as keyword arguments too. The conventional `REDIS_URL` fills `api.redis_url` when
        `ENTASIS_API_REDIS_URL` is not set."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for key in [k for k in data if k not in cls.model_fields]:
            section, _, name = key.partition("_")
            if section in cls.SECTIONS and name:
                current = data.get(section)
                merged = dict(current) if isinstance(current, Mapping) else (
                    current.model_dump() if isinstance(current, BaseModel) else {})
                merged[name] = data.pop(key)
                data[section] = merged
        api = data.get("api")
        if os.environ.get("REDIS_URL") and not (isinstance(api, Mapping) and api.get("redis_url")) and not isinstance(
            api, BaseModel
        ):
            data["api"] = {**(api or {}), "redis_url": os.environ["REDIS_URL"]}
        return data

    @model_validator(mode="after")
    def _kafka_credentials(self) -> Settings:
        if self.kafka_security_protocol != "PLAINTEXT" and not (
                self.kafka_username and self.kafka_password.get_secret_value()):
            raise ValueError(f"ENTASIS_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                             "ENTASIS_KAFKA_USERNAME and ENTASIS_KAFKA_PASSWORD")
        return self

    def to_env(self) -> dict[str, str]:
        """These settings as ENTASIS_* variables, to hand them to a child process."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, BaseModel):
                for field_name in type(value).model_fields:
                    _put(env, f"{ENV_PREFIX}{name.upper()}_{field_name.upper()}", getattr(value, field_name))
            else:
                _put(env, f"{ENV_PREFIX}{name.upper()}", value)
        return env


def _put(env: dict[str, str], key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    elif isinstance(value, list | tuple):
        value = ",".join(str(item) for item in value)
    env[key] = str(value)


def setting_names() -> list[str]:
    """Every ENTASIS_* variable that names a setting."""
    names = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if name in Settings.SECTIONS and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += [f"{ENV_PREFIX}{name.upper()}_{sub.upper()}" for sub in annotation.model_fields]
        else:
            names.append(f"{ENV_PREFIX}{name.upper()}")
    return names


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The ENTASIS_* variables of `environ` that name no setting, each with the closest known names."""
    known = set(setting_names())
    problems = []
    for key in sorted(environ):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper.startswith(NOT_SETTINGS):
            continue
        close = difflib.get_close_matches(upper, known, n=2)
        problems.append(f"{key}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    return problems


class UnknownSettings(ValueError):
    """The environment sets ENTASIS_* variables that are no setting."""


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    unknown = unknown_variables(os.environ if environ is None else environ)
    if unknown:
        raise UnknownSettings(
            "unknown ENTASIS_* variables (no such setting; see docs/configuration.md): " + ", ".join(unknown)
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    check_environment()
    return Settings()


PORTFOLIO_SIGNING_KEY_FILE = "portfolio-signing.key"
PORTFOLIO_ADMIN_KEY_FILE = "portfolio-admin.key"
DEV_JWT_SECRET_FILE = "jwt-dev.secret"


def portfolio_signing_key(settings: Settings) -> bytes:
    """The key portfolio commands are signed with: the setting, else (not in production) the
    data directory's random key, created on first use with mode 0600 in a 0700 directory, so
    only the user running the API and the worker can read it."""
    configured = settings.portfolio.signing_key
    if configured is not None:
        return configured.get_secret_value().encode()
    if settings.profile == "production":
        raise ValueError("ENTASIS_PORTFOLIO_SIGNING_KEY must be set in production (the API and the worker share it)")
    return data_dir_secret(settings, PORTFOLIO_SIGNING_KEY_FILE)


def portfolio_admin_key(settings: Settings) -> bytes:
    """The key of the operator's portfolio commands (`set_balance` on `pf.admin.v1`): the setting,
    else (not in production) the data directory's random key (0600), as `portfolio_signing_key`."""
    configured = settings.portfolio.admin_key
    if configured is not None:
        return configured.get_secret_value().encode()
    if settings.profile == "production":
        raise ValueError("ENTASIS_PORTFOLIO_ADMIN_KEY must be set in production (the worker and the operator share it)")
    return data_dir_secret(settings, PORTFOLIO_ADMIN_KEY_FILE)


def development_jwt_secret(settings: Settings) -> str:
    """The HS256 secret of development tokens (`entasis token` without ENTASIS_API_JWT_SECRET, and an
    API started with --dev, as `entasis up` does): random per data directory, created on first use
    (0600 in a 0700 directory), so a token minted for one data directory is refused by the API of
    another, and another OS user cannot mint one. Never in production, which must configure its
    secret."""
    if settings.profile == "production":
        raise ValueError("ENTASIS_API_JWT_SECRET must be set in production (no development secret there)")
    return data_dir_secret(settings, DEV_JWT_SECRET_FILE).decode()


def data_dir_secret(settings: Settings, name: str) -> bytes:
    """`<data_dir>/<name>`: 32 random bytes as hex, created on first use with mode 0600 in a 0700
    directory, so only the user running the processes of this data directory can read it."""
    directory = Path(settings.data_dir)
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # the mode passed to mkdir goes through the umask
    path = directory / name
    if not path.exists():
        # written whole under a temporary name, then linked in: a process racing us either wins
        # the link or reads a complete file, never half of one
        temporary = directory / f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, os.urandom(32).hex().encode())
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise ValueError(f"{path} holds no usable key (delete it to make a new one)")
    return key
