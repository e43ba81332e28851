"""Who is the client, and may it talk to us: client-address resolution behind trusted proxies and
CIDR allowlists, IPv4 and IPv6 alike.

`X-Forwarded-For` is read only when the TCP peer is a configured trusted proxy; from anyone else
it is ignored, so a client cannot pick its own address. Behind a chain of proxies the header is
walked from the right (the hop our proxy appended) past every trusted proxy; the first address
that is not a trusted proxy is the client. An IPv4-mapped IPv6 peer (`::ffff:10.1.2.3`, what a
dual-stack socket reports for an IPv4 client) is the IPv4 address, so IPv4 allowlists match it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, collapse_addresses, ip_address

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

_BRACKETED = re.compile(r"^\[(?P<host>[^\]]+)\](?::\d{1,5})?$")
_V4_WITH_PORT = re.compile(r"^(?P<host>\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$")


class MalformedForwardedFor(ValueError):
    """A trusted proxy sent an X-Forwarded-For entry that is not an address."""


@lru_cache(maxsize=16_384)  # peers repeat: parsing one costs more than the rest of the address checks
def parse_address(text: str) -> IPAddress | None:
    """An address as found in a peer tuple or a forwarding header (`[v6]:port` and `v4:port`
    tolerated); None when it is not an IP address at all."""
    text = text.strip()
    match = _BRACKETED.match(text) or _V4_WITH_PORT.match(text)
    if match:
        text = match["host"]
    text = text.split("%", 1)[0]  # an IPv6 zone id names a local interface, not a host
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_wildcard(network: Network) -> bool:
    return network.prefixlen == 0


def covers_a_whole_family(networks: Iterable[Network]) -> bool:
    """Whether these networks together hold every IPv4 or every IPv6 address: a wildcard in
    effect, however it is spelled (`0.0.0.0/0`, or `0.0.0.0/1, 128.0.0.0/1`, or 256 /8s)."""
    networks = tuple(networks)
    v4 = [n for n in networks if isinstance(n, IPv4Network)]
    v6 = [n for n in networks if isinstance(n, IPv6Network)]
    # collapse_addresses merges adjacent and nested ranges, so full coverage collapses to /0.
    return any(n.prefixlen == 0 for n in collapse_addresses(v4)) or any(
        n.prefixlen == 0 for n in collapse_addresses(v6)
    )


class AddressSet:
    """A set of CIDR ranges. `None` (the peer is not an IP address, e.g. a Unix socket or a test
    client) belongs to no range."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks: tuple[Network, ...] = tuple(networks)
        self._v4 = tuple(n for n in self.networks if isinstance(n, IPv4Network))
        self._v6 = tuple(n for n in self.networks if isinstance(n, IPv6Network))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        if isinstance(address, IPv4Address):
            return any(address in n for n in self._v4)
        if isinstance(address, IPv6Address):
            return any(address in n for n in self._v6)
        return False


class ClientAddressResolver:
    def __init__(self, trusted_proxies: Iterable[Network]) -> None:
        self.trusted = AddressSet(trusted_proxies)

    def resolve(self, peer: str | None, forwarded_for: Sequence[str]) -> IPAddress | None:
        """The client's address from the TCP peer and every X-Forwarded-For header (in order).

        Raises MalformedForwardedFor when a trusted proxy forwarded something that is not an
        address: guessing would hand the decision to whoever wrote that header."""
        peer_address = parse_address(peer) if peer else None
        if peer_address is None or peer_address not in self.trusted or not forwarded_for:
            return peer_address
        hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
        client = peer_address
        for hop in reversed(hops):
            if not hop:
                continue
            address = parse_address(hop)
            if address is None:
                raise MalformedForwardedFor(hop[:64])
            client = address
            if address not in self.trusted:
                break
        return client
