"""The `/ws/market` WebSocket through `entasis_client.MarketStream`, against a running `entasis up`.

    .venv/bin/python clients/python/examples/ws_example.py
    .venv/bin/python clients/python/examples/ws_example.py --symbol ETH-USDT --messages 20 --depth 3

Subscribes to the market, orderbook and 1m candles channels of one symbol and prints each message
with its `seq`; a jump in `seq` (the server merged updates while this client was behind) is
reported as a gap. The connection reconnects and resubscribes by itself if it drops. Token and
TLS as in rest_example.py."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

from entasis_client import CandleUpdate, MarketStream, MarketTick, OrderBookUpdate, StreamMessage


def development_token() -> str:
    entasis = shutil.which("entasis") or str(Path(sys.executable).with_name("entasis"))
    return subprocess.check_output([entasis, "token"], text=True).strip()


def show(message: StreamMessage) -> str:
    head = f"{message.channel:<9} {message.exchange:>8} {message.symbol} seq {message.seq:<4}"
    if message.gap:
        head += f" (gap: {message.gap} merged)"
    if message.resumed:
        head += " (after a reconnect)"
    if isinstance(message, MarketTick):
        return f"{head} price {message.price} size {message.volume} at {message.timestamp:%H:%M:%S.%f}"
    if isinstance(message, OrderBookUpdate):
        return f"{head} bid {message.bids[0][0]} / ask {message.asks[0][0]} ({len(message.bids)} levels)"
    assert isinstance(message, CandleUpdate)
    final = "final" if message.is_final else "open"
    return f"{head} {message.interval} {message.timestamp:%H:%M} C {message.close} V {message.volume} ({final})"


async def run(args: argparse.Namespace) -> None:
    token = args.token or development_token()
    ca_file = args.ca_file if args.url.startswith("https") else None

    def on_reconnect(count: int) -> None:
        print(f"-- reconnected ({count}), subscriptions renewed")

    async with MarketStream(args.url, token=token, ca_file=ca_file, on_reconnect=on_reconnect) as stream:
        ack = await stream.subscribe_market(args.symbol)
        print(f"subscribed market: {ack.exchanges}")
        ack = await stream.subscribe_orderbook(args.symbol, depth=args.depth)
        print(f"subscribed orderbook on {ack.exchange}, depth {ack.depth}")
        ack = await stream.subscribe_candles(args.symbol, "1m")
        print(f"subscribed candles {ack.interval} on {ack.exchange}")
        print(f"ping: {await stream.ping() * 1000:.1f} ms")
        received = 0
        async for message in stream:
            print(show(message))
            received += 1
            if received >= args.messages:
                break
        print(f"{received} messages, {stream.gaps} updates merged by the server, {stream.reconnects} reconnects")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("ENTASIS_URL", "https://127.0.0.1:8000"))
    parser.add_argument("--ca-file", default=os.environ.get("ENTASIS_CA_FILE", ".entasis/tls/cert.pem"))
    parser.add_argument("--token", default=os.environ.get("ENTASIS_TOKEN"))
    parser.add_argument("--symbol", default="BTC-USDT")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--messages", type=int, default=12)
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
