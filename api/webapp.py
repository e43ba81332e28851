"""The live web page at `/app`: static files (api/static/), no build step, nothing fetched from a
CDN. The page holds no secret of the server: it asks the user for a token or an API key and calls
the same REST routes and `/ws/market` as any client, so the security gate treats its requests
like any other (the files themselves need no credentials; they sit behind the allowlist and the
address's rate limit).

Every file is sent with a strict Content-Security-Policy: scripts, styles, images and connections
from this origin only (`connect-src 'self'` covers ws:/wss: to the same host and port), no inline
script or style, no framing, no form posts, no plugins. The vendored chart library is
TradingView Lightweight Charts (api/static/vendor/lightweight-charts/README.md); its attribution
logo injects a <style> element, which this policy refuses, so the page turns the logo off and
shows the attribution the licence asks for in its footer instead."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

APP_PATH = "/app"
STATIC_DIR = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # Revalidated on every load (ETag / Last-Modified): a new release is picked up at once.
    "Cache-Control": "no-cache",
}


class PageHeaders:
    """Adds PAGE_HEADERS to every response of the wrapped app (the static files, 404s included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in PAGE_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_webapp(app: FastAPI) -> None:
    """Serve the page at `/app/` (and `/app` redirects there), outside the OpenAPI schema."""

    async def to_page() -> RedirectResponse:
        return RedirectResponse(f"{APP_PATH}/", status_code=308)

    app.add_api_route(APP_PATH, to_page, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount(APP_PATH, PageHeaders(StaticFiles(directory=STATIC_DIR, html=True)), name="webapp")
