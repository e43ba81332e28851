"""Hostile messages for the raw topics, as raw bytes: the values of issue 18's findings that a
decoder must refuse (the message dead-lettered with its bytes, nothing stored from it).

Built as text, not with a JSON library, so that values no encoder would write (integers past
int64, 5000-digit numbers, truncated JSON) reach the broker exactly as an attacker sends them."""

from __future__ import annotations

T = 1_723_161_300_000_000_000  # 2024-08-08T23:55:00Z, inside the clean capture's span


def trade_batch(rows: str, venue: str = '"binance"', symbol: str = '"ETH-USDT"') -> bytes:
    """A trade_batch.v1 whose `trades` is the JSON text `rows`."""
    return (f'{{"schema_version":"trade_batch.v1","venue":{venue},"symbol":{symbol},'
            f'"trades":{rows}}}').encode()


def row(trade_id: str = '"p1"', price: str = '"2683.5"', size: str = '"0.1"', side: str = '"buy"',
        event: str = str(T), recv: str = str(T)) -> str:
    """One trade row as JSON text, each field given as JSON text."""
    return f"[{trade_id},{price},{size},{side},{event},{recv}]"


def good_row(trade_id: str, price: str, size: str, event_ns: int) -> str:
    return row(f'"{trade_id}"', f'"{price}"', f'"{size}"', '"sell"', str(event_ns), str(event_ns + 1))


FIVE_THOUSAND_DIGITS = "9" * 5000

# one row, one poison value: every other field is valid
POISON_ROWS = {
    "price 1e30": row(price='"1e30"'),
    "price of 31 integer digits": row(price='"1' + "0" * 30 + '"'),
    "price of 5000 digits": row(price=f'"{FIVE_THOUSAND_DIGITS}"'),
    "size of 5000 decimals": row(size=f'"0.{FIVE_THOUSAND_DIGITS}"'),
    "size 1e20": row(size='"100000000000000000000"'),
    "price zero": row(price='"0"'),
    "price negative": row(price='"-2683.5"'),
    "price NaN": row(price='"NaN"'),
    "price Infinity": row(price='"Infinity"'),
    "nine decimal places": row(price='"2683.123456789"'),
    "event time 2**63": row(event=str(2**63)),
    "event time 2**64": row(event=str(2**64)),
    "event time of 5000 digits": row(event=FIVE_THOUSAND_DIGITS),
    "event time negative": row(event="-1"),
    "receive time negative": row(recv=str(-T)),
    "event time null": row(event="null"),
    "event time a list": row(event="[1]"),
    # taken before the guard in schemas/codecs/trades.py: true as 1 (a trade at 1 ns, stored), strings as times
    "event time true": row(event="true"),
    "receive time a string": row(recv=f'"{T}"'),
    "price true": row(price="true"),
    "price a JSON number": row(price="2683.5"),
    "size true": row(size="true"),
    "price a list": row(price='["2683.5"]'),
    "price an object": row(price='{"p":"2683.5"}'),
    "price null": row(price="null"),
    "trade id null": row(trade_id="null"),  # was stored as the id "None"
    "trade id a number": row(trade_id="17"),
    "side upper case": row(side='"BUY"'),
    "side a number": row(side="1"),
    "row too short": '["p1","2683.5","0.1","buy",' + str(T) + "]",
    "row not a list": '{"id":"p1"}',
}


def poison_trade_messages() -> dict[str, bytes]:
    """Every hostile trade message by name (its bytes distinct from every other's)."""
    messages = {name: trade_batch(f"[{text}]") for name, text in POISON_ROWS.items()}
    clean = trade_batch(f"[{good_row('x1', '2683.5', '0.1', T)}]")
    messages.update({
        "not JSON": b"{not json",
        "binary": b"\x00\xff\xfe\x80garbage",
        "JSON null": b"null",
        "a JSON list": b"[]",
        "a JSON string": b'"trade_batch.v1"',
        "no trades key": b'{"schema_version":"trade_batch.v1","venue":"binance","symbol":"ETH-USDT"}',
        "unknown format": clean.replace(b"trade_batch.v1", b"trade_batch.v9"),
        "truncated batch": clean[: len(clean) // 2],
        "truncated to one byte": clean[:1],
        "trades an object": trade_batch('{"0":' + row() + "}"),
        "symbol lower case": trade_batch(f"[{row()}]", symbol='"eth-usdt"'),
        "symbol without dash": trade_batch(f"[{row()}]", symbol='"ETHUSDT"'),
        "symbol with newline": trade_batch(f"[{row()}]", symbol='"ETH-USDT\\n"'),
        "venue upper case": trade_batch(f"[{row()}]", venue='"BINANCE"'),
        "venue a number": trade_batch(f"[{row()}]", venue="7"),
        "symbol of 5000 characters": trade_batch(f"[{row()}]", symbol=f'"{"A" * 2500}-{"B" * 2499}"'),
    })
    assert len(set(messages.values())) == len(messages)
    return messages


# A message of good trades with one bad trade among them: refused whole (schemas/codecs/trades.py:
# a message with a value the store cannot hold is refused; the unit of a dead letter is a message).
MIXED_MESSAGE = trade_batch("[" + ",".join([good_row("m1", "60000.5", "0.01", T + 1_000_000_000),
                                            row('"m2"', price='"1e30"'),
                                            good_row("m3", "60001", "0.02", T + 2_000_000_000)]) + "]",
                            symbol='"SOL-USDT"')

_DELTA = ('{{"venue":"binance","symbol":{symbol},"event_ts_ns":{ts},"recv_ts_ns":{ts},'
          '"schema_version":"book_delta.v1","first_update_id":10,"last_update_id":12,"prev_update_id":null,'
          '"bids":[[{price},"1"]],"asks":[["2690","1"]]}}')


def book_batch(symbol: str = '"ETH-USDT"', ts: str = str(T), price: str = '"2683"') -> bytes:
    delta = _DELTA.format(symbol=symbol, ts=ts, price=price)
    return f'{{"schema_version":"book_batch.v1","venue":"binance","symbol":{symbol},"updates":[{delta}]}}'.encode()


def poison_book_messages() -> dict[str, bytes]:
    return {
        "book not JSON": b'{"schema_version":"book_batch.v1",',
        "book symbol lower case": book_batch(symbol='"eth-usdt"'),
        "book level price 1e30": book_batch(price='"1e30"'),
        "book level price of 5000 digits": book_batch(price=f'"{FIVE_THOUSAND_DIGITS}"'),
        "book time negative": book_batch(ts="-5"),
        "book time 2**64": book_batch(ts=str(2**64)),
        "book level price a list": book_batch(price="[1]"),
    }
