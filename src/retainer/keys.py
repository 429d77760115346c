"""Action keys: `rule:subject:episode:type`. One definition, shared by the engine (which makes them)
and the features that look an earlier step of a process up in the ledger by its key."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from .timeutil import AsOf

_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def action_key(rule: str, subject: str, episode: str, kind: str) -> str:
    # the subject is %-quoted (a ':' in an id must not split the key); most ids need no quoting
    s = subject if _PLAIN.issuperset(subject) else quote(subject, safe="")
    return f"{rule}:{s}:{episode}:{kind}"


def episode_text(v: Any, as_of: AsOf) -> str:
    """One spelling per episode value: a date in the rule set's zone, sorted tags, a normalised amount."""
    if v is None:
        return "none"
    if isinstance(v, datetime):
        return as_of.local_date(v).isoformat()
    if isinstance(v, frozenset | set):
        return ",".join(sorted(v))
    if isinstance(v, int | float | Decimal) and not isinstance(v, bool):
        # 100.50, 100.5 and 100.5000 are one episode
        return format((Decimal(str(v)) + 0).normalize(), "f")
    return str(v)
