"""Hypothesis strategies: small random CRMs (rows as `store.add(**rows)` takes them) and rule sets.

Everything is dated around one fixed instant, `AS_OF` (the end of 2026-03-01 in UTC, which is what
`as_of="2026-03-01"` means for a UTC rule set), including facts after it. Instants are written in
several equivalent forms (aware datetimes in various zones, ISO text with an offset, plain dates) so
the stores' normalisation is exercised; `instant()` and `money()` read any of them back, which is
what the pure-Python reference aggregates in the contract suite work from.
"""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

AS_OF_TEXT = "2026-03-01"
AS_OF_DATE = date(2026, 3, 1)
AS_OF = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)

MANAGER_IDS = ["m1", "m2", "m3", "m4", "m5", "m6"]
TEAMS = ["north", "south"]
TAGS = ["key-account", "wholesale", "vip", "churned"]
TIMEZONES = ["UTC", "Europe/Moscow", "America/New_York"]

ENTITY_ORDER = ["managers", "clients", "touches", "tasks", "deals", "invoices", "offers", "contracts"]

# Equivalent ways of writing an instant: the stores must normalise every one of them to the same UTC value.
_ZONES = [UTC, timezone(timedelta(hours=3)), timezone(timedelta(hours=-5)), ZoneInfo("Europe/Moscow")]

# Odd-looking ids, so "sorted by id" is tested against string (not natural) order.
_ODD_IDS = ["c10", "c9", "C1", "a-1", "z_2", "0", "10", "ä", "Z"]


# ------------------------------------------------------------------ reading rows back (for references)


def instant(v: Any) -> datetime | None:
    """A row's timestamp as an aware UTC datetime (the stores' reading: a date is 00:00 UTC)."""
    if v is None or v == "":
        return None
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).astimezone(UTC)
    if isinstance(v, date):
        return datetime.combine(v, time(0), tzinfo=UTC)
    s = str(v)
    if len(s) == 10:
        return datetime.combine(date.fromisoformat(s), time(0), tzinfo=UTC)
    d = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).astimezone(UTC)


def money(v: Any) -> Decimal | None:
    if v is None or v == "":
        return None
    return Decimal(str(v))


# ------------------------------------------------------------------ scalar strategies


@st.composite
def utc_instants(draw: st.DrawFn, *, lo_days: int = -400, hi_days: int = 60,
                 after: datetime | None = None) -> datetime:
    """An instant around AS_OF (or strictly after `after`), biased to day and window boundaries."""
    if after is not None:
        secs = draw(st.one_of(st.sampled_from([1, 2, 60, 3600, 86_399, 86_400, 86_401]),
                              st.integers(1, 200 * 86_400)))
        return after + timedelta(seconds=secs)
    day = draw(st.one_of(st.sampled_from([0, -1, 1, -29, -30, -31, -59, -60, -61, -89, -90, -91, -180, -365]),
                         st.integers(lo_days, hi_days)))
    sec = draw(st.one_of(st.sampled_from([0, 1, 86_399, 86_398, 43_200]), st.integers(0, 86_399)))
    return datetime.combine(AS_OF_DATE + timedelta(days=day), time(0), tzinfo=UTC) + timedelta(seconds=sec)


@st.composite
def rendered(draw: st.DrawFn, t: datetime) -> Any:
    """`t` written in one of the equivalent forms a row may carry."""
    form = draw(st.sampled_from(["dt", "dt", "dt", "iso", "zulu"] + (["date"] if t.time() == time(0) else [])))
    if form == "dt":
        return t.astimezone(draw(st.sampled_from(_ZONES)))
    if form == "iso":
        return t.astimezone(draw(st.sampled_from(_ZONES[:3]))).isoformat()
    if form == "zulu":
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")
    return t.date()


def instants(**kw: Any) -> st.SearchStrategy[Any]:
    return utc_instants(**kw).flatmap(rendered)


def opt_instants(**kw: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), instants(**kw))


amounts = st.one_of(
    st.integers(0, 5000).map(Decimal),
    st.integers(0, 500_000).map(lambda n: Decimal(n).scaleb(-2)),
    st.integers(-10_000, 10**8).map(lambda n: Decimal(n).scaleb(-4)),
    st.sampled_from([Decimal("0"), Decimal("0.0001"), Decimal("100.50"), Decimal("1000")]),
)


@st.composite
def money_values(draw: st.DrawFn) -> Any:
    """An amount as a Decimal, an int, or text."""
    d = draw(amounts)
    form = draw(st.sampled_from(["dec", "dec", "str", "int"]))
    if form == "str":
        return str(d)
    if form == "int" and d == d.to_integral_value():
        return int(d)
    return d


opt_money = st.one_of(st.none(), money_values())


# ------------------------------------------------------------------ CRMs


@st.composite
def managers(draw: st.DrawFn, *, min_size: int = 2, max_size: int = 6) -> list[dict[str, Any]]:
    n = draw(st.integers(min_size, max_size))
    ids = MANAGER_IDS[:n]
    out = []
    for mid in ids:
        row: dict[str, Any] = {"id": mid, "name": f"Manager {mid}"}
        if draw(st.booleans()):
            row["active"] = draw(st.sampled_from([True, True, False]))
        sup = draw(st.one_of(st.none(), st.sampled_from(ids)))
        if sup is not None and sup != mid:
            row["supervisor_id"] = sup
        row["max_clients"] = draw(st.one_of(st.none(), st.none(), st.integers(0, 5)))
        row["team"] = draw(st.one_of(st.none(), st.sampled_from(TEAMS)))
        out.append(row)
    return out


client_ids = st.lists(st.one_of(st.sampled_from([f"c{i}" for i in range(1, 16)]), st.sampled_from(_ODD_IDS)),
                      min_size=1, max_size=15, unique=True)


@st.composite
def clients(draw: st.DrawFn, manager_ids: list[str], *, min_size: int = 1, max_size: int = 15,
            ids: list[str] | None = None, created: st.SearchStrategy[Any] | None = None,
            hour_attributes: bool = False) -> list[dict[str, Any]]:
    if ids is None:
        ids = draw(client_ids.filter(lambda xs: min_size <= len(xs) <= max_size))
    after_values = ["20d", "45d", "1mo", "P10D", "not-a-duration", ""]
    if hour_attributes:
        after_values += ["36h", "PT12H"]
    out = []
    for cid in ids:
        row: dict[str, Any] = {"id": cid, "manager_id": draw(st.sampled_from(manager_ids)), "name": f"Client {cid}"}
        if draw(st.integers(0, 3)):
            row["status"] = draw(st.sampled_from(["active", "active", "prospect", "archived"]))
        tags = draw(st.frozensets(st.sampled_from(TAGS), max_size=2))
        if tags:
            row["tags"] = draw(st.sampled_from([tags, sorted(tags), ";".join(sorted(tags))]))
        row["contact_policy"] = draw(st.sampled_from(["ok", "ok", "ok", "no_marketing", "do_not_contact"]))
        row["created_at"] = draw(created if created is not None else st.one_of(st.none(), instants(hi_days=5)))
        if draw(st.integers(0, 4)) == 0:
            row["attributes"] = {"forgotten_after": draw(st.sampled_from(after_values)), "n": 1}
        row["cost_to_serve"] = draw(st.one_of(st.none(), st.none(), money_values()))
        out.append(row)
    return out


def _touch(n: int, cid: str, at: Any, draw: st.DrawFn, t: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"t{n}", "client_id": cid, "at": at,
            "kind": draw(st.sampled_from(["call", "email", "meeting", "message", "sms", "comment", "document"])),
            "direction": draw(st.sampled_from(["inbound", "outbound", "outbound", "internal"])),
            "manager_id": draw(st.one_of(st.none(), st.sampled_from(MANAGER_IDS[:2]))),
            "channel": draw(st.one_of(st.none(), st.sampled_from(["phone", "email", "whatsapp", "SMS"])))}


def _task(n: int, cid: str, created: Any, draw: st.DrawFn, t: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"k{n}", "client_id": cid, "created_at": created,
            "due_at": draw(t["opt"]), "done_at": draw(t["opt"]),
            "status": draw(st.sampled_from(["open", "open", "done", "cancelled"])),
            "source": draw(st.sampled_from(["crm", "crm", "retainer"])),
            "kind": draw(st.one_of(st.none(), st.sampled_from(["call", "meeting"]))),
            "manager_id": draw(st.one_of(st.none(), st.sampled_from(MANAGER_IDS[:2])))}


def _deal(n: int, cid: str, created: Any, draw: st.DrawFn, t: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"d{n}", "client_id": cid, "created_at": created, "closed_at": draw(t["opt"]),
            "status": draw(st.sampled_from(["open", "won", "lost"])), "amount": draw(opt_money)}


def _invoice(n: int, cid: str, issued: Any, draw: st.DrawFn, t: dict[str, Any]) -> dict[str, Any]:
    amount = draw(money_values())
    paid_kind = draw(st.sampled_from(["unpaid", "full", "partial", "paid_later"]))  # an amount needs its date
    row = {"id": f"i{n}", "client_id": cid, "issued_at": issued, "due_at": draw(t["opt"]), "amount": amount}
    if paid_kind == "full":
        row["paid_at"] = draw(t["any"])
    elif paid_kind == "partial":
        row["paid_at"] = draw(t["any"])
        row["paid_amount"] = draw(money_values())
    elif paid_kind == "paid_later":
        row["paid_at"] = draw(t["later"])
        row["paid_amount"] = draw(opt_money)
    return row


def _offer(n: int, cid: str, made: Any, draw: st.DrawFn, t: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"o{n}", "client_id": cid, "made_at": made, "ends_at": draw(t["opt"]),
            "category": draw(st.sampled_from(["retention", "development", "service"])), "amount": draw(opt_money)}


def _contract(n: int, cid: str, starts: Any, draw: st.DrawFn, t: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"n{n}", "client_id": cid, "starts_at": starts, "ends_at": draw(t["opt"]),
            "monthly_amount": draw(opt_money)}


_FACTS = {"touches": _touch, "tasks": _task, "deals": _deal, "invoices": _invoice, "offers": _offer,
          "contracts": _contract}
_MAX_FACTS = {"touches": 25, "tasks": 12, "deals": 8, "invoices": 12, "offers": 5, "contracts": 5}
SPARSE = {"touches": 6, "tasks": 3, "deals": 2, "invoices": 3, "offers": 2, "contracts": 2}


@st.composite
def facts(draw: st.DrawFn, cids: list[str], *, after: datetime | None = None, id_prefix: str = "",
          sizes: dict[str, int] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Touches, tasks, deals, invoices, offers and contracts of `cids`. With `after`, every timestamp of
    every row is strictly after that instant (facts from the future)."""
    sizes = sizes or _MAX_FACTS
    if after is None:
        t = {"any": instants(), "opt": opt_instants(), "later": instants(lo_days=1, hi_days=60)}
        dated = t["any"]
        # rows without a creation date exist "forever" (deals, offers, contracts may leave it empty)
        maybe_dated = st.one_of(st.none(), dated)
    else:
        t = {"any": instants(after=after), "opt": opt_instants(after=after), "later": instants(after=after)}
        dated = maybe_dated = t["any"]
    out: dict[str, list[dict[str, Any]]] = {}
    for entity, make in _FACTS.items():
        k = draw(st.integers(0, sizes.get(entity, 0)))
        nums = draw(st.lists(st.integers(1, 999), min_size=k, max_size=k, unique=True))
        rows = []
        for n in nums:
            cid = draw(st.sampled_from(cids))
            first = draw(dated if entity in ("touches", "tasks", "invoices") else maybe_dated)
            row = make(n, cid, first, draw, t)
            row["id"] = id_prefix + row["id"]
            rows.append(row)
        out[entity] = rows
    return out


@st.composite
def crms(draw: st.DrawFn, *, min_managers: int = 2, max_managers: int = 6, min_clients: int = 1,
         max_clients: int = 15, hour_attributes: bool = False,
         sizes: dict[str, int] | None = None) -> dict[str, list[dict[str, Any]]]:
    """A small random CRM: rows per entity, as `store.add(**crm)` takes them. `sizes` caps the number of
    facts per entity (SPARSE leaves many clients forgotten, so releases happen)."""
    ms = draw(managers(min_size=min_managers, max_size=max_managers))
    cs = draw(clients([m["id"] for m in ms], min_size=min_clients, max_size=max_clients,
                      hour_attributes=hour_attributes))
    return {"managers": ms, "clients": cs, **draw(facts([c["id"] for c in cs], sizes=sizes))}


@st.composite
def future_facts(draw: st.DrawFn, crm: dict[str, list[dict[str, Any]]],
                 after: datetime) -> dict[str, list[dict[str, Any]]]:
    """Extra facts all dated strictly after `after`: for existing clients, and new clients created later
    (with facts of their own). Adding them must not change a plan as of `after`."""
    mids = [m["id"] for m in crm["managers"]]
    new_ids = draw(st.lists(st.sampled_from([f"new{i}" for i in range(1, 5)]), max_size=3, unique=True))
    new_clients = draw(clients(mids, ids=new_ids, created=instants(after=after))) if new_ids else []
    cids = [c["id"] for c in crm["clients"]] + new_ids
    small = {"touches": 6, "tasks": 4, "deals": 3, "invoices": 4, "offers": 2, "contracts": 2}
    return {"clients": new_clients, **draw(facts(cids, after=after, id_prefix="x", sizes=small))}


@st.composite
def dunning_crms(draw: st.DrawFn) -> dict[str, list[dict[str, Any]]]:
    """`crms()` (sparse) plus invoices issued and due before AS_OF that are still owed (unpaid, partly paid, or
    paid only after AS_OF), for a few clients, a do_not_contact one among them: what debtor and unpaid
    rules act on. Random invoices are seldom both overdue and owed by such a client (found by a test review)."""
    crm = draw(crms(sizes=SPARSE))
    cs = crm["clients"]
    debtors = draw(st.lists(st.sampled_from(range(len(cs))), min_size=1, max_size=4, unique=True))
    first = cs[debtors[0]]
    first["contact_policy"] = "do_not_contact"
    first["status"] = draw(st.sampled_from(["active", "prospect"]))
    rows = []
    for n, k in enumerate(debtors):
        for m in range(draw(st.integers(1, 2))):
            issued = datetime.combine(AS_OF_DATE - timedelta(days=draw(st.integers(2, 90))), time(0), tzinfo=UTC)
            issued += timedelta(seconds=draw(st.sampled_from([0, 36_000, 86_399])))
            amount = draw(st.sampled_from([Decimal("50"), Decimal("100"), Decimal("500.25"), Decimal("3000")]))
            row: dict[str, Any] = {"id": f"dun{n}-{m}", "client_id": cs[k]["id"], "issued_at": issued,
                                   "amount": amount}
            due = draw(st.one_of(st.none(), st.integers(0, 30)))
            row["due_at"] = None if due is None else issued + timedelta(days=due)
            paid = draw(st.sampled_from(["unpaid", "unpaid", "partial", "later"]))
            if paid == "partial":
                row["paid_at"], row["paid_amount"] = issued + timedelta(days=1), amount / 4
            elif paid == "later":
                row["paid_at"] = AS_OF + timedelta(seconds=draw(st.sampled_from([1, 86_400])))
            rows.append(row)
    crm["invoices"] = crm.get("invoices", []) + rows
    return crm


def shuffled(crm: dict[str, list[dict[str, Any]]], rnd: Any) -> dict[str, list[dict[str, Any]]]:
    """The same rows in another order, entities passed in another order too."""
    out = {}
    names = list(crm)
    rnd.shuffle(names)
    for e in names:
        rows = copy.deepcopy(crm[e])
        rnd.shuffle(rows)
        out[e] = rows
    return out


def load(store: Any, crm: dict[str, list[dict[str, Any]]]) -> Any:
    store.add(**{e: rows for e, rows in crm.items() if rows})
    return store


# ------------------------------------------------------------------ rule sets

_GENERIC_LEAVES = [
    {"revenue_90d": {"gte": 0}},
    {"revenue_90d": {"gte": 100}},
    {"revenue_90d": {"gt": "1000.5"}},
    {"outbound_30d": {"eq": 0}},
    {"outbound_30d": {"lte": 2}},
    {"overdue_amount": {"gt": 0}},
    {"overdue_amount": {"gte": 50}},
    {"has_future_task": True},
    {"has_future_task": {"eq": False}},
    {"days_since_last_invoice": {"gte": 30}},
    {"tags": {"contains": "vip"}},
    {"open_tasks_n": {"gte": 1}},
    {"paid_180d": {"gt": 0}},
    {"calls_30d": {"exists": True}},
    {"contract_progress": {"between": [0.3, 0.7]}},
    {"contract_progress": {"gt": 0.5}},
    {"contract_progress": {"lt": "0.25"}},
]

# Named features (not colliding with built-in names) that reach the virtual fields through the rules.
NAMED_FEATURES = {
    "open_tasks_n": {"count": "tasks", "where": {"is_open": True}},
    "paid_180d": {"sum": "invoices.paid_total", "within": "180d"},
    "calls_30d": {"count": "touches", "where": {"kind": "call", "direction": {"in": ["outbound", "inbound"]}},
                  "within": "30d"},
    "owed": {"sum": "invoices.outstanding"},
}


@st.composite
def conditions(draw: st.DrawFn, depth: int = 2) -> dict[str, Any]:
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return copy.deepcopy(draw(st.sampled_from(_GENERIC_LEAVES)))
    op = draw(st.sampled_from(["all", "all", "any", "not"]))
    if op == "not":
        return {"not": draw(conditions(depth - 1))}
    return {op: draw(st.lists(conditions(depth - 1), min_size=1, max_size=3))}


@st.composite
def generic_actions(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["create_task", "notify_client", "tag", "propose_offer", "create_deal",
                                 "start_process", "notify_manager", "escalate"]))
    if kind == "create_task":
        return {"create_task": {
            "title": draw(st.sampled_from(["Call {client.name}", "{client.name}: {revenue_90d} in 90 days, "
                                           "owes {overdue_amount}", "Open tasks {open_tasks_n}; owed {owed}"])),
            "due_in": draw(st.sampled_from(["1d", "3d", "1w", "1mo", "36h"])),
            "assignee": draw(st.sampled_from(["manager", "manager", "supervisor"]))}}
    if kind == "notify_client":
        return {"notify_client": {"channel": draw(st.sampled_from(["email", "sms"])), "template": "wake_up"}}
    if kind == "tag":
        return {"tag": draw(st.sampled_from(TAGS))}
    if kind == "propose_offer":
        return {"propose_offer": {"offer": "discount", "amount": draw(st.sampled_from([None, "100", "250.50"])),
                                  "deliver": draw(st.sampled_from(["outbound", "next_inbound"]))}}
    if kind == "create_deal":
        return {"create_deal": {"title": "Repeat sale to {client.name}"}}
    if kind == "start_process":
        return {"start_process": "winback"}
    if kind == "notify_manager":
        return {"notify_manager": {"to": draw(st.sampled_from(["manager", "supervisor"])), "template": "heads_up"}}
    return {"escalate": {}}


@st.composite
def rule_sets(draw: st.DrawFn, *, reassign: bool | None = None, timezones: list[str] | None = None,
              hour_thresholds: bool = False) -> dict[str, Any]:
    """A rule file (as a dict): forgotten (+ overrides), maybe release, maybe generic rules.

    `reassign=False` gives a rule set without any reassign action (release then notifies instead),
    `reassign=True` one whose release rule reassigns, None either.
    """
    tz = draw(st.sampled_from(timezones or TIMEZONES))
    fid = draw(st.sampled_from(["forgotten", "a-forgotten", "zz.forgotten"]))
    afters = ["1d", "10d", "30d", "45d", "60d", "2mo", "6w", "P20D", 90]
    if hour_thresholds:
        afters.append("36h")
    after = draw(st.sampled_from(afters))
    overrides = []
    for _ in range(draw(st.integers(0, 2))):
        when = draw(st.sampled_from([
            {"tags": {"contains": "key-account"}},
            {"tags": {"contains": "wholesale"}},
            {"manager_id": draw(st.sampled_from(MANAGER_IDS[:3]))},
            {"status": "prospect"},
            {"revenue_90d": {"gte": 100}},
        ]))
        o_after = draw(st.sampled_from(["5d", "30d", "90d", "1mo"] if after != "36h" else ["12h", "48h"]))
        overrides.append({"when": when, "after": o_after})
    forgotten: dict[str, Any] = {"id": fid, "kind": "forgotten", "after": after}
    if overrides:
        forgotten["overrides"] = overrides
    if draw(st.booleans()):
        forgotten["statuses"] = draw(st.sampled_from([["active"], ["active", "prospect"], ["prospect"]]))
    if draw(st.integers(0, 3)) == 0:
        forgotten["activity"] = draw(st.sampled_from([
            {"kinds": ["call", "meeting"]},
            {"directions": ["inbound"]},
            {"sources": ["touches", "invoices"], "directions": ["outbound", "inbound"]},
        ]))
    if draw(st.booleans()):
        forgotten["then"] = [{"create_task": {
            "title": draw(st.sampled_from(["No contact with {client.name} for {days_since_activity} days",
                                           "Call {client.name} ({manager.name}, {threshold})"])),
            "due_in": draw(st.sampled_from(["2d", "1w"]))}}]
    rules: list[dict[str, Any]] = [forgotten]

    if reassign is True or draw(st.booleans()):
        grace = draw(st.sampled_from(["0d", "3d", "14d", "1mo"] if after != "36h" else ["0d", "12h"]))
        release: dict[str, Any] = {"id": draw(st.sampled_from(["release", "b-release"])), "kind": "release",
                                   "forgotten_rule": fid, "grace": grace,
                                   "unless_future_task": draw(st.booleans())}
        if reassign is True or (reassign is None and draw(st.booleans())):
            spec: dict[str, Any] = {"strategy": draw(st.sampled_from(["least_loaded", "round_robin"]))}
            if draw(st.booleans()):
                spec["pool"] = draw(st.lists(st.sampled_from(MANAGER_IDS), min_size=1, max_size=4, unique=True))
            if draw(st.integers(0, 3)) == 0:
                spec["same_team"] = True
            then: list[dict[str, Any]] = [{"reassign": spec}]
            if draw(st.booleans()):
                then.append({"notify_manager": {"to": "supervisor", "template": "released"}})
            if then != [{"reassign": {"strategy": "least_loaded"}}] or draw(st.booleans()):
                release["then"] = then  # else: the default action, a least_loaded reassign
        else:
            release["then"] = [draw(st.sampled_from([
                {"notify_manager": {"to": "supervisor", "template": "released"}},
                {"escalate": {}},
                {"create_task": {"title": "Still forgotten: {client.name}", "assignee": "supervisor"}},
            ]))]
        rules.append(release)

    for k in range(draw(st.integers(0, 2))):
        g: dict[str, Any] = {"id": f"g{k}-{draw(st.sampled_from(['wake', 'dun', 'grow']))}",
                             "category": draw(st.sampled_from(["collection", "retention", "service", "development"])),
                             "when": draw(conditions()),
                             "then": draw(st.lists(generic_actions(), min_size=1, max_size=2))}
        episode = draw(st.sampled_from([None, "last_invoice_at", "last_activity_at", "overdue_amount"]))
        if episode:
            g["episode"] = episode
        rules.append(g)
    return {"version": 1, "timezone": tz, "features": copy.deepcopy(NAMED_FEATURES), "rules": rules}


def has_reassign(rules: dict[str, Any]) -> bool:
    for r in rules["rules"]:
        then = r.get("then")
        if then is None and r.get("kind") == "release":
            return True
        if then and any("reassign" in a for a in then):
            return True
    return False


# ------------------------------------------------------------------ every kind and policy (issue 5)

_KIND_RULES: dict[str, list[dict[str, Any]]] = {
    "churned": [
        {"id": "churned", "kind": "churned", "min_orders": 2, "lookback": "365d", "silence": "60d"},
        {"id": "churned", "kind": "churned", "min_orders": 2, "silence_factor": 2, "min_silence": "20d"},
    ],
    "winback": [
        {"id": "winback", "kind": "winback", "churned_rule": "churned", "min_revenue": 100,
         "on_outcome": {"price": [{"propose_offer": {"offer": "discount", "amount": 50}}]}},
        {"id": "winback", "kind": "winback", "churned_rule": "churned", "classes": ["A", "B"]},
    ],
    "unpaid": [{"id": "unpaid", "kind": "unpaid", "after": "7d"}, {"id": "unpaid", "kind": "unpaid", "after": "1d"}],
    "debtor": [
        {"id": "debtor", "kind": "debtor", "steps": [
            {"after": "1d", "notify_client": {"channel": "email", "template": "reminder"}},
            {"after": "10d", "notify_client": {"channel": "sms", "template": "reminder"}},
            {"after": "30d", "create_task": {"title": "Call about {invoice.id}"}},
            {"after": "60d", "escalate": {}}]},
        {"id": "debtor", "kind": "debtor", "min_amount": 100, "steps": [
            {"after": "3d", "notify_client": {"channel": "email", "template": "reminder"}}]},
    ],
    "escalate": [{"id": "esc", "kind": "escalate", "watch_rule": "FORGOTTEN", "after": "5d"},
                 {"id": "esc", "kind": "escalate", "forgotten_rule": "FORGOTTEN"}],
    "repeat_sale": [{"id": "repeat", "kind": "repeat_sale", "after": "90d"}],
    "overdue_tasks": [{"id": "overdue", "kind": "overdue_tasks", "count": 1, "after": "1d", "every": "day"}],
    "offer": [
        {"id": "offer", "category": "development", "when": {"revenue_90d": {"gte": 0}}, "episode": "client_id",
         "then": [{"propose_offer": {"offer": "upgrade", "amount": "100", "deliver": "outbound"}}]},
        {"id": "offer", "category": "development", "when": {"status": "active"}, "episode": "last_activity_at",
         "then": [{"propose_offer": {"offer": "upgrade", "amount": "30"}}, {"notify_client": {"template": "x"}}]},
        {"id": "offer", "category": "retention", "when": {"status": "active"},
         "then": [{"propose_offer": {"offer": "upgrade", "amount": "20", "deliver": "next_inbound"}}]},
    ],
}

CAPS = [
    {"category": "development", "limit": 1, "per": "60d", "window": "rolling"},
    {"category": "retention", "limit": 2, "per": "1mo", "window": "calendar"},
    {"channel": "any_outbound", "limit": 2, "per": "30d", "window": "rolling"},
    {"channel": "email", "limit": 1, "per": "1w", "window": "calendar"},
    {"channel": "sms", "limit": 0, "per": "1d", "window": "calendar"},
    {"channel": "any_outbound", "limit": 1, "per": "1mo", "window": "rolling"},  # months reach unevenly
]


@st.composite
def policy_sets(draw: st.DrawFn) -> dict[str, Any]:
    p: dict[str, Any] = {}
    if draw(st.integers(0, 3)):
        p["caps"] = draw(st.lists(st.sampled_from(CAPS), min_size=1, max_size=3, unique_by=lambda c: str(c)))
    if draw(st.booleans()):
        p["priority"] = draw(st.permutations(["collection", "retention", "service", "development"]))
    if draw(st.booleans()):
        p["spend_growth"] = {"max": draw(st.sampled_from(["20%", "0.5", "5%"])),
                             "window": draw(st.sampled_from(["90d", "1mo"])),
                             "allow_without_baseline": draw(st.booleans())}
    if draw(st.booleans()):
        p["cooloff"] = {"after": "offer_end", "for": draw(st.sampled_from(["30d", "1mo"])),
                        "blocks": draw(st.sampled_from([["development"], ["development", "retention"]]))}
    if draw(st.booleans()):
        p["no_development_for_unprofitable"] = {"window": "180d"}
    if draw(st.booleans()):
        p["manager_daily_task_limit"] = draw(st.integers(1, 3))
    if draw(st.integers(0, 4)) == 0:
        p["no_marketing"] = False
    return p


@st.composite
def full_rule_sets(draw: st.DrawFn, *, kinds: list[str] | None = None, policies: bool = True,
                   timezones: list[str] | None = None, reassign: bool | None = None,
                   per_client: bool = False, pressure: int = 0) -> dict[str, Any]:
    """`rule_sets()` plus a random choice of the other kinds and of every policy. `per_client` leaves out
    what depends on other clients (manager-level rules, the managers' daily task limit)."""
    rules = draw(rule_sets(timezones=timezones, reassign=reassign))
    fid = next(r["id"] for r in rules["rules"] if r.get("kind") == "forgotten")
    pool = sorted(k for k in _KIND_RULES if not (per_client and k == "overdue_tasks"))
    chosen = kinds if kinds is not None else draw(st.lists(st.sampled_from(pool), min_size=1, max_size=5, unique=True))
    for k in chosen:
        if k == "winback" and "churned" not in chosen:
            continue
        r = copy.deepcopy(draw(st.sampled_from(_KIND_RULES[k])))
        for key in ("watch_rule", "forgotten_rule"):
            if r.get(key) == "FORGOTTEN":
                r[key] = fid
        rules["rules"].append(r)
    rules["templates"] = {"x": {"body": "Hello {client.name}"}}
    for k in range(pressure):  # rules that want to contact everyone every day: caps and limits must bind
        cat = draw(st.sampled_from(["collection", "retention", "service", "development"]))
        action = draw(st.sampled_from([
            {"notify_client": {"channel": "email", "template": "x"}},
            {"notify_client": {"channel": "sms", "template": "x"}},
            {"propose_offer": {"offer": "o", "amount": draw(st.sampled_from(["1", "40", "500"])),
                               "deliver": draw(st.sampled_from(["outbound", "next_inbound"]))}},
            {"create_task": {"title": "Call {client.name}"}},
            {"create_deal": {}},
        ]))
        rules["rules"].append({"id": f"daily{k}", "category": cat, "when": {"status": {"ne": "archived"}},
                               "episode": "days_since_activity", "then": [action]})
    if policies:
        rules["policies"] = draw(policy_sets())
        if per_client:
            rules["policies"].pop("manager_daily_task_limit", None)
    return rules
