"""What the server refuses to start with, TLS material, and a real `entasis api` over HTTPS."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.main import startup_problems
from api.tls import check_tls_files, ensure_self_signed, self_signed
from infra.config.api import DEV_JWT_SECRET, ApiSettings
from infra.dev.processes import free_port, wait_for_port
from tests.api.conftest import TEST_JWT_SECRET, bearer, new_account, token_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    self_signed(cert, key)
    return cert, key


def settings(**values: Any) -> ApiSettings:
    return ApiSettings(**values)


def test_self_signed_certificate(tls_pair: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = tls_pair
    assert check_tls_files(cert, key) is None
    assert key.stat().st_mode & 0o077 == 0  # private key readable by its owner only
    context = ssl.create_default_context(cafile=str(cert))  # loads as a trust anchor
    assert context.cert_store_stats()["x509_ca"] == 1
    other_cert, other_key = tmp_path / "c.pem", tmp_path / "k.pem"
    self_signed(other_cert, other_key, hosts=["api.internal"])
    problem = check_tls_files(cert, other_key)
    assert problem is not None and "do not load as a pair" in problem
    assert "not found" in (check_tls_files(tmp_path / "missing.pem", key) or "")


def test_ensure_self_signed_reuses_a_valid_pair(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    assert ensure_self_signed(cert, key) is True
    first = cert.read_bytes()
    assert ensure_self_signed(cert, key) is False and cert.read_bytes() == first
    self_signed(cert, key, days=1)  # about to expire: replaced
    assert ensure_self_signed(cert, key) is True
    key.write_text("garbage")  # broken: replaced
    assert ensure_self_signed(cert, key) is True and check_tls_files(cert, key) is None


def test_safe_production_settings_start(tls_pair: tuple[Path, Path]) -> None:
    cert, key = tls_pair
    safe = settings(jwt_secret=TEST_JWT_SECRET, tls_cert=cert, tls_key=key, allowlist="10.0.0.0/8, 2001:db8::/32")
    assert startup_problems(safe, dev=False) == []


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, ["no TLS certificate", "JWT_SECRET is empty", "no client allowlist"]),
        ({"jwt_secret": DEV_JWT_SECRET}, ["JWT_SECRET is a default value"]),
        ({"jwt_secret": "changeme"}, ["JWT_SECRET is a default value"]),
        ({"jwt_secret": "short-but-not-default"}, ["shorter than 32 bytes"]),
        ({"allowlist": "0.0.0.0/0"}, ["contains a wildcard"]),
        ({"allowlist": "10.0.0.0/8, ::/0"}, ["contains a wildcard"]),
        ({"trusted_proxies": "0.0.0.0/0"}, ["any client could forge X-Forwarded-For"]),
    ],
)
def test_unsafe_settings_are_refused_unless_dev(
    tls_pair: tuple[Path, Path], values: dict[str, Any], expected: list[str]
) -> None:
    cert, key = tls_pair
    base: dict[str, Any] = {"jwt_secret": TEST_JWT_SECRET, "tls_cert": cert, "tls_key": key, "allowlist": "10.0.0.0/8"}
    if not values:
        base = {}
    problems = startup_problems(settings(**{**base, **values}), dev=False)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem and "--dev" in problem
    assert startup_problems(settings(**{**base, **values}), dev=True) == []


def test_broken_settings_are_refused_even_in_dev(tls_pair: tuple[Path, Path], tmp_path: Path) -> None:
    cert, _ = tls_pair
    assert "both a certificate and a key" in startup_problems(settings(tls_cert=cert), dev=True)[0]
    assert "RS256 needs a public key" in startup_problems(settings(jwt_algorithm="RS256"), dev=True)[0]
    not_a_key = tmp_path / "pub.pem"
    not_a_key.write_text("hello")
    rs = settings(jwt_algorithm="RS256", jwt_public_key_path=not_a_key)
    assert "not a PEM public key" in startup_problems(rs, dev=True)[0]
    closed = settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert "Redis" in startup_problems(closed, dev=True)[0]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTASIS_API_") and k != "REDIS_URL"}
    env.update(extra, ENTASIS_LOGLEVEL="INFO")
    return env


def test_cli_refuses_to_serve_plain_http_with_defaults() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "api", "--port", str(free_port())],
        env=_clean_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    for fragment in ("refusing to start", "plain HTTP", "JWT_SECRET is empty", "no client allowlist", "--dev"):
        assert fragment in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def served(tls_pair: tuple[Path, Path], tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`entasis api` in production mode: TLS, a real secret, loopback allowlist."""
    cert, key = tls_pair
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "api", "--host", "127.0.0.1", "--port", str(port),
             "--tls-cert", str(cert), "--tls-key", str(key)],
            env=_clean_env(ENTASIS_API_JWT_SECRET=TEST_JWT_SECRET, ENTASIS_API_ALLOWLIST="127.0.0.1/32, ::1"),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )  # fmt: skip
    try:
        try:
            wait_for_port("127.0.0.1", port, timeout_s=60, what="api")
        except TimeoutError:
            raise AssertionError(log.read_text()) from None
        yield f"https://127.0.0.1:{port}", cert
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "DEVELOPMENT MODE" not in log.read_text()


def test_cli_serves_https_with_hsts(served: tuple[str, Path]) -> None:
    base, cert = served
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=10) as client:
        response = client.get(base + "/openapi.json")
        assert response.status_code == 200
        assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
        assert response.headers["x-ratelimit-limit"] == "1000"
        assert client.get(base + "/api/v1/market/price/BTC$USDT").status_code == 401
        authed = client.get(base + "/api/v1/market/price/BTC$USDT", headers=bearer(token_for(new_account())))
        assert authed.status_code == 400  # through the gate; the symbol is malformed
    with pytest.raises(httpx.HTTPError):  # no plain HTTP on the TLS port
        httpx.get(base.replace("https://", "http://") + "/openapi.json", timeout=5)
    with pytest.raises(httpx.ConnectError):  # and an unknown certificate is not trusted
        httpx.get(base + "/openapi.json", timeout=5)


def test_cli_dev_mode_says_so(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "api", "--dev", "--host", "127.0.0.1", "--port", str(port)],
            env=_clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout_s=60, what="api")
        dev_token = subprocess.run(
            [sys.executable, "-m", "infra.cli", "token", "--scope", "market:read"],
            env=_clean_env(), capture_output=True, text=True, cwd=ROOT, timeout=60,
        ).stdout.strip()  # fmt: skip
        response = httpx.get(f"http://127.0.0.1:{port}/api/v1/market/price/BTC$USDT", headers=bearer(dev_token))
        assert response.status_code == 400  # the development token is accepted by a --dev server
        assert "strict-transport-security" not in response.headers
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "DEVELOPMENT MODE" in text and "plain HTTP" in text and "development secret" in text
