"""Client addresses and allowlists, without HTTP."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from api.network import AddressSet, ClientAddressResolver, MalformedForwardedFor, parse_address

PROXIES = [ip_network("10.0.0.0/8"), ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.5", "203.0.113.5"),
        (" 203.0.113.5 ", "203.0.113.5"),
        ("203.0.113.5:4711", "203.0.113.5"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:203.0.113.5", "203.0.113.5"),  # what a dual-stack socket reports for IPv4
        ("testclient", None),
        ("unknown", None),
        ("", None),
        ("999.1.1.1", None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    parsed = parse_address(text)
    assert (str(parsed) if parsed else None) == expected


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("198.51.100.7", ["203.0.113.9"], "198.51.100.7"),  # untrusted peer: header ignored
        ("10.0.0.2", ["203.0.113.9"], "203.0.113.9"),
        ("10.0.0.2", ["203.0.113.9, 10.1.1.1"], "203.0.113.9"),  # past every trusted hop
        ("10.0.0.2", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),  # the client's own claim is left of it
        ("10.0.0.2", ["1.1.1.1", "203.0.113.9"], "203.0.113.9"),  # several header lines, in order
        ("10.0.0.2", ["10.0.0.5, 10.0.0.3"], "10.0.0.5"),  # all trusted: the farthest one
        ("10.0.0.2", [], "10.0.0.2"),
        ("10.0.0.2", [" , "], "10.0.0.2"),
        ("fd00::2", ["[2001:db8::5]:1234"], "2001:db8::5"),
        ("::ffff:10.0.0.2", ["203.0.113.9"], "203.0.113.9"),
        ("testclient", ["203.0.113.9"], None),
    ],
)
def test_forwarded_for_only_from_trusted_proxies(peer: str, forwarded: list[str], client: str | None) -> None:
    resolved = ClientAddressResolver(PROXIES).resolve(peer, forwarded)
    assert (str(resolved) if resolved else None) == client


def test_garbage_from_a_trusted_proxy_is_an_error_not_a_guess() -> None:
    with pytest.raises(MalformedForwardedFor):
        ClientAddressResolver(PROXIES).resolve("10.0.0.2", ["203.0.113.9, evil"])
    # ...but garbage left of the first untrusted hop is never read
    assert str(ClientAddressResolver(PROXIES).resolve("10.0.0.2", ["evil, 203.0.113.9"])) == "203.0.113.9"


def test_address_set() -> None:
    allow = AddressSet([ip_network("203.0.113.0/24"), ip_network("2001:db8:1::/48")])
    assert ip_address("203.0.113.200") in allow and ip_address("2001:db8:1:ffff::1") in allow
    assert ip_address("203.0.114.1") not in allow and ip_address("2001:db8:2::1") not in allow
    assert None not in allow and "203.0.113.1" not in allow
    assert not AddressSet([]) and allow
