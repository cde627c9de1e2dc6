"""The web gateway: a small Starlette app that serves the page and pushes live views to browsers.

Routes: `/` the page, `/static/...` its modules and the vendored chart library, `/ws` the
WebSocket, `/export.csv` a view's exact notional as CSV, `/login` the token form, `/health`.

Each browser has one WebSocket and one `Browser`: what it watches (a feed of heatsvc.web.upstream,
shared with every browser on the same view), its display options, and a sender task that sends the
latest state of the feed whenever it is woken. Nothing queues per update, so a slow or vanished
browser only ever delays itself; errors and other control messages sit in a short bounded deque.

Security: when a token is configured (the one the gateway itself uses upstream), every HTTP
request but `/health` and `/login` and every WebSocket needs it, as the `heatsvc_session` cookie
the login form sets (an HMAC of the token, never the token) or `Authorization: Bearer TOKEN`.
WebSockets must also come from the page's own origin. Every response carries a
Content-Security-Policy that allows only the page's own origin. Browser messages are validated;
a bad one gets an error message on its socket.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import math
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

import grpc
from starlette.applications import Starlette
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from . import frames
from .upstream import Upstream

log = logging.getLogger("heatsvc.web")
STATIC = Path(__file__).parent / "static"
COOKIE = "heatsvc_session"
# The chart library's attribution logo adds one fixed <style> element: allowed by its hash alone.
ATTRIBUTION_STYLE = "'sha256-3pRED1tOXas1FXFoPb9TGCjmYe9XQsmO9OV23khV2nY='"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' " + ATTRIBUTION_STYLE + "; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
MAX_MESSAGE = 4096         # bytes of one browser message
CONTROL_DEPTH = 16         # control messages (errors) held per browser; older ones are dropped
OPEN_PATHS = ("/health", "/login")
LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>heatsvc: token</title><link rel="icon" href="data:,"></head>
<body><h1>heatsvc</h1><p>This service needs a token.</p>{error}
<form method="post" action="/login"><label>Token <input type="password" name="token" autofocus></label>
<button type="submit">Open</button></form></body></html>"""


def session_value(token: str) -> str:
    """The cookie value for a token: an HMAC, so the cookie never holds the token itself."""
    return hmac.new(token.encode(), b"heatsvc-web-session-v1", hashlib.sha256).hexdigest()


class Security:
    """Pure ASGI middleware: the CSP header on every response; the token check when one is set."""

    def __init__(self, app, token: str | None):
        self.app, self.token = app, token
        self.session = session_value(token) if token else None

    def allowed(self, scope) -> bool:
        if self.token is None or scope["path"] in OPEN_PATHS:
            return True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].encode(), self.token.encode()):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:
            return False
        got = cookie.get(COOKIE)
        return got is not None and hmac.compare_digest(got.value.encode(), self.session.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if not self.allowed(scope):
            if scope["type"] == "websocket":   # accepted, then closed with a code the page understands
                await receive()
                await send({"type": "websocket.accept"})
                return await send({"type": "websocket.close", "code": 4401, "reason": "token required"})
            if scope["path"] == "/" and scope["method"] == "GET":
                response = RedirectResponse("/login", status_code=303)
            else:
                response = Response("token required\n", status_code=401, media_type="text/plain")
            return await self._send_secured(response, scope, receive, send)

        async def send_with_csp(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-cache")]
                message = {**message, "headers": headers}
            await send(message)
        await self.app(scope, receive, send_with_csp)

    async def _send_secured(self, response, scope, receive, send):
        response.headers["content-security-policy"] = CSP
        await response(scope, receive, send)


class Browser:
    """One WebSocket: the feed it watches, its display options, and a sender of the latest state."""

    def __init__(self, ws: WebSocket):
        self.ws = ws
        self.feed = None
        self.boost = 1.0
        self.mask: tuple[bool, ...] | None = None
        self.control: collections.deque[str] = collections.deque(maxlen=CONTROL_DEPTH)
        self.sent = (None, -1, -1, -1, None, -1)   # feed id, heat, zones, status versions, (boost, mask), events
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def say(self, text: str) -> None:
        self.control.append(text)
        self._wake.set()

    async def sender(self) -> None:
        """Send control messages, then whatever of the feed's latest state this browser lacks."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.control:
                await self.ws.send_text(self.control.popleft())
            feed = self.feed
            if feed is None:
                continue
            fid, heat, zones, status, display, events = self.sent
            if fid != feed.id:
                heat = zones = status = events = -1
            if status != feed.status_version:
                status = feed.status_version
                await self.ws.send_text(frames.status(feed.id, feed.state, feed.message))
            if feed.view_json is not None and (heat != feed.heat_version or display != (self.boost, self.mask)):
                heat, display = feed.heat_version, (self.boost, self.mask)
                await self.ws.send_text(feed.view_json)
                await self.ws.send_bytes(feed.frame(self.boost, self.mask))
            if feed.zones_json is not None and zones != feed.zones_version:
                zones = feed.zones_version
                await self.ws.send_text(feed.zones_json)
            if feed.events_json is not None and events != feed.events_version:
                events = feed.events_version
                await self.ws.send_text(feed.events_json)
            self.sent = (feed.id, heat, zones, status, display, events)


def _number(msg: dict, name: str, default: float, ok) -> float:
    value = msg.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(name)
    return float(value)


async def validate(upstream: Upstream, msg) -> tuple[tuple, float, tuple | None]:
    """A subscribe message as (feed key, boost, tier mask); ValueError naming the field otherwise."""
    if not isinstance(msg, dict) or msg.get("type") != "subscribe":
        raise ValueError("type")
    markets = await upstream.markets()
    names = {m.market for m in markets.markets}
    market = msg.get("market")
    if isinstance(market, str) and market not in names:
        markets = await upstream.markets(refresh=True)
        names = {m.market for m in markets.markets}
    if not isinstance(market, str) or market not in names:
        raise ValueError("market")
    lookback = msg.get("lookback")
    if not isinstance(lookback, str) or lookback not in markets.lookbacks:
        raise ValueError("lookback")
    threshold = round(_number(msg, "threshold", 0.2, lambda v: 0 <= v < 1), 4)
    boost = round(_number(msg, "boost", 1.0, lambda v: 0 < v <= 1), 4)
    tiers = msg.get("tiers")
    n = len(markets.parameters.tiers)
    if tiers is not None and not (isinstance(tiers, list) and len(tiers) == n
                                  and all(isinstance(t, bool) for t in tiers)):
        raise ValueError("tiers")
    return (market, lookback, threshold), boost, (tuple(tiers) if tiers is not None else None)


class Gateway:
    """The app's state: the upstream client, the browsers, the token."""

    def __init__(self, target: str, token: str | None = None, credentials=None):
        self.args = (target, token, credentials)
        self.upstream: Upstream | None = None    # made on the server's event loop, at start-up
        self.token = token
        self.browsers: set[Browser] = set()
        self.started = time.time()

    async def page(self, request):
        return FileResponse(STATIC / "index.html")

    async def login(self, request):
        if request.method == "GET":
            return HTMLResponse(LOGIN_PAGE.format(error=""))
        body = await request.body()
        token = parse_qs(body[:4096].decode("utf-8", "replace")).get("token", [""])[0]
        if self.token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            return HTMLResponse(LOGIN_PAGE.format(error="<p><strong>Wrong token.</strong></p>"), status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, session_value(self.token), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    async def health(self, request):
        try:
            await self.upstream.markets()
            upstream = "ok"
        except grpc.aio.AioRpcError as exc:
            upstream = exc.code().name.lower()
        return JSONResponse({"status": "ok", "upstream": upstream, "browsers": len(self.browsers),
                             "views": len(self.upstream.feeds), "uptime_s": round(time.time() - self.started, 1)})

    async def export_csv(self, request):
        q = request.query_params
        try:
            msg = {"type": "subscribe", "market": q.get("market"), "lookback": q.get("lookback"),
                   "threshold": float(q.get("threshold", 0.2))}
            (market, lookback, threshold), _, _ = await validate(self.upstream, msg)
        except ValueError as exc:
            return Response(f"bad {exc}\n", status_code=400, media_type="text/plain")
        try:
            resp = await self.upstream.heatmap(market, lookback, threshold)
        except grpc.aio.AioRpcError as exc:
            return Response(f"{exc.code().name}: {exc.details()}\n", status_code=502, media_type="text/plain")
        name = f"heatsvc-{market.replace(':', '-')}-{lookback}.csv"
        return StreamingResponse(frames.csv_rows(resp.heatmap), media_type="text/csv",
                                 headers={"content-disposition": f'attachment; filename="{name}"'})

    async def socket(self, ws: WebSocket):
        origin = ws.headers.get("origin")
        host = ws.headers.get("host", "")
        await ws.accept()
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            await ws.close(code=4403, reason="foreign origin")
            return
        browser = Browser(ws)
        self.browsers.add(browser)
        sender = asyncio.create_task(browser.sender())
        try:
            try:
                browser.say(frames.markets(await self.upstream.markets(), self.token is not None))
            except grpc.aio.AioRpcError as exc:
                browser.say(frames.error(f"service unavailable: {exc.code().name}", "upstream"))
            while True:
                receive = asyncio.create_task(ws.receive())
                done, _ = await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
                if sender in done:          # the browser stopped reading or went away
                    receive.cancel()
                    break
                message = receive.result()
                if message["type"] == "websocket.disconnect":
                    break
                await self.handle(browser, message)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            sender.cancel()
            if sender.done() and not sender.cancelled():
                sender.exception()   # the browser went away mid-send: nothing to report
            self.browsers.discard(browser)
            if browser.feed is not None:
                self.upstream.leave(browser.feed, browser)

    async def handle(self, browser: Browser, message: dict) -> None:
        """Validate one browser message and act on it; errors go back on the socket."""
        text = message.get("text")
        if text is None or len(text) > MAX_MESSAGE:
            browser.say(frames.error("messages are JSON text of at most 4096 bytes", "message"))
            return
        try:
            msg = json.loads(text)
        except ValueError:
            browser.say(frames.error("not JSON", "message"))
            return
        try:
            key, boost, mask = await validate(self.upstream, msg)
        except ValueError as exc:
            field = str(exc)
            got = msg.get(field) if isinstance(msg, dict) else msg
            browser.say(frames.error(f"bad {field}: {str(got)[:64]}", field))
            return
        except grpc.aio.AioRpcError as exc:
            browser.say(frames.error(f"service unavailable: {exc.code().name}", "upstream"))
            return
        if browser.feed is None or browser.feed.key != key:
            if browser.feed is not None:
                self.upstream.leave(browser.feed, browser)
            browser.feed = self.upstream.join(key, browser)
        req = msg.get("req") if isinstance(msg.get("req"), int) else None
        browser.say(json.dumps({"type": "subscribed", "view": browser.feed.id, "req": req,
                                "market": key[0], "lookback": key[1], "threshold": key[2]}))
        browser.boost, browser.mask = boost, mask
        browser.wake()

    async def close(self) -> None:
        await self.upstream.close()


def create_app(target: str, token: str | None = None, credentials=None) -> Starlette:
    """The gateway app for a heatsvc.v1 service at `target` (token: the service's bearer token,
    then also required from browsers)."""
    gw = Gateway(target, token, credentials)
    routes = [Route("/", gw.page), Route("/health", gw.health), Route("/login", gw.login, methods=["GET", "POST"]),
              Route("/export.csv", gw.export_csv), WebSocketRoute("/ws", gw.socket),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        gw.upstream = Upstream(*gw.args)
        yield
        await gw.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gw
    return Security(app, token)


class _Embedded:
    """A uvicorn server that leaves signals to its host (`heatsvc serve --web` handles them)."""

    @staticmethod
    def make(config):
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                yield
        return Server(config)


def uvicorn_server(target: str, listen: str, token: str | None = None, credentials=None, *, embedded=False):
    """A uvicorn server of the gateway app on `listen` ("HOST:PORT"); `embedded` leaves signals alone."""
    import uvicorn

    host, _, port = listen.rpartition(":")
    config = uvicorn.Config(create_app(target, token, credentials), host=host.strip("[]") or "127.0.0.1",
                            port=int(port), log_level="warning", ws_max_size=MAX_MESSAGE * 4, lifespan="on",
                            ws_per_message_deflate=False)   # frames are built once for all: no per-socket compression
    return _Embedded.make(config) if embedded else uvicorn.Server(config)
