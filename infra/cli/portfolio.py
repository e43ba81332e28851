"""`entasis portfolio set-balance ACCOUNT AMOUNT`: set an account's paper balance (and, with
`--max-open-positions` / `--max-symbol-notional`, its limits).

It is an operator's command, not the API's: a `SetBalance` on its own topic `pf.admin.v1`, keyed by
the account and signed with the portfolio admin key (ENTASIS_PORTFOLIO_ADMIN_KEY, or the data
directory's `portfolio-admin.key`), which the API does not hold. The portfolio agent decides it
between the account's orders (the two topics are co-partitioned) and records a `BalanceSet` event;
the CLI waits for that event (printing it) and exits 1 when no answer comes in `--timeout`
seconds. Accounts that never had a balance set start with `ENTASIS_PORTFOLIO_INITIAL_BALANCE`
(default 100000) when their first command is decided.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from schemas.portfolio import SetBalance


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal: {text!r}") from None
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite decimal: {text!r}")
    return value


async def _set_balance(settings: Any, command: SetBalance, timeout_s: float) -> int:
    from api.portfolio_repository import KafkaPortfolioBus
    from api.portfolio_service import BusTimeout, BusUnavailable
    from infra.config.kafka import aiokafka_options
    from infra.config.settings import portfolio_admin_key

    try:
        admin_key = portfolio_admin_key(settings)
    except ValueError as exc:
        print(f"entasis portfolio set-balance: {exc}", file=sys.stderr)
        return 2
    # the orders' key is not needed to set a balance (and an operator need not hold it)
    bus = KafkaPortfolioBus(settings.kafka_bootstrap, settings.topic_namespace, signing_key=b"",
                            admin_key=admin_key, kafka_options=aiokafka_options(settings))
    try:
        await bus.start()
        event = await bus.submit(command, timeout_s)
    except (BusTimeout, BusUnavailable) as exc:
        print(f"no answer from the portfolio agent ({type(exc).__name__}: {exc}); is the worker running?",
              file=sys.stderr)
        return 1
    finally:
        await bus.close()
    print(event.model_dump_json())
    return 0


def cmd_set_balance(settings: Any, args: argparse.Namespace) -> int:
    command = SetBalance(
        account=args.account, command_id=uuid.uuid4().hex, balance=args.amount,
        max_open_positions=args.max_open_positions, max_symbol_notional=args.max_symbol_notional,
        issued_ts_ns=time.time_ns(),
    )
    return asyncio.run(_set_balance(settings, command, args.timeout))


def cmd_rebuild(settings: Any, args: argparse.Namespace) -> int:
    """The ClickHouse projection is disposable: replay the whole event topic into it, only the
    events the portfolio agent signed (the broker takes any local producer's message)."""
    from infra.config.kafka import aiokafka_options
    from infra.config.settings import portfolio_signing_key
    from infra.store.clickhouse import make_client
    from schemas import topics
    from schemas.codecs.portfolio import events_table
    from streams.core.portfolio import event_signed
    from streams.runtime.topic_reader import read_topic_records

    try:
        signing_key = portfolio_signing_key(settings)
    except ValueError as exc:
        print(f"entasis portfolio rebuild: {exc}", file=sys.stderr)
        return 2
    history = asyncio.run(read_topic_records(settings.kafka_bootstrap,
                                             topics.PF_EVENTS.full_name(settings.topic_namespace),
                                             **aiokafka_options(settings)))
    raws = [r.value for r in history.records if event_signed(signing_key, r.key, r.value, r.headers)]
    forged = len(history.records) - len(raws)
    if forged:
        print(f"entasis portfolio rebuild: {forged} events without the agent's signature skipped", file=sys.stderr)
    table = events_table(raws)
    client = make_client(settings)
    try:
        if table.num_rows:
            client.insert_arrow("portfolio_events", table)
    finally:
        client.close()
    print(f"portfolio_events: {table.num_rows} events replayed from pf.events")
    return 0


def add_parser(sub: Any) -> None:
    """Add `portfolio set-balance` to the `entasis` sub-command parsers."""
    portfolio = sub.add_parser("portfolio", help="paper portfolio administration")
    portfolio_sub = portfolio.add_subparsers(dest="portfolio_command", required=True)
    sb = portfolio_sub.add_parser("set-balance", help="set an account's cash balance (and optionally its limits)")
    sb.add_argument("account", help="account id (the JWT `sub` / API key's account)")
    sb.add_argument("amount", type=_decimal, help="the new cash balance, e.g. 100000")
    sb.add_argument("--max-open-positions", type=int, help="limit on open positions (default: unchanged)")
    sb.add_argument("--max-symbol-notional", type=_decimal,
                    help="limit on open notional per symbol, quote currency (default: unchanged)")
    sb.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the agent's answer")
    sb.set_defaults(func=cmd_set_balance)
    rebuild = portfolio_sub.add_parser("rebuild", help="refill the portfolio_events table from pf.events (idempotent)")
    rebuild.set_defaults(func=cmd_rebuild)
