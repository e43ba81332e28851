"""Credential checking: JWT (`Authorization: Bearer`, or `?token=` on a WebSocket) and API keys
(`X-API-Key`), into one `Principal`. Plain classes, no FastAPI: the HTTP middleware
(api/security.py) and a WebSocket endpoint call the same `Authenticator.authenticate`.

JWT rules (docs/decisions.md, "Credentials and limits"): the one configured algorithm only (HS256 or
RS256; `alg: none` and every other algorithm are refused, so an RS256 public key can never be
used as an HMAC secret); `exp` and `sub` required; `nbf` and `iat` in the future refused; the
configured leeway applies to all three; `aud` and `iss` checked when configured (when no audience
is configured, `aud` is not checked); `scope` is a space-separated string or a JSON list of
strings; `sub` is the account id.

When a token and a key are both sent, both must be valid and name the same account (otherwise
401), and the request gets the scopes both allow (their intersection).

Every failure is an `ApiError`: 401 `AUTH_FAILED` with a `WWW-Authenticate` challenge and a short
reason in `details` (never the token, the key or a library message), 403 `FORBIDDEN` when a key is
used from an address outside its own allowlist.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from api.errors import ApiError, ErrorCode
from api.keys import ApiKeyRecord, ApiKeyVerifier, BeforeLookup, KeyRejected
from api.network import IPAddress
from api.principal import KNOWN_SCOPES, Principal, valid_account
from infra.config.api import ApiSettings

REALM = "entasis"
# Every scheme we accept, as RFC 9110 challenges (X-API-Key has no registered scheme; the
# parameter says which header carries it).
CHALLENGE = f'Bearer realm="{REALM}", ApiKey realm="{REALM}", header="X-API-Key"'


def auth_failed(reason: str, *, token_error: bool = False) -> ApiError:
    challenge = CHALLENGE
    if token_error:
        # RFC 6750 §3.1; the description is our fixed reason text, never client input.
        challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{reason}"'
    return ApiError(ErrorCode.AUTH_FAILED, {"reason": reason}, headers={"WWW-Authenticate": challenge})


def insufficient_scope(scope: str) -> ApiError:
    return ApiError(
        ErrorCode.FORBIDDEN,
        {"reason": "insufficient scope", "required_scope": scope},
        headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'},
    )


def address_forbidden(address: IPAddress | None, reason: str) -> ApiError:
    return ApiError(ErrorCode.FORBIDDEN, {"reason": reason, "client_ip": str(address) if address else None})


# --- JWT ---------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc.strerror}") from None


# The development secret of a data directory, read (and made, the first time) only when needed:
# `infra.config.settings.development_jwt_secret` bound to the process's settings.
DevSecret = Callable[[], str]


def verification_key(settings: ApiSettings, *, dev: bool, dev_secret: DevSecret | None = None) -> Any | None:
    """What tokens are verified with; None when nothing is configured (then every token is
    refused). A --dev server without a secret uses its data directory's development secret
    (`dev_secret`), random per directory: never a value anyone could read in the source."""
    if settings.jwt_algorithm == "HS256":
        secret = settings.jwt_secret.get_secret_value()
        if not secret and dev and dev_secret is not None:
            secret = dev_secret()
        return secret.encode() if secret else None
    if settings.jwt_public_key_path is None:
        return None
    pem = _read(settings.jwt_public_key_path, "JWT public key")
    try:
        return serialization.load_pem_public_key(pem)
    except ValueError:
        raise ValueError(f"not a PEM public key: {settings.jwt_public_key_path}") from None


def signing_key(settings: ApiSettings, dev_secret: DevSecret | None = None) -> tuple[Any, bool]:
    """(key, is_development_secret) for `entasis token` and tests: the configured secret, else the
    data directory's development secret (`dev_secret`); ValueError when there is neither."""
    if settings.jwt_algorithm == "HS256":
        secret = settings.jwt_secret.get_secret_value()
        if secret:
            return secret.encode(), False
        if dev_secret is None:
            raise ValueError("no ENTASIS_API_JWT_SECRET configured")
        return dev_secret().encode(), True
    if settings.jwt_private_key_path is None:
        raise ValueError("RS256 signing needs ENTASIS_API_JWT_PRIVATE_KEY_PATH")
    pem = _read(settings.jwt_private_key_path, "JWT private key")
    try:
        return serialization.load_pem_private_key(pem, password=None), False
    except (ValueError, TypeError):
        raise ValueError(f"not an unencrypted PEM private key: {settings.jwt_private_key_path}") from None


def issue_token(
    settings: ApiSettings,
    subject: str,
    scopes: Iterable[str] = KNOWN_SCOPES,
    *,
    ttl_s: float = 3600,
    now: float | None = None,
    extra: dict[str, Any] | None = None,
    dev_secret: DevSecret | None = None,
) -> str:
    """A token this deployment accepts (audience and issuer included when configured); without a
    configured secret, signed with `dev_secret` (what a --dev server of the same data directory uses)."""
    if not valid_account(subject):
        raise ValueError(f"not a valid account id: {subject!r}")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "scope": " ".join(scopes),
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(ttl_s),
        "jti": uuid.uuid4().hex,
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    claims.update(extra or {})
    key, _ = signing_key(settings, dev_secret)
    return jwt.encode(claims, key, algorithm=settings.jwt_algorithm)


def _scopes(claim: Any) -> frozenset[str] | None:
    if claim is None:
        return frozenset()
    if isinstance(claim, str):
        return frozenset(claim.split())
    if isinstance(claim, list) and all(isinstance(s, str) for s in claim):
        return frozenset(claim)
    return None


class JwtVerifier:
    """Verifies tokens; a verified token is remembered (bounded) until its `exp`, so a client that
    sends the same token on every request pays for the signature check once."""

    def __init__(self, settings: ApiSettings, *, dev: bool, dev_secret: DevSecret | None = None,
                 cache_size: int = 4096) -> None:
        self._algorithm = settings.jwt_algorithm
        self._key = verification_key(settings, dev=dev, dev_secret=dev_secret)
        self._leeway = settings.jwt_leeway_seconds
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._cache: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str) -> Principal:
        return self.verify_until(token)[0]

    def verify_until(self, token: str) -> tuple[Principal, float]:
        """The token's Principal and the moment (epoch seconds, `exp` plus the leeway) from which
        this verifier refuses it: a WebSocket opened with it is closed then."""
        cached = self._cache.get(token)
        if cached is not None:
            exp, principal = cached
            if time.time() < exp + self._leeway:  # nbf and iat only get more true with time
                return principal, exp + self._leeway
            del self._cache[token]
            raise auth_failed("token expired", token_error=True)
        principal, exp = self._decode(token)
        self._cache[token] = (exp, principal)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal, exp + self._leeway

    def _decode(self, token: str) -> tuple[Principal, float]:
        if self._key is None:
            raise auth_failed("token authentication is not configured", token_error=True)
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                leeway=self._leeway,
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise auth_failed("token expired", token_error=True) from None
        except jwt.ImmatureSignatureError:
            raise auth_failed("token not yet valid", token_error=True) from None
        except jwt.InvalidSignatureError:
            raise auth_failed("invalid token signature", token_error=True) from None
        except jwt.InvalidAlgorithmError:
            raise auth_failed("token algorithm not allowed", token_error=True) from None
        except jwt.MissingRequiredClaimError as exc:
            raise auth_failed(f"token lacks the {exc.claim} claim", token_error=True) from None
        except jwt.InvalidAudienceError:
            raise auth_failed("token audience not accepted", token_error=True) from None
        except jwt.InvalidIssuerError:
            raise auth_failed("token issuer not accepted", token_error=True) from None
        except jwt.DecodeError:
            raise auth_failed("malformed token", token_error=True) from None
        except jwt.PyJWTError:  # InvalidTokenError and the rest, e.g. a key unusable for this token
            raise auth_failed("invalid token", token_error=True) from None
        account = claims.get("sub")
        if not valid_account(account):
            raise auth_failed("token subject is not a valid account id", token_error=True)
        scopes = _scopes(claims.get("scope"))
        if scopes is None:
            raise auth_failed("token scope claim must be a string or a list of strings", token_error=True)
        assert isinstance(account, str)
        return Principal(account, scopes, ("jwt",)), float(claims["exp"])


# --- both together -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """What `Authenticator.check` found: the Principal (None when nothing was sent) and, when a
    token was among the credentials, the moment it stops being accepted (epoch seconds)."""

    principal: Principal | None
    token_valid_until: float | None = None


class Authenticator:
    """`authenticate` turns whatever credentials a request carries into a Principal, or None when
    it carries none; invalid credentials raise `ApiError` (401, or 403 for a key's allowlist).
    `check` does the same and also says until when a token is valid."""

    def __init__(self, jwt_verifier: JwtVerifier, keys: ApiKeyVerifier | None) -> None:
        self.jwt = jwt_verifier
        self.keys = keys

    async def authenticate(
        self,
        *,
        authorization: str | None,
        api_key: str | None,
        client_ip: IPAddress | None,
        query_token: str | None = None,
        before_key_lookup: BeforeLookup | None = None,
    ) -> Principal | None:
        checked = await self.check(
            authorization=authorization,
            api_key=api_key,
            client_ip=client_ip,
            query_token=query_token,
            before_key_lookup=before_key_lookup,
        )
        return checked.principal

    async def check(
        self,
        *,
        authorization: str | None,
        api_key: str | None,
        client_ip: IPAddress | None,
        query_token: str | None = None,
        before_key_lookup: BeforeLookup | None = None,
    ) -> Credentials:
        """`before_key_lookup`: awaited before an API key costs a store query (a cached key costs
        none); what it raises propagates, and no query is made."""
        token_principal: Principal | None = None
        valid_until: float | None = None
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise auth_failed("Authorization must be 'Bearer <token>'")
            token_principal, valid_until = self.jwt.verify_until(token.strip())
        elif query_token is not None:
            token_principal, valid_until = self.jwt.verify_until(query_token.strip())

        key_principal: Principal | None = None
        if api_key is not None:
            record = await self._key_record(api_key, before_key_lookup)
            if not record.allows_address(client_ip):
                raise address_forbidden(client_ip, "client address not allowed for this API key")
            key_principal = Principal(record.account, frozenset(record.scopes), ("api_key",), record.key_id)

        if token_principal is None or key_principal is None:
            return Credentials(token_principal or key_principal, valid_until)
        if token_principal.account != key_principal.account:
            raise auth_failed("API key and token belong to different accounts")
        principal = Principal(
            token_principal.account,
            token_principal.scopes & key_principal.scopes,
            ("jwt", "api_key"),
            key_principal.key_id,
        )
        return Credentials(principal, valid_until)

    async def _key_record(self, presented: str, before_lookup: BeforeLookup | None) -> ApiKeyRecord:
        if self.keys is None:
            raise ApiError(ErrorCode.UNAVAILABLE, {"reason": "API key store not ready"})
        try:
            return await self.keys.verify(presented, before_lookup)
        except KeyRejected as exc:
            raise auth_failed(exc.reason) from None
