"""`entasis double`: every venue double on one loopback server, playing from the start."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from infra.dev.exchange_double.binance import BinanceDouble
from infra.dev.exchange_double.coinbase import CoinbaseDouble
from infra.dev.exchange_double.kraken import KrakenDouble
from infra.dev.exchange_double.server import ExchangeDouble, VenueDouble

VENUE_NAMES = ("binance", "binance-usdm", "coinbase", "kraken")


def make_venues(data: Path, speed: float | None, names: Sequence[str] | None = None,
                max_frames: int | None = None) -> list[VenueDouble]:
    """The doubles of `names` (default all) over the recordings under `data` (../shared/data);
    `max_frames` cuts the Binance recordings short."""
    makers = {
        "binance": lambda: BinanceDouble(data / "binance", "spot", speed=speed, max_frames=max_frames),
        "binance-usdm": lambda: BinanceDouble(data / "binance", "usdm", speed=speed, max_frames=max_frames),
        "coinbase": lambda: CoinbaseDouble(data / "cryptofeed", speed=speed),
        "kraken": lambda: KrakenDouble(data / "cryptofeed", speed=speed),
    }
    unknown = set(names or ()) - set(makers)
    if unknown:
        raise ValueError(f"no double for {sorted(unknown)}; there are {', '.join(VENUE_NAMES)}")
    return [makers[name]() for name in (names or VENUE_NAMES)]


async def serve(host: str, port: int, speed: float | None, data: Path, names: Sequence[str] | None = None,
                max_frames: int | None = None, paused: bool = False) -> None:
    double = ExchangeDouble(make_venues(data, speed or None, names, max_frames))
    url = await double.start(host, port)
    if not paused:
        double.play()
    print(f"exchange double on {url}: {', '.join(double.venues)} (speed {speed or 'max'}"
          f"{'; paused until POST /_control/<venue>/play' if paused else ''}); Ctrl-C stops", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await double.stop()
