"""The portfolio fold and its decisions, on worked examples (streams/core/portfolio.py)."""

from __future__ import annotations

import itertools
from decimal import Decimal as D
from decimal import localcontext

import pytest
from pydantic import ValidationError

from schemas.portfolio import (
    AccountOpened,
    BalanceSet,
    ClosePosition,
    CloseRejected,
    OpenPosition,
    PortfolioEvent,
    PositionClosed,
    PositionOpened,
    PositionRejected,
    PositionType,
    RejectCode,
    RequestReplayed,
    SetBalance,
    decode_event,
)
from schemas.wire import encode_event
from streams.core.portfolio import AccountDefaults, Ledger, decide, pnl, required_margin

DEFAULTS = AccountDefaults(balance=D("10000"), max_open_positions=3, max_symbol_notional=D("100000"))
_ids = itertools.count(1)


def open_cmd(symbol: str = "BTC-USDT", size: str = "1", price: str = "5000", leverage: str = "1",
             kind: PositionType = PositionType.LONG, key: str | None = None, body: str = "h",
             account: str = "alice") -> OpenPosition:
    n = next(_ids)
    return OpenPosition(account=account, command_id=f"c{n}", symbol=symbol, type=kind, size=D(size),
                        leverage=D(leverage), price=D(price), price_ts_ns=n, idempotency_key=key,
                        request_hash=body, issued_ts_ns=1_000 + n)


def close_cmd(position_id: str, price: str, account: str = "alice") -> ClosePosition:
    n = next(_ids)
    return ClosePosition(account=account, command_id=f"c{n}", position_id=position_id, price=D(price),
                         price_ts_ns=n, issued_ts_ns=1_000 + n)


def run(ledger: Ledger, command: OpenPosition | ClosePosition | SetBalance) -> list[PortfolioEvent]:
    events = decide(ledger, command, DEFAULTS)
    for e in events:
        ledger.apply(e)
    return events


def test_margin_and_pnl_worked_examples() -> None:
    # 1.5 BTC at 64000 with 10x: 96000 notional, 9600 margin
    assert required_margin(D("1.5"), D("64000"), D("10")) == D("9600")
    # rounded up at 8 places: 1 × 100 ÷ 3 = 33.333333333... -> 33.33333334
    assert required_margin(D("1"), D("100"), D("3")) == D("33.33333334")
    # the SPEC example: long 1.5 from 64000 marked at 65000 -> +1500; leverage does not scale it
    assert pnl(PositionType.LONG, D("64000"), D("65000"), D("1.5")) == D("1500")
    assert pnl(PositionType.SHORT, D("64000"), D("65000"), D("1.5")) == D("-1500")
    assert pnl(PositionType.SHORT, D("64000"), D("63000"), D("0.5")) == D("500")


def test_first_command_opens_the_account_then_a_long_position_reserves_margin() -> None:
    ledger = Ledger()
    events = run(ledger, open_cmd(size="1.5", price="4000", leverage="2"))
    assert [type(e) for e in events] == [AccountOpened, PositionOpened]
    opened = events[1]
    assert isinstance(opened, PositionOpened)
    assert (opened.seq, opened.entry_price, opened.margin) == (2, D("4000"), D("3000"))
    assert opened.position_id == opened.command_id
    state = ledger.get("alice")
    assert state is not None
    assert (state.cash, state.used_margin, state.free_balance) == (D("10000"), D("3000"), D("7000"))


def test_partial_balance_long_and_short_close_realise_pnl() -> None:
    ledger = Ledger()
    long = run(ledger, open_cmd(size="2", price="1000", leverage="1"))[-1]  # margin 2000
    short = run(ledger, open_cmd(symbol="ETH-USDT", size="10", price="300", leverage="5", kind=PositionType.SHORT))[-1]
    assert isinstance(long, PositionOpened) and isinstance(short, PositionOpened)
    assert short.margin == D("600")
    state = ledger.get("alice")
    assert state is not None and state.free_balance == D("7400")
    # long closed higher: +2 × 100; short closed higher: −10 × 20
    assert isinstance(run(ledger, close_cmd(long.position_id, "1100"))[0], PositionClosed)
    closed = run(ledger, close_cmd(short.position_id, "320"))[0]
    assert isinstance(closed, PositionClosed) and closed.pnl == D("-200")
    assert state.cash == D("10000") and state.positions == {}
    # closing again: not open any more
    again = run(ledger, close_cmd(short.position_id, "320"))[0]
    assert isinstance(again, CloseRejected) and again.code is RejectCode.NOT_FOUND


def test_margin_check_uses_free_balance_not_cash() -> None:
    ledger = Ledger()
    assert isinstance(run(ledger, open_cmd(size="1", price="6000"))[-1], PositionOpened)  # free 4000
    rejected = run(ledger, open_cmd(size="1", price="5000"))[-1]
    assert isinstance(rejected, PositionRejected) and rejected.code is RejectCode.PORT_001
    assert rejected.details == {"required_margin": "5000.00000000", "free_balance": "4000.00000000"}
    # with leverage 2 the same order needs 2500 and fits
    assert isinstance(run(ledger, open_cmd(size="1", price="5000", leverage="2"))[-1], PositionOpened)


def test_margin_is_checked_before_limits_then_limits_apply() -> None:
    ledger = Ledger()
    for _ in range(3):
        assert isinstance(run(ledger, open_cmd(size="0.1", price="100"))[-1], PositionOpened)
    # a fourth position breaks max_open_positions = 3 ...
    limit = run(ledger, open_cmd(size="0.1", price="100"))[-1]
    assert isinstance(limit, PositionRejected) and limit.code is RejectCode.PORT_002
    # ... but one far beyond the balance is PORT_001 first (SPEC's check order)
    far = run(ledger, open_cmd(size="1000000", price="100"))[-1]
    assert isinstance(far, PositionRejected) and far.code is RejectCode.PORT_001


def test_per_symbol_notional_limit_counts_open_positions_of_that_symbol() -> None:
    ledger = Ledger()
    # 100x leverage: margin is small, the notional limit (100000) binds
    assert isinstance(run(ledger, open_cmd(size="1", price="60000", leverage="100"))[-1], PositionOpened)
    rejected = run(ledger, open_cmd(size="1", price="50000", leverage="100"))[-1]
    assert isinstance(rejected, PositionRejected) and rejected.code is RejectCode.PORT_002
    assert rejected.details["limit"] == "max_symbol_notional"
    other = run(ledger, open_cmd(symbol="ETH-USDT", size="1", price="50000", leverage="100"))[-1]
    assert isinstance(other, PositionOpened)


def test_idempotency_replays_the_first_result_and_conflicts_on_a_different_body() -> None:
    ledger = Ledger()
    first = run(ledger, open_cmd(key="k1", body="A"))[-1]
    assert isinstance(first, PositionOpened)
    replay = run(ledger, open_cmd(key="k1", body="A"))[-1]
    assert isinstance(replay, RequestReplayed) and replay.original == first
    conflict = run(ledger, open_cmd(key="k1", body="B"))[-1]
    assert isinstance(conflict, PositionRejected) and conflict.code is RejectCode.IDEMPOTENCY_CONFLICT
    state = ledger.get("alice")
    assert state is not None and len(state.positions) == 1
    # a rejection is a first result too
    no = run(ledger, open_cmd(key="k2", body="C", size="99"))[-1]
    again = run(ledger, open_cmd(key="k2", body="C", size="99"))[-1]
    assert isinstance(no, PositionRejected) and isinstance(again, RequestReplayed) and again.original == no


def test_a_redelivered_command_decides_nothing() -> None:
    ledger = Ledger()
    command = open_cmd()
    assert len(run(ledger, command)) == 2
    assert run(ledger, command) == []


def test_set_balance_keeps_limits_unless_given() -> None:
    ledger = Ledger()
    events = run(ledger, SetBalance(account="bob", command_id="s1", balance=D("5"), issued_ts_ns=1))
    assert [type(e) for e in events] == [AccountOpened, BalanceSet]
    run(ledger, SetBalance(account="bob", command_id="s2", balance=D("7"), max_open_positions=1, issued_ts_ns=2))
    state = ledger.get("bob")
    assert state is not None
    assert (state.cash, state.max_open_positions, state.max_symbol_notional) == (D("7"), 1, D("100000"))


def test_replaying_the_events_rebuilds_the_same_state_and_events_roundtrip_the_wire() -> None:
    ledger = Ledger()
    log: list[PortfolioEvent] = []
    a = run(ledger, open_cmd(size="1", price="100", key="x"))
    log += a
    log += run(ledger, open_cmd(size="2", price="50", kind=PositionType.SHORT, account="carol"))
    log += run(ledger, open_cmd(size="1", price="100", key="x"))
    log += run(ledger, close_cmd(a[-1].position_id, "130"))  # type: ignore[union-attr]
    log += run(ledger, open_cmd(size="3", price="10", leverage="3"))
    replayed = Ledger()
    for e in log:
        replayed.apply(decode_event(encode_event(e)))
    assert replayed.accounts == ledger.accounts
    alice = replayed.get("alice")
    assert alice is not None and alice.cash == D("10030") and alice.seq == 5


def test_an_event_of_an_unknown_account_is_refused() -> None:
    with pytest.raises(ValueError):
        Ledger().apply(BalanceSet(account="x", command_id="c", seq=2, ts_ns=1, balance=D(1), max_open_positions=1,
                                  max_symbol_notional=D(1)))


# --- abuse: sizes and prices at the edge of what the commands accept (issue 18, item 1) ---------------------

# The largest size the API's schema admits (20 integer digits, 8 decimals) and the largest price the store
# holds (Decimal(38, 8)): their product has far more than the default context's 28 significant digits.
HUGE_SIZE = "99999999999999999999.99999999"
HUGE_PRICE = "9999999999999999999999999999.99999999"


def test_margin_and_pnl_are_exact_beyond_28_digits_whatever_the_callers_context() -> None:
    # Oracle: integer arithmetic on units of 1e-8 (no Decimal context involved).
    size_units, price_units = 9_999_999_999_999_999_999_999_999_999, 999_999_999_999_999_999_999_999_999_999_999_999
    product_units = size_units * price_units  # in units of 1e-16
    ceiling_units = -(-product_units // 10**8)  # margin rounded up to 8 places, leverage 1
    expected_margin = D(f"{ceiling_units}e-8")  # exact: no context rounds it
    with localcontext(prec=5):  # a caller's narrow context must not change the money rules
        margin = required_margin(D(HUGE_SIZE), D(HUGE_PRICE), D("1"))
        loss = pnl(PositionType.LONG, D(HUGE_PRICE), D("0.00000001"), D(HUGE_SIZE))
    assert margin == expected_margin
    loss_units = (1 - price_units) * size_units  # in units of 1e-16, negative
    assert loss == D(f"{_half_even(loss_units, 10**8)}e-8")


def _half_even(numerator: int, divisor: int) -> int:
    """numerator / divisor rounded half to even, in integers."""
    sign = -1 if numerator < 0 else 1
    quotient, remainder = divmod(abs(numerator), divisor)
    if 2 * remainder > divisor or (2 * remainder == divisor and quotient % 2 == 1):
        quotient += 1
    return sign * quotient


def test_an_order_far_beyond_the_balance_is_port_001_not_an_exception() -> None:
    ledger = Ledger()
    rejected = run(ledger, open_cmd(size="99999999999999999999", price="60000"))[-1]
    assert isinstance(rejected, PositionRejected) and rejected.code is RejectCode.PORT_001
    # 99999999999999999999 × 60000, worked by hand
    assert rejected.details["required_margin"] == "5999999999999999999940000.00000000"
    # the account still decides the next order normally
    assert isinstance(run(ledger, open_cmd(size="1", price="100"))[-1], PositionOpened)


def test_arithmetic_that_fails_in_a_decision_is_a_rejection_with_a_reason() -> None:
    ledger = Ledger()
    # A command no validated model can carry (leverage 0): the decision must still answer, not raise.
    bad = open_cmd().model_copy(update={"leverage": D(0)})
    rejected = run(ledger, bad)[-1]
    assert isinstance(rejected, PositionRejected) and rejected.code is RejectCode.BAD_REQUEST
    assert "reason" in rejected.details
    assert isinstance(run(ledger, open_cmd(size="1", price="100"))[-1], PositionOpened)


@pytest.mark.parametrize(
    "field, value",
    [
        ("size", "100000000000000000000"),  # 1e20: beyond 20 integer digits
        ("size", "1e400000000"),
        ("size", "0.000000001"),  # 9 decimals
        ("price", "1e30"),  # beyond Decimal(38, 8)
        ("leverage", "101"),
    ],
)
def test_open_commands_refuse_out_of_range_decimals(field: str, value: str) -> None:
    good = open_cmd().model_dump(mode="json")
    with pytest.raises(ValidationError):
        OpenPosition.model_validate({**good, field: value})


def test_open_commands_accept_the_largest_values_in_range() -> None:
    good = open_cmd().model_dump(mode="json")
    command = OpenPosition.model_validate({**good, "size": HUGE_SIZE, "price": HUGE_PRICE, "leverage": "100"})
    assert command.size == D(HUGE_SIZE) and command.price == D(HUGE_PRICE)
