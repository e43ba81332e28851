"""API keys: material and hashing, the cached verifier, the repository, and `entasis keys|token`."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient

from api.key_repository import ApiKeyRepository
from api.keys import ApiKeyRecord, ApiKeyVerifier, KeyRejected, generate_key, hash_key, split_key, verify_secret
from api.principal import KNOWN_SCOPES
from infra.cli import main as cli
from infra.config.api import DEV_JWT_SECRET
from infra.config.settings import Settings
from tests.api.conftest import TEST_JWT_SECRET, error_of, new_account, new_address

ROOT = Path(__file__).resolve().parents[2]
KEY_RE = re.compile(r"^ek_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$")


def test_generated_keys_have_256_bit_secrets_and_store_only_a_salted_hash() -> None:
    keys = [generate_key() for _ in range(200)]
    assert len({k.key for k in keys}) == len({k.key_id for k in keys}) == 200
    for new in keys[:20]:
        assert KEY_RE.match(new.key)
        key_id, secret = split_key(new.key)  # type: ignore[misc]
        assert key_id == new.key_id and len(secret) == 43  # 32 random bytes, base64url
        assert secret not in new.key_hash and new.key_hash.startswith("hmac-sha256$")
        assert verify_secret(new.key_hash, key_id, secret)
        assert not verify_secret(new.key_hash, key_id, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
        # bound to its id: the same hash under another id does not verify
        assert not verify_secret(new.key_hash, "0" * 16, secret)
    # salted: the same secret hashes differently every time
    assert hash_key("a" * 16, "s") != hash_key("a" * 16, "s")
    for junk in ("", "ek_", "your-api-key", "ek_XYZ_abc", "ek_0123456789abcdef_short", "sha256$x$y"):
        assert split_key(junk) is None
    assert not verify_secret("md5$00$00", "a", "b") and not verify_secret("hmac-sha256$zz$00", "a", "b")


def test_verifier_caches_rows_and_absences_for_the_ttl() -> None:
    new = generate_key()
    record = ApiKeyRecord(new.key_id, "alice", new.key_hash, ("market:read",))
    rows: dict[str, ApiKeyRecord] = {}
    calls: list[str] = []
    now = [0.0]

    async def lookup(key_id: str) -> ApiKeyRecord | None:
        calls.append(key_id)
        return rows.get(key_id)

    verifier = ApiKeyVerifier(lookup, ttl_s=2.0, max_entries=3, clock=lambda: now[0])

    async def scenario() -> None:
        with pytest.raises(KeyRejected, match="invalid API key"):
            await verifier.verify(new.key)  # not there yet...
        rows[new.key_id] = record
        with pytest.raises(KeyRejected):
            await verifier.verify(new.key)  # ...and its absence is cached
        assert calls == [new.key_id]
        now[0] = 2.0
        assert await verifier.verify(new.key) == record  # seen once the TTL passed
        assert await verifier.verify(" " + new.key + " ") == record  # stray spaces tolerated
        assert calls == [new.key_id] * 2
        with pytest.raises(KeyRejected, match="malformed API key"):
            await verifier.verify("your-api-key")  # no lookup for junk
        assert calls == [new.key_id] * 2
        for n in range(5):  # bounded: random ids cannot grow the cache without limit
            with pytest.raises(KeyRejected):
                await verifier.verify(f"ek_{n:016x}_{'A' * 43}")
        assert len(verifier._cache) == 3

    asyncio.run(scenario())


def test_repository_insert_list_revoke(key_repository: ApiKeyRepository) -> None:
    account = new_account()
    first, second = generate_key(), generate_key()
    key_repository.insert(ApiKeyRecord(first.key_id, account, first.key_hash, ("market:read",), label="one"))
    key_repository.insert(ApiKeyRecord(second.key_id, account, second.key_hash, KNOWN_SCOPES))
    with pytest.raises(ValueError, match="exists already"):
        key_repository.insert(ApiKeyRecord(first.key_id, "mallory", "x", ()))
    stored = key_repository.get(first.key_id)
    assert stored is not None and (stored.account, stored.scopes, stored.label) == (account, ("market:read",), "one")
    assert stored.created_at is not None and stored.revoked_at is None
    assert [r.key_id for r in key_repository.list_keys(account)] == [first.key_id, second.key_id]

    revoked = key_repository.revoke(first.key_id)
    assert revoked is not None and revoked.revoked
    again = key_repository.revoke(first.key_id)
    assert again is not None and again.revoked_at == revoked.revoked_at  # idempotent
    assert key_repository.get(first.key_id).revoked  # type: ignore[union-attr]
    assert [r.key_id for r in key_repository.list_keys(account)] == [second.key_id]
    assert len(key_repository.list_keys(account, include_revoked=True)) == 2
    assert key_repository.revoke("f" * 16) is None
    assert key_repository.get("' OR 1=1 --") is None


def _cli(settings: Settings, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = cli.parser().parse_args(list(argv))
    code = args.func(settings, args)
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_cli_create_list_revoke(
    db_location: tuple[str, str], key_repository: ApiKeyRepository, app: object, capsys: pytest.CaptureFixture[str]
) -> None:
    url, database = db_location
    settings = Settings(clickhouse_url=url, clickhouse_database=database)
    account = new_account("cli")

    code, out, err = _cli(
        settings, "keys", "create", "--account", account, "--scope", "market:read", "--allow", "203.0.113.0/24",
        "--allow", "2001:db8:ffff::/48", "--label", "ci", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    key = out.strip()
    assert KEY_RE.match(key) and "shown only now" in err
    key_id = key.split("_")[1]
    record = key_repository.get(key_id)
    assert record is not None and record.scopes == ("market:read",)
    assert [str(n) for n in record.allowed_networks] == ["203.0.113.0/24", "2001:db8:ffff::/48"]

    # The key works from an allowed address and nowhere else.
    with TestClient(app, client=("203.0.113.8", 1)) as client:  # type: ignore[arg-type]
        assert client.get("/api/v1/market/price/NOPE-USDT", headers={"X-API-Key": key}).status_code == 404
    with TestClient(app, client=(new_address(), 1)) as client:  # type: ignore[arg-type]
        response = client.get("/api/v1/market/price/NOPE-USDT", headers={"X-API-Key": key})
        assert response.status_code == 403 and error_of(response)["code"] == "FORBIDDEN"

    code, out, _ = _cli(settings, "keys", "list", "--account", account, capsys=capsys)
    assert code == 0 and key_id in out and key.split("_", 2)[2] not in out  # never the secret
    assert "203.0.113.0/24 2001:db8:ffff::/48" in out

    code, out, _ = _cli(settings, "keys", "revoke", key_id, capsys=capsys)
    assert code == 0 and f"revoked {key_id}" in out
    code, out, _ = _cli(settings, "keys", "list", "--account", account, capsys=capsys)
    assert key_id not in out
    code, out, _ = _cli(settings, "keys", "list", "--account", account, "--all", capsys=capsys)
    assert key_id in out

    assert _cli(settings, "keys", "revoke", "0" * 16, capsys=capsys)[0] == 1
    assert _cli(settings, "keys", "create", "--account", account, "--scope", "admin", capsys=capsys)[0] == 2
    assert _cli(settings, "keys", "create", "--account", "two words", capsys=capsys)[0] == 2
    assert _cli(settings, "keys", "create", "--account", account, "--allow", "nonsense", capsys=capsys)[0] == 2


def _token_cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ENTASIS_API_")}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "token", *argv],
        env={**clean, **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_token_cli() -> None:
    done = _token_cli("--account", "alice", "--scope", "market:read analysis:read", "--ttl", "120",
                      ENTASIS_API_JWT_SECRET=TEST_JWT_SECRET, ENTASIS_API_JWT_AUDIENCE="entasis")  # fmt: skip
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    claims = jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"], audience="entasis")
    assert claims["sub"] == "alice" and claims["scope"] == "market:read analysis:read"
    assert claims["exp"] - claims["iat"] == 120 and done.stderr == ""

    # no secret configured: signed with the data directory's random development secret (0600 file)
    with tempfile.TemporaryDirectory() as work:
        data_dir = Path(work) / "data"
        dev = _token_cli(ENTASIS_DATA_DIR=str(data_dir))
        assert dev.returncode == 0, dev.stderr
        secret = (data_dir / "jwt-dev.secret").read_text().strip()
        assert stat.S_IMODE((data_dir / "jwt-dev.secret").stat().st_mode) == 0o600 and len(secret) >= 32
        claims = jwt.decode(dev.stdout.strip(), secret, algorithms=["HS256"])
        assert claims["sub"] == "dev" and set(claims["scope"].split()) == set(KNOWN_SCOPES)
        assert "development secret" in dev.stderr and "--dev" in dev.stderr
        with pytest.raises(jwt.InvalidSignatureError):  # the constant of earlier versions signs nothing now
            jwt.decode(dev.stdout.strip(), DEV_JWT_SECRET, algorithms=["HS256"])
        # production has no development secret: the configured one or nothing
        prod = _token_cli(ENTASIS_DATA_DIR=str(data_dir), ENTASIS_PROFILE="production")
        assert prod.returncode == 2 and "ENTASIS_API_JWT_SECRET must be set" in prod.stderr and prod.stdout == ""

    bad = _token_cli("--account", "not valid")
    assert bad.returncode == 2 and "not a valid account id" in bad.stderr
