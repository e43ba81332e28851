"""Serving the API: `run()` is what the CLI calls; it refuses unsafe settings before serving.

Outside development (`entasis api` without `--dev`) the server will not start
- without a TLS certificate and key (`--tls-cert/--tls-key`, `ENTASIS_API_TLS_CERT/_KEY`): no
  plain HTTP;
- with an empty, default or short (< 32 bytes) HS256 secret (`ENTASIS_API_JWT_SECRET`);
- without a client allowlist (`ENTASIS_API_ALLOWLIST`), or with a wildcard one (`0.0.0.0/0`,
  `::/0`), or with a wildcard trusted-proxy list (anyone could then forge X-Forwarded-For).
Broken settings (half a TLS pair, unreadable files, RS256 without a public key, an unreachable
Redis) stop it in development too. `--dev` relaxes the first list only, and says so in the log.
"""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from api.app import create_app
from api.auth import verification_key
from api.network import is_wildcard
from api.tls import check_tls_files
from infra.config.api import DEV_JWT_SECRET, ApiSettings
from infra.config.settings import Settings, get_settings

logger = logging.getLogger("api")

MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash output
_DEFAULT_SECRETS = frozenset({"secret", "changeme", "change-me", "change_me", "password", "jwt-secret", DEV_JWT_SECRET})


class UnsafeSettings(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"refusing to start the API:\n{lines}")


def startup_problems(api: ApiSettings, *, dev: bool) -> list[str]:
    """Everything that stops the server from starting with these settings (empty: it may)."""
    problems: list[str] = []
    if (api.tls_cert is None) != (api.tls_key is None):
        problems.append("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
    if api.tls_cert is not None and api.tls_key is not None:
        problem = check_tls_files(api.tls_cert, api.tls_key)
        if problem:
            problems.append(problem)
    if api.jwt_algorithm == "RS256":
        try:
            if verification_key(api, dev=dev) is None:
                problems.append("RS256 needs a public key: ENTASIS_API_JWT_PUBLIC_KEY_PATH")
        except ValueError as exc:
            problems.append(str(exc))
    if api.redis_url and not _redis_reachable(api.redis_url):
        problems.append("the rate-limit Redis (ENTASIS_API_REDIS_URL or REDIS_URL) does not answer")
    if dev:
        return problems

    hint = " (allowed only with --dev)"
    if not api.tls_enabled:
        problems.append("no TLS certificate and key: plain HTTP" + hint)
    if api.jwt_algorithm == "HS256":
        secret = api.jwt_secret.get_secret_value()
        if not secret:
            problems.append("ENTASIS_API_JWT_SECRET is empty" + hint)
        elif secret.lower() in _DEFAULT_SECRETS:
            problems.append("ENTASIS_API_JWT_SECRET is a default value" + hint)
        elif len(secret.encode()) < MIN_SECRET_BYTES:
            problems.append(f"ENTASIS_API_JWT_SECRET is shorter than {MIN_SECRET_BYTES} bytes" + hint)
    if not api.allowlist:
        problems.append("no client allowlist (ENTASIS_API_ALLOWLIST): every address would be allowed" + hint)
    elif any(is_wildcard(n) for n in api.allowlist):
        problems.append("the client allowlist contains a wildcard (0.0.0.0/0 or ::/0)" + hint)
    if any(is_wildcard(n) for n in api.trusted_proxies):
        problems.append(
            "ENTASIS_API_TRUSTED_PROXIES contains a wildcard: any client could forge X-Forwarded-For" + hint
        )
    return problems


def dev_relaxations(api: ApiSettings) -> list[str]:
    """What --dev lets through with these settings, for the start-up warning."""
    relaxed = startup_problems(api, dev=False)
    strict = set(startup_problems(api, dev=True))
    notes = [p.removesuffix(" (allowed only with --dev)") for p in relaxed if p not in strict]
    if api.jwt_algorithm == "HS256" and not api.jwt_secret.get_secret_value():
        notes.append("tokens are checked with the development secret: `entasis token` issues them")
    return notes


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url.removeprefix("async+"), socket_connect_timeout=2, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure to connect or authenticate is "does not answer"
        return False


def uvicorn_config(
    app: Any, host: str, port: int, api_settings: ApiSettings, log_level: str = "info"
) -> uvicorn.Config:
    """One uvicorn worker (uvloop + httptools), HTTPS when a certificate is configured."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level=log_level,
        access_log=api_settings.access_log,
        # The X-Request-ID middleware owns request identity; uvicorn's Server header is noise.
        server_header=False,
        ssl_certfile=str(api_settings.tls_cert) if api_settings.tls_enabled else None,
        ssl_keyfile=str(api_settings.tls_key) if api_settings.tls_enabled else None,
        # X-Forwarded-For is ours to interpret (api/network.py, trusted proxies only); uvicorn's
        # own proxy-header handling would rewrite the peer address before we see it.
        proxy_headers=False,
    )


def run(
    host: str | None = None,
    port: int | None = None,
    *,
    settings: Settings | None = None,
    api_settings: ApiSettings | None = None,
    log_level: str = "info",
    dev: bool = False,
) -> None:
    """Serve the API in this process until interrupted; raises UnsafeSettings before serving.

    `host`/`port` default to `settings.api.host`/`settings.api.port`. One worker on purpose:
    an embedded `chdb://` database may be opened by one process only; scale out with more
    processes against a ClickHouse server instead (and a Redis URL, so they share rate limits)."""
    settings = settings if settings is not None else get_settings()
    api_settings = api_settings if api_settings is not None else settings.api
    problems = startup_problems(api_settings, dev=dev)
    if problems:
        raise UnsafeSettings(problems)
    if dev:
        notes = dev_relaxations(api_settings)
        logger.warning(
            "DEVELOPMENT MODE (--dev): never expose this server.%s",
            "".join(f"\n  - {note}" for note in notes),
        )
    app = create_app(settings=settings, api_settings=api_settings, dev=dev)
    host = host if host is not None else api_settings.host
    port = port if port is not None else api_settings.port
    scheme = "https" if api_settings.tls_enabled else "http"
    logger.info("serving the API on %s://%s:%s (docs at /docs)", scheme, host, port)
    uvicorn.Server(uvicorn_config(app, host, port, api_settings, log_level)).run()
