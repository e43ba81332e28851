"""The REST API through `entasis_client.Client`, against a running `entasis up`.

    .venv/bin/python clients/python/examples/rest_example.py
    .venv/bin/python clients/python/examples/rest_example.py --url https://127.0.0.1:8000 \
        --ca-file .entasis/tls/cert.pem --symbol BTC-USDT --trade

The token comes from `--token`, else $ENTASIS_TOKEN, else `.venv/bin/entasis token` (a development
token with every scope, which `entasis up` accepts). `--trade` also opens and closes a small paper
position (with an Idempotency-Key, as every POST of the client)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from entasis_client import Client, EntasisError, FeedUnavailable, PredictionUnavailable, Unavailable


def development_token() -> str:
    entasis = shutil.which("entasis") or str(Path(sys.executable).with_name("entasis"))
    return subprocess.check_output([entasis, "token"], text=True).strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("ENTASIS_URL", "https://127.0.0.1:8000"))
    parser.add_argument("--ca-file", default=os.environ.get("ENTASIS_CA_FILE", ".entasis/tls/cert.pem"))
    parser.add_argument("--token", default=os.environ.get("ENTASIS_TOKEN"))
    parser.add_argument("--symbol", default="BTC-USDT")
    parser.add_argument("--trade", action="store_true", help="open and close a 0.01 paper position")
    args = parser.parse_args()

    token = args.token or development_token()
    ca_file = args.ca_file if args.url.startswith("https") else None
    with Client(args.url, token=token, ca_file=ca_file) as api:
        print("symbols:")
        for info in api.symbols().data:
            feed = info.feed.state if info.feed else "-"
            print(f"  {info.exchange:>8} {info.symbol:<10} {info.trades:>8} trades, last {info.last_trade:%H:%M:%S}, "
                  f"feed {feed}")

        price = api.price(args.symbol)
        print(f"price: {price.symbol} {price.price} on {price.exchange} at {price.timestamp.isoformat()}, "
              f"24h volume {price.volume}")

        start = price.timestamp - timedelta(minutes=3)
        history = api.history(args.symbol, interval="1m", start=start, exchange=price.exchange)
        print(f"history ({len(history.data)} candles of 1m since {start:%H:%M:%S}):")
        for candle in history.data:
            print(f"  {candle.timestamp:%H:%M} O {candle.open} H {candle.high} L {candle.low} C {candle.close} "
                  f"V {candle.volume}")

        try:
            book = api.orderbook(args.symbol, depth=3)
            print(f"order book at {book.timestamp:%H:%M:%S.%f}: best bid {book.bids[0][0]} x {book.bids[0][1]}, "
                  f"best ask {book.asks[0][0]} x {book.asks[0][1]}")
        except FeedUnavailable as error:
            print(f"order book: {error.code} {error.details}")

        page = api.trades(args.symbol, limit=3)
        print(f"trades (first page of 3, next_cursor={page.next_cursor!r}):")
        for trade in page.data:
            print(f"  {trade.timestamp:%H:%M:%S.%f} {trade.side:<4} {trade.size} @ {trade.price}")

        events = api.quality(args.symbol, limit=3)
        print(f"quality events: {[(e.kind, e.exchange) for e in events.data]}")

        try:
            risk = api.risk(args.symbol)
            print(f"risk ({risk.method}, {risk.interval}): VaR95 {risk.var_95}, ES {risk.expected_shortfall}, "
                  f"vol {risk.volatility}")
        except Unavailable as error:
            print(f"risk: {error.code} {error.details}")
        try:
            forecast = api.prediction(args.symbol, timeframe="1h")
            print(f"prediction: {forecast.prediction} ({forecast.direction}, confidence {forecast.confidence:.3f})")
        except PredictionUnavailable as error:
            print(f"prediction: {error.code}, retry after {error.retry_after} s")

        if args.trade:
            opened = api.open_position(args.symbol, "0.01", "long")
            print(f"opened {opened.position_id} at {opened.timestamp:%H:%M:%S}")
            for position in api.positions().positions:
                print(f"  {position.position_id} {position.type} {position.size} @ {position.entry_price}, "
                      f"pnl {position.pnl}")
            closed = api.close_position(opened.position_id)
            print(f"closed at {closed.exit_price}, pnl {closed.pnl}")
        balance = api.balance()
        print(f"balance {balance.balance}, equity {balance.equity}, open positions {balance.open_positions}")

        try:
            api.price("NOPE-USDT")
        except EntasisError as error:  # a SymbolNotFound
            print(f"errors are exceptions: {type(error).__name__}: {error}")
        if api.rate_limit:
            print(f"rate limit: {api.rate_limit.remaining} of {api.rate_limit.limit} left "
                  f"(at {datetime.now(UTC):%H:%M:%S})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
