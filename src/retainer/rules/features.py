"""Features: per-client values that conditions, thresholds, episodes and templates refer to.

Each feature declares the store aggregates it needs (`AggSpec`s) and how to turn them into a
column. A plan first collects the specs of every feature its rules use and fetches them in one
`store.aggregate` call (one scan per fact table in SQL), then computes columns lazily.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import typing
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, get_args

from ..errors import did_you_mean
from ..model import ENTITIES, Client, Manager
from ..stores.base import EXISTS_FIELD, VIRTUAL_FIELDS, AggSpec, Pred, Store, virtual_value
from ..timeutil import AsOf, Duration, DurationError, parse_duration
from .conditions import since_issue_source
from .schema import ActivitySpec, FeatureDef

ZERO = Decimal(0)
_WINDOWED = re.compile(r"^(revenue|orders|outbound|inbound|touches|profit|spend_growth)_(.+)$")


@dataclass(frozen=True)
class FeatureImpl:
    name: str
    type: str  # int | number | str | bool | datetime | set | any
    doc: str
    aggs: Callable[[AsOf], list[AggSpec]] = lambda _a: []
    deps: tuple[str, ...] = ()
    compute: Callable[[FeatureFrame], list[Any]] = lambda _f: []
    whole_population: bool = False  # needs every client (ABC ranking), even for a partial plan
    choices: tuple[str, ...] = ()  # the only values it takes: a condition comparing with another is a typo
    subject: str = "client"  # client, invoice (rows of a SubFrame over invoices) or manager
    ledger: bool = False  # read from the ledger: it changes when retainer commits, not only with facts or time
    #: how the value follows its inputs, for the sweep (`sweep.Quiet`): "static" (the client's or its
    #: manager's row), "latest" (the latest of its aggregates), "agg" (one aggregate, mapped by a
    #: non-decreasing function), "anchor" (its dependency, or the client's created_at when that is
    #: empty), "since" (days since its dependency); "" is anything else
    shape: Literal["", "static", "latest", "agg", "anchor", "since"] = ""


def _days(as_of: AsOf, col: list[datetime | None]) -> list[int | None]:
    d0 = as_of.date
    tz = as_of.tz
    return [None if v is None else (d0 - v.astimezone(tz).date()).days for v in col]


class FeatureFrame:
    """Feature columns for the clients of one plan, aligned with `ids`, computed on first use."""

    def __init__(
        self,
        registry: FeatureRegistry,
        store: Store,
        as_of: AsOf,
        clients: list[Client],
        managers: dict[str, Manager],
        client_ids: Sequence[str] | None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.as_of = as_of
        self.clients = clients
        self.ids = [c.id for c in clients]
        self.managers = managers
        self._partial = client_ids
        self._cols: dict[str, list[Any]] = {}
        self._aggs: dict[AggSpec, dict[str, Any]] = {}
        #: results conditions compute once per plan and read several times (thresholds per client)
        self.memo: dict[Any, Any] = {}
        #: problems in the data met while computing (an outcome that is not one of the options)
        self.warnings: list[str] = []

    def prefetch(self, names: set[str], extra: Sequence[AggSpec] = ()) -> None:
        """Fetch every aggregate these features (and `extra` ones, e.g. the policies') need in one store
        call: one scan per fact table."""
        specs: list[AggSpec] = [s for s in dict.fromkeys(extra) if s not in self._aggs]
        for n in self.registry.closure(names):
            impl = self.registry.get(n)
            if impl.whole_population and self._partial is not None:
                continue
            specs.extend(s for s in impl.aggs(self.as_of) if s not in self._aggs and s not in specs)
        if specs:
            for s, r in zip(specs, self.store.aggregate(specs, self.as_of.instant, self._partial), strict=True):
                self._aggs[s] = r

    def agg(self, spec: AggSpec, *, everyone: bool = False) -> dict[str, Any]:
        if everyone and self._partial is not None:
            return self.store.aggregate([spec], self.as_of.instant, None)[0]
        if spec not in self._aggs:
            self._aggs[spec] = self.store.aggregate([spec], self.as_of.instant, self._partial)[0]
        return self._aggs[spec]

    def agg_column(self, spec: AggSpec, default: Any = None) -> list[Any]:
        r = self.agg(spec)
        return [r.get(i, default) for i in self.ids]

    def column(self, name: str) -> list[Any]:
        col = self._cols.get(name)
        if col is None:
            col = self._cols[name] = self.registry.get(name).compute(self)
        return col

    def value(self, name: str, i: int) -> Any:
        return self.column(name)[i]


class SubFrame:
    """Rows of another subject (one per open invoice, or per manager) for rules about those: the
    row's own columns (`invoice.amount`, `overdue_tasks[1d]`) plus, for invoices, every client feature
    read through the row's client. Conditions evaluate over it exactly as over the client frame."""

    def __init__(
        self,
        parent: FeatureFrame,
        subject: str,
        ids: list[str],
        row_client: list[int] | None,
        own: dict[str, list[Any]],
        lazy: Callable[[SubFrame, str], list[Any] | None] | None = None,
    ) -> None:
        # The client frame memoises its sub-frames, so a strong reference back would form a cycle, and a
        # finished plan's 100k clients and columns would wait for a full garbage collection (240 MB at
        # 100k with the example rule set). Whoever holds a sub-frame got it from its frame and holds that.
        self._parent = weakref.ref(parent)
        self.subject = subject
        self.ids = ids
        self.as_of = parent.as_of
        self.row_client = row_client
        self.clients: list[Client | None] = (
            [parent.clients[j] for j in row_client] if row_client is not None else [None] * len(ids)
        )
        self._own = own
        self._lazy = lazy
        self.memo: dict[Any, Any] = {}

    @property
    def parent(self) -> FeatureFrame:
        parent = self._parent()
        if parent is None:
            raise RuntimeError(f"the client frame of this {self.subject} frame is gone: keep the frame while using it")
        return parent

    def column(self, name: str) -> list[Any]:
        col = self._own.get(name)
        if col is None and self._lazy is not None:
            col = self._lazy(self, name)
            if col is not None:
                self._own[name] = col
        if col is not None:
            return col
        if self.row_client is None:
            raise KeyError(f"{name} is not a feature of a {self.subject}")
        pc = self.parent.column(name)
        col = self._own[name] = [pc[j] for j in self.row_client]
        return col

    def value(self, name: str, i: int) -> Any:
        return self.column(name)[i]


def invoice_frame(f: FeatureFrame) -> SubFrame:
    """One row per invoice with money outstanding at as_of, for clients in the plan."""
    got = f.memo.get("frame:invoice")
    if isinstance(got, SubFrame):
        return got
    index = {cid: j for j, cid in enumerate(f.ids)}
    rows = [
        r
        for r in f.store.facts("invoices", f.as_of.instant, (Pred("outstanding", "gt", ZERO),), f._partial)
        if r.client_id in index  # type: ignore[attr-defined]
    ]
    a = f.as_of
    paid = [virtual_value("invoices", "paid_total", r, a.instant) for r in rows]
    amount = [r.amount for r in rows]  # type: ignore[attr-defined]
    issued = [r.issued_at for r in rows]  # type: ignore[attr-defined]
    due = [r.due_at for r in rows]  # type: ignore[attr-defined]
    sub = SubFrame(
        f,
        "invoice",
        [r.id for r in rows],
        [index[r.client_id] for r in rows],  # type: ignore[attr-defined]
        {
            "invoice.id": [r.id for r in rows],
            "invoice.amount": amount,
            "invoice.paid_total": paid,
            "invoice.outstanding": [max(x - p, ZERO) for x, p in zip(amount, paid, strict=True)],
            "invoice.issued_at": issued,
            "invoice.due_at": due,
            "invoice.days_since_issue": _days(a, issued),
            "invoice.days_overdue": _days(a, due),
        },
    )

    def lazy(sub: SubFrame, name: str) -> list[Any] | None:
        if (source := since_issue_source(name)) is not None:  # `[key]`: what an unpaid rule's `activity:` counts
            return [v is not None and v > t for v, t in zip(sub.column(source), issued, strict=True)]
        return None

    sub._lazy = lazy
    f.memo["frame:invoice"] = sub
    return sub


#: a client's features that change when it is reassigned (a backtest carries reassignments out)
MANAGER_FEATURES = frozenset({"manager_id", "manager_active", "manager_team"})


def manager_frame(f: FeatureFrame) -> SubFrame:
    """One row per active manager (manager-level rules such as overdue_tasks)."""
    got = f.memo.get("frame:manager")
    if isinstance(got, SubFrame):
        return got
    ms = sorted((m for m in f.managers.values() if m.active), key=lambda m: m.id)
    a = f.as_of

    def lazy(sub: SubFrame, name: str) -> list[Any] | None:
        f = sub.parent
        if name.startswith("period["):
            from ..policies import day_period

            return [day_period(a.date, name[len("period[") : -1])] * len(ms)
        if not name.startswith("overdue_tasks["):
            return None
        after = parse_duration(name[len("overdue_tasks[") : -1])
        bound = a.older_bound(after)  # overdue by `after`: due before this instant
        client_manager = {c.id: c.manager_id for c in f.clients}
        # a client given to another manager whose move the data does not show yet is that manager's
        # (`ledger.unapplied_moves`), in runs as in backtests, which carry every move out at once
        from ..ledger import store_moves_in_flight

        for cid, (_was, to) in store_moves_in_flight(f.store, a.instant).items():
            if cid in client_manager:
                client_manager[cid] = to
        counts: dict[str, int] = {}
        for t in f.store.facts("tasks", a.instant, (Pred("is_open", "eq", True), Pred("due_at", "lt", bound))):
            who = t.manager_id or client_manager.get(t.client_id)  # type: ignore[attr-defined]
            if who is not None:
                counts[who] = counts.get(who, 0) + 1
        return [counts.get(m.id, 0) for m in ms]

    sub = SubFrame(
        f,
        "manager",
        [m.id for m in ms],
        None,
        {"manager_id": [m.id for m in ms], "manager_team": [m.team for m in ms],
         "manager_active": [True] * len(ms)},
        lazy,
    )
    f.memo["frame:manager"] = sub
    return sub


# ---------------------------------------------------------------- features read from the ledger


_LIVE = ("pending", "done", "failed")  # a dead action never reached the CRM


def _latest_live(f: FeatureFrame, keep: Callable[[Any], bool] | None = None, **filters: Any) -> dict[str, Any]:
    """Per client, the latest committed action (of these filters, and `keep`) planned up to as_of that is
    not dead."""
    latest: dict[str, Any] = {}
    for e in f.store.ledger(client_ids=f._partial, status=list(_LIVE), **filters):  # in commit order
        cid = e.client_id
        if keep is not None and not keep(e):
            continue
        if cid is not None and e.as_of <= f.as_of.instant and (cid not in latest or e.as_of >= latest[cid].as_of):
            latest[cid] = e
    return latest


def _moved(e: Any) -> bool:
    """A reassignment cancelled before it went out (its manager left, the host undid it) moved nobody."""
    return e.cancelled is None


def released_at_feature() -> FeatureImpl:
    def compute(f: FeatureFrame) -> list[Any]:
        latest = _latest_live(f, _moved, types=["reassign"])
        return [e.as_of if (e := latest.get(cid)) is not None else None for cid in f.ids]

    return FeatureImpl("released_at", "datetime", "when retainer last reassigned the client (from the ledger)",
                       compute=compute, ledger=True)


def since_release_feature(name: str, anchor: str) -> FeatureImpl:
    """The later of the last activity and the release: the new manager's clock starts at the release."""

    def compute(f: FeatureFrame) -> list[Any]:
        return [None if r is None else max(r, v) if v is not None else r
                for r, v in zip(f.column("released_at"), f.column(anchor), strict=True)]

    return FeatureImpl(name, "datetime", "last activity, or the release if later", deps=("released_at", anchor),
                       compute=compute)


def _awaits_answer(e: Any) -> bool:
    """An action somebody is expected to act on. Not an escalation (the supervisor has it already), an
    offer that waits for the client's own call (`deliver: next_inbound`), or a tag or process start:
    watching those escalated a win-back whose reason was recorded, or the escalation itself."""
    if e.type in ("escalate", "tag", "untag", "start_process"):
        return False
    return not (e.type == "propose_offer" and e.payload_fields.get("deliver") == "next_inbound")


def unresolved_feature(name: str, rule: str) -> FeatureImpl:
    """When the latest action of `rule` for the client that awaits an answer was planned, while it is
    unresolved: no outcome recorded and no activity with the client since the day it was planned. The day,
    not the instant: a date-only as_of is that day's end, so a run at 02:30 stamps its task 23:59:59 and a
    call at 10:00 that morning, after the task reached the CRM, escalated it ten days later for nothing."""

    def compute(f: FeatureFrame) -> list[Any]:
        latest = _latest_live(f, _awaits_answer, rule=rule)
        a = f.as_of
        out: list[Any] = []
        for cid, last in zip(f.ids, f.column("last_activity_at"), strict=True):
            e = latest.get(cid)
            answered = last is not None and e is not None and last >= a.day_start(a.local_date(e.as_of))
            out.append(None if e is None or e.outcome or answered else e.as_of)
        return out

    return FeatureImpl(name, "datetime", f"when {rule}'s latest action was planned, if still unresolved",
                       deps=("last_activity_at",), compute=compute, ledger=True)


def norm_reason(v: Any) -> str:
    """One spelling per recorded reason: "Price ", "price" and "PRICE" are the same answer, and so are
    "survey needed", "Survey  Needed" and "survey-needed" (free text from a CRM's form)."""
    return _SEPARATORS.sub("_", str(v).strip().lower())


_SEPARATORS = re.compile(r"[\s\-]+")


def is_option(v: Any, options: Sequence[str]) -> bool:
    """Whether a recorded answer is one of a task's options, however the host spelt it: what a process
    waiting for the answer (a win-back reading churn_reason) can act on."""
    return norm_reason(v) in {norm_reason(o) for o in options}


def outcome_feature(
    name: str, rule: str, episode: str, kind: str, field_: str, options: Sequence[str] = ()
) -> FeatureImpl:
    """The `field_` of the outcome the host recorded for this rule's `kind` action in the current episode
    (a win-back reason task's churn reason): found by the action's key, so an old episode never counts.
    The rule's committed actions of that type are read (a few per client that ever churned), not looked up
    by an id made for every client: with none committed, nothing per client is made at all."""
    from ..keys import action_key, episode_text, first_key

    def compute(f: FeatureFrame) -> list[Any]:
        a = f.as_of
        # by the key of the episode's first decision: the answer may be on a later one (`...#2`, the task
        # decided again for the supervisor of a manager who left), and the latest answer counts
        found: dict[str, Any] = {}
        for e in f.store.ledger(rule=rule, types=[kind], client_ids=f._partial):
            k = first_key(e.key)
            if e.outcome or k not in found:
                found[k] = e
        out: list[Any] = []
        for cid, ep in zip(f.ids, f.column(episode), strict=True):
            e = found.get(action_key(rule, cid, episode_text(ep, a), kind)) if found and ep is not None else None
            v = e.outcome.get(field_) if e is not None and e.outcome else None
            text = None if v is None else norm_reason(v)
            if text is not None and options and not is_option(text, options):
                f.warnings.append(f"rule {rule}, client {cid}: {field_} {v!r} recorded on action {e.id} is not one "  # type: ignore[union-attr]
                                  f"of the options ({', '.join(options)}); the process waits")
            out.append(text)
        return out

    return FeatureImpl(name, "str", f"the {field_} recorded for {rule}'s first step", deps=(episode,),
                       compute=compute, ledger=True)


def churn_silence_feature(name: str, lookback: Duration, factor: Decimal, floor: Duration) -> FeatureImpl:
    """A per-client silence threshold: `factor` times the median gap between its invoices in lookback."""

    def aggs(a: AsOf) -> list[AggSpec]:
        return [AggSpec("invoices", "list", "issued_at", (), "issued_at", a.window_start(lookback))]

    def compute(f: FeatureFrame) -> list[Any]:
        tz = f.as_of.tz
        out: list[Any] = []
        for times in f.agg_column(aggs(f.as_of)[0]):
            if not times or len(times) < 2:
                out.append(None)
                continue
            days = [t.astimezone(tz).date() for t in times]
            gaps = sorted((b - a).days for a, b in itertools.pairwise(days))
            mid = len(gaps) // 2
            median = Decimal(gaps[mid]) if len(gaps) % 2 else Decimal(gaps[mid - 1] + gaps[mid]) / 2
            n = int((median * factor).to_integral_value(rounding="ROUND_CEILING"))
            # the floor applies where it ends later than the client's own silence, counted from its last
            # invoice: a month from Jan 31 is 28 days, so an average month put a 1mo floor over a 29-day rhythm
            own_longer = (n >= floor.approx_days() if floor.is_hours
                          else days[-1] + timedelta(days=n) >= floor.add_to_date(days[-1]))  # fmt: skip
            out.append(f"{n}d" if own_longer else str(floor))
        return out

    return FeatureImpl(name, "any", f"{factor} x the median gap between invoices within {lookback}", aggs=aggs,
                       compute=compute)


def invoice_features() -> list[FeatureImpl]:
    spec = [
        ("invoice.id", "str", "the invoice's id"),
        ("invoice.amount", "number", "the invoice's amount"),
        ("invoice.paid_total", "number", "paid on or before as_of"),
        ("invoice.outstanding", "number", "amount still unpaid at as_of"),
        ("invoice.issued_at", "datetime", "when it was issued"),
        ("invoice.due_at", "datetime", "when it is due"),
        ("invoice.days_since_issue", "int", "calendar days since it was issued"),
        ("invoice.days_overdue", "int", "calendar days past its due date (negative before it)"),
        ("invoice.activity_since_issue", "bool", "the client had any activity after it was issued"),
    ]
    return [FeatureImpl(n, t, d, subject="invoice") for n, t, d in spec]


# ---------------------------------------------------------------- built-in features


def _client_field(name: str, typ: str, doc: str) -> FeatureImpl:
    choices = get_args(Client.model_fields[name].annotation) if name in Client.model_fields else ()
    return FeatureImpl(name, typ, doc, compute=lambda f: [getattr(c, name) for c in f.clients],
                       choices=tuple(c for c in choices if isinstance(c, str)), shape="static")


def _activity_specs(spec: ActivitySpec | None) -> Callable[[AsOf], list[AggSpec]]:
    """Every source of activity as a max() aggregate. Engine tasks count when done, not when made."""
    spec = spec or ActivitySpec()

    def build(_a: AsOf) -> list[AggSpec]:
        out: list[AggSpec] = []
        if "touches" in spec.sources:
            where: list[Pred] = []
            if spec.kinds is not None:
                where.append(Pred("kind", "in", frozenset(spec.kinds)))
            if spec.directions is not None:
                where.append(Pred("direction", "in", frozenset(spec.directions)))
            out.append(AggSpec("touches", "max", "at", tuple(where), "at"))
        if "tasks" in spec.sources:
            out.append(AggSpec("tasks", "max", "created_at", (Pred("source", "ne", "retainer"),), "created_at"))
            out.append(AggSpec("tasks", "max", "done_at", (Pred("status", "ne", "cancelled"),), "done_at"))
        if "deals" in spec.sources:
            out.append(AggSpec("deals", "max", "created_at", (), "created_at"))
            out.append(AggSpec("deals", "max", "closed_at", (), "closed_at"))
        if "invoices" in spec.sources:
            out.append(AggSpec("invoices", "max", "issued_at", (), "issued_at"))
            out.append(AggSpec("invoices", "max", "paid_at", (), "paid_at"))
        return out

    return build


_NEVER = datetime.min.replace(tzinfo=UTC)  # no activity from a source: below every instant, so max() skips it


def _activity_feature(name: str, spec: ActivitySpec | None) -> FeatureImpl:
    specs = _activity_specs(spec)

    def compute(f: FeatureFrame) -> list[Any]:
        cols = [list(map(f.agg(s).get, f.ids, itertools.repeat(_NEVER))) for s in specs(f.as_of)]
        if not cols:
            return [None] * len(f.ids)
        latest = cols[0] if len(cols) == 1 else map(max, *cols)  # the latest of every source per client, in C
        return [None if v is _NEVER else v for v in latest]

    return FeatureImpl(name, "datetime", "latest activity at or before as_of", aggs=specs, compute=compute,
                       shape="latest")


def _anchor_feature(name: str, activity: str) -> FeatureImpl:
    def compute(f: FeatureFrame) -> list[Any]:
        return [a if a is not None else c.created_at for a, c in zip(f.column(activity), f.clients, strict=True)]

    return FeatureImpl(
        name, "datetime", "last activity, or created_at for a client never touched", deps=(activity,), compute=compute,
        shape="anchor",
    )


def _window(kind: str, text: str) -> FeatureImpl:
    try:
        w = parse_duration(text)
    except DurationError as exc:
        raise KeyError(str(exc)) from None
    name = f"{kind}_{text}"

    def since(a: AsOf) -> datetime:
        return a.window_start(w)

    if kind in ("revenue", "orders"):
        fn = "sum" if kind == "revenue" else "count"

        def aggs(a: AsOf) -> list[AggSpec]:
            return [AggSpec("invoices", fn, "amount" if fn == "sum" else None, (), "issued_at", since(a))]

        default = ZERO if kind == "revenue" else 0
        return FeatureImpl(
            name,
            "number" if kind == "revenue" else "int",
            f"{'sum of invoice amounts' if kind == 'revenue' else 'invoices'} issued within {w}",
            aggs=aggs,
            compute=lambda f: f.agg_column(aggs(f.as_of)[0], default),
        )
    if kind in ("outbound", "inbound", "touches"):
        where = () if kind == "touches" else (Pred("direction", "eq", kind),)

        def taggs(a: AsOf) -> list[AggSpec]:
            return [AggSpec("touches", "count", None, where, "at", since(a))]

        return FeatureImpl(
            name, "int", f"{'touches' if kind == 'touches' else kind + ' touches'} within {w}", aggs=taggs,
            compute=lambda f: f.agg_column(taggs(f.as_of)[0], 0),
        )
    if kind == "profit":
        rev = f"revenue_{text}"

        def profit(f: FeatureFrame) -> list[Any]:
            """The cost of the window's days the client existed: a client created 20 days ago, in a 180-day
            window, cost 20 days, not 180 (every new client read as loss-making and got no up-sell)."""
            a = f.as_of
            start = w.cutoff(a.date)
            out: list[Any] = []
            for r, c in zip(f.column(rev), f.clients, strict=True):
                cost = c.cost_to_serve
                if not cost:
                    out.append(r)
                    continue
                since = max(start, c.created_at.astimezone(a.tz).date()) if c.created_at is not None else start
                out.append(r - cost * Decimal(max((a.date - since).days, 0)) / 30)
            return out

        return FeatureImpl(
            name, "number", f"revenue within {w} minus cost_to_serve for the same days", deps=(rev,), compute=profit
        )
    # spend_growth: the last window versus the one before it, as a ratio (0.2 = +20 %)
    double = Duration(months=2 * w.months, days=2 * w.days, hours=2 * w.hours, text=f"2x{w}")

    def gaggs(a: AsOf) -> list[AggSpec]:
        return [
            AggSpec("invoices", "sum", "amount", (), "issued_at", since(a)),
            AggSpec("invoices", "sum", "amount", (), "issued_at", a.window_start(double)),
        ]

    def growth(f: FeatureFrame) -> list[Any]:
        last_s, both_s = gaggs(f.as_of)
        last, both = f.agg(last_s), f.agg(both_s)
        out: list[Any] = []
        for cid in f.ids:
            cur = last.get(cid, ZERO)
            prev = both.get(cid, ZERO) - cur
            out.append(None if prev == 0 else (cur - prev) / prev)
        return out

    return FeatureImpl(
        name, "number", f"spend over the last {w} versus the {w} before, as a ratio", aggs=gaggs, compute=growth
    )


def _abc(window: Duration, a_share: Decimal, b_share: Decimal) -> FeatureImpl:
    def aggs(a: AsOf) -> list[AggSpec]:
        return [AggSpec("invoices", "sum", "amount", (), "issued_at", a.window_start(window))]

    def compute(f: FeatureFrame) -> list[Any]:
        given = [c.abc_class for c in f.clients]
        if all(g is not None for g in given):
            return given
        revenue = f.agg(aggs(f.as_of)[0], everyone=True)
        ranked = sorted(((v, cid) for cid, v in revenue.items() if v > 0), key=lambda t: (-t[0], t[1]))
        total = sum((v for v, _ in ranked), ZERO)
        cls: dict[str, str] = {}
        cum = ZERO
        for v, cid in ranked:
            cls[cid] = "A" if cum < total * a_share else "B" if cum < total * (a_share + b_share) else "C"
            cum += v
        return [g if g is not None else cls.get(cid) for g, cid in zip(given, f.ids, strict=True)]

    return FeatureImpl(
        "abc_class",
        "str",
        f"A/B/C by revenue over {window} unless the data sets it",
        aggs=aggs,
        compute=compute,
        whole_population=True,
    )


def _agg(
    name: str, typ: str, doc: str, spec: Callable[[AsOf], AggSpec], default: Any = None,
    then: Callable[[Any], Any] | None = None,
) -> FeatureImpl:
    """A feature that is one store aggregate per client, optionally mapped (e.g. count > 0). The map must
    not decrease: the sweep reasons that a new row can only move a count or a latest instant up."""

    def compute(f: FeatureFrame) -> list[Any]:
        col = f.agg_column(spec(f.as_of), default)
        return col if then is None else [then(v) for v in col]

    return FeatureImpl(name, typ, doc, aggs=lambda a: [spec(a)], compute=compute, shape="agg")


def _since(name: str, doc: str, instant: str) -> FeatureImpl:
    """Calendar days since another feature's instant."""
    return FeatureImpl(name, "int", doc, deps=(instant,), compute=lambda f: _days(f.as_of, f.column(instant)),
                       shape="since")


def _builtins(abc: FeatureImpl) -> dict[str, FeatureImpl]:
    def manager_attr(attr: str) -> Callable[[FeatureFrame], list[Any]]:
        def compute(f: FeatureFrame) -> list[Any]:
            return [getattr(m, attr) if (m := f.managers.get(c.manager_id)) else None for c in f.clients]

        return compute

    def fut(a: AsOf) -> AggSpec:
        return AggSpec(
            "tasks", "count", None, (Pred("is_open", "eq", True), Pred("due_at", "gte", a.day_start(a.date)))
        )

    def open_tasks(a: AsOf) -> AggSpec:
        return AggSpec("tasks", "count", None, (Pred("is_open", "eq", True),))

    def overdue_where(a: AsOf) -> tuple[Pred, ...]:
        return (Pred("outstanding", "gt", ZERO), Pred("due_at", "lt", a.day_start(a.date)))

    def overdue_sum(a: AsOf) -> AggSpec:
        return AggSpec("invoices", "sum", "outstanding", overdue_where(a))

    def overdue_min(a: AsOf) -> AggSpec:
        return AggSpec("invoices", "min", "due_at", overdue_where(a))

    def cur_contract(a: AsOf) -> AggSpec:
        """The contract running at as_of that started last (a renewal signed early runs beside the old one):
        its start and its own end, as the max of `start|end` texts."""
        return AggSpec("contracts", "max", "span", (Pred("ends_at", "gt", a.instant),), "starts_at")

    last_inv = AggSpec("invoices", "max", "issued_at", (), "issued_at")
    open_deals = AggSpec("deals", "count", None, (Pred("is_open", "eq", True),))
    won = AggSpec("deals", "max", "closed_at", (Pred("is_won", "eq", True),), "closed_at")
    offer_end = AggSpec("offers", "max", "ends_at", (), "ends_at")

    def contract_progress(f: FeatureFrame) -> list[Any]:
        a = f.as_of
        out: list[Any] = []
        for text in f.agg_column(cur_contract(a)):
            s, e = contract_span(text)
            if s is None or e is None or e <= s:
                out.append(None)
            else:
                out.append(round(Decimal((a.instant - s).total_seconds()) / Decimal((e - s).total_seconds()), 4))
        return out

    impls = [
        _client_field("status", "str", "active, prospect or archived"),
        _client_field("tags", "set", "the client's tags"),
        _client_field("manager_id", "str", "the responsible manager"),
        _client_field("contact_policy", "str", "ok, no_marketing or do_not_contact"),
        _client_field("name", "str", "the client's name"),
        _client_field("created_at", "datetime", "when the client was created"),
        _client_field("cost_to_serve", "number", "cost to serve per 30 days"),
        FeatureImpl("client_id", "str", "the client's id", compute=lambda f: list(f.ids), shape="static"),
        FeatureImpl("manager_active", "bool", "the responsible manager is active", compute=manager_attr("active"),
                    shape="static"),
        FeatureImpl("manager_team", "str", "the responsible manager's team", compute=manager_attr("team"),
                    shape="static"),
        _activity_feature("last_activity_at", None),
        _anchor_feature("activity_anchor_at", "last_activity_at"),
        _since("days_since_activity", "calendar days since the last activity (or since created_at if never touched)",
               "activity_anchor_at"),
        _agg("has_future_task", "bool", "an open task due on or after as_of's date", fut, 0, lambda n: n > 0),
        _agg("open_tasks", "int", "tasks open at as_of", open_tasks, 0),
        _agg("last_invoice_at", "datetime", "when the latest invoice was issued", lambda a: last_inv),
        _since("days_since_last_invoice", "calendar days since the latest invoice", "last_invoice_at"),
        _agg("overdue_amount", "number", "unpaid amount of invoices past their due date", overdue_sum, ZERO),
        _since("max_days_overdue", "days past due of the oldest unpaid overdue invoice", "oldest_overdue_due_at"),
        _agg("oldest_overdue_due_at", "datetime", "due date of the oldest unpaid overdue invoice", overdue_min),
        _agg("open_deals", "int", "deals open at as_of", lambda a: open_deals, 0),
        _agg("last_won_deal_at", "datetime", "when the latest won deal closed", lambda a: won),
        _since("days_since_won_deal", "calendar days since the latest won deal closed", "last_won_deal_at"),
        _agg("last_offer_end_at", "datetime", "when the latest offer that has ended ended", lambda a: offer_end),
        _since("days_since_offer_end", "days since the latest offer ended", "last_offer_end_at"),
        FeatureImpl(
            "contract_progress",
            "number",
            "elapsed share (0..1) of the current contract",
            aggs=lambda a: [cur_contract(a)],
            compute=contract_progress,
        ),
        FeatureImpl(
            "contract_started_at",
            "datetime",
            "when the current contract started (an episode per contract)",
            aggs=lambda a: [cur_contract(a)],
            compute=lambda f: [contract_span(t)[0] for t in f.agg_column(cur_contract(f.as_of))],
        ),
        abc,
        released_at_feature(),
        *invoice_features(),
        FeatureImpl("overdue_tasks", "int", "a manager's open tasks overdue (overdue_tasks rules)", subject="manager"),
    ]
    return {i.name: i for i in impls}


def contract_span(text: str | None) -> tuple[datetime | None, datetime | None]:
    """The start and end of the contract in a `contracts.span` value (`start|end`, UTC text)."""
    if not text:
        return None, None
    s, _, e = text.partition("|")
    return (datetime.fromisoformat(s) if s else None), (datetime.fromisoformat(e) if e else None)


# ---------------------------------------------------------------- named features (the file's `features:`)


def _field_type(entity: str, fld: str) -> str:
    if fld in VIRTUAL_FIELDS.get(entity, {}):
        return "bool" if fld.startswith("is_") else "str" if fld in ("medium", "span") else "number"
    found = set()
    todo = [ENTITIES[entity].model_fields[fld].annotation]
    while todo:
        t = todo.pop()
        todo.extend(typing.get_args(t))
        if isinstance(t, type):
            found.add(t)
    for typ, name in ((datetime, "datetime"), (Decimal, "number"), (bool, "bool"), (int, "int")):
        if typ in found:
            return name
    return "str"


def _fields(entity: str) -> list[str]:
    return [*ENTITIES[entity].model_fields, *VIRTUAL_FIELDS.get(entity, {})]


class FeatureDefError(ValueError):
    def __init__(self, message: str, *key: str) -> None:
        super().__init__(message)
        self.key = key


def _choices(entity: str, fld: str) -> tuple[str, ...]:
    """The only values a text field takes (`touches.kind`: call, email, ...), or () for free text."""
    info = ENTITIES[entity].model_fields.get(fld)
    if info is None:
        return ()
    args = [info.annotation]
    out: list[str] = []
    while args:
        t = args.pop()
        if typing.get_origin(t) is Literal:
            out += [c for c in get_args(t) if isinstance(c, str)]
        elif typing.get_origin(t) is not None:  # Optional, Union, Annotated: look inside
            args += [a for a in get_args(t) if a is not type(None)]
    return tuple(sorted(out))


#: a date on a time field in a feature's `where`: a whole day, which `ne`, `in` and `not_in` cannot name there
_WHOLE_DAYS = (
    "{entity}.{key} is a date and time: a date stands for its whole day, and `{op}` of whole days cannot be "
    "counted in `where`; name the day's instants (`2026-01-31T10:00:00`), or bound it with lt/lte/gt/gte, "
    "or write the condition in the rule's `when`"
)


def named_feature(name: str, d: FeatureDef, tz: Any) -> FeatureImpl:
    """Compile one `features:` entry into an aggregate, validating entity, fields and values."""
    from .conditions import ConditionError, Day, _scalar

    entity, _, fld = d.target.partition(".")
    if entity not in EXISTS_FIELD:
        raise FeatureDefError(f"unknown entity {entity!r}; valid: {', '.join(EXISTS_FIELD)}", d.fn)
    if d.fn == "count":
        if fld:
            raise FeatureDefError("count takes an entity name (count: touches), not a field", d.fn)
        typ = "int"
    else:
        if not fld:
            raise FeatureDefError(f"{d.fn} takes entity.field, e.g. invoices.amount", d.fn)
        if fld not in _fields(entity):
            raise FeatureDefError(f"unknown field {entity}.{fld}; valid: {', '.join(_fields(entity))}", d.fn)
        typ = _field_type(entity, fld)
        if d.fn == "sum" and typ not in ("number", "int"):
            raise FeatureDefError(f"cannot sum {entity}.{fld} ({typ})", d.fn)
    time_field = d.by or EXISTS_FIELD[entity]
    if time_field not in _fields(entity) or _field_type(entity, time_field) != "datetime":
        raise FeatureDefError(f"by: {time_field!r} is not a date/time field of {entity}", "by")
    preds: list[Pred] = []
    for key, cond in d.where.items():
        if key not in _fields(entity):
            raise FeatureDefError(
                f"unknown field {entity}.{key} in where; valid: {', '.join(_fields(entity))}", "where", key
            )
        ftype = _field_type(entity, key)
        ops = cond if isinstance(cond, dict) else {"eq": cond}
        choices = _choices(entity, key)
        for op, v in ops.items():
            for x in (v if isinstance(v, list) else [v]) if choices and op in ("eq", "ne", "in", "not_in") else ():
                if isinstance(x, str) and x not in choices:  # a typo would count nothing, silently
                    raise FeatureDefError(
                        f"{entity}.{key} is one of {', '.join(choices)}, not {x!r}{did_you_mean(x, choices)}",
                        "where", key, *((op,) if isinstance(cond, dict) else ()),
                    )  # fmt: skip
            try:
                if op == "exists":
                    preds.append(Pred(key, "notnull" if v else "null"))
                elif op in ("in", "not_in"):
                    if not isinstance(v, list):
                        raise FeatureDefError(f"{op} takes a list", "where", key, op)
                    values = frozenset(_scalar(x, ftype, key, tz, ()) for x in v)
                    if any(type(x) is Day for x in values):
                        raise FeatureDefError(_WHOLE_DAYS.format(entity=entity, key=key, op=op), "where", key, op)
                    preds.append(Pred(key, op, values))
                elif op in ("eq", "ne", "gt", "gte", "lt", "lte"):
                    val = _scalar(v, ftype, key, tz, ())
                    if type(val) is Day:  # the whole day, as in a rule's `when`: bounds at its first or last instant
                        if op == "ne":
                            raise FeatureDefError(_WHOLE_DAYS.format(entity=entity, key=key, op=op), "where", key, op)
                        preds += [Pred(key, o, val.bound(o)) for o in (("gte", "lte") if op == "eq" else (op,))]
                        continue
                    preds.append(Pred(key, op, Decimal(val) if ftype == "number" else val))
                else:
                    raise FeatureDefError(
                        f"unknown operator {op!r} in where; valid: eq ne gt gte lt lte in not_in exists",
                        "where",
                        key,
                        op,
                    )
            except ConditionError as exc:
                raise FeatureDefError(str(exc), "where", key) from None
    where = tuple(preds)
    within = d.within

    def aggs(a: AsOf) -> list[AggSpec]:
        since = a.window_start(within) if within is not None else None
        return [AggSpec(entity, d.fn, fld or None, where, time_field, since)]  # type: ignore[arg-type]

    default: Any = 0 if d.fn == "count" else ZERO if d.fn == "sum" else None
    return FeatureImpl(
        name,
        typ if d.fn != "count" else "int",
        f"{d.fn} of {d.target}",
        aggs=aggs,
        compute=lambda f: f.agg_column(aggs(f.as_of)[0], default),
    )


@dataclass
class FeatureRegistry:
    """Built-ins, the file's named features, and features synthesised by rule presets."""

    extra: dict[str, FeatureImpl] = field(default_factory=dict)
    abc_window: Duration = field(default_factory=lambda: parse_duration("365d"))
    abc_a: Decimal = Decimal("0.8")
    abc_b: Decimal = Decimal("0.15")

    def __post_init__(self) -> None:
        self._builtin = _builtins(_abc(self.abc_window, self.abc_a, self.abc_b))
        self._cache: dict[str, FeatureImpl] = {}

    def add(self, impl: FeatureImpl) -> None:
        self.extra[impl.name] = impl

    def activity(self, spec: ActivitySpec | None) -> tuple[str, str]:
        """Names of (last activity, anchor) features for an `activity:` narrowing (shared when equal)."""
        if spec is None or spec == ActivitySpec():
            return "last_activity_at", "activity_anchor_at"
        key = hashlib.sha1(spec.model_dump_json().encode()).hexdigest()[:8]
        last, anchor = f"last_activity_at[{key}]", f"activity_anchor_at[{key}]"
        if last not in self.extra:
            self.add(_activity_feature(last, spec))
            self.add(_anchor_feature(anchor, last))
        return last, anchor

    def get(self, name: str) -> FeatureImpl:
        impl = self.extra.get(name) or self._builtin.get(name) or self._cache.get(name)
        if impl is not None:
            return impl
        if name.startswith("attributes."):
            key = name.split(".", 1)[1]
            impl = FeatureImpl(  # a blank CRM custom field ("", "  ") is not set: missing, as None is
                name, "any", f"client attribute {key}",
                compute=lambda f: [None if isinstance(v := c.attributes.get(key), str) and not v.strip() else v
                                   for c in f.clients],
            )
        else:
            m = _WINDOWED.match(name)
            if not m:
                raise KeyError(name)
            impl = _window(m.group(1), m.group(2))
        self._cache[name] = impl
        return impl

    def type_of(self, name: str) -> str:
        return self.get(name).type

    def choices_of(self, name: str) -> tuple[str, ...]:
        return self.get(name).choices

    def names(self) -> list[str]:
        windowed = ("revenue", "orders", "outbound", "inbound", "touches", "profit", "spend_growth")
        return [*sorted({*self._builtin, *self.extra}), *(f"{w}_<window>" for w in windowed), "attributes.<key>"]

    def closure(self, names: set[str]) -> list[str]:
        out: list[str] = []
        todo = sorted(names)
        while todo:
            n = todo.pop()
            if n in out:
                continue
            out.append(n)
            todo.extend(self.get(n).deps)
        return out

    def is_reserved(self, name: str) -> bool:
        """Fixed built-ins and attributes.* cannot be redefined; a windowed name (`revenue_90d`) can, and the
        file's definition wins, so DESIGN's own example (which declares `outbound_30d`) loads."""
        return name in self._builtin or name in self.extra or name.startswith("attributes.")

    def describe(self) -> list[tuple[str, str, str]]:
        return [(n, i.type, i.doc) for n, i in sorted(self._builtin.items())]

    # `spend_growth` without a window uses 90 days (the policy default)
    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except KeyError:
            return False
        return True


def register_spend_growth_alias(reg: FeatureRegistry, window: str = "90d") -> None:
    base = reg.get(f"spend_growth_{window}")
    reg.add(FeatureImpl("spend_growth", base.type, base.doc, aggs=base.aggs, deps=base.deps, compute=base.compute))
