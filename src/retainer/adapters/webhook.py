"""POST each action as JSON to an HTTP endpoint of the host CRM."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .. import __version__
from ..actions import Action
from ..errors import ArgumentError, redact
from ..ledger import action_payload
from .base import PermanentError

if TYPE_CHECKING:
    import httpx

__all__ = ["WebhookHandler", "redact"]

#: 4xx answers worth retrying (timeouts, rate limits); any other 4xx means the request itself is wrong.
RETRYABLE_4XX = frozenset({408, 409, 425, 429})


def _url_problem(url: str) -> str | None:
    """What makes a URL unusable before any request is sent (no host, a bad port, a space)."""
    from urllib.parse import urlsplit

    if any(c.isspace() for c in url):
        return "it contains a space (write %20)"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port out of range or not a number
    except ValueError as exc:
        return str(exc)
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "port 0 is not a port"
    return None


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
        self.url = url
        self.shown = redact(url)  # what messages and the ledger show: no passwords or query tokens
        self.timeout = timeout
        self.headers = {"User-Agent": f"retainer/{__version__}", **(headers or {})}
        if client is None:
            import httpx  # here, not at the top: `retainer plan` should not pay 0.1 s of start-up for it

            client = httpx.Client(timeout=timeout)
        self._client = client

    def handle(self, action: Action) -> None:
        import httpx

        headers = {**self.headers, "Content-Type": "application/json", "Idempotency-Key": action.id}
        try:
            r = self._client.post(self.url, content=action_payload(action).encode(), headers=headers)
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"POST {self.shown} timed out after {self.timeout:g}s") from exc
        except httpx.TransportError as exc:
            raise ConnectionError(f"POST {self.shown} failed: {exc}") from exc
        if r.is_success:
            return
        body = r.text.strip().replace("\n", " ")[:200]
        message = f"POST {self.shown} answered {r.status_code} {r.reason_phrase}" + (f": {body}" if body else "")
        if 300 <= r.status_code < 400:  # a POST is not re-sent to another address behind the operator's back
            where = r.headers.get("location", "elsewhere")
            raise PermanentError(
                f"POST {self.shown} answered {r.status_code}: redirected to {redact(where)}; use that URL"
            )
        if 400 <= r.status_code < 500 and r.status_code not in RETRYABLE_4XX:
            raise PermanentError(message)
        raise ConnectionError(message)

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"WebhookHandler({self.shown!r})"
