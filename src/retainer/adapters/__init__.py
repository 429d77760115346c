"""Adapters deliver committed actions to the host CRM (DESIGN §7).

`handler_from_spec` reads the CLI's `--handler [TYPE=]jsonl:PATH | webhook:URL` form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..actions import ACTION_TYPES
from ..errors import RetainerError, did_you_mean, redact
from .base import ActionHandler, CallbackHandler, PermanentError, RetryLater
from .dispatch import Dispatcher, DispatchReport, Handlers, Retry
from .jsonl import JsonlHandler
from .recording import RecordingHandler
from .webhook import WebhookHandler

__all__ = [
    "ActionHandler",
    "CallbackHandler",
    "DispatchReport",
    "Dispatcher",
    "Handlers",
    "JsonlHandler",
    "PermanentError",
    "RecordingHandler",
    "Retry",
    "RetryLater",
    "WebhookHandler",
    "handler_from_spec",
    "handlers_from_specs",
]

KINDS = ("jsonl", "webhook")


def handler_from_spec(spec: str, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> ActionHandler:
    """`jsonl:actions.jsonl` or `webhook:https://crm.example/hooks/retainer`."""
    kind, sep, target = spec.partition(":")
    # what messages show of the spec: a webhook URL's password or token goes to stderr, and so to the cron log
    shown = f"{kind}{sep}{redact(target)}" if kind in KINDS else redact(spec)
    if not sep or not target:
        raise RetainerError(f"--handler {shown!r}: expected jsonl:PATH or webhook:URL")
    if kind == "jsonl":
        try:
            return JsonlHandler(target)
        except ValueError as exc:
            raise RetainerError(f"--handler {shown!r}: {exc}") from None
    if kind == "webhook":
        try:
            return WebhookHandler(target, headers=headers, timeout=timeout)
        except ValueError as exc:
            raise RetainerError(f"--handler {shown!r}: {exc}") from None
    raise RetainerError(
        f"--handler {shown!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}{did_you_mean(kind, KINDS)}"
    )


def handlers_from_specs(
    specs: Sequence[str], *, headers: Mapping[str, str] | None = None, timeout: float = 10.0
) -> dict[str, ActionHandler]:
    """Several `--handler`s: `create_task=webhook:URL` routes one action type, a bare spec the rest."""
    out: dict[str, ActionHandler] = {}
    for spec in specs:
        route = "*"
        head, eq, rest = spec.partition("=")
        if eq and ":" not in head:
            route, spec = head, rest
            if not spec:
                raise RetainerError(f"--handler {head}=: give jsonl:PATH or webhook:URL after '='")
            if route not in ACTION_TYPES and route != "*":
                raise RetainerError(
                    f"--handler {head}=...: unknown action type {route!r}{did_you_mean(route, ACTION_TYPES)}"
                )
        if route in out:
            raise RetainerError(f"two --handler options for {'every action' if route == '*' else route}")
        out[route] = handler_from_spec(spec, headers=headers, timeout=timeout)
    return out
