"""Who a request acts for, and the scopes of the contract (docs/decisions.md, "Credentials and limits")."""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKET_READ = "market:read"
PORTFOLIO_READ = "portfolio:read"
PORTFOLIO_WRITE = "portfolio:write"
ANALYSIS_READ = "analysis:read"
KNOWN_SCOPES: tuple[str, ...] = (MARKET_READ, PORTFOLIO_READ, PORTFOLIO_WRITE, ANALYSIS_READ)

# Account ids end up in rate-limit keys, logs and database rows: printable, no spaces, bounded.
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@|+-]{0,127}$")


def valid_account(account: object) -> bool:
    return isinstance(account, str) and ACCOUNT_RE.match(account) is not None


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `scopes` are what every presented credential allows (when a token
    and a key are both sent, the intersection: a request may do only what both permit)."""

    account: str
    scopes: frozenset[str]
    methods: tuple[str, ...]  # "jwt", "api_key": how it authenticated
    key_id: str | None = None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes
