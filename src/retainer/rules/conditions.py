"""Conditions: parsed once into a small AST, evaluated column-wise over every client at once.

A leaf compares one feature with a value. A missing value (None) makes every op false except
`exists: false`, so a client with no invoices never matches `revenue_365d: {lt: 100}` by accident.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from ..errors import did_you_mean
from ..stores.base import COMPARE
from ..timeutil import (
    MAX_DURATION_YEARS,
    AsOf,
    DateRangeError,
    Duration,
    DurationError,
    DurationTooLongError,
    add_durations,
    date_only,
    day_end,
    day_start,
    in_years,
    parse_duration,
    parse_instant,
)

Path = tuple[str | int, ...]

OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "between", "contains", "exists", "older_than")


class ConditionError(ValueError):
    """Raised at compile time with the path inside the rule file, mapped to a line by the loader."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class Frame(Protocol):
    """Per-client feature columns, aligned by row index."""

    ids: list[str]
    as_of: AsOf

    def column(self, name: str) -> list[Any]: ...


class FeatureTypes(Protocol):
    def type_of(self, name: str) -> str:
        """The feature's value type (int, number, str, bool, datetime, set, any); raises KeyError."""
        ...

    def choices_of(self, name: str) -> tuple[str, ...]:
        """The only values the feature takes (status, contact_policy, abc_class), or () for any."""
        ...

    def names(self) -> list[str]: ...


@dataclass(frozen=True)
class ExplainNode:
    """One condition evaluated for one client: what was tested, the value seen, whether it held."""

    text: str
    held: bool
    value: Any = None
    children: tuple[ExplainNode, ...] = ()
    note: str = ""  # a reading aid next to the value ("59 days before as_of")

    def lines(self, indent: int = 0) -> list[str]:
        mark = "✔" if self.held else "✘"
        note = f", {self.note}" if self.note else ""
        shown = "" if self.value is _NOVALUE else f"  [value: {_fmt(self.value)}{note}]"
        out = [f"{'  ' * indent}{mark} {self.text}{shown}"]
        for c in self.children:
            out.extend(c.lines(indent + 1))
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"condition": self.text, "held": self.held}
        if self.value is not _NOVALUE:
            d["value"] = _jsonable(self.value)
        if self.note:
            d["note"] = self.note
        if self.children:
            d["children"] = [c.to_dict() for c in self.children]
        return d


_SINCE_ISSUE = "invoice.activity_since_issue"


def since_issue_source(name: str) -> str | None:
    """The last-activity feature an `invoice.activity_since_issue` flag compares the issue with: the rule's
    `activity:` narrowing (`[1a2b3c4d]`) is the same on both. None for any other feature."""
    if not name.startswith(_SINCE_ISSUE):
        return None
    return "last_activity_at" + name.removeprefix(_SINCE_ISSUE)


class _NoValue:
    """No value to show (a condition of conditions): one instance, which pickles as itself."""

    def __repr__(self) -> str:
        return "-"

    def __reduce__(self) -> str:
        return "_NOVALUE"


_NOVALUE: Any = _NoValue()


def _fmt(v: Any, tz: Any = None) -> str:
    """As an analyst reads it: `none` rather than None, tags as a plain list, an instant in the rule set's
    zone `tz` (next to the client's values, which are shown in it)."""
    if v is None:
        return "none"
    if tz is not None and isinstance(v, datetime):
        v = v.astimezone(tz)
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, frozenset | set):
        return ", ".join(sorted(map(str, v))) if v else "none"
    return str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, frozenset | set):
        return sorted(map(str, v))
    if isinstance(v, Duration):
        return str(v)
    return v


class Day:
    """A date without a time compared with an instant feature: its whole day in the rule set's zone, for every
    operator. `{eq: 2026-01-31}` holds for a call at 10:00 that day, `{lte: ...}` takes it in, `{gt: ...}`
    starts the next day, `{ne: ...}` and `not_in` leave out the whole day. A date compared as its midnight
    held none of that for `eq`, `in` and `ne`. Shown as the date the analyst wrote."""

    __slots__ = ("day", "end", "start")

    def __init__(self, day: date, tz: Any) -> None:
        self.day, self.start, self.end = day, day_start(day, tz), day_end(day, tz)

    # `instant OP day` reaches these reflected (datetime returns NotImplemented): `instant <= day` is
    # `day.__ge__(instant)`, and between's `day <= instant` is `day.__le__(instant)`
    def __eq__(self, other: object) -> bool:
        if isinstance(other, Day):
            return (self.start, self.end) == (other.start, other.end)
        if isinstance(other, datetime):
            return self.start <= other <= self.end
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Day, self.start))

    def __lt__(self, other: Any) -> bool:  # other > day: after the day
        return bool(self.end < (other.end if isinstance(other, Day) else other))

    def __le__(self, other: Any) -> bool:  # other >= day: on the day or after
        return bool(self.start <= (other.start if isinstance(other, Day) else other))

    def __gt__(self, other: Any) -> bool:  # other < day: before the day
        return bool(self.start > (other.start if isinstance(other, Day) else other))

    def __ge__(self, other: Any) -> bool:  # other <= day: before the day's end
        return bool(self.end >= (other.end if isinstance(other, Day) else other))

    def bound(self, op: str) -> datetime:
        """The one instant an instant is compared with for `op` (lt, gte: the day's first; lte, gt: its last)."""
        return self.start if op in ("lt", "gte") else self.end

    def __str__(self) -> str:
        return self.day.isoformat()

    __repr__ = __str__


class _WithDays(frozenset[Any]):
    """`in` / `not_in` values with a `Day` among them: an instant is in the set when it is one of its instants
    or falls on one of its days (a frozenset finds neither by hash)."""

    def __contains__(self, v: object) -> bool:
        return frozenset.__contains__(self, v) or (
            isinstance(v, datetime) and any(d == v for d in self if type(d) is Day)
        )


def _memo(fn: Callable[[Any, Frame], list[bool]]) -> Callable[[Any, Frame], list[bool]]:
    """One evaluation per equal condition per frame: the parts of a rule (ladder steps, outcome steps)
    and the rules of one file repeat conditions (`outstanding >= 100` in every dunning step). Callers
    only read the list."""

    def mask(self: Any, frame: Frame) -> list[bool]:
        memo = getattr(frame, "memo", None)
        if memo is None:
            return fn(self, frame)
        try:
            key = ("mask", self)
            hit = memo.get(key)
        except TypeError:  # a value that cannot be hashed: evaluate every time
            return fn(self, frame)
        if hit is None:
            hit = memo[key] = fn(self, frame)
        return hit  # type: ignore[no-any-return]

    return mask


class Node:
    def mask(self, frame: Frame) -> list[bool]:
        raise NotImplementedError

    def explain(self, frame: Frame, i: int) -> ExplainNode:
        raise NotImplementedError

    def features(self) -> set[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class All(Node):
    children: tuple[Node, ...]

    @_memo
    def mask(self, frame: Frame) -> list[bool]:
        out = [True] * len(frame.ids)
        for c in self.children:
            out = [a and b for a, b in zip(out, c.mask(frame), strict=True)]
        return out

    def explain(self, frame: Frame, i: int) -> ExplainNode:
        kids = tuple(c.explain(frame, i) for c in self.children)
        return ExplainNode("all of", all(k.held for k in kids), _NOVALUE, kids)

    def features(self) -> set[str]:
        return set().union(*(c.features() for c in self.children))


@dataclass(frozen=True)
class AnyOf(Node):
    children: tuple[Node, ...]

    @_memo
    def mask(self, frame: Frame) -> list[bool]:
        out = [False] * len(frame.ids)
        for c in self.children:
            out = [a or b for a, b in zip(out, c.mask(frame), strict=True)]
        return out

    def explain(self, frame: Frame, i: int) -> ExplainNode:
        kids = tuple(c.explain(frame, i) for c in self.children)
        return ExplainNode("any of", any(k.held for k in kids), _NOVALUE, kids)

    def features(self) -> set[str]:
        return set().union(*(c.features() for c in self.children))


@dataclass(frozen=True)
class Not(Node):
    child: Node

    @_memo
    def mask(self, frame: Frame) -> list[bool]:
        return [not b for b in self.child.mask(frame)]

    def explain(self, frame: Frame, i: int) -> ExplainNode:
        k = self.child.explain(frame, i)
        return ExplainNode("not", not k.held, _NOVALUE, (k,))

    def features(self) -> set[str]:
        return self.child.features()


def _shown(x: Any) -> str:
    if isinstance(x, tuple | frozenset):  # between's bounds, in's values
        return f"[{', '.join(str(v) for v in (x if isinstance(x, tuple) else sorted(x, key=str)))}]"
    return repr(x) if isinstance(x, str) else str(x)


def _contains(a: Any, b: Any) -> bool:
    return b in a


def _between(a: Any, b: tuple[Any, Any]) -> bool:
    return b[0] <= a <= b[1]


def _has_any(a: Any, b: frozenset[Any]) -> bool:
    return not b.isdisjoint(a)


def _has_none(a: Any, b: frozenset[Any]) -> bool:
    return b.isdisjoint(a)


_BINARY: dict[str, Callable[[Any, Any], bool]] = {
    **COMPARE,
    "between": _between,
    "contains": _contains,
    # `in` and `not_in` on a set feature (`tags: {in: [key-account, vip]}`): any of the values, none of them
    "has_any": _has_any,
    "has_none": _has_none,
}
_SYMBOL = {"eq": "=", "ne": "≠", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤"}
_ACTIVITY_KEY = re.compile(r"\[[0-9a-f]{8}\]$")
_SET_OPS = {"in": "has_any", "not_in": "has_none"}


@dataclass(frozen=True)
class Leaf(Node):
    feature: str
    op: str
    value: Any
    #: the rule set's zone, to show the value's instants in (not part of what the condition is)
    tz: Any = field(default=None, compare=False, repr=False)

    def _test(self, v: Any) -> bool:
        if self.op == "exists":
            return (v is not None) == self.value
        if v is None:
            return False
        try:
            return bool(_BINARY[self.op](v, self.value))
        except TypeError:
            return False

    @_memo
    def mask(self, frame: Frame) -> list[bool]:
        col = frame.column(self.feature)
        x = self.value
        if self.op == "exists":
            return [(v is not None) == x for v in col]
        fn = _BINARY[self.op]
        if self.op in ("lt", "gte", "lte", "gt") and type(x) is Day:  # compared with one of its instants, in C
            x = x.bound(self.op)
        elif self.op == "between" and Day in (type(x[0]), type(x[1])):
            x = (x[0].start if type(x[0]) is Day else x[0], x[1].end if type(x[1]) is Day else x[1])
        try:  # one comparison per row; a value of another type (a bad attribute) takes the careful path
            return [v is not None and bool(fn(v, x)) for v in col]
        except TypeError:
            pass
        out = []
        warnings = getattr(frame, "warnings", None)
        if warnings is None:  # an invoice's frame: its client frame's
            warnings = getattr(getattr(frame, "parent", None), "warnings", None)
        for k, v in enumerate(col):
            try:
                out.append(v is not None and bool(fn(v, x)))
            except TypeError:  # "1,200 employees" against 100: false, and said (a silent false hid the typo)
                out.append(False)
                if warnings is not None:
                    warnings.append(f"{getattr(frame, 'subject', 'client')} {frame.ids[k]}: {self.feature} is {v!r}, "
                                    f"which cannot be compared with {_shown(x)}: `{self.op}` does not hold")
        return out

    def explain(self, frame: Frame, i: int) -> ExplainNode:
        v = frame.column(self.feature)[i]
        note = ""
        if v and (source := since_issue_source(self.feature)) is not None:  # which activity: "True" said nothing
            note = f"the client's last activity counted: {_fmt(frame.column(source)[i], frame.as_of.tz)}"
        return ExplainNode(self.text(), self._test(v), _local(v, frame.as_of), note=note)

    def text(self) -> str:
        tz, name = self.tz, _ACTIVITY_KEY.sub("", self.feature)  # `[1a2b3c4d]`: an `activity:` narrowing's key
        if self.op in _SYMBOL:
            return f"{name} {_SYMBOL[self.op]} {_fmt(self.value, tz)}"
        if self.op == "exists":
            return f"{name} {'exists' if self.value else 'is missing'}"
        if self.op in ("in", "not_in", "has_any", "has_none"):
            # sorted: a set's order depends on the process's hash seed, and reasons must be byte-stable
            words = {"not_in": "not in", "has_any": "has any of", "has_none": "has none of"}.get(self.op, self.op)
            shown = sorted(_fmt(v, tz) for v in self.value)
            return f"{name} {words} [{', '.join(shown)}]"
        if self.op == "between":
            return f"{name} between {_fmt(self.value[0], tz)} and {_fmt(self.value[1], tz)}"
        return f"{name} {self.op} {_fmt(self.value, tz)}"

    def features(self) -> set[str]:
        return {self.feature}


@dataclass(frozen=True)
class OlderThan(Node):
    """`feature` (an instant) is at least D old: date(value) + D <= date(as_of).

    D is chosen per client: the first `cases` entry whose condition holds wins, else `default`.
    A case's duration may be a constant or the name of a feature holding a duration (for a client
    attribute such as `forgotten_after`). `plus` extends every choice (release = after + grace).
    """

    feature: str
    default: Duration
    cases: tuple[tuple[Node, Duration | str], ...] = ()
    plus: Duration | None = None
    case_labels: tuple[str, ...] = ()

    def durations(self, frame: Frame, problems: dict[int, str] | None = None) -> list[Duration | None]:
        """The threshold each client is held to (None when its duration attribute is invalid, and then
        `problems` gets the reason by client index). Computed once per frame: the mask, the engine's
        evidence and explain all ask."""
        memo = getattr(frame, "memo", None)
        if memo is not None:
            hit = memo.get(("durations", id(self)))
            if hit is None:
                hit = memo[("durations", id(self))] = self._durations(frame)
            if problems is not None:
                problems.update(hit[1])
            return hit[0]
        out, found = self._durations(frame)
        if problems is not None:
            problems.update(found)
        return out

    def _durations(self, frame: Frame) -> tuple[list[Duration | None], dict[int, str]]:
        problems: dict[int, str] = {}
        n = len(frame.ids)
        out: list[Duration | None] = [self.default] * n
        decided = [False] * n
        for cond, dur in self.cases:
            m = cond.mask(frame)
            col = frame.column(dur) if isinstance(dur, str) else None
            for i in range(n):
                if m[i] and not decided[i]:
                    decided[i] = True
                    out[i] = as_duration(col[i]) if col is not None else dur  # type: ignore[assignment]
                    if out[i] is None and col is not None:
                        problems[i] = _not_a_duration(dur, col[i])
        if self.plus is not None:
            plus = self.plus
            extended: dict[int, Duration] = {}  # by identity, as in `mask`
            out = [
                None if d is None else extended.get(id(d)) or extended.setdefault(id(d), add_durations(d, plus))
                for d in out
            ]
        return out, problems

    @_memo
    def mask(self, frame: Frame) -> list[bool]:
        as_of = frame.as_of
        values = frame.column(self.feature)
        durs = self.durations(frame)
        # a client's duration is one of a few objects: look them up by identity (hashing a Duration, a
        # dataclass, for every client cost more than the comparison itself)
        kinds = {id(d): d for d in durs if d is not None}
        if not any(d.is_hours for d in kinds.values()):  # calendar durations: one bound each
            bound = {k: as_of.older_bound(d) for k, d in kinds.items()}
            return [v is not None and d is not None and v < bound[id(d)] for v, d in zip(values, durs, strict=True)]
        fns = {k: _older_fn(as_of, d) for k, d in kinds.items()}
        return [v is not None and d is not None and fns[id(d)](v) for v, d in zip(values, durs, strict=True)]

    @staticmethod
    def held(as_of: AsOf, value: datetime | None, d: Duration | None) -> bool:
        """Whether `value` is at least `d` old as of `as_of`: the threshold for one client at any instant (the
        engine asks it of an earlier night's decision)."""
        return value is not None and d is not None and _older_fn(as_of, d)(value)

    def explain(self, frame: Frame, i: int) -> ExplainNode:
        v = frame.column(self.feature)[i]
        problems: dict[int, str] = {}
        d = self.durations(frame, problems)[i]
        held = self.held(frame.as_of, v, d)
        which = ""
        # the cases up to the one that chose the threshold (the first that holds wins), each with its own
        # condition: "why did this key account get 60 days" (the override's operator, the client's tags)
        cases: list[ExplainNode] = []
        for k, (cond, dur) in enumerate(self.cases):
            label = self.case_labels[k] if k < len(self.case_labels) else f"case #{k + 1}"
            hit = cond.mask(frame)[i]
            if k or not (isinstance(dur, str) and not hit):  # an unset attribute threshold: no news, left out
                cases.append(ExplainNode(f"{label}: {dur}", hit, _NOVALUE, (cond.explain(frame, i),)))
            if hit:
                which = f" ({label})"
                break
        name = "last activity" if self.feature.startswith("activity_anchor_at") else self.feature
        if d is None:
            return ExplainNode(f"{name}: no threshold, {problems.get(i, 'invalid')}{which}", False,
                               _local(v, frame.as_of), tuple(cases))
        when = _local(v, frame.as_of)
        note = ""
        if isinstance(when, datetime):  # "59 days before as_of": the count an analyst checks
            days = (frame.as_of.date - when.date()).days
            note = f"{days} day{'s' * (days != 1)} before as_of"
        if not which and cases:
            which = " (the default: no override applies)"
        return ExplainNode(f"{name} at least {d} ago{which}", held, when, tuple(cases), note=note)

    def features(self) -> set[str]:
        fs = {self.feature}
        for cond, dur in self.cases:
            fs |= cond.features()
            if isinstance(dur, str):
                fs.add(dur)
        return fs


def _local(v: Any, as_of: AsOf) -> Any:
    return v.astimezone(as_of.tz) if isinstance(v, datetime) else v


def as_duration(v: Any) -> Duration | None:
    """A client's duration attribute, or None when it is empty or unusable (`_not_a_duration` says why)."""
    if v is None or v == "" or not isinstance(v, str | int):  # a list or dict from a CRM custom field
        return None
    if isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
        v = int(v)  # a number of days, as a CRM custom field (a CSV cell) holds it: text
    try:
        return parse_duration(v)
    except DurationError:
        return None


def _not_a_duration(name: str, v: Any) -> str:
    """The warning for a client skipped over its duration attribute (only for the few bad values)."""
    if v is not None and v != "" and isinstance(v, str | int):
        try:
            parse_duration(v)
        except DurationTooLongError:
            return f"{name} {v!r} is longer than {MAX_DURATION_YEARS} years, the longest a threshold may be"
        except DurationError:
            pass
    return f"{name} {v!r} is not a duration (write e.g. 45d, 6w, 2mo, 36h)"


def _older_fn(as_of: AsOf, d: Duration) -> Callable[[datetime], bool]:
    if d.is_hours:
        return lambda v: as_of.is_older(v, d)
    # compare instants against the first instant that is too recent: one comparison per client
    bound = as_of.older_bound(d)
    return lambda v: v < bound


# ---------------------------------------------------------------- parsing


def parse_condition(raw: Any, types: FeatureTypes, tz: Any, path: Path) -> Node:
    """Turn the YAML form into an AST, checking feature names, ops and value types."""
    if not isinstance(raw, dict) or not raw:
        raise ConditionError(
            "a condition is a mapping: {all: [...]}, {any: [...]}, {not: ...} or {feature: {op: value}}", path
        )
    nodes: list[Node] = []
    for key, val in raw.items():
        p = (*path, key)
        if key in ("all", "any"):
            if not isinstance(val, list) or not val:
                raise ConditionError(f"'{key}' takes a non-empty list of conditions", p)
            kids = tuple(parse_condition(c, types, tz, (*p, j)) for j, c in enumerate(val))
            nodes.append(All(kids) if key == "all" else AnyOf(kids))
        elif key == "not":
            nodes.append(Not(parse_condition(val, types, tz, p)))
        else:
            nodes.extend(_parse_leaves(str(key), val, types, tz, p))
    return nodes[0] if len(nodes) == 1 else All(tuple(nodes))


def _parse_leaves(feature: str, val: Any, types: FeatureTypes, tz: Any, path: Path) -> list[Node]:
    try:
        ftype = types.type_of(feature)
    except KeyError:
        raise ConditionError(_unknown_feature(feature, types.names()), path) from None
    if not isinstance(val, dict):
        val = {"eq": val}
    if not val:
        raise ConditionError(f"no operator given for {feature}", path)
    out: list[Node] = []
    for op, v in val.items():
        p = (*path, op)
        if op not in OPS:
            raise ConditionError(f"unknown operator {op!r}; valid: {', '.join(OPS)}", p)
        if op == "older_than":
            if ftype != "datetime":
                raise ConditionError(f"older_than needs a date/time feature; {feature} is {ftype}", p)
            try:
                out.append(OlderThan(feature, parse_duration(v)))
            except DurationError as exc:
                raise ConditionError(str(exc), p) from None
            continue
        value = _coerce(op, v, ftype, feature, tz, p)
        choices = types.choices_of(feature)
        if choices and op in ("eq", "ne", "in", "not_in"):
            for x in value if isinstance(value, frozenset) else (value,):
                if x not in choices:
                    raise ConditionError(_unknown_value(feature, x, choices), p)
        out.append(Leaf(feature, _SET_OPS.get(op, op) if ftype == "set" else op, value, tz))
    return out


def _unknown_value(feature: str, value: Any, choices: Sequence[str]) -> str:
    hint = did_you_mean(str(value), choices)
    return f"{feature} is never {value!r}{hint} (it is one of {', '.join(choices)})"


def _unknown_feature(name: str, known: Sequence[str]) -> str:
    junction = {"and": "all", "or": "any", "&&": "all", "||": "any"}.get(name.lower())
    if junction is not None:  # a condition's `and:` read as a feature name
        forms = "{all: [...]}, {any: [...]}, {not: {...}}"
        return f"{name!r} is not a condition: did you mean `{junction}:`? ({forms})"
    hint = did_you_mean(name, known, n=3, quote=False)
    return (
        f"unknown feature {name!r}{hint} (built-in features: see `retainer schema` and docs/rules.md; "
        f"define your own under `features:`)"
    )


def _coerce(op: str, v: Any, ftype: str, feature: str, tz: Any, path: Path) -> Any:
    if ftype == "set" and op not in ("exists", "in", "not_in", "contains"):  # `between` on tags never held
        raise ConditionError(f"{feature} is a set: use contains, in, not_in or exists", path)
    if op == "exists":
        if not isinstance(v, bool):
            raise ConditionError("exists takes true or false", path)
        return v
    if op in ("in", "not_in"):
        if not isinstance(v, list):
            raise ConditionError(f"{op} takes a list", path)
        values = [_scalar(x, ftype, feature, tz, path) for x in v]
        return _WithDays(values) if any(type(x) is Day for x in values) else frozenset(values)
    if op == "between":
        if not isinstance(v, list) or len(v) != 2:
            raise ConditionError("between takes a list of two values [low, high]", path)
        low, high = _scalar(v[0], ftype, feature, tz, path), _scalar(v[1], ftype, feature, tz, path)
        try:
            reversed_ = low > high
        except TypeError:  # values of a feature of no fixed type: compared per client
            reversed_ = False
        if reversed_:
            raise ConditionError(f"between [{v[0]}, {v[1]}] never holds: write the low bound first", path)
        return (low, high)
    if op == "contains":
        if ftype not in ("set", "str", "any"):
            raise ConditionError(f"contains needs a set or text feature; {feature} is {ftype}", path)
        if isinstance(v, list | dict):  # str() of a list is never in a tag set: the condition never held
            raise ConditionError(
                f"contains takes one value; for any of several write {{{feature}: {{in: [...]}}}}, "
                f"for each of them all: [{{{feature}: {{contains: ...}}}}, ...]", path)
        return str(v)
    return _scalar(v, ftype, feature, tz, path)


def _is_share(feature: str) -> bool:
    """Features that are shares or ratios (0.3 = 30 %): they also take "30%"."""
    return feature == "contract_progress" or _is_growth(feature)


def _is_growth(feature: str) -> bool:
    """`spend_growth` (90 days) and `spend_growth_<window>`: the same feature, read the same way. Not a rule
    file's own feature that only starts so (`spend_growth_eur`, a sum of money)."""
    if feature == "spend_growth":
        return True
    if not feature.startswith("spend_growth_"):
        return False
    try:
        parse_duration(feature.removeprefix("spend_growth_"))
    except DurationError:
        return False
    return True


def _out_of_share(v: Any, d: Decimal, path: Path) -> Any:
    """The seed's "development mid-life, retention in the last third" written as 30 and 66 never matched,
    and validate said ok."""
    raise ConditionError(f"contract_progress runs from 0 to 1 (0.5 = halfway); {v!r} is outside it: "
                         f"write {d / 100} or \"{v}%\"", path)


def _scalar(v: Any, ftype: str, feature: str, tz: Any, path: Path) -> Any:
    try:
        match ftype:
            case "int" | "number":
                if isinstance(v, bool) or not isinstance(v, int | float | str | Decimal):
                    raise TypeError
                percent = isinstance(v, str) and v.strip().endswith("%") and _is_share(feature)
                d = Decimal(v.strip()[:-1].strip()) / 100 if percent else Decimal(str(v))  # type: ignore[union-attr]
                if not d.is_finite():  # NaN crashed every plan at its first comparison; infinity never matches
                    raise ConditionError(f"{feature} is {ftype}; {v!r} is not a finite number", path)
                if feature == "contract_progress" and not 0 <= d <= 1:
                    return _out_of_share(v, d, path)
                if _is_growth(feature) and not percent and abs(d) > 1:  # `gt: 20` meant +20 %, never held
                    raise ConditionError(
                        f"{feature} is a share of the earlier spend (0.2 = +20 %), so {v!r} means {d * 100:+}%: "
                        f"write \"{v}%\" or {d / 100}; a change beyond ±100 % is written as a percent (\"150%\")",
                        path,
                    )
                return int(d) if ftype == "int" and d == int(d) else d
            case "bool":
                if not isinstance(v, bool):
                    raise TypeError
                return v
            case "datetime":
                if not isinstance(v, str | date):
                    raise TypeError
                try:
                    if (day := date_only(v)) is not None:
                        return Day(in_years(day), tz)
                    return parse_instant(v, tz)
                except DateRangeError as exc:
                    raise ConditionError(f"{feature}: {_fmt(v)}: {exc}", path) from None
            case "str" | "set":
                if isinstance(v, list | dict):
                    raise TypeError
                return str(v)
            case _:
                if isinstance(v, float) and not math.isfinite(v):  # compared per client, as with a number
                    raise ConditionError(f"{feature}: {v!r} is not a finite number", path)
                return v
    except ConditionError:
        raise
    except (TypeError, ValueError, InvalidOperation):
        raise ConditionError(f"{feature} is {ftype}; {v!r} is not a valid value for it", path) from None
