"""Which codec reads which topic: `codec_for(topics.TRADES).decode(raw)`.

A topic declared in `schemas.topics` has exactly one codec here (tests/unit/test_codecs.py checks
that none is missing); the codec modules hold the encoders, whose arguments differ per format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from schemas import topics
from schemas.codecs import book, book_top, candles, dead_letters, portfolio, predictions, quality, risk, trades, vwap
from schemas.vwap import VWAP_TOPIC_NAME


@dataclass(frozen=True)
class TopicCodec:
    module: ModuleType  # where the topic's formats, encoders and Arrow tables live
    formats: tuple[str, ...]  # the value formats the topic carries
    decode: Callable[[bytes], Any]  # validating decode of one value; WireError if it is none of them


CODECS: dict[str, TopicCodec] = {
    topics.TRADES.name: TopicCodec(trades, trades.FORMATS, trades.decode),
    topics.BOOK.name: TopicCodec(book, book.FORMATS, book.decode),
    **{spec.name: TopicCodec(candles, candles.FORMATS, candles.decode) for spec in topics.CANDLES.values()},
    topics.BOOK_TOP.name: TopicCodec(book_top, book_top.FORMATS, book_top.decode),
    topics.RISK.name: TopicCodec(risk, risk.FORMATS, risk.decode),
    topics.PREDICTIONS.name: TopicCodec(predictions, predictions.FORMATS, predictions.decode),
    topics.PF_COMMANDS.name: TopicCodec(portfolio, (portfolio.PORTFOLIO_COMMAND,), portfolio.decode_command),
    topics.PF_ADMIN.name: TopicCodec(portfolio, (portfolio.PORTFOLIO_COMMAND,), portfolio.decode_admin_command),
    topics.PF_EVENTS.name: TopicCodec(portfolio, (portfolio.PORTFOLIO_EVENT,), portfolio.decode_event),
    VWAP_TOPIC_NAME: TopicCodec(vwap, vwap.FORMATS, vwap.decode),
    topics.QUALITY.name: TopicCodec(quality, quality.FORMATS, quality.decode),
    topics.DEAD_LETTER.name: TopicCodec(dead_letters, dead_letters.FORMATS, dead_letters.decode),
}


def codec_for(topic: topics.TopicSpec | str, namespace: str = "") -> TopicCodec:
    """The codec of a declared topic, by spec or by name (a full name under `namespace`, such as a
    replay's, is found too). KeyError for a topic not declared."""
    name = topic.name if isinstance(topic, topics.TopicSpec) else topic
    if namespace and name.startswith(namespace):
        name = name[len(namespace):]
    return CODECS[name]
