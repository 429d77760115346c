"""A real HTTP server on 127.0.0.1 for adapter tests: records every request, answers from a script.

Replies are queued (`queue(Reply(500), Reply(200))`), the rest get `default`. A reply's `delay`
waits on an event that `close()` sets, so a slow answer never holds up the teardown.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: httpx honours these; a proxy configured on a CI machine must not stand between a test and 127.0.0.1.
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str | bytes = '{"ok": true}'
    delay: float = 0.0
    drip: float = 0.0  # seconds between the body's bytes, sent one at a time
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeServer:
    default: Reply = field(default_factory=Reply)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = server._record(Request(self.command, self.path, headers, body))
                if reply.delay:
                    server._closing.wait(reply.delay)
                data = reply.body.encode() if isinstance(reply.body, str) else reply.body
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.end_headers()
                if not reply.drip:
                    self.wfile.write(data)
                    return
                self.wfile.flush()
                for i in range(len(data)):
                    if server._closing.wait(reply.drip):
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and hung up: a broken pipe here is expected

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def _record(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            return self._replies.popleft() if self._replies else self.default

    def queue(self, *replies: Reply | int) -> None:
        """Answer the next requests with these (a bare int is a status with the default body)."""
        with self._lock:
            self._replies.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def reject_next(self, status: int = 422, body: str = '{"error": "invalid"}') -> None:
        self.queue(Reply(status, body))

    def close(self) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def closed_port_url() -> str:
    """The URL of a port that was just bound and closed: nobody listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


class FakeClock:
    """An injectable clock whose `sleep` only moves time forward and records how long it was asked for."""

    def __init__(self, start: datetime = datetime(2026, 3, 16, 2, 0, tzinfo=UTC)) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)
