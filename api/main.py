"""Serving the API: `run()` is what the CLI calls; it refuses unsafe settings before serving.

Outside development (`entasis api` without `--dev`) the server will not start
- without a TLS certificate and key (`--tls-cert/--tls-key`, `ENTASIS_API_TLS_CERT/_KEY`): no
  plain HTTP;
- with an empty, default or short (< 32 bytes) HS256 secret (`ENTASIS_API_JWT_SECRET`);
- without a client allowlist (`ENTASIS_API_ALLOWLIST`), or with one that admits every address of
  a family (`0.0.0.0/0`, `::/0`, or `0.0.0.0/1,128.0.0.0/1` and the like), or with such a
  trusted-proxy list (anyone could then forge X-Forwarded-For).
Broken settings (half a TLS pair, unreadable files, an expired certificate, RS256 without a
public key, an unreachable Redis) stop it in development too. `--dev` relaxes the first list
only, says so in the log, and is itself refused unless the server binds a loopback address: it
accepts tokens signed with a secret that is in the source, from every address.

Served with bounded connections (`limit_concurrency`, keep-alive and receive deadlines, header
limits: api/http_limits.py), WebSocket frames of at most 16 KiB and, over TLS 1.2, AEAD cipher
suites with forward secrecy only (TLS 1.3 suites are all AEAD).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509

from api.app import create_app
from api.auth import verification_key
from api.http_limits import bounded_httptools_protocol
from api.network import covers_a_whole_family
from api.tls import check_tls_files
from api.workers import listening_socket
from api.ws.protocol import MAX_CLIENT_MESSAGE_BYTES
from api.ws.server_protocol import SendManyWebSocketProtocol
from infra.config.api import DEV_JWT_SECRET, ApiSettings
from infra.config.collector import settle_garbage_collector
from infra.config.settings import Settings, get_settings

logger = logging.getLogger("api")

MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash output
_DEFAULT_SECRETS = frozenset({"secret", "changeme", "change-me", "change_me", "password", "jwt-secret", DEV_JWT_SECRET})
# TLS 1.2 suites offered (OpenSSL names; Mozilla's "intermediate" list): ECDHE/DHE key exchange
# (forward secrecy) with AES-GCM or ChaCha20-Poly1305 only. uvicorn's default ("TLSv1") also offers
# CBC suites with SHA-1 MACs. TLS 1.3 suites are configured apart by OpenSSL and are all AEAD.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)


class UnsafeSettings(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"refusing to start the API:\n{lines}")


def is_loopback_host(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only. `localhost` is
    taken at its word; every other name is not (it may resolve to anything), nor is a wildcard
    such as `0.0.0.0`, `::` or the empty string (every interface)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _certificate_expiry_problem(cert_path: Path, now: dt.datetime) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return None  # check_tls_files has said what is wrong with the file
    if cert.not_valid_after_utc <= now:
        return f"the TLS certificate {cert_path} expired at {cert.not_valid_after_utc.isoformat()}"
    if cert.not_valid_before_utc > now:
        return f"the TLS certificate {cert_path} is not valid before {cert.not_valid_before_utc.isoformat()}"
    return None


def startup_problems(
    api: ApiSettings, *, dev: bool, host: str | None = None, now: dt.datetime | None = None
) -> list[str]:
    """Everything that stops the server from starting with these settings (empty: it may).
    `host`: the address it will bind (default `api.host`); `now`: for the certificate's validity."""
    problems: list[str] = []
    if (api.tls_cert is None) != (api.tls_key is None):
        problems.append("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
    if api.tls_cert is not None and api.tls_key is not None:
        problem = check_tls_files(api.tls_cert, api.tls_key)
        if problem is None:
            problem = _certificate_expiry_problem(api.tls_cert, now if now is not None else dt.datetime.now(dt.UTC))
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
        bind = host if host is not None else api.host
        if not is_loopback_host(bind):
            # --dev accepts tokens signed with a secret anyone can read in the source, from every
            # address: off loopback, anyone who reaches the port could act as any account.
            problems.append(
                f"--dev must bind a loopback address (127.0.0.1, ::1 or localhost), not {bind!r}: "
                "it accepts development tokens from every client"
            )
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
    elif covers_a_whole_family(api.allowlist):
        problems.append(
            "the client allowlist contains a wildcard (0.0.0.0/0, ::/0, or ranges that together admit "
            "every address of a family, such as 0.0.0.0/1 and 128.0.0.0/1)" + hint
        )
    if covers_a_whole_family(api.trusted_proxies):
        problems.append(
            "ENTASIS_API_TRUSTED_PROXIES contains a wildcard: any client could forge X-Forwarded-For" + hint
        )
    return problems


def dev_relaxations(api: ApiSettings, host: str | None = None) -> list[str]:
    """What --dev lets through with these settings, for the start-up warning."""
    relaxed = startup_problems(api, dev=False, host=host)
    strict = set(startup_problems(api, dev=True, host=host))
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
    """One uvicorn worker (uvloop + httptools), HTTPS when a certificate is configured, with the
    connection and size limits of `api_settings` (docs/configuration.md, "api")."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        # httptools, plus a deadline on each request's head and limits on its headers' size and
        # number, which uvicorn's own httptools protocol does not have (api/http_limits.py).
        http=bounded_httptools_protocol(
            max_header_bytes=api_settings.max_header_bytes,
            max_header_count=api_settings.max_header_count,
            head_timeout_s=api_settings.receive_timeout_seconds,
        ),
        # The h11 protocol's own header cap, should anyone switch to it.
        h11_max_incomplete_event_size=api_settings.max_header_bytes,
        limit_concurrency=api_settings.limit_concurrency,
        timeout_keep_alive=api_settings.keep_alive_seconds,
        # uvicorn's websockets (sans-I/O) protocol, plus writing a socket's pending updates at once
        # (api/ws/server_protocol.py).
        ws=SendManyWebSocketProtocol,
        # Frames above this are refused by the WebSocket protocol itself (close 1009) before
        # they are buffered whole; the default, 16 MiB, let a client make us hold that much.
        ws_max_size=MAX_CLIENT_MESSAGE_BYTES,
        log_level=log_level,
        access_log=api_settings.access_log,
        # The X-Request-ID middleware owns request identity; uvicorn's Server header is noise.
        server_header=False,
        ssl_certfile=str(api_settings.tls_cert) if api_settings.tls_enabled else None,
        ssl_keyfile=str(api_settings.tls_key) if api_settings.tls_enabled else None,
        ssl_ciphers=TLS12_CIPHERS,
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
    reuse_port: bool = False,
) -> None:
    """Serve the API in this process until interrupted; raises UnsafeSettings before serving.

    `host`/`port` default to `settings.api.host`/`settings.api.port`. `reuse_port`: listen
    with SO_REUSEPORT beside the other children of `entasis api --workers N` (api/workers.py)."""
    settings = settings if settings is not None else get_settings()
    api_settings = api_settings if api_settings is not None else settings.api
    # The address decided before the checks: --dev is refused off loopback.
    host = host if host is not None else api_settings.host
    port = port if port is not None else api_settings.port
    problems = startup_problems(api_settings, dev=dev, host=host)
    if problems:
        raise UnsafeSettings(problems)
    if dev:
        notes = dev_relaxations(api_settings, host)
        logger.warning(
            "DEVELOPMENT MODE (--dev): never expose this server.%s",
            "".join(f"\n  - {note}" for note in notes),
        )
    app = create_app(settings=settings, api_settings=api_settings, dev=dev)
    scheme = "https" if api_settings.tls_enabled else "http"
    logger.info("serving the API on %s://%s:%s (docs at /docs)", scheme, host, port)
    server = uvicorn.Server(uvicorn_config(app, host, port, api_settings, log_level))
    settle_garbage_collector()
    server.run(sockets=[listening_socket(host, port)] if reuse_port else None)
