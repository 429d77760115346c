"""Policies over random CRMs and random sequences of nightly runs (issue 5): whatever the data, the rules
and the run dates, the guarantees hold in the ledger, where it matters."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import strategies as S
from conftest import engine_for, fresh
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from retainer.actions import Action
from retainer.policies import CONTACT_TYPES, SELLING_TYPES, cap_since, cap_until
from retainer.rules.schema import Cap
from retainer.timeutil import parse_duration

SETTINGS = settings(max_examples=50, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

Crm = dict[str, list[dict[str, Any]]]


@st.composite
def run_days(draw: st.DrawFn, gaps: tuple[int, ...] = (0, 1, 1, 3, 7, 20)) -> list[str]:
    """Increasing run dates around the CRM's as_of, sometimes the same day twice."""
    d = S.AS_OF_DATE - timedelta(days=draw(st.integers(0, 40)))
    out = []
    for _ in range(draw(st.integers(2, 6))):
        out.append(d.isoformat())
        d += timedelta(days=draw(st.sampled_from(gaps)))
    return out


def _capped(cap: dict[str, Any], a: Action) -> bool:
    if cap.get("category"):
        return a.category == cap["category"] and a.type in CONTACT_TYPES
    if a.type == "notify_client":
        return cap["channel"] == "any_outbound" or a.channel == cap["channel"]  # type: ignore[attr-defined]
    if a.type == "propose_offer":
        return a.deliver == "outbound" and cap["channel"] == "any_outbound"  # type: ignore[attr-defined]
    return False


def _prior(cap: dict[str, Any], crm: Crm, client: str, since: Any, until: Any) -> int:
    """What the CRM itself says happened in the window: outbound touches, or offers of the category."""
    n = 0
    if cap.get("channel"):
        for t in crm.get("touches", []):
            at = S.instant(t["at"])
            medium = t.get("channel") or t.get("kind") or "call"
            if t["client_id"] == client and t.get("direction") == "outbound" and since < at <= until and (
                    cap["channel"] == "any_outbound" or medium == cap["channel"]):
                n += 1
    else:
        for o in crm.get("offers", []):
            made = S.instant(o.get("made_at"))
            if o["client_id"] == client and o.get("category") == cap["category"] and made is not None \
                    and since < made <= until:
                n += 1
    return n


@SETTINGS
@given(crm=S.crms(), rules=st.integers(1, 4).flatmap(lambda n: S.full_rule_sets(pressure=n)), days=run_days(),
       backend=st.sampled_from(["memory", "sqlite"]))
def test_guarantees_hold_across_nightly_runs(crm: Crm, rules: dict[str, Any], days: list[str], backend: str) -> None:
    pol = rules.get("policies", {})
    clients = {c["id"]: c for c in crm["clients"]}
    with fresh(backend) as store:
        S.load(store, crm)
        engine = engine_for(rules, store)
        runs: list[tuple[Any, list[Action], Any]] = []
        for d in days:
            report = engine.run(d)
            runs.append((engine.as_of(d), report.committed, report.plan))
            for s in report.plan.suppressed:
                assert s.reason_code and s.detail
                event(f"held back: {s.reason_code}")
        ledger = store.ledger()
    keys = [e.key for e in ledger]
    assert len(keys) == len(set(keys)), "an action committed twice"
    for _a, xs, _p in runs:  # never anything for a do_not_contact client, sent or not
        for x in xs:
            assert clients.get(x.client_id or "", {}).get("contact_policy") != "do_not_contact", x
    # what a run cancelled before it went out (a reminder for an invoice the data shows paid since) never
    # reached the client: it uses up no cap and no task limit, and a later run may send what it held back
    # (found by a test review: counted here, it failed the guarantees on the unchanged code now and then)
    cancelled = {e.id for e in ledger if e.cancelled}
    runs = [(a, [x for x in xs if x.id not in cancelled], p) for a, xs, p in runs]
    committed = [(a, x) for a, xs, _ in runs for x in xs]

    for _a, x in committed:
        c = clients.get(x.client_id or "")
        if c is None:
            continue
        # never anything for a do_not_contact client, never marketing for a no_marketing one
        assert c.get("contact_policy") != "do_not_contact", x
        if pol.get("no_marketing", True) and c.get("contact_policy") == "no_marketing":
            assert not (x.type in SELLING_TYPES and x.category in ("retention", "development")), x

    # caps are never exceeded: a run adds capped actions only while the window has room
    for k, cap in enumerate(pol.get("caps", [])):
        model = Cap.model_validate(cap)
        for r, (a, xs, _p) in enumerate(runs):
            since = cap_since(model, a)
            before = [x for b, ys, _ in runs[:r] for x in ys]
            for cid in {x.client_id for x in xs if _capped(cap, x)}:
                earlier = sum(1 for x in before
                              if x.client_id == cid and _capped(cap, x) and since < x.as_of <= a.instant)
                room = max(0, cap["limit"] - earlier - _prior(cap, crm, cid, since, a.instant))
                new = sum(1 for x in xs if x.client_id == cid and _capped(cap, x))
                assert new <= room, (k, cap, a.date, cid, new, room)

    # no committed offer takes a client's spend up by more than the cap
    sg = pol.get("spend_growth")
    if sg:
        mx = Decimal(str(sg["max"]).rstrip("%")) / (100 if str(sg["max"]).endswith("%") else 1)
        for r, (a, xs, _p) in enumerate(runs):
            for x in xs:
                if x.type != "propose_offer" or not x.amount:  # type: ignore[attr-defined]
                    continue
                since = a.window_start(parse_duration(sg["window"]))
                offered = sum((y.amount for _, ys, _p in runs[: r + 1] for y in ys  # type: ignore[attr-defined]
                               if y.type == "propose_offer" and y.client_id == x.client_id and y.amount
                               and since < y.as_of <= a.instant), Decimal(0))
                base = sum((S.money(i["amount"]) for i in crm.get("invoices", [])
                            if i["client_id"] == x.client_id and S.instant(i["issued_at"]) is not None
                            and since < S.instant(i["issued_at"]) <= a.instant), Decimal(0))
                if base > 0:
                    assert offered / base <= mx, (x, offered, base)
                else:
                    assert sg["allow_without_baseline"], x

    # retention before development: with priority on, a plan never gives one client both
    if pol.get("priority"):
        rank = {c: i for i, c in enumerate(pol["priority"])}
        for _a, _xs, plan in runs:
            by_client: dict[Any, list[Action]] = defaultdict(list)
            for x in plan.actions:
                if x.type in CONTACT_TYPES:
                    by_client[x.client_id].append(x)
            for xs in by_client.values():
                top = min(rank[x.category] for x in xs)
                for x in xs:
                    if rank[x.category] > top:
                        assert x.type == "create_task" and x.category != "development", (x, xs)

    # the managers' daily task limit holds per local day, across runs of the same day
    limit = pol.get("manager_daily_task_limit")
    if limit is not None:
        per_day: dict[tuple[Any, Any], int] = defaultdict(int)
        for a, x in committed:
            if x.type == "create_task":
                per_day[(a.date, x.assignee_id)] += 1  # type: ignore[attr-defined]
        assert all(n <= limit for n in per_day.values()), per_day


@SETTINGS
@given(days=st.lists(st.dates(date(2026, 1, 1), date(2026, 7, 31)), min_size=2, max_size=7, unique=True),
       per=st.sampled_from(["1mo", "2mo", "30d", "7d", "1w", "1d", "36h"]),
       window=st.sampled_from(["rolling", "calendar"]), limit=st.integers(1, 2),
       spend=st.sampled_from(["1mo", "30d", "2mo"]))
# found by this property: the backfill of 1 March measured its offer against its own window's 2,000 of spend,
# and 3 March's window, holding 1,000, then held both offers (+30 %)
@example(days=[date(2026, 3, 3), date(2026, 3, 1)], per="1mo", window="rolling", limit=1, spend="30d")
def test_caps_and_spend_hold_whatever_order_the_nights_run_in(
    days: list[date], per: str, window: str, limit: int, spend: str
) -> None:
    """A backfill (a night run after later ones) counts what they committed as far ahead as its window reaches,
    as they would have counted it in date order: no window ever holds more than the cap, and no window's
    offers more than the spend growth allows, whichever run came first (found by a property test: a month
    was counted 28 days ahead of 5 March, not 31)."""
    if window == "calendar" and per not in ("1d", "1w", "1mo"):
        per = "1mo"
    cap = {"channel": "email", "limit": limit, "per": per, "window": window}
    rules = {"version": 1, "policies": {"caps": [cap], "spend_growth": {"max": "20%", "window": spend}},
             "rules": [{"id": "mail", "category": "development", "when": {"status": "active"},
                        "episode": "days_since_activity",
                        "then": [{"notify_client": {"channel": "email", "template": "news"}},
                                 {"propose_offer": {"offer": "up", "amount": "150", "deliver": "next_inbound"}}]}]}
    with fresh() as store:
        store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"}],
                  invoices=[{"id": f"i{m}", "client_id": "c1", "issued_at": f"2026-{m:02}-01", "amount": "1000",
                             "paid_at": f"2026-{m:02}-01"} for m in range(1, 9)])  # fmt: skip
        engine = engine_for(rules, store)
        for d in days:
            engine.run(d.isoformat())
        ledger = [e for e in store.ledger() if not e.cancelled]
    model = Cap.model_validate(cap)
    sent = sorted(e.as_of for e in ledger if e.type == "notify_client")
    offers = sorted(e.as_of for e in ledger if e.type == "propose_offer")
    window_of = parse_duration(spend)
    for at in sent:  # every window that ends at (or, calendar, holds) a contact
        a = engine.as_of(at)
        since, until = cap_since(model, a), (a.instant if window == "rolling" else cap_until(model, a))
        assert sum(1 for b in sent if since < b <= until) <= limit, (cap, a.date, [b.date() for b in sent])
    for at in offers:  # 150 on the 1,000 invoiced each month: one offer per window within +20 %
        a = engine.as_of(at)
        since = a.window_start(window_of)
        base = 1000 * sum(1 for m in range(1, 9) if since < datetime(2026, m, 1, tzinfo=UTC) <= a.instant)
        offered = 150 * sum(1 for b in offers if since < b <= a.instant)
        assert offered <= base * Decimal("0.2"), (spend, a.date, [b.date() for b in offers])


@SETTINGS
@given(crm=S.crms(), rules=st.integers(0, 3).flatmap(lambda n: S.full_rule_sets(pressure=n)), days=run_days())
def test_a_rerun_of_the_same_night_commits_nothing_new(crm: Crm, rules: dict[str, Any], days: list[str]) -> None:
    with fresh() as store:
        S.load(store, crm)
        engine = engine_for(rules, store)
        for d in days:
            engine.run(d)
        again = engine.run(days[-1])
        # what was held back the first time (a cap, priority, a manager's full day) is held back again
        assert not again.committed, [x.key for x in again.committed]
