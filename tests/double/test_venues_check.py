"""`entasis venues check` (and `entasis up --dry-run`): each configured venue:SYMBOL is looked
up in its venue's market list through ccxt, here the exchange double's, and every problem is
named."""

from __future__ import annotations

import argparse
import socket

import pytest

from infra.cli.main import cmd_up, cmd_venues_check
from infra.cli.venues_check import check, render
from infra.config.settings import Settings
from infra.dev.exchange_double.run import make_venues
from infra.dev.exchange_double.server import ExchangeDouble
from tests.shared_data import DATA


async def test_every_configured_feed_is_found_or_explained() -> None:
    double = ExchangeDouble(make_venues(DATA, None))
    base = await double.start()
    try:
        lines = await check([
            "binance:ETH-USDT", "binance-usdm:eth-usdt", "coinbase:SKL-USD", "kraken:XMR-USD",
            "binance:BTC-USDT", "coinbase:SKL-JPY", "kraken:NOPE-USD",
            "ftx:BTC-USD", "binance:ETHUSDT", "binance:ETH-USDT",
        ], endpoint=base)
    finally:
        await double.stop()
    by_item = {line.item: line for line in lines}
    assert [line.item for line in lines if line.ok] == [
        "binance:ETH-USDT", "binance-usdm:ETH-USDT", "coinbase:SKL-USD", "kraken:XMR-USD"]
    assert by_item["binance:ETH-USDT"].message == "ccxt ETH/USDT, venue id ETHUSDT"
    assert by_item["binance-usdm:ETH-USDT"].message == "ccxt ETH/USDT:USDT, venue id ETHUSDT"
    assert by_item["kraken:XMR-USD"].message.startswith("ccxt XMR/USD, venue id ")
    assert by_item["binance:BTC-USDT"].message == "binance has no spot market BTC/USDT; it lists binance:ETH-USDT"
    # the same base asset where the venue has it, else the same quote
    assert by_item["coinbase:SKL-JPY"].message.startswith("coinbase has no spot market SKL/JPY; it lists coinbase:SKL-")
    assert by_item["kraken:NOPE-USD"].message.startswith("kraken has no spot market NOPE/USD; it lists kraken:")
    assert by_item["kraken:NOPE-USD"].message.count("-USD") == 8
    assert "unknown venue 'ftx'" in by_item["ftx:BTC-USD"].message
    assert "BASE-QUOTE" in by_item["binance:ETHUSDT"].message
    assert [line.message for line in lines].count("listed twice") == 1
    assert "FAIL  ftx:BTC-USD" in render(lines)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_command_fails_with_reasons_when_a_venue_cannot_be_reached(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(venues="binance:ETH-USDT,foo:ETH-USDT", endpoint=f"http://127.0.0.1:{_closed_port()}")
    assert cmd_venues_check(Settings(), args) == 1
    out = capsys.readouterr().out
    assert "FAIL  binance:ETH-USDT  cannot load binance's market list (" in out
    assert "unknown venue 'foo'" in out
    assert "0 of 2 feeds usable; fix the 2 marked FAIL" in out


def test_no_configuration_is_an_error_and_up_dry_run_checks_the_same_way(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(venues=None, endpoint=None, dry_run=True)
    assert cmd_up(Settings(venues=""), args) == 1
    assert "no venues configured: set ENTASIS_VENUES or pass --venues" in capsys.readouterr().out
    bad = argparse.Namespace(venues="binance:ETH-USDT,kraken", endpoint=None, dry_run=False, replay=None)
    assert cmd_up(Settings(), bad) == 2
    assert "bad venue configuration: 'kraken': expected venue:SYMBOL" in capsys.readouterr().err
