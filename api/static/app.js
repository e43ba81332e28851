// The live page (api/webapp.py serves it at /app/). Plain browser JavaScript, no build step.
// Credentials live in sessionStorage only (this tab, gone when it closes); every value from the
// server is put into the page as text (textContent), never as HTML.
"use strict";

(() => {
  const API = "/api/v1";
  const STORE_KEY = "entasis.credential";
  const STORE_MARKET = "entasis.market";
  const INTERVALS = ["1m", "5m", "1h", "1d"];
  const RISK_METHODS = ["historical", "parametric", "parametric_t", "ewma", "garch"];
  const MODELS = ["ensemble", "lstm"];
  const HORIZONS = ["1h", "4h", "1d"];
  const BOOK_DEPTH = 10;
  const SLOW_REFRESH_MS = 60000; // risk and predictions: new values at most once a candle
  const REFRESH_MS = 15000; // feeds, quality, portfolio
  const PING_MS = 30000; // keeps the socket under the server's idle limit
  const DAY_MS = 86400000;
  // Close codes after which reconnecting cannot help (api/ws/endpoint.py).
  const FATAL_CLOSES = {
    4401: "the credential was refused, has expired or was revoked",
    4403: "the credential lacks the market:read scope",
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    credential: null, // {kind: "token"|"key", value}
    symbols: [], // /market/symbols data
    market: null, // {symbol, exchange}
    interval: "1m",
    generation: 0, // bumped on every market or interval change: late answers are dropped
    bars: new Map(), // time (s) -> bar of the chart
    lastTime: null,
    liveCandles: 0,
    bookUpdates: 0,
    socket: null,
    socketTries: 0,
    timers: [],
    chart: null,
    series: null,
  };

  // --- helpers ------------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, body) {
      const error = body && body.error ? body.error : null;
      const reason = error && error.details && error.details.reason ? ` (${error.details.reason})` : "";
      super(error ? `${error.code}: ${error.message}${reason}` : `HTTP ${status}`);
      this.status = status;
      this.code = error ? error.code : null;
    }
  }

  function authHeaders() {
    const c = state.credential;
    if (!c) return {};
    return c.kind === "key" ? { "X-API-Key": c.value } : { Authorization: `Bearer ${c.value}` };
  }

  async function api(path, params) {
    const url = new URL(API + path, window.location.origin);
    for (const [name, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
    }
    let response;
    try {
      response = await fetch(url, { headers: { Accept: "application/json", ...authHeaders() }, cache: "no-store" });
    } catch (err) {
      throw new ApiFailure(0, { error: { code: "NETWORK", message: "server unreachable", details: null } });
    }
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const failure = new ApiFailure(response.status, body);
      if (response.status === 401 && state.credential) signOut(`Signed out: ${failure.message}`);
      throw failure;
    }
    return body;
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function fillRows(table, rows) {
    const body = table.tBodies[0];
    body.replaceChildren(
      ...rows.map((cells) => {
        const tr = document.createElement("tr");
        for (const cell of cells) {
          tr.append(cell instanceof Node ? cell : el("td", cell));
        }
        return tr;
      }),
    );
  }

  function messageRow(columns, text) {
    const td = el("td", text, "muted");
    td.colSpan = columns;
    return [td];
  }

  const trim = (decimal, places = 2) => (decimal === null || decimal === undefined ? "–" : Number(decimal).toFixed(places));
  const priceText = (decimal) => {
    const n = Number(decimal);
    return n >= 1000 ? n.toFixed(2) : n >= 1 ? n.toFixed(4) : n.toPrecision(6);
  };
  const shortTime = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d{3}Z$/, "Z") : "–");
  const toSeconds = (iso) => Math.floor(Date.parse(iso) / 1000);

  function setBanner(text) {
    const banner = $("banner");
    banner.textContent = text || "";
    banner.hidden = !text;
  }

  function every(ms, fn) {
    state.timers.push(window.setInterval(fn, ms));
  }

  // --- sign in and out ---------------------------------------------------------------------

  function showView(view) {
    document.body.dataset.view = view;
    const signedIn = view === "dashboard";
    $("login").hidden = signedIn;
    $("dashboard").hidden = !signedIn;
    for (const id of ["logout", "account", "live-status", "last-price"]) $(id).hidden = !signedIn;
    document.querySelector(".market-picker").hidden = !signedIn;
  }

  function loginError(text) {
    const node = $("login-error");
    node.textContent = text || "";
    node.hidden = !text;
  }

  async function signIn(credential) {
    state.credential = credential;
    let symbols;
    try {
      symbols = await api("/market/symbols"); // any route: proves the credential and the scope
    } catch (err) {
      state.credential = null;
      window.sessionStorage.removeItem(STORE_KEY);
      const advice = err.status === 401 ? " Check the token or key and sign in again." : "";
      loginError(`Sign-in failed: ${err.message}.${advice}`);
      showView("login");
      return;
    }
    window.sessionStorage.setItem(STORE_KEY, JSON.stringify(credential));
    loginError("");
    setBanner("");
    $("account").textContent = credential.kind === "key" ? "API key" : "token";
    showView("dashboard");
    state.symbols = symbols.data;
    fillMarkets();
    startDashboard();
  }

  function signOut(reason) {
    stopDashboard();
    state.credential = null;
    window.sessionStorage.removeItem(STORE_KEY);
    showView("login");
    loginError(reason || "");
  }

  // --- markets -----------------------------------------------------------------------------

  function fillMarkets() {
    const select = $("market-select");
    const saved = window.sessionStorage.getItem(STORE_MARKET);
    select.replaceChildren(
      ...state.symbols.map((s) => {
        const option = el("option", `${s.symbol} · ${s.exchange}`);
        option.value = `${s.exchange}|${s.symbol}`;
        return option;
      }),
    );
    if (saved && state.symbols.some((s) => `${s.exchange}|${s.symbol}` === saved)) {
      select.value = saved;
    } else if (state.symbols.length) {
      // The busiest market first: the one with the most stored trades.
      const busiest = state.symbols.reduce((a, b) => (b.trades > a.trades ? b : a));
      select.value = `${busiest.exchange}|${busiest.symbol}`;
    }
    chooseMarket(select.value);
  }

  function chooseMarket(value) {
    if (!value) {
      state.market = null;
      return;
    }
    const [exchange, symbol] = value.split("|");
    state.market = { exchange, symbol };
    window.sessionStorage.setItem(STORE_MARKET, value);
  }

  // --- chart -------------------------------------------------------------------------------

  function createChart() {
    if (state.chart) return;
    const LWC = window.LightweightCharts;
    const box = $("chart");
    state.chart = LWC.createChart(box, {
      width: box.clientWidth,
      height: box.clientHeight,
      // The attribution logo injects a <style> element, which the page's CSP refuses: the footer
      // carries the attribution instead.
      layout: { background: { type: "solid", color: "#11161d" }, textColor: "#b8c2cc", attributionLogo: false },
      grid: { vertLines: { color: "#1d252f" }, horzLines: { color: "#1d252f" } },
      timeScale: { timeVisible: true, secondsVisible: false, borderColor: "#2a3440" },
      rightPriceScale: { borderColor: "#2a3440" },
    });
    // Sized by hand: the library's autoSize left a stale, narrower drawing in headless Chromium.
    window.addEventListener("resize", () => state.chart.resize(box.clientWidth, box.clientHeight));
    state.series = state.chart.addSeries(LWC.CandlestickSeries, {
      upColor: "#26a69a",
      downColor: "#ef5350",
      borderVisible: false,
      wickUpColor: "#26a69a",
      wickDownColor: "#ef5350",
    });
  }

  function toBar(c) {
    return {
      time: toSeconds(c.timestamp),
      open: Number(c.open),
      high: Number(c.high),
      low: Number(c.low),
      close: Number(c.close),
    };
  }

  function chartStats() {
    const node = $("chart");
    node.dataset.candles = String(state.bars.size);
    node.dataset.liveCandles = String(state.liveCandles);
    node.dataset.interval = state.interval;
    const last = state.lastTime === null ? null : state.bars.get(state.lastTime);
    node.dataset.lastClose = last ? String(last.close) : "";
  }

  function setBars(bars) {
    state.bars = new Map(bars.map((b) => [b.time, b]));
    const sorted = [...state.bars.values()].sort((a, b) => a.time - b.time);
    state.lastTime = sorted.length ? sorted[sorted.length - 1].time : null;
    state.series.setData(sorted);
    chartStats();
  }

  function applyCandle(bar) {
    state.bars.set(bar.time, bar);
    if (state.lastTime === null || bar.time >= state.lastTime) {
      state.lastTime = bar.time;
      state.series.update(bar);
    } else {
      setBars([...state.bars.values()]); // a late revision of an older candle
    }
    state.liveCandles += 1;
    chartStats();
  }

  async function loadHistory() {
    const { symbol, exchange } = state.market;
    const generation = state.generation;
    $("chart-title").textContent = `${symbol} · ${exchange} · ${state.interval}`;
    $("chart-note").textContent = "loading…";
    try {
      const history = await api(`/market/history/${encodeURIComponent(symbol)}`, {
        interval: state.interval,
        exchange,
      });
      if (generation !== state.generation) return;
      const bars = history.data.map(toBar);
      const newest = bars.length ? bars[bars.length - 1].time : -Infinity;
      // Live revisions that arrived while the history was on its way stay on the chart.
      setBars([...bars, ...[...state.bars.values()].filter((b) => b.time > newest)]);
      $("chart-note").textContent = history.data.length ? "" : "no candles yet";
      state.chart.timeScale().fitContent();
    } catch (err) {
      if (generation === state.generation) $("chart-note").textContent = err.message;
    }
  }

  // --- order book --------------------------------------------------------------------------

  function renderBook(book) {
    const row = (level) => [el("td", priceText(level[0])), el("td", trim(level[1], 4))];
    fillRows($("asks"), book.asks.slice(0, BOOK_DEPTH).reverse().map(row));
    fillRows($("bids"), book.bids.slice(0, BOOK_DEPTH).map(row));
    $("book-time").textContent = book.timestamp ? book.timestamp.slice(11, 23) : "";
    $("book-note").textContent = "";
    const panel = $("book-panel");
    state.bookUpdates += 1;
    panel.dataset.updates = String(state.bookUpdates);
    panel.dataset.seq = String(book.seq || 0);
    panel.dataset.bestBid = book.bids.length ? book.bids[0][0] : "";
  }

  // --- WebSocket ---------------------------------------------------------------------------

  function setLive(text, kind) {
    const pill = $("live-status");
    pill.textContent = text;
    pill.dataset.state = kind;
  }

  function send(message) {
    const socket = state.socket;
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  function subscribeAll() {
    const { symbol, exchange } = state.market;
    send({ action: "subscribe", channel: "market", symbols: [symbol], exchange });
    send({ action: "subscribe", channel: "orderbook", symbol, depth: BOOK_DEPTH, exchange });
    send({ action: "subscribe", channel: "candles", symbol, interval: state.interval, exchange });
  }

  function unsubscribeAll(market, interval) {
    const { symbol, exchange } = market;
    send({ action: "unsubscribe", channel: "market", symbols: [symbol], exchange });
    send({ action: "unsubscribe", channel: "orderbook", symbol, exchange });
    send({ action: "unsubscribe", channel: "candles", symbol, interval, exchange });
  }

  function onMessage(event) {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (err) {
      return;
    }
    const market = state.market;
    if (message.type === "error") {
      setBanner(`WebSocket: ${message.code}: ${message.message}`);
      return;
    }
    if (message.type || !market || message.symbol !== market.symbol || message.exchange !== market.exchange) return;
    if ("interval" in message) {
      if (message.interval === state.interval) applyCandle(toBar(message));
    } else if ("bids" in message) {
      renderBook(message);
    } else if ("price" in message) {
      const price = $("last-price");
      price.textContent = priceText(message.price);
      price.dataset.price = message.price;
    }
  }

  function connect() {
    const c = state.credential;
    if (!c) return;
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    // Browsers cannot put headers on a WebSocket: the credential travels as a subprotocol, out of
    // the URL and so out of logs; the server selects "entasis.v1" (api/security.py).
    const credential = `entasis.${c.kind === "key" ? "key" : "bearer"}.${c.value}`;
    const socket = new WebSocket(`${scheme}://${window.location.host}/ws/market`, ["entasis.v1", credential]);
    state.socket = socket;
    setLive("connecting", "connecting");
    socket.addEventListener("open", () => {
      state.socketTries = 0;
      setLive("live", "live");
      subscribeAll();
    });
    socket.addEventListener("message", onMessage);
    socket.addEventListener("close", (event) => {
      if (state.socket !== socket) return; // replaced or signed out
      state.socket = null;
      const fatal = FATAL_CLOSES[event.code];
      if (fatal) {
        setLive("closed", "down");
        setBanner(`Live updates stopped: ${fatal} (close ${event.code}). Sign in again.`);
        return;
      }
      const delay = Math.min(30000, 1000 * 2 ** state.socketTries);
      state.socketTries += 1;
      setLive(`reconnecting (close ${event.code})`, "connecting");
      state.timers.push(window.setTimeout(connect, delay));
    });
  }

  // --- analysis, portfolio, feeds ----------------------------------------------------------

  async function refreshRisk() {
    const { symbol, exchange } = state.market;
    const generation = state.generation;
    let asOf = null;
    const rows = await Promise.all(
      RISK_METHODS.map(async (method) => {
        try {
          const r = await api(`/analysis/risk/${encodeURIComponent(symbol)}`, { method, exchange });
          asOf = r.timestamp;
          return [method, trim(r.var_95), trim(r.expected_shortfall), `${trim(Number(r.volatility) * 100, 1)} %`];
        } catch (err) {
          return [el("td", method), ...messageRow(3, err.message)];
        }
      }),
    );
    if (generation !== state.generation) return;
    fillRows($("risk"), rows);
    $("risk-time").textContent = asOf ? shortTime(asOf) : "";
  }

  async function refreshPredictions() {
    const { symbol, exchange } = state.market;
    const generation = state.generation;
    const jobs = [];
    for (const model of MODELS) {
      for (const timeframe of HORIZONS) {
        jobs.push(
          api(`/analysis/prediction/${encodeURIComponent(symbol)}`, { model, timeframe, exchange }).then(
            (p) => [model, timeframe, priceText(p.prediction), p.direction === "up" ? "▲" : "▼",
              `${(p.confidence * 100).toFixed(1)} %`],
            (err) => [el("td", model), el("td", timeframe), ...messageRow(3, err.message)],
          ),
        );
      }
    }
    const rows = await Promise.all(jobs);
    if (generation === state.generation) fillRows($("predictions"), rows);
  }

  async function refreshPortfolio() {
    const balance = $("balance");
    try {
      const [b, p] = await Promise.all([api("/portfolio/balance"), api("/portfolio/positions")]);
      const items = [["Balance", b.balance], ["Equity", b.equity], ["Free", b.free_balance],
        ["Unrealised PnL", b.unrealized_pnl]];
      balance.replaceChildren(...items.flatMap(([name, value]) => [el("dt", name), el("dd", trim(value))]));
      fillRows(
        $("positions"),
        p.positions.length
          ? p.positions.map((x) => [x.symbol, x.type, trim(x.size, 4), priceText(x.entry_price),
            priceText(x.current_price), el("td", trim(x.pnl), Number(x.pnl) < 0 ? "down" : "up")])
          : [messageRow(6, "no open positions")],
      );
    } catch (err) {
      balance.replaceChildren(el("dd", err.message, "muted"));
      fillRows($("positions"), []);
    }
  }

  async function refreshFeeds() {
    try {
      state.symbols = (await api("/market/symbols")).data;
    } catch (err) {
      fillRows($("feeds"), [messageRow(4, err.message)]);
      return;
    }
    fillRows(
      $("feeds"),
      state.symbols.map((s) => {
        const feed = s.feed ? s.feed.state.replace(/^feed_/, "") : "no event";
        const cls = s.feed && s.feed.state !== "feed_connected" ? "down" : "up";
        return [s.symbol, s.exchange, el("td", feed, cls), s.last_trade.slice(5, 16).replace("T", " ")];
      }),
    );
  }

  async function refreshQuality() {
    const { symbol, exchange } = state.market;
    const generation = state.generation;
    const info = state.symbols.find((s) => s.symbol === symbol && s.exchange === exchange);
    // Event time: the day up to the venue's latest trade (a replay's data can be years old).
    const until = info ? Date.parse(info.last_trade) : Date.now();
    const params = { exchange, start: new Date(until - DAY_MS).toISOString(), limit: 1000 };
    const events = [];
    try {
      for (let page = 0; page < 5; page += 1) {
        const answer = await api(`/market/quality/${encodeURIComponent(symbol)}`, params);
        events.push(...answer.data);
        if (!answer.next_cursor) break;
        params.cursor = answer.next_cursor;
      }
    } catch (err) {
      if (generation === state.generation) fillRows($("quality"), [messageRow(3, err.message)]);
      return;
    }
    if (generation !== state.generation) return;
    const recent = events.slice(-12).reverse();
    fillRows(
      $("quality"),
      recent.length ? recent.map((q) => [q.timestamp.slice(5, 19).replace("T", " "), q.exchange, q.kind]) : [messageRow(3, "no events")],
    );
  }

  // --- lifecycle ---------------------------------------------------------------------------

  function refreshMarket() {
    state.generation += 1;
    state.liveCandles = 0;
    state.bookUpdates = 0;
    $("last-price").textContent = "";
    fillRows($("asks"), []);
    fillRows($("bids"), []);
    $("book-note").textContent = "waiting for the book…";
    setBars([]);
    loadHistory();
    refreshRisk();
    refreshPredictions();
    refreshQuality();
  }

  function startDashboard() {
    createChart();
    if (!state.market) {
      $("chart-note").textContent = "no symbol has trades yet";
      return;
    }
    refreshMarket();
    refreshFeeds();
    refreshPortfolio();
    connect();
    every(PING_MS, () => send({ action: "ping" }));
    every(REFRESH_MS, () => {
      refreshFeeds().then(refreshQuality);
      refreshPortfolio();
    });
    every(SLOW_REFRESH_MS, () => {
      refreshRisk();
      refreshPredictions();
    });
  }

  function stopDashboard() {
    for (const timer of state.timers) {
      window.clearInterval(timer);
      window.clearTimeout(timer);
    }
    state.timers = [];
    const socket = state.socket;
    state.socket = null;
    if (socket) socket.close(1000);
    state.generation += 1;
  }

  function switchMarket(value) {
    const previous = state.market;
    chooseMarket(value);
    if (previous) unsubscribeAll(previous, state.interval);
    refreshMarket();
    subscribeAll();
  }

  function switchInterval(interval) {
    if (!INTERVALS.includes(interval) || interval === state.interval) return;
    const market = state.market;
    if (market) {
      send({ action: "unsubscribe", channel: "candles", symbol: market.symbol, interval: state.interval,
        exchange: market.exchange });
    }
    state.interval = interval;
    state.generation += 1;
    state.liveCandles = 0;
    for (const button of document.querySelectorAll(".intervals button")) {
      button.classList.toggle("active", button.dataset.interval === interval);
    }
    setBars([]);
    if (!market) return;
    // History first, then the live revisions on top (the subscription starts with the latest).
    loadHistory().then(() => {
      send({ action: "subscribe", channel: "candles", symbol: market.symbol, interval, exchange: market.exchange });
    });
  }

  function init() {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const form = event.target;
      const value = form.elements.credential.value.trim();
      if (!value) {
        loginError("Enter a token or an API key.");
        return;
      }
      signIn({ kind: form.elements.kind.value, value });
    });
    $("logout").addEventListener("click", () => signOut(""));
    $("market-select").addEventListener("change", (event) => switchMarket(event.target.value));
    for (const button of document.querySelectorAll(".intervals button")) {
      button.addEventListener("click", () => switchInterval(button.dataset.interval));
    }
    const saved = window.sessionStorage.getItem(STORE_KEY);
    if (saved) {
      try {
        signIn(JSON.parse(saved));
        return;
      } catch (err) {
        window.sessionStorage.removeItem(STORE_KEY);
      }
    }
    showView("login");
  }

  init();
})();
