"""The authentication and authorisation matrix: every way a credential can be wrong, with the exact
status, code and reason it gets, against the real app (JWT, API keys in the database, allowlists,
X-Forwarded-For)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.keys import ApiKeyRecord, ApiKeyVerifier, KeyRejected, generate_key
from api.principal import KNOWN_SCOPES, MARKET_READ
from infra.store.repository import MarketRepository
from tests.api.conftest import (
    NS,
    TEST_JWT_SECRET,
    Market,
    TradeRow,
    bearer,
    error_of,
    new_account,
    new_address,
    test_api_settings,
    token_for,
)

SYMBOL = "AUTH1-USDT"
PRICE = f"/api/v1/market/price/{SYMBOL}"
OTHER_SECRET = "another-secret-of-enough-length-0123456789"


@pytest.fixture(scope="module", autouse=True)
def _symbol(market: Market) -> None:
    market.trades([TradeRow("binance", SYMBOL, "1", Decimal("100"), Decimal("1"), 1_723_161_601 * NS)])


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("rsa")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = directory / "private.pem"
    public = directory / "public.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@pytest.fixture
def make_app(repository: MarketRepository, key_repository: ApiKeyRepository) -> Callable[..., FastAPI]:
    def make(**overrides: Any) -> FastAPI:
        return create_app(
            repository=repository, api_settings=test_api_settings(**overrides), key_repository=key_repository
        )

    return make


@pytest.fixture
def create_key(key_repository: ApiKeyRepository) -> Callable[..., str]:
    def create(account: str, scopes: tuple[str, ...] = KNOWN_SCOPES, allow: tuple[str, ...] = ()) -> str:
        new = generate_key()
        key_repository.insert(
            ApiKeyRecord(new.key_id, account, new.key_hash, scopes, tuple(ip_network(a) for a in allow), "test")
        )
        return new.key

    return create


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any]) -> str:
    """`alg: none`, written by hand as an attacker would."""
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."


def claims_for(account: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": account, "exp": now + 600, "iat": now, "scope": " ".join(KNOWN_SCOPES)}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def hs256(claims: dict[str, Any], secret: str = TEST_JWT_SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass
class Case:
    """One row of the matrix: the headers a request sends (built per test, so every account,
    key and address is fresh) and what it must get."""

    status: int
    code: str | None
    reason: str | None = None
    headers: Callable[[Callable[..., str]], dict[str, str]] = field(default=lambda _: {})
    client: str | None = None  # peer address; default: a fresh one
    settings: dict[str, Any] = field(default_factory=dict)


def _key_and_token(same: bool) -> Callable[[Callable[..., str]], dict[str, str]]:
    def build(create_key: Callable[..., str]) -> dict[str, str]:
        account = new_account()
        other = account if same else new_account()
        return {"X-API-Key": create_key(other), **bearer(hs256(claims_for(account)))}

    return build


def _revoked_key(key_repository_holder: list[ApiKeyRepository]) -> Callable[[Callable[..., str]], dict[str, str]]:
    def build(create_key: Callable[..., str]) -> dict[str, str]:
        key = create_key(new_account())
        key_repository_holder[0].revoke(key.split("_")[1])
        return {"X-API-Key": key}

    return build


_REPO: list[ApiKeyRepository] = []
NOW = int(time.time())

MATRIX: dict[str, Case] = {
    # --- no or unusable credentials: 401
    "no credentials": Case(401, "AUTH_FAILED", "credentials required"),
    "authorization not bearer": Case(
        401, "AUTH_FAILED", "Authorization must be 'Bearer <token>'", lambda _: {"Authorization": "Basic dXNlcjpw"}
    ),
    "bearer without token": Case(
        401, "AUTH_FAILED", "Authorization must be 'Bearer <token>'", lambda _: {"Authorization": "Bearer "}
    ),
    "malformed token": Case(401, "AUTH_FAILED", "malformed token", lambda _: bearer("not-a-jwt")),
    "garbage segments": Case(401, "AUTH_FAILED", "malformed token", lambda _: bearer("a.b.c")),
    "expired": Case(
        401, "AUTH_FAILED", "token expired", lambda _: bearer(hs256(claims_for(new_account(), exp=NOW - 3600)))
    ),
    "expired beyond leeway": Case(
        401,
        "AUTH_FAILED",
        "token expired",
        lambda _: bearer(hs256(claims_for(new_account(), exp=int(time.time()) - 40))),
        settings={"jwt_leeway_seconds": 30},
    ),
    "not yet valid (nbf)": Case(
        401, "AUTH_FAILED", "token not yet valid", lambda _: bearer(hs256(claims_for(new_account(), nbf=NOW + 3600)))
    ),
    "issued in the future (iat)": Case(
        401, "AUTH_FAILED", "token not yet valid", lambda _: bearer(hs256(claims_for(new_account(), iat=NOW + 3600)))
    ),
    "wrong signature": Case(
        401,
        "AUTH_FAILED",
        "invalid token signature",
        lambda _: bearer(hs256(claims_for(new_account()), secret=OTHER_SECRET)),
    ),
    "alg none": Case(
        401, "AUTH_FAILED", "token algorithm not allowed", lambda _: bearer(unsigned_token(claims_for(new_account())))
    ),
    "HS512 when HS256 is configured": Case(
        401,
        "AUTH_FAILED",
        "token algorithm not allowed",
        lambda _: bearer(jwt.encode(claims_for(new_account()), TEST_JWT_SECRET * 2, algorithm="HS512")),
    ),
    "no exp": Case(
        401, "AUTH_FAILED", "token lacks the exp claim", lambda _: bearer(hs256(claims_for(new_account(), exp=None)))
    ),
    "no sub": Case(401, "AUTH_FAILED", "token lacks the sub claim", lambda _: bearer(hs256(claims_for("x", sub=None)))),
    "sub not an account id": Case(
        401, "AUTH_FAILED", "token subject is not a valid account id", lambda _: bearer(hs256(claims_for("a b c")))
    ),
    "scope of the wrong type": Case(
        401,
        "AUTH_FAILED",
        "token scope claim must be a string or a list of strings",
        lambda _: bearer(hs256(claims_for(new_account(), scope={"market": "read"}))),
    ),
    "wrong audience": Case(
        401,
        "AUTH_FAILED",
        "token audience not accepted",
        lambda _: bearer(hs256(claims_for(new_account(), aud="someone-else", iss="entasis-tests"))),
        settings={"jwt_audience": "entasis", "jwt_issuer": "entasis-tests"},
    ),
    "wrong issuer": Case(
        401,
        "AUTH_FAILED",
        "token issuer not accepted",
        lambda _: bearer(hs256(claims_for(new_account(), aud="entasis", iss="mallory"))),
        settings={"jwt_audience": "entasis", "jwt_issuer": "entasis-tests"},
    ),
    "malformed API key": Case(401, "AUTH_FAILED", "malformed API key", lambda _: {"X-API-Key": "your-api-key"}),
    "unknown API key": Case(
        401, "AUTH_FAILED", "invalid API key", lambda _: {"X-API-Key": "ek_0123456789abcdef_" + "A" * 43}
    ),
    "API key with a wrong secret": Case(
        401,
        "AUTH_FAILED",
        "invalid API key",
        lambda create_key: {"X-API-Key": create_key(new_account())[:-4] + "AAAA"},
    ),
    "revoked API key": Case(401, "AUTH_FAILED", "API key revoked", _revoked_key(_REPO)),
    "key and token of different accounts": Case(
        401, "AUTH_FAILED", "API key and token belong to different accounts", _key_and_token(same=False)
    ),
    # --- valid credentials that may not do this: 403
    "token without market:read": Case(
        403,
        "FORBIDDEN",
        "insufficient scope",
        lambda _: bearer(hs256(claims_for(new_account(), scope="portfolio:read analysis:read"))),
    ),
    "token with an empty scope": Case(
        403, "FORBIDDEN", "insufficient scope", lambda _: bearer(hs256(claims_for(new_account(), scope=None)))
    ),
    "key without market:read": Case(
        403,
        "FORBIDDEN",
        "insufficient scope",
        lambda create_key: {"X-API-Key": create_key(new_account(), scopes=("portfolio:read",))},
    ),
    "key and token, only the token has the scope": Case(
        403,
        "FORBIDDEN",
        "insufficient scope",
        lambda create_key: (
            lambda account: {
                "X-API-Key": create_key(account, scopes=("analysis:read",)),
                **bearer(hs256(claims_for(account))),
            }
        )(new_account()),
    ),
    "address outside the deployment allowlist": Case(
        403,
        "FORBIDDEN",
        "client address not allowed",
        lambda _: bearer(hs256(claims_for(new_account()))),
        client="198.51.100.7",
        settings={"allowlist": "203.0.113.0/24, 2001:db8:1::/48"},
    ),
    "IPv6 address outside the deployment allowlist": Case(
        403,
        "FORBIDDEN",
        "client address not allowed",
        lambda _: bearer(hs256(claims_for(new_account()))),
        client="2001:db8:2::1",
        settings={"allowlist": "203.0.113.0/24, 2001:db8:1::/48"},
    ),
    "forged X-Forwarded-For from an untrusted peer": Case(
        403,
        "FORBIDDEN",
        "client address not allowed",
        lambda _: bearer(hs256(claims_for(new_account()))) | {"X-Forwarded-For": "203.0.113.9"},
        client="198.51.100.7",
        settings={"allowlist": "203.0.113.0/24"},
    ),
    "forged X-Forwarded-For behind a trusted proxy": Case(
        # the proxy appends the real peer (198.51.100.7) after whatever the client claimed
        403,
        "FORBIDDEN",
        "client address not allowed",
        lambda _: bearer(hs256(claims_for(new_account()))) | {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"},
        client="10.0.0.2",
        settings={"allowlist": "203.0.113.0/24", "trusted_proxies": "10.0.0.0/8"},
    ),
    "key used outside its own allowlist": Case(
        403,
        "FORBIDDEN",
        "client address not allowed for this API key",
        lambda create_key: {"X-API-Key": create_key(new_account(), allow=("192.0.2.0/24",))},
        client="198.51.100.7",
    ),
    # --- malformed forwarding from a trusted proxy: 400
    "garbage X-Forwarded-For from a trusted proxy": Case(
        400,
        "BAD_REQUEST",
        "malformed X-Forwarded-For from a trusted proxy",
        lambda _: bearer(hs256(claims_for(new_account()))) | {"X-Forwarded-For": "not-an-address"},
        client="10.0.0.2",
        settings={"trusted_proxies": "10.0.0.0/8"},
    ),
    # --- accepted: 200
    "valid token": Case(200, None, headers=lambda _: bearer(hs256(claims_for(new_account())))),
    "scope as a JSON list": Case(
        200, None, headers=lambda _: bearer(hs256(claims_for(new_account(), scope=[MARKET_READ])))
    ),
    "expired within the leeway": Case(
        200,
        None,
        headers=lambda _: bearer(hs256(claims_for(new_account(), exp=int(time.time()) - 10))),
        settings={"jwt_leeway_seconds": 30},
    ),
    "nbf within the leeway": Case(
        200,
        None,
        headers=lambda _: bearer(hs256(claims_for(new_account(), nbf=int(time.time()) + 10))),
        settings={"jwt_leeway_seconds": 30},
    ),
    "audience and issuer as configured": Case(
        200,
        None,
        headers=lambda _: bearer(hs256(claims_for(new_account(), aud="entasis", iss="entasis-tests"))),
        settings={"jwt_audience": "entasis", "jwt_issuer": "entasis-tests"},
    ),
    "valid API key": Case(200, None, headers=lambda create_key: {"X-API-Key": create_key(new_account())}),
    "key and token of the same account": Case(200, None, headers=_key_and_token(same=True)),
    "address inside the deployment allowlist": Case(
        200,
        None,
        headers=lambda _: bearer(hs256(claims_for(new_account()))),
        client="203.0.113.77",
        settings={"allowlist": "203.0.113.0/24, 2001:db8:1::/48"},
    ),
    "IPv6 address inside the deployment allowlist": Case(
        200,
        None,
        headers=lambda _: bearer(hs256(claims_for(new_account()))),
        client="2001:db8:1::99",
        settings={"allowlist": "203.0.113.0/24, 2001:db8:1::/48"},
    ),
    "IPv4-mapped IPv6 peer matches an IPv4 allowlist": Case(
        200,
        None,
        headers=lambda _: bearer(hs256(claims_for(new_account()))),
        client="::ffff:203.0.113.5",
        settings={"allowlist": "203.0.113.0/24"},
    ),
    "X-Forwarded-For from a trusted proxy": Case(
        200,
        None,
        headers=lambda _: bearer(hs256(claims_for(new_account()))) | {"X-Forwarded-For": "203.0.113.9, 10.0.0.3"},
        client="10.0.0.2",
        settings={"allowlist": "203.0.113.0/24", "trusted_proxies": "10.0.0.0/8"},
    ),
    "key used inside its own allowlist": Case(
        200,
        None,
        headers=lambda create_key: {"X-API-Key": create_key(new_account(), allow=("198.51.100.0/24",))},
        client="198.51.100.7",
    ),
}


@pytest.fixture
def _repo_for_matrix(key_repository: ApiKeyRepository) -> Iterator[None]:
    _REPO[:] = [key_repository]
    yield
    _REPO.clear()


@pytest.mark.usefixtures("_repo_for_matrix")
@pytest.mark.parametrize("name", list(MATRIX))
def test_auth_matrix(name: str, make_app: Callable[..., FastAPI], create_key: Callable[..., str]) -> None:
    case = MATRIX[name]
    app = make_app(**case.settings)
    headers = case.headers(create_key)
    with TestClient(app, client=(case.client or new_address(), 50000)) as client:
        for path in (PRICE, PRICE.replace("/api/v1", "/v1")):  # the alias is guarded the same way
            response = client.get(path, headers=headers)
            assert response.status_code == case.status, (name, response.text)
            # Rate-limit headers on every answer, accepted or refused.
            for header in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-request-id"):
                assert header in response.headers, (name, header)
            if case.code is None:
                assert response.json()["symbol"] == SYMBOL
                continue
            error = error_of(response)
            assert error["code"] == case.code, name
            assert isinstance(error["details"], dict) and error["details"]["reason"] == case.reason, error
            if case.status == 401:
                assert response.headers["www-authenticate"].startswith("Bearer realm=")
            for secret in ("eyJ", "ek_", "Traceback"):
                assert secret not in response.text  # never echoed: no token, no key


def test_each_credential_header_once(anon: TestClient) -> None:
    token = hs256(claims_for(new_account()))
    for name, value in (("Authorization", f"Bearer {token}"), ("X-API-Key", "ek_0123456789abcdef_" + "A" * 43)):
        response = anon.get(PRICE, headers=[(name, value), (name, value)])  # type: ignore[arg-type]
        assert response.status_code == 401
        assert error_of(response)["details"] == {"reason": "send each credential header once"}


def test_401_and_403_challenges(anon: TestClient, api: TestClient) -> None:
    missing = anon.get(PRICE)
    assert missing.headers["www-authenticate"] == ('Bearer realm="entasis", ApiKey realm="entasis", header="X-API-Key"')
    expired = anon.get(PRICE, headers=bearer(hs256(claims_for(new_account(), exp=NOW - 3600))))
    assert expired.headers["www-authenticate"] == (
        'Bearer realm="entasis", error="invalid_token", error_description="token expired"'
    )
    no_scope = api.get(PRICE, headers=bearer(hs256(claims_for(new_account(), scope="analysis:read"))))
    assert no_scope.status_code == 403
    assert no_scope.headers["www-authenticate"] == (
        'Bearer realm="entasis", error="insufficient_scope", scope="market:read"'
    )
    assert error_of(no_scope)["details"] == {"reason": "insufficient scope", "required_scope": "market:read"}


@pytest.mark.parametrize(("language", "message"), [("ko", "인증 실패"), ("en", "Authentication failed")])
def test_auth_errors_speak_korean(anon: TestClient, language: str, message: str) -> None:
    response = anon.get(PRICE, headers={"Accept-Language": language})
    assert response.status_code == 401
    assert error_of(response)["message"] == message
    forbidden = anon.get(
        PRICE, headers={"Accept-Language": language, **bearer(hs256(claims_for(new_account(), scope="")))}
    )
    assert error_of(forbidden)["message"] == {"ko": "권한 없음", "en": "Forbidden"}[language]


def test_rs256(make_app: Callable[..., FastAPI], rsa_keys: tuple[Path, Path]) -> None:
    private, public = rsa_keys
    settings = {"jwt_algorithm": "RS256", "jwt_public_key_path": public, "jwt_private_key_path": private}
    app = make_app(**settings)
    account = new_account()
    good = token_for(account, settings=test_api_settings(**settings))
    assert jwt.get_unverified_header(good)["alg"] == "RS256"
    # Algorithm confusion: an HS256 token whose HMAC key is the (public!) RSA key must not pass.
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims_for(account))}"
    mac = hmac.new(public.read_bytes(), signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    hs_token = hs256(claims_for(account))
    with TestClient(app, client=(new_address(), 1)) as client:
        assert client.get(PRICE, headers=bearer(good)).status_code == 200
        for bad, reason in ((forged, "token algorithm not allowed"), (hs_token, "token algorithm not allowed")):
            response = client.get(PRICE, headers=bearer(bad))
            assert response.status_code == 401
            assert error_of(response)["details"] == {"reason": reason}


def test_no_secret_configured_refuses_every_token(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(jwt_secret="")
    with TestClient(app, client=(new_address(), 1)) as client:
        response = client.get(PRICE, headers=bearer(hs256(claims_for(new_account()))))
    assert response.status_code == 401
    assert error_of(response)["details"] == {"reason": "token authentication is not configured"}


def test_dev_app_accepts_development_tokens(repository: MarketRepository, key_repository: ApiKeyRepository,
                                           tmp_path: Path) -> None:
    """A --dev app without a secret checks tokens with its data directory's random development
    secret (issue 18, finding 11): the tokens `entasis token` mints there pass; tokens signed with
    another data directory's secret, or with the constant earlier versions published, do not."""
    from api.auth import issue_token
    from infra.config.api import DEV_JWT_SECRET, ApiSettings
    from infra.config.settings import Settings, development_jwt_secret

    unconfigured = ApiSettings(jwt_secret="")  # type: ignore[call-arg]
    mine, other = Settings(data_dir=tmp_path / "mine"), Settings(data_dir=tmp_path / "other")
    dev_app = create_app(repository=repository, settings=mine, api_settings=unconfigured,
                         key_repository=key_repository, dev=True)
    account = new_account()
    token = issue_token(unconfigured, account, [MARKET_READ], dev_secret=lambda: development_jwt_secret(mine))
    foreign = issue_token(unconfigured, account, [MARKET_READ], dev_secret=lambda: development_jwt_secret(other))
    constant = jwt.encode(claims_for(account), DEV_JWT_SECRET, algorithm="HS256")
    with TestClient(dev_app, client=(new_address(), 1)) as client:
        assert client.get(PRICE, headers=bearer(token)).status_code == 200
        for refused in (foreign, constant):
            response = client.get(PRICE, headers=bearer(refused))
            assert response.status_code == 401
            assert error_of(response)["details"] == {"reason": "invalid token signature"}
    prod_app = create_app(repository=repository, settings=mine, api_settings=unconfigured,
                          key_repository=key_repository)
    with TestClient(prod_app, client=(new_address(), 1)) as client:
        assert client.get(PRICE, headers=bearer(token)).status_code == 401


def test_revocation_takes_effect_at_the_next_read_of_the_row(
    make_app: Callable[..., FastAPI], create_key: Callable[..., str], key_repository: ApiKeyRepository
) -> None:
    app = make_app(api_key_cache_seconds=0)  # every request reads the row: no timing in this test
    key = create_key(new_account())
    with TestClient(app, client=(new_address(), 1)) as client:
        assert client.get(PRICE, headers={"X-API-Key": key}).status_code == 200
        key_repository.revoke(key.split("_")[1])
        response = client.get(PRICE, headers={"X-API-Key": key})
        assert response.status_code == 401 and error_of(response)["details"] == {"reason": "API key revoked"}


async def test_a_cached_row_is_reused_for_the_ttl_then_read_again() -> None:
    """The cache period, on a clock the test moves: the row (and its revocation) is read again
    exactly when `ttl_s` has passed, not before."""
    key = generate_key()
    row = ApiKeyRecord(key.key_id, "acct", key.key_hash, (MARKET_READ,))
    current = {"row": row}
    reads: list[str] = []
    now = [100.0]

    async def lookup(key_id: str) -> ApiKeyRecord | None:
        reads.append(key_id)
        return current["row"]

    verifier = ApiKeyVerifier(lookup, ttl_s=2.0, clock=lambda: now[0])
    assert (await verifier.verify(key.key)).account == "acct"
    current["row"] = dataclasses.replace(row, revoked_at=datetime.now(UTC))
    now[0] += 1.999
    assert (await verifier.verify(key.key)).account == "acct"  # still the cached row
    assert reads == [key.key_id]
    now[0] += 0.001
    with pytest.raises(KeyRejected, match="revoked"):
        await verifier.verify(key.key)
    assert reads == [key.key_id] * 2


def test_scopes_of_key_and_token_intersect(make_app: Callable[..., FastAPI], create_key: Callable[..., str]) -> None:
    account = new_account()
    key = create_key(account, scopes=(MARKET_READ,))
    token = hs256(claims_for(account, scope="analysis:read"))
    with TestClient(make_app(), client=(new_address(), 1)) as client:
        assert client.get(PRICE, headers={"X-API-Key": key}).status_code == 200
        assert client.get(PRICE, headers=bearer(token)).status_code == 403
        assert client.get(PRICE, headers={"X-API-Key": key, **bearer(token)}).status_code == 403


def test_public_docs_setting(make_app: Callable[..., FastAPI]) -> None:
    with TestClient(make_app(), client=(new_address(), 1)) as client:
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs").status_code == 200
        # credentials sent to a public path are still checked
        bad = client.get("/openapi.json", headers=bearer("a.b.c"))
        assert bad.status_code == 401
    with TestClient(make_app(public_docs=False), client=(new_address(), 1)) as client:
        for path in ("/openapi.json", "/docs"):
            response = client.get(path)
            assert response.status_code == 401 and error_of(response)["code"] == "AUTH_FAILED"
            token = hs256(claims_for(new_account(), scope=""))  # any valid principal; no scope needed
            assert client.get(path, headers=bearer(token)).status_code == 200


def test_unknown_routes_and_methods_need_no_credentials(anon: TestClient) -> None:
    assert error_of(anon.get("/api/v1/nowhere"))["code"] == "NOT_FOUND"
    response = anon.post(PRICE)
    assert response.status_code == 405 and error_of(response)["code"] == "METHOD_NOT_ALLOWED"
    assert response.headers["x-ratelimit-limit"] == "1000"


def test_hsts_only_over_https(app: FastAPI) -> None:
    token = token_for(new_account())
    with TestClient(app, base_url="https://testserver", headers=bearer(token), client=(new_address(), 1)) as tls:
        for path in (PRICE, "/nowhere"):
            assert tls.get(path).headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    with TestClient(app, headers=bearer(token), client=(new_address(), 1)) as plain:
        assert "strict-transport-security" not in plain.get(PRICE).headers


def test_key_store_unreachable_is_503_not_401(repository: MarketRepository) -> None:
    from infra.store.clickhouse import client_for_url

    unreachable = ApiKeyRepository(lambda: client_for_url("http://127.0.0.1:1", connect_timeout=1))
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=unreachable)
    with TestClient(app, client=(new_address(), 1)) as client:
        response = client.get(PRICE, headers={"X-API-Key": "ek_0123456789abcdef_" + "B" * 43})
    assert response.status_code == 503
    assert error_of(response)["code"] == "UNAVAILABLE"
    assert error_of(response)["details"] == {"reason": "API key store unreachable"}
    assert "x-ratelimit-remaining" in response.headers


def test_gate_serves_websocket_handshakes(app: FastAPI, create_key: Callable[..., str]) -> None:
    """The same checks, outside FastAPI's dependencies: headers, or `?token=` for browsers."""
    import asyncio

    from api.security import SecurityGate, websocket_close_code

    gate: SecurityGate = app.state.gate
    account = new_account()
    token = hs256(claims_for(account, scope="market:read"))

    def scope(query: str = "", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
        return {
            "type": "websocket",
            "path": "/ws/market",
            "query_string": query.encode(),
            "headers": headers or [],
            "client": (new_address(), 1),
        }

    async def admit(s: dict[str, Any], query_token: bool = True) -> Any:
        return await gate.admit(s, allow_query_token=query_token)

    by_query = asyncio.run(admit(scope(f"token={token}")))
    assert by_query.error is None and by_query.principal.account == account
    by_header = asyncio.run(admit(scope(headers=[(b"x-api-key", create_key(account).encode())])))
    assert by_header.error is None and by_header.principal.account == account
    assert asyncio.run(admit(scope())).principal is None  # none: the endpoint closes with 4401
    refused = asyncio.run(admit(scope("token=a.b.c")))
    assert refused.error is not None and websocket_close_code(refused.error) == 4401
    # REST never reads a query token (it would end up in access logs).
    assert asyncio.run(admit(scope(f"token={token}"), query_token=False)).principal is None
    assert refused.rate.headers()["X-RateLimit-Limit"] == "1000"


def test_a_failing_credential_check_is_500_with_headers(
    repository: MarketRepository, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(ApiKeyRepository):
        def get(self, key_id: str) -> ApiKeyRecord | None:
            raise RuntimeError("secret internals")

    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=Broken(lambda: None))  # type: ignore[arg-type, return-value]
    with TestClient(app, client=(new_address(), 1)) as client:
        response = client.get(PRICE, headers={"X-API-Key": "ek_0123456789abcdef_" + "C" * 43})
    assert response.status_code == 500
    assert error_of(response)["code"] == "INTERNAL" and "secret" not in response.text
    assert response.headers["x-ratelimit-remaining"] == "999"
    assert any("credential check failed" in r.getMessage() for r in caplog.records)
