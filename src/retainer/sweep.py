"""When can a client's plan change by the passage of time alone? The backtest sweep asks this.

After a client is evaluated as of some date, `Wakes.compute` returns the earliest later date at which
any time-dependent part of any rule about it could flip while no new fact arrives and the ledger stays
as it is: an `older_than` threshold coming due, a `days_since_*` counter reaching a constant, a fact
leaving a `within:` window, a due date passing a "due on or after today" filter, an episode feature
that moves with time. New facts, commits and suppressions are the backtest's business (it re-evaluates
those clients on the next step); the population feature `abc_class` is diffed by the backtest too.

Every estimate errs early: a wake date may come before the real flip (the client is evaluated and
nothing changes, then it is woken again), never after it. A feature whose time behaviour is not known
here wakes the client on the next step, so a new feature is slow until described, never wrong.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from .rules.conditions import All as AllOf
from .rules.conditions import AnyOf, Leaf, Node, Not, OlderThan
from .rules.features import FeatureFrame, SubFrame, contract_span, invoice_frame
from .rules.loader import RuleSet
from .stores.base import EXISTS_FIELD, TIME_FIELDS, VIRTUAL_SOURCES, AggSpec, Changes, Pred
from .timeutil import AsOf, Duration, parse_as_of

__all__ = ["Kept", "Quiet", "Wakes"]

Wake = date | None
Frame = FeatureFrame | SubFrame

#: integer features that grow by one per calendar day while the instant they count from stays put
DAY_COUNTERS = frozenset({
    "days_since_activity", "days_since_last_invoice", "max_days_overdue", "days_since_won_deal",
    "days_since_offer_end", "invoice.days_since_issue", "invoice.days_overdue",
})  # fmt: skip

#: features that only change with facts, client rows or the ledger (which the backtest watches itself)
STATIC = frozenset({
    "status", "tags", "manager_id", "contact_policy", "name", "created_at", "cost_to_serve", "client_id",
    "manager_active", "manager_team", "released_at", "abc_class",  # abc_class: diffed over the population
    "invoice.id", "invoice.amount", "invoice.paid_total", "invoice.outstanding", "invoice.issued_at",
    "invoice.due_at", "invoice.activity_since_issue",
})  # fmt: skip


def _is_counter(name: str) -> bool:
    return name in DAY_COUNTERS or name.startswith("days_since_activity[")


def _min(a: Wake, b: Wake) -> Wake:
    return b if a is None else a if b is None or a <= b else b


def _merge(into: list[Wake], other: Sequence[Wake]) -> None:
    if not any(other):  # nothing in it ever flips (a client field, a feature without dependencies): most merges
        return
    for i, w in enumerate(other):
        if w is not None and (into[i] is None or w < into[i]):  # type: ignore[operator]
            into[i] = w


def _breaks(leaf: Leaf) -> list[int]:
    """Values at which the leaf's truth may change, for an integer feature (a value and the next)."""
    v = leaf.value
    consts = list(v) if leaf.op in ("in", "not_in", "between") else [v]
    out: list[int] = []
    for c in consts:
        try:
            n = int(c)
        except (TypeError, ValueError):
            continue
        out += [n, n + 1]
    return out


def _flip_date(v: datetime, d: Duration, a: AsOf) -> date:
    """The date an `older_than d` on instant `v` comes due (the threshold rule, DESIGN §12)."""
    moved = (v + timedelta(hours=d.hours) if d.hours else v).astimezone(a.tz).date()
    return _add(d, moved) if d.months or d.days else moved


#: how far ahead of a `contract_progress` constant its wake comes (10 steps of the rounding to 4 places)
_PROGRESS_EARLY = 0.001


@lru_cache(maxsize=65536)
def _add(d: Duration, day: date) -> date:
    return d.add_to_date(day)  # relativedelta is slow, and most clients share a few hundred dates


class Wakes:
    """Per rule set: which time-dependent parts each rule has, and when they next flip per client."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.registry = rules.registry
        self._moving: dict[tuple[str, int, int], bool] = {}
        # (feature, aggregate, predicate, date) -> the bound as of that date: fixed by the rule set, and
        # the wake searches of consecutive steps ask for the same dates (a year with windowed features
        # spent a third of its wake time recomputing them)
        self._bounds: dict[tuple[str, int, int, date], datetime] = {}

    def compute(self, frame: FeatureFrame) -> dict[str, date]:
        """client id -> the earliest date after `frame.as_of` to evaluate it again (absent: never by time)."""
        a = frame.as_of
        self._a = a
        self._next = a.date + timedelta(days=1)
        self._memo: dict[tuple[int, str], list[Wake]] = {}
        frame.prefetch(set(), self.specs(a))  # fetched already when the sweep passed them to the plan
        out: list[Wake] = [None] * len(frame.ids)
        for rule in self.rules.rules:
            if rule.subject == "manager":
                continue  # evaluated over every manager by the backtest itself
            fr: Frame = frame if rule.subject == "client" else invoice_frame(frame)
            rows = self._node(rule.condition, fr)
            if rule.episode:  # a new episode is a new key: only rows that match can emit one
                ep = self._feature(fr, rule.episode)
                mask = rule.condition.mask(fr)
                _merge(rows, [w if hit else None for w, hit in zip(ep, mask, strict=True)])
            if isinstance(fr, SubFrame):
                assert fr.row_client is not None
                mapped: list[Wake] = [None] * len(frame.ids)
                for j, w in zip(fr.row_client, rows, strict=True):
                    mapped[j] = _min(mapped[j], w)
                rows = mapped
            _merge(out, rows)
        nxt = self._next
        return {cid: max(w, nxt) for cid, w in zip(frame.ids, out, strict=True) if w is not None}

    # ------------------------------------------------------------ conditions

    def _node(self, node: Node, fr: Frame) -> list[Wake]:
        if isinstance(node, AllOf | AnyOf):
            return self._junction(node, fr)
        if isinstance(node, Not):
            return self._node(node.child, fr)
        if isinstance(node, Leaf):
            if _is_counter(node.feature):
                return self._counter(node, fr)
            if node.feature == "contract_progress":
                return self._progress(node, fr)
            return list(self._feature(fr, node.feature))
        if isinstance(node, OlderThan):
            return self._older(node, fr)
        return [self._next] * len(fr.ids)  # a node this module does not know: every step

    def _junction(self, node: AllOf | AnyOf, fr: Frame) -> list[Wake]:
        """`all of` that holds (or `any of` that does not) can change as soon as any child does. One
        that does not hold waits for every child that makes it so: until the last of those can flip,
        one of them still decides it (a client past the release threshold but with a task due next
        month is not woken on the threshold date)."""
        kids = [(self._node(c, fr), c.mask(fr)) for c in node.children]
        free = isinstance(node, AllOf)  # the value that any one child can take away
        out: list[Wake] = []
        for i, held in enumerate(node.mask(fr)):
            w: Wake = None
            if held == free:
                for ws, _ in kids:
                    w = _min(w, ws[i])
            else:  # every deciding child must flip: the latest of their first flips, never if one never does
                for ws, ms in kids:
                    if ms[i] == held:
                        if ws[i] is None:
                            w = None
                            break
                        w = ws[i] if w is None or ws[i] > w else w  # type: ignore[operator]
            out.append(w)
        return out

    def _counter(self, leaf: Leaf, fr: Frame) -> list[Wake]:
        """A `days_since_*` leaf flips when the counter reaches one of its constants (or one past it)."""
        d0 = self._a.date
        breaks = _breaks(leaf)
        out: list[Wake] = []
        for v in fr.column(leaf.feature):
            k = min((b - v for b in breaks if b - v > 0), default=None) if isinstance(v, int) else None
            out.append(None if k is None else d0 + timedelta(days=k))
        _merge(out, self._deps(fr, leaf.feature))
        return out

    def _progress(self, leaf: Leaf, fr: Frame) -> list[Wake]:
        """`contract_progress` grows linearly from the current contract's start to its end, so a leaf on it
        flips when the progress reaches one of the leaf's constants: due on that date, a little early for
        the rounding to 4 places. The contract ending or a new one starting is a fact of its own. (Woken
        every day instead, a client with a contract was planned on every step: 600 of the 3,000-client
        demo's clients by the end of a year with the example rule set.)"""
        if isinstance(fr, SubFrame):
            assert fr.row_client is not None
            parent = self._progress(leaf, fr.parent)
            return [parent[j] for j in fr.row_client]
        a = self._a
        (span,) = self.registry.get("contract_progress").aggs(a)
        v = leaf.value
        consts = [float(c) for c in (v if leaf.op in ("in", "not_in", "between") else [v])
                  if isinstance(c, int | float | Decimal) and not isinstance(c, bool)]  # fmt: skip
        out: list[Wake] = []
        for p, text in zip(fr.column("contract_progress"), fr.agg_column(span), strict=True):
            start, end = contract_span(text)
            w: Wake = None
            if p is not None and start is not None and end is not None:
                for c in consts:
                    if c >= float(p):  # still ahead (progress only grows): reached, or passed for `gt`
                        at = start + (end - start) * max(0.0, c - _PROGRESS_EARLY)
                        w = _min(w, max(a.local_date(at), self._next))
            out.append(w)
        _merge(out, self._aggregates(fr, "contract_progress"))
        return out

    def _older(self, node: OlderThan, fr: Frame) -> list[Wake]:
        """Not yet old enough: due on the threshold date (`_flip_date` is the threshold rule solved for
        the date). Once held, an `older_than` stays held until a new fact moves its instant."""
        a = self._a
        held = node.mask(fr)
        durs = node.durations(fr)
        out: list[Wake] = []
        for v, d, h in zip(fr.column(node.feature), durs, held, strict=True):
            out.append(None if h or v is None or d is None else _flip_date(v, d, a))
        _merge(out, self._feature(fr, node.feature))
        for cond, dur in node.cases:  # which threshold applies can change with time too
            _merge(out, self._node(cond, fr))
            if isinstance(dur, str):
                _merge(out, self._feature(fr, dur))
        return out

    # ------------------------------------------------------------ features

    def _feature(self, fr: Frame, name: str) -> list[Wake]:
        key = (id(fr), name)
        got = self._memo.get(key)
        if got is None:
            got = self._memo[key] = self._feature_uncached(fr, name)
        return got

    def _feature_uncached(self, fr: Frame, name: str) -> list[Wake]:
        n = len(fr.ids)
        if isinstance(fr, SubFrame):
            if name.startswith("invoice."):
                return [self._next] * n if _is_counter(name) else [None] * n
            assert fr.row_client is not None
            parent = self._feature(fr.parent, name)
            return [parent[j] for j in fr.row_client]
        if name in STATIC or name.startswith("attributes."):
            return [None] * n
        if _is_counter(name):  # as a value (an episode, a threshold case): it moves every day
            return [self._next if v is not None else None for v in fr.column(name)]
        if name == "contract_progress":  # moves continuously while a contract runs
            return [self._next if v is not None else None for v in fr.column(name)]
        impl = self.registry.get(name)
        if not impl.aggs(self._a) and not impl.deps:
            return [self._next] * n  # unknown time behaviour: every step
        return self._aggregates(fr, name)

    def _aggregates(self, fr: FeatureFrame, name: str) -> list[Wake]:
        """When the feature's aggregates (or its dependencies) next change by time alone."""
        n = len(fr.ids)
        specs = self.registry.get(name).aggs(self._a)
        out: list[Wake] = [None] * n
        index = {cid: i for i, cid in enumerate(fr.ids)}
        for j, s in enumerate(specs):
            for cid, w in self._spec_wakes(fr, name, j, s).items():
                i = index.get(cid)
                if i is not None and (out[i] is None or w < out[i]):  # type: ignore[operator]
                    out[i] = w
        _merge(out, self._deps(fr, name))
        if name.startswith("profit_"):  # the cost of the window's days moves by time alone when they vary
            moves = self._costs_move(name)
            _merge(out, [self._next if c.cost_to_serve and moves(c) else None for c in fr.clients])
        return out

    def _costs_move(self, name: str) -> Callable[[Any], bool]:
        """Whether a client's cost over the window changes from one day to the next with no new fact: a window
        in months holds a different number of days each day, and a client created inside the window has
        cost one day more each day (found in review: a rule on `profit_90d` fired days late, or never). The
        window is read once per feature, not once per client."""
        from .timeutil import parse_duration

        try:
            w = parse_duration(name.split("_", 1)[1])
        except ValueError:
            return lambda c: True
        if w.months:
            return lambda c: True
        tz, start = self._a.tz, w.cutoff(self._a.date)
        return lambda c: c.created_at is not None and c.created_at.astimezone(tz).date() > start

    def _deps(self, fr: Frame, name: str) -> list[Wake]:
        out: list[Wake] = [None] * len(fr.ids)
        for d in self.registry.get(name).deps if name in self.registry else ():
            _merge(out, self._feature(fr, d))
        return out

    # ------------------------------------------------------------ store aggregates

    def _extra(self, name: str, j: int, s: AggSpec) -> list[tuple[AggSpec, int]]:
        """Aggregates that time the next change of aggregate `s` (the feature's j-th): the oldest fact in
        its window (it leaves the window: index -1), and the next value of a field compared with an
        instant that moves with as_of (a due date passing "due on or after today": the predicate's
        index). A fixed date in a filter (`due_at < 2026-02-01`) does not move: a row's side of it never
        changes, so it needs no aggregate and no wake."""
        out: list[tuple[AggSpec, int]] = []
        if s.since is not None and s.time_field is not None:
            out.append((AggSpec(s.entity, "min", s.time_field, s.where, s.time_field, s.since), -1))
        for k, p in enumerate(s.where):
            if isinstance(p.value, datetime) and self._moves(name, j, k):
                rest = tuple(q for q in s.where if q is not p)
                out.append(
                    (
                        AggSpec(
                            s.entity, "min", p.field, (*rest, Pred(p.field, "gte", p.value)), s.time_field, s.since
                        ),
                        k,
                    )
                )
        return out

    def _moves(self, name: str, j: int, k: int) -> bool:
        """Whether predicate k of the feature's aggregate j compares with an instant that moves with as_of:
        read from the feature's own definition at two dates far apart, once per rule set."""
        key = (name, j, k)
        got = self._moving.get(key)
        if got is None:
            aggs = self.registry.get(name).aggs
            at = [aggs(parse_as_of(d, self.rules.tz))[j].where[k].value for d in (date(2000, 1, 1), date(2001, 6, 1))]
            got = self._moving[key] = at[0] != at[1]
        return got

    def _bound(self, name: str, j: int, k: int, d: date) -> datetime:
        """The window start (k = -1) or the moving instant of predicate k of the feature's aggregate j,
        as of date d: read from the feature's own definition, so the search below is exact."""
        key = (name, j, k, d)
        got = self._bounds.get(key)
        if got is None:
            spec = self.registry.get(name).aggs(parse_as_of(d, self.rules.tz))[j]
            got = spec.since if k < 0 else spec.where[k].value
            assert isinstance(got, datetime)
            self._bounds[key] = got
        return got

    def _first_date(self, name: str, j: int, k: int, t: datetime, guess: date) -> date:
        """The first date after as_of's whose bound reaches t (bounds only grow with the date)."""
        lo = self._next
        d = max(guess, lo)
        while d > lo and self._bound(name, j, k, d - timedelta(days=1)) >= t:
            d -= timedelta(days=1)
        while self._bound(name, j, k, d) < t:
            d += timedelta(days=1)
        return d

    def _spec_wakes(self, fr: FeatureFrame, name: str, j: int, s: AggSpec) -> dict[str, date]:
        a = self._a
        out: dict[str, date] = {}
        for spec, k in self._extra(name, j, s):
            now = s.since if k < 0 else s.where[k].value
            assert isinstance(now, datetime)
            shift = a.date - a.local_date(now)
            for cid, t in fr.agg(spec).items():
                w = self._first_date(name, j, k, t, a.local_date(t) + shift)
                if cid not in out or w < out[cid]:
                    out[cid] = w
        return out

    def specs(self, a: AsOf) -> list[AggSpec]:
        """The aggregates `compute` reads as of `a` besides the plan's: a sweep fetches them with the plan's
        (`Engine._plan(extra=)`), in the same read of each fact table."""
        specs: list[AggSpec] = []
        for name in self.registry.closure(self._time_features()):
            if name in STATIC or name.startswith(("attributes.", "invoice.")) or name not in self.registry:
                continue
            impl = self.registry.get(name)
            if impl.subject != "client":
                continue
            for j, s in enumerate(impl.aggs(a)):
                specs += [e for e, _ in self._extra(name, j, s)]
        return list(dict.fromkeys(specs))

    def _time_features(self) -> set[str]:
        out: set[str] = set()
        for r in self.rules.rules:
            if r.subject != "manager":
                out |= r.condition.features()
                if r.episode:
                    out.add(r.episode)
        return out


# ---------------------------------------------------------------- facts that only postpone

NONE, UP, DOWN, ANY = "none", "up", "down", "any"  # how a new fact can move a feature
FALLS, RISES = "falls", "rises"  # ... and a condition: with the fact, it holds only where it held without


def _spec_move(s: AggSpec, entity: str, field: str) -> str:
    """How a row's `field` coming to be at or before as_of moves the aggregate: a row that enters a count
    or a latest instant can only move it up; a row that changes what a filter says can do anything."""
    if s.entity != entity:
        return NONE
    where = {VIRTUAL_SOURCES.get((entity, p.field), p.field) for p in s.where}  # a virtual field: its source
    if field not in where | {s.field, s.time_field, EXISTS_FIELD.get(entity)}:
        return NONE
    if s.since is not None or field in where:
        return ANY
    return UP if s.fn == "count" or (s.fn == "max" and s.field == s.time_field) else ANY


class Quiet:
    """Which new facts can only postpone every client rule (a touch for a forgotten-client rule set), so
    that a client that matched nothing when last evaluated need not be evaluated for them.

    With such facts, every rule's condition holds at an instant only where it held without them (the
    activity clock restarts; a new task only adds a future task). The client matched nothing and its
    wake date is the first day any rule could start to hold without the facts, so with them no rule holds
    before that day either; the client is evaluated then, with every fact. A condition over a value that
    was empty is not monotone (a client never active counts from created_at, and a task made by retainer
    can reveal an older activity), so `watch` names the features whose empty values rule a client out.
    Anything this class does not know makes the facts unsafe."""

    def __init__(self, rules: RuleSet) -> None:
        self.registry = rules.registry
        self._a = parse_as_of(date(2000, 1, 1), rules.tz)  # aggregates' shapes only: any as_of will do
        self.watch: set[str] = set()
        self._moves: dict[tuple[str, str, str], str] = {}
        client_rules = [r for r in rules.rules if r.subject != "manager"]
        safe: set[tuple[str, str]] = set()
        if all(r.subject == "client" for r in client_rules):  # rows per invoice come and go with facts
            for entity, fields in TIME_FIELDS.items():
                for f in fields if entity != "clients" else ():
                    if all(self._cond(r.condition, entity, f) in (NONE, FALLS) for r in client_rules):
                        safe.add((entity, f))
        self.safe = frozenset(safe)

    def _cond(self, node: Node, e: str, f: str) -> str:
        if isinstance(node, AllOf | AnyOf):
            got = {self._cond(c, e, f) for c in node.children} - {NONE}
            return ANY if ANY in got or len(got) > 1 else got.pop() if got else NONE
        if isinstance(node, Not):
            return {FALLS: RISES, RISES: FALLS}.get(inner := self._cond(node.child, e, f), inner)
        if isinstance(node, OlderThan):
            for cond, dur in node.cases:
                if self._cond(cond, e, f) != NONE or (isinstance(dur, str) and self._move(dur, e, f) != NONE):
                    return ANY
            m = self._move(node.feature, e, f)
            if m == UP:  # a later instant is older later: held only where it was
                self.watch.add(node.feature)
                return FALLS
            return NONE if m == NONE else ANY
        if isinstance(node, Leaf):
            m = self._move(node.feature, e, f)
            if m == NONE:
                return NONE
            if (m == UP and node.op in ("gt", "gte")) or (m == DOWN and node.op in ("lt", "lte")):
                return RISES
            if (m == DOWN and node.op in ("gt", "gte")) or (m == UP and node.op == "eq" and node.value is False):
                self.watch.add(node.feature)
                return FALLS
            return ANY
        return ANY if any(self._move(n, e, f) != NONE for n in node.features()) else NONE

    def _move(self, name: str, e: str, f: str) -> str:
        key = (name, e, f)
        got = self._moves.get(key)
        if got is None:
            got = self._moves[key] = self._move_uncached(name, e, f)
        return got

    def _move_uncached(self, name: str, e: str, f: str) -> str:
        if name.startswith("attributes."):
            return NONE  # client rows do not change in a backtest
        if name not in self.registry:
            return ANY
        impl = self.registry.get(name)
        if impl.shape == "static":
            return NONE
        moves = {_spec_move(s, e, f) for s in impl.aggs(self._a)} | {self._move(d, e, f) for d in impl.deps}
        moves.discard(NONE)
        if not moves:
            return NONE if impl.shape else ANY  # a feature of unknown shape may read facts it does not declare
        if moves == {UP} and impl.shape in ("latest", "agg", "anchor"):
            if impl.shape == "anchor":  # empty, it falls back on created_at: the first activity may be older
                self.watch.update(impl.deps)
            return UP
        if moves == {UP} and impl.shape == "since":
            return DOWN
        return ANY


# ---------------------------------------------------------------- aggregates kept from step to step

class Kept:
    """A sweep's aggregates, kept from step to step and re-read only for the clients whose value can
    have moved (`Store.aggregate` semantics, for the clients asked).

    An aggregate changes for a client only when one of its rows of that entity comes into existence, or a
    date of one of them passes as_of (a task done, an invoice paid): a value in the step's `fact_steps`
    bucket. A filter with an instant that moves with as_of (`due_at >= the day's start`, a window's start)
    also changes it for the rows with a date between its instant on the previous read and now: the
    buckets that interval spans. Only when that interval reaches before the first step (a 365-day window
    early in the sweep) is the kept aggregate dropped and read again in full.

    The latest-activity seeks and the future-task counts are most of a partial plan's reads, and most
    clients evaluated on a step (woken by a threshold) have no new fact at all."""

    def __init__(self, base: Any, everyone: list[str], steps: Sequence[datetime], changes: Sequence[Changes]) -> None:
        self._base = base
        self._all = set(everyone)
        self._steps = list(steps)  # bucket j of `changes` holds the values in (steps[j - 1], steps[j]]
        self._changes = changes
        self._kept: dict[tuple[Any, ...], _Entry] = {}
        self.at: datetime | None = None

    def advance(self, k: int) -> None:
        """To step k: forget the values of the clients with a fact of that entity in its bucket."""
        stale: dict[str, set[str]] = {}
        for (entity, _field), clients in self._changes[k].items():
            stale.setdefault(entity, set()).update(clients)
        for entry in self._kept.values():
            entry.known -= stale.get(entry.entity, set())
        self.at = self._steps[k]

    def aggregate(
        self, specs: Sequence[AggSpec], as_of: datetime, client_ids: Sequence[str] | None
    ) -> list[Mapping[str, Any]]:
        assert as_of == self.at
        wanted = set(client_ids) if client_ids is not None else None
        entries = [self._entry(s, as_of) for s in specs]
        asked: dict[tuple[str, ...] | None, list[int]] = {}  # the clients to read -> the specs to read
        for i, entry in enumerate(entries):
            if entry is None:
                asked.setdefault(None if client_ids is None else tuple(client_ids), []).append(i)
                continue
            missing = (wanted if wanted is not None else self._all) - entry.known
            if wanted is None and len(missing) * 4 > len(self._all):
                asked.setdefault(None, []).append(i)  # most of the population: one scan beats a list of ids
            elif missing:
                asked.setdefault(tuple(sorted(missing)), []).append(i)
        out: list[Mapping[str, Any]] = [{} for _ in specs]
        for ids, idxs in asked.items():
            for i, r in zip(idxs, self._base.aggregate([specs[i] for i in idxs], as_of, ids), strict=True):
                out[i] = r
                entry = entries[i]
                if entry is None:
                    continue
                if ids is None:  # a full read: every client's value
                    entry.known = set(self._all)
                    entry.values = dict(r)
                    continue
                entry.known.update(ids)
                for c in ids:
                    if c in r:
                        entry.values[c] = r[c]
                    else:
                        entry.values.pop(c, None)
        whole = set(asked.get(None, ()))  # read in full just now: the store's own answer is in `out`
        for i, entry in enumerate(entries):
            if entry is not None and i not in whole:  # everyone's (abc_class, every step): a plain copy
                out[i] = _View(entry.values, wanted) if wanted is not None else dict(entry.values)
        return out

    def _entry(self, spec: AggSpec, as_of: datetime) -> _Entry | None:
        """The kept entry for `spec`, its moving instants brought to this read (None: not kept)."""
        moving: list[tuple[str, datetime]] = [(p.field, p.value) for p in spec.where if isinstance(p.value, datetime)]
        if spec.since is not None:
            if spec.time_field is None:
                return None
            moving.append((spec.time_field, spec.since))
        if any(f not in TIME_FIELDS.get(spec.entity, ()) for f, _ in moving):
            return None  # not a date fact_steps reports
        now = tuple(t for _, t in moving)
        key = (  # two windows of one shape (spend growth: 90 days and 180) are kept apart by their lengths
            spec.entity, spec.fn, spec.field, spec.time_field, spec.since is None,
            tuple((p.field, p.op, None if isinstance(p.value, datetime) else p.value) for p in spec.where),
            tuple(t - as_of for t in now),
        )  # fmt: skip
        entry = self._kept.get(key)
        if entry is None:
            entry = self._kept[key] = _Entry(spec.entity, now)
        elif entry.moving != now:
            moves = [(f, old, new) for (f, new), old in zip(moving, entry.moving, strict=True)]
            stale = self._between(spec.entity, moves)
            if stale is None:
                entry.known = set()
                entry.values = {}
            else:
                entry.known -= stale
            entry.moving = now
        return entry

    def _between(self, entity: str, moves: list[tuple[str, datetime, datetime]]) -> set[str] | None:
        """The clients with a value of `field` between the old and the new instant (None: unknown)."""
        out: set[str] = set()
        for f, old, new in moves:
            lo, hi = min(old, new), max(old, new)
            first, last = bisect_left(self._steps, lo), bisect_left(self._steps, hi)
            if first == 0 or last >= len(self._steps):
                return None  # before the sweep's first step or after its last: not in `fact_steps`
            for j in range(first, last + 1):
                out |= self._changes[j].get((entity, f), set())
        return out


class _Entry:
    __slots__ = ("entity", "known", "moving", "values")

    def __init__(self, entity: str, moving: tuple[datetime, ...]) -> None:
        self.entity = entity
        self.known: set[str] = set()  # the clients whose value is kept (absent from `values`: no rows)
        self.values: dict[str, Any] = {}
        self.moving = moving  # the filter's moving instants at the last read


class _View(Mapping[str, Any]):
    """A kept aggregate for the clients asked, without copying 2,500 values out of 100,000 on every step:
    `get` is the kept dict's own (a frame reads its columns with it, for the clients it asked about);
    iteration and membership are limited to the clients asked."""

    __slots__ = ("_clients", "_values", "get")

    def __init__(self, values: dict[str, Any], clients: set[str]) -> None:
        self._values = values
        self._clients = clients
        self.get = values.get  # type: ignore[method-assign]

    def __getitem__(self, client: str) -> Any:
        if client not in self._clients:
            raise KeyError(client)
        return self._values[client]

    def __contains__(self, client: object) -> bool:
        return client in self._clients and client in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients & self._values.keys())

    def __len__(self) -> int:
        return len(self._clients & self._values.keys())
