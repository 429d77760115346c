"""An example adapter: deliver retainer's actions to a host CRM through its REST API.

retainer decides *what* to do; an adapter only says *how* the host CRM does it. Copy this file and
change `request_for` to your CRM's endpoints; everything else (retries with backoff, the dead-letter
status, never repeating an action) is the dispatcher's and the ledger's job, not the adapter's.

The hypothetical CRM here has:
    POST  {base}/tasks                {"client_id", "assignee_id", "title", "due_date", ...}
    PATCH {base}/clients/{client_id}  {"manager_id": ...}
    POST  {base}/notifications        {"type", "to_manager_id", "client_id", "template", ...}
    POST  {base}/events               the action's JSON, for everything it has no endpoint for
and honours an `Idempotency-Key` header: a request repeated with the same key is done only once.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from retainer.actions import Action, CreateTask, Escalate, NotifyManager, Reassign
from retainer.adapters import PermanentError
from retainer.ledger import action_payload

__all__ = ["RETRYABLE_4XX", "ExampleCRMHandler"]

#: 4xx answers that mean "not now" rather than "never": request timeout, a concurrent request with
#: the same idempotency key still in progress, rate limited. Any other 4xx is a request the CRM will
#: always refuse, so retrying it only delays the dead letter a person has to look at.
RETRYABLE_4XX = frozenset({408, 409, 429})


class ExampleCRMHandler:
    """An `ActionHandler` for the example CRM: one HTTP request per action.

    Every request carries `Idempotency-Key: <action.id>`. Delivery is at-least-once (a crash after the
    CRM answered but before the ledger recorded it repeats the request), and the stable id lets the
    CRM recognise the repeat instead of creating a second task.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the CRM URL must start with http:// or https://, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or httpx.Client(timeout=timeout, headers=headers)

    def request_for(self, action: Action) -> tuple[str, str, dict[str, Any]]:
        """`(method, path, JSON body)` for an action: the only place that knows the CRM's API."""
        match action:
            case CreateTask():
                return "POST", "/tasks", {
                    "client_id": action.client_id,
                    "assignee_id": action.assignee_id,
                    "title": action.title,
                    "due_date": action.due_at.isoformat(),
                    "kind": action.task_kind,
                    "note": action.reason,  # why the task exists, for the manager who gets it
                }
            case Reassign():
                if action.to_manager_id is None or action.client_id is None:  # retainer never commits one
                    raise PermanentError(f"reassign {action.id} has no client or no target manager")
                return "PATCH", f"/clients/{quote(action.client_id, safe='')}", {"manager_id": action.to_manager_id}
            case NotifyManager() | Escalate():
                return "POST", "/notifications", {
                    "type": action.type,
                    "to_manager_id": action.to_manager_id,
                    "client_id": action.client_id,
                    "template": action.template,
                    "subject": action.subject,
                    "body": action.body or action.reason,
                }
            case _:
                return "POST", "/events", json.loads(action_payload(action))

    def handle(self, action: Action) -> None:
        """Deliver one action; raise `PermanentError` when retrying cannot help, anything else when it may."""
        method, path, body = self.request_for(action)
        url = self.base_url + path
        try:
            r = self._client.request(method, url, json=body, headers={"Idempotency-Key": action.id})
        except httpx.TimeoutException as exc:
            raise TimeoutError(f"{method} {url} timed out after {self.timeout:g}s") from exc
        except httpx.TransportError as exc:  # refused, reset, DNS: the CRM may be back later
            raise ConnectionError(f"{method} {url} failed: {exc}") from exc
        if r.is_success:
            return
        message = f"{method} {url} answered {r.status_code} {r.reason_phrase}: {' '.join(r.text.split())[:200]}"
        if 400 <= r.status_code < 500 and r.status_code not in RETRYABLE_4XX:
            raise PermanentError(message)
        raise ConnectionError(message)  # 5xx, 408/409/429, unexpected redirects: worth another attempt

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ExampleCRMHandler:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
