"""Action keys: `rule:subject:episode:type`. One definition, shared by the engine (which makes them)
and the features that look an earlier step of a process up in the ledger by its key."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from .timeutil import AsOf

_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
#: the mark of a decision taken again within its episode (`2026-01-01#2`: a move, or a task for the supervisor
#: of a manager who left, decided a second time)
_AGAIN = re.compile(r"#\d+$")


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


def decision_episode(episode: str, attempt: int) -> str:
    """The episode as a decision's keys spell it: `2026-01-01`, then `2026-01-01#2` for a second decision."""
    return episode if attempt == 1 else f"{episode}#{attempt}"


def first_episode(episode: str) -> str:
    """The episode of its first decision: without the mark of one taken again."""
    return _AGAIN.sub("", episode)


def first_key(key: str) -> str:
    """The key (or a process id, `rule:subject:episode:winback`) of the episode's first decision."""
    head, sep, kind = key.rpartition(":")
    return first_episode(head) + sep + kind
