"""The engine: facts + rules + as_of -> a deterministic, explained plan. No writes, no clock.

Flow of `plan`: fetch every aggregate the rules need in one store call, evaluate each rule's
condition over all clients at once, resolve reassignments in key order (so capacity and
round-robin do not depend on input order), apply policies, sort by key.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import heapq
import itertools
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from . import policies
from .actions import ACTION_TYPES, Action, Escalate, Suppression, action_id
from .adapters.dispatch import Dispatcher, DispatchReport, Handlers, Retry, utc_now
from .adapters.dispatch import replay as _replay
from .errors import ArgumentError, RetainerError
from .keys import action_key as _key
from .keys import decision_episode
from .keys import episode_text as _episode_text
from .ledger import (
    MANAGER_LEFT,
    OWNER_CHANGED,
    LedgerEntry,
    RunRecord,
    RunReport,
    Status,
    carried_out,
    loads_with_moves,
    manager_changes,
    unapplied_moves,
)
from .model import Client, Manager, active_supervisor, fast_model, no_gc
from .plan import Plan
from .rules import templates
from .rules.conditions import ExplainNode, OlderThan, as_duration
from .rules.features import FeatureFrame, SubFrame, invoice_frame, manager_frame
from .rules.kinds import CompiledRule
from .rules.loader import RuleSet, load_rules
from .rules.notes import ROLES
from .rules.schema import ReassignSpec
from .stores.base import AggSpec, Store
from .timeutil import AsOf, DateRangeError, Duration, parse_as_of, zone_name

__all__ = ["Engine", "Explanation", "RuleExplanation"]


@dataclass(slots=True)
class _Match:
    rule: CompiledRule
    i: int  # row in `frame`
    client: Client | None  # None for a manager-level rule
    episode: str
    threshold: Duration | None
    blocked: str | None  # do_not_contact detail
    frame: FeatureFrame | SubFrame
    subject_id: str  # the client's id, or the manager's for a manager-level rule
    about: Manager | None = None  # the manager a manager-level rule is about
    new_manager: Manager | None = None
    owner: Manager | None = None  # whom a move not yet in the data gave the client to, when it moves again
    reassign_failed: str | None = None
    superseded: str | None = None  # a ladder step overtaken by a later one that is due too
    keys: list[str] = field(default_factory=list)  # every key this match can produce, for the ledger check
    head: str = ""  # the keys' common prefix, rule:subject:episode:
    attempt: int = 1  # the decision's number in its episode: a move cancelled because its manager left is decided again
    passed_over: str | None = None  # a manager a move decided again must not pick: the one the first move left

    @property
    def key_episode(self) -> str:
        """The episode as its keys spell it (`keys.decision_episode`)."""
        return decision_episode(self.episode, self.attempt)


class _Reassigner:
    """Chooses the new manager: active, not the current one, with spare capacity, never a supervisor
    unless the pool names them. Loads include the moves already made in this plan.

    least_loaded keeps one heap of (load, id) per candidate set; entries go stale as loads change
    and are corrected lazily when they reach the top, so each pick costs O(log managers).
    """

    def __init__(self, managers: dict[str, Manager], loads: dict[str, int], store: Store) -> None:
        self.managers = managers
        self.loads = dict(loads)
        self.store = store
        self._supervisors: set[str] | None = None
        self.cursors: dict[str, str] = {}
        self._static: dict[tuple[Any, ...], list[Manager]] = {}
        self._heaps: dict[tuple[Any, ...], list[tuple[int, str]]] = {}
        self._member_of: dict[str, list[tuple[Any, ...]]] = {}

    @property
    def supervisors(self) -> set[str]:
        """Worked out on the first pick: most partial plans reassign nobody."""
        if self._supervisors is None:
            # a manager whose supervisor_id is its own (a CRM data slip) supervises nobody: it stays a target
            self._supervisors = {m.supervisor_id for m in self.managers.values() if m.supervisor_id not in (None, m.id)}
        return self._supervisors

    def _candidates(self, key: tuple[Any, ...], spec: ReassignSpec, team: str | None) -> list[Manager]:
        got = self._static.get(key)
        if got is None:
            got = []
            for m in sorted(self.managers.values(), key=lambda m: m.id):
                if not m.active:
                    continue
                if spec.pool is not None:
                    if m.id not in spec.pool:
                        continue
                elif m.id in self.supervisors:
                    continue
                if spec.same_team and m.team != team:
                    continue
                got.append(m)
            self._static[key] = got
        return got

    @staticmethod
    def _room(m: Manager, load: int) -> bool:
        return m.max_clients is None or load < m.max_clients

    def pick(self, rule_id: str, current: str, spec: ReassignSpec, passed_over: str | None = None) -> Manager | None:
        """`passed_over`: another manager not to pick (whom a first move of the episode took the client from)."""
        cur = self.managers.get(current)
        team = cur.team if cur is not None else None
        if spec.same_team and team is None:
            return None
        key = (tuple(spec.pool) if spec.pool is not None else None, spec.same_team, team if spec.same_team else None)
        cands = self._candidates(key, spec, team)
        away = (current, passed_over)
        choice = (
            self._least_loaded(key, cands, away)
            if spec.strategy == "least_loaded"
            else self._round_robin(rule_id, cands, away)
        )
        if choice is None:
            return None
        self._move(current, -1)
        self._move(choice.id, +1)
        return choice

    def why_none(self, current: str, spec: ReassignSpec) -> str:
        """Why `pick` found nobody, naming what emptied the choice: an analyst read "no spare capacity" and
        looked at max_clients, when the cause was the team."""
        cur = self.managers.get(current)
        team = cur.team if cur is not None else None
        where = "".join((f" in the pool ({', '.join(spec.pool)})" if spec.pool is not None else "",
                         f" in team {team}" if spec.same_team else ""))  # fmt: skip
        if spec.same_team and team is None:
            return f"{current} has no team, and the rule reassigns within the team (same_team)"
        key = (tuple(spec.pool) if spec.pool is not None else None, spec.same_team, team if spec.same_team else None)
        others = [m for m in self._candidates(key, spec, team) if m.id != current]
        if not others:
            aside = "" if spec.pool is not None else " (supervisors are eligible only from a pool)"
            return f"no active manager{where} other than {current}{aside}"
        full = ", ".join(f"{m.id} ({self.loads.get(m.id, 0)} of {m.max_clients})" for m in others[:5])
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        return f"every active manager other than {current}{where} is at max_clients: {full}{more}"

    def _least_loaded(self, key: tuple[Any, ...], cands: list[Manager], away: tuple[str, str | None]) -> Manager | None:
        heap = self._heaps.get(key)
        if heap is None:
            for m in cands:
                self._member_of.setdefault(m.id, []).append(key)
        if heap is None or len(heap) > 2 * len(cands):
            # each lower load is pushed and the old entry left behind: rebuilt from the loads before the
            # stale entries outnumber the candidates (at 100k, 29,000 picks grew one heap to 28,000
            # entries, and every pick sifted through them)
            heap = self._heaps[key] = [(self.loads.get(m.id, 0), m.id) for m in cands]
            heapq.heapify(heap)
        skipped: list[tuple[int, str]] = []
        choice = None
        loads, managers = self.loads, self.managers
        while heap:
            load, mid = heap[0]
            actual = loads.get(mid, 0)
            if load != actual:  # stale: re-file at its real load
                heapq.heapreplace(heap, (actual, mid))
                continue
            m = managers[mid]
            if mid in away or not self._room(m, actual):
                skipped.append(heapq.heappop(heap))
                continue
            choice = m
            break
        for e in skipped:
            heapq.heappush(heap, e)
        return choice

    def _round_robin(self, rule_id: str, cands: list[Manager], away: tuple[str, str | None]) -> Manager | None:
        name = f"round_robin:{rule_id}"
        last = self.cursors.get(name) or self.store.get_cursor(name)
        ids = [m.id for m in cands]
        start = bisect.bisect_right(ids, last) if last is not None else 0
        for k in range(len(cands)):
            m = cands[(start + k) % len(cands)]
            if m.id not in away and self._room(m, self.loads.get(m.id, 0)):
                self.cursors[name] = m.id
                return m
        return None

    def _move(self, mid: str, delta: int) -> None:
        self.loads[mid] = self.loads.get(mid, 0) + delta
        if delta < 0:  # a lower load must be visible to every heap holding this manager
            for key in self._member_of.get(mid, ()):
                heapq.heappush(self._heaps[key], (self.loads[mid], mid))


def _evidence_value(v: Any, as_of: AsOf) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(as_of.tz).isoformat()
    if isinstance(v, frozenset | set):
        return sorted(v)
    return v


@lru_cache(maxsize=256)
def _due_date(a: AsOf, due_in: Duration) -> date:
    if due_in.is_hours:
        return a.local_date(a.instant + timedelta(hours=due_in.hours))
    return due_in.add_to_date(a.date)


def _ladder_tops(matches: list[_Match], sends: Callable[[_Match], bool]) -> dict[tuple[str, str], _Match]:
    """(rule, invoice) -> the latest due step of that invoice's ladder that has someone to send it to, else
    the latest. A final step that nobody can receive (an escalation for a manager with no supervisor) must
    not silence the ladder: the earlier steps were all `superseded` by it, and the debt was never chased."""
    top: dict[tuple[str, str], _Match] = {}
    for m in matches:
        if m.rule.ladder is not None:
            k = (m.rule.id, m.frame.ids[m.i])
            if k not in top or m.rule.ladder > top[k].rule.ladder:  # type: ignore[operator]
                top[k] = m
    mute = {k for k, m in top.items() if not sends(m)}  # rare: read the steps of those ladders again
    if mute:
        steps: dict[tuple[str, str], list[_Match]] = {}
        for m in matches:
            if m.rule.ladder is not None and (k := (m.rule.id, m.frame.ids[m.i])) in mute:
                steps.setdefault(k, []).append(m)
        for k, ms in steps.items():
            ms.sort(key=lambda m: m.rule.ladder, reverse=True)  # type: ignore[arg-type,return-value]
            top[k] = next((m for m in ms if sends(m)), ms[0])
    return top


def _later_keys(top: Mapping[tuple[str, str], _Match], steps: Mapping[str, list[CompiledRule]]) -> dict[Any, list[str]]:
    """The keys of the steps after each invoice's latest due one: due later by this as_of, but an earlier
    run may have sent them (a plan as of a past day: a late event, a night run again for a day passed)."""
    out: dict[Any, list[str]] = {}
    for k, m in top.items():
        after = [r for r in steps[m.rule.id] if r.ladder > m.rule.ladder]  # type: ignore[operator]
        if after:
            out[k] = [_key(r.id, m.subject_id, k[1] + r.suffix, kind) for r in after for kind in r.key_kinds]
    return out


def _resolve_ladders(
    matches: list[_Match], ledger: Mapping[str, str], top: Mapping[tuple[str, str], _Match],
    later: Mapping[Any, list[str]],
) -> list[_Match]:
    """A dunning ladder sends only its latest due step per invoice: earlier steps never sent are
    `superseded` (a late reminder after the final notice only confuses the client). They are reported
    once, in the plan that sends the later step; after that they are history, not news, and so are they
    when a later step than any due now went out on an earlier night."""
    gone = {k for k, keys in later.items() if any(x in ledger for x in keys)}
    out = []
    for m in matches:
        if m.rule.ladder is not None:
            k = (m.rule.id, m.frame.ids[m.i])
            if k in gone and not any(x in ledger for x in m.keys):
                continue  # a later step was sent: this one never will be
            latest = top[k]
            if latest is not m and m.rule.ladder < latest.rule.ladder:  # type: ignore[operator]  # a later one: unsent
                if all(k in ledger for k in latest.keys) and not any(k in ledger for k in m.keys):
                    continue  # superseded on an earlier night
                m.superseded = f"{latest.rule.part} is due now; an earlier step not sent in time is skipped"
        out.append(m)
    return out


def _before(m: _Match, decided: datetime | None, a: AsOf) -> bool:
    """Whether a match's date (its episode's instant or day) is before its client's last decision: only then can
    it be a silence that decision already counted (a later date is a silence that began after it)."""
    if decided is None:
        return False
    v = m.frame.column(m.rule.episode)[m.i] if m.rule.episode else None
    if isinstance(v, datetime):
        return v < decided
    if isinstance(v, date):
        return v <= a.local_date(decided)
    return True  # not a date: look it up


def _committed(m: _Match, ledger: Mapping[str, str]) -> bool:
    """Every action the match plans is in the ledger already. The escalation a failed release would add
    does not count: a release whose reassign is committed is not decided again, so it cannot fail."""
    return all(k in ledger for k in m.keys[: len(m.rule.then)])


def _make(cls: type[Action], values: dict[str, Any]) -> Action:
    """Actions are built from validated rules and stored facts: skip re-validation (hot path)."""
    return fast_model(cls, values)  # type: ignore[no-any-return]


def _dup(status: str) -> str:
    return f"already in the ledger ({status}): committed by an earlier run"


_PLAIN = frozenset({str, int, float, bool, type(None)})
#: what a rule's texts can name besides features: `{threshold}` is the client's own threshold
_OBJECTS = (*templates.ENGINE_OBJECTS, "threshold")


class _Prep:
    """What one rule's actions share within a plan (evidence columns, compiled texts, the constant
    fields of each action), worked out once instead of once per client."""

    def __init__(
        self,
        rule: CompiledRule,
        frame: FeatureFrame | SubFrame,
        a: AsOf,
        tfile: Mapping[str, Any],
        managers: Mapping[str, Manager],
    ) -> None:
        self.as_of = a.instant.astimezone(a.tz)
        self.as_of_date = a.date.isoformat()
        self.evidence = [(name.split("[", 1)[0], frame.column(name)) for name in rule.evidence]
        aliases = rule.aliases

        def text(t: str) -> Callable[[dict[str, Any], int], str]:
            return templates.bound(t, _OBJECTS, lambda name: frame.column(aliases.get(name, name)), a.tz)

        self.reason = text(rule.reason)
        common = {"rule": rule.id, "category": rule.category, "as_of": self.as_of}
        # per action, for the loop of _emit_group: (class, constant fields, texts, what to fill in, whom for,
        # why it has no recipient when the rule file names a manager id that the store does not have)
        self.fills: list[
            tuple[type[Action], dict[str, Any], tuple[tuple[str, Any], ...], int, str | None, str | None]
        ] = []
        for spec in rule.then:
            p = spec.params
            cls = ACTION_TYPES[spec.type]
            static: dict[str, Any] = {"type": spec.type, **common}
            texts: dict[str, Any] = {}

            def message(template: str, static: dict[str, Any] = static, texts: dict[str, Any] = texts) -> None:
                static["template"] = template
                t = tfile.get(template)
                static["subject"] = static["body"] = None
                if t is not None:
                    if t.subject:
                        texts["subject"] = text(t.subject)
                    texts["body"] = text(t.body)

            match spec.type:
                case "create_task":
                    static.update(due_at=_due_date(a, p.due_in), task_kind=p.kind,
                                  options=list(p.options) if p.options else None)  # fmt: skip
                    texts["title"] = text(p.title)
                case "notify_manager":
                    message(p.template)
                case "notify_client":
                    static["channel"] = p.channel
                    message(p.template)
                case "escalate":
                    static.update(template=None, subject=None, body=None)
                    if p.template:
                        message(p.template)
                case "tag" | "untag":
                    static["tag"] = p.tag
                case "propose_offer":
                    static.update(offer=p.offer, amount=p.amount, deliver=p.deliver)
                case "create_deal":
                    static["amount"] = p.amount
                    texts["title"] = text(p.title)
                case "start_process":
                    static["process"] = p.process
            fill, whom, absent = _target(spec, managers)
            self.fills.append((cls, static, tuple(texts.items()), fill, whom, absent))
        #: a task or message for "the manager": one who left, with no active supervisor, would get it
        self.to_manager = any(f[4] == "manager" and f[3] in (_TASK, _NOTIFY) for f in self.fills)


_TASK, _REASSIGN, _NOTIFY, _ESCALATE = 1, 2, 3, 4
_FILL = {"create_task": _TASK, "reassign": _REASSIGN, "notify_manager": _NOTIFY, "escalate": _ESCALATE}
#: who an action's `assignee`/`to` can name besides a manager id (the keys of `whom` in _emit_group)
_ROLES = frozenset(ROLES)
_TO_WHOM = {"create_task": "to assign the task to", "notify_manager": "to notify", "escalate": "to escalate to"}


_UNSET: Any = object()


class _Nobody:
    """The new manager of a move that gives the client to no one, in a template: `{new_manager.name}`."""

    def __getattr__(self, name: str) -> str:
        if name.startswith("__"):  # copy, pickle and friends probe these
            raise AttributeError(name)
        return "(nobody)"


_NOBODY = _Nobody()


def client_ids(clients: Iterable[Any] | None, what: str = "clients") -> list[str] | None:
    """The ids a caller named, as the store spells them: read once (a generator read twice planned nobody), and
    an int id as its text, as `store.add` takes it. A single string would be one client per character."""
    if clients is None:
        return None
    if isinstance(clients, str | bytes):
        raise ArgumentError(f"{what} is a list of client ids, e.g. [{clients!r}], not a string")
    out = []
    for c in clients:
        if isinstance(c, bool) or not isinstance(c, str | int):
            raise ArgumentError(f"{what}: a client id is text (or a whole number), not {c!r}")
        out.append(str(c))
    return out


def refuse_after_tomorrow(a: AsOf, clock: Callable[[], datetime], what: str = "a run") -> None:
    """What commits and delivers (`Engine.run`, a reactive session's tick) refuses an as_of after tomorrow by
    the clock: its actions, sent now, would be spent before they are due (a typo in the year)."""
    today = clock().astimezone(a.tz).date()
    if a.date > today + timedelta(days=1):
        raise ArgumentError(
            f"as_of {a.date} is after tomorrow ({today + timedelta(days=1)}, by the clock): {what} commits and "
            f"delivers what is due on that date, and those actions, sent now, would be spent before they are "
            f"due (a typo in the year?). Look ahead with a plan (`retainer plan`, `Engine.plan`)"
        )


def ahead_of_the_clock(a: AsOf, clock: Callable[[], datetime]) -> str | None:
    """A warning when as_of is a day that has not begun in the rules' zone: a cron job's `date +%F` on a UTC
    server, at 02:30, names tomorrow in New York, and every action went out a day early, night after night."""
    now = clock().astimezone(a.tz)
    if a.date <= now.date():
        return None
    zone = zone_name(a.tz)
    return (f"as_of {a.date} has not begun in the rules' zone ({zone}: it is {now:%Y-%m-%d %H:%M} there): this run "
            f"acts on what is due by the end of that day, before it comes. A date from the server's clock in "
            f"another zone? Take it in the rules' zone (`TZ={zone} date +%F`)")


def _not_utc(a: AsOf) -> bool:
    """The rules' zone is ahead of or behind UTC at some time of as_of's year (winter or summer)."""
    year = a.instant.year
    return any(datetime(year, m, 1, tzinfo=UTC).astimezone(a.tz).utcoffset() for m in (1, 7))


def _whom(spec: Any) -> str | None:
    """Whom a rule's action is for: a role (`manager`, `supervisor`, `new_manager`) or a manager id; None when
    it is for no manager (a message to the client, a tag)."""
    return getattr(spec.params, "assignee", None) or getattr(spec.params, "to", None)


def _target(spec: Any, managers: Mapping[str, Manager]) -> tuple[int, str | None, str | None]:
    """An action of a rule: what it fills in (`_TASK`...), whom it is for (a role or a manager id), and why it
    has no recipient when the rule file names a manager id the store does not have."""
    whom = _whom(spec)
    absent = None
    if whom is not None and whom not in _ROLES and whom not in managers:  # a literal manager id
        absent = f"no manager {whom} in the store {_TO_WHOM[spec.type]}"
    return _FILL.get(spec.type, 0), whom, absent


def _people(
    m: _Match, managers: Mapping[str, Manager], moved: Mapping[str, Manager], bosses: dict[str, Any]
) -> tuple[Manager | None, Manager | None, str | None, Manager | None, dict[str, str | None]]:
    """Who a match's actions are about and for: the client's manager (the one this plan, or a move the data
    does not show yet, gives it to), that manager's nearest active supervisor, the manager's id as the actions
    name it, the manager this plan gives the client to, and whom each role means. "The manager" is the
    supervisor when the manager has left: a task for someone who left is a lost task. `bosses` caches the
    supervisors by manager id."""
    client = m.client
    incoming = m.new_manager or (moved.get(client.id) if client is not None else None)
    taker = incoming if m.new_manager is None else None  # another rule of this plan reassigns the client
    owner = m.about or taker or m.owner  # whose client it is, when not the manager the data shows
    manager = owner or (managers.get(client.manager_id) if client is not None else None)
    if manager is None or not manager.supervisor_id:
        supervisor = None
    elif (supervisor := bosses.get(manager.id, _UNSET)) is _UNSET:
        supervisor = bosses[manager.id] = active_supervisor(manager, managers)
    manager_id = manager.id if owner is not None else client.manager_id if client is not None else None  # type: ignore[union-attr]
    to_manager = supervisor.id if manager is not None and not manager.active and supervisor is not None else manager_id
    whom = {
        "manager": to_manager,
        "supervisor": supervisor.id if supervisor else None,
        "new_manager": incoming.id if incoming is not None else None,  # the manager this plan gives the client to
    }
    return manager, supervisor, manager_id, incoming, whom


def _sends(targets: list[tuple[int, str | None, str | None]], whom: Mapping[str, str | None]) -> bool:
    """Whether any of a match's actions has someone to go to: a dunning step whose only action is an
    escalation, for a manager with no supervisor, sends nothing."""
    return any(fill not in (_TASK, _NOTIFY, _ESCALATE) or (not absent and whom.get(to, to))  # type: ignore[arg-type]
               for fill, to, absent in targets)  # fmt: skip


def _emit_group(
    prep: _Prep,
    ms: list[_Match],
    a: AsOf,
    managers: dict[str, Manager],
    ledger: Mapping[str, str],
    moved: Mapping[str, Manager],
    actions: list[Action],
    suppressed: list[Suppression],
    warnings: list[str],
) -> None:
    """The actions of one rule's matches over one frame (the hot loop of a plan: one pass per match,
    everything shared hoisted out of it)."""
    rule = ms[0].rule
    hold, make, new_id, plain, people = policies.hold, _make, action_id, _PLAIN, _people
    evidence_cols, reason_of, fills = prep.evidence, prep.reason, prep.fills
    as_of_date, rule_id, tz = prep.as_of_date, rule.id, a.tz
    bosses: dict[str, Any] = {}  # manager id -> its nearest active supervisor
    for m in ms:
        i, client = m.i, m.client
        threshold = str(m.threshold) if m.threshold is not None else ""
        manager, supervisor, manager_id, incoming, whom = people(m, managers, moved, bosses)
        objects = {
            "client": client,
            "manager": manager,
            "supervisor": supervisor,
            # a move held back (do_not_contact, nobody eligible) gives the client to nobody: its held-back note
            # read "Cedar Foods moved to " in the plan
            "new_manager": incoming if incoming is not None or rule.reassign is None else _NOBODY,
            "as_of": as_of_date,
            "rule": rule_id,
            "threshold": threshold,
        }
        evidence = {}
        for name, col in evidence_cols:
            v = col[i]
            t = type(v)
            if t in plain:
                evidence[name] = v
            else:  # an instant in the rule set's zone (most evidence that is not plain), or a set as a list
                evidence[name] = v.astimezone(tz).isoformat() if t is datetime else _evidence_value(v, a)
        if m.threshold is not None:
            evidence["threshold"] = threshold
        evidence["episode"] = m.episode
        reason = reason_of(objects, i)
        client_id = client.id if client is not None else None
        if manager is not None and not manager.active and supervisor is None and prep.to_manager and client is not None:
            warnings.append(f"client {client.id}: manager {manager.id} is inactive and has no active supervisor: "
                            f"{rule_id}'s tasks and messages for the manager still go to {manager.id}")
        for (cls, static, texts, fill, to, absent), key in zip(fills, m.keys, strict=False):
            values = {**static, "key": key, "id": new_id(key), "client_id": client_id, "reason": reason,
                      "evidence": evidence}  # fmt: skip
            for name, render in texts:
                values[name] = render(objects, i)
            missing = None
            if fill == _TASK:
                if values["options"] is not None:
                    values["options"] = list(values["options"])  # each task its own list
                who = values["assignee_id"] = whom.get(to, to)
                if not who:
                    missing = f"no {to} to assign the task to"
            elif fill == _REASSIGN:
                values["from_manager_id"] = manager_id
                values["to_manager_id"] = m.new_manager.id if m.new_manager else None
            elif fill == _NOTIFY:
                who = values["to_manager_id"] = whom.get(to, to)
                if not who:
                    missing = f"no {to} to notify"
            elif fill == _ESCALATE:
                who = whom.get(to, to)
                values["to_manager_id"] = who or ""
                values["about_manager_id"] = manager_id
                if not who:
                    missing = f"manager {manager_id} has no {to}"
            missing = missing or absent
            act = make(cls, values)
            if key in ledger:
                suppressed.append(hold(act, policies.DUPLICATE, _dup(ledger[key])))
            elif m.blocked:
                suppressed.append(hold(act, policies.DO_NOT_CONTACT, m.blocked))
            elif m.superseded:
                suppressed.append(hold(act, policies.SUPERSEDED, m.superseded))
            elif m.reassign_failed:
                suppressed.append(hold(act, policies.NO_ELIGIBLE_MANAGER, m.reassign_failed))
            elif missing:
                suppressed.append(hold(act, policies.NO_RECIPIENT, missing))
            else:
                actions.append(act)
        if m.reassign_failed and not m.blocked:
            key = _key(rule_id, m.subject_id, m.key_episode, "escalate")
            esc = make(
                Escalate,
                {
                    "type": "escalate",
                    "rule": rule_id,
                    "client_id": client_id,
                    "category": rule.category,
                    "evidence": evidence,
                    "as_of": prep.as_of,
                    "key": key,
                    "id": new_id(key),
                    "reason": f"{reason}; release impossible: {m.reassign_failed}",
                    "to_manager_id": supervisor.id if supervisor else "",
                    "about_manager_id": manager_id,
                },
            )
            if key in ledger:
                suppressed.append(hold(esc, policies.DUPLICATE, _dup(ledger[key])))
            elif supervisor is None:
                suppressed.append(hold(esc, policies.NO_RECIPIENT, f"manager {manager_id} has no active supervisor"))
            else:
                actions.append(esc)


def _shared_note(note: str | None, rules: list[RuleExplanation], task_limit: int | None) -> str | None:
    """Explain plans this one client; what the nightly plan decides over all clients may differ: say so
    where it matters (least-loaded counts the moves made for other clients first; the daily task limit
    is shared by the manager's clients)."""
    acts = [x for r in rules for x in r.actions]
    shared = []
    if any(x.type == "reassign" for x in acts):
        shared.append("the new manager (reassignments of other clients in the same plan come first)")
    if task_limit is not None and any(x.type == "create_task" for x in acts):
        shared.append(f"whether the manager's {task_limit} tasks a day leave room")
    if not shared:
        return note
    text = f"explained for this client alone: {' and '.join(shared)} can differ in the full plan (`retainer plan`)"
    return f"{note}; {text}" if note else text


@dataclass
class RuleExplanation:
    rule: str
    kind: str
    matched: bool
    condition: ExplainNode
    episode: str | None
    threshold: str | None
    actions: list[Action] = field(default_factory=list)
    suppressed: list[Suppression] = field(default_factory=list)
    part: str | None = None  # "invoice i7 · step 10d": which part of a multi-part rule

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "kind": self.kind,
            "part": self.part,
            "matched": self.matched,
            "episode": self.episode,
            "threshold": self.threshold,
            "condition": self.condition.to_dict(),
            "actions": [a.model_dump(mode="json") for a in self.actions],
            "suppressed": [s.model_dump(mode="json") for s in self.suppressed],
        }


@dataclass
class Explanation:
    client_id: str
    as_of: datetime
    rules: list[RuleExplanation]
    note: str | None = None

    def __str__(self) -> str:
        out = [f"client {self.client_id} as of {self.as_of.isoformat()}"]
        if self.note:
            out.append(f"  {self.note}")
        for r in self.rules:
            verdict = "MATCHED" if r.matched else "not matched"
            extra = f", threshold {r.threshold}" if r.threshold else ""
            part = f" [{r.part}]" if r.part else ""
            out.append(f"rule {r.rule} ({r.kind}){part}: {verdict}{extra}")
            out.extend("  " + line for line in r.condition.lines())
            for a in r.actions:
                out.append(f"  -> {a.type}: {a.reason}  [key {a.key}]")
            for s in r.suppressed:
                out.append(f"  -> suppressed {s.action.type} ({s.reason_code}): {s.detail}")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "as_of": self.as_of.isoformat(),
            "note": self.note,
            "rules": [r.to_dict() for r in self.rules],
        }


class Engine:
    """Evaluates a rule set against a store. Create once, call `plan`/`explain` for any as_of."""

    def __init__(self, rules: RuleSet | str | Path | Mapping[str, Any], store: Store) -> None:
        self.rules = rules if isinstance(rules, RuleSet) else load_rules(rules)
        if not callable(getattr(store, "clients", None)):  # found now, not as an AttributeError in plan()
            raise ArgumentError(f"Engine needs a store, e.g. retainer.open_store(url, timezone=rules.timezone); "
                                f"got {store!r}")
        self.store = store

    @property
    def tz(self) -> Any:
        return self.rules.tz

    @cached_property
    def _ladders(self) -> dict[str, list[CompiledRule]]:
        """A ladder rule's steps (one compiled rule each), by rule id."""
        out: dict[str, list[CompiledRule]] = {}
        for r in self.rules.rules:
            if r.ladder is not None:
                out.setdefault(r.id, []).append(r)
        return out

    @cached_property
    def fixed_recipients(self) -> frozenset[str]:
        """Rules with a task or message for a manager named by id (`assignee: m1`), not a role: a dispatcher does
        not cancel those for a manager who left, since deciding them again gives them to the same one."""
        return frozenset(r.id for r in self.rules.rules for spec in r.then if _whom(spec) not in (None, *_ROLES))

    @cached_property
    def min_outstanding(self) -> dict[str, Decimal]:
        """Debtor rule id -> its `min_amount`: an invoice paid down below it is done with, for the steps
        committed before the payment too (a dispatcher and a session cancel them)."""
        return {r.id: r.min_amount for r in self.rules.file.rules
                if getattr(r, "kind", None) == "debtor" and r.min_amount > 0}  # type: ignore[attr-defined]  # fmt: skip

    @property
    def voiding(self) -> dict[str, Any]:
        """What a dispatcher needs of the rules to cancel an earlier run's action that must not go out now
        (`Dispatcher`'s keywords: `min_outstanding`, `fixed`, `no_marketing`)."""
        return {"min_outstanding": self.min_outstanding, "fixed": self.fixed_recipients,
                "no_marketing": self.rules.file.policies.no_marketing}  # fmt: skip

    def as_of(self, value: str | date | datetime) -> AsOf:
        if not isinstance(value, str | date):  # datetime is a date
            what = "is required" if value is None else f"is not {type(value).__name__} {value!r}"
            raise ArgumentError(f"as_of {what}: give a date (2026-03-01), a datetime or ISO 8601 text")
        try:
            return parse_as_of(value, self.rules.tz)
        except ValueError as exc:
            number = isinstance(value, str) and value.strip().isdigit() and len(value.strip()) > 8
            why = (
                str(exc) if isinstance(exc, DateRangeError)
                else "a bare number (a Unix timestamp?): use a date (2026-03-01) or ISO 8601 instant" if number
                else f"no such date or time ({exc})" if "out of range" in str(exc) or "must be in" in str(exc)
                else "use a date (2026-03-01) or ISO 8601 instant"
            )  # fmt: skip
            raise ArgumentError(f"invalid as_of {value!r}: {why}") from exc

    # ------------------------------------------------------------------ plan

    def plan(self, as_of: str | date | datetime, *, clients: Sequence[str] | None = None) -> Plan:
        """The actions due as of `as_of` (a date means the end of that day in the rules' time zone).

        Pure: reads the store, writes nothing. `clients` limits evaluation to those ids (used for
        incremental re-evaluation and explain); reassignment capacity still counts every client.
        """
        a = self.as_of(as_of)
        plan, _frame, _matches = self._plan(a, client_ids(clients))
        return plan

    def _plan(
        self, a: AsOf, ids: Sequence[str] | None, extra: Sequence[AggSpec] = (), *, duplicates: bool = True,
        internal: bool = False, late_facts: bool | Mapping[str, datetime] = True,
    ) -> tuple[Plan, FeatureFrame, list[_Match]]:
        """`extra`: aggregates the caller reads from the frame afterwards, fetched with the plan's own (a
        backtest's wake dates): one read per fact table instead of two. `duplicates=False`: the caller
        (a backtest) never reads the plan's duplicates, so matches whose every action is in the ledger
        are not built, unless a policy needs them (retention-first ranks against what is already due).
        `internal`: the ids are the caller's own choice (a backtest's woken clients), not a user's, so one
        not created yet is no typo to warn of. `late_facts`: whether a fact may be dated before a decision
        already in the ledger (True), or, from a backtest's sweep, when each client was last decided: a sweep
        reveals facts in time order, except a task, deal or invoice that appears with an activity dated before
        it (a task created on 18 February, done on 30 November), so only a match whose date is before its
        client's last decision is looked up again (`_same_silence` for every new match: 7 s of a year's sweep
        at 100k, for nothing)."""
        # one state of the facts for the whole plan, where the store can give it (`SQLiteStore.snapshot`)
        snapshot = getattr(self.store, "snapshot", None)
        with no_gc(), (snapshot() if snapshot is not None else contextlib.nullcontext()):
            return self._evaluate(a, ids, extra, duplicates, internal, late_facts)

    def _evaluate(
        self, a: AsOf, ids: Sequence[str] | None, extra: Sequence[AggSpec] = (), duplicates: bool = True,
        internal: bool = False, late_facts: bool | Mapping[str, datetime] = True,
    ) -> tuple[Plan, FeatureFrame, list[_Match]]:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        clients = self.store.clients(a.instant, ids)
        managers = {m.id: m for m in self.store.managers()}
        frame = FeatureFrame(self.rules.registry, self.store, a, clients, managers, ids)
        frame.prefetch(self.rules.features_needed(), [*policies.policy_aggs(self.rules.file.policies, a), *extra])
        timings["fetch"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        live = [c.status != "archived" for c in clients]
        matches: list[_Match] = []
        rule_stats: dict[str, dict[str, int]] = {}
        warnings: list[str] = []
        if ids is not None and not internal and len(clients) < len(wanted := set(ids)):  # a typo must not pass
            for cid in sorted(wanted - {c.id for c in clients}):
                later = self.store.get("clients", cid) is not None
                warnings.append(f"client {cid}: " + ("created after as_of; nothing planned" if later
                                                     else "no such client in the store; nothing planned"))
        for rule in self.rules.rules:
            st = rule_stats.setdefault(rule.id, {"matched": 0})
            if rule.subject == "manager" and ids is not None:
                continue  # a manager-level rule looks at every client's tasks: full plans only
            fr: FeatureFrame | SubFrame = (
                frame
                if rule.subject == "client"
                else invoice_frame(frame)
                if rule.subject == "invoice"
                else manager_frame(frame)
            )
            mask = rule.condition.mask(fr)
            problems: dict[int, str] = {}
            durs = rule.threshold.durations(fr, problems) if rule.threshold is not None else None
            episodes = fr.column(rule.episode) if rule.episode else None
            row_live = live if rule.subject == "client" else [c is None or c.status != "archived" for c in fr.clients]
            policy = fr.column("contact_policy") if rule.subject != "manager" else [None] * len(fr.ids)
            if rule.kind in ("forgotten", "release"):  # thresholds anchored on activity
                anchor = fr.column(rule.threshold.feature)
                st["no_anchor"] = sum(1 for i, v in enumerate(anchor) if v is None and live[i])
                bad = sorted(i for i in problems if live[i])
                st["bad_threshold"] = len(bad)
                warnings += [f"rule {rule.id}, client {clients[i].id}: {problems[i]}; skipped" for i in bad]
            for i in itertools.compress(range(len(mask)), mask):  # the rows that hold, picked out in C
                if not row_live[i]:
                    continue
                st["matched"] += 1
                if episodes is None:
                    ep = "once"
                elif type(v := episodes[i]) is str:  # an id (a dunning step's invoice) is its own spelling
                    ep = v
                else:
                    ep = _episode_text(v, a)
                client = fr.clients[i]
                about = managers[fr.ids[i]] if rule.subject == "manager" else None
                matches.append(
                    _Match(
                        rule,
                        i,
                        client,
                        ep + rule.suffix,
                        durs[i] if durs else None,
                        policies.do_not_contact(policy[i]),
                        fr,
                        client.id if client is not None else fr.ids[i],
                        about,
                    )
                )
        timings["evaluate"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        for m in matches:
            m.head = _key(m.rule.id, m.subject_id, m.episode, "")
            m.keys = [m.head + k for k in m.rule.key_kinds]
        # what earlier runs committed: those keys are duplicates, and a committed reassignment is not
        # re-decided (it would take capacity and advance round-robin for nothing)
        ledger = self.store.ledger_status(k for m in matches for k in m.keys)
        if late_facts:
            self._same_silence(matches, ledger, a, None if isinstance(late_facts, bool) else late_facts)
        movers = [m for m in matches if m.rule.reassign is not None and not m.blocked and m.client]
        self._decide_again(movers, matches, ledger)
        loads = self.store.manager_loads(a.instant)
        owners: dict[str, str] = {}
        pickers = [m.client for m in movers if m.head + "reassign" not in ledger and m.client]
        if pickers and not getattr(self.store, "carries_out_moves", False):  # a choice to make:
            # count the moves the CRM has not carried out where they go, and take a client released again
            # before the data shows its last move from the manager that move gave it to
            loads = loads_with_moves(self.store, loads, a.instant)
            owners = unapplied_moves(self.store, pickers, a.instant)
        reassigner = _Reassigner(managers, loads, self.store)
        given, refused, given_by = self._given(movers, matches, ledger, managers)
        for m in sorted(movers, key=lambda m: m.head):  # in key order
            spec = m.rule.reassign
            assert spec is not None and m.client is not None
            if m.head + "reassign" in ledger:
                m.new_manager = given.get(m.head + "reassign")
                # the release's other actions (held back that night) are about the move made then: from the
                # manager who lost the client, not from the one the data shows now (a note went a day late to
                # the new manager's supervisor, "reassigned from X to X")
                was = given_by.get(m.head + "reassign")
                m.owner = was if was is not None and was.id != m.client.manager_id else None
                continue
            current = owners.get(m.client.id, m.client.manager_id)
            m.owner = managers.get(current) if current != m.client.manager_id else None
            m.new_manager = reassigner.pick(m.rule.id, current, spec, m.passed_over)
            if m.new_manager is None:
                m.reassign_failed = f"{reassigner.why_none(current, spec)} ({spec.strategy})"

        # a client given to another manager in this plan: the other rules' tasks and messages for "the
        # manager" go to the new one (who now has to call), not to the one who just lost the client
        moved = {
            m.client.id: m.new_manager
            for m in matches
            if m.new_manager is not None and m.client is not None and not m.blocked
            and m.head + "reassign" not in refused
        }
        # and a client an earlier night gave away, which the CRM still shows with the old manager, is the
        # new one's whether or not the release rule still matches it (the client called meanwhile): read
        # for the clients with an action not yet in the ledger, so a night of duplicates reads nothing
        waiting = {m.client.id: m.client for m in matches
                   if m.client is not None and m.client.id not in moved and not _committed(m, ledger)}  # fmt: skip
        if waiting:
            for cid, to in unapplied_moves(self.store, waiting.values(), a.instant).items():
                if (new := managers.get(to)) is not None:
                    moved[cid] = new
        matches = self._ladders_due(matches, ledger, managers, moved)
        emit = matches
        if not duplicates and self.rules.file.policies.priority is None:
            emit = [m for m in matches if not _committed(m, ledger)]
        actions, suppressed = self._emit_all(emit, a, managers, ledger, moved, warnings)
        due = [s.action for s in suppressed if s.reason_code == policies.DUPLICATE]
        guard = policies.Guard(self.rules.file.policies, frame, self.store, a,
                               {r.id: r.age for r in self.rules.rules if r.age is not None})  # fmt: skip
        actions, held = guard.apply(actions, due)
        suppressed += held
        actions.sort(key=lambda x: x.key)
        suppressed.sort(key=lambda s: (s.action.key, s.reason_code))
        timings["actions"] = time.perf_counter() - t2

        by_rule = Counter(x.rule for x in actions)
        held_by_rule = Counter(s.action.rule for s in suppressed)
        for rid, st in rule_stats.items():
            st["actions"] = by_rule[rid]
            st["suppressed"] = held_by_rule[rid]
        stats = {
            "clients": len(clients),
            "clients_evaluated": sum(live),
            "rules": rule_stats,
            "actions": dict(sorted(Counter(x.type for x in actions).items())),
            "suppressed": dict(sorted(Counter(s.reason_code for s in suppressed).items())),
        }
        warnings += frame.warnings
        if getattr(self.store, "zone_defaulted", False) and _not_utc(a):
            warnings.append(
                f"the store was opened without a timezone, so times written without an offset were read as UTC, "
                f"while the rules count days in {self.rules.timezone}: open it with "
                f"open_store(url, timezone=rules.timezone) unless the data's times are UTC"
            )
        plan = Plan(
            a.instant.astimezone(a.tz),
            actions,
            suppressed,
            stats,
            timings,
            cursors=dict(reassigner.cursors),
            warnings=sorted(set(warnings)),
        )
        return plan, frame, matches

    def _ladders_due(
        self, matches: list[_Match], ledger: dict[str, Status], managers: dict[str, Manager],
        moved: Mapping[str, Manager],
    ) -> list[_Match]:  # fmt: skip
        """The dunning steps this plan sends or reports (`_resolve_ladders`), once it is known whom each
        action goes to: after the reassignments, so an escalation for a client given to another manager
        asks the new manager's supervisor, as the action itself will."""
        if not any(m.rule.ladder is not None for m in matches):
            return matches
        bosses: dict[str, Any] = {}
        targets: dict[int, list[tuple[int, str | None, str | None]]] = {}

        def sends(m: _Match) -> bool:
            if (t := targets.get(id(m.rule))) is None:
                t = targets[id(m.rule)] = [_target(spec, managers) for spec in m.rule.then]
            return _sends(t, _people(m, managers, moved, bosses)[4])

        top = _ladder_tops(matches, sends)
        later = _later_keys(top, self._ladders)
        if later:
            ledger.update(self.store.ledger_status(k for ks in later.values() for k in ks))
        return _resolve_ladders(matches, ledger, top, later)

    def _same_silence(
        self, matches: list[_Match], ledger: dict[str, Status], a: AsOf, decided: Mapping[str, datetime] | None = None
    ) -> None:
        """A fact logged late (a call of 15 December, synced in March) moves an episode's date to before the
        night that decided it. Read as a new episode, the same silence got a second task, and its client a
        second move, back to the manager who had forgotten it. So when the silence counted from the new date
        had already been reached, by the threshold of that night (kept in its evidence; the rule or the client's
        attribute may have changed since), as of an earlier decision of the rule for the client (another episode),
        the match is that decision's episode, and its actions are the ones already in the ledger. The silence
        is the threshold without a release's grace: a call that moves a release's day past the night it was
        made still leaves it the same silence. A late call that would have kept the client from being
        forgotten then (9 days before that night) starts a new episode: the silence since it is a new one.
        For rules of one part whose episode is the date their threshold counts from (forgotten, release,
        churned, repeat sale; not a win-back's steps), and only for a match with nothing in the ledger yet: a
        night of duplicates reads nothing."""
        parts = Counter(r.id for r in self.rules.rules)  # a process's steps share their rule's id and dates
        dated = {id(r) for r in self.rules.rules
                 if r.threshold is not None and r.episode == r.threshold.feature and parts[r.id] == 1}  # fmt: skip
        if not dated or not self.store.ledger(limit=1):  # a first night: 40,000 fresh clients, nothing before
            return
        fresh = [m for m in matches if id(m.rule) in dated and m.keys[0] not in ledger and m.threshold is not None
                 and m.client is not None
                 and (decided is None or _before(m, decided.get(m.subject_id), a))]  # fmt: skip
        if not fresh:
            return
        earlier: dict[tuple[str, str | None], list[LedgerEntry]] = {}
        for e in self.store.ledger(client_ids=sorted({m.subject_id for m in fresh})):
            earlier.setdefault((e.rule, e.client_id), []).append(e)
        redated = []
        for m in fresh:
            silence = m.rule.silence
            assert silence is not None and m.rule.threshold is not None
            now = silence.durations(m.frame)[m.i]
            anchor = m.frame.column(m.rule.episode)[m.i]
            found = None  # the last such decision, in commit order
            for e in earlier.get((m.rule.id, m.subject_id), ()):
                evidence = e.payload_fields.get("evidence", {})
                ep = evidence.get("episode")
                # the threshold of that night (the rule or the client's attribute may have changed since); a
                # release's is its forgotten rule's, then `+` the grace
                text = evidence.get("threshold")
                then = (as_duration(text.rsplit("+", 1)[0] if m.rule.threshold.plus is not None else text)
                        if isinstance(text, str) else None)  # fmt: skip
                if isinstance(ep, str) and ep != m.episode and OlderThan.held(AsOf(e.as_of, a.tz), anchor, then or now):
                    found = ep
            if found is not None:
                m.episode = found
                redated.append(m)
        self._next_attempt(redated, ledger, attempt=1)

    def _decide_again(self, movers: list[_Match], matches: list[_Match], ledger: dict[str, Status]) -> None:
        """A move that a run cancelled before it went out because its new manager had left since
        (`ledger.MANAGER_LEFT`) moved nobody: the client is still with the manager who forgot it, and would
        stay there until it was forgotten anew. So the release is decided again, as the next attempt of the
        same episode, with keys of its own (`...:2026-01-01#2:reassign`), and so are the client's tasks and
        messages cancelled with that move (the forgotten task it gave the new manager). A move the host
        cancelled stands, and so does one whose client the data shows with another manager since (moved by
        hand in the CRM: the data is the truth); the tasks and messages a run cancelled with such a move
        (`ledger.OWNER_CHANGED`) are decided again, for the manager the data shows: the client is still
        forgotten, and its new owner was never told."""
        cancellations = getattr(self.store, "cancellations", None)  # a store written for an earlier protocol
        if cancellations is None:
            return
        todo = [m for m in movers if ledger.get(m.head + "reassign") == "done"]  # a cancelled action is `done`
        while todo:
            codes = cancellations([m.head + "reassign" for m in todo])
            todo = [m for m in todo if codes.get(m.head + "reassign") == MANAGER_LEFT]
            if not todo:
                break
            # only while the data shows the manager the cancelled move took the client from, or the one it gave
            # the client to, who left: the CRM carried out a move whose answer was lost (a few entries)
            was = {e.key: (e.payload_fields.get("from_manager_id"), e.payload_fields.get("to_manager_id"))
                   for e in self.store.ledger(ids=[action_id(m.head + "reassign") for m in todo])}  # fmt: skip
            todo = [m for m in todo if m.client is not None and m.client.manager_id in was.get(m.head + "reassign", ())]
            for m in todo:  # carried out, to a manager who left: not back to the one who forgot the client either
                frm, to = was[m.head + "reassign"]
                m.passed_over = frm if m.client is not None and m.client.manager_id == to else None
            self._next_attempt(todo, ledger)
            todo = [m for m in todo if ledger.get(m.head + "reassign") == "done"]
        # a task, message or escalation a run cancelled because the manager it was for left (an active
        # supervisor above can take it: `Dispatcher._left`) or because the CRM gave its client to another manager
        # by hand, is decided again, for them; and the client's others cancelled with its move
        # Only what was cancelled goes again: the rule's e-mail delivered beside the cancelled task is not sent twice
        others = [m for m in matches if m.rule.reassign is None and any(ledger.get(k) == "done" for k in m.keys)]
        if others:
            codes = cancellations([k for m in others for k in m.keys if ledger.get(k) == "done"])
            again = (MANAGER_LEFT, OWNER_CHANGED)
            redo = [m for m in others if any(codes.get(k) in again for k in m.keys)]
            first = {id(m): list(m.keys) for m in redo}
            self._next_attempt(redo, ledger)
            for m in redo:
                for was, now in zip(first[id(m)], m.keys, strict=True):
                    if codes.get(was) not in again and was in ledger and now not in ledger:
                        ledger[now] = ledger[was]  # went out (or waits) under its first key: a duplicate

    def _next_attempt(self, ms: list[_Match], ledger: dict[str, Status], attempt: int | None = None) -> None:
        """The next decision of each match's episode (or decision `attempt`), with keys of its own, and their
        ledger status."""
        for m in ms:
            m.attempt = m.attempt + 1 if attempt is None else attempt
            m.head = _key(m.rule.id, m.subject_id, m.key_episode, "")
            m.keys = [m.head + k for k in m.rule.key_kinds]
        if ms:
            ledger.update(self.store.ledger_status(k for m in ms for k in m.keys))

    def _given(
        self, movers: list[_Match], matches: list[_Match], ledger: Mapping[str, str], managers: dict[str, Manager]
    ) -> tuple[dict[str, Manager], set[str], dict[str, Manager]]:
        """The managers that earlier runs gave these clients to, by reassign key, and the keys of those the
        CRM refused (dead) or that were cancelled, which moved nobody, or that the data has shown carried
        out (`ledger.carried_out`; the client may have been moved back by hand since): the data says who
        has the client. A committed reassignment stands: the client is the new manager's from then on, so
        the other rules' tasks and messages go to them on every later plan, as on the night it was decided
        (a re-run of that night must plan nothing new), whether or not the host has moved the client yet.
        Read only for clients with an action not yet in the ledger: a night of duplicates (29,000
        committed releases at 100k) reads none. The third mapping: the managers those moves took the
        clients from."""
        committed = [m for m in movers if m.head + "reassign" in ledger]
        if not committed:
            return {}, set(), {}
        fresh = {m.subject_id for m in matches if not _committed(m, ledger)}  # the client's, by any rule
        keys = [m.head + "reassign" for m in committed if m.subject_id in fresh]
        if not keys:
            return {}, set(), {}
        out: dict[str, Manager] = {}
        by: dict[str, Manager] = {}
        refused: set[str] = set()
        entries = self.store.ledger(ids=[action_id(k) for k in keys])
        changes = manager_changes(self.store, sorted({e.client_id for e in entries if e.client_id}))
        for e in entries:
            to = managers.get(e.payload_fields.get("to_manager_id") or "")
            if to is not None:
                out[e.key] = to
            if (was := managers.get(e.payload_fields.get("from_manager_id") or "")) is not None:
                by[e.key] = was
            if e.void or carried_out(e, changes):
                refused.add(e.key)
        return out, refused, by

    def _emit_all(
        self,
        matches: list[_Match],
        a: AsOf,
        managers: dict[str, Manager],
        ledger: Mapping[str, str],
        moved: Mapping[str, Manager],
        warnings: list[str],
    ) -> tuple[list[Action], list[Suppression]]:
        """Every match's actions, or why each is held back. Matches are taken one rule (and frame) at a
        time, so what a rule's actions share is prepared once (`_Prep`) and read from locals in the loop."""
        actions: list[Action] = []
        suppressed: list[Suppression] = []
        groups: dict[tuple[int, int], list[_Match]] = {}
        for m in matches:
            groups.setdefault((id(m.rule), id(m.frame)), []).append(m)
        tfile = self.rules.file.templates
        for ms in groups.values():
            prep = _Prep(ms[0].rule, ms[0].frame, a, tfile, managers)
            _emit_group(prep, ms, a, managers, ledger, moved, actions, suppressed, warnings)
        return actions, suppressed

    # ------------------------------------------------------------------ run

    def run(
        self,
        as_of: str | date | datetime,
        handlers: Handlers | None = None,
        *,
        dry_run: bool = False,
        retry: Retry | None = None,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> RunReport:
        """Plan, commit what is new to the ledger in ONE transaction, then deliver it.

        Keys already in the ledger are suppressed as `duplicate`, so re-running (the same night, or
        after a crash) never repeats an action. Delivery goes through `handlers` (one handler, or a
        mapping by action type with `"*"` for the rest) and also picks up actions an interrupted
        earlier run committed but did not deliver. Without handlers, actions stay `pending` for the
        host to fetch from the ledger. `dry_run` is `plan` (nothing is written). A second run on the
        same store at the same time fails at once with `StoreError`.
        """
        a = self.as_of(as_of)
        dispatcher = Dispatcher(self.store, handlers if handlers is not None else {}, retry=retry, clock=clock,
                                sleep=sleep, **self.voiding)  # fmt: skip
        ahead = ahead_of_the_clock(a, clock)  # said by the run, and by the dry run that previews it
        if dry_run:  # a preview: no lock, so it never blocks (or waits for) the nightly run
            preview = self._plan(a, None)[0]
            preview.warnings += [ahead] if ahead else []
            return RunReport(preview, None, [], None)
        refuse_after_tomorrow(a, clock)
        with self.store.run_lock(f"run as of {a.date}, started {clock().isoformat(timespec='seconds')}"):
            earlier = self.store.runs(limit=50, kind="run")  # a session's records are not runs: it takes no lock
            for r in earlier:  # we hold the lock, so a run still `committed` was killed after its commit
                if r.status == "committed":
                    self.store.finish_run(r.id, clock(), r.counts, status="interrupted")
            plan, _frame, _matches = self._plan(a, None)
            plan.warnings += [ahead] if ahead else []
            if earlier and earlier[0].as_of > a.instant:
                plan.warnings.append(
                    f"as_of {plan.as_of.isoformat()} is before the last run's ({earlier[0].as_of.isoformat()}): "
                    f"facts known since then may make this run's actions stale"
                )
            run = RunRecord(id=str(uuid.uuid4()), as_of=plan.as_of, rules_digest=self.rules.digest, started_at=clock())
            committed = dispatcher.patiently(self.store.commit_run, run, plan.actions, plan.cursors)
            if len(committed) != len(plan.actions):  # someone committed them between plan and commit
                fresh = {x.key for x in committed}
                late = [x for x in plan.actions if x.key not in fresh]
                plan.actions = committed
                late_dups = [policies.hold(x, policies.DUPLICATE, _dup("meanwhile")) for x in late]
                plan.suppressed = sorted([*plan.suppressed, *late_dups], key=lambda s: (s.action.key, s.reason_code))
            report = RunReport(plan, run, committed, dispatcher.dispatch_active(committed))
            done = dataclasses.replace(run, status="finished", finished_at=clock(), counts=report.counts())
            dispatcher.patiently(self.store.finish_run, run.id, done.finished_at, done.counts)
            report.run = done
            return report

    def replay(
        self,
        ids: Iterable[str] = (),
        *,
        dead: bool = False,
        handlers: Handlers | None = None,
        retry: Retry | None = None,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> tuple[list[str], DispatchReport | None]:
        """Give dead (or failed) actions another round of attempts; see `adapters.dispatch.replay`."""
        if isinstance(ids, str | bytes):  # one id would be replayed as one id per character
            raise ArgumentError(f"ids is a list of action ids, e.g. [{ids!r}], not a string")
        return _replay(self.store, ids, dead=dead, handlers=handlers, retry=retry, clock=clock, sleep=sleep,
                       **self.voiding)

    def record_outcome(
        self, action_id: str, outcome: Mapping[str, Any], *, clock: Callable[[], datetime] = utc_now
    ) -> LedgerEntry:
        """The host reports back what became of an action (`{"result": "completed"}`, a churn reason):
        stored with the action, which counts as `done` from then on."""
        if not isinstance(outcome, Mapping):
            raise RetainerError(f"an outcome is a mapping such as {{'result': 'completed'}}, not {outcome!r}")
        at = clock()
        if not isinstance(at, datetime) or at.utcoffset() is None:  # read as UTC by one store, local by another
            raise ArgumentError(f"clock must return a timezone-aware datetime, not {at!r}")
        return self.store.set_outcome(action_id, outcome, at)

    # ------------------------------------------------------------------ explain

    def explain(self, client_id: str, as_of: str | date | datetime, rule: str | None = None) -> Explanation:
        """Per rule: every condition with the client's value and whether it held, and the outcome."""
        (client_id,) = client_ids([client_id], "client_id") or ()
        a = self.as_of(as_of)
        rules = [r for r in self.rules.rules if rule is None or r.id == rule]
        if not rules:
            known = ", ".join(sorted({r.id for r in self.rules.rules}))
            raise ArgumentError(f"unknown rule {rule!r}; rules in this set: {known}")
        if rule is not None and rules[0].subject == "manager":  # an empty explanation read as "nothing to say"
            raise ArgumentError(
                f"rule {rule!r} is about managers ({rules[0].kind}), not about a client: its escalations in the "
                f"plan give the count in their reason and evidence; explain takes a client's rules"
            )
        plan, frame, _ = self._plan(a, [client_id])
        at = a.instant.astimezone(a.tz)
        if not frame.ids:
            exists = self.store.get("clients", client_id) is not None
            note = (
                "the client does not exist yet at this as_of (created later)"
                if exists
                else f"no such client in the store: {client_id!r}"
            )
            return Explanation(client_id, at, [], note)
        note = "archived clients get no actions" if frame.clients[0].status == "archived" else None
        out = []
        for r in rules:
            if r.subject == "manager":
                continue  # about managers, not this client
            fr: FeatureFrame | SubFrame = frame
            rows = [0]
            if r.subject == "invoice":
                fr = invoice_frame(frame)
                rows = list(range(len(fr.ids)))  # the partial frame holds this client's invoices only
                if not rows:
                    if not any(x.rule == r.id for x in out):  # once per rule, not per ladder step
                        node = ExplainNode("an invoice with money outstanding", False)
                        out.append(RuleExplanation(r.id, r.kind, False, node, None, None))
                    continue
            eps = [(_episode_text(fr.value(r.episode, k), a) if r.episode else "once") + r.suffix for k in rows]
            for k in rows:
                node = r.condition.explain(fr, k)
                dur = r.threshold.durations(fr)[k] if r.threshold else None
                ep = eps[k]
                prefix = _key(r.id, client_id, ep, "")
                # the episode's keys, and those of its later decisions (`#2`: a move cancelled as its manager left),
                # not another row's that only starts alike (invoice INV#2 for INV)
                later = re.compile(re.escape(prefix[:-1]) + r"(#\d+):").match

                def ours(key: str, prefix: str = prefix, ep: str = ep, later: Any = later, eps: Any = eps) -> bool:
                    return key.startswith(prefix) or ((m := later(key)) is not None and ep + m[1] not in eps)
                part = " · ".join(x for x in (f"invoice {fr.ids[k]}" if r.subject == "invoice" else None, r.part) if x)
                out.append(
                    RuleExplanation(
                        r.id,
                        r.kind,
                        node.held,
                        node,
                        ep if node.held else None,
                        str(dur) if dur else None,
                        [x for x in plan.actions if ours(x.key)],
                        [s for s in plan.suppressed if ours(s.action.key)],
                        part=part or None,
                    )
                )
        limit = self.rules.file.policies.manager_daily_task_limit
        return Explanation(client_id, at, out, _shared_note(note, out, limit))
