"""Issue 18, finding 8: the portfolio fold kept every command id, every Idempotency-Key and every
rejected order forever. Now keys live 24 h and ids a bounded window, by EVENT time: the clock is
the commands' `issued_ts_ns`, set by each test (a manual clock), and a replay of the same events
forgets exactly what the live fold forgot."""

from __future__ import annotations

import itertools
from decimal import Decimal as D

from schemas.portfolio import (
    OpenPosition,
    PortfolioEvent,
    PositionOpened,
    PositionRejected,
    PositionType,
    RejectCode,
    RequestReplayed,
    decode_event,
)
from schemas.wire import encode_event
from streams.core.portfolio import MAX_DECIDED_IDS, AccountDefaults, Ledger, decide

H = 3600 * 10**9
T0 = 1_700_000_000 * 10**9
DEFAULTS = AccountDefaults(balance=D("1000000000"), max_open_positions=100_000, max_symbol_notional=D("1e20"))
_ids = itertools.count(1)


def order(
    at_ns: int, key: str | None = None, body: str = "h", size: str = "1", command_id: str | None = None
) -> OpenPosition:
    return OpenPosition(
        account="alice",
        command_id=command_id or f"c{next(_ids)}",
        symbol="BTC-USDT",
        type=PositionType.LONG,
        size=D(size),
        leverage=D(1),
        price=D("10"),
        price_ts_ns=at_ns,
        idempotency_key=key,
        request_hash=body,
        issued_ts_ns=at_ns,
    )


def run(ledger: Ledger, command: OpenPosition, log: list[PortfolioEvent]) -> list[PortfolioEvent]:
    events = decide(ledger, command, DEFAULTS)
    for event in events:
        ledger.apply(event)
        log.append(event)
    return events


def replay(log: list[PortfolioEvent]) -> Ledger:
    ledger = Ledger()
    for event in log:
        ledger.apply(decode_event(encode_event(event)))
    return ledger


def test_an_idempotency_key_answers_retries_for_24_hours_then_is_a_new_request() -> None:
    ledger, log = Ledger(), list[PortfolioEvent]()
    first = run(ledger, order(T0, key="k1"), log)[-1]
    assert isinstance(first, PositionOpened)
    retry = run(ledger, order(T0 + 23 * H, key="k1"), log)[-1]
    assert isinstance(retry, RequestReplayed) and retry.original == first
    conflict = run(ledger, order(T0 + 23 * H, key="k1", body="other"), log)[-1]
    assert isinstance(conflict, PositionRejected) and conflict.code is RejectCode.IDEMPOTENCY_CONFLICT
    # 24 h after the first result the key is forgotten: the same key opens a new position
    later = run(ledger, order(T0 + 24 * H + 1, key="k1"), log)[-1]
    assert isinstance(later, PositionOpened) and later.position_id != first.position_id
    # and the new result is what the key answers from now on, live and after a replay
    for fold in (ledger, replay(log)):
        again = decide(fold, order(T0 + 30 * H, key="k1"), DEFAULTS)[-1]
        assert isinstance(again, RequestReplayed) and isinstance(again.original, PositionOpened)
        assert again.original.position_id == later.position_id


def test_expired_keys_and_rejections_are_not_kept_and_a_replay_forgets_them_too() -> None:
    ledger, log = Ledger(), list[PortfolioEvent]()
    for i in range(200):  # a day of rejected orders (each too big), every one with its own key
        rejected = run(ledger, order(T0 + i * 10**9, key=f"r{i}", size="1e10"), log)[-1]
        assert isinstance(rejected, PositionRejected) and rejected.code is RejectCode.PORT_001
    run(ledger, order(T0 + 48 * H, key="fresh"), log)
    for fold in (ledger, replay(log)):
        state = fold.get("alice")
        assert state is not None
        assert set(state.idempotency) == {"fresh"}
        assert len(state.decided) == 1  # only the last command's id is within the window


def test_command_ids_are_kept_for_a_bounded_window_and_an_older_redelivery_is_not_decided_again() -> None:
    ledger, log = Ledger(), list[PortfolioEvent]()
    old = order(T0, command_id="redelivered")
    assert isinstance(run(ledger, old, log)[-1], PositionOpened)
    assert run(ledger, old, log) == []  # a re-delivery within the window: nothing
    run(ledger, order(T0 + 25 * H), log)
    state = ledger.get("alice")
    assert state is not None and "redelivered" not in state.decided
    # its id is forgotten, yet a re-delivery two days late opens nothing twice
    assert run(ledger, old, log) == []
    assert decide(replay(log), old, DEFAULTS) == []
    positions = [e for e in log if isinstance(e, PositionOpened) and e.command_id == "redelivered"]
    assert len(positions) == 1


def test_at_most_max_decided_ids_per_account_even_within_the_window() -> None:
    ledger, log = Ledger(), list[PortfolioEvent]()
    for i in range(MAX_DECIDED_IDS + 50):  # all within one second of event time (rejected: cheap to decide)
        run(ledger, order(T0 + i, command_id=f"burst{i}", size="1e10"), log)
    state = ledger.get("alice")
    assert state is not None
    assert len(state.decided) <= MAX_DECIDED_IDS
    # the earliest ids were dropped; their commands, re-delivered, still produce nothing
    assert "burst0" not in state.decided
    assert decide(ledger, order(T0, command_id="burst0", size="1e10"), DEFAULTS) == []
    answered = sum(isinstance(e, PositionRejected) for e in log)
    assert answered == MAX_DECIDED_IDS + 50
