"""A loopback HTTP server that answers with recorded exchange bodies (tests/fixtures/), so the real
exchange clients can be tested on what the exchanges really send: each path answers a queue of
replies in order (the last one repeats), and every request is logged with its arrival time. A POST
with a JSON body {"type": T} (Hyperliquid's /info) answers the route "PATH#T" when there is one."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import json
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    """The bytes of tests/fixtures/<name>."""
    return (FIXTURES / name).read_bytes()


@dataclass
class Answer:
    """One reply: status, body, headers."""
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Seen:
    """One request as the server saw it."""
    path: str
    params: dict[str, str]
    at: float        # time.monotonic() on arrival
    body: object = None   # a POST's decoded JSON body


class FixtureServer:
    """Serve queues of Answers per path on 127.0.0.1 (404 for unknown paths)."""

    def __init__(self):
        self.routes: dict[str, list[Answer]] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self, body=None):  # noqa: N802
                parts = urlsplit(self.path)
                key = parts.path
                if isinstance(body, dict) and f"{key}#{body.get('type')}" in outer.routes:
                    key = f"{key}#{body.get('type')}"
                with outer.lock:
                    outer.seen.append(Seen(key, {k: v[-1] for k, v in parse_qs(parts.query).items()},
                                           time.monotonic(), body))
                    queue = outer.routes.get(key)
                    answer = (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else \
                        Answer(404, b"not found", content_type="text/plain")
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer.body)

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw
                self.do_GET(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, path: str, *answers: Answer) -> None:
        """Answer `path` with these replies in order, the last one for every later request."""
        with self.lock:
            self.routes[path] = list(answers)

    def count(self, path: str) -> int:
        with self.lock:
            return sum(s.path == path for s in self.seen)

    def times(self, path: str) -> list[float]:
        with self.lock:
            return [s.at for s in self.seen if s.path == path]

    def __enter__(self) -> FixtureServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


FAST = dict(timeout_s=2.0, backoff_s=0.01, backoff_cap_s=0.05, max_retries=3, seed=1)


async def with_client(exchange: str, url: str, work, **kw):
    """`work(client)` with a fast-retrying client of `exchange` at `url`, closed after."""
    from heatsvc.exchanges import make_client
    c = make_client(exchange, url, **{**FAST, **kw})
    try:
        return await work(c)
    finally:
        await c.aclose()


@pytest.fixture()
def server():
    """A FixtureServer for one test (import it into the test module to use it)."""
    with FixtureServer() as s:
        yield s
