"""Backtests: what a rule set would have done over past months, night by night.

Each step is a real `Engine.run` as of that date against the CRM's facts (facts dated after the step
are invisible, as in every plan) with a fresh in-memory ledger, so duplicates, grace periods and
round-robin behave as in production, and the store's own ledger is never touched. A reassignment is
carried out, as the CRM does with the one it receives: later steps see the client with its new manager,
and capacity and least-loaded count it there. Other reactions (a task done, a message answered) are
unknown, so nothing else is applied to the facts.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from html import escape
from pathlib import Path
from typing import Any

from dateutil.relativedelta import relativedelta

from . import charts, policies
from .actions import Action, Suppression
from .adapters.base import CallbackHandler
from .engine import Engine
from .errors import RetainerError
from .ledger import RunRecord
from .rules.features import MANAGER_FEATURES, FeatureFrame
from .rules.loader import RuleSet
from .rules.schema import Policies
from .stores._ingest import Batch
from .stores.base import AggSpec, Changes, ManagerLoads, Store
from .stores.memory import MemoryStore
from .sweep import Kept, Quiet, Wakes
from .timeutil import END_OF_TIME, AsOf, DateRangeError, in_years, parse_duration

__all__ = ["METHODS", "Backtest", "backtest", "steps_between"]

#: what a backtest keeps to itself: the ledger and cursors (fresh), and clients and managers (read once,
#: since hundreds of steps ask for the same rows as of different dates)
_LOCAL = frozenset({
    "run_lock", "ledger_status", "cancellations", "commit_run", "finish_run", "runs", "ledger", "begin_attempts",
    "finish_attempts", "requeue", "set_outcome", "get_cursor", "set_cursor",
    "clients", "managers", "manager_changes",
})  # fmt: skip


#: actions that name the managers they concern; the others count for their client's manager
_OWN_MANAGER = frozenset({"create_task", "reassign", "notify_manager", "escalate"})


class FreshLedger:
    """Facts from `base`, except clients and managers, copied once into a private in-memory store that
    also holds a fresh ledger; the in-memory store answers "as of" questions as every store does."""

    #: every committed reassignment is carried out at once (commit_run): the engine need not look for moves
    #: the CRM has not made yet, which would read the whole ledger every step
    carries_out_moves = True

    def __init__(self, base: Store) -> None:
        self._base = base
        self._local = MemoryStore(f"backtest:{base.url}", timezone=base.tz)
        # the store's own rows, valid already: loaded as they are (`add` validates models again, for a script's)
        self._local.load([Batch("managers", list(base.iter("managers"))), Batch("clients", list(base.iter("clients")))],
                         replace=False)  # fmt: skip
        self.url = base.url
        self.tz = base.tz

        # clients change during a backtest only by reassignment: a sweep asks for the loads every step
        everyone = self._local.clients(END_OF_TIME)
        self._loads = ManagerLoads(everyone)
        self._moved: Counter[str] = Counter()  # clients gained (lost: negative) per manager by reassignment
        self.moved: set[str] = set()  # the clients the last commit reassigned
        self.owners: dict[str, str] = {}  # action id -> its client's manager when it was committed
        self.ids = [c.id for c in everyone]
        self.kept: Kept | None = None  # a sweep's aggregates, kept from step to step

    def manager_loads(self, as_of: datetime) -> dict[str, int]:
        loads = self._loads.at(as_of)
        for mid, n in self._moved.items():  # steps only go forward: every move so far happened before as_of
            if k := loads.get(mid, 0) + n:
                loads[mid] = k
            else:
                loads.pop(mid, None)
        return loads

    def commit_run(self, run: RunRecord, actions: Sequence[Action], cursors: Mapping[str, str],
                   **kw: Any) -> list[Action]:  # fmt: skip
        """The local ledger's commit, then the committed reassignments carried out, as the CRM would: the
        next steps plan the client's tasks for its new manager, release it from that one, and count it
        against that one's capacity. (Without this, a manager with room for one client received three.)"""
        committed = self._local.commit_run(run, actions, cursors, **kw)
        moves = {}
        for x in committed:  # the moves are written after the loop: every client still has its manager here
            c = self._local.get("clients", x.client_id) if x.client_id is not None else None
            if c is None:
                continue
            if x.type not in _OWN_MANAGER:  # who the client's other actions count for
                self.owners[x.id] = c.manager_id
            to = getattr(x, "to_manager_id", None) if x.type == "reassign" else None
            if to and c.manager_id != to:
                moves[c.id] = c.model_copy(update={"manager_id": to})
                if c.status != "archived":  # loads count the others
                    self._moved[c.manager_id] -= 1
                    self._moved[to] += 1
        if moves:  # rows of the store with a manager the engine chose: valid as they are
            self._local.load([Batch("clients", list(moves.values()))], replace=True)
        self.moved = set(moves)
        return committed

    def keep(self, steps: list[datetime], changes: list[Changes]) -> Kept:
        """From now on, aggregates at the sweep's steps are kept from step to step (`sweep.Kept`)."""
        self.kept = Kept(self._base, self.ids, steps, changes)
        return self.kept

    def aggregate(
        self, specs: Sequence[AggSpec], as_of: datetime, client_ids: Sequence[str] | None = None
    ) -> list[Mapping[str, Any]]:
        if self.kept is not None and as_of == self.kept.at:
            return self.kept.aggregate(specs, as_of, client_ids)
        return self._base.aggregate(specs, as_of, client_ids)  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._local if name in _LOCAL else self._base, name)


def steps_between(start: date, end: date, step: str) -> list[date]:
    """`1d`, `1w`, `2w`, `1mo`: the dates from `start` to `end` inclusive."""
    try:
        d = parse_duration(step)
    except ValueError as exc:
        raise RetainerError(f"step {step!r}: {exc}") from None
    if d.is_hours or (not d.days and not d.months):
        raise RetainerError(f"step {step!r}: use days, weeks or months (1d, 1w, 1mo)")
    if end < start:
        raise RetainerError(f"the end ({end}) is before the start ({start})")
    out: list[date] = []
    k = 0
    while (cur := start + relativedelta(months=d.months * k, days=d.days * k)) <= end:
        out.append(cur)  # counted from the start each time: monthly steps keep their day (31, 28, 31)
        k += 1
    return out


def step_notes(rules: RuleSet, step: str) -> list[str]:
    """What a step longer than a night changes for the counts: each step is one run, so a daily limit or a
    daily cap allows its quota once a step (a weekly backtest understated a manager's tasks by a fifth)."""
    try:
        d = parse_duration(step)
    except ValueError:
        return []  # steps_between says why
    if d.months == 0 and d.days <= 1:
        return []
    p = rules.file.policies
    daily = [f"manager_daily_task_limit ({p.manager_daily_task_limit})"] if p.manager_daily_task_limit else []
    daily += [f"caps[{i}] (per {c.per}, {c.window})" for i, c in enumerate(p.caps)
              if c.per.months == 0 and c.per.days <= 1 and not c.per.hours]  # fmt: skip
    return [f"each --step {step} is one night's run: {', '.join(daily)} limit one step, not one day, so the "
            "counts are lower than nightly runs would give; use --step 1d"] if daily else []  # fmt: skip


def _managers_of(a: Action, owner: str) -> list[tuple[str, str]]:
    """(manager, what it means for them) for one action: the load it puts on people; `owner` is the client's
    manager when the action was committed."""
    match a.type:
        case "create_task":
            return [(a.assignee_id or "?", "tasks")]  # type: ignore[attr-defined]
        case "reassign":
            return [(a.from_manager_id, "lost"), (a.to_manager_id or "?", "gained")]  # type: ignore[attr-defined]
        case "notify_manager" | "escalate":
            return [(a.to_manager_id or "?", "notifications")]  # type: ignore[attr-defined]
    return [(owner, "client actions")]  # messages, tags, offers to their clients


@dataclass
class Backtest:
    """The outcome of one backtest: new actions per step, per rule, per manager."""

    label: str
    days: list[date]
    new: list[tuple[date, Action]] = field(default_factory=list)
    suppressed: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, reason) -> count
    client_manager: dict[str, str] = field(default_factory=dict)  # at the last step
    #: action id -> the client's manager when it was committed, for the actions counted by their client's
    #: manager (messages, tags, offers): a client reassigned later keeps its earlier actions where they were
    owners: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    #: what the plans warned of (a client attribute `forgotten_after: "45 days"`: that client skipped), each once
    warnings: set[str] = field(default_factory=set)

    # ------------------------------------------------------------ views

    def _owner(self, a: Action) -> str:
        return self.owners.get(a.id) or self.client_manager.get(a.client_id or "", "?")

    def per_rule(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for _, a in self.new:
            out[a.rule][a.type] += 1
        for (rule, reason), n in self.suppressed.items():
            out[rule][f"suppressed:{reason}"] += n
        return {r: dict(sorted(c.items())) for r, c in sorted(out.items())}

    def per_manager(self) -> dict[str, dict[str, int]]:
        """tasks, gained, lost, notifications, client actions (messages, tags, offers for their clients),
        and the peak of tasks in one step."""
        totals: dict[str, Counter[str]] = defaultdict(Counter)
        daily: dict[tuple[str, date], int] = Counter()
        for day, a in self.new:
            for m, what in _managers_of(a, self._owner(a)):
                totals[m][what] += 1
                if what == "tasks":
                    daily[(m, day)] += 1
        for (m, _), n in daily.items():
            totals[m]["peak_tasks_per_step"] = max(totals[m]["peak_tasks_per_step"], n)
        return {m: dict(c) for m, c in sorted(totals.items(), key=lambda kv: (-kv[1]["tasks"], kv[0]))}

    def timeline(self) -> dict[str, list[int]]:
        """New actions per step, per rule."""
        index = {d: i for i, d in enumerate(self.days)}
        rules = sorted({a.rule for _, a in self.new})
        out = {r: [0] * len(self.days) for r in rules}
        for day, a in self.new:
            out[a.rule][index[day]] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "from": self.days[0].isoformat() if self.days else None,
            "to": self.days[-1].isoformat() if self.days else None,
            "steps": len(self.days),
            "seconds": round(self.seconds, 3),
            "actions": len(self.new),
            "per_rule": self.per_rule(),
            "per_manager": self.per_manager(),
            # the rules' series under their own key: a rule may be called `days`
            "timeline": {"days": [d.isoformat() for d in self.days], "rules": self.timeline()},
            "warnings": sorted(self.warnings),
        }

    def csv_rows(self) -> list[dict[str, Any]]:
        counts: Counter[tuple[str, str, str, str, str]] = Counter()
        for day, a in self.new:
            for m, what in _managers_of(a, self._owner(a)):
                counts[(day.isoformat(), a.rule, a.type, m, what)] += 1
        return [
            {"rules": self.label, "date": d, "rule": r, "type": t, "manager": m, "role": w, "count": n}
            for (d, r, t, m, w), n in sorted(counts.items())
        ]


METHODS = ("sweep", "replan")


def backtest(
    rules: RuleSet,
    store: Store,
    start: date | str,
    end: date | str,
    *,
    step: str = "1d",
    label: str = "rules",
    progress: Callable[[int, int], None] | None = None,
    method: str = "sweep",
) -> Backtest:
    """Replay `rules` over [start, end] (dates, or ISO text) every `step` against a fresh ledger.

    `replan` makes every step a full run (the reference); `sweep` (the default) re-evaluates only the
    clients whose plan can change on a step and gives the same new actions and suppression counts
    (docs/backtest.md, "Speed: sweeping instead of re-planning").
    """
    if method not in METHODS:
        raise RetainerError(f"method {method!r}: use {' or '.join(METHODS)}")
    days = steps_between(_day(start, "start"), _day(end, "end"), step)
    overlay = FreshLedger(store)
    engine = Engine(rules, overlay)  # type: ignore[arg-type]
    result = Backtest(label, days)
    t0 = time.perf_counter()
    if method == "replan":
        _replan(engine, days, result, progress)
    else:
        _sweep(engine, overlay, days, result, progress)
    result.seconds = time.perf_counter() - t0
    if days:
        result.client_manager = {c.id: c.manager_id for c in overlay.clients(engine.as_of(days[-1]).instant)}
        result.owners = overlay.owners
    return result


def _day(value: date | str, name: str) -> date:
    if isinstance(value, datetime):
        d = value.date()
    elif isinstance(value, date):
        d = value
    else:
        try:
            d = date.fromisoformat(str(value).strip())
        except ValueError:
            raise RetainerError(f"the {name} must be a date like 2026-03-01, not {value!r}") from None
    try:
        return in_years(d)  # steps past year 9999 overflowed
    except DateRangeError as exc:
        raise RetainerError(f"the {name} {d}: {exc}") from None


_SINK = CallbackHandler(lambda a: None)  # delivered at once: the ledger stays small and exact


def _replan(engine: Engine, days: list[date], result: Backtest, progress: Callable[[int, int], None] | None) -> None:
    for i, day in enumerate(days):
        a = engine.as_of(day)
        report = engine.run(day, handlers=_SINK, clock=lambda a=a: a.instant, sleep=lambda s: None)
        result.new += [(day, x) for x in report.committed]
        result.warnings.update(report.plan.warnings)
        _count(result, report.plan.suppressed)
        if progress:
            progress(i + 1, len(days))


def _count(result: Backtest, suppressed: list[Suppression]) -> None:
    for s in suppressed:
        if s.reason_code != "duplicate":
            result.suppressed[(s.action.rule, s.reason_code)] += 1


def _held(suppressed: list[Suppression]) -> dict[str, Counter[tuple[str, str]]]:
    """Per client, its actions held back (not duplicates) by (rule, reason)."""
    out: dict[str, Counter[tuple[str, str]]] = {}
    for s in suppressed:
        if s.reason_code != policies.DUPLICATE and s.action.client_id:
            out.setdefault(s.action.client_id, Counter())[(s.action.rule, s.reason_code)] += 1
    return out


def _commit(engine: Engine, a: AsOf, actions: list[Action], cursors: dict[str, str]) -> list[Action]:
    """What `Engine.run` does after planning: one commit to the ledger, then delivery to `_SINK`, which
    takes everything at once; so each action is committed as delivered (one attempt, done), as the
    dispatcher would leave it, without its per-action bookkeeping. Nothing can fail between the attempt
    and its end here, so the attempt is recorded with its result, in the commit, rather than counted
    first (`begin_attempts`: a crash guard a backtest has no use for)."""
    store = engine.store
    with store.run_lock(f"backtest as of {a.date}"):
        run = RunRecord(id=str(uuid.uuid4()), as_of=a.instant.astimezone(a.tz), rules_digest=engine.rules.digest,
                        started_at=a.instant)  # fmt: skip
        committed = store.commit_run(run, actions, cursors, delivered=True)  # the overlay's memory store
        store.finish_run(run.id, a.instant, {"new": len(committed)})
    return committed


def _sweep(
    engine: Engine,
    overlay: FreshLedger,
    days: list[date],
    result: Backtest,
    progress: Callable[[int, int], None] | None,
) -> None:
    """A full plan on the first step; then, per step, a partial plan (`Engine` with `clients=`) of the
    clients whose plan can change, committed to the same ledger as a full run would be:

    - those with a fact dated since the previous step (`Store.fact_steps`, read once for the period),
      unless every such fact only postpones every rule and the client matched nothing (`sweep.Quiet`);
    - those whose time-dependent conditions come due (`sweep.Wakes`, computed when they are evaluated);
    - those with an action held back on the previous step (a policy may let it through now, and a
      held-back action is counted every step, as a full run does). Except when every hold is steady
      (`policies.steady`: do_not_contact and no_marketing, as a client's contact policy does not change
      during a backtest; priority, which changes only with the client's own matches, unless a message
      outranks the held action: it is history the day after it goes out, `policies.fleeting`): until the client
      is evaluated again for another reason, the same matches are held again and counted without
      planning them;
    - those with an action committed on the previous step, when a rule reads a feature kept in the ledger
      (`released_at`, an escalation's unresolved action, a recorded outcome): their wakes moved with it.
      Otherwise a commit changes nothing but the duplicate check, and the client sleeps on;
    - those whose `abc_class` changed (the population column is recomputed each step when a rule reads it).

    Manager-level rules (overdue_tasks) read every client's tasks: they are planned over everyone, alone,
    on every step (their actions, escalations, are independent of the client rules' guards).

    The partial plans' reads are kept from step to step (`sweep.Kept`): a client's aggregates are read
    again only when a fact of its own can have moved them."""
    if not days:
        return
    rules = engine.rules
    asofs = [engine.as_of(d) for d in days]
    wakes, quiet = Wakes(rules), Quiet(rules)
    # step -> (entity, field) -> the clients with such a fact since the previous step
    instants = [a.instant for a in asofs]
    changes: list[Changes] = [{}, *overlay.fact_steps(instants)]
    kept = overlay.keep(instants, changes)
    manager_rules = [r for r in rules.rules if r.subject == "manager"]
    # a manager-level rule that plans contacts competes with the client rules for caps and daily task
    # slots: then every step is a full plan (correct, not faster)
    full_always = any(spec.type in policies.CONTACT_TYPES for r in manager_rules for spec in r.then)
    mengine = None
    if manager_rules and not full_always:  # escalations and notices: no guard applies to them
        alone = dataclasses.replace(
            rules, file=rules.file.model_copy(update={"policies": Policies()}), rules=manager_rules,
            _needed=set().union(*(r.features() for r in manager_rules)),
        )  # fmt: skip
        mengine = Engine(alone, overlay)  # type: ignore[arg-type]
    needed = rules.registry.closure(rules.features_needed())
    reads_ledger = any(rules.registry.get(n).ledger for n in needed)
    # who gets a client's next task is read when it is next evaluated, for whatever reason: a reassigned
    # client needs no evaluation of its own, unless a condition reads its manager (every rule set needs
    # `manager_id` for its actions; evaluating the 19,000 clients released on a first step again cost 20 %)
    # (an episode on the manager reads it too: a hand-over task per new manager, found in review)
    read = [r.condition.features() | ({r.episode} if r.episode else set()) for r in rules.rules]
    in_conditions = rules.registry.closure(set().union(*read))
    reads_manager = not MANAGER_FEATURES.isdisjoint(in_conditions)
    abc: dict[str, Any] | None = {} if "abc_class" in needed else None
    managers = {m.id: m for m in overlay.managers()}
    scheduled: dict[str, date] = {}  # client -> its wake date
    due_on: dict[date, list[str]] = defaultdict(list)  # wake date -> clients (stale ones: woken or rescheduled)
    carry: set[str] = set()
    matched: set[str] = set()  # clients that matched a rule when last evaluated
    refused: dict[str, Counter[tuple[str, str]]] = {}  # clients whose every hold is steady: held each step
    steady = policies.steady(rules.file.policies)
    empty: set[str] = set()  # clients with an empty value in a feature `quiet` reasons about
    # client -> the last step that committed for it: a fact revealed with an activity dated before that (a
    # task created today, done last year) may belong to a silence already decided (`late_facts`)
    decided: dict[str, datetime] = {}
    for i, (day, a) in enumerate(zip(days, asofs, strict=True)):
        changed = changes[i]
        kept.advance(i)
        dirty = carry.union(*(cs for fact, cs in changed.items() if fact not in quiet.safe))
        for fact in changed.keys() & quiet.safe:
            dirty |= changed[fact] & matched
            dirty |= changed[fact] & empty
        for w in [w for w in due_on if w <= day]:
            for cid in due_on.pop(w):
                if scheduled.get(cid) == w:
                    del scheduled[cid]
                    dirty.add(cid)
        if abc is not None:
            pop = FeatureFrame(rules.registry, overlay, a, overlay.clients(a.instant), managers, None)  # type: ignore[arg-type]
            now = dict(zip(pop.ids, pop.column("abc_class"), strict=True))
            if i:
                dirty |= {cid for cid, v in now.items() if abc.get(cid) != v}
            abc = now
        ids = None if i == 0 or full_always else sorted(dirty)
        actions: list[Action] = []
        suppressed: list[Suppression] = []
        cursors: dict[str, str] = {}
        frame = None
        if ids is None or ids:
            plan, frame, ms = engine._plan(a, ids, wakes.specs(a), duplicates=False, internal=True,
                                           late_facts=decided)
            actions, suppressed, cursors = plan.actions, plan.suppressed, plan.cursors
            result.warnings.update(plan.warnings)
            seen = set(frame.ids)  # what was known of these clients is replaced below
            for cid in seen:
                refused.pop(cid, None)
                scheduled.pop(cid, None)
            matched -= seen
            matched.update(m.client.id for m in ms if m.client is not None)
            empty -= seen
            for n in quiet.watch:
                empty.update(c for c, v in zip(frame.ids, frame.column(n), strict=True) if v is None)
        if mengine is not None and ids is not None:
            mplan = mengine._plan(a, None)[0]
            result.warnings.update(mplan.warnings)
            actions = sorted([*actions, *mplan.actions], key=lambda x: x.key)
            suppressed = [*suppressed, *mplan.suppressed]
        committed = _commit(engine, a, actions, cursors) if actions else []
        result.new += [(day, x) for x in committed]
        decided.update((x.client_id, a.instant) for x in committed if x.client_id is not None)
        _count(result, suppressed)
        carry = {x.client_id for x in committed if x.client_id is not None} if reads_ledger else set()
        if reads_manager:  # a new manager: a condition on the manager may hold now
            carry |= overlay.moved
        held = _held(suppressed)
        unsteady = {x.action.client_id for x in suppressed if x.reason_code != policies.DUPLICATE and not steady(x)}
        unsteady |= policies.fleeting(rules.file.policies, actions, suppressed)
        for cid, counts in held.items():
            if cid not in unsteady:
                refused[cid] = counts
            else:
                carry.add(cid)
        for cid, counts in refused.items():
            if cid not in held:  # not evaluated: the same matches, refused again
                result.suppressed.update(counts)
        if frame is not None:
            for cid, w in wakes.compute(frame).items():
                scheduled[cid] = w
                due_on[w].append(cid)
        if progress:
            progress(i + 1, len(days))


# ---------------------------------------------------------------- output


def _csv_rows(results: list[Backtest]) -> Iterator[dict[str, Any]]:
    """Rows with text that a spreadsheet would run as a formula (`=HYPERLINK(...)` as a manager id from the
    CRM, evaluated when an analyst opens the file) quoted with a leading `'`, as OWASP advises."""
    for b in results:
        for r in b.csv_rows():
            yield {k: "'" + v if isinstance(v, str) and v.startswith(("=", "+", "-", "@", "\t", "\r")) else v
                   for k, v in r.items()}  # fmt: skip


def write_csv(results: list[Backtest], path: str | Path) -> None:
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["rules", "date", "rule", "type", "manager", "role", "count"])
        w.writeheader()
        w.writerows(_csv_rows(results))


def csv_text(results: list[Backtest]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["rules", "date", "rule", "type", "manager", "role", "count"])
    w.writeheader()
    w.writerows(_csv_rows(results))
    return buf.getvalue()


def render_html(results: list[Backtest]) -> str:
    """Workload over time per rule, per-manager load, and the A/B difference when two rule sets ran."""
    first = results[0]
    labels = [d.isoformat() for d in first.days]
    body: list[str] = []
    if len(results) == 2:
        a, b = results
        body.append("<h2>A/B: new actions per step</h2>")
        body.append(charts.line_chart({f"{a.label} (A)": [sum(v) for v in zip(*a.timeline().values(), strict=True)]
                                       if a.timeline() else [0] * len(labels),
                                       f"{b.label} (B)": [sum(v) for v in zip(*b.timeline().values(), strict=True)]
                                       if b.timeline() else [0] * len(labels)},
                                      labels, title="all rules, new actions per step"))  # fmt: skip
        rows = []
        pa, pb = a.per_rule(), b.per_rule()
        for rule in sorted(set(pa) | set(pb)):
            for kind in sorted(set(pa.get(rule, {})) | set(pb.get(rule, {}))):
                x, y = pa.get(rule, {}).get(kind, 0), pb.get(rule, {}).get(kind, 0)
                rows.append((rule, kind, x, y, y - x))
        body.append(charts.table(["rule", "what", "A", "B", "B − A"], rows, caption="per rule"))
        ma, mb = a.per_manager(), b.per_manager()
        top = sorted(set(ma) | set(mb),  # ties by id: which 20 managers show never depends on hash order
                     key=lambda m: (-(ma.get(m, {}).get("tasks", 0) + mb.get(m, {}).get("tasks", 0)), m))
        body.append(charts.bar_chart({f"{a.label} (A)": [(m, ma.get(m, {}).get("tasks", 0)) for m in top[:20]],
                                      f"{b.label} (B)": [(m, mb.get(m, {}).get("tasks", 0)) for m in top[:20]]},
                                     title="tasks per manager (top 20)"))  # fmt: skip
    for res in results:
        tag = f" — {escape(res.label)}" if len(results) > 1 else ""
        body.append(f"<h2>Workload over time{tag}</h2>")
        body.append(charts.line_chart(res.timeline() or {"no actions": [0] * len(labels)}, labels,
                                      title="new actions per step, per rule"))  # fmt: skip
        body.append(charts.table(["rule", "what", "count"],
                                 [(r, k, n) for r, kinds in res.per_rule().items() for k, n in kinds.items()],
                                 caption="per rule"))  # fmt: skip
        pm = res.per_manager()
        body.append(charts.bar_chart({"tasks": [(m, v.get("tasks", 0)) for m, v in list(pm.items())[:20]]},
                                     title="tasks per manager (top 20)"))  # fmt: skip
        cols = ["tasks", "peak_tasks_per_step", "gained", "lost", "notifications", "client actions"]
        body.append(charts.table(["manager", *cols], [(m, *(v.get(c, 0) for c in cols)) for m, v in pm.items()],
                                 caption="per manager"))  # fmt: skip
    meta = (f"{first.days[0]} to {first.days[-1]}, {len(first.days)} steps; "
            + "; ".join(f"{r.label}: {len(r.new)} actions in {r.seconds:.1f}s" for r in results))  # fmt: skip
    return charts.page("retainer backtest", "\n".join(body), meta=meta)
