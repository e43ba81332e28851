"""uvicorn's WebSocket protocol (websockets, sans-I/O) with one ASGI extension: `send_many`, which
sends several text messages as consecutive frames in one transport write.

Why: ASGI sends one message per `websocket.send`, and uvicorn writes each to the socket at once,
so a client's backlog of N updates costs N trips through Starlette and uvicorn, N writes and,
over TLS, N records. Updates arrive in bursts (one broker fetch carries every tick since the
previous one), and every subscriber then has several pending: the per-message write is what
made a burst's last delivery wait for everyone else's first ones. Framing stays websockets' own
(`ServerProtocol.send_text`); only the writes are joined. No server we know offers this, so it
is ours; the server advertises it in the scope (`scope["extensions"][SEND_MANY]`) and the socket
handler (api/ws/endpoint.py) uses it only then, one message at a time otherwise (Starlette's
test client, another ASGI server)."""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

SEND_MANY = "entasis.websocket.send_many"  # message: {"type": SEND_MANY, "texts": [str, ...]}


class SendManyWebSocketProtocol(WebSocketsSansIOProtocol):
    """A protocol class for `uvicorn.Config(ws=...)`."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            # The application task is created above but runs later, so it sees the extension.
            scope["extensions"][SEND_MANY] = {}

    async def send(self, message: Any) -> None:
        if message["type"] != SEND_MANY:
            await super().send(message)
            return
        await self.writable.wait()  # the transport's flow control, as for one message
        if self.disconnected:
            raise ClientDisconnected()
        if not self.handshake_complete or self.close_sent or self.initial_response is not None:
            raise RuntimeError(f"'{SEND_MANY}' is only valid on an open WebSocket")
        try:
            for text in message["texts"]:
                self.conn.send_text(text.encode())
        except InvalidState:
            raise ClientDisconnected() from None
        self.transport.write(b"".join(self.conn.data_to_send()))
