"""MarketRepository on its own: per-thread clients, the symbol cache, parameters not SQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from clickhouse_connect.driver.client import Client

from infra.store.repository import LastTrade, MarketRepository
from schemas.events import Interval
from tests.api.conftest import DAY, MINUTE, NS, Market, TradeRow

T0 = 1_723_161_600 * NS


def test_one_client_per_thread_and_close_closes_all(
    client_factory: Callable[[], Client], market: Market, new_symbol: Callable[[str], str], db: Client
) -> None:
    symbol = new_symbol("THR")
    market.trades([TradeRow("binance", symbol, "1", Decimal("7"), Decimal("1"), T0)])
    made: list[tuple[int, Client]] = []

    def factory() -> Client:
        client = client_factory()
        made.append((threading.get_ident(), client))
        return client

    repo = MarketRepository(factory, symbols_ttl_s=0)
    threads = 6
    barrier = threading.Barrier(threads)

    def work(_: int) -> list[LastTrade | None]:
        barrier.wait()  # all threads query at once
        return [repo.last_price(symbol) for _ in range(20)]

    with ThreadPoolExecutor(threads) as pool:
        results = [r for rs in pool.map(work, range(threads)) for r in rs]
    assert results == [LastTrade(Decimal("7"), T0, "binance")] * (threads * 20)
    assert len(made) == threads  # one per thread, reused for its 20 queries
    assert len({ident for ident, _ in made}) == threads

    repo.close()
    # After close the repository opens fresh clients on demand.
    assert repo.last_price(symbol) == LastTrade(Decimal("7"), T0, "binance")
    assert len(made) == threads + 1
    repo.close()


def test_known_symbols_are_cached_for_the_ttl(
    client_factory: Callable[[], Client], market: Market, new_symbol: Callable[[str], str], db: Client
) -> None:
    now = [100.0]
    repo = MarketRepository(client_factory, symbols_ttl_s=5, clock=lambda: now[0])
    first, second = new_symbol("CA"), new_symbol("CB")
    market.trades([TradeRow("binance", first, "1", Decimal("1"), Decimal("1"), T0)])
    assert first in repo.known_symbols()
    market.trades([TradeRow("binance", second, "1", Decimal("1"), Decimal("1"), T0)])
    now[0] += 4.9
    assert second not in repo.known_symbols()  # still the cached set
    now[0] += 0.1
    assert second in repo.known_symbols()
    repo.close()


def test_hostile_input_is_a_parameter_not_sql(repository: MarketRepository, db: Client) -> None:
    # The routes never let such a symbol through; the repository must be safe regardless.
    hostile = "X' OR 1=1 --"
    assert repository.last_price(hostile) is None
    assert repository.last_price("BTC-USDT", venue=hostile) is None
    assert repository.volume_24h(hostile, hostile, T0) == 0
    assert repository.candles(hostile, Interval.M1, T0, T0 + MINUTE, venue=hostile) == []
    assert repository.feed_state(hostile, hostile) is None
    assert db.query("SELECT count() FROM trades").result_rows[0][0] > 0


def test_candles_without_venue_use_the_default_venue(
    repository: MarketRepository, market: Market, new_symbol: Callable[[str], str]
) -> None:
    symbol = new_symbol("DV")
    market.trades(
        [
            TradeRow("alpha", symbol, "1", Decimal("1"), Decimal("1"), T0),
            TradeRow("beta", symbol, "1", Decimal("2"), Decimal("3"), T0 + NS),
        ]
    )
    rows = repository.candles(symbol, "1m", T0, T0 + DAY)
    assert [(r.open_ns, r.close, r.volume) for r in rows] == [(T0, Decimal(2), Decimal(3))]
    assert repository.candles("NONE-USDT", "1m", T0, T0 + DAY) == []
