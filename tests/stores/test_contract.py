"""The Store contract (DESIGN §6): one suite, run against every backend through the `store` / `backend`
fixtures of tests/conftest.py. A new backend is done when this file passes for it.

Hypothesis tests open a fresh store per example (`fresh(backend)`), since a fixture's store would
carry the rows of earlier examples. Aggregates are checked against a pure-Python reference computed
directly from the generated rows (not from either store), so the reference memory store is tested too.
"""

from __future__ import annotations

import itertools
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import strategies as S
from conftest import fresh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retainer
from retainer import DataError
from retainer.model import ENTITIES, Client, Invoice, Manager, Touch
from retainer.stores import AggSpec, Pred, Store
from retainer.stores.base import TIME_FIELDS

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])



def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


BASE = {
    "managers": [{"id": "m1", "name": "Anna", "max_clients": 3, "team": "north"},
                 {"id": "m2", "active": False, "supervisor_id": "m1"}],
    "clients": [{"id": "c1", "manager_id": "m1", "name": "Acme", "tags": ["vip", "key-account"],
                 "created_at": "2025-01-01T10:00:00+03:00", "attributes": {"forgotten_after": "30d"},
                 "cost_to_serve": "12.50"},
                {"id": "c2", "manager_id": "m2", "status": "archived", "contact_policy": "do_not_contact"}],
    "touches": [{"id": "t1", "client_id": "c1", "at": "2026-02-01T09:00:00Z", "kind": "email",
                 "direction": "inbound"}],
    "invoices": [{"id": "i1", "client_id": "c1", "issued_at": "2026-01-10", "amount": "100.25",
                  "paid_at": "2026-01-20", "paid_amount": 40}],
}


def counts(store: Store) -> dict[str, int]:
    return {e: store.count(e) for e in ENTITIES}


def snapshot(store: Store) -> dict[str, list[Any]]:
    return {e: [m.model_dump() for m in store.iter(e)] for e in ENTITIES}


# ------------------------------------------------------------------ facts round-trip


@SETTINGS
@given(crm=S.crms())
def test_facts_round_trip(backend: str, crm: dict[str, list[dict[str, Any]]]) -> None:
    with fresh(backend) as s:
        added = s.add(**crm)
        for entity, rows in crm.items():
            assert added.get(entity, 0) == len(rows)
            expected = sorted((ENTITIES[entity].model_validate(r) for r in rows), key=lambda m: m.id)
            got = list(s.iter(entity))
            assert [m.id for m in got] == sorted(m.id for m in got), f"{entity}: iter not sorted by id"
            assert got == expected
            assert [m.model_dump() for m in got] == [m.model_dump() for m in expected]
            assert s.count(entity) == len(rows)
            for m in expected:
                back = s.get(entity, m.id)
                assert back == m
                assert type(back) is type(m)
            assert s.get(entity, "no-such-id") is None
        for m in s.iter("invoices"):
            assert isinstance(m, Invoice)
            assert isinstance(m.amount, Decimal)
            assert m.issued_at.utcoffset() == timedelta(0)
        assert s.managers() == list(s.iter("managers"))


def test_models_round_trip_as_models(store: Store) -> None:
    m = Manager(id="m1", max_clients=0)
    c = Client(id="c1", manager_id="m1", tags=frozenset({"a", "b"}), attributes={"x": [1, "y"], "n": None})
    t = Touch(id="t1", client_id="c1", at=datetime(2026, 1, 1, 12, 30, 15, tzinfo=UTC))
    store.add(managers=[m], clients=[c], touches=[t])
    assert store.get("managers", "m1") == m
    assert store.get("clients", "c1") == c
    assert store.get("touches", "t1") == t
    assert store.get("managers", "m1").max_clients == 0  # 0 = no clients at all, not "unlimited"


def test_a_writable_store_says_it_is_not_read_only(store: Store) -> None:
    """operations.md tells hosts to read `store.read_only`: a memory store had no such attribute, so host code
    written against SQLite failed its unit tests on memory://."""
    assert store.read_only is None


def test_unknown_entity_is_a_data_error(store: Store) -> None:
    with pytest.raises(DataError):
        store.add(widgets=[{"id": "w1"}])
    with pytest.raises(DataError):
        store.iter("widgets")
    with pytest.raises(DataError):
        store.get("widgets", "w1")


def test_iter_sorted_by_id_whatever_the_insertion_order(store: Store) -> None:
    ids = ["m9", "m10", "M1", "a", "0", "ä", "m1"]
    store.add(managers=[{"id": i} for i in ids])
    assert [m.id for m in store.iter("managers")] == sorted(ids)
    assert [m.id for m in store.managers()] == sorted(ids)


# ------------------------------------------------------------------ upsert


def test_upsert_replaces(store: Store) -> None:
    store.add(**BASE)
    n = counts(store)
    store.upsert(clients=[{"id": "c1", "manager_id": "m2", "name": "Acme 2", "status": "prospect"}],
                 invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-01-11", "amount": 7}],
                 touches=[{"id": "t2", "client_id": "c2", "at": "2026-02-02T00:00:00Z"}])
    c1 = store.get("clients", "c1")
    assert c1 == Client(id="c1", manager_id="m2", name="Acme 2", status="prospect")
    assert c1.tags == frozenset() and c1.attributes == {} and c1.created_at is None  # replaced, not merged
    assert store.get("invoices", "i1") == Invoice(id="i1", client_id="c1", issued_at=ts("2026-01-11T00:00:00"),
                                                  amount=Decimal(7))
    assert store.count("clients") == n["clients"]
    assert store.count("invoices") == n["invoices"]
    assert store.count("touches") == n["touches"] + 1


def test_upsert_still_validates_and_checks_references(store: Store) -> None:
    store.add(**BASE)
    before = snapshot(store)
    with pytest.raises(DataError) as ei:
        store.upsert(clients=[{"id": "c1", "manager_id": "nobody"}])
    assert ei.value.entity == "clients" and ei.value.field == "manager_id"
    with pytest.raises(DataError):
        store.upsert(clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c1", "manager_id": "m2"}])
    assert snapshot(store) == before


# ------------------------------------------------------------------ add errors


def test_add_existing_id_raises_naming_entity_id_field(store: Store) -> None:
    store.add(**BASE)
    before = snapshot(store)
    with pytest.raises(DataError) as ei:
        store.add(clients=[{"id": "c3", "manager_id": "m1"}, {"id": "c1", "manager_id": "m2", "name": "Other"}])
    err = ei.value
    assert (err.entity, err.id, err.field) == ("clients", "c1", "id")
    assert err.row == 1
    text = str(err)
    assert "clients" in text and "c1" in text and "id" in text
    assert snapshot(store) == before  # c3 was not written either


def test_add_existing_fact_id_raises(store: Store) -> None:
    store.add(**BASE)
    with pytest.raises(DataError) as ei:
        store.add(touches=[{"id": "t1", "client_id": "c1", "at": "2026-02-03"}])
    assert (ei.value.entity, ei.value.id, ei.value.field) == ("touches", "t1", "id")
    assert store.get("touches", "t1").kind == "email"


GOOD = {
    "managers": [{"id": "m7"}],
    "clients": [{"id": "c7", "manager_id": "m7"}],
    "touches": [{"id": "t7", "client_id": "c7", "at": "2026-01-01"}],
    "tasks": [{"id": "k7", "client_id": "c7", "created_at": "2026-01-01"}],
    "deals": [{"id": "d7", "client_id": "c7"}],
    "invoices": [{"id": "i7", "client_id": "c7", "issued_at": "2026-01-01", "amount": 1}],
    "offers": [{"id": "o7", "client_id": "c7"}],
    "contracts": [{"id": "n7", "client_id": "c7"}],
}

# (entity, bad row, expected field, expected id): each bad row is sent along with GOOD rows of every entity
BAD_ROWS = [
    ("clients", {"id": "c8", "manager_id": "m7", "status": "sleeping"}, "status", "c8"),
    ("clients", {"id": "c8", "manager_id": "m7", "contact_policy": "never"}, "contact_policy", "c8"),
    ("clients", {"id": "c8"}, "manager_id", "c8"),
    ("clients", {"id": "c8", "manager_id": "nobody"}, "manager_id", "c8"),
    ("clients", {"id": "c8", "manager_id": "m7", "colour": "red"}, "colour", "c8"),
    ("managers", {"id": "m8", "max_clients": -1}, "max_clients", "m8"),
    ("managers", {"id": ""}, "id", None),
    ("touches", {"id": "t8", "client_id": "c7"}, "at", "t8"),
    ("touches", {"id": "t8", "client_id": "c7", "at": "yesterday"}, "at", "t8"),
    ("touches", {"id": "t8", "client_id": "c7", "at": "2026-01-01", "kind": "telepathy"}, "kind", "t8"),
    ("touches", {"id": "t8", "client_id": "ghost", "at": "2026-01-01"}, "client_id", "t8"),
    ("tasks", {"id": "k8", "client_id": "c7", "created_at": "2026-01-01", "status": "maybe"}, "status", "k8"),
    ("tasks", {"id": "k8", "client_id": "ghost", "created_at": "2026-01-01"}, "client_id", "k8"),
    ("deals", {"id": "d8", "client_id": "c7", "amount": "lots"}, "amount", "d8"),
    ("invoices", {"id": "i8", "client_id": "c7", "issued_at": "2026-01-01", "amount": "1.00001"}, "amount", "i8"),
    ("invoices", {"id": "i8", "client_id": "c7", "issued_at": "2026-01-01"}, "amount", "i8"),
    ("invoices", {"id": "i8", "client_id": "c7", "issued_at": "2026-01-01", "amount": "NaN"}, "amount", "i8"),
    ("offers", {"id": "o8", "client_id": "c7", "category": "bribe"}, "category", "o8"),
    ("contracts", {"id": "n8", "client_id": "c7", "ends_at": "2026-13-01"}, "ends_at", "n8"),
    ("contracts", {"id": "n8", "client_id": "ghost"}, "client_id", "n8"),
    ("contracts", {"id": "n7", "client_id": "c7"}, "id", "n7"),  # duplicate id inside one call
]


@pytest.mark.parametrize(("entity", "bad", "field", "bad_id"), BAD_ROWS,
                         ids=[f"{e}-{f}-{i}" for i, (e, _, f, _) in enumerate(BAD_ROWS)])
@pytest.mark.parametrize("method", ["add", "upsert"])
def test_bad_row_raises_and_writes_nothing(store: Store, method: str, entity: str, bad: dict[str, Any],
                                           field: str, bad_id: str | None) -> None:
    store.add(**BASE)
    before = snapshot(store)
    rows = {e: [dict(r) for r in rs] for e, rs in GOOD.items()}
    rows[entity] = [*rows[entity], dict(bad)]
    with pytest.raises(DataError) as ei:
        getattr(store, method)(**rows)
    err = ei.value
    assert err.entity == entity
    assert err.field == field
    assert err.row == 1  # the second row of its entity (0-based index when not from a file)
    if bad_id is not None:
        assert err.id == bad_id
        assert bad_id in str(err)
    assert entity in str(err) and field in str(err)
    assert snapshot(store) == before  # no row of any entity was written


def test_references_resolve_within_one_call_and_against_stored_rows(store: Store) -> None:
    store.add(managers=[{"id": "m1"}])
    # clients are checked after managers, whatever the keyword order
    store.add(touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01"}],
              clients=[{"id": "c1", "manager_id": "m1"}])
    store.add(touches=[{"id": "t2", "client_id": "c1", "at": "2026-01-02"}])
    assert store.count("touches") == 2


def test_reference_to_unknown_manager(store: Store) -> None:
    store.add(managers=[{"id": "m1"}])
    with pytest.raises(DataError) as ei:
        store.add(clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m9"}])
    assert (ei.value.entity, ei.value.id, ei.value.field) == ("clients", "c2", "manager_id")
    assert "m9" in str(ei.value)
    assert store.count("clients") == 0


# ------------------------------------------------------------------ clients(as_of), manager_loads


def test_clients_as_of_hides_later_clients(store: Store) -> None:
    as_of = ts("2026-03-01T23:59:59")
    store.add(managers=[{"id": "m1"}, {"id": "m2"}], clients=[
        {"id": "c-none", "manager_id": "m1"},
        {"id": "c-early", "manager_id": "m1", "created_at": "2025-01-01"},
        {"id": "c-exact", "manager_id": "m2", "created_at": as_of},
        {"id": "c-later", "manager_id": "m1", "created_at": as_of + timedelta(seconds=1)},
        {"id": "c-moscow", "manager_id": "m2", "created_at": "2026-03-02T02:59:59+03:00", "status": "archived"},
        {"id": "c-moscow2", "manager_id": "m2", "created_at": "2026-03-02T03:00:00+03:00"},
    ])
    assert [c.id for c in store.clients(as_of)] == ["c-early", "c-exact", "c-moscow", "c-none"]
    assert [c.id for c in store.clients(as_of, ["c-later", "c-none", "ghost", "c-exact"])] == ["c-exact", "c-none"]
    assert store.clients(as_of, []) == []
    assert store.manager_loads(as_of) == {"m1": 2, "m2": 1}
    assert store.manager_loads(ts("2024-01-01T00:00:00")) == {"m1": 1}
    assert store.manager_loads(as_of + timedelta(days=1)) == {"m1": 3, "m2": 2}


@SETTINGS
@given(crm=S.crms(), as_of=S.utc_instants(), pick=st.lists(st.integers(0, 20), max_size=6))
def test_clients_and_loads_match_reference(backend: str, crm: dict[str, list[dict[str, Any]]],
                                           as_of: datetime, pick: list[int]) -> None:
    rows = crm["clients"]
    exists = [r for r in rows if (t := S.instant(r.get("created_at"))) is None or t <= as_of]
    loads: dict[str, int] = {}
    for r in exists:
        if r.get("status", "active") != "archived":
            loads[r["manager_id"]] = loads.get(r["manager_id"], 0) + 1
    ids = [rows[i]["id"] for i in pick if i < len(rows)] + ["ghost"]
    with fresh(backend) as s:
        S.load(s, crm)
        assert [c.id for c in s.clients(as_of)] == sorted(r["id"] for r in exists)
        assert [c.id for c in s.clients(as_of, ids)] == sorted({r["id"] for r in exists} & set(ids))
        assert s.clients(as_of) == sorted((Client.model_validate(r) for r in exists), key=lambda c: c.id)
        assert s.manager_loads(as_of) == loads


# ------------------------------------------------------------------ fact_steps (what backtest sweeps)


def test_fact_steps_examples(store: Store) -> None:
    store.add(managers=[{"id": "m1"}], clients=[
        {"id": "c1", "manager_id": "m1", "created_at": "2026-01-05T10:00"},
        {"id": "c2", "manager_id": "m1"},
    ], touches=[{"id": "t1", "client_id": "c2", "at": "2026-01-10T00:00"}],
        tasks=[{"id": "k1", "client_id": "c1", "created_at": "2025-12-01", "due_at": "2026-01-10T00:00",
                "done_at": "2026-02-01"}],
        invoices=[{"id": "i1", "client_id": "c2", "issued_at": "2025-01-01", "due_at": "2026-01-20",
                   "amount": 10, "paid_at": "2026-01-10T00:00:01"}])
    got = store.fact_steps([ts("2026-01-05T10:00:00"), ts("2026-01-10T00:00:00"), ts("2026-01-20T00:00:00")])
    assert got == [  # (after, until]: the lower bound is excluded, the upper one included
        {("tasks", "due_at"): {"c1"}, ("touches", "at"): {"c2"}},
        {("invoices", "paid_at"): {"c2"}, ("invoices", "due_at"): {"c2"}},
    ]
    assert store.fact_steps([ts("2026-01-05T09:59:59"), ts("2026-01-05T10:00:00")]) == [
        {("clients", "created_at"): {"c1"}}]
    assert store.fact_steps([ts("2026-01-05T09:59:59")]) == []
    assert store.fact_steps([ts("2026-03-01T00:00:00"), ts("2026-04-01T00:00:00")]) == [{}]


@SETTINGS
@given(crm=S.crms(), instants=st.lists(S.utc_instants(), min_size=1, max_size=6, unique=True))
def test_fact_steps_match_reference(backend: str, crm: dict[str, list[dict[str, Any]]],
                                    instants: list[datetime]) -> None:
    steps = sorted(instants)
    want: list[dict[tuple[str, str], set[str]]] = [{} for _ in steps[1:]]
    for entity, fields in TIME_FIELDS.items():
        for r in crm.get(entity, []):
            for f in fields:
                t = S.instant(r.get(f))
                for i, (lo, hi) in enumerate(itertools.pairwise(steps)):
                    if t is not None and lo < t <= hi:
                        want[i].setdefault((entity, f), set()).add(r["id"] if entity == "clients" else r["client_id"])
    with fresh(backend) as s:
        S.load(s, crm)
        assert s.fact_steps(steps) == want


# ------------------------------------------------------------------ cursors


def test_cursors_round_trip(store: Store) -> None:
    assert store.get_cursor("round_robin:release") is None
    store.set_cursor("round_robin:release", "m2")
    store.set_cursor("round_robin:other", "m9")
    assert store.get_cursor("round_robin:release") == "m2"
    store.set_cursor("round_robin:release", "m3")
    assert store.get_cursor("round_robin:release") == "m3"
    assert store.get_cursor("round_robin:other") == "m9"
    assert store.get_cursor("nothing") is None


def test_facts_by_id(store: Store) -> None:
    """The rows named (a dispatcher's check of a few dunning steps' invoices), as of as_of, in client order;
    an id the store lacks, or a row not issued yet, is left out; the other conditions still apply."""
    store.add(managers=[{"id": "m1"}], clients=[{"id": c, "manager_id": "m1"} for c in ("c1", "c2")],
              invoices=[{"id": i, "client_id": c, "issued_at": f"2026-01-0{n}T10:00:00Z", "amount": 10 * n}
                        for n, (i, c) in enumerate([("i3", "c1"), ("i1", "c2"), ("i2", "c1"), ("i9", "c1")], 1)])
    as_of = datetime(2026, 1, 3, 12, tzinfo=UTC)
    got = store.facts("invoices", as_of, (Pred("id", "in", frozenset({"i1", "i2", "i9", "nope"})),))
    assert [r.id for r in got] == ["i2", "i1"]  # i9 is issued on 4 January
    twice = store.facts("invoices", as_of, (Pred("id", "in", ["i1", "i1"]),))  # type: ignore[arg-type]
    assert [r.id for r in twice] == ["i1"]  # a row once, however often it is named
    big = (Pred("id", "in", frozenset({"i1", "i2", "i3"})), Pred("amount", "gte", Decimal(20)))
    assert [r.id for r in store.facts("invoices", as_of, big)] == ["i2", "i1"]


def test_cursors_by_prefix(store: Store) -> None:
    """The names that start with the prefix, taken literally (`_` and `%` are no wildcards), whatever
    follows it: non-ASCII and astral characters too."""
    names = ["reactive:client:c1", "reactive:client:c2", "reactive:client:ж", "reactive:client:\U0001f600",
             "reactive:clients", "reactive:client", "round_robin:release", "reactive:client_x"]  # fmt: skip
    for n, name in enumerate(names):
        store.set_cursor(name, str(n))
    assert store.cursors("reactive:client:") == dict(zip(names[:4], "0123", strict=True))
    assert list(store.cursors("reactive:client")) == sorted(n for n in names if n.startswith("reactive:client"))
    assert store.cursors("reactive:client_") == {"reactive:client_x": "7"}
    assert store.cursors("nothing") == {}


# ------------------------------------------------------------------ aggregates vs a pure-Python reference

# Field kinds per entity, as the generated rows carry them (defaults for omitted fields)
FIELDS: dict[str, dict[str, str]] = {
    "touches": {"at": "instant", "kind": "text", "direction": "text", "manager_id": "text", "channel": "text"},
    "tasks": {"created_at": "instant", "due_at": "instant", "done_at": "instant", "status": "text",
              "source": "text", "kind": "text", "manager_id": "text"},
    "deals": {"created_at": "instant", "closed_at": "instant", "status": "text", "amount": "money"},
    "invoices": {"issued_at": "instant", "due_at": "instant", "paid_at": "instant", "amount": "money",
                 "paid_amount": "money"},
    "offers": {"made_at": "instant", "ends_at": "instant", "category": "text", "amount": "money"},
    "contracts": {"starts_at": "instant", "ends_at": "instant", "monthly_amount": "money"},
}
VIRTUAL: dict[str, dict[str, str]] = {
    "touches": {"medium": "text"},
    "tasks": {"is_open": "bool", "is_done": "bool"},
    "deals": {"is_open": "bool", "is_won": "bool", "is_lost": "bool"},
    "invoices": {"paid_total": "money", "outstanding": "money"},
}
# The field that dates a fact: rows dated after as_of do not exist yet (DESIGN §1)
BORN = {"touches": "at", "tasks": "created_at", "deals": "created_at", "invoices": "issued_at",
        "offers": "made_at", "contracts": "starts_at"}
DEFAULTS = {("touches", "kind"): "call", ("touches", "direction"): "outbound", ("tasks", "status"): "open",
            ("tasks", "source"): "crm", ("deals", "status"): "open", ("offers", "category"): "development"}
TEXT_VALUES = {
    "kind": ["call", "email", "meeting", "sms", "zzz"], "direction": ["inbound", "outbound", "internal"],
    "manager_id": ["m1", "m2", "m3"], "channel": ["phone", "email", "whatsapp", "SMS"],
    "status": ["open", "done", "cancelled", "won", "lost"], "source": ["crm", "retainer"],
    "category": ["retention", "development", "service"], "medium": ["phone", "email", "call", "sms"],
}


def field_kind(entity: str, name: str) -> str:
    return FIELDS[entity].get(name) or VIRTUAL[entity][name]


def norm(entity: str, row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"client_id": row["client_id"]}
    for name, kind in FIELDS[entity].items():
        v = row.get(name)
        if v is None or v == "":
            v = DEFAULTS.get((entity, name))
        out[name] = S.instant(v) if kind == "instant" else S.money(v) if kind == "money" else v
    return out


def virtual(entity: str, name: str, r: dict[str, Any], as_of: datetime) -> Any:
    """Written from the docs of base.VIRTUAL_FIELDS, independently of the stores."""
    if entity == "touches":
        return (r["channel"] if r["channel"] is not None else r["kind"]).lower()
    if entity == "tasks":
        done = r["done_at"] is not None and r["done_at"] <= as_of
        if name == "is_done":  # completed, and not cancelled (a CRM may stamp done_at on a cancelled task)
            return done and r["status"] != "cancelled"
        # open at as_of: not cancelled, not yet done; a task done later was open then
        if r["status"] == "cancelled" or done:
            return False
        return True if r["done_at"] is not None else r["status"] == "open"
    if entity == "deals":
        if name == "is_open":
            return r["closed_at"] > as_of if r["closed_at"] is not None else r["status"] == "open"
        status = "won" if name == "is_won" else "lost"
        return r["status"] == status and (r["closed_at"] is None or r["closed_at"] <= as_of)
    paid = Decimal(0)
    if r["paid_at"] is not None and r["paid_at"] <= as_of:
        paid = r["paid_amount"] if r["paid_amount"] is not None else r["amount"]
    return paid if name == "paid_total" else max(r["amount"] - paid, Decimal(0))


def pred_holds(v: Any, p: Pred) -> bool:
    if p.op == "null":
        return v is None
    if p.op == "notnull":
        return v is not None
    if v is None:
        return False
    return {
        "eq": lambda: v == p.value, "ne": lambda: v != p.value, "gt": lambda: v > p.value,
        "gte": lambda: v >= p.value, "lt": lambda: v < p.value, "lte": lambda: v <= p.value,
        "in": lambda: v in p.value, "not_in": lambda: v not in p.value,
    }[p.op]()


def reference(crm: dict[str, list[dict[str, Any]]], spec: AggSpec, as_of: datetime,
              client_ids: list[str] | None) -> dict[str, Any]:
    groups: dict[str, list[Any]] = {}
    for raw in crm.get(spec.entity, []):
        r = norm(spec.entity, raw)

        def val(name: str, r: dict[str, Any] = r) -> Any:
            return virtual(spec.entity, name, r, as_of) if name in VIRTUAL.get(spec.entity, {}) else r[name]

        if client_ids is not None and r["client_id"] not in client_ids:
            continue
        born = r[BORN[spec.entity]]
        if born is not None and born > as_of:
            continue
        if spec.time_field is not None:
            t = r[spec.time_field]
            if t is None or t > as_of or (spec.since is not None and t <= spec.since):
                continue
        if not all(pred_holds(val(p.field), p) for p in spec.where):
            continue
        groups.setdefault(r["client_id"], []).append(None if spec.field is None else val(spec.field))
    out: dict[str, Any] = {}
    for cid, vals in groups.items():
        if spec.fn == "count":
            out[cid] = len(vals)
            continue
        present = [v for v in vals if v is not None]
        if present and spec.fn == "list":
            out[cid] = sorted(present)
        elif present:
            out[cid] = sum(present, Decimal(0)) if spec.fn == "sum" else max(present) if spec.fn == "max" \
                else min(present)
    return out


def values_for(kind: str, name: str) -> st.SearchStrategy[Any]:
    if kind == "instant":
        return S.utc_instants().flatmap(lambda t: st.sampled_from([t, t.astimezone(S._ZONES[1]),
                                                                   t.astimezone(S._ZONES[3])]))
    if kind == "money":
        return S.amounts
    if kind == "bool":
        return st.booleans()
    return st.sampled_from(TEXT_VALUES[name])


@st.composite
def preds(draw: st.DrawFn, entity: str) -> Pred:
    name = draw(st.sampled_from([*FIELDS[entity], *VIRTUAL.get(entity, {})]))
    kind = field_kind(entity, name)
    ops = ["eq", "ne", "in", "not_in", "null", "notnull"]
    if kind != "bool":
        ops += ["gt", "gte", "lt", "lte"]
    op = draw(st.sampled_from(ops))
    if op in ("null", "notnull"):
        return Pred(name, op)
    if op in ("in", "not_in"):
        return Pred(name, op, draw(st.frozensets(values_for(kind, name), max_size=3)))
    return Pred(name, op, draw(values_for(kind, name)))


@st.composite
def agg_specs(draw: st.DrawFn) -> AggSpec:
    entity = draw(st.sampled_from(list(FIELDS)))
    fn = draw(st.sampled_from(["count", "sum", "max", "min", "list"]))
    fields = {**FIELDS[entity], **VIRTUAL.get(entity, {})}
    if fn == "count":
        fld = None
    elif fn == "sum":
        money = [f for f, k in fields.items() if k == "money"]
        if not money:
            fn, fld = "count", None
        else:
            fld = draw(st.sampled_from(money))
    elif fn == "list":  # what list serves: instants and amounts (one per fact)
        fld = draw(st.sampled_from([f for f, k in fields.items() if k in ("instant", "money")]))
    else:
        fld = draw(st.sampled_from(list(fields)))
    where = tuple(draw(st.lists(preds(entity), max_size=3)))
    time_field = draw(st.one_of(st.none(), st.sampled_from([f for f, k in FIELDS[entity].items() if k == "instant"])))
    since = draw(st.one_of(st.none(), S.utc_instants())) if time_field else None
    return AggSpec(entity, fn, fld, where, time_field, since)  # type: ignore[arg-type]


def same_typed(got: dict[str, Any], want: dict[str, Any]) -> bool:
    return got == want and all(type(got[k]) is type(want[k]) for k in want)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(crm=S.crms(),
       specs=st.lists(agg_specs(), min_size=1, max_size=8),
       as_of=st.one_of(st.just(S.AS_OF), S.utc_instants()),
       subset=st.one_of(st.none(), st.lists(st.integers(0, 16), max_size=5)))
def test_aggregate_matches_reference(backend: str, crm: dict[str, list[dict[str, Any]]], specs: list[AggSpec],
                                     as_of: datetime, subset: list[int] | None) -> None:
    cids = [c["id"] for c in crm["clients"]]
    client_ids = None if subset is None else [cids[i] for i in subset if i < len(cids)] + ["ghost"]
    want = [reference(crm, s, as_of, client_ids) for s in specs]
    with fresh(backend) as s:
        S.load(s, crm)
        got = s.aggregate(specs, as_of, client_ids)
        assert len(got) == len(specs)
        for spec, g, w in zip(specs, got, want, strict=True):
            assert same_typed(g, w), f"{spec}\n got  {g}\n want {w}"
        # one spec at a time gives the same answers as the batched call
        for spec, w in zip(specs, want, strict=True):
            assert same_typed(s.aggregate([spec], as_of, client_ids)[0], w), spec


VIRTUAL_SPECS = [
    AggSpec("tasks", "count", None, (Pred("is_open", "eq", True),)),
    AggSpec("tasks", "count", None, (Pred("is_done", "eq", True),)),
    AggSpec("deals", "count", None, (Pred("is_open", "eq", True),)),
    AggSpec("deals", "count", None, (Pred("is_won", "eq", True),)),
    AggSpec("deals", "count", None, (Pred("is_lost", "eq", True),)),
    AggSpec("invoices", "sum", "paid_total"),
    AggSpec("invoices", "sum", "outstanding"),
    AggSpec("invoices", "max", "outstanding", (Pred("outstanding", "gt", Decimal(0)),)),
    AggSpec("invoices", "sum", "amount", (), "issued_at", S.AS_OF - timedelta(days=90)),
    AggSpec("touches", "count", None, (Pred("direction", "eq", "outbound"),), "at", S.AS_OF - timedelta(days=30)),
    AggSpec("touches", "max", "at", (Pred("kind", "in", frozenset({"call", "email"})),), "at"),
    AggSpec("tasks", "count", None, (Pred("is_open", "eq", True), Pred("due_at", "gte", ts("2026-03-01T00:00:00")))),
]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(crm=S.crms(), as_of=st.one_of(st.just(S.AS_OF), S.utc_instants()))
def test_aggregate_virtual_fields_and_windows_match_reference(backend: str, crm: dict[str, list[dict[str, Any]]],
                                                             as_of: datetime) -> None:
    """The aggregates the built-in features use, on every generated CRM (not left to chance)."""
    want = [reference(crm, s, as_of, None) for s in VIRTUAL_SPECS]
    with fresh(backend) as s:
        S.load(s, crm)
        for spec, g, w in zip(VIRTUAL_SPECS, s.aggregate(VIRTUAL_SPECS, as_of), want, strict=True):
            assert same_typed(g, w), f"{spec}\n got  {g}\n want {w}"


def test_aggregate_examples(store: Store) -> None:
    """Hand-checked values: partial payment, payment after as_of, a task done after as_of, windows."""
    as_of = ts("2026-03-01T23:59:59")
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}],
              invoices=[
                  {"id": "i1", "client_id": "c1", "issued_at": "2026-01-01", "amount": "100.50",
                   "paid_at": "2026-01-05", "paid_amount": "40.25"},
                  {"id": "i2", "client_id": "c1", "issued_at": "2026-02-01", "amount": 60,
                   "paid_at": "2026-03-02"},  # paid after as_of: still outstanding
                  {"id": "i3", "client_id": "c1", "issued_at": "2026-03-02", "amount": 1000},  # future
                  {"id": "i4", "client_id": "c2", "issued_at": "2026-03-01T23:59:59Z", "amount": 5,
                   "paid_at": "2026-03-01"},
              ],
              tasks=[
                  {"id": "k1", "client_id": "c1", "created_at": "2026-01-01", "status": "done",
                   "done_at": "2026-03-05"},  # done after as_of: open at as_of
                  {"id": "k2", "client_id": "c1", "created_at": "2026-01-01", "status": "cancelled"},
                  {"id": "k3", "client_id": "c2", "created_at": "2026-01-01", "status": "open",
                   "done_at": "2026-02-01"},  # completed before as_of
              ])
    specs = [AggSpec("invoices", "sum", "paid_total"), AggSpec("invoices", "sum", "outstanding"),
             AggSpec("invoices", "count"), AggSpec("tasks", "count", None, (Pred("is_open", "eq", True),)),
             AggSpec("tasks", "count", None, (Pred("is_done", "eq", True),)),
             AggSpec("invoices", "sum", "amount", (), "issued_at", ts("2026-01-31T23:59:59")),
             AggSpec("invoices", "max", "issued_at")]
    got = store.aggregate(specs, as_of)
    assert got[0] == {"c1": Decimal("40.25"), "c2": Decimal(5)}
    assert got[1] == {"c1": Decimal("120.25"), "c2": Decimal(0)}  # c2 fully paid: a row with outstanding 0
    assert got[2] == {"c1": 2, "c2": 1}
    assert got[3] == {"c1": 1}
    assert got[4] == {"c2": 1}
    assert got[5] == {"c1": Decimal(60), "c2": Decimal(5)}
    assert got[6] == {"c1": ts("2026-02-01T00:00:00"), "c2": ts("2026-03-01T23:59:59")}
    assert store.aggregate(specs, as_of, []) == [{} for _ in specs]
    assert store.aggregate([], as_of) == []


def test_a_fact_at_as_of_exactly_counts_and_one_a_second_later_does_not(store: Store) -> None:
    """Found by a test review: the memory store could read every fact, and every payment, up to a second
    past as_of, and only one example here noticed; the hypothesis references rarely put a row on the
    edge. A row of each entity dated exactly as_of exists, one a second later does not (facts() and a
    count without a time window alike); an invoice paid at as_of is paid, one paid a second later is
    still outstanding."""
    as_of = ts("2026-03-01T23:59:59")
    now, later = as_of.isoformat(), (as_of + timedelta(seconds=1)).isoformat()
    born = {"touches": "at", "tasks": "created_at", "deals": "created_at", "invoices": "issued_at",
            "offers": "made_at", "contracts": "starts_at"}
    extra = {"invoices": {"amount": 10}}
    rows = {e: [{"id": f"{e}-{name}", "client_id": "c1", f: t, **extra.get(e, {})}
                for name, t in (("now", now), ("later", later))] for e, f in born.items()}
    rows["invoices"] += [
        {"id": "invoices-paid", "client_id": "c1", "issued_at": "2026-01-10", "amount": 100, "paid_at": now},
        {"id": "invoices-paid-later", "client_id": "c1", "issued_at": "2026-01-10", "amount": 200,
         "paid_at": later, "paid_amount": 150},
    ]
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}], **rows)
    for entity in born:
        want = [f"{entity}-now"] + (["invoices-paid", "invoices-paid-later"] if entity == "invoices" else [])
        assert sorted(r.id for r in store.facts(entity, as_of)) == sorted(want), entity
    counts = store.aggregate([AggSpec(e, "count") for e in born], as_of)
    assert counts == [{"c1": 3 if e == "invoices" else 1} for e in born]
    paid, outstanding, unpaid = store.aggregate([
        AggSpec("invoices", "sum", "paid_total"), AggSpec("invoices", "sum", "outstanding"),
        AggSpec("invoices", "count", None, (Pred("outstanding", "gt", 0),))], as_of)
    assert paid == {"c1": Decimal(100)}  # the payment a second later is not in yet
    assert outstanding == {"c1": Decimal(210)}  # 10 (issued at as_of) + 200 (paid a second later)
    assert unpaid == {"c1": 2}
    # and a second later both are in
    assert store.aggregate([AggSpec("invoices", "sum", "paid_total")], as_of + timedelta(seconds=1)) == [
        {"c1": Decimal(250)}]


def test_aggregate_empty_store(store: Store) -> None:
    specs = [AggSpec("touches", "count"), AggSpec("invoices", "sum", "amount")]
    assert store.aggregate(specs, S.AS_OF) == [{}, {}]


# ------------------------------------------------------------------ SQLite: a file store reopened


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(crm=S.crms(), specs=st.lists(agg_specs(), min_size=1, max_size=4))
def test_sqlite_file_reopened_sees_the_same_facts(crm: dict[str, list[dict[str, Any]]],
                                                   specs: list[AggSpec]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "crm.db"
        s = retainer.open_store(f"sqlite:///{path}")
        S.load(s, crm)
        s.set_cursor("round_robin:release", "m2")
        before = snapshot(s)
        aggs = s.aggregate(specs, S.AS_OF)
        loads = s.manager_loads(S.AS_OF)
        s.close()
        for url in (f"sqlite:///{path}", str(path)):
            r = retainer.open_store(url)
            try:
                assert snapshot(r) == before
                assert r.aggregate(specs, S.AS_OF) == aggs
                assert r.get_cursor("round_robin:release") == "m2"
                assert r.manager_loads(S.AS_OF) == loads
            finally:
                r.close()
        r = retainer.open_store(str(path))
        r.add(touches=[{"id": "after-reopen", "client_id": crm["clients"][0]["id"], "at": S.AS_OF}])
        r.close()
        r = retainer.open_store(f"sqlite:///{path}")
        try:
            assert r.get("touches", "after-reopen") is not None
        finally:
            r.close()


def test_a_supervisor_must_exist_but_may_come_later_in_the_same_load(store: Store) -> None:
    with pytest.raises(DataError) as info:
        store.add(managers=[{"id": "m1", "supervisor_id": "zz"}])
    assert (info.value.entity, info.value.id, info.value.field) == ("managers", "m1", "supervisor_id")
    assert store.count("managers") == 0
    store.add(managers=[{"id": "m1", "supervisor_id": "boss"}, {"id": "boss"}])
    store.add(managers=[{"id": "m2", "supervisor_id": "boss"}])
    assert store.count("managers") == 3


def reference_facts(crm: dict[str, list[dict[str, Any]]], entity: str, where: tuple[Pred, ...], as_of: datetime,
                    client_ids: list[str] | None) -> list[str]:
    out = []
    for raw in crm.get(entity, []):
        r = norm(entity, raw)
        if client_ids is not None and r["client_id"] not in client_ids:
            continue
        born = r[BORN[entity]]
        if born is not None and born > as_of:
            continue
        vals = {**r, **{n: virtual(entity, n, r, as_of) for n in VIRTUAL.get(entity, {})}}
        if all(pred_holds(vals[p.field], p) for p in where):
            out.append((r["client_id"], raw["id"]))
    return [i for _, i in sorted(out)]


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(crm=S.crms(), data=st.data(), as_of=st.one_of(st.just(S.AS_OF), S.utc_instants()),
       subset=st.one_of(st.none(), st.lists(st.integers(0, 16), max_size=5)))
def test_facts_match_reference(backend: str, crm: dict[str, list[dict[str, Any]]], data: st.DataObject,
                               as_of: datetime, subset: list[int] | None) -> None:
    """`store.facts`: the rows per-invoice and per-task rules iterate over, as of as_of, sorted."""
    entity = data.draw(st.sampled_from(list(FIELDS)), label="entity")
    where = tuple(data.draw(st.lists(preds(entity), max_size=2), label="where"))
    cids = [c["id"] for c in crm["clients"]]
    client_ids = None if subset is None else [cids[i] for i in subset if i < len(cids)]
    with fresh(backend) as s:
        S.load(s, crm)
        got = s.facts(entity, as_of, where, client_ids)
        assert [r.id for r in got] == reference_facts(crm, entity, where, as_of, client_ids)
        assert all(isinstance(r, ENTITIES[entity]) for r in got)


def test_sqlite_store_from_an_earlier_version_gets_new_columns(tmp_path: Path) -> None:
    """Touches gained `action_id`: a store imported before keeps working, the column empty."""
    path = tmp_path / "old.db"
    s = retainer.open_store(f"sqlite:///{path}")
    s.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
          touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00:00Z"}])
    s.close()
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE touches DROP COLUMN action_id")
    s = retainer.open_store(f"sqlite:///{path}")
    (t,) = s.iter("touches")
    assert t.action_id is None  # type: ignore[attr-defined]
    s.add(touches=[{"id": "t2", "client_id": "c1", "at": "2026-01-02T10:00:00Z", "action_id": "a1"}])
    assert s.get("touches", "t2").action_id == "a1"  # type: ignore[union-attr]
    s.close()
