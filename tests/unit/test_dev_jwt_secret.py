"""Issue 18, finding 11: the development JWT secret was a constant in the source, so anyone who could
reach a --dev API (every local user, with `entasis up`) could mint a token for any account. Now it
is random per data directory (a 0600 file made on first use), read by `entasis token` and by a
--dev API of the same directory; production has none (its secret must be configured).

The oracle for "accepted" is PyJWT itself with the file's bytes, not the code under test."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import jwt
import pytest

from api.auth import JwtVerifier, issue_token
from api.errors import ApiError
from infra.config.api import DEV_JWT_SECRET, ApiSettings
from infra.config.settings import DEV_JWT_SECRET_FILE, Settings, development_jwt_secret

UNCONFIGURED = ApiSettings(jwt_secret="")  # type: ignore[call-arg]


def verifier(settings: Settings) -> JwtVerifier:
    return JwtVerifier(UNCONFIGURED, dev=True, dev_secret=lambda: development_jwt_secret(settings))


def test_each_data_directory_gets_its_own_random_private_secret(tmp_path: Path) -> None:
    one, other = Settings(data_dir=tmp_path / "one"), Settings(data_dir=tmp_path / "other")
    secret = development_jwt_secret(one)
    assert len(secret) >= 32 and secret != DEV_JWT_SECRET
    assert development_jwt_secret(one) == secret  # stable: the API and `entasis token` agree
    assert development_jwt_secret(other) != secret
    path = tmp_path / "one" / DEV_JWT_SECRET_FILE
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "one").st_mode) == 0o700


def test_a_token_minted_for_one_data_directory_is_refused_by_another(tmp_path: Path) -> None:
    one, other = Settings(data_dir=tmp_path / "one"), Settings(data_dir=tmp_path / "other")
    token = issue_token(UNCONFIGURED, "alice", ["market:read"], dev_secret=lambda: development_jwt_secret(one))
    claims = jwt.decode(token, development_jwt_secret(one), algorithms=["HS256"])  # the oracle
    assert claims["sub"] == "alice"
    assert verifier(one).verify(token).account == "alice"
    with pytest.raises(ApiError) as refused:
        verifier(other).verify(token)
    assert refused.value.details == {"reason": "invalid token signature"}


def test_the_published_constant_no_longer_opens_a_dev_server(tmp_path: Path) -> None:
    now = int(time.time())
    forged = jwt.encode({"sub": "victim", "scope": "portfolio:write", "exp": now + 60, "iat": now}, DEV_JWT_SECRET,
                        algorithm="HS256")
    with pytest.raises(ApiError):
        verifier(Settings(data_dir=tmp_path)).verify(forged)


def test_production_has_no_development_secret(tmp_path: Path) -> None:
    production = Settings(profile="production", data_dir=tmp_path)
    with pytest.raises(ValueError, match="ENTASIS_API_JWT_SECRET must be set"):
        development_jwt_secret(production)
    with pytest.raises(ValueError):
        issue_token(UNCONFIGURED, "alice", dev_secret=lambda: development_jwt_secret(production))
    assert not any(tmp_path.iterdir())  # nothing written
    # without a secret and without a development secret, nothing is signed and nothing verified
    with pytest.raises(ValueError):
        issue_token(UNCONFIGURED, "alice")
    with pytest.raises(ApiError):
        JwtVerifier(UNCONFIGURED, dev=True).verify(jwt.encode({"sub": "a"}, "x" * 40, algorithm="HS256"))


def test_entasis_token_signs_with_the_secret_of_the_data_directory_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`up --data-dir X` runs a --dev API on X's secret: `entasis token --data-dir X` must sign with it
    (without the flag it signed with .entasis's, and `up`'s printed example was refused)."""
    from infra.cli.main import main

    monkeypatch.chdir(tmp_path)  # the default data directory, .entasis, is relative
    for name in [n for n in os.environ if n.startswith("ENTASIS_")]:
        monkeypatch.delenv(name)
    given = tmp_path / "elsewhere"
    assert main(["token", "--account", "bob", "--data-dir", str(given)]) == 0
    token = capsys.readouterr().out.strip()
    secret = (given / DEV_JWT_SECRET_FILE).read_text().strip()
    assert jwt.decode(token, secret, algorithms=["HS256"])["sub"] == "bob"  # the oracle
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, development_jwt_secret(Settings(data_dir=tmp_path / ".entasis")), algorithms=["HS256"])
