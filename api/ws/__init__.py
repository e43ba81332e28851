"""WebSocket `/ws/market` (SPEC.md, "WebSocket"): one Kafka consumer per API process feeds a hub
that fans updates out to every subscribed socket through a conflating queue per socket.

Parts, pure ones first: `protocol` (parsing and validating client messages, shaping server
messages), `queue` (the per-socket conflating queue), `hub` (latest state and routing),
`feed` (the Kafka consumer), `endpoint` (the socket handler, authentication, rate limit)."""

from api.ws.endpoint import WS_PATH, install_market_websocket
from api.ws.feed import MarketFeed
from api.ws.hub import MarketHub

__all__ = ["WS_PATH", "MarketFeed", "MarketHub", "install_market_websocket"]
