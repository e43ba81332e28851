"""Every Kafka topic, declared once. `entasis topics create` creates them all up front:
nothing relies on auto-creation (Tansu would give an auto-created topic 4 partitions and
the wrong settings).

Keys are `venue:symbol` (see `schemas.symbols.stream_key`) so one symbol's events stay
ordered in one partition; portfolio topics are keyed by account for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.codecs import book, book_top, candles, dead_letters, portfolio, predictions, quality, risk, trades, vwap
from schemas.events import INTERVAL_NS
from schemas.portfolio import ADMIN_TOPIC_NAME, COMMANDS_TOPIC_NAME, EVENTS_TOPIC_NAME
from schemas.prediction import PREDICTION_TOPIC_NAME
from schemas.risk import RISK_TOPIC_NAME
from schemas.vwap import VWAP_TOPIC_NAME

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    key: str  # what the key means
    value_schema: str  # the value's format(s), `|` between several (codecs: schemas/codecs/registry.py)
    retention_ms: int | None  # None: keep forever
    compacted: bool = False

    def full_name(self, namespace: str = "") -> str:
        """Replays run under their own namespace so they never mix with live data."""
        return f"{namespace}{self.name}"

    def config(self) -> dict[str, str]:
        cfg = {"cleanup.policy": "compact" if self.compacted else "delete"}
        cfg["retention.ms"] = str(self.retention_ms if self.retention_ms is not None else -1)
        return cfg


RAW_PARTITIONS = 4

TRADES = TopicSpec("md.trades.v1", RAW_PARTITIONS, "venue:symbol", trades.TRADE_BATCH, 7 * DAY_MS)
BOOK = TopicSpec("md.book.v1", RAW_PARTITIONS, "venue:symbol", " | ".join(book.FORMATS), 2 * DAY_MS)
CANDLES: dict[str, TopicSpec] = {
    interval: TopicSpec(f"md.candles.{interval}.v1", RAW_PARTITIONS, "venue:symbol", candles.CANDLE, 30 * DAY_MS)
    for interval in INTERVAL_NS
}
BOOK_TOP = TopicSpec("md.book.top.v1", RAW_PARTITIONS, "venue:symbol", book_top.BOOK_SNAPSHOT, 2 * DAY_MS)
RISK = TopicSpec(RISK_TOPIC_NAME, RAW_PARTITIONS, "venue:symbol", risk.RISK_ESTIMATE, 30 * DAY_MS)
PREDICTIONS = TopicSpec(PREDICTION_TOPIC_NAME, RAW_PARTITIONS, "venue:symbol",
                        " | ".join(predictions.FORMATS), 90 * DAY_MS)
PF_COMMANDS = TopicSpec(COMMANDS_TOPIC_NAME, RAW_PARTITIONS, "account", portfolio.PORTFOLIO_COMMAND, 7 * DAY_MS)
# set_balance only, from an operator (`entasis portfolio set-balance`), signed with the admin key.
# As many partitions as pf.commands.v1: Faust assigns equal-sized topics' partitions together
# (co-partitioning), so one worker decides an account's orders and its balance changes.
PF_ADMIN = TopicSpec(ADMIN_TOPIC_NAME, RAW_PARTITIONS, "account", portfolio.PORTFOLIO_COMMAND, 7 * DAY_MS)
# the source of truth of every position and balance: kept forever, never compacted
PF_EVENTS = TopicSpec(EVENTS_TOPIC_NAME, RAW_PARTITIONS, "account", portfolio.PORTFOLIO_EVENT, None)
VWAP = TopicSpec(VWAP_TOPIC_NAME, RAW_PARTITIONS, "venue:symbol", vwap.VWAP, 30 * DAY_MS)
QUALITY = TopicSpec("md.quality.v1", 1, "venue:symbol", quality.QUALITY, 30 * DAY_MS)
DEAD_LETTER = TopicSpec("md.deadletter.v1", 1, "source", dead_letters.DEAD_LETTER, 30 * DAY_MS)

ALL_TOPICS: tuple[TopicSpec, ...] = (
    TRADES, BOOK, *CANDLES.values(), BOOK_TOP, RISK, PREDICTIONS, PF_COMMANDS, PF_ADMIN, PF_EVENTS, VWAP, QUALITY,
    DEAD_LETTER,
)


def by_name(name: str) -> TopicSpec:
    for spec in ALL_TOPICS:
        if spec.name == name:
            return spec
    raise KeyError(name)
