"""POST each action as JSON to an HTTP endpoint of the host CRM."""

from __future__ import annotations

import base64
import functools
import re
import threading
import time
import warnings
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..actions import Action
from ..errors import ArgumentError, printable, redact
from ..ledger import action_payload
from .base import PermanentError, RetryLater

if TYPE_CHECKING:
    import httpx

__all__ = ["WebhookHandler", "redact"]

#: The most of an answer's body read (and, compressed, inflated): its start is kept as the error text.
#: A 300 MB error page or a gzip bomb used to be read and inflated whole, even for a success.
BODY_CAP = 64 * 1024

#: A header name (RFC 9110 token).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

#: 4xx answers worth retrying (timeouts, rate limits); any other 4xx means the request itself is wrong.
RETRYABLE_4XX = frozenset({408, 409, 425, 429})


def _url_problem(url: str) -> str | None:
    """What makes a URL unusable before any request is sent (no host, a bad port, a space)."""
    from urllib.parse import urlsplit

    if any(c.isspace() for c in url):
        return "it contains a space (write %20)"
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:  # a byte that is not UTF-8 in argv: every request failed after the commit
        return "it has a byte that is not UTF-8 text (write it percent-encoded, e.g. %FF)"
    try:
        parts = urlsplit(url)
        if "@" in url.partition("://")[2] and "@" not in parts.netloc:  # `user:12/34@crm` went to host `user`,
            # and the port error of `user:s3/cret@crm` named the password's start
            return "an @ after the host: write a / ? # or @ in a user name or password as %2F %3F %23 %40"
        port = parts.port  # raises for a port out of range or not a number
    except ValueError as exc:
        return str(exc)
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "port 0 is not a port"
    return None


def _retry_after(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (a number, or an HTTP date), or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, not to float
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:
        return None
    return max(0.0, (at - datetime.now(UTC)).total_seconds())


class WebhookHandler:
    """`POST url` with the action's JSON and an `Idempotency-Key: <action id>` header.

    2xx is success. 5xx, 408/409/425/429, timeouts and refused connections raise (the dispatcher retries
    them); any other 4xx, and a redirect, raise `PermanentError` (retrying cannot help: fix the request
    or the URL), so the action goes dead at once with the server's answer as its error.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ArgumentError(f"webhook URL must start with http:// or https://, not {redact(url)!r}")
        problem = _url_problem(url)
        if problem:  # found now, before a run commits actions that could never be delivered
            raise ArgumentError(f"webhook URL {redact(url)!r}: {problem}")
        if not timeout > 0:
            raise ArgumentError(f"timeout must be a positive number of seconds, not {timeout!r}")
        for n, (name, value) in enumerate((headers or {}).items(), start=1):
            if not _TOKEN.fullmatch(name):  # the whole line may be a token pasted without `Name:`: never shown
                raise ArgumentError(f"header #{n}: its name is not a header name (letters, digits, - and _)")
            if not all(" " <= c <= "~" for c in value):
                raise ArgumentError(f"header {name!r}: its value has a character that is not printable ASCII "
                                    "(a control character or a curly quote pasted with a token?)")  # fmt: skip
        self.url = url
        self.shown = redact(url)  # what messages and the ledger show: no passwords or query tokens
        self._secrets = _secrets(url, headers or {})
        if url.startswith("http://") and _credentials(url, headers or {}) and not _loopback(url):
            warnings.warn(f"webhook {self.shown}: credentials (a password in the URL, a token, --header) go over "
                          "plain http://, readable on the way; use https://", UserWarning, stacklevel=2)  # fmt: skip
        self.timeout = timeout
        # identity: a compressed answer is inflated by nobody but _text, and only up to BODY_CAP
        self.headers = {"User-Agent": f"retainer/{__version__}", "Accept-Encoding": "identity", **(headers or {})}
        self._deadline = _Deadline()
        if client is None:
            import httpx  # here, not at the top: `retainer plan` should not pay 0.1 s of start-up for it

            client = httpx.Client(timeout=timeout)
            _bound(client, self._deadline)
        self._client = client

    def handle(self, action: Action) -> None:
        import httpx

        headers = {**self.headers, "Content-Type": "application/json", "Idempotency-Key": action.id}
        self._deadline.at = time.monotonic() + self.timeout
        try:
            with self._client.stream("POST", self.url, content=action_payload(action).encode(), headers=headers) as r:
                body = _read_capped(r, self._deadline)
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"POST {self.shown} timed out after {self.timeout:g}s") from exc
        except httpx.TransportError as exc:
            raise ConnectionError(f"POST {self.shown} failed: {self._scrub(str(exc))}") from exc
        finally:
            self._deadline.at = None
        if r.is_success:
            return
        text = self._scrub(_text(body, r.headers.get("content-encoding", "")))
        text = printable(text.strip().replace("\n", " ").replace("\r", " "))[:200]
        message = f"POST {self.shown} answered {r.status_code} {r.reason_phrase}" + (f": {text}" if text else "")
        if 300 <= r.status_code < 400:  # a POST is not re-sent to another address behind the operator's back
            where = r.headers.get("location", "elsewhere")
            raise PermanentError(
                f"POST {self.shown} answered {r.status_code}: redirected to {redact(where)}; use that URL"
            )
        if 400 <= r.status_code < 500 and r.status_code not in RETRYABLE_4XX:
            raise PermanentError(message)
        wait = _retry_after(r.headers.get("retry-after"))
        if r.status_code == 429 or (r.status_code == 503 and wait is not None):  # up, and asking to slow down
            raise RetryLater(message + (f" (retry after {wait:g}s)" if wait is not None else ""), wait)
        raise ConnectionError(message)

    def _scrub(self, text: str) -> str:
        """`text` (an answer's body, a transport error) without the secrets this handler sends: a gateway
        that echoes the request's headers put `Authorization: Basic ...` into the ledger and the terminal."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"WebhookHandler({self.shown!r})"


class _Deadline(threading.local):
    """When the attempt under way in this thread must be over (`time.monotonic()`), or None."""

    at: float | None = None

    def left(self, timeout: float | None, error: type[Exception]) -> float | None:
        """`timeout` for one socket operation, cut to what is left of the attempt; `error` once none is."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("the webhook's timeout is over")
        return left if timeout is None else min(timeout, left)


def _bound(client: httpx.Client, deadline: _Deadline) -> None:
    """Make every socket operation of `client` (connect, TLS, each send and each read) end by the deadline.

    httpx's timeouts apply to each operation: a server that sent a byte every 2 s held a delivery, and
    the run's lock, for as long as it liked with `--timeout 3`. The network backend of each connection
    pool (the direct one and a proxy's from the environment) is wrapped; httpx has no public hook for it."""
    for transport in (client._transport, *client._mounts.values()):
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = _deadline_classes()[1](pool._network_backend, deadline)


@functools.cache
def _deadline_classes() -> tuple[type, type]:
    """A network stream and backend that cut each operation's timeout to the deadline (httpcore is imported
    only with httpx, when a webhook is built)."""
    import httpcore

    class Stream(httpcore.NetworkStream):
        def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
            self._inner, self._deadline = inner, deadline

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self._inner.read(max_bytes, self._deadline.left(timeout, httpcore.ReadTimeout))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            for i in range(0, len(buffer), 16 * 1024):  # a server that reads slowly is bounded too
                self._inner.write(buffer[i : i + 16 * 1024], self._deadline.left(timeout, httpcore.WriteTimeout))

        def close(self) -> None:
            self._inner.close()

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                      timeout: float | None = None) -> httpcore.NetworkStream:  # fmt: skip
            left = self._deadline.left(timeout, httpcore.ConnectTimeout)
            return Stream(self._inner.start_tls(ssl_context, server_hostname, left), self._deadline)

        def get_extra_info(self, info: str) -> Any:
            return self._inner.get_extra_info(info)

    class Backend(httpcore.NetworkBackend):
        def __init__(self, inner: httpcore.NetworkBackend, deadline: _Deadline) -> None:
            self._inner, self._deadline = inner, deadline

        def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                        socket_options: Any = None) -> httpcore.NetworkStream:  # fmt: skip
            left = self._deadline.left(timeout, httpcore.ConnectTimeout)
            return Stream(self._inner.connect_tcp(host, port, left, local_address, socket_options), self._deadline)

        def connect_unix_socket(self, path: str, timeout: float | None = None,
                                socket_options: Any = None) -> httpcore.NetworkStream:  # fmt: skip
            left = self._deadline.left(timeout, httpcore.ConnectTimeout)
            return Stream(self._inner.connect_unix_socket(path, left, socket_options), self._deadline)

        def sleep(self, seconds: float) -> None:
            self._inner.sleep(seconds)

    return Stream, Backend


def _read_capped(r: httpx.Response, deadline: _Deadline) -> bytes:
    """At most BODY_CAP bytes of the answer, as sent (not inflated); a body read to its end leaves the
    connection for the next action. A host's own `client=` has no deadline inside, so it is checked here."""
    import httpx

    body = b""
    for chunk in r.iter_raw():
        body += chunk
        if len(body) >= BODY_CAP:
            break
        if deadline.at is not None and time.monotonic() > deadline.at:
            raise httpx.ReadTimeout("the webhook's timeout is over")
    return body[:BODY_CAP]


def _text(body: bytes, encoding: str) -> str:
    """An answer's text for its error message; a gzip or deflate body (sent despite `identity`) inflated to
    BODY_CAP at most."""
    if encoding.strip().lower() in ("gzip", "deflate", "x-gzip"):
        try:
            body = zlib.decompressobj(47).decompress(body, BODY_CAP)  # 47: a gzip or a zlib header
        except zlib.error:
            return "(a compressed body)"
    return body.decode("utf-8", errors="replace")


def _secrets(url: str, headers: Mapping[str, str]) -> list[str]:
    """What a server could echo of the credentials sent: the URL's password and its Basic header, the
    query's values, each header's value and its words (`Bearer <token>`), longest first; short ones
    (`1`, `json`) would mask ordinary text."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    parts = urlsplit(url)
    found: set[str] = {v for _, v in parse_qsl(parts.query)}
    if parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password)
        found |= {password, f"{user}:{password}", base64.b64encode(f"{user}:{password}".encode()).decode()}
    for name, value in headers.items():
        if name.lower() != "user-agent":
            found |= {value, *value.split()}
    return sorted((s for s in found if len(s) >= 6), key=len, reverse=True)


def _loopback(url: str) -> bool:
    """Whether `url` points at this machine (`localhost`, 127.0.0.0/8, ::1): plain http stays local."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _credentials(url: str, headers: Mapping[str, str]) -> bool:
    """Whether a request to `url` carries a secret: a user or password, a token-like query value, a header."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    keys = [k.lower() for k, _ in parse_qsl(parts.query)]
    secret = ("token", "key", "secret", "sig", "auth", "pass")
    return "@" in parts.netloc or bool(headers) or any(w in k for k in keys for w in secret)
