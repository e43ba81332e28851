"""The API's section of the settings tree (`settings.api`, variables ENTASIS_API_*): listen
address, credentials, network, rate limit, TLS.

Lists (`ENTASIS_API_ALLOWLIST`, `ENTASIS_API_TRUSTED_PROXIES`) are comma-separated CIDRs
(`10.0.0.0/8, 2001:db8::/32`); a bare address means that one host. The Redis URL is read from
`ENTASIS_API_REDIS_URL`, or from the conventional `REDIS_URL` when that is not set.

Which values are unsafe outside development (no TLS, an empty or default JWT secret, a
wildcard allowlist) is decided in `api.main.startup_problems`, so a test can build an app with
any settings while a served process refuses to start with them unless `--dev` is given."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Any, Literal

from limits import parse as parse_rate_limit
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

Network = IPv4Network | IPv6Network

# The constant development secret of earlier versions, published in this file: nothing signs or
# checks with it any more (a --dev server and `entasis token` use a random secret per data directory,
# `infra.config.settings.development_jwt_secret`); `startup_problems` refuses it as a configured
# secret, with every secret shorter than 32 bytes.
DEV_JWT_SECRET = "entasis-development-secret-never-use-in-production"


def _networks(value: Any) -> Any:
    if isinstance(value, str):
        value = [part for part in value.replace(";", ",").split(",") if part.strip()]
    if isinstance(value, list | tuple):
        # strict=False: `10.0.0.1/8` means 10.0.0.0/8, as every firewall reads it.
        return [ip_network(item.strip() if isinstance(item, str) else item, strict=False) for item in value]
    return value


class ApiSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8000

    # How long the set of served symbols is reused before asking the database again: a new
    # symbol becomes visible this late, and unknown-symbol requests cost no query meanwhile.
    symbols_cache_seconds: float = Field(default=5.0, ge=0)
    # uvicorn's per-request access log costs more than a price lookup; off unless asked for.
    access_log: bool = False

    # --- JWT -----------------------------------------------------------------------------
    jwt_algorithm: Literal["HS256", "RS256"] = "HS256"
    jwt_secret: SecretStr = SecretStr("")  # HS256 only
    jwt_public_key_path: Path | None = None  # RS256: verifies
    jwt_private_key_path: Path | None = None  # RS256: signs (only `entasis token` needs it)
    # Clock skew tolerated on exp, nbf and iat between the issuer and this server.
    jwt_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    jwt_audience: str | None = None  # checked when set
    jwt_issuer: str | None = None  # checked when set

    # --- network -------------------------------------------------------------------------
    # Deployment-wide client allowlist; empty means "not configured" (every address), which only
    # a --dev server accepts.
    allowlist: Annotated[list[Network], NoDecode] = Field(default_factory=list)
    # Peers whose X-Forwarded-For is believed; nobody else's is read at all.
    trusted_proxies: Annotated[list[Network], NoDecode] = Field(default_factory=list)

    # --- rate limit ----------------------------------------------------------------------
    # `limits` notation; the contract is 1000/minute, other values are for operators and tests.
    rate_limit: str = "1000/minute"
    # ENTASIS_API_REDIS_URL, or the conventional REDIS_URL when that is not set.
    redis_url: str | None = None

    # A cheap flood cap per client address, counted in this process before any credential check
    # (and before the shared limiter above): beyond it a request costs one dictionary lookup. Every
    # request counts, authenticated or not, so it sits well above one account's limit to leave
    # room for several accounts behind one address (a NAT, an office).
    address_budget: str = "6000/minute"

    # --- API keys ------------------------------------------------------------------------
    # A key's row is reused this long: a revocation takes effect in every API process within it.
    api_key_cache_seconds: float = Field(default=2.0, ge=0, le=60)

    # --- connections and requests --------------------------------------------------------
    # Open connections (WebSockets included) beyond which uvicorn answers 503 at once.
    limit_concurrency: int = Field(default=4096, ge=1)
    # An idle keep-alive connection is closed after this long.
    keep_alive_seconds: int = Field(default=5, ge=1, le=300)
    # A request's line and headers, and then its body, must each arrive within this long: a client
    # that trickles bytes (slowloris) cannot hold a connection open for ever.
    receive_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Request line plus headers, in bytes, and the number of header fields: beyond them, 400.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    max_header_count: int = Field(default=100, ge=8, le=1000)
    # Request bodies (orders are a few hundred bytes): larger ones get 413 before the route runs.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)

    # --- WebSocket -----------------------------------------------------------------------
    # Open /ws/market sockets per account and in this process; the next one is closed at once.
    ws_max_sockets_per_account: int = Field(default=10, ge=1)
    ws_max_sockets: int = Field(default=2000, ge=1)
    # A socket whose client sent nothing (not even `{"action": "ping"}`) for this long is closed.
    ws_idle_seconds: float = Field(default=600.0, gt=0)

    # --- TLS and docs --------------------------------------------------------------------
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # /docs and /openapi.json without credentials (still behind the allowlist and rate limit).
    public_docs: bool = True

    _split_networks = field_validator("allowlist", "trusted_proxies", mode="before")(_networks)

    @field_validator("rate_limit", "address_budget")
    @classmethod
    def _valid_rate_limit(cls, value: str) -> str:
        try:
            parse_rate_limit(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit such as '1000/minute': {value!r}") from exc
        return value

    @field_validator("redis_url")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None
