"""The ledger half of the Store contract (DESIGN §6), run against every backend.

Committed actions are unique by key, statuses move only as the contract says, run records and
cursors are written with the commit, and the run lock fails fast.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import fresh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retainer
from retainer import StoreError, ledger
from retainer.actions import Action, CreateTask, Escalate, Tag, action_id
from retainer.ledger import STATUSES, RunRecord, claim_holder
from retainer.stores import Store

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


def act(key: str, client: str = "c1", rule: str = "forgotten") -> Action:
    return CreateTask(
        id=action_id(key), key=key, rule=rule, client_id=client, category="retention", reason="no activity",
        evidence={"days_since_activity": 61}, as_of=datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC),
        assignee_id="m1", title="call", due_at=date(2026, 3, 3),
    )  # fmt: skip


def run_record(n: int = 1, at: datetime = T0) -> RunRecord:
    return RunRecord(id=f"run-{n}", as_of=datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC), rules_digest="abc",
                     started_at=at)


def test_commit_returns_the_new_actions_and_skips_committed_keys(store: Store) -> None:
    a, b, c = act("r:c1:e:x"), act("r:c2:e:x", "c2"), act("r:c3:e:x", "c3")
    assert store.commit_run(run_record(1), [a, b], {}) == [a, b]
    assert store.commit_run(run_record(2, T0 + timedelta(days=1)), [b, c, a], {}) == [c]
    assert [e.key for e in store.ledger()] == [a.key, b.key, c.key]  # commit order
    assert [e.run_id for e in store.ledger()] == ["run-1", "run-1", "run-2"]
    assert store.ledger_status([a.key, "nope", c.key]) == {a.key: "pending", c.key: "pending"}


def test_cancellations_name_the_cancelled_keys_with_their_code(store: Store) -> None:
    """A plan asks which committed moves were cancelled, and why, by key: a falsy `cancelled` is not one (as
    `LedgerEntry.cancelled` reads it), nor a delivered action with another outcome."""
    acts = [act(f"r:c{n}:e:x", f"c{n}") for n in range(1, 7)]
    store.commit_run(run_record(), acts, {})
    assert store.cancellations([a.key for a in acts]) == {}
    store.set_outcome(acts[0].id, {"cancelled": "manager m2 is no longer active", "code": ledger.MANAGER_LEFT}, T0)
    store.set_outcome(acts[1].id, {"cancelled": "undone by hand"}, T0)
    store.set_outcome(acts[2].id, {"result": "completed"}, T0)
    for a, falsy in zip(acts[3:], ("", False, []), strict=True):
        store.set_outcome(a.id, {"cancelled": falsy, "code": "x"}, T0)
    assert [store.ledger(ids=[a.id])[0].cancelled is not None for a in acts] == [True, True] + [False] * 4
    assert store.cancellations([*(a.key for a in acts), "nope"]) == {acts[0].key: "manager_left", acts[1].key: ""}


def test_one_commit_with_a_key_twice_keeps_one(store: Store) -> None:
    a = act("r:c1:e:x")
    assert store.commit_run(run_record(), [a, a], {}) == [a]
    assert len(store.ledger()) == 1


def test_entries_keep_the_action_and_its_fields(store: Store) -> None:
    a = act("forgotten:c1:2026-01-01:create_task")
    store.commit_run(run_record(), [a], {})
    (e,) = store.ledger()
    assert (e.id, e.key, e.type, e.rule, e.client_id, e.category) == (
        a.id, a.key, "create_task", "forgotten", "c1", "retention")  # fmt: skip
    assert e.as_of == a.as_of and e.created_at == T0 and e.updated_at == T0
    assert (e.status, e.attempts, e.last_error, e.outcome) == ("pending", 0, None, None)
    assert e.action == a
    assert e.to_dict()["action"]["key"] == a.key


def test_run_records_newest_first_and_finished(store: Store) -> None:
    store.commit_run(run_record(1), [act("k1")], {})
    store.commit_run(run_record(2, T0 + timedelta(hours=1)), [act("k2")], {})
    assert [r.id for r in store.runs()] == ["run-2", "run-1"]
    assert [r.status for r in store.runs()] == ["committed", "committed"]
    store.finish_run("run-1", T0 + timedelta(minutes=5), {"new": 1, "done": 1})
    r1 = store.runs()[1]
    assert (r1.status, r1.finished_at) == ("finished", T0 + timedelta(minutes=5))
    assert dict(r1.counts) == {"new": 1, "done": 1}
    assert r1.as_of == datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC) and r1.rules_digest == "abc"
    assert [r.id for r in store.runs(limit=1)] == ["run-2"]
    event = dataclasses.replace(run_record(3, T0 + timedelta(hours=2)), kind="event")  # a reactive session's
    store.commit_run(event, [act("k3")], {})
    assert [(r.id, r.kind) for r in store.runs()] == [("run-3", "event"), ("run-2", "run"), ("run-1", "run")]
    assert [r.id for r in store.runs(limit=1, kind="run")] == ["run-2"]
    assert [r.id for r in store.runs(kind="event")] == ["run-3"]


def test_cursors_are_written_with_the_commit(store: Store) -> None:
    store.commit_run(run_record(), [act("k1")], {"round_robin:release": "m7"})
    assert store.get_cursor("round_robin:release") == "m7"


def test_ledger_filters(store: Store) -> None:
    store.commit_run(run_record(), [act("k1", "c1", "a"), act("k2", "c2", "b"), act("k3", "c1", "b")], {})
    ids = {e.key: e.id for e in store.ledger()}
    store.finish_attempts([(ids["k2"], "dead", "boom", 1)], T0)
    assert [e.key for e in store.ledger(status=["dead"])] == ["k2"]
    assert [e.key for e in store.ledger(status=["pending", "dead"])] == ["k1", "k2", "k3"]
    assert [e.key for e in store.ledger(client_ids=["c1"])] == ["k1", "k3"]
    assert [e.key for e in store.ledger(rule="b")] == ["k2", "k3"]
    assert [e.key for e in store.ledger(ids=[ids["k3"]])] == ["k3"]
    assert [e.key for e in store.ledger(limit=2)] == ["k1", "k2"]


def test_ledger_filters_by_type_and_planned_since(store: Store) -> None:
    """What caps, spend growth and escalations look back on: actions planned as of `since` or later."""
    early, late = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC), datetime(2026, 3, 5, 20, 59, 59, tzinfo=UTC)
    store.commit_run(run_record(1), [act("k1")], {})
    tag = Tag(id=action_id("k2"), key="k2", rule="r", client_id="c1", category="retention", reason="r",
              as_of=late, tag="vip")
    manager_level = Escalate(id=action_id("k3"), key="k3", rule="o", client_id=None, category="retention",
                             reason="r", as_of=late, to_manager_id="boss", about_manager_id="m1")
    store.commit_run(run_record(2), [tag, manager_level], {})
    assert [e.key for e in store.ledger(types=["tag", "create_task"])] == ["k1", "k2"]
    assert [e.key for e in store.ledger(since=late)] == ["k2", "k3"]  # since is inclusive
    assert [e.key for e in store.ledger(since=early + timedelta(seconds=1))] == ["k2", "k3"]
    assert [e.key for e in store.ledger(since=early)] == ["k1", "k2", "k3"]
    assert [e.key for e in store.ledger(since=early, types=["create_task"], client_ids=["c1"])] == ["k1"]
    (e,) = store.ledger(rule="o")
    assert e.client_id is None and e.action.client_id is None  # a manager-level action has no client
    for bad in (datetime(2026, 3, 1), "2026-03-01", date(2026, 3, 1)):  # an error in one store, UTC in the other
        with pytest.raises(retainer.ArgumentError, match="since is a timezone-aware datetime"):
            store.ledger(since=bad)  # type: ignore[arg-type]


def test_attempts_count_only_for_active_actions(store: Store) -> None:
    store.commit_run(run_record(), [act("k1"), act("k2")], {})
    i1, i2 = (e.id for e in store.ledger())
    later = T0 + timedelta(minutes=1)
    store.begin_attempts([i1, i2], later)
    store.finish_attempts([(i1, "done", None, 1), (i2, "failed", "RuntimeError: x", 1)], later)
    store.begin_attempts([i1, i2], later)  # done: not counted again
    e1, e2 = store.ledger()
    assert (e1.status, e1.attempts) == ("done", 1)
    assert (e2.status, e2.attempts, e2.last_error, e2.updated_at) == ("failed", 2, "RuntimeError: x", later)


def test_an_attempt_is_claimed_once(store: Store) -> None:
    """Two dispatchers that read the same pending action (a reactive session, and the nightly run in
    another process) both counted an attempt and both delivered it. With the attempts each read, only
    the first claims it."""
    store.commit_run(run_record(), [act("k1")], {})
    (e,) = store.ledger()
    assert store.begin_attempts([e.id], T0, {e.id: 0}) == [e.id]
    assert store.begin_attempts([e.id], T0, {e.id: 0}) == []  # the other one read 0 attempts too
    assert store.ledger()[0].attempts == 1
    assert store.begin_attempts([e.id], T0, {e.id: 1}) == [e.id]  # a retry by the one that claimed it


def test_an_attempt_holds_a_claim_until_it_ends(store: Store) -> None:
    """While an attempt runs, the entry names the process delivering it, so another dispatcher (a nightly
    run reading the ledger while a reactive session delivers) leaves it alone; the result drops the claim,
    and so does a requeue."""
    store.commit_run(run_record(), [act("k1"), act("k2")], {})
    i1, i2 = (e.id for e in store.ledger())
    assert [e.claimed_by for e in store.ledger()] == [None, None]
    store.begin_attempts([i1, i2], T0)
    assert [(e.claimed_by or "").partition("@")[0] for e in store.ledger()] == [claim_holder()] * 2
    store.finish_attempts([(i1, "failed", "x", 1)], T0)
    assert [(e.claimed_by or "").partition("@")[0] for e in store.ledger()] == ["", claim_holder()]
    store.finish_attempts([(i2, "dead", "x", 1)], T0)
    store.begin_attempts([i1], T0)
    assert store.requeue([i1, i2], T0) == [i1, i2]
    assert [(e.status, e.claimed_by) for e in store.ledger()] == [("pending", None)] * 2


def test_an_attempt_and_a_requeue_need_the_claim_the_caller_read(store: Store) -> None:
    """Attempts alone come back to the same number: a replay resets them to 0 and its own delivery counts
    one, while a session that read 1 before waits to retry. The claim tells the two apart."""
    store.commit_run(run_record(), [act("k1")], {})
    (e,) = store.ledger()
    store.begin_attempts([e.id], T0)
    store.finish_attempts([(e.id, "failed", "x", 1)], T0)  # the session's first try; it will retry with 1
    assert store.requeue([e.id], T0, {e.id: None}) == [e.id]  # a replay read it unclaimed
    assert store.begin_attempts([e.id], T0, {e.id: 0}, {e.id: None}) == [e.id]  # and delivers it: attempts 1
    assert store.begin_attempts([e.id], T0, {e.id: 1}, {e.id: None}) == []  # the session's retry: claimed since
    assert store.requeue([e.id], T0, {e.id: None}) == []  # pending: nothing to requeue anyway
    store.finish_attempts([(e.id, "failed", "y", 1)], T0)
    store.begin_attempts([e.id], T0)
    assert store.requeue([e.id], T0, {e.id: None}) == []  # failed, but claimed since it was read
    assert store.ledger()[0].attempts == 2


def test_a_result_is_recorded_only_under_the_claim_given(store: Store) -> None:
    """A run whose attempts ran out marked an action dead while a session with more attempts to give was
    delivering it; the session's success then could not be recorded, and a replay sent it again."""
    store.commit_run(run_record(), [act("k1")], {})
    (e,) = store.ledger()
    store.begin_attempts([e.id], T0)  # the session's attempt: claimed
    store.finish_attempts([(e.id, "dead", "gave up", 1)], T0, {e.id: None})  # the run read it unclaimed
    assert (store.ledger()[0].status, store.ledger()[0].claimed_by is not None) == ("pending", True)
    store.finish_attempts([(e.id, "done", None, 1)], T0, {e.id: claim_holder()})  # the session's own result
    assert (store.ledger()[0].status, store.ledger()[0].claimed_by) == ("done", None)


def test_requeue_moves_failed_and_dead_only(store: Store) -> None:
    store.commit_run(run_record(), [act("k1"), act("k2"), act("k3")], {})
    i1, i2, i3 = (e.id for e in store.ledger())
    store.begin_attempts([i1, i2, i3], T0)
    store.finish_attempts([(i1, "done", None, 1), (i2, "dead", "boom", 1), (i3, "failed", "x", 1)], T0)
    assert store.requeue([i1, i2, i3], T0) == [i2, i3]
    e1, e2, e3 = store.ledger()
    assert (e1.status, e1.attempts) == ("done", 1)  # never re-sent: that would duplicate it
    assert (e2.status, e2.attempts) == ("pending", 0) and (e3.status, e3.attempts) == ("pending", 0)


def test_requeue_of_an_unknown_id_moves_nothing(store: Store) -> None:
    store.commit_run(run_record(), [act("k1")], {})
    (e,) = store.ledger()
    store.finish_attempts([(e.id, "dead", "boom", 1)], T0)
    with pytest.raises(StoreError, match="no action with id 'nope'"):
        store.requeue([e.id, "nope"], T0)
    assert store.ledger()[0].status == "dead"


def test_outcome_is_stored_and_marks_done(store: Store) -> None:
    store.commit_run(run_record(), [act("k1")], {})
    (e,) = store.ledger()
    at = T0 + timedelta(days=3)
    outcome = {"result": "completed", "note": "called, all fine"}
    got = store.set_outcome(e.id, outcome, at)
    assert (got.status, got.outcome, got.outcome_at) == ("done", outcome, at)
    assert store.ledger()[0] == got
    with pytest.raises(StoreError, match="no action with id"):
        store.set_outcome("nope", {"result": "x"}, at)


def test_an_outcome_on_a_dead_action_keeps_it_dead(store: Store) -> None:
    """The CRM refused it: an outcome the host records to close it ("refused") does not make it an action
    that took effect (a refused move counted as made, and the client's tasks went to a manager who never got
    it). It stays dead, with the outcome."""
    store.commit_run(run_record(), [act("k1")], {})
    (e,) = store.ledger()
    store.begin_attempts([e.id], T0, {e.id: 0})
    store.finish_attempts([(e.id, "dead", "422 refused", 1)], T0)
    got = store.set_outcome(e.id, {"result": "refused"}, T0)
    assert (got.status, got.outcome, got.void) == ("dead", {"result": "refused"}, True)
    assert store.ledger()[0] == got


def test_an_empty_outcome_is_refused(store: Store) -> None:
    """A CRM callback with an empty body, passed on as is, marked an undelivered action done with nothing
    said, and it was never delivered."""
    store.commit_run(run_record(), [act("k1")], {})
    (e,) = store.ledger()
    with pytest.raises(retainer.DataError, match="empty"):
        store.set_outcome(e.id, {}, T0)
    assert store.ledger()[0].status == "pending"


def test_run_lock_fails_fast_while_held(store: Store) -> None:
    busy = "another retainer run is in progress"
    with store.run_lock("first"), pytest.raises(StoreError, match=busy), store.run_lock("second"):
        pass
    with store.run_lock("third"):  # released
        pass


def test_sqlite_run_lock_holds_across_connections(tmp_path: Path) -> None:
    a = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}")
    b = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}")
    held = r"in progress on .*crm\.db \(nightly run as of 2026-03-01, pid \d+"
    with a.run_lock("nightly run as of 2026-03-01"), pytest.raises(StoreError, match=held), b.run_lock("second"):
        pass
    with b.run_lock("second"):
        pass


def test_sqlite_run_lock_does_not_follow_a_link_or_take_a_pipe(tmp_path: Path) -> None:
    """`crm.db-runlock -> victim.txt` (a group-writable folder) left victim.txt empty after a run."""
    import os

    store = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data\n")
    lock = Path(os.path.realpath(tmp_path / "crm.db") + "-runlock")
    lock.symlink_to(victim)
    with pytest.raises(StoreError, match="cannot take the run lock"), store.run_lock("nightly"):
        pass
    assert victim.read_text() == "precious data\n"
    lock.unlink()
    os.mkfifo(lock)
    with pytest.raises(StoreError, match="not a regular file"), store.run_lock("nightly"):
        pass
    lock.unlink()
    with store.run_lock("nightly"):
        pass
    store.close()


def test_sqlite_ledger_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    s = retainer.open_store(url)
    s.commit_run(run_record(), [act("k1")], {"c": "v"})
    s.close()
    s = retainer.open_store(url, create=False)
    assert [e.key for e in s.ledger()] == ["k1"] and s.runs()[0].id == "run-1" and s.get_cursor("c") == "v"


def test_sqlite_store_from_before_the_ledger_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    retainer.open_store(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:  # what a store imported by the first release looks like
        conn.execute("DROP TABLE retainer_actions")
        conn.execute("DROP TABLE retainer_runs")
    s = retainer.open_store(f"sqlite:///{path}", create=False)
    assert s.commit_run(run_record(), [act("k1")], {}) == [act("k1")]


def test_sqlite_refuses_a_duplicate_even_past_the_check(tmp_path: Path) -> None:
    """The UNIQUE constraint is the last line: a raw second insert of a key fails the transaction."""
    s = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}")
    s.commit_run(run_record(), [act("k1")], {})
    with pytest.raises(sqlite3.IntegrityError):
        s.db.execute("INSERT INTO retainer_actions (id, key, run_id, type, rule, client_id, category, as_of, "  # type: ignore[attr-defined]
                      "status, created_at, updated_at, payload) SELECT 'x', key, run_id, type, rule, client_id, "
                      "category, as_of, status, created_at, updated_at, payload FROM retainer_actions")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commits=st.lists(st.lists(st.sampled_from([f"k{i}" for i in range(12)]), max_size=8), min_size=1, max_size=6))
def test_keys_are_never_committed_twice(backend: str, commits: list[list[str]]) -> None:
    with fresh(backend) as s:
        seen: list[str] = []
        for n, keys in enumerate(commits):
            got = s.commit_run(run_record(n, T0 + timedelta(hours=n)), [act(k) for k in keys], {})
            expect = [k for k in dict.fromkeys(keys) if k not in seen]
            assert [a.key for a in got] == expect
            seen += expect
        keys_in_ledger = [e.key for e in s.ledger()]
        assert keys_in_ledger == seen and len(set(keys_in_ledger)) == len(keys_in_ledger)
        assert all(e.status in STATUSES for e in s.ledger())
        assert len(s.runs()) == len(commits)


_KEYS = [f"k{i}" for i in range(16)]
_CLIENTS = ["c1", "c2", "c3", "c%3A4"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    commits=st.lists(st.lists(st.tuples(st.sampled_from(_KEYS), st.sampled_from(_CLIENTS)), max_size=6),
                     min_size=1, max_size=5),
    settle=st.lists(st.tuples(st.sampled_from(_KEYS), st.sampled_from(["done", "failed", "dead"])), max_size=6),
    asked_ids=st.none() | st.lists(st.sampled_from(_KEYS), max_size=5),
    asked_clients=st.none() | st.lists(st.sampled_from([*_CLIENTS, "nobody"]), max_size=5),
    status=st.none() | st.lists(st.sampled_from(STATUSES), min_size=1, max_size=4, unique=True),
    limit=st.none() | st.integers(1, 5),
    days=st.lists(st.integers(0, 4), min_size=5, max_size=5),
    since=st.none() | st.integers(0, 5),
)  # fmt: skip
def test_every_store_answers_ledger_queries_alike_in_commit_order(
    commits: list[list[tuple[str, str]]],
    settle: list[tuple[str, str]],
    asked_ids: list[str] | None,
    asked_clients: list[str] | None,
    status: list[str] | None,
    limit: int | None,
    days: list[int],
    since: int | None,
) -> None:
    """The memory store looks a few ids or clients up in its own indexes, and bisects "planned since"
    while the runs' as_of never went back, instead of reading the whole ledger; the answer must be the
    SQLite store's: the same entries, in commit order."""
    answers = []
    day0 = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    for backend in ("memory", "sqlite"):
        with fresh(backend) as s:
            for n, pairs in enumerate(commits):  # each run as of its own day, sometimes an earlier one
                at = day0 + timedelta(days=days[n])
                actions = [act(k, c).model_copy(update={"as_of": at}) for k, c in pairs]
                s.commit_run(run_record(n, T0 + timedelta(hours=n)), actions, {})
            ids = {e.key: e.id for e in s.ledger()}
            for k, st_ in settle:
                if k in ids:
                    s.finish_attempts([(ids[k], st_, None, 1)], T0)  # type: ignore[list-item]
            ask = [action_id(k) for k in asked_ids] if asked_ids is not None else None
            after = day0 + timedelta(days=since) if since is not None else None
            queries: list[dict[str, Any]] = [
                {"ids": ask, "client_ids": asked_clients, "status": status, "limit": limit, "since": after},
                {"since": after}, {"since": after, "limit": limit}, {"client_ids": asked_clients},
                {"ids": ask}, {"status": status, "since": after}, {},
            ]  # fmt: skip
            everything = [e.key for e in s.ledger()]
            for q in queries:
                got = [(e.key, e.client_id, e.status) for e in s.ledger(**q)]
                answers.append(got)
                assert [k for k, _, _ in got] == [k for k in everything if k in {x[0] for x in got}]
    half = len(answers) // 2
    assert answers[:half] == answers[half:]


def test_sqlite_refuses_a_database_that_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE clients (id TEXT, segment TEXT)")
    with pytest.raises(StoreError, match="not a retainer store: it has a 'clients' table"):
        retainer.open_store(f"sqlite:///{path}", create=False)


def _move(client: str, frm: str, to: str, day: int) -> Action:
    from retainer.actions import Reassign

    key = f"release:{client}:e{day}:reassign"
    return Reassign(id=action_id(key), key=key, rule="release", client_id=client, category="retention",
                    reason="forgotten", as_of=datetime(2026, 3, day, 23, 59, 59, tzinfo=UTC),
                    from_manager_id=frm, to_manager_id=to)  # fmt: skip


def test_moves_in_flight_are_the_committed_moves_the_data_does_not_show_yet(store: Store) -> None:
    """Not shown by the data yet: the client is still with the manager it was taken from (pending, failed, or
    delivered before the data caught up). Carried out in the data, refused (dead), cancelled, archived or
    committed after as_of: not in flight. The newest commit wins."""
    store.add(managers=[{"id": m} for m in ("m1", "m2", "m3")],
              clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m2"},
                       {"id": "c3", "manager_id": "m1"}, {"id": "c4", "manager_id": "m1"},
                       {"id": "c5", "manager_id": "m1", "status": "archived"}, {"id": "c6", "manager_id": "m1"}])
    moves = [_move("c1", "m1", "m2", 1), _move("c2", "m1", "m2", 1), _move("c3", "m1", "m2", 1),
             _move("c4", "m1", "m2", 1), _move("c5", "m1", "m2", 1), _move("c6", "m1", "m2", 5),
             _move("c1", "m1", "m3", 2)]  # fmt: skip
    store.commit_run(run_record(), moves, {})
    store.set_outcome(moves[3].id, {"cancelled": "moved back by hand"}, T0)
    store.finish_attempts([(moves[2].id, "dead", "422: refused", 1)], T0)
    assert store.moves_in_flight(datetime(2026, 3, 3, tzinfo=UTC)) == {"c1": ("m1", "m3")}
    assert store.moves_in_flight(datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)) == {"c1": ("m1", "m2")}
    store.finish_attempts([(moves[0].id, "failed", "503", 1)], T0)  # failed: still to be carried out
    assert store.moves_in_flight(datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)) == {"c1": ("m1", "m2")}
    store.finish_attempts([(moves[0].id, "done", None, 2)], T0)  # delivered; the data has not caught up
    assert store.moves_in_flight(datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)) == {"c1": ("m1", "m2")}
    assert store.moves_in_flight(datetime(2026, 3, 6, tzinfo=UTC))["c6"] == ("m1", "m2")


def test_a_move_the_data_has_shown_carried_out_is_over(store: Store) -> None:
    """Once a write has shown the client with the manager a move gave it to, the move is done and the data
    says who has the client: c1 carried out, then moved back by hand. A write that leaves the manager as
    it was (c3: a renamed client, a nightly re-import) says nothing, and one that gave the client the
    move's manager before the commit (c4, long ago) does not carry it out."""
    store.add(managers=[{"id": m} for m in ("m1", "m2", "m3")],
              clients=[{"id": c, "manager_id": "m1"} for c in ("c1", "c2", "c3", "c4")])  # fmt: skip
    store.commit_run(run_record(1), [act("r:c9:e:x", client="c4")], {})
    store.upsert(clients=[{"id": "c4", "manager_id": "m2"}])  # before the move below: m2's, then m1's again
    store.upsert(clients=[{"id": "c4", "manager_id": "m1"}])
    moves = [_move(c, "m1", "m2", 1) for c in ("c1", "c2", "c3", "c4")]
    store.commit_run(run_record(2), moves, {})
    at = datetime(2026, 3, 2, tzinfo=UTC)
    assert set(store.moves_in_flight(at)) == {"c1", "c2", "c3", "c4"}
    assert store.manager_changes(["c1", "c2", "c3"]) == {}
    store.upsert(clients=[{"id": "c1", "manager_id": "m2"}])  # carried out: not in flight, as before
    assert set(store.moves_in_flight(at)) == {"c2", "c3", "c4"}
    store.upsert(clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m3"},
                          {"id": "c3", "manager_id": "m1", "name": "Acme"}])  # fmt: skip
    assert store.moves_in_flight(at) == {"c3": ("m1", "m2"), "c4": ("m1", "m2")}
    entries = {e.client_id: e for e in store.ledger(types=["reassign"])}
    assert [entries[c].seq for c in ("c1", "c2", "c3", "c4")] == [2, 3, 4, 5]
    changes = store.manager_changes(["c1", "c2", "c3", "c4", "c9"])
    assert changes == {"c1": {"m2": 5, "m1": 5}, "c2": {"m3": 5}, "c4": {"m2": 1, "m1": 1}}
    assert ledger.unapplied_moves(store, store.clients(at), at) == {"c3": "m2", "c4": "m2"}


def test_moves_made_before_the_data_shows_the_last_one_chain(store: Store) -> None:
    """A client released again before the data showed its first move was taken from the manager it had
    been given to: m1 -> m2 -> m3 leaves it with m3, m1 -> m2 -> m1 back where the data shows it. Once the
    data shows the first move, the second is the one in flight."""
    store.add(managers=[{"id": m} for m in ("m1", "m2", "m3")],
              clients=[{"id": c, "manager_id": "m1"} for c in ("c1", "c2")])  # fmt: skip
    store.commit_run(run_record(1), [_move("c1", "m1", "m2", 1), _move("c2", "m1", "m2", 1)], {})
    store.commit_run(run_record(2), [_move("c1", "m2", "m3", 2), _move("c2", "m2", "m1", 2)], {})
    at = datetime(2026, 3, 3, tzinfo=UTC)
    assert store.moves_in_flight(at) == {"c1": ("m1", "m3")}
    assert ledger.unapplied_moves(store, store.clients(at), at) == {"c1": "m3"}
    store.upsert(clients=[{"id": "c1", "manager_id": "m2"}])
    assert store.moves_in_flight(at) == {"c1": ("m2", "m3")}
    assert ledger.unapplied_moves(store, store.clients(at), at) == {"c1": "m3"}


def test_a_move_carried_out_carries_out_the_moves_before_it(store: Store) -> None:
    """c1: m1 -> m2 -> m3, and the CRM shows m3 without ever showing m2; m1 then takes the client back by
    hand: the first move must not come back to life (the client went to m2, who never had it). c2: m1 -> m2,
    m2 -> m1, m1 -> m2 while the data showed m1; the CRM carries out the last: the middle one is over too."""
    store.add(managers=[{"id": m} for m in ("m1", "m2", "m3")],
              clients=[{"id": c, "manager_id": "m1"} for c in ("c1", "c2")])  # fmt: skip
    store.commit_run(run_record(1), [_move("c1", "m1", "m2", 1), _move("c2", "m1", "m2", 1)], {})
    store.commit_run(run_record(2), [_move("c1", "m2", "m3", 2), _move("c2", "m2", "m1", 2)], {})
    store.commit_run(run_record(3), [_move("c2", "m1", "m2", 3)], {})
    at = datetime(2026, 3, 4, tzinfo=UTC)
    assert store.moves_in_flight(at) == {"c1": ("m1", "m3"), "c2": ("m1", "m2")}
    store.upsert(clients=[{"id": "c1", "manager_id": "m3"}, {"id": "c2", "manager_id": "m2"}])
    assert store.moves_in_flight(at) == {} and ledger.unapplied_moves(store, store.clients(at), at) == {}
    store.upsert(clients=[{"id": "c1", "manager_id": "m1"}])
    assert store.moves_in_flight(at) == {} and ledger.unapplied_moves(store, store.clients(at), at) == {}


def test_outcomes_are_kept_as_json_alike_by_every_store(store: Store) -> None:
    """The memory store kept the raw objects and SQLite wrote str() of them: a host's tests on memory://
    read other values than production did. A key that is not text is refused, naming it."""
    from decimal import Decimal

    from retainer.errors import DataError

    a = act("r:c1:e:x")
    store.commit_run(run_record(), [a], {})
    e = store.set_outcome(a.id, {"at": datetime(2026, 1, 15, 9, 30, tzinfo=UTC), "day": date(2026, 1, 15),
                                 "paid": Decimal("12.50"), "tags": {"b", "a"}}, T0)  # fmt: skip
    expected = {"at": "2026-01-15T09:30:00+00:00", "day": "2026-01-15", "paid": 12.5, "tags": ["a", "b"]}
    assert e.outcome == expected and store.ledger(ids=[a.id])[0].outcome == expected
    with pytest.raises(DataError, match="outcome keys are text; 1 is int"):
        store.set_outcome(a.id, {1: "x"}, T0)
    with pytest.raises(DataError, match="cannot be kept as JSON"):
        store.set_outcome(a.id, {"x": object()}, T0)
    assert store.ledger(ids=[a.id])[0].outcome == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_an_outcome_that_is_not_json_is_refused(store: Store, bad: Any) -> None:
    """NaN was stored, and SQLite's JSON functions then refused the ledger row in every later plan."""
    from decimal import Decimal

    from retainer.errors import DataError

    a = act("r:c1:e:x")
    store.commit_run(run_record(), [a], {})
    for value in (bad, Decimal(str(bad))):
        with pytest.raises(DataError, match="cannot be kept as JSON"):
            store.set_outcome(a.id, {"score": value}, T0)
    assert store.ledger(ids=[a.id])[0].outcome is None


def test_sqlite_a_full_disk_is_a_store_error_and_keeps_nothing(tmp_path: Path) -> None:
    """SQLite rolls back by itself on SQLITE_FULL; our second ROLLBACK then raised "no transaction is active"
    over the error that said what happened, as a raw sqlite3 error (a traceback from `retainer run`)."""
    s = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}")
    s.commit_run(run_record(1), [act("k0")], {})
    pages = s.conn.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[attr-defined]
    s.conn.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[attr-defined]  # the disk is full
    many = [act(f"k{i}-" + "x" * 500) for i in range(1, 200)]
    with pytest.raises(StoreError, match=r"cannot write: database or disk is full; nothing of this write was kept"):
        s.commit_run(run_record(2), many, {})
    assert [e.key for e in s.ledger()] == ["k0"] and [r.id for r in s.runs()] == ["run-1"]
    s.conn.execute("PRAGMA max_page_count = 1073741823")  # type: ignore[attr-defined]  # room again
    assert len(s.commit_run(run_record(2), many, {})) == 199
