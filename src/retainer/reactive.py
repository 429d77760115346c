"""Reactive mode: a session a CRM feeds events as they happen, deciding per event in milliseconds.

    session = Session(rules, store, handlers)
    session.post({"type": "touch", "id": "t9", "client_id": "c1", "at": "2026-03-02T10:00",
                  "kind": "call", "direction": "inbound"})

One decision path: every event writes its fact to the store, then the engine's partial plan
(`Engine.plan(as_of, clients=[client])`) decides what is new for that client, exactly as a nightly
`Engine.run` would decide it at the same instant. durable-rules does what a per-event engine adds:
it routes events to the multi-step processes of the rule file and holds which step each one is in.
Those processes are durable-rules *statecharts* generated from the rule file:

* one per `debtor` rule, one instance per invoice (`step_3d`, `step_10d`, ... then `paid`): a payment
  cancels the ladder's committed steps not delivered yet (outcome `{"cancelled": "paid"}`);
* one per `winback` rule, one instance per churn episode (`reason_pending`, `next_<reason>`, `done`);
* one per rule with a `propose_offer` delivered `next_inbound`, one instance per offer (`waiting`,
  `presented`): the client's next inbound touch tells its manager now (a `notify_manager` action).

Each client's open process instances and their states are persisted in the store (cursor
`reactive:client:<id>`) on every transition, so a new session over the same store resumes them; an
instance is in durable-rules (at most 1,024 per ruleset) only while it takes a trigger.
Every message given to durable-rules carries an explicit unique `id` and `sid`; a durable-rules failure
reaches the caller of `post` as a `ReactiveError`. See docs/reactive.md.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from . import policies
from .actions import Action, NotifyManager, action_id
from .adapters.dispatch import Dispatcher, DispatchReport, Handlers, Retry, dunning_over, utc_now
from .engine import Engine, _not_utc, refuse_after_tomorrow
from .errors import ArgumentError, RetainerError
from .keys import action_key, first_episode, first_key
from .ledger import ACTIVE, LedgerEntry, RunRecord, check_outcome, unapplied_moves
from .model import Client, Manager, active_supervisor
from .plan import Plan
from .rules.features import norm_reason
from .rules.loader import RuleSet, load_rules
from .stores.base import ManagerLoads, Pred, Store
from .timeutil import END_OF_TIME, AsOf, date_only, day_end, day_start, parse_as_of, parse_instant

__all__ = ["EVENT_TYPES", "Chart", "Reaction", "ReactiveError", "Session", "Transition", "charts_for"]

#: What `Session.post` accepts, by the event's `type`.
EVENT_TYPES = ("touch", "task_done", "invoice_paid", "outcome", "fact", "tick")
CURSOR = "reactive:client:"  # + client id: that client's open process instances, JSON
START = "new"


class ReactiveError(RetainerError):
    """A bad event, or durable-rules failed (its own message is kept)."""


# ---------------------------------------------------------------- the charts generated from a rule file


@dataclass(frozen=True)
class Chart:
    """One statechart: its states and `(state, trigger) -> (next state, command)` transitions.

    The same table generates the durable-rules definition and tells the session which events the current
    state accepts, so an event is never left pending inside durable-rules."""

    name: str  # the durable-rules ruleset name
    family: str  # debtor | winback | offer
    rule: str
    states: tuple[str, ...]
    final: frozenset[str]
    transitions: dict[tuple[str, str], tuple[str, str | None]]
    steps: dict[str, str] = field(default_factory=dict)  # episode suffix -> state (debtor: "+3d" -> step_3d)
    reasons: tuple[str, ...] = ()  # winback: the reasons with a next step
    outcome_field: str = "churn_reason"

    def accepts(self, state: str, trigger: str) -> bool:
        return (state, trigger) in self.transitions

    def reason(self, recorded: Any) -> str | None:
        """The win-back reason a recorded answer names, as the rule file spells it (its keys and states do):
        `survey-needed` in the file is the answer "Survey needed"."""
        r = norm_reason(recorded)
        return next((x for x in self.reasons if norm_reason(x) == r), None)


def _state_name(text: str) -> str:
    return re.sub(r"\W", "_", text)


def _debtor_chart(rule_id: str, suffixes: Sequence[str]) -> Chart:
    states = [f"step{_state_name(s)}" for s in suffixes]  # "+3d" -> "step_3d", in ladder order
    t: dict[tuple[str, str], tuple[str, str | None]] = {}
    for k, st in enumerate(states):
        for frm in (START, *states[:k]):  # a later step may overtake an earlier one (superseded)
            t[(frm, f"committed:{suffixes[k]}")] = (st, None)
    for frm in (START, *states):
        t[(frm, "paid")] = ("paid", "cancel_pending")
    for st in states:
        t[(START, f"resume:{st}")] = (st, None)
    return Chart(f"{rule_id}~dunning", "debtor", rule_id, (START, *states, "paid"), frozenset({"paid"}), t,
                 steps=dict(zip(suffixes, states, strict=True)))


def _winback_chart(rule_id: str, reasons: Sequence[str], outcome_field: str) -> Chart:
    t: dict[tuple[str, str], tuple[str, str | None]] = {
        (START, "committed:"): ("reason_pending", None),
        (START, "resume:reason_pending"): ("reason_pending", None),
        ("reason_pending", "outcome:*"): ("closed", None),  # a reason without a next step ends it
    }
    states = [START, "reason_pending"]
    for r in reasons:
        nxt = f"next_{_state_name(r)}"
        states.append(nxt)
        t[("reason_pending", f"outcome:{r}")] = (nxt, None)
        t[(nxt, f"committed:~{r}")] = ("done", None)
        # the reason recorded past the session (`retainer actions outcome`, Engine.record_outcome), then its next
        # step committed by a tick or a nightly run: done all the same (it stayed `reason_pending` for good)
        t[("reason_pending", f"committed:~{r}")] = ("done", None)
        t[(START, f"resume:{nxt}")] = (nxt, None)
    for st in states[1:]:  # the client bought again: the process stops (a tick sees no part of the rule hold)
        t[(st, "returned")] = ("closed", None)
    ends = ("done", "closed") if reasons else ("closed",)  # `done` without a reason's step has no way in: a second
    # start state, and durable-rules refused the chart (no session could start)
    return Chart(f"{rule_id}~winback", "winback", rule_id, (*states, *ends),
                 frozenset(ends), t, reasons=tuple(reasons), outcome_field=outcome_field)


def _offer_chart(rule_id: str) -> Chart:
    t: dict[tuple[str, str], tuple[str, str | None]] = {
        (START, "committed"): ("waiting", None),
        (START, "resume:waiting"): ("waiting", None),
        ("waiting", "inbound"): ("presented", "notify_manager"),
        ("waiting", "outcome"): ("closed", None),  # the host resolved the offer itself
    }
    return Chart(f"{rule_id}~offer", "offer", rule_id, (START, "waiting", "presented", "closed"),
                 frozenset({"presented", "closed"}), t)


def charts_for(rules: RuleSet) -> list[Chart]:
    """The statecharts a rule file's processes need, derived from its compiled rules."""
    out: list[Chart] = []
    raw = {r.id: r for r in rules.file.rules}
    seen_offer: set[str] = set()
    by_rule: dict[str, list[Any]] = {}
    for r in rules.rules:
        by_rule.setdefault(r.id, []).append(r)
    for rid, parts in by_rule.items():
        kind = parts[0].kind
        if kind == "debtor":
            ladder = sorted(parts, key=lambda p: p.ladder)
            out.append(_debtor_chart(rid, [p.suffix for p in ladder]))
        elif kind == "winback":
            reasons = sorted(p.suffix[1:] for p in parts if p.suffix.startswith("~"))
            out.append(_winback_chart(rid, reasons, getattr(raw[rid], "outcome_field", "churn_reason")))
        for p in parts:
            if rid not in seen_offer and any(
                s.type == "propose_offer" and s.params.deliver == "next_inbound" for s in p.then
            ):
                seen_offer.add(rid)
                out.append(_offer_chart(rid))
    return out


def _definition(chart: Chart, action: Callable[[Chart, str, str, str, str | None], Callable[[Any], None]]) -> dict:
    """The durable-rules statechart: one trigger per transition, matched on the message's `trigger`."""
    states: dict[str, dict[str, Any]] = {s: {} for s in chart.states}
    for n, ((frm, trig), (to, cmd)) in enumerate(sorted(chart.transitions.items())):
        states[frm][f"t{n}"] = {"all": [{"m": {"trigger": trig}}], "to": to, "run": action(chart, frm, trig, to, cmd)}
    return states


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Transition:
    chart: str
    sid: str
    from_state: str
    to_state: str
    trigger: str


@dataclass
class Reaction:
    """What one event did: the partial plan, the actions committed (and delivered), the process steps."""

    event_id: str
    as_of: datetime
    client_id: str | None
    plan: Plan | None
    committed: list[Action] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)  # ledger ids of dunning steps a payment cancelled
    transitions: list[Transition] = field(default_factory=list)
    dispatch: DispatchReport | None = None
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- caches a session can keep


class _SessionStore:
    """The store, with the two whole-population reads a partial plan makes answered from memory:
    the managers, and the managers' loads (non-archived clients existing at as_of, per manager). Both
    change only when clients or managers change, which the session learns through `fact` events
    (`refresh()` after writing them some other way)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._managers: list[Manager] | None = None
        self._loads: ManagerLoads | None = None
        # SQLite's count of commits by other connections, per connection (so per thread): another process
        # (the nightly import) may have deactivated a manager, and a session that never ticks kept giving
        # clients to them
        self._versions: dict[int, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def refresh(self) -> None:
        self._managers = None
        self._loads = None

    def managers(self) -> list[Manager]:
        """Read again whenever another connection has committed since (a few hundred rows: under a
        millisecond). The loads are not: they read every client, and a nightly run commits thousands of
        times; they are kept exact by `fact` events, ticks and `refresh()`."""
        probe = getattr(self._store, "data_version", None)
        if probe is not None:
            thread, version = threading.get_ident(), probe()
            if self._versions.get(thread) != version:  # a thread's first look counts as a change
                self._versions[thread] = version
                self._managers = None
        if self._managers is None:
            self._managers = self._store.managers()
        return list(self._managers)

    def manager_loads(self, as_of: datetime) -> dict[str, int]:
        if self._loads is None:
            self._loads = ManagerLoads(self._store.clients(datetime.max.replace(tzinfo=as_of.tzinfo)))
        return self._loads.at(as_of)


class _Host:
    """A durable-rules host of our own: no background dispatch or timer threads (they would run actions
    outside `post` and only log their errors), so every action runs inside the call that caused it."""

    def __new__(cls, definitions: dict[str, Any]) -> Any:
        try:
            from durable.engine import Host
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise ReactiveError(
                "reactive mode needs durable-rules: pip install 'retainer[reactive]'"
            ) from exc

        class QuietHost(Host):  # type: ignore[misc]
            def _run(self) -> None:  # the only override: no threads
                return None

        return QuietHost(definitions)


# ---------------------------------------------------------------- the session


def _why(exc: BaseException) -> str:
    """A durable-rules exception as text: its C extension raises a bare MemoryError when a ruleset is full."""
    if isinstance(exc, MemoryError):
        return f"MemoryError {exc}".rstrip() + " (durable-rules is out of room for process instances)"
    return f"{type(exc).__name__}: {exc}"


def _whole_day(t: datetime | None, zone: Any) -> datetime | None:
    """A payment's place in the order of payments: one at the start of a day (how a date without a time is
    written) stands for that whole day, so it comes after the day's timed payments."""
    if t is None:
        return None
    local = t.astimezone(zone)
    return day_end(local.date(), zone) if (local.hour, local.minute, local.second) == (0, 0, 0) else t


def _churn_episode(episode: str) -> str:
    """The churn episode a win-back key's episode belongs to: without its step (`~price`) or the mark of a task
    decided again (`#2`, for the supervisor of a manager who left), so both move the one process instance."""
    return first_episode(episode.split("~", 1)[0])


def _reason_acted_on(keys: Iterable[str], rule: str, client_id: str, episode: str, reason: str) -> bool:
    """Whether the ledger's `keys` hold the win-back's next step for that reason (`...~<reason>:...`)."""
    step = action_key(rule, client_id, f"{episode}~{reason}", "")
    return any(k.startswith(step) for k in keys)


def _ts(v: Any) -> str:
    return v.isoformat() if isinstance(v, datetime | date) else str(v)


class Session:
    """Feed it events; it decides per event. See the module docstring and docs/reactive.md.

    `handlers` are the engine's (one handler, or a mapping by action type with `"*"`); without them
    committed actions stay `pending` in the ledger for the host to fetch. An event's `at` is its as_of
    (the `as_of=` argument of `post` overrides it); `clock` stamps run records and delivery attempts, and
    bounds the as_of as it bounds `Engine.run`: a tick (or `as_of=`) after tomorrow is refused, and an
    event dated later than now is written as it is and decided as of now. Delivery makes one attempt per
    action unless `retry` says otherwise: a failure leaves the action `failed` for the next run, so `post`
    never sleeps.
    """

    def __init__(
        self,
        rules: RuleSet | str | Mapping[str, Any],
        store: Store,
        handlers: Handlers | None = None,
        *,
        retry: Retry | None = None,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rules = rules if isinstance(rules, RuleSet) else load_rules(rules)
        if getattr(store, "zone_defaulted", False) and _not_utc(parse_as_of(clock(), self.rules.tz)):
            # Engine.plan only warns, in plan.warnings, which nobody reads in a session: each event would be
            # read in UTC only because nobody said otherwise
            raise ArgumentError(
                f"the store was opened without a timezone, so it reads times written without an offset as UTC, "
                f"while the rules count days in {self.rules.timezone}: an event at 10:00 {self.rules.timezone} "
                f"would count from 10:00 UTC. Open the store with open_store(url, timezone=rules.timezone), or "
                f"timezone='UTC' if the CRM's times are UTC"
            )
        self.store = store
        self._cache = _SessionStore(store)
        self.engine = Engine(self.rules, self._cache)  # type: ignore[arg-type]
        self.handlers = handlers
        # one attempt per action by default: `post` answers a phone call and must not sleep through backoff, a
        # CRM's "later", nor wait minutes for another writer's lock beyond the store's own few seconds; what fails stays
        # `failed` for the next run (`retainer run`, `Engine.run`), which retries it
        self.retry = retry if retry is not None else Retry(stop_after=1, lock_wait=0, throttle_wait=0)
        self.clock, self.sleep = clock, sleep
        # built once: a misspelt action type is refused now, not at the first delivery, and an event does
        # not check the handlers' signatures again. Without handlers too, as Engine.run builds its own: a tick
        # then delivers nothing, but still looks at every pending action, so a host that pulls them after it
        # gets no reminder for an invoice paid since
        self._dispatcher = Dispatcher(store, handlers if handlers is not None else {}, retry=self.retry, clock=clock,
                                      sleep=sleep, **self.engine.voiding)  # fmt: skip
        self.charts = {c.name: c for c in charts_for(self.rules)}
        self._by_family: dict[str, dict[str, Chart]] = {}
        for c in self.charts.values():
            self._by_family.setdefault(c.family, {})[c.rule] = c
        self._kinds = {r.id: r.kind for r in self.rules.rules}
        self._fired: list[Transition] = []
        self._errors: list[BaseException] = []
        self._host: Any = None
        self._durable()  # built now: a missing extra or a chart durable-rules refuses fails here, not at an event
        self._procs: dict[str, dict[str, list[str]]] = {}  # client -> {sid: [chart, state]} (open ones)
        self._dirty: set[str] = set()  # clients whose process states changed since the last persist
        self._moving: set[str] = set()  # clients whose processes the current event moves
        self._seq = 0
        self._lock = threading.RLock()
        # an event's commit must not pay for copying the write-ahead log into the file (docs/reactive.md)
        background = getattr(store, "checkpoint_in_background", None)
        self._checkpoints = bool(background()) if background is not None else False

    def close(self) -> None:
        """Stop what the session started in the store (background checkpoints); the store stays open."""
        if self._checkpoints:
            self._checkpoints = False
            self.store.stop_checkpoints()  # type: ignore[attr-defined]

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ public API

    def post(self, event: Mapping[str, Any], *, as_of: str | date | datetime | None = None) -> Reaction:
        """Apply one event and decide for the client it concerns, as of the event's `at` (or now, if it is
        dated later than now by `clock`).

        Events (`type`): `touch` (the touch's fields), `task_done` (`id`, `at`), `invoice_paid` (`id`,
        `at`, optional `amount`), `outcome` (`action_id`, `outcome`, `at`), `fact` (`entity`, `row`,
        `at`: any other fact written with `upsert`), `tick` (`at`: the clock moved; everyone is planned).
        Threads may share a session: their events are decided one at a time.
        """
        with self._lock:  # the process states, the durable-rules host and the cache are the session's own
            self._moving.clear()
            try:
                return self._react(event, as_of)
            except BaseException:
                # the transitions made before the failure follow actions already in the ledger: save them, and
                # read the processes of the clients this event was moving again (saved states, then the ledger)
                # rather than trust a memory the failure cut short. The failure raised is the one to report: if
                # saving fails too, the states stay in memory, dirty, for the next event
                with contextlib.suppress(Exception):
                    self._persist()
                    for cid in self._moving:
                        self._procs.pop(cid, None)
                raise

    def _react(self, event: Mapping[str, Any], as_of: str | date | datetime | None) -> Reaction:
        t0 = time.perf_counter()
        if not isinstance(event, Mapping) or event.get("type") not in EVENT_TYPES:
            got = event.get("type") if isinstance(event, Mapping) else event
            raise ReactiveError(f"an event is a mapping with a type in {', '.join(EVENT_TYPES)}, not {got!r}")
        kind = event["type"]
        when = as_of if as_of is not None else event.get("at")
        if when is None:
            raise ReactiveError(f"{kind} event {event.get('id', '')!r} has no `at` and no as_of was given")
        # when the event's fact happened: its own `at` whatever the as_of (post's as_of= is when to decide, not
        # when the payment was made: a late copy of an older total, dated at the as_of, passed for the newest
        # payment and undid a full one); an as_of (a tick's, or post's as_of=) is read as Engine.run reads it
        own = event.get("at") if kind != "tick" else None
        fact = self._event_time(own) if own is not None else self.engine.as_of(when)
        if kind == "tick" or as_of is not None:
            # the host names the instant to decide as of: refused after tomorrow, as Engine.run refuses it
            a = self.engine.as_of(when) if own is not None else fact
            refuse_after_tomorrow(a, self.clock, "a tick" if kind == "tick" else "a post with as_of")
            if date_only(own) is not None and fact.date == a.date and fact.instant > a.instant:
                # a day without a time, the day decided: that whole day (written at its start, as every copy of
                # it is: a copy written at its own as_of passed for a later payment and undid a full one), and
                # decided as of its end, as without as_of
                a = fact
        else:
            # an event dated later than now (a meeting logged with its planned time) is written as it is, and
            # decided as of now: as of its own date, the steps due by then would be sent now and earlier ones
            # skipped as superseded
            now = self.clock()
            # a date alone (`at: 2026-03-01`) is that whole day: posted during the day it is today's fact, not a
            # future one, decided as of the day's end (taken for a future one and decided as of now, the payment
            # just posted was not yet seen, and the client who had paid got the next reminder)
            future = fact.date > now.astimezone(fact.tz).date() if date_only(when) is not None else fact.instant > now
            a = self.engine.as_of(now) if future else fact
        timings: dict[str, float] = {}
        if kind == "tick":
            return self._tick(a, str(event.get("event_id") or f"tick:{a.instant.isoformat()}"), t0)
        client_id, event_id, triggers, inbound = self._apply(kind, event, fact, a)
        timings["apply"] = time.perf_counter() - t0
        if client_id is None:  # a manager's row: nothing to decide for it alone
            return Reaction(event_id, a.instant.astimezone(a.tz), None, None,
                            timings={**timings, "total": time.perf_counter() - t0})
        t1 = time.perf_counter()
        self._moving.add(client_id)
        self._hydrate(client_id)
        if inbound is not None:  # the client called: every offer of its that waits for a call is presented
            triggers += [(self.charts[cname], sid, "inbound", {"touch": inbound})
                         for sid, (cname, state) in sorted(self._procs[client_id].items())
                         if self.charts[cname].family == "offer" and state == "waiting"
                         and self._after_offer(sid, inbound)]  # fmt: skip
        transitions: list[Transition] = []
        commands: list[tuple[Chart, str, str, Mapping[str, Any]]] = []
        for chart, sid, trigger, payload in triggers:
            if trigger == "paid" and sid not in self._procs[client_id] and not self._open_steps(
                    chart, client_id, payload["invoice"]):  # fmt: skip
                # no ladder to close: a copy of the payment, redelivered (its steps were cancelled once, with
                # their date), or an invoice nothing was sent about; the payment the CRM wrote to the store
                # first, then posted, still cancels the steps it left pending
                continue
            self._adopt_one(chart, client_id, sid, payload.get("adopt"))
            tr = self._post(chart, client_id, sid, trigger, event_id)
            if tr is not None:
                transitions.append(tr)
                cmd = chart.transitions[(tr.from_state, trigger)][1]
                if cmd:
                    commands.append((chart, sid, cmd, payload))
        timings["route"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        extra: list[Action] = []
        cancelled: list[str] = []
        for chart, sid, cmd, _payload in commands:
            if cmd == "cancel_pending":
                cancelled += self._cancel(chart, client_id, sid, a)
        plan = self.engine.plan(a.instant, clients=[client_id])
        for chart, sid, cmd, payload in commands:
            if cmd != "notify_manager" or self._over(chart, plan):
                continue
            if (note := self._notify(chart, client_id, sid, payload, a)) is not None:
                extra.append(note)
        timings["plan"] = time.perf_counter() - t2
        reaction = Reaction(event_id, a.instant.astimezone(a.tz), client_id, plan, cancelled=cancelled,
                            transitions=transitions)
        self._commit(a, [*plan.actions, *extra], plan.cursors, reaction)
        reaction.timings = {**timings, **reaction.timings, "total": time.perf_counter() - t0}
        return reaction

    def _event_time(self, at: Any) -> AsOf:
        """An event's `at` is its fact's time: written without an offset, it is read in the store's zone, as the
        store reads the fact it writes. Read in the rules' zone, a call at 10:00 in a store whose times are UTC
        was decided as of 07:00 UTC (rules in Moscow), before it happened."""
        tz = getattr(self.store, "tz", None)
        naive = (isinstance(at, datetime) and at.utcoffset() is None) or (isinstance(at, str) and len(at.strip()) > 10)
        if tz is not None and naive:
            with contextlib.suppress(ValueError, TypeError):  # not a time: engine.as_of says why
                at = parse_instant(at, tz)
        try:
            return self.engine.as_of(at)
        except ArgumentError as exc:  # "invalid as_of" named the host's as_of, not the event's field
            raise ReactiveError(f"an event's `at`: {str(exc).replace('invalid as_of', 'invalid time', 1)}") from None

    def tick(self, as_of: str | date | datetime) -> Reaction:
        """The clock moved to `as_of`: plan everyone (time-driven steps: ladders, forgotten clients). An as_of
        after tomorrow by `clock` is refused (`ArgumentError`), as `Engine.run` refuses it."""
        return self.post({"type": "tick", "at": as_of})

    def process_states(self, client_id: str) -> dict[str, tuple[str, str]]:
        """The client's open process instances: `{sid: (chart, state)}`."""
        with self._lock:
            self._hydrate(client_id)
            return {sid: (c, s) for sid, (c, s) in sorted(self._procs[client_id].items())}

    def refresh(self) -> None:
        """Forget the cached managers and loads (after changing clients or managers behind our back)."""
        self._cache.refresh()

    # ------------------------------------------------------------ events -> facts

    def _apply(
        self, kind: str, ev: Mapping[str, Any], fact: AsOf, a: AsOf
    ) -> tuple[str | None, str, list[tuple[Chart, str, str, dict]], Any]:
        """Write the event's fact, dated `fact`; `a` is the instant decided as of (earlier for a fact dated
        later than now). Returns its client, the event id, the process triggers it fires, and the touch when
        it is an inbound one (the client's waiting offers are found after `_hydrate`)."""
        store = self.store
        triggers: list[tuple[Chart, str, str, dict]] = []
        at = fact.instant
        zone = getattr(store, "tz", None) or self.engine.rules.tz
        if (day := date_only(ev.get("at"))) is not None:
            # a day without a time is written as the store writes one, at the day's start: written at its end,
            # a payment posted that morning was after the as_of of the client's call at 10:29, and the call
            # dunned the client who had just paid
            at = day_start(day, zone)
        if kind == "touch":
            row = {k: v for k, v in ev.items() if k not in ("type", "event_id")}
            row.setdefault("at", at)
            store.upsert(touches=[row])  # a touch delivered twice (at-least-once queues) is written once
            touch = store.get("touches", str(row["id"]))
            assert touch is not None
            inbound = touch if touch.direction == "inbound" else None  # type: ignore[attr-defined]
            return touch.client_id, str(ev.get("event_id") or f"touch:{touch.id}"), triggers, inbound  # type: ignore[attr-defined]
        if kind == "task_done":
            task = self._get("tasks", ev)
            store.upsert(tasks=[{**task.model_dump(), "done_at": at, "status": "done"}])
            return task.client_id, str(ev.get("event_id") or f"task_done:{task.id}"), triggers, None
        if kind == "invoice_paid":
            inv = self._get("invoices", ev)
            total = self._paid_total(inv, ev)
            stored = (inv.paid_amount if inv.paid_amount is not None else inv.amount) if inv.paid_at else None
            # a running total at the instant of the stored payment (payments dated by day share it) is a copy of
            # an earlier one when it is smaller: the larger stands, as a later one would (a redelivered first
            # instalment undid the second, and the client who had paid in full was dunned)
            # in the order of payments, one dated by day (written at the day's start) is that whole day: after a
            # payment at 10:00 that day (the full payment dated by day was taken for the earlier one, and the
            # 500 paid at 10:00 stood for the 1,200 paid)
            when, last = _whole_day(at, zone), _whole_day(inv.paid_at, zone)
            older = "paid_total" in ev and when == last and stored is not None and total < stored
            if inv.paid_at is None or (when >= last and not older):
                store.upsert(invoices=[{**inv.model_dump(), "paid_at": at, "paid_amount": total}])
                inv = self._get("invoices", ev)  # validated: the amount is a Decimal now
            elif "amount" in ev:  # an instalment paid before the last one recorded: added, the date kept
                store.upsert(invoices=[{**inv.model_dump(), "paid_amount": total}])
                inv = self._get("invoices", ev)
            # else a total (`paid_total`, or paid in full) dated before the payment stored, delivered late by a
            # queue: the later total stands, and the payment does not move backwards (a paid invoice was partly
            # paid again, and its ladder went on)
            cid = inv.client_id
            for chart in self._by_family.get("debtor", {}).values():
                if not self._owed(inv, a.instant, chart.rule):  # a payment dated later counts from its date
                    triggers.append((chart, self._debtor_sid(chart, cid, inv.id), "paid", {"invoice": inv.id}))
            return cid, str(ev.get("event_id") or f"invoice_paid:{inv.id}"), triggers, None
        if kind == "outcome":
            aid, outcome = ev.get("action_id"), ev.get("outcome")
            if not aid or not isinstance(outcome, Mapping):
                raise ReactiveError("an outcome event needs `action_id` and an `outcome` mapping")
            known = store.ledger(ids=[str(aid)])
            if known and known[0].client_id is None:  # checked before writing: the error must be true
                raise ReactiveError(f"action {aid} is about a manager, not a client: record it with Engine")
            eid = str(ev.get("event_id") or f"outcome:{aid}:{at.isoformat()}")
            before = (known[0].outcome or {}) if known else {}
            again = known and known[0].outcome_at == at  # the same event: recorded as of its own `at`
            if again and before and all(k in before and before[k] == v for k, v in check_outcome(outcome).items()):
                # the same outcome again (an at-least-once queue): already taken in; moving the process
                # again brought a finished win-back back as an open one that never moved on
                return known[0].client_id, eid, triggers, None
            entry = store.set_outcome(str(aid), outcome, at)
            if entry.client_id is not None and entry.client_id not in self._procs:
                # its saved processes first: an offer waiting in a saved state (after a restart) was not found,
                # so the declined offer stayed waiting and the client's next call prompted the manager
                self._moving.add(entry.client_id)
                self._procs[entry.client_id] = self._saved(entry.client_id)
            triggers += self._outcome_triggers(entry, outcome)
            return entry.client_id, eid, triggers, None
        # fact
        entity, row = ev.get("entity"), ev.get("row")
        if not isinstance(entity, str) or not isinstance(row, Mapping):
            raise ReactiveError("a fact event needs `entity` (e.g. invoices) and a `row` mapping")
        store.upsert(**{entity: [row]})
        if entity in ("clients", "managers"):
            self._cache.refresh()
        cid = str(row["id"]) if entity == "clients" else row.get("client_id")
        if cid is None and entity != "managers":
            raise ReactiveError(f"a {entity} fact concerns no client; write it to the store and call refresh()")
        eid = str(ev.get("event_id") or f"fact:{entity}:{row['id']}:{_ts(at)}")
        # a manager: written and the cache refreshed; its clients are decided at their next event or tick
        return (str(cid) if cid is not None else None), eid, triggers, None

    @staticmethod
    def _paid_total(inv: Any, ev: Mapping[str, Any]) -> Decimal:
        """What the invoice has been paid in all after this event. `amount` is this payment, added to what
        was paid before (instalments); `paid_total` is the running total the CRM keeps, taken as it is (a
        redelivered event then changes nothing); neither: paid in full. A total dated before the payment
        stored is not taken at all (`_apply`)."""
        if "amount" in ev and "paid_total" in ev:
            raise ReactiveError(f"invoice_paid event {inv.id!r}: give `amount` (this payment) or `paid_total`, "
                                "not both")
        name = "paid_total" if "paid_total" in ev else "amount" if "amount" in ev else None
        if name is None:
            return Decimal(inv.amount)
        try:
            value = Decimal(str(ev[name]))
        except (InvalidOperation, ValueError):
            value = Decimal("NaN")
        if not value.is_finite() or value < 0:
            raise ReactiveError(f"invoice_paid event {inv.id!r}: {name} {ev[name]!r} is not an amount of money")
        if name == "paid_total":
            return value
        before = Decimal(0)
        if inv.paid_at is not None:
            before = inv.paid_amount if inv.paid_amount is not None else inv.amount
        return before + value

    def _get(self, entity: str, ev: Mapping[str, Any]) -> Any:
        got = self.store.get(entity, str(ev.get("id")))
        if got is None:
            raise ReactiveError(f"{ev['type']} event: no {entity[:-1]} {ev.get('id')!r} in the store")
        return got

    def _outcome_triggers(self, entry: LedgerEntry, outcome: Mapping[str, Any]) -> list[tuple[Chart, str, str, dict]]:
        out: list[tuple[Chart, str, str, dict]] = []
        rule, cid = entry.rule, entry.client_id or ""
        ep, typ = self._split(entry.key, rule, cid)
        wb = self._by_family.get("winback", {}).get(rule)
        if wb is not None and "~" not in ep and typ == "create_task":
            reason = outcome.get(wb.outcome_field)
            if reason is not None:
                r = wb.reason(reason)
                trig = f"outcome:{r}" if r is not None else "outcome:*"
                # the reason's next step already committed: the outcome posted again (a note added to it) must
                # not bring the finished win-back back as an open one that never moves on
                if r is None or not _reason_acted_on((e.key for e in self.store.ledger(client_ids=[cid], rule=rule)),
                                                     rule, cid, _churn_episode(ep), r):  # fmt: skip
                    out.append((wb, self._winback_sid(wb, cid, ep), trig, {"adopt": "reason_pending"}))
        offer = self._by_family.get("offer", {}).get(rule)
        if offer is not None and typ.startswith("propose_offer") and entry.key in self._procs.get(cid, {}):
            out.append((offer, entry.key, "outcome", {}))
        return out

    # ------------------------------------------------------------ sids and keys

    @staticmethod
    def _split(key: str, rule: str, client_id: str) -> tuple[str, str]:
        """(episode, type) of an action key `rule:client:episode:type`."""
        head = action_key(rule, client_id, "", "")[:-1]  # "rule:client:"
        body = key[len(head):]
        ep, _, typ = body.rpartition(":")
        return ep, typ

    def _owed(self, inv: Any, at: datetime, rule: str) -> bool:
        """Whether the invoice's dunning ladder goes on, as the dispatcher judges it."""
        return dunning_over(inv, at, self.engine.min_outstanding.get(rule, 0)) is None

    def _debtor_sid(self, chart: Chart, client_id: str, invoice_id: str) -> str:
        return action_key(chart.rule, client_id, invoice_id, "dunning")

    def _winback_sid(self, chart: Chart, client_id: str, episode: str) -> str:
        return action_key(chart.rule, client_id, _churn_episode(episode), "winback")

    def _targets(self, act: Action) -> list[tuple[Chart, str, str]]:
        """The process instances a committed action moves, with the trigger."""
        out: list[tuple[Chart, str, str]] = []
        cid = act.client_id
        if cid is None:
            return out
        ep, _typ = self._split(act.key, act.rule, cid)
        deb = self._by_family.get("debtor", {}).get(act.rule)
        if deb is not None:
            for suffix in deb.steps:
                if ep.endswith(suffix):
                    out.append((deb, self._debtor_sid(deb, cid, ep[: -len(suffix)]), f"committed:{suffix}"))
                    break
        wb = self._by_family.get("winback", {}).get(act.rule)
        if wb is not None:
            base, _, reason = ep.partition("~")
            out.append((wb, self._winback_sid(wb, cid, base), f"committed:{'~' + reason if reason else ''}"))
        offer = self._by_family.get("offer", {}).get(act.rule)
        if offer is not None and act.type == "propose_offer" and getattr(act, "deliver", None) == "next_inbound":
            out.append((offer, act.key, "committed"))
        return out

    # ------------------------------------------------------------ durable-rules

    def _action(self, chart: Chart, frm: str, trig: str, to: str, cmd: str | None) -> Callable[[Any], None]:
        def run(c: Any) -> None:
            try:
                self._fired.append(Transition(chart.name, str(c.m.sid), frm, to, trig))
            except BaseException as exc:  # kept and raised by _post: durable-rules would only log it
                self._errors.append(exc)
                raise

        return run

    def _durable(self) -> Any:
        """The durable-rules host, built on first use and again after a failure: a ruleset durable-rules
        failed in is never used again (past its instance limit it crashes the process on the next call)."""
        if self._host is None:
            definitions = {f"{c.name}$state": _definition(c, self._action) for c in self.charts.values()}
            try:
                self._host = _Host(definitions)
            except ReactiveError:
                raise
            except Exception as exc:
                raise ReactiveError(f"durable-rules refused the statecharts of the rule file: {_why(exc)}") from exc
        return self._host

    def _post(self, chart: Chart, client_id: str, sid: str, trigger: str, event_id: str) -> Transition | None:
        """Send one trigger to one process instance, if its state accepts it; returns the transition.

        durable-rules holds an instance only while it takes a trigger: the session loads it in the state it
        keeps (a `resume:<state>` message moves a fresh instance there), posts the trigger and deletes it.
        durable-rules holds at most 1,024 instances per ruleset (the 1,025th raises MemoryError), so keeping
        every open ladder, win-back and offer in it failed a tick past 1,024 open invoices. Inside durable-rules
        an instance is `<sid>@<n>`, new each time, so one a failure left behind is never reused."""
        procs = self._procs[client_id]
        state = procs[sid][1] if sid in procs else START
        if not chart.accepts(state, trigger):
            return None
        self._seq += 1
        dsid = f"{sid}@{self._seq}"
        try:
            if state != START:
                self._send(chart, sid, dsid, f"resume:{state}", event_id)
            f = self._send(chart, sid, dsid, trigger, event_id)
            try:
                self._durable().delete_state(chart.name, dsid)
            except Exception as exc:
                raise ReactiveError(f"durable-rules could not delete {chart.name} instance {sid}: {_why(exc)}") from exc
        except BaseException:
            self._host = None  # built afresh for the next message; the session's own states are untouched
            raise
        tr = Transition(chart.name, sid, f.from_state, f.to_state, trigger)
        if tr.to_state in chart.final:
            procs.pop(sid, None)
        else:
            procs[sid] = [chart.name, tr.to_state]
        self._dirty.add(client_id)
        return tr

    def _send(self, chart: Chart, sid: str, dsid: str, trigger: str, event_id: str) -> Transition:
        """One message to durable-rules; the one transition it fired. Its failures are ReactiveErrors."""
        self._seq += 1
        message = {"id": f"{event_id}#{self._seq}", "sid": dsid, "trigger": trigger}
        self._fired.clear()
        self._errors.clear()
        try:
            result = self._durable().post(chart.name, message)
        except Exception as exc:
            if any(exc is e for e in self._errors):
                raise  # raised by our own action: durable-rules only passed it on
            raise ReactiveError(f"durable-rules failed in {chart.name} for {sid} ({trigger}): {_why(exc)}") from exc
        if self._errors:
            raise self._errors[0]
        if isinstance(result, Mapping) and result.get("exception"):
            raise ReactiveError(f"durable-rules failed in {chart.name} for {sid}: {result['exception']}")
        fired = [t for t in self._fired if t.sid == dsid]
        if len(fired) != 1 or fired[0].trigger != trigger:
            raise ReactiveError(f"durable-rules did not take {chart.name} {sid} --{trigger}--> (fired {self._fired})")
        return fired[0]

    def _adopt_one(self, chart: Chart, client_id: str, sid: str, adopt: str | None) -> None:
        """A process started outside this session (a nightly run committed its first step): the session takes
        it in the state the event implies."""
        procs = self._procs[client_id]
        if sid not in procs and adopt is not None:
            procs[sid] = [chart.name, adopt]

    # ------------------------------------------------------------ persisted process state

    def _hydrate(self, client_id: str, *, merge: bool = True) -> None:
        """The client's open processes: what this session knows (in memory, or saved by an earlier one),
        plus any the ledger shows that it does not: a nightly run, or a host's recorded outcome, may have
        started one since (an offer the run committed waits for the client's call). Not `merge` right
        after this session's own commit: its actions move the processes themselves."""
        known = self._procs.get(client_id)
        if known is not None and not merge:
            return
        if known is None:
            known = self._procs[client_id] = self._saved(client_id)
        adopted, answered = self._adopt(client_id)
        for sid in [x for x in known if x in answered and x not in adopted and known[x][1] == "reason_pending"]:
            # answered and acted on, by the ledger (an old session's answer taken on the task decided again, `#2`,
            # while its first process waited): the ledger's view, not a wait for good
            del known[sid]
        for sid, (cname, state) in sorted(adopted.items()):
            if sid not in known:
                known[sid] = [cname, state]
            elif known[sid][0] == cname and (order := list(self.charts[cname].steps.values())) and \
                    known[sid][1] in order and state in order and order.index(state) > order.index(known[sid][1]):
                # a ladder a nightly run moved on since (its +10d step committed): the ledger's later step
                known[sid][1] = state

    def _saved(self, client_id: str) -> dict[str, list[str]]:
        """The client's processes as a session saved them."""
        return self._states(self.store.get_cursor(CURSOR + client_id))

    def _states(self, raw: str | None) -> dict[str, list[str]]:
        """Saved process states (a cursor's JSON). A state the rule file no longer has (a ladder step removed
        since) is left out, to the ledger's view (`_adopt`)."""
        saved = {} if raw is None else json.loads(raw)
        out = {sid: list(v) for sid, v in saved.items()
               if v[0] in self.charts and self.charts[v[0]].accepts(START, f"resume:{v[1]}")}  # fmt: skip
        # a win-back saved under its task decided again (`...#2:winback`, before the two were one process): left
        # to the ledger's view of its churn episode's process (`_adopt`), which every trigger now moves
        for sid in [x for x in out if self.charts[out[x][0]].family == "winback" and first_key(x) != x]:
            del out[sid]
        return out

    def _adopt(self, client_id: str) -> tuple[dict[str, list[str]], set[str]]:
        """A client this store has no session state for: its processes, as the ledger tells them, and the win-backs
        whose reason task (or the one decided again) has its answer."""
        if not self.charts:
            return {}, set()
        rules = {c.rule for c in self.charts.values()}
        entries = [e for e in self.store.ledger(client_ids=[client_id]) if e.rule in rules]
        procs: dict[str, list[str]] = {}
        keys = {e.key for e in entries}
        bought: str | None = None
        answered: set[str] = set()  # win-backs whose reason task (or the one decided again) has its answer
        for e in sorted(entries, key=lambda e: e.key):
            ep, typ = self._split(e.key, e.rule, client_id)
            deb = self._by_family.get("debtor", {}).get(e.rule)
            if deb is not None and not e.cancelled:
                for suffix, st in deb.steps.items():
                    if ep.endswith(suffix):
                        inv = self.store.get("invoices", ep[: -len(suffix)])
                        # still owed, as far as the store knows: a partly paid invoice's ladder goes on, as
                        # the invoice_paid event and the dispatcher have it
                        if inv is not None and self._owed(inv, END_OF_TIME, e.rule):
                            sid = self._debtor_sid(deb, client_id, ep[: -len(suffix)])
                            have = procs.get(sid)
                            order = list(deb.steps.values())
                            if have is None or order.index(st) > order.index(have[1]):
                                procs[sid] = [deb.name, st]
                        break
            wb = self._by_family.get("winback", {}).get(e.rule)
            if wb is not None and "~" not in ep and typ == "create_task":
                base = _churn_episode(ep)
                if bought is None:  # read once per client, and only for a client with a win-back
                    bought = self._last_bought([client_id], self.clock()).get(client_id, "")
                if bought > base:  # bought again since: the process stopped
                    continue
                sid = self._winback_sid(wb, client_id, base)
                reason = (e.outcome or {}).get(wb.outcome_field)
                r = wb.reason(reason) if reason is not None else None
                if reason is None:
                    if sid not in answered:  # the task decided again (`#2`, sorted first) may hold the answer
                        procs[sid] = [wb.name, "reason_pending"]
                    continue
                answered.add(sid)
                procs.pop(sid, None)
                if r is not None and not _reason_acted_on(keys, e.rule, client_id, base, r):
                    procs[sid] = [wb.name, f"next_{_state_name(r)}"]
            offer = self._by_family.get("offer", {}).get(e.rule)
            if (
                offer is not None and typ.startswith("propose_offer") and not e.outcome
                and getattr(e.action, "deliver", None) == "next_inbound"
                and self._notify_key(e.key, e.rule, client_id) not in keys
            ):
                procs[e.key] = [offer.name, "waiting"]
        return procs, answered

    def _persist(self) -> None:
        for cid in sorted(self._dirty):
            self.store.set_cursor(CURSOR + cid, json.dumps(self._procs.get(cid, {}), sort_keys=True))
            self._dirty.discard(cid)

    # ------------------------------------------------------------ commands

    def _cancel(self, chart: Chart, client_id: str, sid: str, a: AsOf) -> list[str]:
        """An invoice was paid: its dunning steps committed but not delivered yet are cancelled (outcome
        `{"cancelled": "paid"}`, which makes a pending or failed one `done`, so no dispatcher delivers them)."""
        invoice, _ = self._split(sid, chart.rule, client_id)
        out = []
        for e in self._open_steps(chart, client_id, invoice):
            self.store.set_outcome(e.id, {"cancelled": "paid", "at": a.instant.isoformat()}, a.instant)
            out.append(e.id)
        return out

    def _open_steps(self, chart: Chart, client_id: str, invoice: str) -> list[LedgerEntry]:
        """The invoice's dunning steps committed, not delivered and not cancelled yet."""
        steps = {invoice + s for s in chart.steps}
        entries = self.store.ledger(client_ids=[client_id], rule=chart.rule, status=[*ACTIVE, "dead"])
        return [e for e in entries if "cancelled" not in (e.outcome or {})
                and self._split(e.key, chart.rule, client_id)[0] in steps]  # fmt: skip

    def _after_offer(self, sid: str, touch: Any) -> bool:
        """Whether an inbound touch is the call a waiting offer waits for: made after the offer was (its as_of,
        or its commit if that came first), and not later than now. A call logged late that happened before
        the offer existed, or a meeting logged with its planned time, presented it, and the client's real
        next call got no prompt (found in review)."""
        if touch.at > self.clock():
            return False
        entry = next(iter(self.store.ledger(ids=[action_id(sid)])), None)
        return entry is None or touch.at > min(entry.as_of, entry.created_at)

    @staticmethod
    def _notify_key(offer_key: str, rule: str, client_id: str) -> str:
        ep, typ = Session._split(offer_key, rule, client_id)
        return action_key(rule, client_id, f"{ep}~inbound", "notify_manager" + typ[len("propose_offer"):])

    def _over(self, chart: Chart, plan: Plan) -> bool:
        """A win-back's offer waits for the client's call only while the client is still churned: one who
        bought again has come back on its own ("the process stops as soon as the client buys again"), and
        a discount for that is money given away. Every part of a win-back rule holds only while its churned
        rule does, so the client's plan matching none of them says so."""
        if self._kinds.get(chart.rule) != "winback":
            return False
        return not plan.stats.get("rules", {}).get(chart.rule, {}).get("matched", 0)

    def _notify(
        self, chart: Chart, client_id: str, sid: str, payload: Mapping[str, Any], a: AsOf
    ) -> Action | None:
        """The client called in while an offer waits for that: tell the manager now. Not for a client who
        has since asked not to be contacted, or been archived, or opted out of marketing (a retention or
        development offer): the offer was planned before, and the prompt is an action of its own (None)."""
        touch = payload["touch"]
        client = self.store.get("clients", client_id)
        assert isinstance(client, Client)
        if policies.do_not_contact(client.contact_policy) or client.status == "archived":
            return None
        entry = next(iter(self.store.ledger(ids=[action_id(sid)])), None)
        if (client.contact_policy == "no_marketing" and self.rules.file.policies.no_marketing
                and (entry is None or entry.category in policies.MARKETING)):  # fmt: skip
            return None
        offer = getattr(entry.action, "offer", None) if entry is not None else None
        key = self._notify_key(sid, chart.rule, client_id)
        return NotifyManager(
            id=action_id(key),
            key=key,
            rule=chart.rule,
            client_id=client_id,
            category=entry.category if entry is not None else "development",  # type: ignore[arg-type]
            reason=f"{client.name or client_id} got in touch ({touch.kind}, touch {touch.id}): "
            f"offer {offer or sid} is waiting for this contact",
            evidence={"offer_key": sid, "offer": offer, "touch_id": touch.id},
            as_of=a.instant.astimezone(a.tz),
            to_manager_id=self._owner(client, a),
            template="next_inbound_offer",
        )

    def _owner(self, client: Client, a: AsOf) -> str:
        """The client's manager, or the one a committed reassignment gave it to while the CRM still shows
        the old one, as the engine assigns its tasks: the one who lost the client should not hear that it
        called. A manager who has left is replaced by the nearest active supervisor, as for the engine's
        tasks (found in review: the prompt went to the manager who had left, and was lost)."""
        owner = unapplied_moves(self.store, [client], a.instant).get(client.id, client.manager_id)
        managers = {m.id: m for m in self._cache.managers()}
        m = managers.get(owner)
        if m is not None and not m.active and (boss := active_supervisor(m, managers)) is not None:
            return boss.id
        return owner

    # ------------------------------------------------------------ commit and deliver

    def _commit(self, a: AsOf, actions: list[Action], cursors: Mapping[str, str], reaction: Reaction) -> None:
        t0 = time.perf_counter()
        committed: list[Action] = []
        for act in actions:  # know the clients' processes before the commit moves them
            if act.client_id is not None and self._targets(act):
                self._moving.add(act.client_id)
                if act.client_id not in self._procs:
                    self._hydrate(act.client_id)
        if actions or cursors:
            run = RunRecord(id=str(uuid.uuid4()), as_of=a.instant.astimezone(a.tz),
                            rules_digest=self.rules.digest, started_at=self.clock(), kind="event")
            committed = self.store.commit_run(run, actions, cursors)
            reaction.committed = committed
            reaction.timings["commit"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            if committed and reaction.client_id is not None:  # with no handlers too: a host pulls what waits
                entries = self.store.ledger(ids=[x.id for x in committed])
                by_id = {x.id: x for x in committed}
                for e in entries:
                    e.__dict__["action"] = by_id[e.id]
                # looked at again before they go out: an event dated before facts the store has (a late
                # webhook, a queue delivering out of order) planned without them (a payment the session
                # already took in cancels a reminder). Without handlers nothing is delivered, but what must
                # not go out is cancelled all the same: a host pulling pending actions sent the reminder
                reaction.dispatch = self._dispatcher.dispatch(entries)
            self.store.finish_run(run.id, self.clock(), {"new": len(committed)})
            reaction.timings["dispatch"] = time.perf_counter() - t1
        if reaction.client_id is None:
            # a tick delivers everything pending or failed, as Engine.run does: what it committed, and what
            # earlier events and ticks left when the CRM did not answer (each event tries its own once)
            t1 = time.perf_counter()
            reaction.dispatch = self._dispatcher.dispatch_active(committed)
            reaction.timings["dispatch"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        for act in committed:
            if act.client_id is None or not self._targets(act):
                continue
            self._hydrate(act.client_id, merge=False)
            for chart, sid, trigger in self._targets(act):
                tr = self._post(chart, act.client_id, sid, trigger, f"commit:{act.id}")
                if tr is not None:
                    reaction.transitions.append(tr)
        self._persist()
        reaction.timings["processes"] = time.perf_counter() - t2

    def _tick(self, a: AsOf, event_id: str, t0: float) -> Reaction:
        self._cache.refresh()
        plan = self.engine.plan(a.instant)
        reaction = Reaction(event_id, a.instant.astimezone(a.tz), None, plan)
        reaction.timings["plan"] = time.perf_counter() - t0
        self._commit(a, plan.actions, plan.cursors, reaction)
        t1 = time.perf_counter()
        self._close_paid(a, event_id, reaction)
        self._close_returned(a, event_id, reaction)
        reaction.timings["paid"] = time.perf_counter() - t1
        reaction.timings["total"] = time.perf_counter() - t0
        return reaction

    def _close_paid(self, a: AsOf, event_id: str, reaction: Reaction) -> None:
        """Dunning ladders whose invoice the store shows paid as of the tick take `paid`, as if the payment had
        been posted: their steps not delivered yet are cancelled. A payment the CRM wrote to the store itself
        (an import, `store.upsert`), or instalments that added up out of order, left the ladder open for good:
        shown by `process_states`, and saved again with the client's every change. Every open ladder is looked
        at, the saved ones (one read of the cursors) and the ones in memory, with one read of their invoices."""
        ladders = self._open("debtor")
        if not ladders:
            return
        invoice = {sid: self._split(sid, self.charts[c].rule, cid)[0] for sid, (cid, c) in ladders.items()}
        found = self.store.facts("invoices", a.instant, (Pred("id", "in", frozenset(invoice.values())),))
        invoices = {i.id: i for i in found}
        for sid, (cid, cname) in sorted(ladders.items()):
            chart, inv = self.charts[cname], invoices.get(invoice[sid])
            if inv is None or self._owed(inv, a.instant, chart.rule):
                continue  # still owed (or no such invoice as of the tick: nothing says it was paid)
            self._moving.add(cid)
            self._hydrate(cid)
            if (tr := self._post(chart, cid, sid, "paid", event_id)) is not None:
                reaction.transitions.append(tr)
                reaction.cancelled += self._cancel(chart, cid, sid, a)
        self._persist()

    def _open(self, family: str) -> dict[str, tuple[str, str]]:
        """The open instances of a family's charts, saved (one read of the cursors) and in memory: sid ->
        (client, chart)."""
        names = {c.name for c in self._by_family.get(family, {}).values()}
        found: dict[str, tuple[str, str]] = {}
        if not names:
            return found
        listed = getattr(self.store, "cursors", None)  # a store written before Store.cursors: memory only
        for name, raw in ((listed(CURSOR) if listed is not None else None) or {}).items():  # (or the stub's None)
            cid = name[len(CURSOR) :]
            if cid not in self._procs:  # the session's own states are newer than what it saved
                found.update((sid, (cid, v[0])) for sid, v in self._states(raw).items() if v[0] in names)
        for cid, procs in self._procs.items():
            found.update((sid, (cid, v[0])) for sid, v in procs.items() if v[0] in names)
        return found

    def _last_bought(self, client_ids: Iterable[str], at: datetime) -> dict[str, str]:
        """Each client's latest invoice day (in the rules' zone) issued by `at`, read at once: what says a client
        bought again after the churn a win-back episode names (the process stops "as soon as the client buys
        again"). Not an invoice issued later (scheduled, or after a backfill's as_of): the engine as of `at`
        still has that client churned."""
        tz, out = self.engine.rules.tz, {}
        for i in self.store.facts("invoices", at, (Pred("client_id", "in", frozenset(client_ids)),)):
            if i.issued_at is not None:
                day = i.issued_at.astimezone(tz).date().isoformat()
                out[i.client_id] = max(out.get(i.client_id, ""), day)
        return out

    def _close_returned(self, a: AsOf, event_id: str, reaction: Reaction) -> None:
        """Win-backs whose client bought again by the tick are closed. Left open, a process waited for good at
        `reason_pending`, or at the next step of a reason recorded after the purchase, and was saved with the
        client's every change."""
        processes = self._open("winback")
        if not processes:
            return
        bought = self._last_bought({cid for cid, _ in processes.values()}, a.instant)
        for sid, (cid, cname) in sorted(processes.items()):
            chart = self.charts[cname]
            if bought.get(cid, "") <= self._split(sid, chart.rule, cid)[0]:
                continue
            self._moving.add(cid)
            self._hydrate(cid)
            if (tr := self._post(chart, cid, sid, "returned", event_id)) is not None:
                reaction.transitions.append(tr)
        self._persist()


def replay_events(session: Session, events: Iterable[Mapping[str, Any]]) -> list[Reaction]:
    """Post events in order (a convenience for tests and backfills)."""
    return [session.post(e) for e in events]
