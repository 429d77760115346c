"""The SQLite store's fast paths give the reference answers.

* Per-client summaries (`retainer_latest`, `retainer_newest`) answer the latest-instant aggregates when
  no fact is dated after as_of, and are kept right by every add, upsert (a fact moved to another client
  or back in time included) and load; for an earlier as_of the store scans, so facts after as_of stay
  invisible. Compared with the memory store (the reference) and with the same store scanning.
* A store written by an older retainer (schema 1, no summaries) is upgraded on open, or, when it
  cannot be written, read by scanning.
* Rows read back as models equal what was stored.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import strategies as S
from conftest import fresh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retainer
from retainer.errors import StoreError
from retainer.model import ENTITIES
from retainer.stores import AggSpec, Pred
from retainer.stores.sqlite import _LATEST, SQLiteStore

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# what the features ask for: every source of last_activity_at (the summarised ones), a narrowed touch
# activity and a won deal (not summarised), windows (`since`), and the rest of a nightly plan
SPECS = [
    AggSpec("touches", "max", "at", (), "at"),
    AggSpec("tasks", "max", "created_at", (Pred("source", "ne", "retainer"),), "created_at"),
    AggSpec("tasks", "max", "done_at", (), "done_at"),
    AggSpec("deals", "max", "created_at", (), "created_at"),
    AggSpec("deals", "max", "closed_at", (), "closed_at"),
    AggSpec("invoices", "max", "issued_at", (), "issued_at"),
    AggSpec("invoices", "max", "paid_at", (), "paid_at"),
    AggSpec("touches", "max", "at", (), "at", S.AS_OF - timedelta(days=30)),
    AggSpec("invoices", "max", "paid_at", (), "paid_at", S.AS_OF - timedelta(days=90)),
    AggSpec("touches", "max", "at", (Pred("direction", "in", frozenset({"inbound"})),), "at"),
    AggSpec("tasks", "max", "created_at", (), "created_at"),
    AggSpec("deals", "max", "closed_at", (Pred("is_won", "eq", True),), "closed_at"),
    AggSpec("tasks", "count", None, (Pred("is_open", "eq", True), Pred("due_at", "gte", S.AS_OF))),
    AggSpec("invoices", "sum", "amount", (), "issued_at", S.AS_OF - timedelta(days=365)),
    AggSpec("invoices", "sum", "outstanding", (Pred("outstanding", "gt", 0),)),
    AggSpec("touches", "count", None, (Pred("direction", "eq", "outbound"),), "at", S.AS_OF - timedelta(days=30)),
]
FAR = datetime(2100, 1, 1, tzinfo=UTC)  # after every generated fact: the nightly case
# windows only, several lengths per table: one read bounds its rows by the earliest window's start
WINDOWS = [
    AggSpec("touches", "max", "at", (), "at", S.AS_OF - timedelta(days=30)),
    AggSpec("touches", "count", None, (Pred("direction", "eq", "outbound"),), "at", S.AS_OF - timedelta(days=90)),
    AggSpec("invoices", "sum", "amount", (), "issued_at", S.AS_OF - timedelta(days=365)),
    AggSpec("invoices", "count", None, (), "issued_at", S.AS_OF - timedelta(days=30)),
    AggSpec("invoices", "list", "issued_at", (), "issued_at", S.AS_OF - timedelta(days=60)),
]


def typed(got: list[dict[str, Any]]) -> list[dict[str, tuple[Any, type]]]:
    """Results with their Python types, so Decimal 1 and int 1 differ."""
    return [{k: (v, type(v)) for k, v in r.items()} for r in got]


def summaries(s: SQLiteStore) -> tuple[list[Any], list[Any]]:
    return (s.db.execute("SELECT * FROM retainer_latest ORDER BY client_id").fetchall(),
            s.db.execute("SELECT * FROM retainer_newest ORDER BY entity, field").fetchall())


def rebuilt(s: SQLiteStore) -> tuple[list[Any], list[Any]]:
    """What the summaries would be if computed from scratch; the store is left as it was."""
    conn = s.db.conn
    conn.execute("SAVEPOINT check_summaries")
    try:
        s._build_summaries(conn)
        return summaries(s)
    finally:
        conn.execute("ROLLBACK TO check_summaries")
        conn.execute("RELEASE check_summaries")


def latest_rows(s: SQLiteStore) -> list[Any]:
    # a client whose summarised rows all went elsewhere keeps a row of NULLs: equal to having none
    return [r for r in summaries(s)[0] if any(v is not None for v in r[1:])]


def check_against(mem: Any, s: SQLiteStore, as_ofs: list[datetime], ids: list[str] | None = None) -> None:
    for as_of in as_ofs:
        want = typed(mem.aggregate(SPECS, as_of, ids))
        got = s.aggregate(SPECS, as_of, ids)
        assert typed(got) == want, as_of
        # without the summaries the store reads the facts, every client's max/min by index seeks or by the
        # grouped scan (whichever `_dense` picks): the same answer, in the same order (by client id)
        for dense in (True, False):
            s._dense = lambda entity, dense=dense: dense  # type: ignore[method-assign]
            s._summaries = False
            try:
                scanned = s.aggregate(SPECS, as_of, ids)
            finally:
                s._summaries = True
                del s._dense
            assert [list(r.items()) for r in got] == [list(r.items()) for r in scanned], (as_of, dense)
        for spec, w in zip(SPECS, want, strict=True):
            assert typed(s.aggregate([spec], as_of, ids)) == [w], spec
        assert typed(s.aggregate(WINDOWS, as_of, ids)) == typed(mem.aggregate(WINDOWS, as_of, ids)), as_of


DATED = {"touches": ["at"], "tasks": ["created_at", "done_at"], "deals": ["created_at", "closed_at"],
         "invoices": ["issued_at", "paid_at"]}
REQUIRED = {"at", "issued_at", ("tasks", "created_at")}


def changed(draw: st.DrawFn, crm: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """New versions of some stored facts: moved to another client, dated earlier or later, emptied."""
    cids = [c["id"] for c in crm["clients"]]
    out: dict[str, list[dict[str, Any]]] = {}
    for entity, fields in DATED.items():
        rows = crm.get(entity) or []
        if not rows:
            continue
        new_rows = []
        for i in draw(st.lists(st.sampled_from(range(len(rows))), max_size=4, unique=True)):
            row = dict(rows[i])
            row["client_id"] = draw(st.sampled_from(cids))
            for f in fields:
                required = f in REQUIRED or (entity, f) in REQUIRED
                row[f] = draw(S.instants() if required else S.opt_instants())
            if entity == "tasks":
                row["source"] = draw(st.sampled_from(["crm", "retainer"]))
            if entity == "invoices" and row["paid_at"] is None:
                row["paid_amount"] = None  # an amount paid needs its date
            new_rows.append(row)
        out[entity] = new_rows
    return out


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """A CRM and what happens to it next: more facts added, facts replaced (upsert)."""
    crm = draw(S.crms())
    cids = [c["id"] for c in crm["clients"]]
    steps: list[tuple[str, dict[str, Any]]] = []
    for n in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            steps.append(("add", draw(S.facts(cids, id_prefix=f"s{n}", sizes=S.SPARSE))))
        else:
            steps.append(("upsert", changed(draw, crm)))
    return crm, steps


@SETTINGS
@given(history=histories(), as_ofs=st.lists(st.one_of(S.utc_instants(), st.just(S.AS_OF)), max_size=2),
       subset=st.one_of(st.none(), st.lists(st.integers(0, 16), max_size=4)))
def test_summaries_follow_every_write_and_answer_like_the_reference(
    history: tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]], as_ofs: list[datetime], subset: list[int] | None
) -> None:
    crm, steps = history
    with fresh("memory") as mem, fresh("sqlite") as s:
        assert isinstance(s, SQLiteStore) and s._summaries
        S.load(mem, crm)
        S.load(s, crm)
        cids = [c["id"] for c in crm["clients"]]
        ids = None if subset is None else [cids[i] for i in subset if i < len(cids)] + ["ghost"]
        check_against(mem, s, [FAR, *as_ofs], ids)
        for verb, rows in steps:
            rows = {e: r for e, r in rows.items() if r}
            if not rows:
                continue
            getattr(mem, verb)(**rows)
            getattr(s, verb)(**rows)
            assert latest_rows(s) == [r for r in rebuilt(s)[0] if any(v is not None for v in r[1:])]
            newest, fresh_newest = summaries(s)[1], rebuilt(s)[1]
            for (e, f, v), (_e, _f, v0) in zip(newest, fresh_newest, strict=True):
                assert v0 is None or (v is not None and v >= v0), (e, f)  # never behind the facts
            check_against(mem, s, [FAR, *as_ofs], ids)


def test_summaries_answer_only_when_no_fact_is_after_as_of(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "crm.db")
    s.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}],
          touches=[{"id": "t1", "client_id": "c1", "at": "2026-02-01T10:00:00Z"},
                   {"id": "t2", "client_id": "c1", "at": "2026-03-05T10:00:00Z"},
                   {"id": "t3", "client_id": "c2", "at": "2026-01-01T00:00:00Z"}])
    spec = AggSpec("touches", "max", "at", (), "at")
    before, after = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 6, tzinfo=UTC)
    assert s._summarised([spec], after) == {0: "touches_at"}
    assert s._summarised([AggSpec("deals", "max", "closed_at", (), "closed_at")], after) == {0: ""}  # no deals
    assert s._summarised([spec], before) == {}  # t2 is after as_of: scan
    assert s.aggregate([spec], before) == [{"c1": datetime(2026, 2, 1, 10, tzinfo=UTC),
                                            "c2": datetime(2026, 1, 1, tzinfo=UTC)}]
    assert s.aggregate([spec], after)[0]["c1"] == datetime(2026, 3, 5, 10, tzinfo=UTC)
    # t2 moves to c2 and back in time: c1's latest falls back to t1
    s.upsert(touches=[{"id": "t2", "client_id": "c2", "at": "2026-02-02T00:00:00Z"}])
    assert s.aggregate([spec], after) == [{"c1": datetime(2026, 2, 1, 10, tzinfo=UTC),
                                           "c2": datetime(2026, 2, 2, tzinfo=UTC)}]
    s.close()


def _rewrite(path: Path, script: str) -> None:
    """Change a closed store's file behind retainer's back (what an older version would have written)."""
    conn = sqlite3.connect(path)
    conn.executescript(script)
    conn.close()


def _downgrade(path: Path) -> None:
    """Make the file what retainer 0.1 (schema 1, no summaries) wrote."""
    _rewrite(path, "DROP TABLE retainer_latest; DROP TABLE retainer_newest; "
                   "DELETE FROM retainer_meta WHERE key = 'latest_def'; "
                   "UPDATE retainer_meta SET value = '1' WHERE key = 'schema_version';")


CRM = {
    "managers": [{"id": "m1"}],
    "clients": [{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}],
    "touches": [{"id": "t1", "client_id": "c1", "at": "2026-02-01T10:00:00Z"}],
    "tasks": [{"id": "k1", "client_id": "c2", "created_at": "2026-01-05", "done_at": "2026-01-07",
               "status": "done"},
              {"id": "k2", "client_id": "c2", "created_at": "2026-01-09", "source": "retainer"}],
    "invoices": [{"id": "i1", "client_id": "c1", "issued_at": "2026-01-10", "amount": 5, "paid_at": "2026-01-20"}],
}


def test_a_schema_1_store_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "crm.db"
    with SQLiteStore(path) as s:
        s.add(**CRM)
        want = s.aggregate(SPECS, FAR)
        built = summaries(s)
    _downgrade(path)
    with SQLiteStore(path) as s:
        assert s._summaries
        assert s.db.execute("SELECT value FROM retainer_meta WHERE key = 'schema_version'").fetchone() == ("2",)
        assert summaries(s) == built
        assert s._summarised(SPECS, FAR)
        assert s.aggregate(SPECS, FAR) == want
        s.add(touches=[{"id": "t2", "client_id": "c2", "at": "2026-02-03T00:00:00Z"}])
        assert s.aggregate(SPECS[:1], FAR)[0]["c2"] == datetime(2026, 2, 3, tzinfo=UTC)


def test_a_schema_1_store_that_cannot_be_written_is_read_by_scanning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "crm.db"
    with SQLiteStore(path) as s:
        s.add(**CRM)
        want = s.aggregate(SPECS, FAR)
    _downgrade(path)

    def read_only(self: SQLiteStore, conn: Any) -> None:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(SQLiteStore, "_build_summaries", read_only)
    with SQLiteStore(path) as s:
        assert not s._summaries and s._summarised(SPECS, FAR) == {}
        assert s.aggregate(SPECS, FAR) == want
        assert s.db.execute("SELECT value FROM retainer_meta WHERE key = 'schema_version'").fetchone() == ("1",)
        s.add(touches=[{"id": "t2", "client_id": "c2", "at": "2026-02-03T00:00:00Z"}])  # still schema 1
        assert s.aggregate(SPECS[:1], FAR)[0]["c2"] == datetime(2026, 2, 3, tzinfo=UTC)
    monkeypatch.undo()
    with SQLiteStore(path) as s:  # writable again: upgraded, with the fact added meanwhile
        assert s._summaries
        assert s.aggregate(SPECS[:1], FAR)[0]["c2"] == datetime(2026, 2, 3, tzinfo=UTC)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "crm.db"
    SQLiteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE retainer_meta SET value = '3' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="schema version 3"):
        SQLiteStore(path)


def test_every_summarised_spec_is_a_latest_instant() -> None:
    for col, (entity, field, where) in _LATEST.items():
        assert field in ENTITIES[entity].model_fields, col
        assert all(p.field in ENTITIES[entity].model_fields for p in where), col  # no as_of-dependent field


@SETTINGS
@given(crm=S.crms())
def test_rows_read_back_as_stored(crm: dict[str, list[dict[str, Any]]]) -> None:
    with fresh("memory") as mem, fresh("sqlite") as s:
        S.load(mem, crm)
        S.load(s, crm)
        for e in ENTITIES:
            got, want = list(s.iter(e)), list(mem.iter(e))
            assert [m.model_dump() for m in got] == [m.model_dump() for m in want]
            assert [m.model_fields_set for m in got] == [set(type(m).model_fields) for m in got]
        assert s.clients(S.AS_OF) == mem.clients(S.AS_OF)
        assert s.managers() == mem.managers()
        for c in s.clients(FAR):  # attributes are each client's own
            assert c.attributes is not s.clients(FAR)[0].attributes or c.id == s.clients(FAR)[0].id


def test_plan_equal_to_the_memory_store_on_the_nightly_path(tmp_path: Path) -> None:
    rules = {"version": 1, "timezone": "UTC", "rules": [
        {"id": "forgotten", "kind": "forgotten", "after": "10d",
         "then": [{"create_task": {"title": "x", "due_in": "2d"}}]}]}
    mem = retainer.open_store("memory://")
    s = SQLiteStore(tmp_path / "crm.db")
    for st_ in (mem, s):
        st_.add(**CRM)
    for day in ("2026-01-15", "2026-03-01", "2027-01-01"):
        a = retainer.Engine(retainer.load_rules(rules), mem).plan(day).to_json()
        b = retainer.Engine(retainer.load_rules(rules), s).plan(day).to_json()
        assert a == b, day
    s.close()


def _drop_new_indexes(path: Path) -> None:
    """Make the file what retainer 0.2 wrote: no (client_id, instant) indexes for paid_at and done_at."""
    _rewrite(path, "DROP INDEX idx_invoices_client_id_paid_at; DROP INDEX idx_tasks_client_id_done_at; "
                   "DROP INDEX idx_deals_client_id_closed_at;")


def test_an_older_store_gets_the_seek_indexes_on_open_and_answers_the_same_without_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "crm.db"
    with SQLiteStore(path) as s:
        s.add(**CRM)
        assert {("invoices", "paid_at"), ("tasks", "done_at"), ("touches", "at")} <= s._seekable
        want = [s.aggregate(SPECS, at, ["c1", "c2"]) for at in (FAR, S.AS_OF)]
    _drop_new_indexes(path)
    with SQLiteStore(path) as s:  # writable: built on open
        assert ("invoices", "paid_at") in s._seekable and ("tasks", "done_at") in s._seekable
    _drop_new_indexes(path)

    def busy(self: SQLiteStore) -> Any:
        raise StoreError("database is locked")

    monkeypatch.setattr(SQLiteStore, "_transaction", busy)
    with SQLiteStore(path) as s:  # cannot be written now: read with a grouped scan where the index is missing
        assert ("invoices", "paid_at") not in s._seekable and ("touches", "at") in s._seekable
        assert [s.aggregate(SPECS, at, ["c1", "c2"]) for at in (FAR, S.AS_OF)] == want


def test_background_checkpoints_copy_the_log_into_the_file(tmp_path: Path) -> None:
    path = tmp_path / "crm.db"
    s = SQLiteStore(path)
    s.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}])
    s.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    s.add(touches=[{"id": f"t{i}", "client_id": "c1", "at": "2026-02-01T10:00:00Z"} for i in range(300)])
    assert path.stat().st_size == size  # a few pages: SQLite's own checkpoint waits for 1,000
    assert s.checkpoint_in_background(every=0.01) and not s.checkpoint_in_background()
    assert s.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    s.add(touches=[{"id": f"u{i}", "client_id": "c1", "at": "2026-02-01T10:00:00Z"} for i in range(300)])
    deadline = time.monotonic() + 10
    while path.stat().st_size == size and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.stat().st_size > size
    thread = s._checkpointer[1]  # type: ignore[index]
    s.close()
    assert not thread.is_alive()
    with SQLiteStore(path) as again:
        assert again.aggregate([AggSpec("touches", "count", None, ())], FAR) == [{"c1": 600}]


def test_the_zone_facts_were_written_in_is_kept_with_them(tmp_path: Path) -> None:
    """A store remembers the zone named when its facts were first written: opened again without one, it reads
    new naive times in it (not UTC, a day off near midnight); opened in another zone, it refuses to write."""
    db = tmp_path / "crm.db"
    first = retainer.open_store(db, timezone="Europe/Moscow")
    first.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}])
    first.close()
    again = retainer.open_store(db)
    assert str(again.tz) == "Europe/Moscow" and not getattr(again, "zone_defaulted", False)
    again.add(touches=[{"id": "t1", "client_id": "c1", "at": "2025-12-31T23:30"}])
    assert again.get("touches", "t1").at == datetime(2025, 12, 31, 20, 30, tzinfo=UTC)  # type: ignore[union-attr]
    again.close()
    other = retainer.open_store(db, timezone="UTC")
    with pytest.raises(retainer.DataError, match=r"read in Europe/Moscow; these would be read in UTC"):
        other.add(touches=[{"id": "t2", "client_id": "c1", "at": "2026-01-01T10:00"}])
    assert other.get("touches", "t2") is None
    other.close()
    # a store no zone was named for records none: naming the right one later is how it is fixed
    plain = retainer.open_store(tmp_path / "plain.db")
    plain.add(managers=[{"id": "m1"}])
    assert plain.recorded_zone is None  # type: ignore[attr-defined]
    plain.close()
    named = retainer.open_store(tmp_path / "plain.db", timezone="Europe/Kiev")
    named.add(managers=[{"id": "m2"}])
    named.close()
    kyiv = retainer.open_store(tmp_path / "plain.db", timezone="Europe/Kyiv")  # its new name: the same clock
    kyiv.add(managers=[{"id": "m3"}])
    assert kyiv.recorded_zone == "Europe/Kiev"  # type: ignore[attr-defined]


def test_text_utf8_cannot_hold_is_a_data_error_naming_row_and_field(tmp_path: Path) -> None:
    """Found in an embedding review: a stray `\\udc80` escape in a JSONL name raised a bare UnicodeEncodeError
    from `store.add` and a traceback (exit 1) from `retainer import`; an outcome holding one did the same."""
    store = retainer.open_store(tmp_path / "crm.db")
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c0", "manager_id": "m1", "created_at": "2025-01-01"}])
    with pytest.raises(retainer.DataError, match=r"^clients\[1\] id=c2 field tags: text UTF-8 cannot hold \(a lone "
                                                 r"surrogate, '\\udc80', at character 2"):  # fmt: skip
        store.add(clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1", "tags": ["v\udc80"]}])
    assert store.get("clients", "c1") is None  # nothing written
    rules = retainer.load_rules({"rules": [{"id": "f", "kind": "forgotten", "after": "1d"}]})
    engine = retainer.Engine(rules, store)
    engine.run("2026-03-01")
    (e,) = store.ledger()
    assert engine.record_outcome(e.id, {"note": "Ac\udc80me"}).outcome == {"note": "Ac\udc80me"}


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    """Found in an embedding review: after close(), plan, run and add raised sqlite3.ProgrammingError, which a
    host maps to nothing of retainer's."""
    store = retainer.open_store(tmp_path / "crm.db")
    store.add(managers=[{"id": "m1"}])
    store.close()
    store.close()  # twice is harmless
    rules = retainer.load_rules({"rules": [{"id": "f", "kind": "forgotten", "after": "1d"}]})
    for call in (lambda: store.add(managers=[{"id": "m2"}]), lambda: retainer.Engine(rules, store).plan("2026-03-01")):
        with pytest.raises(StoreError, match="the store is closed"):
            call()


def test_a_fixed_offset_zone_is_kept_and_a_store_made_directly_records_none(tmp_path: Path) -> None:
    """Found in review: a host's own fixed-offset tzinfo was recorded as 'UTC+03:00', which the store could not
    read back, so it quietly read new times in UTC; and SQLiteStore(path) recorded the UTC nobody chose."""
    from datetime import timezone

    db = tmp_path / "crm.db"
    s = retainer.open_store(db, timezone=timezone(timedelta(hours=3)))
    s.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}])
    s.close()
    again = retainer.open_store(db)
    again.add(touches=[{"id": "t1", "client_id": "c1", "at": "2026-03-01T23:30"}])
    assert again.get("touches", "t1").at == datetime(2026, 3, 1, 20, 30, tzinfo=UTC)  # type: ignore[union-attr]
    again.close()
    direct = SQLiteStore(tmp_path / "direct.db")
    direct.add(managers=[{"id": "m1"}])
    assert direct.recorded_zone is None
    direct.close()
    named = retainer.open_store(tmp_path / "direct.db", timezone="Europe/Moscow")
    named.add(managers=[{"id": "m2"}])  # the zone named later is taken
    assert named.recorded_zone == "Europe/Moscow"  # type: ignore[attr-defined]
