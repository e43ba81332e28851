"""What an agent on candle topics does with a candle, before any state is touched."""

from __future__ import annotations

from enum import Enum


class Verdict(Enum):
    FOLD = "fold"
    SKIP = "skip"  # not final, or an interval the agent does not follow
    MALFORMED = "malformed"  # decodable, but with values no state can take
