"""Guards applied after rules propose. Each held-back action becomes a `Suppression` with a code.

Reason codes are part of the public contract (DESIGN §4); extensions are documented in docs/.
Order: do_not_contact (in the engine, before anything is built), then no_marketing, unprofitable,
cooloff, priority, spend_growth, caps, manager_task_limit. An action is held back by the first
guard that stops it, and only actions that pass every guard use up a cap, a spend budget or a
manager's daily slots, so a suppressed action never crowds out another.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

from .actions import Action, Suppression
from .model import fast_model
from .stores.base import AggSpec, Pred
from .timeutil import AsOf, Duration

if TYPE_CHECKING:
    from .ledger import LedgerEntry
    from .rules.features import FeatureFrame
    from .rules.loader import RuleSet
    from .rules.schema import Cap, Policies
    from .stores.base import Store

DO_NOT_CONTACT: Final = "do_not_contact"
NO_MARKETING: Final = "no_marketing"
CAP: Final = "cap"
PRIORITY: Final = "priority"
SPEND_GROWTH: Final = "spend_growth"
COOLOFF: Final = "cooloff"
UNPROFITABLE: Final = "unprofitable"
NO_ELIGIBLE_MANAGER: Final = "no_eligible_manager"
MANAGER_TASK_LIMIT: Final = "manager_task_limit"
DUPLICATE: Final = "duplicate"
SUPERSEDED: Final = "superseded"  # a dunning step overtaken by a later one before it was ever sent
NO_RECIPIENT: Final = "no_recipient"  # extension: an escalation/task whose recipient does not exist

REASON_CODES: Final = (
    DO_NOT_CONTACT, NO_MARKETING, CAP, PRIORITY, SPEND_GROWTH, COOLOFF, UNPROFITABLE, NO_ELIGIBLE_MANAGER,
    MANAGER_TASK_LIMIT, DUPLICATE, SUPERSEDED, NO_RECIPIENT,
)

#: Actions that lead to a contact with the client: what caps, cool-off and profitability limit.
CONTACT_TYPES: Final = frozenset({"create_task", "notify_client", "propose_offer", "create_deal"})
#: Messages, offers and deals: what no_marketing and priority hold back (a task for the manager stays:
#: the manager decides what to say).
SELLING_TYPES: Final = frozenset({"notify_client", "propose_offer", "create_deal"})
MARKETING: Final = frozenset({"retention", "development"})
DEFAULT_ORDER: Final = ("collection", "retention", "service", "development")
_DEVELOPMENT: Final = frozenset({"development"})
_OFFER: Final = frozenset({"propose_offer"})
_TASK: Final = frozenset({"create_task"})


def do_not_contact(contact_policy: str | None) -> str | None:
    """Always on: a client who asked not to be contacted gets no action at all, internal ones included,
    because every action retainer plans (a task to call, a reassignment to a new manager who will
    call, an offer) exists to lead to a contact. Returns the detail when the client is blocked."""
    if contact_policy == "do_not_contact":
        return "the client's contact_policy is do_not_contact"
    return None


def policy_features(p: Policies) -> set[str]:
    """Client features the configured policies read (fetched with the plan's own)."""
    out: set[str] = set()
    if p.no_development_for_unprofitable is not None:
        out |= {f"profit_{p.no_development_for_unprofitable.window}", "cost_to_serve"}
    if p.spend_growth is not None:
        out.add(f"revenue_{p.spend_growth.window}")
    if p.cooloff is not None:
        out.add("last_offer_end_at")
    return out


def cap_since(cap: Cap, a: AsOf) -> datetime:
    """Exclusive lower bound of the cap's window: rolling = the last `per` up to as_of (as `within`),
    calendar = since the start of the current day, ISO week (Monday) or month in the rules' zone."""
    if cap.window == "rolling":
        return a.window_start(cap.per)
    return a.day_start(_period_start(cap, a.date)) - timedelta(seconds=1)


def _period_start(cap: Cap, d: date) -> date:
    return {"1d": d, "1w": d - timedelta(days=d.weekday()), "1mo": d.replace(day=1)}[cap.period() or ""]


def cap_until(cap: Cap, a: AsOf) -> datetime:
    """Exclusive upper bound of what counts against the cap: an earlier run stamped later than this plan
    (the nightly run's end of day, seen by a run in the afternoon or by a reactive session) sent its
    contacts already. Calendar: the end of the day, week or month; rolling: `per` after as_of."""
    if cap.window == "rolling":
        return a.window_end(cap.per)
    start = _period_start(cap, a.date)
    end = {"1d": start + timedelta(days=1), "1w": start + timedelta(days=7),
           "1mo": (start.replace(day=28) + timedelta(days=4)).replace(day=1)}[cap.period() or ""]  # fmt: skip
    return a.day_start(end)


def _touch_spec(cap: Cap, a: AsOf, carried: bool = False) -> AggSpec:
    """The client's outbound touches on the cap's channel in its window (their number); `carried`: the
    `action_id`s those of them name (the actions they carried out), one per touch."""
    where: tuple[Pred, ...] = (Pred("direction", "eq", "outbound"),)
    if cap.channel != "any_outbound":
        where += (Pred("medium", "eq", cap.channel),)
    if carried:
        return AggSpec("touches", "list", "action_id", where, "at", cap_since(cap, a))
    return AggSpec("touches", "count", None, where, "at", cap_since(cap, a))


def policy_aggs(p: Policies, a: AsOf) -> list[AggSpec]:
    """The store aggregates the policies read (outbound touches per channel cap), fetched with the plan's."""
    return [_touch_spec(c, a, carried) for c in p.caps if c.channel is not None for carried in (False, True)]


@dataclass
class _Past:
    """A committed action as the guards see it (the payload parsed once)."""

    client_id: str | None
    type: str
    category: str
    as_of: datetime
    id: str
    fields: dict[str, Any]

    @classmethod
    def of(cls, e: LedgerEntry) -> _Past:
        return cls(e.client_id, e.type, e.category, e.as_of, e.id, e.payload_fields)


def _spent(e: LedgerEntry) -> bool:
    """A committed action counts against caps and spend: cancelled before it went out, it used nothing up;
    cancelled after an attempt whose answer was lost (a timeout, a dropped connection), it may have reached the
    client (a second SMS that week did)."""
    return not (e.cancelled and e.attempts == 0)


def _capped(cap: Cap, type_: str, category: str, fields: dict[str, Any]) -> bool:
    if cap.category is not None:
        return category == cap.category and type_ in CONTACT_TYPES
    if cap.categories is not None and category not in cap.categories:
        return False
    if type_ == "notify_client":
        return cap.channel == "any_outbound" or fields.get("channel") == cap.channel
    if type_ == "propose_offer":
        return fields.get("deliver", "outbound") == "outbound" and cap.channel == "any_outbound"
    return False


def idle_caps(rules: RuleSet) -> list[str]:
    """Caps that can hold back none of the rule set's actions: an `any_outbound` cap over rules that only
    create tasks has no effect, and a rule author comparing "with and without caps" should hear so."""
    out = []
    for i, cap in enumerate(rules.file.policies.caps):
        if not any(_capped(cap, spec.type, r.category, {"channel": getattr(spec.params, "channel", None),
                                                          "deliver": getattr(spec.params, "deliver", None)})
                   for r in rules.rules for spec in r.then):  # fmt: skip
            scope = f"category {cap.category}" if cap.category else f"channel {cap.channel}"
            what = ("a category cap limits that category's tasks, messages and offers" if cap.category else
                    "a channel cap limits notify_client actions (and, for any_outbound, outbound offers), not tasks")
            out.append(f"policies.caps[{i}] ({scope}) can hold back none of these rules' actions: {what}")
    return out


def _fields(a: Action) -> dict[str, Any]:
    d = a.__dict__  # plain attribute reads: this runs once per planned action
    return {k: d.get(k) for k in ("channel", "deliver", "amount", "assignee_id")}


def hold(action: Action, code: str, detail: str) -> Suppression:
    """A held-back action, built without re-validating: a plan holds back up to hundreds of thousands."""
    return fast_model(Suppression, {"action": action, "reason_code": code, "detail": detail})  # type: ignore[no-any-return]


def ranks(p: Policies) -> dict[str, int]:
    """Category -> its place (0 first): the default order, with the categories `priority` names put in its
    order on the places they hold there. `[retention, development]` leaves collection first and service
    third (a list that left collection out used to put payment reminders after the up-sell)."""
    order = list(DEFAULT_ORDER)
    if p.priority:
        for place, c in zip(sorted(order.index(c) for c in p.priority), p.priority, strict=True):
            order[place] = c
    return {c: k for k, c in enumerate(order)}


def steady(p: Policies) -> Callable[[Suppression], bool]:
    """Whether a hold stays as it is from day to day while nothing about its client changes (no new fact,
    no rule's condition flipping by time): a backtest counts such holds again without planning the client.
    do_not_contact and no_marketing read the client's row. priority reads the client's own matches, unless
    a guard that runs before it and moves with time alone (unprofitable's window, cool-off's end) could hold
    the action first, or hold the action that outranks it (and see `fleeting`)."""
    timed: set[str] = set()
    if p.no_development_for_unprofitable is not None:
        timed |= _DEVELOPMENT
    if p.cooloff is not None:
        timed |= set(p.cooloff.blocks)
    rank = ranks(p)

    def ok(s: Suppression) -> bool:
        if s.reason_code in (DO_NOT_CONTACT, NO_MARKETING):
            return True
        if s.reason_code != PRIORITY:
            return False
        mine = rank.get(s.action.category, len(rank))
        return all(rank.get(c, len(rank)) > mine for c in timed)  # no timed category at its rank or above

    return ok


def _yields(x: Action) -> bool:
    """What priority holds back for a higher category: messages, offers and deals, and development's tasks."""
    return x.type in SELLING_TYPES or (x.category == "development" and x.type in CONTACT_TYPES)


def fleeting(p: Policies, actions: Sequence[Action], suppressed: Sequence[Suppression]) -> set[str | None]:
    """Clients whose priority hold can end with time alone: what outranks the held action is a message, an
    offer or a deal (new, or an earlier run's), which is history the day after it goes out. A task outranks
    until its outcome is reported."""
    if p.priority is None:
        return set()
    rank = ranks(p)
    listed = frozenset(p.priority)
    top: dict[str | None, int] = {}
    for x in itertools.chain(actions, (s.action for s in suppressed if s.reason_code == DUPLICATE)):
        if x.type in SELLING_TYPES and x.category in listed:
            top[x.client_id] = min(top.get(x.client_id, len(rank)), rank.get(x.category, len(rank)))
    return {s.action.client_id for s in suppressed if s.reason_code == PRIORITY
            and top.get(s.action.client_id, len(rank)) < rank.get(s.action.category, len(rank))}  # fmt: skip


class Guard:
    """The configured policies for one plan, with what they need to know about the past."""

    def __init__(
        self, p: Policies, frame: FeatureFrame, store: Store, a: AsOf, ages: Mapping[str, str] | None = None
    ) -> None:
        self.p = p
        self.ages = dict(ages or {})  # rule id -> the evidence (days) that tells its older episode (`_order`)
        self.frame = frame
        self.store = store
        self.a = a
        self.rank = ranks(p)
        self.row = {cid: i for i, cid in enumerate(frame.ids)}

    def _rank(self, x: Action) -> int:
        return self.rank.get(x.category, len(self.rank))

    def _order(self, x: Action) -> tuple[Any, ...]:
        """Who goes first for a cap or a manager's slots: higher priority, then the smaller rule id, then
        the older episode (the longest-forgotten client first; the invoice unpaid or overdue the longest,
        by its days, not by its id: the newest invoice took a manager's one slot every night), then the key."""
        age = self.ages.get(x.rule)
        if age is not None and isinstance(days := x.evidence.get(age), int):
            return (self._rank(x), x.rule, (0, -days), x.key)
        return (self._rank(x), x.rule, _episode_order(str(x.evidence.get("episode", ""))), x.key)

    def _value(self, name: str, client_id: str | None) -> Any:
        i = self.row.get(client_id) if client_id is not None else None
        return None if i is None else self.frame.value(name, i)

    def _crm_offers(self, since: datetime, ledger_ids: set[str], where: Sequence[Pred] = ()) -> list[Any]:
        """The CRM's own offers made after `since` that no committed action counted already: an offer that
        carries out a committed propose_offer (its id, or its `action_id`) is that action, counted once."""
        return [o for o in self.store.facts("offers", self.a.instant, where, self.frame._partial)
                if o.made_at is not None and o.made_at > since  # type: ignore[attr-defined]
                and o.id not in ledger_ids and o.action_id not in ledger_ids]  # type: ignore[attr-defined]  # fmt: skip

    def _past(
        self, since: datetime, until: datetime | None, types: Sequence[str] | None = None, everyone: bool = False
    ) -> list[_Past]:
        """Committed actions stamped after `since` and before `until` (None: any later stamp)."""
        ids = None if everyone else self.frame._partial
        return [
            _Past.of(e)
            for e in self.store.ledger(since=since, client_ids=ids, types=types)
            if since < e.as_of and (until is None or e.as_of < until) and _spent(e)
        ]

    # ---------------------------------------------------------------- the guards

    def apply(self, actions: list[Action], already: Sequence[Action] = ()) -> tuple[list[Action], list[Suppression]]:
        """`already`: actions due now that an earlier run committed (duplicates): a retention task sent
        this morning still outranks an up-sell this evening."""
        held: list[Suppression] = []
        self.already = list(already)
        # only caps, the daily task limit and spend growth hand out something scarce in order
        scarce = self.p.caps or self.p.manager_daily_task_limit or self.p.spend_growth
        todo = sorted(actions, key=self._order) if scarce else list(actions)
        for guard in (self._no_marketing, self._unprofitable, self._cooloff, self._priority):
            todo = guard(todo, held)
        # the scarce ones decide each action together: it takes a spend budget, a cap's slot and a
        # manager's slot only once it has passed all three (an offer held by a cap used to count against
        # the client's spend, and a task held by the daily limit used up a cap)
        budgets = [b for b in (self._spend_growth(todo), self._caps(), self._task_limit()) if b is not None]
        if not budgets:
            return todo, held
        by_type = {t: [b for b in budgets if t in b[1]] for b in budgets for t in b[1]}
        keep = []
        for x in todo:
            mine = by_type.get(x.type)
            if mine is None:  # a tag, a reassignment, a message to a manager: nothing scarce to take
                keep.append(x)
                continue
            for code, _types, check, _take in mine:
                if detail := check(x):
                    held.append(hold(x, code, detail))
                    break
            else:
                for _code, _types, _check, take in mine:
                    take(x)
                keep.append(x)
        return keep, held

    def _filter(
        self,
        todo: list[Action],
        held: list[Suppression],
        code: str,
        why: Any,
        types: frozenset[str],
        categories: frozenset[str] | set[str] | None = None,
    ) -> list[Action]:
        """`why(x)` is asked only of the `types` (and `categories`) the guard is about: the others always
        pass, and a full plan holds hundreds of thousands of actions."""
        keep = []
        for x in todo:
            if x.type in types and (categories is None or x.category in categories) and (detail := why(x)):
                held.append(hold(x, code, detail))
            else:
                keep.append(x)
        return keep

    def _no_marketing(self, todo: list[Action], held: list[Suppression]) -> list[Action]:
        if not self.p.no_marketing:
            return todo

        def why(x: Action) -> str | None:
            if self._value("contact_policy", x.client_id) == "no_marketing":
                return f"the client's contact_policy is no_marketing: no {x.category} {x.type.replace('_', ' ')}"
            return None

        return self._filter(todo, held, NO_MARKETING, why, SELLING_TYPES, MARKETING)

    def _unprofitable(self, todo: list[Action], held: list[Suppression]) -> list[Action]:
        u = self.p.no_development_for_unprofitable
        if u is None:
            return todo
        name = f"profit_{u.window}"

        def why(x: Action) -> str | None:
            profit = self._value(name, x.client_id)
            if profit is not None and profit < 0:
                return (f"{name} is {_money(profit)} (revenue minus cost_to_serve): "
                        "no development for unprofitable clients")
            return None

        return self._filter(todo, held, UNPROFITABLE, why, CONTACT_TYPES, _DEVELOPMENT)

    def _cooloff(self, todo: list[Action], held: list[Suppression]) -> list[Action]:
        c = self.p.cooloff
        if c is None:
            return todo
        blocks = set(c.blocks)

        def why(x: Action) -> str | None:
            end = self._value("last_offer_end_at", x.client_id)
            if end is None:
                return None
            ended = self.a.local_date(end)
            until = c.for_.add_to_date(ended) if not c.for_.is_hours else None
            if (until is not None and until > self.a.date) or (
                until is None and not self.a.is_older(end, c.for_)
            ):
                return f"an offer ended on {ended.isoformat()}: no {x.category} for {c.for_} after an offer ends"
            return None

        return self._filter(todo, held, COOLOFF, why, CONTACT_TYPES, blocks)

    def _priority(self, todo: list[Action], held: list[Suppression]) -> list[Action]:
        if self.p.priority is None:
            return todo
        listed = frozenset(self.p.priority)  # the others neither hold back nor are held back
        firsts: dict[str | None, tuple[tuple[Any, ...], Action]] = {}
        open_since = self._still_open(todo, listed)
        for x in itertools.chain(todo, (x for x in self.already if x.id in open_since)):  # the top contact first
            if x.type in CONTACT_TYPES and x.category in listed:
                k = self._order(x)
                first = firsts.get(x.client_id)
                if first is None or k < first[0]:
                    firsts[x.client_id] = (k, x)
        best = {cid: x for cid, (_, x) in firsts.items()}

        def why(x: Action) -> str | None:
            top = best.get(x.client_id)
            if top is None or self._rank(top) >= self._rank(x):
                return None
            if not _yields(x):
                return None
            what = f"{top.category} comes first: {top.rule}"
            if (since := open_since.get(top.id)) is None:
                return f"{what} plans a {top.type.replace('_', ' ')} for this client"
            return f"{what}'s {top.type.replace('_', ' ')} for this client, committed as of {since}, is still open"

        return self._filter(todo, held, PRIORITY, why, CONTACT_TYPES, listed)

    def _still_open(self, todo: list[Action], listed: frozenset[str]) -> dict[str, str]:
        """The committed contacts (duplicates) that still come first, by id, with the date they were planned
        for: not delivered yet (or dead), or a task nobody reported an outcome for, or a message delivered on
        as_of's day or later. A retention e-mail delivered a year ago, while its rule kept matching, held back every
        up-sell to the client for good. Read only for clients that have something priority could hold."""
        sellers = {x.client_id for x in todo if _yields(x)}
        mine = [x.id for x in self.already if x.client_id in sellers and x.type in CONTACT_TYPES
                and x.category in listed]  # fmt: skip
        today = self.a.day_start(self.a.date)
        return {
            e.id: self.a.local_date(e.as_of).isoformat()
            for e in (self.store.ledger(ids=mine) if mine else ())
            if e.outcome is None and (e.status != "done" or e.type == "create_task" or e.updated_at >= today)
        }

    def _spend_growth(self, todo: list[Action]) -> _Budget | None:
        g = self.p.spend_growth
        if g is None or not any(x.type == "propose_offer" for x in todo):
            return None
        since = self.a.window_start(g.window)
        pending: dict[str | None, Decimal] = defaultdict(Decimal)
        past = self._past(since, self.a.window_end(g.window), ["propose_offer"])
        for e in past:
            if e.fields.get("amount") is not None:
                pending[e.client_id] += Decimal(str(e.fields["amount"]))
        # and the offers the CRM holds, made within the window (a manager's own 2,000 offer, then the rule's
        # 2,000, was +40 %)
        for o in self._crm_offers(since, {e.id for e in past}):
            if o.amount is not None and o.amount > 0:
                pending[o.client_id] += o.amount
        name = f"revenue_{g.window}"
        later = self._later_windows(g.window, past)

        def amount_of(x: Action) -> Decimal | None:
            amount = getattr(x, "amount", None) if x.type == "propose_offer" else None
            return amount if amount is not None and amount > 0 else None

        def check(x: Action) -> str | None:
            amount = amount_of(x)
            if amount is None:
                return None
            base = self._value(name, x.client_id) or Decimal(0)
            if base <= 0:
                if g.allow_without_baseline:
                    return None
                return f"no spend within {g.window} to measure growth against (allow_without_baseline is off)"
            total = pending[x.client_id] + amount
            if total / base > g.max:
                already = f" plus {_money(pending[x.client_id])} offered earlier" if pending[x.client_id] else ""
                return (f"offer {_money(amount)}{already} would raise spend of {_money(base, exact=True)} within "
                        f"{g.window} by {_pct(total / base, above=g.max)}, more than {_pct(g.max)}")
            for at, base_at, offered in later.get(x.client_id, ()):  # a backfill: the later runs' windows too
                if base_at <= 0 and not g.allow_without_baseline:
                    return f"no spend within {g.window} as of {at.date()} to measure growth against"
                if base_at > 0 and (offered + amount) / base_at > g.max:
                    return (f"offer {_money(amount)} plus {_money(offered)} offered by the run as of {at.date()} would "
                            f"raise spend of {_money(base_at, exact=True)} within {g.window} of that run by "
                            f"{_pct((offered + amount) / base_at, above=g.max)}, more than {_pct(g.max)}")
            return None

        def take(x: Action) -> None:
            if (amount := amount_of(x)) is not None:
                pending[x.client_id] += amount
                for w in later.get(x.client_id, ()):
                    w[2] += amount

        return SPEND_GROWTH, _OFFER, check, take

    def _later_windows(self, window: Duration, past: list[_Past]) -> dict[str | None, list[list[Any]]]:
        """A backfill's offer also lands in the spend window of each later run that committed an offer for the
        client, measured against that window's own spend: client -> [[that run's as_of, its spend, what is
        offered within it]]. Counted against this plan's window only, two 150 offers two days apart passed
        against 2,000 of spend, while the later night's window held 1,000 of it (+30 %)."""
        ahead = [e for e in past if e.as_of > self.a.instant and e.fields.get("amount") is not None]
        out: dict[str | None, list[list[Any]]] = defaultdict(list)
        for t in sorted({e.as_of for e in ahead}):
            start = AsOf(t, self.a.tz).window_start(window)
            cids = sorted({e.client_id for e in ahead if e.as_of == t and e.client_id is not None})
            (spend,) = self.store.aggregate([AggSpec("invoices", "sum", "amount", (), "issued_at", start)], t, cids)
            for cid in cids:
                within = [e for e in past if e.client_id == cid and start < e.as_of <= t]
                offered = sum((Decimal(str(e.fields["amount"])) for e in within if e.fields.get("amount") is not None),
                              Decimal(0))  # fmt: skip
                out[cid].append([t, Decimal(spend.get(cid) or 0), offered])
        return out

    def _caps(self) -> _Budget | None:
        caps = self.p.caps
        if not caps:
            return None
        used: list[dict[str | None, int]] = [defaultdict(int) for _ in caps]
        earliest = min(cap_since(c, self.a) for c in caps)
        past = self._past(earliest, None)
        # the action ids the channel caps' touches name (the actions they carried out), and those actions, read
        # once for every cap: whenever each was planned
        named = {k: self.frame.agg(_touch_spec(c, self.a, carried=True)) for k, c in enumerate(caps) if c.channel}
        wanted = sorted({i for per in named.values() for ids in per.values() for i in ids})
        known = self.store.ledger(ids=wanted) if wanted else []
        for k, c in enumerate(caps):
            since, until = cap_since(c, self.a), cap_until(c, self.a)
            inside = [e for e in past if since < e.as_of < until]
            for e in inside:
                if _capped(c, e.type, e.category, e.fields):
                    used[k][e.client_id] += 1
            if c.channel is not None:
                for cid, n in self.frame.agg(_touch_spec(c, self.a)).items():
                    used[k][cid] += n
                # a touch that carried out a committed action is that action: taken off when the cap counts the
                # action in this window (counted once), or when the action is of a category the cap leaves out
                # (a payment reminder is no marketing contact), whenever it was planned. One naming anything else
                # counts ("N/A", another ledger's id, an e-mail planned before the window that went out in it):
                # any action_id used to hide a touch from the cap
                if named[k]:
                    off = {e.id for e in known if (c.categories is not None and e.category not in c.categories)
                           or (since < e.as_of < until and _spent(e) and _capped(c, e.type, e.category,
                                                                                  e.payload_fields))}  # fmt: skip
                    for cid, ids in named[k].items():
                        used[k][cid] -= sum(i in off for i in ids)
            else:
                # an offer the CRM made in the window for an action stamped before it counts here: the action
                # does not (with the ids of a longer cap's window, it counted nowhere)
                for o in self._crm_offers(since, {e.id for e in inside}, (Pred("category", "eq", c.category),)):
                    used[k][o.client_id] += 1
        hits: dict[tuple[Any, ...], list[int]] = {}  # the caps an action counts against depend on these alone
        last: list[list[int]] = [[]]  # the caps of the action just checked, for `take` (called right after)

        def check(x: Action) -> str | None:
            d = x.__dict__
            sig = (x.type, x.category, d.get("channel"), d.get("deliver"))
            hit = hits.get(sig)
            if hit is None:
                f = _fields(x)
                hit = hits[sig] = [k for k, c in enumerate(caps) if _capped(c, x.type, x.category, f)]
            last[0] = hit
            cid = x.client_id
            for k in hit:
                if used[k][cid] >= caps[k].limit:
                    return f"cap {caps[k].label()}: {used[k][cid]} already in the window for this client"
            return None

        def take(x: Action) -> None:
            for k in last[0]:
                used[k][x.client_id] += 1

        return CAP, CONTACT_TYPES, check, take

    def _task_limit(self) -> _Budget | None:
        limit = self.p.manager_daily_task_limit
        if limit is None:
            return None
        today = self.a.date
        since = self.a.day_start(today) - timedelta(seconds=1)
        used: dict[Any, int] = defaultdict(int)
        # the whole day's runs, a nightly one stamped at its end included
        for e in self._past(since, self.a.day_start(today + timedelta(days=1)), ["create_task"], everyone=True):
            used[e.fields.get("assignee_id")] += 1

        def check(x: Action) -> str | None:
            if x.type != "create_task":
                return None
            who = getattr(x, "assignee_id", None)
            if used[who] >= limit:
                return (f"manager {who} already has {used[who]} tasks from retainer for {today.isoformat()} "
                        f"(limit {limit}); planned again on the next run")
            return None

        def take(x: Action) -> None:
            if x.type == "create_task":
                used[getattr(x, "assignee_id", None)] += 1

        return MANAGER_TASK_LIMIT, _TASK, check, take


#: a scarce guard: its reason code, the action types it is about, why it holds an action back (None: it
#: passes), and what a passing action uses up
_Budget = tuple[str, frozenset[str], Callable[[Action], "str | None"], Callable[[Action], None]]
#: how an episode taken from a number is written (keys.episode_text: `100.5`, `-3`, never `1E+2`)
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


@lru_cache(maxsize=1 << 16)  # a plan sorts 300,000 actions by it, and their episodes repeat
def _episode_order(text: str) -> tuple[int, Any]:
    """The older episode first: a date (most episodes: the day the client went quiet, an invoice's date)
    the earlier; a number (`episode: days_since_activity`, an amount) the larger, as a number ("60" before
    "5", which text order had the other way round)."""
    if not _NUMBER.fullmatch(text):  # most are dates or ids: a failed Decimal() costs an exception each
        return (1, text)
    return (0, -Decimal(text))


def _money(v: Any, *, exact: bool = False) -> str:
    """Cents; `exact`: every digit when cents would round (a base of 999.9999 read as 1,000.00, and 20 %
    growth over it as "more than 20 %")."""
    d = Decimal(str(v))
    q = d.quantize(Decimal("0.01"))
    return f"{q:,}" if q == d or not exact else f"{d.normalize():,f}"


def _pct(v: Decimal, *, above: Decimal | None = None) -> str:
    """A percentage to 3 places, or to as many as it takes to show it is `above` a limit it exceeds (a
    ratio just over 20 % was written "20 %, more than 20 %")."""
    places = 3
    while True:
        shown = (v * 100).quantize(Decimal(1).scaleb(-places))
        if above is None or shown > above * 100 or places >= 12:
            return f"{shown.normalize():f} %"
        places += 3


def day_period(d: date, every: str) -> str:
    """The label of the day, ISO week or month containing `d` (one escalation per period)."""
    if every == "day":
        return d.isoformat()
    if every == "week":
        y, w, _ = d.isocalendar()
        return f"{y}-W{w:02d}"
    return f"{d.year}-{d.month:02d}"

