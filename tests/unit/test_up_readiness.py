"""`entasis up` says it is up only once `/readyz` is green and every feed symbol has a price
(infra/cli/stack.py `wait_until_ready`): scripted API answers and a fake clock, no processes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from infra.cli.stack import NotReady, wait_until_ready

READY = (200, {"status": "ok"})
NOT_READY = (503, {"status": "unavailable"})
NOT_SERVED = (404, {"error": {"code": "MARKET_001"}})
WARMING = (503, {"error": {"code": "UNAVAILABLE", "details": {"reason": "warming up"}}})
PRICE = (200, {"price": "1.00000000"})
STALE = (503, {"error": {"code": "MARKET_002"}})


class Api:
    """Answers each path from its script, one entry per GET, the last one repeated; records calls."""

    def __init__(self, scripts: dict[str, list[Any]]) -> None:
        self.scripts = scripts
        self.calls: list[str] = []

    def get(self, path: str) -> tuple[int, Any]:
        self.calls.append(path)
        script = self.scripts[path]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def wait(api: Api, symbols: list[str], timeout_s: float = 10.0, check: Callable[[], None] = lambda: None) -> Clock:
    clock = Clock()
    wait_until_ready(api.get, symbols, timeout_s, check=check, poll_s=1.0, clock=clock, sleep=clock.sleep)
    return clock


def test_waits_through_refusals_an_unready_api_404_and_warming_up_until_every_symbol_has_a_price() -> None:
    api = Api(
        {
            "/readyz": [ConnectionRefusedError("refused"), NOT_READY, READY],
            "/api/v1/market/price/BTC-USDT": [NOT_SERVED, WARMING, PRICE],
            "/api/v1/market/price/ETH-USDT": [STALE],  # served, its feed marked down: still up
        }
    )
    clock = wait(api, ["BTC-USDT", "ETH-USDT"])
    assert api.calls == ["/readyz"] * 3 + ["/api/v1/market/price/BTC-USDT"] * 3 + ["/api/v1/market/price/ETH-USDT"]
    assert clock.now == 4.0  # one poll interval after each "not yet", none after an answer that counts


def test_gives_up_after_the_timeout_naming_the_last_answer() -> None:
    api = Api({"/readyz": [READY], "/api/v1/market/price/BTC-USDT": [NOT_SERVED]})
    with pytest.raises(NotReady, match=r"not ready after 5s: GET /api/v1/market/price/BTC-USDT last answered 404"):
        wait(api, ["BTC-USDT"], timeout_s=5.0)


def test_without_symbols_readyz_alone_decides() -> None:
    api = Api({"/readyz": [NOT_READY, READY]})
    wait(api, [])
    assert api.calls == ["/readyz", "/readyz"]


def test_a_dead_child_ends_the_wait_with_its_own_error() -> None:
    def check() -> None:
        raise RuntimeError("worker exited with 1")

    with pytest.raises(RuntimeError, match="worker exited"):
        wait(Api({"/readyz": [NOT_READY]}), [], check=check)
