"""Message templates: `{placeholder}` substitution only, checked when the rule file loads.

`{client.name}`, `{manager.name}`, `{supervisor.name}`, `{new_manager.name}` (rules that reassign),
`{as_of}`, `{rule}` and any feature (`{days_since_activity}`). `{{` and `}}` are literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache, partial
from types import CodeType
from typing import Any

from ..errors import did_you_mean
from ..model import Client, Manager

_PH = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
_OBJECTS = {"client": Client, "manager": Manager, "supervisor": Manager, "new_manager": Manager}


class TemplateError(ValueError):
    pass


def placeholders(text: str) -> list[str]:
    out = []
    for m in _PH.finditer(text):
        if m.group(0) in ("{{", "}}"):
            continue
        out.append(m.group(1).strip())
    stray = _PH.sub("", text)
    if "{" in stray or "}" in stray:
        raise TemplateError(f"unbalanced brace in template {text!r} (write {{{{ or }}}} for a literal brace)")
    return out


def check(
    text: str, is_feature: Callable[[str], bool], *, allow: Iterable[str] = (),
    names: Callable[[], Iterable[str]] = tuple,
) -> list[str]:
    """Validate every placeholder; return the features it uses (they are fetched with the plan). `names`: the
    features a misspelt placeholder may have meant (asked only then)."""
    feats = []
    allowed_objects = {"client", "manager", "supervisor", *allow}
    for ph in placeholders(text):
        obj, dot, attr = ph.partition(".")
        if dot and obj in _OBJECTS:
            if obj not in allowed_objects:
                raise TemplateError(f"placeholder {{{ph}}} is only available in rules that reassign")
            model = _OBJECTS[obj]
            if attr not in model.model_fields:
                raise TemplateError(
                    f"unknown placeholder {{{ph}}}: {obj} has no field {attr!r} "
                    f"(fields: {', '.join(model.model_fields)})"
                )
            continue
        if ph in ("as_of", "rule"):
            continue
        if not ph or not is_feature(ph):
            extra = (
                ", invoice.<field> (id, amount, outstanding, paid_total, issued_at, due_at, days_overdue, "
                "days_since_issue)"
                if "invoice" in allowed_objects
                else ""
            )
            # a feature's name; not `invoice.number`, whose shared `invoice.` made `invoice.due_at` look close
            if "." not in ph and (hint := did_you_mean(ph, [n for n in (*names(), "as_of", "rule") if "." not in n])):
                raise TemplateError(f"unknown placeholder {{{ph}}}{hint}")
            raise TemplateError(
                f"unknown placeholder {{{ph}}}: use client.<field>, manager.<field>, "
                f"supervisor.<field>{extra}, as_of, rule, or a feature name"
            )
        feats.append(ph)
    return feats


_CENT = Decimal("0.01")  # money in texts: to the cent, half up (1000.125 is 1000.13, as on an invoice)


def _show(v: Any, tz: tzinfo = UTC) -> str:
    """A value as text: an instant is its date in the rule set's zone (as evidence and episode keys show
    it; the UTC date is a day early east of UTC for every date-only value)."""
    t = type(v)
    if t is str:
        return v  # type: ignore[no-any-return]
    if t is int:
        return str(v)
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.astimezone(tz).date().isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return format(v.normalize(), "f") if v == v.to_integral() else str(v.quantize(_CENT, ROUND_HALF_UP))
    if isinstance(v, frozenset | set):
        return ", ".join(sorted(v))
    return str(v)


@lru_cache(maxsize=4096)
def _parts(text: str) -> tuple[tuple[bool, str, str, str], ...]:
    """(is_placeholder, literal_or_name, object, attribute) pieces, parsed once per template."""
    out: list[tuple[bool, str, str, str]] = []
    pos = 0
    for m in _PH.finditer(text):
        if m.start() > pos:
            out.append((False, text[pos : m.start()], "", ""))
        tok = m.group(0)
        if tok in ("{{", "}}"):
            out.append((False, tok[0], "", ""))
        else:
            ph = m.group(1).strip()
            obj, dot, attr = ph.partition(".")
            out.append((True, ph, obj if dot else "", attr))
        pos = m.end()
    if pos < len(text):
        out.append((False, text[pos:], "", ""))
    return tuple(out)


#: the objects the engine passes to every template, always present (possibly None)
ENGINE_OBJECTS = ("client", "manager", "supervisor", "new_manager", "as_of", "rule")


def bound(
    text: str, objects: tuple[str, ...], column: Callable[[str], Sequence[Any]], tz: tzinfo = UTC
) -> Callable[[dict[str, Any], int], str]:
    """The template compiled once for every row of a plan's frame (a plan renders the same title for
    tens of thousands of clients) into one expression: literals embedded with repr(), `objects` looked
    up in `o`, any other name read from its column (`column(name)`) by row number. Nothing from the
    text is evaluated."""
    env: dict[str, Any] = {"show": _show if tz is UTC else partial(_show, tz=tz)}
    terms: list[str] = []
    for is_ph, name, obj, attr in _parts(text):
        if not is_ph:
            terms.append(repr(name))
        elif obj and obj in objects:
            terms.append(f"('' if (x := o[{obj!r}]) is None else show(getattr(x, {attr!r}, None)))")
        elif name in objects:
            terms.append(f"show(o[{name!r}])")
        else:
            k = f"c{len(env)}"
            env[k] = column(name)
            terms.append(f"(x if type(x := {k}[i]) is str else show(x))")
    # a join of one tuple, not `a + b + ...`: 1,500 placeholders nested that deep were a RecursionError in
    # compile() on every plan of a rule file that `validate` had passed
    src = terms[0] if len(terms) == 1 else f"''.join(({', '.join(terms)},))" if terms else repr("")
    return eval(_compiled(src), env)  # type: ignore[no-any-return]


@lru_cache(maxsize=4096)
def _compiled(src: str) -> CodeType:
    """Compiled once per process: a backtest prepares every rule's texts again on each of its steps."""
    return compile(f"lambda o, i: {src}", "<retainer template>", "eval")
