"""API keys: format, generation, hashing, and the cached check every request with `X-API-Key` runs.

A key is `ek_<key_id>_<secret>`: `key_id` is 16 hex digits, public, the row's lookup key (and what
`entasis keys list|revoke` show); `secret` is 32 random bytes (256 bits, base64url). The `ek_`
prefix lets secret scanners recognise a leaked key. The full key is shown once, at creation;
the database keeps only

    hmac-sha256$<salt hex>$<HMAC-SHA256(key=salt, msg=key_id ":" secret) hex>

Why not scrypt or another slow hash: slowness protects secrets a person chose, which an attacker
can enumerate. A 256-bit random secret cannot be enumerated at any hash speed, so a slow hash would
add no protection, while every request that misses the cache, and every forged key with a valid
id, would cost tens of milliseconds of CPU: a cheap way to overload the API. The per-key random
salt makes equal secrets hash differently and rules out precomputation; binding `key_id` into
the MAC stops a row's hash from being copied onto another id; comparison is constant time. The
`hmac-sha256$` prefix names the scheme, so a later one can be introduced beside it.

Revocation: a row is read from the database at most every `api_key_cache_seconds` (default 2 s)
per API process, so a revoked key stops working everywhere within that time. Unknown ids are
cached too, so a repeated id costs no query; the cache is bounded and evicts unknown ids first,
so a flood of random ids can only push out other unknown ids, never a real key's row. Concurrent
checks of one uncached id share a single query (singleflight). Random ids still cost a query
each: the security gate charges every such query to the client address's rate limit before it
runs (api/security.py), so an address over its limit gets no query at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from api.network import AddressSet, IPAddress, Network

KEY_PREFIX = "ek_"
_KEY_RE = re.compile(r"^ek_(?P<key_id>[0-9a-f]{16})_(?P<secret>[A-Za-z0-9_-]{43})$")
_HASH_SCHEME = "hmac-sha256"


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: str
    account: str
    key_hash: str
    scopes: tuple[str, ...]
    allowed_networks: tuple[Network, ...] = ()
    label: str = ""
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    _allowed: AddressSet = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_allowed", AddressSet(self.allowed_networks))

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows_address(self, address: IPAddress | None) -> bool:
        """No per-key list means the deployment's allowlist alone decides."""
        return not self._allowed or address in self._allowed


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once, never stored
    key_id: str
    key_hash: str


def split_key(presented: str) -> tuple[str, str] | None:
    match = _KEY_RE.match(presented)
    return (match["key_id"], match["secret"]) if match else None


def _mac(salt: bytes, key_id: str, secret: str) -> str:
    return hmac.new(salt, f"{key_id}:{secret}".encode(), hashlib.sha256).hexdigest()


def hash_key(key_id: str, secret: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    return f"{_HASH_SCHEME}${salt.hex()}${_mac(salt, key_id, secret)}"


def verify_secret(key_hash: str, key_id: str, secret: str) -> bool:
    scheme, _, rest = key_hash.partition("$")
    salt_hex, _, digest = rest.partition("$")
    if scheme != _HASH_SCHEME or not digest:
        return False
    try:
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    return hmac.compare_digest(_mac(salt, key_id, secret), digest)


def generate_key() -> NewKey:
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)  # 32 bytes -> 43 base64url characters, no padding
    return NewKey(f"{KEY_PREFIX}{key_id}_{secret}", key_id, hash_key(key_id, secret))


class KeyRejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Lookup = Callable[[str], Awaitable[ApiKeyRecord | None]]
# Called before a store query is started (not for a cache hit, nor for a query already in flight);
# it may raise to refuse the query, e.g. when the caller's address is over its rate limit.
BeforeLookup = Callable[[], Awaitable[None]]


class ApiKeyVerifier:
    """Checks presented keys against rows fetched by `lookup` (async, so the database query runs
    off the event loop), caching each row, or its absence, for `ttl_s`.

    At most `max_entries` ids are cached; absences are evicted before rows (oldest first), so
    only real keys compete for room among themselves."""

    def __init__(
        self,
        lookup: Lookup,
        *,
        ttl_s: float = 2.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, ApiKeyRecord | None]] = OrderedDict()
        self._absent: OrderedDict[str, None] = OrderedDict()  # the ids in _cache with no row, oldest first
        self._inflight: dict[str, asyncio.Task[ApiKeyRecord | None]] = {}

    def cached(self, key_id: str) -> tuple[bool, ApiKeyRecord | None]:
        """(True, row or None) when the cache answers for `key_id` now; (False, None) otherwise."""
        entry = self._cache.get(key_id)
        if entry is None or self._clock() - entry[0] >= self._ttl_s:
            return False, None
        self._cache.move_to_end(key_id)
        if entry[1] is None:
            self._absent.move_to_end(key_id)
        return True, entry[1]

    def _store(self, key_id: str, found: ApiKeyRecord | None) -> None:
        self._cache[key_id] = (self._clock(), found)
        self._cache.move_to_end(key_id)
        if found is None:
            self._absent[key_id] = None
            self._absent.move_to_end(key_id)
        else:
            self._absent.pop(key_id, None)
        while len(self._cache) > self._max_entries:
            if self._absent:
                oldest_absent, _ = self._absent.popitem(last=False)
                del self._cache[oldest_absent]
            else:
                self._cache.popitem(last=False)

    async def _fetch(self, key_id: str) -> ApiKeyRecord | None:
        try:
            found = await self._lookup(key_id)
            self._store(key_id, found)
            return found
        finally:
            if self._inflight.get(key_id) is asyncio.current_task():  # not a newer one for the same id
                del self._inflight[key_id]

    def _inflight_task(self, key_id: str) -> asyncio.Task[ApiKeyRecord | None] | None:
        task = self._inflight.get(key_id)
        # A task left by another event loop (a test client's, closed mid-query) cannot be awaited here.
        if task is not None and task.get_loop() is not asyncio.get_running_loop():
            return None
        return task

    async def record(self, key_id: str, before_lookup: BeforeLookup | None = None) -> ApiKeyRecord | None:
        hit, found = self.cached(key_id)
        if hit:
            return found
        task = self._inflight_task(key_id)
        if task is None:
            if before_lookup is not None:
                await before_lookup()
            task = self._inflight_task(key_id)  # another caller may have started it meanwhile
        if task is None:
            # A task of its own, so that one caller going away (a client disconnecting) does not
            # cancel the query the others wait for; each waits through `shield` for that reason.
            task = asyncio.ensure_future(self._fetch(key_id))
            # Every waiter may be gone when it fails: its exception is then read here, not logged
            # as "never retrieved".
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._inflight[key_id] = task
        return await asyncio.shield(task)

    async def verify(self, presented: str, before_lookup: BeforeLookup | None = None) -> ApiKeyRecord:
        """The key's row; KeyRejected when the key is malformed, unknown, wrong or revoked.
        "revoked" is said only to a caller that holds the real secret. `before_lookup`: see
        BeforeLookup; what it raises propagates."""
        parts = split_key(presented.strip())
        if parts is None:
            raise KeyRejected("malformed API key")
        key_id, secret = parts
        record = await self.record(key_id, before_lookup)
        if record is None or not verify_secret(record.key_hash, key_id, secret):
            raise KeyRejected("invalid API key")
        if record.revoked:
            raise KeyRejected("API key revoked")
        return record
