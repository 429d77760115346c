"""The adapter contract: how an action reaches the host CRM.

A handler delivers one action or raises. The dispatcher owns retries, backoff, the ledger and the
dead-letter status; a handler only has to be idempotent on `action.id` (the idempotency key), because
delivery is at-least-once: a crash between delivering and recording it repeats the delivery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ..actions import Action

__all__ = ["ActionHandler", "CallbackHandler", "PermanentError", "RetryLater"]


@runtime_checkable
class ActionHandler(Protocol):
    def handle(self, action: Action) -> object:
        """Deliver `action` (its `id` is the idempotency key); raise to report a failure. What it returns is
        ignored (typed `object`, so a CRM client's call that returns its response is a handler as it is)."""
        ...


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (the CRM rejected the action as invalid):
    the dispatcher marks the action `dead` at once instead of retrying it."""


class RetryLater(Exception):
    """Raised by a handler when the CRM asks to slow down (HTTP 429, or 503 with `Retry-After`): the endpoint is
    up, so it never counts toward giving up on the handler, and the handler's actions wait `seconds` (at most
    `Retry.max_delay`) before the next call through it."""

    def __init__(self, message: str, seconds: float | None = None) -> None:
        super().__init__(message)
        self.seconds = seconds


class CallbackHandler:
    """Adapts a plain function: `CallbackHandler(crm.create_task)`; for hosts that embed retainer."""

    def __init__(self, fn: Callable[[Action], object]) -> None:
        self.fn = fn

    def handle(self, action: Action) -> object:
        return self.fn(action)  # an awaitable returned is refused by the dispatcher: nothing was delivered

    def __repr__(self) -> str:
        return f"CallbackHandler({getattr(self.fn, '__qualname__', self.fn)!r})"
