"""The live page (/app) in a real headless Chromium driven by selenium, against the real API app
served by uvicorn on loopback, with a real embedded database (a chdb server process: chdb opens
one engine path per process, and tests/api holds the in-process one) and live data pushed into
the app's WebSocket hub, as the Kafka feed does in production.

Needs Debian's `chromium` and `chromium-driver` (infra/scripts/test.sh installs them). Every wait
polls a condition with a deadline; nothing asserts on a duration.

`APP_SCREENSHOT=docs/img/app.png` also writes the page with data there (the README's picture)."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from clickhouse_connect.driver.client import Client
from selenium import webdriver
from selenium.common.exceptions import JavascriptException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from api.app import create_app
from api.key_repository import ApiKeyRepository
from api.keys import ApiKeyRecord, generate_key
from api.portfolio_service import LocalPortfolioBus
from api.principal import KNOWN_SCOPES
from api.webapp import CONTENT_SECURITY_POLICY
from api.ws import MarketHub
from api.ws.protocol import CandleBar
from api.ws.server_protocol import SendManyWebSocketProtocol
from infra.store.clickhouse import client_for_url
from infra.store.migrate import apply_migrations
from infra.store.risk_repository import RiskRepository
from schemas.codecs.predictions import predictions_table
from schemas.codecs.risk import table as risk_table
from schemas.events import Interval
from schemas.prediction import Horizon, ModelStatus, Prediction, PredictionModel, Scores
from schemas.risk import RiskEstimate, RiskMethod
from tests.api.conftest import (
    HOUR,
    MINUTE,
    NS,
    CandleRow,
    Market,
    TradeRow,
    new_account,
    test_api_settings,
    token_for,
)
from tests.api.test_ws_support import free_port
from tests.integration import chdb_fixture

chdb_server_module = chdb_fixture.chdb_server_module  # pytest finds fixtures by module attribute name

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DEADLINE_S = 60.0  # generous: two cores shared with the rest of the suite
VENUE, SYMBOL, OTHER = "binance", "ETH-USDT", "BTC-USDT"
MINUTES = 180
T0 = 1_723_161_600 * NS - MINUTES * MINUTE  # history ends 2024-08-09T00:00Z (on the hour and the day)
D = Decimal


# --- data --------------------------------------------------------------------------------------


def minute_closes() -> list[Decimal]:
    """A random walk around 2680 (fixed seed), 2 decimals."""
    steps = np.random.default_rng(20).normal(0.0, 1.2, MINUTES)
    return [D(f"{2680 + x:.2f}") for x in np.cumsum(steps)]


def candles_of(closes: list[Decimal], per: int, interval: str) -> list[CandleRow]:
    """`per` one-minute bars aggregated into one candle of `interval` (open = previous close)."""
    rows = []
    opens = [closes[0], *closes[:-1]]
    for i in range(0, len(closes), per):
        chunk_o, chunk_c = opens[i : i + per], closes[i : i + per]
        prices = chunk_o + chunk_c
        rows.append(
            CandleRow(VENUE, SYMBOL, interval, T0 + i * MINUTE, chunk_o[0], max(prices), min(prices), chunk_c[-1],
                      D(per) * D("3.5"))
        )  # fmt: skip
    return rows


def no_scores() -> Scores:
    return Scores(scored=300, mae=None, mae_naive=None, skill=None, r2=None, hit_rate=None, up_rate=None,
                  mean_confidence=None, calibration_error=None)  # fmt: skip


def seed(client: Client, closes: list[Decimal]) -> None:
    market = Market(client)
    end = T0 + MINUTES * MINUTE
    market.trades([TradeRow(VENUE, SYMBOL, f"t{i}", c, D("0.5"), T0 + i * MINUTE + 30 * NS) for i, c in
                   enumerate(closes)])  # fmt: skip
    market.trades([TradeRow(VENUE, OTHER, "b1", D("61000"), D("0.1"), end - MINUTE)])
    market.candles(candles_of(closes, 1, "1m") + candles_of(closes, 5, "5m") + candles_of(closes, 60, "1h"))
    for kind, minutes_ago in (("feed_connected", 170), ("book_resync", 90), ("late_trade", 30)):
        market.quality(VENUE, SYMBOL, kind, end - minutes_ago * MINUTE)
    market.quality(VENUE, OTHER, "feed_stale", end - 5 * MINUTE)
    price = closes[-1]
    client.insert_arrow("risk_estimates", risk_table([
        RiskEstimate(venue=VENUE, symbol=SYMBOL, interval=Interval.H1, method=method, event_ts_ns=end,
                     recv_ts_ns=end + 5, price=price, var_95=D(var), expected_shortfall=D(var) * D("1.25"),
                     volatility=D("0.48"), window=2160)
        for method, var in zip(RiskMethod, ("101.5", "98.25", "110.75", "96.5", "104.0"), strict=True)
    ]))  # fmt: skip
    predictions = []
    for model in PredictionModel:
        for n, horizon in enumerate(Horizon):
            log_return = 0.001 * (n + 1) * (1 if model is PredictionModel.ENSEMBLE else -1)
            predictions.append(Prediction(
                venue=VENUE, symbol=SYMBOL, event_ts_ns=end, recv_ts_ns=end, interval=Interval.H1, model=model,
                model_version="test", features_version="f1", horizon=horizon, target_ts_ns=end + HOUR,
                price=price, prediction=(price * D(str(np.exp(log_return)))).quantize(D("0.00000001")),
                log_return=log_return, raw_log_return=log_return, direction=1 if log_return > 0 else -1,
                confidence=0.55 + 0.01 * n, status=ModelStatus.READY, remaining_candles=0,
                scores=no_scores(), recent_scores=no_scores(),
            ))  # fmt: skip
    client.insert_arrow("predictions", predictions_table(predictions))


# --- the served app ----------------------------------------------------------------------------


@dataclass
class LiveServer:
    """The app under uvicorn in a thread with its own event loop; the hub lives on that loop, so
    publishing goes through `call`."""

    base_url: str
    hub: MarketHub
    loop: asyncio.AbstractEventLoop

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except Exception as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout=DEADLINE_S)


@pytest.fixture(scope="module")
def store(chdb_server_module: str) -> Iterator[Callable[[], Client]]:
    client_for_url(chdb_server_module).command("CREATE DATABASE IF NOT EXISTS entasis")

    def factory() -> Client:
        return client_for_url(chdb_server_module, database="entasis")

    client = factory()
    apply_migrations(client)
    seed(client, minute_closes())
    yield factory
    client.close()


@pytest.fixture(scope="module")
def server(store: Callable[[], Client]) -> Iterator[LiveServer]:
    repository = RiskRepository(store, symbols_ttl_s=0)
    keys = ApiKeyRepository(store)
    hub = MarketHub()
    app = create_app(repository=repository, api_settings=test_api_settings(), key_repository=keys, market_hub=hub)
    app.state.portfolio_bus = LocalPortfolioBus()
    port = free_port()
    # The API's own WebSocket protocol, as `entasis api` serves (api/main.py uvicorn_config).
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                                       ws=SendManyWebSocketProtocol))
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(uv.serve())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + DEADLINE_S
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, f"uvicorn did not start: {failure!r}"
        time.sleep(0.05)
    live = LiveServer(f"http://127.0.0.1:{port}", hub, loop)
    closes = minute_closes()
    end = T0 + MINUTES * MINUTE
    live.call(hub.publish_trades, VENUE, SYMBOL, closes[-1], end - 1, D("0.5"))
    live.call(hub.publish_book, VENUE, SYMBOL, book_side(2679, -1), book_side(2680, 1), end - 1)
    try:
        yield live
    finally:
        uv.should_exit = True
        thread.join(DEADLINE_S)
        loop.close()
        repository.close()
        keys.close()


def book_side(start: int, step: int, n: int = 20) -> list[tuple[str, str]]:
    return [(f"{start + step * i * 0.25:.8f}", f"{0.5 + i:.8f}") for i in range(n)]


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: apt-get install -y chromium "
                    "chromium-driver (infra/scripts/test.sh installs them)")  # fmt: skip
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,800",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)  # fmt: skip
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # A 1280x800 viewport exactly (the window size counts the headless window's frame too).
    driver.get("about:blank")
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(1280 + 1280 - inner[0], 800 + 800 - inner[1])
    try:
        yield driver
    finally:
        driver.quit()


# --- helpers -----------------------------------------------------------------------------------


def wait_for(condition: Callable[[], Any], what: str, driver: WebDriver | None = None) -> Any:
    """Polls `condition` until it returns something truthy; fails after DEADLINE_S with `what`
    (and the browser's console, when a driver is given)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            value = condition()
        except (StaleElementReferenceException, JavascriptException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            console = driver.get_log("browser") if driver is not None else []
            pytest.fail(f"timed out waiting for {what}; browser console: {console}")
        time.sleep(0.1)


def attr(driver: WebDriver, element_id: str, name: str) -> str:
    return str(driver.find_element(By.ID, element_id).get_attribute(name) or "")


def text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def sign_in(driver: WebDriver, base_url: str, credential: str, kind: str = "token") -> None:
    # A new tab: sessionStorage is per tab, so it starts empty, and nothing of the last page (a
    # sign-in still in flight would store its credential again) can touch it.
    old = driver.current_window_handle
    driver.switch_to.new_window("tab")
    fresh = driver.current_window_handle
    driver.switch_to.window(old)
    driver.close()
    driver.switch_to.window(fresh)
    # and an empty console: what an earlier test's page logged (a wrong token's 401s) is not this one's
    driver.get_log("browser")
    driver.get(f"{base_url}/app/")
    wait_for(lambda: driver.find_element(By.ID, "login-form").is_displayed(), "the login form", driver)
    driver.find_element(By.CSS_SELECTOR, f"input[name=kind][value={kind}]").click()
    field = driver.find_element(By.ID, "credential")
    field.clear()
    field.send_keys(credential)
    driver.find_element(By.ID, "login-submit").click()


def severe(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("level") == "SEVERE"]


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", header[16:24])


# --- tests -------------------------------------------------------------------------------------


def test_the_page_is_served_without_credentials_under_a_strict_csp(server: LiveServer) -> None:
    with httpx.Client(base_url=server.base_url) as http:
        redirect = http.get("/app")
        assert redirect.status_code == 308 and redirect.headers["location"] == "/app/"
        page = http.get("/app/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "script-src 'self';" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
        assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in page.text and " style=" not in page.text  # nothing inline for the CSP to refuse
        for path in (
            "app.js",
            "style.css",
            "favicon.svg",
            "vendor/lightweight-charts/LICENSE",
            "vendor/lightweight-charts/lightweight-charts.standalone.production.js",
        ):
            asset = http.get(f"/app/{path}")
            assert asset.status_code == 200, path
            assert asset.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "Apache License" in http.get("/app/vendor/lightweight-charts/LICENSE").text
        missing = http.get("/app/nothing.js")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
        # the page is public; the data is not
        assert http.get("/api/v1/market/symbols").status_code == 401


def test_a_wrong_token_shows_a_clear_error(server: LiveServer, browser: WebDriver) -> None:
    expired = token_for(new_account("web"), ttl_s=-3600)
    for bad, reason in (("not-a-token", "malformed token"), (expired, "token expired")):
        sign_in(browser, server.base_url, bad)
        error = wait_for(
            lambda: text(browser, "login-error") if browser.find_element(By.ID, "login-error").is_displayed() else "",
            "the sign-in error",
            browser,
        )
        assert error == (
            f"Sign-in failed: AUTH_FAILED: Authentication failed ({reason}). Check the token or key and sign in again."
        )
        assert not browser.find_element(By.ID, "dashboard").is_displayed()
        assert browser.execute_script("return window.sessionStorage.getItem('entasis.credential')") is None


def test_live_page_with_data(server: LiveServer, browser: WebDriver, tmp_path: Path) -> None:
    account = new_account("web")
    token = token_for(account)
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {token}"}) as http:
        opened = http.post("/api/v1/portfolio/positions", json={"symbol": SYMBOL, "size": "2", "type": "long"})
        assert opened.status_code == 201, opened.text
    closes = minute_closes()
    # the fixture's book again: the tests share the hub, and another may have run first (any order)
    server.call(server.hub.publish_book, VENUE, SYMBOL, book_side(2679, -1), book_side(2680, 1),
                T0 + MINUTES * MINUTE - 1)
    browser.get_log("browser")  # start with an empty console
    sign_in(browser, server.base_url, token)
    wait_for(lambda: browser.find_element(By.ID, "dashboard").is_displayed(), "the dashboard", browser)

    # history: every stored minute (the last one the open minute of the last trade)
    wait_for(lambda: attr(browser, "chart", "data-candles") == str(MINUTES), "the 1m history", browser)
    assert attr(browser, "chart", "data-last-close") == str(float(closes[-1]))
    # the book from the WebSocket snapshot
    wait_for(lambda: attr(browser, "book-panel", "data-best-bid") == "2679.00000000", "the book snapshot", browser)
    assert attr(browser, "live-status", "data-state") == "live"

    # live candles: a revision of the open minute, then a new minute
    end = T0 + MINUTES * MINUTE
    live_before = int(attr(browser, "chart", "data-live-candles"))
    last = closes[-1]
    revised, newest = last + D("0.75"), last + D("1.25")
    for open_ns, close, final in ((end - MINUTE, revised, True), (end, newest, False)):
        server.call(server.hub.publish_candle, VENUE, SYMBOL, "1m",
                    CandleBar(open_ns, last, close + 1, last - 1, close, D("1"), final))  # fmt: skip
    wait_for(lambda: attr(browser, "chart", "data-last-close") == str(float(newest)), "the live candle", browser)
    assert attr(browser, "chart", "data-candles") == str(MINUTES + 1)
    assert int(attr(browser, "chart", "data-live-candles")) >= live_before + 2
    # a candle of another venue or interval is not on this chart
    server.call(server.hub.publish_candle, "kraken", SYMBOL, "1m",
                CandleBar(end + MINUTE, D("1"), D("1"), D("1"), D("1"), D("1"), False))  # fmt: skip

    # the book updates
    updates = int(attr(browser, "book-panel", "data-updates"))
    for i in range(1, 4):
        server.call(server.hub.publish_book, VENUE, SYMBOL, book_side(2679 + i, -1), book_side(2680 + i, 1), end + i)
    wait_for(lambda: attr(browser, "book-panel", "data-best-bid") == "2682.00000000", "the book update", browser)
    assert int(attr(browser, "book-panel", "data-updates")) > updates
    bids = browser.find_elements(By.CSS_SELECTOR, "#bids tbody tr")
    assert bids[0].text.split() == ["2682.00", "0.5000"]

    # the REST panels
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#risk tbody tr")) == 5, "the risk table", browser)
    risk = {
        row.text.split()[0]: row.text.split()[1] for row in browser.find_elements(By.CSS_SELECTOR, "#risk tbody tr")
    }
    assert risk == {"historical": "101.50", "parametric": "98.25", "parametric_t": "110.75", "ewma": "96.50",
                    "garch": "104.00"}  # fmt: skip
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#predictions tbody tr")) == 6, "predictions", browser)
    first = browser.find_elements(By.CSS_SELECTOR, "#predictions tbody tr")[0].text
    assert first.startswith("ensemble 1h") and first.endswith("▲ 55.0 %")
    wait_for(lambda: "ETH-USDT binance connected" in text(browser, "feeds"), "the feed states", browser)
    assert "BTC-USDT binance stale" in text(browser, "feeds")
    wait_for(lambda: "late_trade" in text(browser, "quality"), "the quality events", browser)
    quality = [r.text.split()[-1] for r in browser.find_elements(By.CSS_SELECTOR, "#quality tbody tr")]
    assert quality == ["late_trade", "book_resync", "feed_connected"]  # newest first
    wait_for(lambda: "Equity" in text(browser, "balance"), "the balance", browser)
    positions = [r.text.split() for r in browser.find_elements(By.CSS_SELECTOR, "#positions tbody tr")]
    entry = f"{closes[-1]:.2f}"  # the latest stored trade, marked at the same price: no PnL
    assert positions == [["ETH-USDT", "long", "2.0000", entry, entry, "0.00"]]

    # the interval switch: the 5m history, then live 5m revisions
    browser.find_element(By.CSS_SELECTOR, ".intervals button[data-interval='5m']").click()
    wait_for(lambda: attr(browser, "chart", "data-interval") == "5m", "the 5m chart", browser)
    wait_for(lambda: attr(browser, "chart", "data-candles") == str(MINUTES // 5), "the 5m history", browser)
    server.call(server.hub.publish_candle, VENUE, SYMBOL, "5m",
                CandleBar(end, last, last + 3, last - 1, last + 2, D("4"), False))  # fmt: skip
    wait_for(lambda: attr(browser, "chart", "data-last-close") == str(float(last + 2)), "the live 5m", browser)
    assert attr(browser, "chart", "data-candles") == str(MINUTES // 5 + 1)

    screenshot = Path(os.environ.get("APP_SCREENSHOT") or tmp_path / "app.png")
    browser.find_element(By.CSS_SELECTOR, ".intervals button[data-interval='1m']").click()
    # the stored history, then the hub's latest 1m revision on subscribe (the live minute, not stored)
    wait_for(lambda: attr(browser, "chart", "data-candles") == str(MINUTES + 1), "the 1m chart again", browser)
    wait_for(lambda: attr(browser, "chart", "data-last-close") == str(float(newest)), "the latest 1m", browser)
    # the chart draws on the next animation frames
    browser.execute_async_script("const done = arguments[0]; requestAnimationFrame(() => requestAnimationFrame(done))")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot))
    assert png_size(screenshot) == (1280, 800)

    assert severe(browser.get_log("browser")) == []  # no console error while all of this happened


def test_an_api_key_signs_in_and_gets_the_live_feed(
    server: LiveServer, browser: WebDriver, store: Callable[[], Client]
) -> None:
    """A browser cannot set headers on a WebSocket: the page offers the key as the subprotocol
    `entasis.key.<key>` (api/security.py), so a key gets the same live book as a token."""
    new = generate_key()
    keys = ApiKeyRepository(store)
    try:
        keys.insert(ApiKeyRecord(new.key_id, new_account("webkey"), new.key_hash, KNOWN_SCOPES, (), "browser"))
    finally:
        keys.close()
    end = T0 + MINUTES * MINUTE
    server.call(server.hub.publish_book, VENUE, SYMBOL, book_side(2690, -1), book_side(2691, 1), end + 10)
    sign_in(browser, server.base_url, new.key, kind="key")
    wait_for(lambda: browser.find_element(By.ID, "dashboard").is_displayed(), "the dashboard", browser)
    assert text(browser, "account") == "API key"
    wait_for(lambda: attr(browser, "live-status", "data-state") == "live", "the WebSocket", browser)
    wait_for(lambda: attr(browser, "book-panel", "data-best-bid") == "2690.00000000", "the book snapshot", browser)
    server.call(server.hub.publish_book, VENUE, SYMBOL, book_side(2695, -1), book_side(2696, 1), end + 11)
    wait_for(lambda: attr(browser, "book-panel", "data-best-bid") == "2695.00000000", "the book update", browser)
    wait_for(lambda: int(attr(browser, "chart", "data-candles")) >= MINUTES, "the history", browser)
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#risk tbody tr")) == 5, "the risk table", browser)
    # the key went to sessionStorage, nowhere else
    stored = browser.execute_script("return JSON.parse(window.sessionStorage.getItem('entasis.credential'))")
    assert stored == {"kind": "key", "value": new.key}
    assert browser.execute_script("return window.localStorage.length") == 0
    assert severe(browser.get_log("browser")) == []
    browser.find_element(By.ID, "logout").click()
    wait_for(lambda: browser.find_element(By.ID, "login-form").is_displayed(), "the login form", browser)
    assert browser.execute_script("return window.sessionStorage.getItem('entasis.credential')") is None
