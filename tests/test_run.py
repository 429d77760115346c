"""Engine.run: commit what is new, once, then deliver it with retries and dead letters (DESIGN §1, §6, §7)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import engine_for
from httpfake import FakeClock

import retainer
from retainer import RetainerError, StoreError
from retainer.actions import Action
from retainer.adapters import CallbackHandler, PermanentError, Retry
from retainer.adapters.dispatch import Dispatcher
from retainer.errors import StoreBusyError
from retainer.stores import Store
from retainer.testing import RecordingHandler

FORGOTTEN = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"}]}
WITH_RELEASE = {
    "rules": [
        {"id": "forgotten", "kind": "forgotten", "after": "60d"},
        {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "14d",
         "then": [{"reassign": {"strategy": "round_robin"}}]},
    ]
}  # fmt: skip


def crm(store: Store, n: int = 3) -> None:
    store.add(
        managers=[{"id": "m1", "supervisor_id": "boss"}, {"id": "m2", "supervisor_id": "boss"},
                  {"id": "m3", "supervisor_id": "boss"}, {"id": "boss"}],
        clients=[{"id": f"c{i}", "manager_id": "m1"} for i in range(1, n + 1)],
        touches=[{"id": f"t{i}", "client_id": f"c{i}", "at": "2026-01-01T10:00:00", "kind": "call"}
                 for i in range(1, n + 1)],
    )  # fmt: skip


def run(store: Store, as_of: str = "2026-03-02", rules: dict[str, Any] = FORGOTTEN, **kw: Any) -> Any:
    clock = kw.pop("clock", None) or FakeClock(max(FakeClock().now, datetime.fromisoformat(as_of).replace(tzinfo=UTC)))
    return engine_for(rules, store).run(as_of, clock=clock, sleep=clock.sleep, **kw)


def test_a_run_commits_and_delivers_then_a_rerun_is_all_duplicates(store: Store) -> None:
    crm(store)
    h = RecordingHandler()
    first = run(store, handlers=h)
    assert [a.client_id for a in first.committed] == ["c1", "c2", "c3"]
    assert sorted(h.ids) == sorted(a.id for a in first.committed)
    assert {e.status for e in store.ledger()} == {"done"}
    assert first.counts() == {"new": 3, "duplicate": 0, "suppressed": 0, "done": 3, "dead": 0, "failed": 0,
                              "no_handler": 0, "left": 0, "cancelled": 0}  # fmt: skip
    again = run(store, "2026-03-05", handlers=h)
    assert again.committed == [] and len(again.duplicates) == 3 and len(h.actions) == 3
    assert again.duplicates[0].detail.startswith("already in the ledger (done)")
    assert len(store.ledger()) == 3
    assert [r.status for r in store.runs()] == ["finished", "finished"]
    assert store.runs()[0].counts["duplicate"] == 3


def test_plan_and_dry_run_see_the_ledger_but_write_nothing(store: Store) -> None:
    crm(store)
    engine = engine_for(WITH_RELEASE, store)
    dry = engine.run("2026-03-02", dry_run=True)
    assert dry.run is None and dry.committed == [] and len(dry.plan.actions) == 3
    # a preview says what a run would commit (found in an embedding review: `new: 0`, nothing to do)
    assert dry.counts()["new"] == 3 and dry.new == dry.plan.actions
    assert [a["key"] for a in json.loads(dry.to_json())["new"]] == [a.key for a in dry.plan.actions]
    assert store.ledger() == [] and store.runs() == []
    run(store, handlers=RecordingHandler())
    p = engine.plan("2026-03-02")
    assert p.actions == [] and {s.reason_code for s in p.suppressed} == {"duplicate"}
    assert engine.run("2026-03-02", dry_run=True).plan.to_json() == p.to_json()


def test_a_new_episode_is_a_new_action(store: Store) -> None:
    crm(store, 1)
    h = RecordingHandler()
    run(store, "2026-03-02", handlers=h)
    store.add(touches=[{"id": "t-new", "client_id": "c1", "at": "2026-03-10T10:00:00", "kind": "call"}])
    assert run(store, "2026-04-01", handlers=h).committed == []  # touched: not forgotten now
    again = run(store, "2026-05-10", handlers=h)  # forgotten again: 61 days after 2026-03-10
    assert [a.key for a in again.committed] == ["forgotten:c1:2026-03-10:create_task"]
    assert [a.key for a in h.actions] == ["forgotten:c1:2026-01-01:create_task", "forgotten:c1:2026-03-10:create_task"]


def test_a_committed_reassignment_is_not_decided_again(store: Store) -> None:
    """The CRM has not applied it yet (the client still shows m1): no second pick, no cursor move."""
    crm(store, 2)
    h = RecordingHandler()
    first = run(store, "2026-03-20", WITH_RELEASE, handlers=h)
    moves = {a.client_id: a.to_manager_id for a in first.committed if a.type == "reassign"}
    assert moves == {"c1": "m2", "c2": "m3"}
    cursor = store.get_cursor("round_robin:release")
    assert cursor == "m3"
    again = run(store, "2026-03-21", WITH_RELEASE, handlers=h)
    assert again.committed == [] and store.get_cursor("round_robin:release") == cursor
    dup = [s for s in again.duplicates if s.action.type == "reassign"]
    assert len(dup) == 2 and all(s.action.to_manager_id is None for s in dup)


def test_retries_back_off_exponentially_then_the_action_is_dead(store: Store) -> None:
    crm(store, 1)
    clock = FakeClock()
    h = RecordingHandler(fail=lambda a: True, error="CRM said no")
    report = run(store, handlers=h, retry=Retry(max_attempts=4, base_delay=1.0), clock=clock)
    (e,) = store.ledger()
    assert (e.status, e.attempts) == ("dead", 4)
    assert e.last_error == f"RuntimeError: CRM said no for {e.id}"
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert report.dispatch.dead == {e.id: e.last_error} and not report.ok
    assert h.calls == {e.id: 4}


def test_backoff_is_capped(store: Store) -> None:
    crm(store, 1)
    clock = FakeClock()
    run(store, handlers=RecordingHandler(fail=lambda a: True), clock=clock,
        retry=Retry(max_attempts=6, base_delay=10, max_delay=30))  # fmt: skip
    assert clock.sleeps == [10, 20, 30, 30, 30]


def test_a_transient_failure_is_retried_to_success(store: Store) -> None:
    crm(store, 3)
    clock = FakeClock()
    h = RecordingHandler(fail=2)  # the first two calls fail
    report = run(store, handlers=h, clock=clock)
    assert report.ok and len(report.dispatch.done) == 3
    assert {e.status for e in store.ledger()} == {"done"}
    assert sorted(e.attempts for e in store.ledger()) == [1, 2, 2]
    assert clock.sleeps == [1.0]  # both failures wait in one batch


def test_a_permanent_error_is_dead_at_once(store: Store) -> None:
    crm(store, 1)
    run(store, handlers=RecordingHandler(fail=1, permanent=True))
    (e,) = store.ledger()
    assert (e.status, e.attempts) == ("dead", 1) and e.last_error.endswith("(not retried)")


def test_routing_by_type_and_actions_without_handler_stay_pending(store: Store) -> None:
    crm(store, 2)
    tasks = RecordingHandler()
    rest = RecordingHandler()
    report = run(store, "2026-03-20", WITH_RELEASE, handlers={"create_task": tasks, "*": rest})
    assert {a.type for a in tasks.actions} == {"create_task"} and {a.type for a in rest.actions} == {"reassign"}
    assert report.ok and report.dispatch.no_handler == {}

    crm_only_tasks = RecordingHandler()
    other = engine_for(WITH_RELEASE, store)
    store.add(clients=[{"id": "c9", "manager_id": "m1", "created_at": "2026-01-01T00:00:00"}])
    night = FakeClock(datetime(2026, 3, 20, tzinfo=UTC))
    r = other.run("2026-03-20", handlers={"create_task": crm_only_tasks}, clock=night)
    assert r.dispatch.no_handler == {"reassign": 1}
    assert [e.status for e in store.ledger(client_ids=["c9"])] == ["done", "pending"]
    later = other.run("2026-03-21", handlers=RecordingHandler(), clock=night)  # the next run delivers it
    assert later.committed == [] and len(later.dispatch.done) == 1
    assert {e.status for e in store.ledger()} == {"done"}


def test_without_handlers_actions_wait_in_the_ledger(store: Store) -> None:
    crm(store, 2)
    report = run(store)
    assert report.dispatch.no_handler == {"create_task": 2}
    assert [e.status for e in store.ledger()] == ["pending", "pending"]


def test_an_interrupted_dispatch_keeps_what_was_delivered_and_the_next_run_finishes(store: Store) -> None:
    crm(store, 3)
    seen: list[str] = []

    def flaky(a: Action) -> None:
        if len(seen) == 1:
            raise KeyboardInterrupt  # the operator pressed Ctrl-C mid-delivery
        seen.append(a.id)

    with pytest.raises(KeyboardInterrupt):
        run(store, handlers=CallbackHandler(flaky))
    # the one in flight is `failed`: whether it went out is unknown, and the next run tries it again
    assert [(e.status, e.attempts) for e in store.ledger()] == [("done", 1), ("failed", 1), ("pending", 0)]
    assert store.ledger()[1].last_error == "interrupted while delivering (KeyboardInterrupt)"
    assert store.runs()[0].status == "committed"  # interrupted after its commit
    h = RecordingHandler()
    nxt = run(store, "2026-03-03", handlers=h)
    assert nxt.committed == [] and len(h.actions) == 2 and seen[0] not in h.ids
    assert {e.status for e in store.ledger()} == {"done"}
    assert [r.status for r in store.runs()] == ["finished", "interrupted"]  # the next run closed it


def test_attempts_never_exceed_the_limit_across_runs(store: Store) -> None:
    crm(store, 1)
    run(store, handlers=RecordingHandler(fail=lambda a: True), retry=Retry(max_attempts=3))
    h = RecordingHandler()
    run(store, "2026-03-03", handlers=h, retry=Retry(max_attempts=3))
    (e,) = store.ledger()
    assert (e.status, e.attempts) == ("dead", 3) and h.actions == []  # dead waits for a person


def test_replay_dead_actions(store: Store) -> None:
    crm(store, 2)
    engine = engine_for(FORGOTTEN, store)
    clock = FakeClock()
    engine.run("2026-03-02", handlers=RecordingHandler(fail=lambda a: True), retry=Retry(max_attempts=2),
               clock=clock, sleep=clock.sleep)  # fmt: skip
    assert {e.status for e in store.ledger()} == {"dead"}
    first_id = store.ledger()[0].id
    moved, report = engine.replay([first_id], clock=clock, sleep=clock.sleep)  # no handler: back in the queue
    assert moved == [first_id] and report is None
    assert [e.status for e in store.ledger()] == ["pending", "dead"]
    h = RecordingHandler()
    moved, report = engine.replay(dead=True, handlers=h, clock=clock, sleep=clock.sleep)
    assert len(moved) == 1 and report is not None and len(report.done) == 1
    assert [e.status for e in store.ledger()] == ["pending", "done"]
    again, _ = engine.replay([store.ledger()[1].id], handlers=h, clock=clock, sleep=clock.sleep)
    assert again == [] and len(h.actions) == 1  # a done action is never re-sent


def test_a_move_the_crm_refused_stays_refused_when_the_host_closes_it(store: Store) -> None:
    """The host records what became of the dead move ("refused"): it used to become `done`, a move made, and
    the client's next task went to m2, who never got the client. `replay --dead` leaves it: it is closed."""
    store.add(managers=[{"id": "m1"}, {"id": "m2"}],
              clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2025-11-01T10:00"}])  # fmt: skip
    rules = {"version": 1, "rules": [
        *WITH_RELEASE["rules"],
        {"id": "vip", "category": "service", "when": {"tags": {"contains": "vip"}},
         "then": [{"create_task": {"title": "VIP review", "due_in": "3d"}}]}]}  # fmt: skip
    clock = FakeClock(datetime(2026, 1, 21, 2, 0, tzinfo=UTC))

    def crm(a: Action) -> None:
        if a.type == "reassign":
            raise PermanentError("422: m2 is on leave")

    e = engine_for(rules, store)
    e.run("2026-01-20", handlers=crm, clock=clock, sleep=clock.sleep)
    (move,) = store.ledger(types=["reassign"])
    e.record_outcome(move.id, {"result": "refused"}, clock=clock)
    assert store.ledger(ids=[move.id])[0].status == "dead"
    store.upsert(clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01", "tags": "vip"}])  # a week on
    (task,) = [a for a in e.plan("2026-01-27").actions if a.rule == "vip" and a.type == "create_task"]
    assert task.assignee_id == "m1"  # type: ignore[attr-defined]
    assert e.replay(dead=True, clock=clock, sleep=clock.sleep)[0] == []


def test_record_outcome(store: Store) -> None:
    crm(store, 1)
    engine = engine_for(FORGOTTEN, store)
    engine.run("2026-03-02")
    (e,) = store.ledger()
    got = engine.record_outcome(e.id, {"result": "completed", "churn_reason": "price"})
    assert got.status == "done" and got.outcome == {"result": "completed", "churn_reason": "price"}
    with pytest.raises(StoreError, match="no action with id 'x'"):
        engine.record_outcome("x", {"result": "completed"})
    with pytest.raises(RetainerError, match="mapping"):
        engine.record_outcome(e.id, "completed")  # type: ignore[arg-type]
    with pytest.raises(retainer.ArgumentError, match="clock must return a timezone-aware datetime"):
        engine.record_outcome(e.id, {"note": "x"}, clock=lambda: datetime(2026, 3, 3))  # memory: naive; SQLite: local
    assert store.ledger()[0].outcome == {"result": "completed", "churn_reason": "price"}


def test_a_second_run_while_one_is_in_progress_fails_fast(store: Store) -> None:
    crm(store, 2)
    engine = engine_for(FORGOTTEN, store)
    inner: list[Any] = []

    def nested(a: Action) -> None:
        if not inner:
            with pytest.raises(StoreError, match="another retainer run is in progress") as exc:
                engine.run("2026-03-02")
            inner.append(exc.value)

    engine.run("2026-03-02", handlers=CallbackHandler(nested))
    assert inner and len(store.ledger()) == 2 and len(store.runs()) == 1


def test_a_bad_handler_is_refused_before_anything_is_written(store: Store) -> None:
    crm(store, 1)
    from retainer.errors import DispatchError

    with pytest.raises(DispatchError, match="handle"):
        run(store, handlers={"create_task": object()})  # type: ignore[dict-item]
    assert store.ledger() == [] and store.runs() == []


def test_a_plain_function_is_a_handler(store: Store) -> None:
    """Wrapped in CallbackHandler, alone or by action type: `handlers=crm.create_task` just works."""
    crm(store, 2)
    got: list[str] = []
    assert run(store, handlers=lambda a: got.append(a.client_id)).ok and sorted(got) == ["c1", "c2"]
    store.add(clients=[{"id": "c9", "manager_id": "m1"}],
              touches=[{"id": "t9", "client_id": "c9", "at": "2026-01-02T10:00:00"}])
    assert run(store, "2026-03-03", handlers={"create_task": got.append}).ok
    assert [getattr(a, "client_id", None) for a in got[2:]] == ["c9"]
    assert {e.status for e in store.ledger()} == {"done"}


def test_a_single_handler_that_is_falsy_still_delivers(store: Store) -> None:
    class Empty(RecordingHandler):
        def __len__(self) -> int:  # e.g. a handler that is also an (empty) collection
            return 0

    crm(store, 1)
    h = Empty()
    assert run(store, handlers=h).ok and len(h.actions) == 1


def test_a_handler_that_keeps_failing_is_given_up_on_and_the_rest_waits(store: Store) -> None:
    """A webhook that times out would otherwise cost (actions x attempts x timeout): hours, with the
    lock held. After `stop_after` failures in a row the run stops using it; the rest stays pending."""
    crm(store, 3)
    store.add(clients=[{"id": f"d{i}", "manager_id": "m2"} for i in range(20)],
              touches=[{"id": f"u{i}", "client_id": f"d{i}", "at": "2026-01-01T10:00:00", "kind": "call"}
                       for i in range(20)])  # fmt: skip
    down = RecordingHandler(fail=lambda a: True, error="timed out")
    clock = FakeClock()
    report = run(store, handlers=down, retry=Retry(max_attempts=3, stop_after=5), clock=clock)
    assert clock.sleeps == []  # the retries of a handler given up on are not waited for
    d = report.dispatch
    assert list(d.stopped) == ["RecordingHandler"] and "5 failures in a row" in d.stopped["RecordingHandler"]
    assert sum(down.calls.values()) == 5 and d.left == 18 and not d.complete and not report.ok
    assert sorted(e.status for e in store.ledger()) == ["failed"] * 5 + ["pending"] * 18
    later = run(store, "2026-03-03", handlers=RecordingHandler())  # the endpoint is back: all delivered
    assert len(later.dispatch.done) == 23 and {e.status for e in store.ledger()} == {"done"}


def test_a_permanent_rejection_does_not_count_as_the_endpoint_being_down(store: Store) -> None:
    crm(store, 3)
    report = run(store, handlers=RecordingHandler(fail=lambda a: True, permanent=True),
                 retry=Retry(stop_after=2))  # fmt: skip
    assert report.dispatch.stopped == {} and len(report.dispatch.dead) == 3


def test_an_outcome_recorded_during_delivery_stands(store: Store) -> None:
    """The host marks an action done by hand while the run is still retrying it: no more attempts."""
    crm(store, 1)
    engine = engine_for(FORGOTTEN, store)
    clock = FakeClock()
    calls: list[str] = []

    def flaky(a: Action) -> None:
        calls.append(a.id)
        if len(calls) == 1:
            engine.record_outcome(a.id, {"result": "done by hand"})
            raise RuntimeError("503")

    report = engine.run("2026-03-02", handlers=CallbackHandler(flaky), clock=clock, sleep=clock.sleep)
    (e,) = store.ledger()
    assert calls == [e.id] and report.dispatch.skipped == [e.id]
    assert (e.status, e.outcome, e.last_error) == ("done", {"result": "done by hand"}, None)


def test_outcomes_merge(store: Store) -> None:
    crm(store, 1)
    engine = engine_for(FORGOTTEN, store)
    engine.run("2026-03-02")
    (e,) = store.ledger()
    engine.record_outcome(e.id, {"result": "completed"})
    assert engine.record_outcome(e.id, {"churn_reason": "price"}).outcome == {"result": "completed",
                                                                            "churn_reason": "price"}


def test_ledger_statuses_are_checked(store: Store) -> None:
    """A RetainerError, so hosts catch it with the rest, and still the ValueError it was before."""
    with pytest.raises(retainer.ArgumentError, match="list of statuses"):
        store.ledger(status="dead")  # type: ignore[arg-type]
    with pytest.raises(retainer.ArgumentError, match="did you mean 'dead'"):
        store.ledger(status=["deadd"])  # type: ignore[list-item]
    assert issubclass(retainer.ArgumentError, RetainerError) and issubclass(retainer.ArgumentError, ValueError)
    for name in ("ids", "client_ids", "types"):  # one id was read as one id per character
        with pytest.raises(retainer.ArgumentError, match=f"{name} is a list, e.g. \\['c1'\\]"):
            store.ledger(**{name: "c1"})


def test_an_engine_without_rules_or_a_store_is_refused_as_a_retainer_error(store: Store) -> None:
    with pytest.raises(retainer.ArgumentError, match="rules come from a file path, YAML/JSON text or a dict"):
        retainer.Engine(None, store)  # type: ignore[arg-type]
    with pytest.raises(retainer.ArgumentError, match="Engine needs a store"):
        retainer.Engine(FORGOTTEN, None)  # type: ignore[arg-type]


def test_a_single_client_id_as_a_string_is_refused(store: Store) -> None:
    """`clients="c1"` was planned as the clients 'c' and '1'."""
    crm(store, 1)
    engine = engine_for(FORGOTTEN, store)
    with pytest.raises(retainer.ArgumentError, match=r"clients is a list of client ids, e.g. \['c1'\]"):
        engine.plan("2026-03-02", clients="c1")  # type: ignore[arg-type]
    assert [a.client_id for a in engine.plan("2026-03-02", clients=["c1"]).actions] == ["c1"]


def test_running_an_earlier_date_warns(store: Store) -> None:
    crm(store, 1)
    run(store, "2026-03-10")
    report = run(store, "2026-03-02")
    assert any("is before the last run's" in w for w in report.plan.warnings)


@pytest.mark.parametrize("change", ["paid", "do_not_contact"])
def test_what_changes_while_the_nightly_run_plans_is_looked_at_before_its_actions_go_out(
    store: Store, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """Found in review: a run as of today trusted its own plan, so a payment (or a do-not-contact request)
    written by another process while it was planning did not stop the reminder it had just planned."""
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "name": "Acme"}],
              invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                         "amount": "1200"}])  # fmt: skip
    rules = {"rules": [{"id": "debtor", "kind": "debtor", "steps": [
        {"after": "3d", "notify_client": {"channel": "email", "template": "reminder"}}]}]}  # fmt: skip
    engine = engine_for(rules, store)
    real = engine._plan

    def plan_then_change(*a: Any, **k: Any) -> Any:
        out = real(*a, **k)
        if change == "paid":
            store.upsert(invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                                    "amount": "1200", "paid_at": "2026-02-20T01:00:00Z"}])  # fmt: skip
        else:
            store.upsert(clients=[{"id": "c1", "manager_id": "m1", "name": "Acme", "contact_policy": "do_not_contact"}])
        return out

    monkeypatch.setattr(engine, "_plan", plan_then_change)
    h = RecordingHandler()
    report = engine.run("2026-02-20", h, clock=lambda: datetime(2026, 2, 20, 2, tzinfo=UTC))  # as of today
    assert [a.key for a in report.committed] == ["debtor:c1:i1+3d:notify_client"]
    assert h.actions == []
    assert report.dispatch is not None and list(report.dispatch.cancelled.values()) == [change]


def test_a_number_beyond_64_bits_in_the_evidence_is_planned_committed_and_delivered(store: Store) -> None:
    """A client attribute can hold an account number too big for 64 bits: the plan's JSON, the ledger's
    copy and the delivered action keep it exactly (orjson stops at 64 bits; the standard library takes
    over), in the same compact form as every other action."""
    big = 2**70 + 1
    store.add(managers=[{"id": "m1"}],
              clients=[{"id": "c1", "manager_id": "m1", "attributes": {"account": big}},
                       {"id": "c2", "manager_id": "m1", "attributes": {"account": 7}}])  # fmt: skip
    rules = {"rules": [{"id": "big", "when": {"attributes.account": {"gt": 5}}, "then": [{"tag": "x"}]}]}
    h = RecordingHandler()
    report = run(store, rules=rules, handlers=h)
    plan = json.loads(report.plan.to_json())
    assert [a["evidence"]["attributes.account"] for a in plan["actions"]] == [big, 7]
    assert report.plan.to_json_bytes() == report.plan.to_json().encode()
    lines = [json.loads(line) for line in report.plan.to_jsonl().splitlines()]
    assert [x["evidence"]["attributes.account"] for x in lines] == [big, 7]
    payloads = {e.client_id: e.payload for e in store.ledger()}
    assert json.loads(payloads["c1"])["evidence"]["attributes.account"] == big
    assert all(", " not in p and '": ' not in p for p in payloads.values())  # one compact form for both
    assert sorted(a.evidence["attributes.account"] for a in h.actions) == [7, big]


def test_a_plan_in_pieces_mixes_orjson_and_the_standard_library_piece_by_piece(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written in pieces, only the piece holding a number beyond 64 bits goes through the standard
    library (text); the others stay orjson's bytes, and all of them join to one valid JSON text."""
    from retainer import plan as plan_module

    monkeypatch.setattr(plan_module, "_PIECE", 1)
    big = 2**70 + 1
    store.add(managers=[{"id": "m1"}],
              clients=[{"id": f"c{i}", "manager_id": "m1", "attributes": {"account": big if i == 1 else i + 10}}
                       for i in range(3)])  # fmt: skip
    rules = {"rules": [{"id": "big", "when": {"attributes.account": {"gt": 5}}, "then": [{"tag": "x"}]}]}
    plan = retainer.Engine(retainer.load_rules(rules), store).plan("2026-03-01")
    pieces = list(plan.pieces())
    assert [p for p in pieces if isinstance(p, str)] == [pieces[2]]  # c1's action, the second
    text = plan.to_json()
    assert [a["evidence"]["attributes.account"] for a in json.loads(text)["actions"]] == [10, big, 12]
    assert plan.to_json_bytes() == text.encode() == b"".join(plan.json_pieces())  # bytes only: a writer's own
    out = io.BytesIO()
    plan.write_json(out)
    assert out.getvalue() == text.encode()


def test_plan_json_bytes_and_dicts(store: Store) -> None:
    """`to_json_bytes` is `to_json` as UTF-8 (non-ASCII kept), written from the actions' own fields;
    `to_dict` hands out copies, so changing one leaves the plan (and its JSON) as it was."""
    store.add(managers=[{"id": "m1", "name": "Анна"}], clients=[{"id": "c1", "manager_id": "m1", "name": "Ромашка"}])
    rules = {"rules": [{"id": "hi", "when": {"status": {"eq": "active"}},
                        "then": [{"create_task": {"title": "Позвонить {client.name}", "due_in": "1d"}}]}]}  # fmt: skip
    plan = retainer.Engine(retainer.load_rules(rules), store).plan("2026-03-01")
    text = plan.to_json()
    assert "Позвонить Ромашка" in text
    assert plan.to_json_bytes() == text.encode("utf-8")
    assert plan.to_json_bytes(indent=2) == plan.to_json(indent=2).encode("utf-8")
    d = plan.to_dict()
    d["actions"][0]["title"] = "changed"
    d["actions"][0]["evidence"] = {}
    assert plan.actions[0].title == "Позвонить Ромашка" and plan.actions[0].evidence
    assert plan.to_json() == text
    d = plan.to_dict()  # and inside them: the evidence (shared by a match's actions), stats, warnings
    d["actions"][0]["evidence"]["episode"] = "changed"
    d["stats"]["rules"]["hi"]["matched"] = 99
    d["warnings"].append("changed")
    assert plan.to_json() == text


def test_a_lone_surrogate_in_a_name_is_planned_committed_and_written() -> None:
    """orjson refuses a lone surrogate (a stray `\\udc80` escape in a JSONL name); the standard library
    writes it instead, in the plan's JSON, its lines and the ledger's copy. Only the bytes refuse it:
    UTF-8 cannot hold it."""
    from retainer.stores.memory import MemoryStore

    store = MemoryStore()
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "name": "X\udc80"}])
    rules = {"rules": [{"id": "hi", "when": {"status": {"eq": "active"}},
                        "then": [{"create_task": {"title": "Call {client.name}", "due_in": "1d"}}]}]}  # fmt: skip
    report = run(store, rules=rules)
    assert json.loads(report.plan.to_json())["actions"][0]["title"] == "Call X\udc80"
    assert json.loads(report.plan.to_jsonl())["title"] == "Call X\udc80"
    (e,) = store.ledger()
    assert e.action.title == "Call X\udc80"  # type: ignore[attr-defined]
    with pytest.raises(UnicodeEncodeError):
        report.plan.to_json_bytes()



def test_actions_out_of_attempts_do_not_count_towards_giving_up_on_a_handler(store: Store) -> None:
    """Found by a new-user review: after --max-attempts was lowered, ten actions already at the limit went
    dead without a call, and those non-calls gave up on a healthy handler, so the other actions waited."""
    crm(store, n=15)
    first = run(store)  # no handlers: 15 actions pending
    worn = sorted(a.id for a in first.committed)[:10]
    clock = FakeClock()
    for _ in range(2):  # two failed deliveries each, as earlier nights against a dead endpoint leave them
        store.begin_attempts(worn, clock())
    store.finish_attempts([(i, "failed", "ConnectionError: down", 2) for i in worn], clock())
    h = RecordingHandler()
    report = run(store, handlers=h, retry=Retry(max_attempts=2, stop_after=3), clock=clock)
    assert report.dispatch.stopped == {}
    assert sorted(report.dispatch.dead) == worn and h.calls.keys().isdisjoint(worn)
    assert len(report.dispatch.done) == 5 and report.dispatch.left == 0


def test_a_misspelt_action_type_in_handlers_is_refused_before_anything_is_committed(store: Store) -> None:
    """Found by a new-user review: the CLI refused `create_tsk=...`; the Python API left the tasks pending."""
    crm(store)
    with pytest.raises(retainer.DispatchError, match=r"unknown action type 'create_tsk'; did you mean 'create_task'\?"):
        run(store, handlers={"create_tsk": RecordingHandler(), "*": RecordingHandler()})
    assert store.ledger() == [] and store.runs() == []


def test_a_handler_class_or_a_function_of_the_wrong_shape_is_refused_before_anything_is_committed(
    store: Store,
) -> None:
    """Found by a new-user review: each action failed at delivery, was retried with backoff, and the run
    ended as if the CRM were down."""

    class Crm:
        def handle(self, action: Action) -> None:
            pass

    def two(action: Action, extra: str) -> None:
        pass

    class Optional:
        def handle(self, action: Action | None = None) -> None:
            pass

    crm(store)
    with pytest.raises(retainer.DispatchError, match=r"for '\*' is the class .*Crm: pass an instance, Crm\(\.\.\.\)"):
        run(store, handlers=Crm)
    with pytest.raises(retainer.DispatchError, match=r"is the class .*Optional: pass an instance"):
        run(store, handlers=Optional)  # its action would go to `self`
    with pytest.raises(retainer.DispatchError, match=r"for 'create_task' .* must take one argument, the action"):
        run(store, handlers={"create_task": two})
    with pytest.raises(retainer.DispatchError, match="must take one argument"):
        run(store, handlers=lambda: None)
    assert store.ledger() == [] and store.runs() == []
    run(store, handlers={"create_task": Crm(), "*": lambda a, *more: None})  # these are fine

    class Static:  # a class used as a namespace, as before
        @staticmethod
        def handle(action: Action) -> None:
            pass

    store.add(clients=[{"id": "c9", "manager_id": "m1"}],
              touches=[{"id": "t9", "client_id": "c9", "at": "2026-01-01T10:00:00", "kind": "call"}])  # fmt: skip
    assert run(store, handlers=Static).counts()["done"] == 1  # c9, new


def test_a_write_lock_held_by_the_crm_is_waited_for_not_the_end_of_the_night(tmp_path: Path) -> None:
    """Found in an ops review: the CRM's own sync holding SQLite's write lock past the store's 5 s wait, while a
    run delivered, stopped the run (exit 2): the delivery it had just made was not recorded, so the next run sent
    it again, and the rest waited a day. A write meeting the lock now waits (up to `Retry.lock_wait`), at the
    commit and around each delivery."""
    import sqlite3
    import threading

    db = tmp_path / "crm.db"
    store = retainer.open_store(f"sqlite:///{db}")
    crm(store)
    store.conn.execute("PRAGMA busy_timeout = 50")  # the store's own wait, cut so the test takes a second

    def sync(seconds: float) -> threading.Thread:
        taken = threading.Event()

        def hold() -> None:
            c = sqlite3.connect(db, isolation_level=None)
            c.execute("BEGIN IMMEDIATE")
            taken.set()
            threading.Event().wait(seconds)
            c.execute("ROLLBACK")
            c.close()

        t = threading.Thread(target=hold)
        t.start()
        taken.wait()
        return t

    sent: list[str] = []

    def deliver(a: Action) -> None:
        if not sent:
            threads.append(sync(0.6))  # the sync starts while the first delivery is under way
        sent.append(a.id)

    threads = [sync(0.6)]  # and one is running when the run commits
    report = run(store, handlers=deliver)
    for t in threads:
        t.join()
    assert len(threads) == 2 and report.counts()["done"] == len(sent) == len(store.ledger()) > 0
    assert {e.status for e in store.ledger()} == {"done"} and [r.status for r in store.runs()] == ["finished"]

    with pytest.raises(StoreError, match="database is locked"):  # past lock_wait: stopped, as before, said why
        t = sync(1.0)
        try:
            run(store, "2026-03-03", handlers=deliver, retry=Retry(lock_wait=0.2))
        finally:
            t.join()


def test_a_rate_limited_crm_is_waited_for_not_given_up_on(store: Store) -> None:
    """Found in an ops review: a CRM allowing one call a second answered the burst with 429s, ten actions met
    ten in a row, and the run gave up on a CRM that was up, every night. A `RetryLater` pauses every call
    through that handler for the time asked, so the night goes through."""
    crm(store, n=15)
    clock = FakeClock()
    calls: list[datetime] = []

    def limited(a: Action) -> None:
        if calls and clock() < calls[-1] + timedelta(seconds=1):
            raise retainer.adapters.RetryLater("429 Too Many Requests", 1.0)
        calls.append(clock())

    report = run(store, handlers=limited, clock=clock)
    assert report.dispatch is not None and report.dispatch.stopped == {}
    assert report.counts()["done"] == len(store.ledger()) == len(calls) > 10
    assert {e.attempts for e in store.ledger()} == {1}  # a "later" spends no attempt: the CRM took nothing


def test_a_crm_over_its_quota_is_waited_for_longer_each_time_and_kills_no_action(store: Store) -> None:
    """Found in a review of the throttling: a 429 without Retry-After paused 1 s every time, each counted toward
    giving up on the handler and used up an attempt, so a CRM out of its minute's quota was given up on after
    10 s, and its actions went dead. The pause now grows, a 429 spends nothing, and only `throttle_wait` of
    "later" with nothing delivered leaves the rest for the next run."""
    crm(store, n=3)
    clock = FakeClock()
    start = clock()

    def quota(a: Action) -> None:  # the minute's quota is spent: "later", with no time named, for 100 s
        if clock() < start + timedelta(seconds=100.3):
            raise retainer.adapters.RetryLater("429 Too Many Requests", None)

    report = run(store, handlers=quota, clock=clock, retry=Retry(max_attempts=2))
    assert report.dispatch is not None and report.dispatch.stopped == {} and report.dispatch.dead == {}
    assert {(e.status, e.attempts) for e in store.ledger()} == {("done", 1)}
    assert clock.sleeps[:4] == [1.0, 2.0, 4.0, 8.0]  # it backs off: no burst of "later"s
    assert max(clock.sleeps) <= 60.0  # at most max_delay

    store.add(clients=[{"id": "c9", "manager_id": "m1"}],
              touches=[{"id": "t9", "client_id": "c9", "at": "2026-01-01T10:00:00", "kind": "call"}])  # fmt: skip

    def never(a: Action) -> None:
        raise retainer.adapters.RetryLater("429 Too Many Requests", 0.7)  # a fraction: the fake clock rounds it

    report = run(store, "2026-03-03", handlers=never, clock=FakeClock(), retry=Retry(throttle_wait=30))
    assert report.dispatch is not None
    assert [why.split(" for ")[0] for why in report.dispatch.stopped.values()] == ["asked to slow down"]
    assert [(e.status, e.attempts) for e in store.ledger() if e.client_id == "c9"] == [("failed", 0)]


@pytest.mark.parametrize("throttle_wait", [0.0, 30.0])
def test_a_move_whose_crm_keeps_saying_later_is_left_with_its_clients_actions(
    store: Store, throttle_wait: float
) -> None:
    """Found in a review of the throttling: giving up on a handler that kept saying "later" while it held a move
    did not hold back the move's client: its other actions went out without the move (throttle_wait 0), or
    waited for a move time already past, for ever (the run spun)."""
    crm(store, n=2)
    sent: list[tuple[str, str | None]] = []

    def moves(a: Action) -> None:
        raise retainer.adapters.RetryLater("429 Too Many Requests", "soon")  # a reading an adapter got wrong

    def others(a: Action) -> None:
        sent.append((a.type, a.client_id))

    report = run(store, "2026-03-20", rules=WITH_RELEASE, handlers={"reassign": moves, "*": others},
                 retry=Retry(throttle_wait=throttle_wait, base_delay=0))  # fmt: skip
    assert report.dispatch is not None and report.dispatch.stopped
    moved = {e.client_id for e in store.ledger() if e.type == "reassign" and e.status == "done"}
    assert [x for x in sent if x[1] not in moved] == []  # nothing of a client whose move waits
    assert {e.status for e in store.ledger()} <= {"pending", "failed"}


def test_a_move_paused_by_its_crm_still_goes_before_its_clients_other_actions(store: Store) -> None:
    """Found in a review of the throttling: a move held back by its handler's pause let the client's task and
    the supervisor's note go out first through another handler."""
    crm(store, n=2)
    sent: list[tuple[str, str | None]] = []

    def moves(a: Action) -> None:
        if not sent:
            sent.append(("429", a.client_id))
            raise retainer.adapters.RetryLater("429", 5.0)
        sent.append((a.type, a.client_id))

    def others(a: Action) -> None:
        sent.append((a.type, a.client_id))

    rules = {"version": 1, "rules": [FORGOTTEN["rules"][0], {
        "id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "7d",
        "then": [{"reassign": {"strategy": "least_loaded"}},
                 {"notify_manager": {"to": "supervisor", "template": "released"}}]}]}
    run(store, "2026-03-20", rules=rules, handlers={"reassign": moves, "*": others})
    for c in ("c1", "c2"):
        order = [t for t, cid in sent if cid == c and t != "429"]
        assert order[0] == "reassign" and len(order) == 3, sent


def test_a_night_the_crm_was_down_uses_up_no_attempts(store: Store) -> None:
    """Found in an ops review: the failures that made a run give up on a CRM that was down used up the actions'
    retries, so one error the next night made them dead (and the move's task went out without the move). The
    attempts of the failures that made the run give up are given back; the errors stay."""
    crm(store)
    clock = FakeClock()
    retry = Retry(max_attempts=3, base_delay=0, stop_after=4)

    def down(a: Action) -> None:
        raise ConnectionError("connection refused")

    first = run(store, handlers=down, retry=retry, clock=clock)
    assert first.dispatch is not None and first.dispatch.stopped
    assert {(e.status, e.attempts) for e in store.ledger()} == {("failed", 0)}
    assert {e.last_error for e in store.ledger()} == {"ConnectionError: connection refused"}

    calls: list[str] = []

    def blip(a: Action) -> None:  # up again, after two errors
        calls.append(a.id)
        if len(calls) <= 2:
            raise ConnectionError("connection reset")

    second = run(store, "2026-03-03", handlers=blip, retry=retry, clock=clock)
    assert second.dispatch is not None and second.dispatch.complete, second.dispatch
    assert {e.status for e in store.ledger()} == {"done"}


def test_an_async_handler_is_refused_before_anything_is_committed(store: Store) -> None:
    """Found in an ops review: `async def` passed the signature check; each call made a coroutine that nobody
    awaited, and every action was recorded `done` with nothing sent, for good."""
    import functools

    sent: list[str] = []

    async def send(action: Action) -> None:
        sent.append(action.id)

    class Crm:
        async def handle(self, action: Action) -> None:
            sent.append(action.id)

    class Caller:
        async def __call__(self, action: Action) -> None:
            sent.append(action.id)

    crm(store)
    for h in (send, Crm(), {"create_task": send}, functools.partial(send), Caller()):
        with pytest.raises(retainer.DispatchError, match=r"is async: it would return a coroutine that nobody awaits"):
            run(store, handlers=h)  # type: ignore[arg-type]
    assert store.ledger() == [] and store.runs() == [] and sent == []

    # one that hides it (a plain function returning a coroutine): refused at delivery, nothing recorded as done
    report = run(store, handlers=lambda a: send(a))
    assert report.counts()["done"] == 0 and sent == []
    assert {e.status for e in store.ledger()} == {"dead"}
    assert all("returned an awaitable instead of delivering (a coroutine, closed unrun: nothing was sent)"
               in (e.last_error or "") for e in store.ledger())  # fmt: skip

    # a task already scheduled is cancelled, and the ledger does not claim that nothing went out
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        store.add(clients=[{"id": "c9", "manager_id": "m1"}],
                  touches=[{"id": "t9", "client_id": "c9", "at": "2026-01-01T10:00:00", "kind": "call"}])  # fmt: skip
        futures: list[asyncio.Future[None]] = []
        run(store, "2026-03-03", handlers=lambda a: futures.append(loop.create_future()) or futures[-1])
        (e,) = [e for e in store.ledger() if e.client_id == "c9"]
        assert e.status == "dead" and "a scheduled task, cancelled: it may have sent" in (e.last_error or "")
        assert futures[0].cancelled()
    finally:
        loop.close()


def test_a_generator_handler_is_refused_and_a_returned_generator_is_not_delivered(store: Store) -> None:
    """Found in an embedding review: a `handle` with a stray `yield` returned a generator without running a
    line, and every action was recorded `done` with nothing sent."""
    import functools

    sent: list[str] = []

    def send(action: Action) -> Iterator[str]:
        sent.append(action.id)
        yield action.id

    class Crm:
        def handle(self, action: Action) -> Iterator[str]:
            sent.append(action.id)
            yield action.id

    class Caller:
        def __call__(self, action: Action) -> Iterator[str]:
            sent.append(action.id)
            yield action.id

    crm(store)
    for h in (send, Crm(), {"create_task": send}, functools.partial(send), Caller()):
        with pytest.raises(retainer.DispatchError, match=r"is a generator function \(a `yield` in its body\)"):
            run(store, handlers=h)  # type: ignore[arg-type]
    assert store.ledger() == [] and store.runs() == [] and sent == []

    # one that hides it (a plain function returning a generator): dead at delivery, never `done`
    report = run(store, handlers=lambda a: (sent.append(x) for x in [a.id]))
    assert report.counts()["done"] == 0 and sent == []
    assert {e.status for e in store.ledger()} == {"dead"}
    assert all("returned a generator, closed unrun: nothing was sent" in (e.last_error or "") for e in store.ledger())


def test_an_error_text_that_is_not_unicode_is_kept_escaped(store: Store) -> None:
    """Found in an ops review: a CRM's cp1251 answer decoded with surrogateescape made the ledger write of the
    error raise, and the run crashed after one attempt."""
    crm(store)

    def refuse(action: Action) -> None:
        raise RuntimeError("CRM said: " + "Ошибка".encode("cp1251").decode("utf-8", "surrogateescape"))

    report = run(store, handlers=refuse, retry=Retry(max_attempts=1, base_delay=0))
    assert report.counts()["dead"] == len(store.ledger()) > 0
    assert {e.last_error for e in store.ledger()} == {r"RuntimeError: CRM said: \udcce\udcf8\udce8\udce1\udcea\udce0"}


def test_an_action_committed_earlier_is_cancelled_once_it_must_not_go_out(store: Store) -> None:
    """A message committed on one night and delivered on a later one (the CRM was down) is looked at
    again: a client who asked not to be contacted since gets nothing, and a reminder for an invoice paid
    since is not sent. Both used to be delivered, and a replay of a dead one too."""
    rules = {"version": 1, "rules": [
        {"id": "dunning", "kind": "debtor", "steps": [{"after": "3d", "notify_client": {"template": "reminder"}}]},
        {"id": "news", "category": "retention", "when": {"client_id": {"in": ["c0", "c2"]}},
         "then": [{"notify_client": {"template": "news"}}]}]}  # fmt: skip
    invoice = {"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-20", "amount": 500}
    store.add(managers=[{"id": "m1"}], invoices=[invoice],
              clients=[{"id": f"c{k}", "manager_id": "m1"} for k in (0, 1, 2)])
    e = engine_for(rules, store)
    # c0's news is rejected (dead); the CRM is down for the other two, and the run gives up on it
    def down(a: Action) -> None:
        raise PermanentError("no such address") if a.client_id == "c0" else RuntimeError("CRM down")

    first = e.run("2026-03-01", handlers=down, retry=Retry(base_delay=0, stop_after=2))
    assert first.dispatch is not None and len(first.dispatch.dead) == 1 and len(first.dispatch.failed) == 2
    store.upsert(invoices=[{**invoice, "paid_at": "2026-03-02T09:00"}],
                 clients=[{"id": "c0", "manager_id": "m1", "contact_policy": "do_not_contact"},
                          {"id": "c2", "manager_id": "m1", "contact_policy": "do_not_contact"}])
    h = RecordingHandler()
    report = e.run("2026-03-02", handlers=h)
    assert h.actions == [] and report.dispatch is not None
    assert sorted(report.dispatch.cancelled.values()) == ["do_not_contact", "paid"]
    by_client = {x.client_id: x for x in store.ledger()}
    assert by_client["c1"].status == by_client["c2"].status == "done"
    assert by_client["c1"].outcome["cancelled"] == "paid" and by_client["c2"].outcome["cancelled"] == "do_not_contact"
    _ids, replayed = e.replay(dead=True, handlers=h)
    assert h.actions == [] and replayed is not None and list(replayed.cancelled.values()) == ["do_not_contact"]
    assert store.ledger(client_ids=["c0"])[0].outcome["cancelled"] == "do_not_contact"


ALL = {"when": {"status": {"eq": "active"}}}


@pytest.mark.parametrize("policy", [True, False])
def test_marketing_committed_earlier_is_cancelled_once_the_client_opts_out_of_it(store: Store, policy: bool) -> None:
    """Found in an over-selling review: a retention e-mail and an up-sell that waited a night went out after the
    client had switched to no_marketing, and a replay of dead ones too. A task for the manager and a payment
    reminder still go, and so does everything when the rule file turns the policy off."""
    rules = {"version": 1, "policies": {"no_marketing": policy}, "rules": [
        {"id": "news", "category": "retention", **ALL, "then": [{"notify_client": {"template": "news"}},
                                                                {"create_task": {"title": "Call"}}]},
        {"id": "upsell", "category": "development", **ALL, "then": [{"propose_offer": {"offer": "pro"}}]},
        {"id": "pay", "category": "collection", **ALL, "then": [{"notify_client": {"template": "pay"}}]}]}  # fmt: skip
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}])
    e = engine_for(rules, store)
    e.run("2026-03-01")  # no handler: everything waits

    def rejected(a: Action) -> None:
        raise PermanentError("rejected")

    Dispatcher(store, rejected).dispatch(store.ledger(client_ids=["c2"]))  # c2's are dead, c1's wait
    opt_out = {"manager_id": "m1", "contact_policy": "no_marketing"}
    store.upsert(clients=[{"id": "c1", **opt_out}])
    h = RecordingHandler()
    report = e.run("2026-03-02", handlers=h)
    store.upsert(clients=[{"id": "c2", **opt_out}])
    _ids, replayed = e.replay(dead=True, handlers=h)
    assert report.dispatch is not None and replayed is not None
    sent = {c: sorted((a.rule, a.type) for a in h.actions if a.client_id == c) for c in ("c1", "c2")}
    if policy:
        assert sent["c1"] == sent["c2"] == [("news", "create_task"), ("pay", "notify_client")]
        assert list(report.dispatch.cancelled.values()) == list(replayed.cancelled.values()) == ["no_marketing"] * 2
    else:
        assert sent["c1"] == sent["c2"] == [("news", "create_task"), ("news", "notify_client"),
                                            ("pay", "notify_client"), ("upsell", "propose_offer")]  # fmt: skip
        assert report.dispatch.cancelled == replayed.cancelled == {}


def test_an_action_for_a_client_archived_since_is_cancelled(store: Store) -> None:
    """A client deleted in the CRM and archived by `import --archive-missing` got tonight's task anyway."""
    crm(store, 2)
    run(store)  # committed, no handler: pending
    store.upsert(clients=[{"id": "c1", "manager_id": "m1", "status": "archived"}])
    h = RecordingHandler()
    report = run(store, "2026-03-03", handlers=h)
    assert report.dispatch is not None and list(report.dispatch.cancelled.values()) == ["archived"]
    assert [a.client_id for a in h.actions] == ["c2"]
    assert store.ledger(client_ids=["c1"])[0].outcome["cancelled"] == "archived"  # type: ignore[index]


def test_a_run_without_handlers_cancels_what_a_pull_host_must_not_send(store: Store) -> None:
    """operations.md: pull right after a run. The run, with nothing to deliver through, still looks again at
    the pending actions of earlier runs, so a host pulling `pending` does not get c1's, who opted out."""
    crm(store, 2)
    run(store)  # committed, no handler: pending
    store.upsert(clients=[{"id": "c1", "manager_id": "m1", "contact_policy": "do_not_contact"}])
    report = run(store, "2026-03-03")
    assert report.dispatch is not None and list(report.dispatch.cancelled.values()) == ["do_not_contact"]
    assert [e.client_id for e in store.ledger(status=["pending"])] == ["c2"]


def test_a_run_dated_after_tomorrow_is_refused_and_writes_nothing(store: Store) -> None:
    """2062 for 2026: every client called lately was released on the spot, and when it really was forgotten
    its task was a duplicate. Tomorrow (a host in another zone, a run just before midnight) is fine; a plan
    or a dry run may look as far ahead as it likes."""
    crm(store)
    clock = FakeClock(datetime(2026, 3, 1, 22, 0, tzinfo=UTC))  # the rules' zone is UTC: today is Mar 1
    for typo in ("2062-03-01", "2026-03-03"):
        with pytest.raises(retainer.ArgumentError, match=rf"as_of {typo} is after tomorrow \(2026-03-02, by the"):
            run(store, typo, clock=clock)
    assert store.ledger() == [] and store.runs() == []
    assert run(store, "2062-03-01", clock=clock, dry_run=True).plan.actions
    assert run(store, "2026-03-02", clock=clock).committed


def test_a_reassignment_to_a_manager_deactivated_since_is_cancelled(store: Store) -> None:
    """The CRM was down the night c1 was released to m2; the next morning's export deactivates m2. The move
    must not go out (the client went to someone who had left), nor the task planned with it for m2; c2's,
    to m3, still do. A task is not cancelled for its manager alone: one who left with no active supervisor
    gets the task on purpose, and a catch-up run cancelled that one."""
    store.add(managers=[{"id": "m1"}, {"id": "m2"}, {"id": "m3"}],
              clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}])  # fmt: skip
    rules = {"version": 1, "rules": [
        {"id": "forgotten", "kind": "forgotten", "after": "30d"},
        {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "7d",
         "then": [{"reassign": {"strategy": "least_loaded"}},
                  {"create_task": {"title": "Call", "assignee": "new_manager", "due_in": "1d"}}]}]}  # fmt: skip
    store.add(touches=[{"id": f"t{c}", "client_id": c, "at": "2026-01-01T10:00:00"} for c in ("c1", "c2")])

    def down(a: Action) -> None:
        raise RuntimeError("CRM down")

    clock = FakeClock()
    e = engine_for(rules, store)
    first = e.run("2026-03-01", handlers=down, retry=Retry(base_delay=0, stop_after=1), clock=clock, sleep=clock.sleep)
    assert {(a.type, getattr(a, "to_manager_id", None) or getattr(a, "assignee_id", None))
            for a in first.committed} >= {("reassign", "m2"), ("create_task", "m2")}  # fmt: skip
    store.upsert(managers=[{"id": "m2", "active": False}])
    h = RecordingHandler()
    report = e.run("2026-03-02", handlers=h, clock=clock, sleep=clock.sleep)
    assert report.dispatch is not None
    gone = {store.ledger(ids=[i])[0].type: why for i, why in report.dispatch.cancelled.items()}
    assert gone == {"reassign": "manager m2 is no longer active",
                    "create_task": "its client's move to m2 was cancelled: manager m2 is no longer active"}
    assert {(a.type, a.client_id) for a in h.actions} == {("reassign", "c2"), ("create_task", "c2")}
    assert store.moves_in_flight(e.as_of("2026-03-02").instant) == {"c2": ("m1", "m3")}

    # the next night decides c1's release again, as a second attempt of the same episode: the client must
    # not stay with the manager who forgot it until it is forgotten anew
    h = RecordingHandler()
    e.run("2026-03-03", handlers=h, clock=clock, sleep=clock.sleep)
    # and the forgotten task cancelled with the move (it was m2's) goes to m3 with it
    assert sorted((a.key, getattr(a, "to_manager_id", None) or getattr(a, "assignee_id", None)) for a in h.actions) == [
        ("forgotten:c1:2026-01-01#2:create_task", "m3"), ("release:c1:2026-01-01#2:create_task", "m3"),
        ("release:c1:2026-01-01#2:reassign", "m3")]
    assert store.moves_in_flight(e.as_of("2026-03-03").instant) == {"c1": ("m1", "m3"), "c2": ("m1", "m3")}
    again = e.run("2026-03-04", handlers=RecordingHandler(), clock=clock, sleep=clock.sleep)
    assert not again.committed


RELEASE_TOLD = {"version": 1, "templates": {"released": {"subject": "{client.name} moved to {new_manager.id}",
                                                        "body": "moved"}},
                "rules": [{"id": "forgotten", "kind": "forgotten", "after": "30d"},
                          {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "7d",
                           "then": [{"reassign": {"strategy": "least_loaded"}},
                                    {"notify_manager": {"to": "supervisor", "template": "released"}}]}]}


def _released(store: Store) -> None:
    store.add(managers=[{"id": "boss"}, {"id": "m1", "supervisor_id": "boss"}, {"id": "m2"}, {"id": "m3"}],
              clients=[{"id": "c1", "manager_id": "m1", "name": "Acme"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00:00"}])  # fmt: skip


def _release_pending_then(store: Store, **change: Any) -> tuple[retainer.Engine, FakeClock, dict[str, str]]:
    """c1's release (with the supervisor's note) committed on 1 March and not delivered; then `change` is
    written, and the next night cancels: what it cancelled, by action type."""
    _released(store)
    clock = FakeClock()
    e = engine_for(RELEASE_TOLD, store)
    e.run("2026-03-01", clock=clock)  # committed, no handler: pending
    store.upsert(**change)
    h = RecordingHandler()
    report = e.run("2026-03-02", handlers=h, clock=clock, sleep=clock.sleep)
    assert report.dispatch is not None and h.actions == []
    return e, clock, {store.ledger(ids=[i])[0].type: why for i, why in report.dispatch.cancelled.items()}


def test_the_supervisors_note_of_a_move_cancelled_for_a_manager_who_left_is_cancelled_with_it(store: Store) -> None:
    """Found in an ops review: the run cancelled the move to m2, who had left, then told the supervisor
    "Acme moved to m2" in the same dispatch. The note goes with the move, and is decided again with it."""
    e, clock, gone = _release_pending_then(store, managers=[{"id": "m2", "active": False}])
    because = "its client's move to m2 was cancelled: manager m2 is no longer active"
    assert gone == {"reassign": "manager m2 is no longer active", "notify_manager": because,
                    "create_task": because}  # the forgotten task, m2's with the move  # fmt: skip
    h = RecordingHandler()
    e.run("2026-03-03", handlers=h, clock=clock, sleep=clock.sleep)
    assert sorted((a.key, getattr(a, "subject", None)) for a in h.actions) == [
        ("forgotten:c1:2026-01-01#2:create_task", None),
        ("release:c1:2026-01-01#2:notify_manager", "Acme moved to m3"), ("release:c1:2026-01-01#2:reassign", None)]


def test_a_move_not_delivered_yet_is_cancelled_when_the_crm_gave_the_client_to_someone_else_since(
    store: Store,
) -> None:
    """Found in a vendor's review: the CRM was down on the night of the release; during the day a supervisor gave
    the client to m3, and the sync wrote it. The next night sent the move m1 -> m2, taking the client from m3,
    with m2's task and the supervisor's "moved to m2". The data is the truth: the move and what it brought
    are cancelled, and the move is not decided again (a person decided). The forgotten task it gave m2 is, for
    m3: the client is still forgotten, and its new manager was never told."""
    e, clock, gone = _release_pending_then(store, clients=[{"id": "c1", "manager_id": "m3"}])
    because = "its client's move to m2 was cancelled: the client was given to m3 in the CRM since"
    assert gone == {"reassign": "the client was given to m3 in the CRM since", "notify_manager": because,
                    "create_task": because}  # fmt: skip
    h = RecordingHandler()
    e.run("2026-03-03", handlers=h, clock=clock, sleep=clock.sleep)
    assert [(a.key, a.assignee_id) for a in h.actions] == [("forgotten:c1:2026-01-01#2:create_task", "m3")]  # type: ignore[attr-defined]
    assert not e.run("2026-03-04", handlers=h, clock=clock, sleep=clock.sleep).committed


def test_a_move_of_a_chain_the_data_does_not_show_yet_is_delivered(store: Store) -> None:
    """Released m1 -> m2, then (the CRM not having carried it out) released again m2 -> m3: the data still shows
    m1, which the second move neither takes the client from nor gives it to. That is no move by hand."""
    store.add(managers=[{"id": "m1"}, {"id": "m2"}, {"id": "m3"}],
              clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}],  # c2: m1 has more
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00:00"},
                       {"id": "t0", "client_id": "c2", "at": "2026-04-19T10:00:00"}])  # fmt: skip
    clock = FakeClock(datetime(2026, 4, 21, 2, 0, tzinfo=UTC))
    e = engine_for(RELEASE_TOLD, store)
    e.run("2026-03-01", clock=clock)
    store.add(touches=[{"id": "t2", "client_id": "c1", "at": "2026-03-02T10:00:00"}])  # m2 called, then forgot
    h = RecordingHandler()
    e.run("2026-04-20", handlers=h, clock=clock, sleep=clock.sleep)
    moves = [(a.from_manager_id, a.to_manager_id) for a in h.actions if a.type == "reassign"]  # type: ignore[attr-defined]
    assert moves == [("m1", "m2"), ("m2", "m3")]


def test_the_supervisors_note_of_a_move_the_crm_refused_goes_dead_with_it_and_replays_with_it(store: Store) -> None:
    """Found in an ops review: the CRM refused the move (422), and the supervisor was still told "Acme moved to
    m2". The note is dead with the move, not sent; replaying the dead actions sends both, the move first."""
    _released(store)
    clock = FakeClock()
    sent: list[str] = []

    def crm(a: Action) -> None:
        if a.type == "reassign" and not sent:
            sent.append("refused")
            raise PermanentError("422: m2 is not in the sales team")
        sent.append(a.type)

    e = engine_for(RELEASE_TOLD, store)
    report = e.run("2026-03-01", handlers=crm, clock=clock, sleep=clock.sleep)
    assert report.dispatch is not None and sent == ["refused", "create_task"]  # the forgotten task goes, as before
    by_type = {x.type: x for x in store.ledger()}
    assert by_type["reassign"].status == by_type["notify_manager"].status == "dead"
    assert (by_type["notify_manager"].last_error or "").startswith("not sent: the move it was planned with went dead (")
    assert set(report.dispatch.dead) == {by_type["reassign"].id, by_type["notify_manager"].id}
    _, again = retainer.adapters.dispatch.replay(store, (), dead=True, handlers=crm)
    assert sent == ["refused", "create_task", "reassign", "notify_manager"] and again is not None and again.complete


def test_each_move_cancelled_for_a_manager_who_left_is_decided_again_until_the_host_cancels_one(
    store: Store,
) -> None:
    store.add(managers=[{"id": f"m{n}"} for n in range(1, 5)], clients=[{"id": "c1", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00:00"}])  # fmt: skip
    rules = {"version": 1, "rules": [
        {"id": "forgotten", "kind": "forgotten", "after": "30d",
         "then": [{"create_task": {"title": "Call", "due_in": "1d"}}]},
        {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "7d"}]}  # fmt: skip
    e = engine_for(rules, store)
    clock = FakeClock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    for n, (key, to) in enumerate([("2026-01-01", "m2"), ("2026-01-01#2", "m3"), ("2026-01-01#3", "m4")]):
        report = e.run("2026-03-01", clock=clock, sleep=clock.sleep)  # no handler: committed, not delivered
        (move,) = [a for a in report.committed if a.type == "reassign"]
        assert (move.key, move.to_manager_id) == (f"release:c1:{key}:reassign", to)  # type: ignore[attr-defined]
        assert [x.action.key for x in e.explain("c1", "2026-03-01", rule="release").rules[0].suppressed] == [move.key]
        if n < 2:
            store.upsert(managers=[{"id": to, "active": False}])
            e.record_outcome(move.id, {"cancelled": f"manager {to} is no longer active", "code": "manager_left"},
                             clock=clock)  # fmt: skip
    e.record_outcome(move.id, {"cancelled": "undone by hand"}, clock=clock)
    assert not e.run("2026-03-01", clock=clock, sleep=clock.sleep).committed


@pytest.mark.parametrize("then", ["moved by hand", "host cancels too"])
def test_a_move_cancelled_for_a_manager_who_left_stays_cancelled_when_the_crm_or_host_decided(
    store: Store, then: str
) -> None:
    """The client given to m4 by hand since (the data is the truth: the second decision moved it from m4 back
    to a stranger), or the host recording its own cancellation over retainer's (the old code stayed, merged)."""
    store.add(managers=[{"id": f"m{n}"} for n in range(1, 5)], clients=[{"id": "c1", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00:00"}])  # fmt: skip
    rules = {"version": 1, "rules": [
        {"id": "forgotten", "kind": "forgotten", "after": "30d"},
        {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "7d"}]}  # fmt: skip
    e = engine_for(rules, store)
    clock = FakeClock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    (move,) = [a for a in e.run("2026-03-01", clock=clock, sleep=clock.sleep).committed if a.type == "reassign"]
    store.upsert(managers=[{"id": "m2", "active": False}])
    e.record_outcome(move.id, {"cancelled": "manager m2 is no longer active", "code": "manager_left"}, clock=clock)
    if then == "moved by hand":
        store.upsert(clients=[{"id": "c1", "manager_id": "m4"}])
    else:
        e.record_outcome(move.id, {"cancelled": "the client asked to stay with m1"}, clock=clock)
    assert not [a for a in e.run("2026-03-01", clock=clock, sleep=clock.sleep).committed if a.type == "reassign"]


def test_a_reassignment_the_host_cancelled_is_not_decided_again(store: Store) -> None:
    """Only retainer's own cancellation for a manager who left asks for a second decision: a host that
    records `{"cancelled": ...}` on a move (undone in the CRM) has decided, and the next night must not
    move the client again."""
    store.add(managers=[{"id": "m1"}, {"id": "m2"}], clients=[{"id": "c1", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00:00"}])  # fmt: skip
    clock = FakeClock(datetime(2026, 3, 20, 2, 0, tzinfo=UTC))
    e = engine_for(WITH_RELEASE, store)
    first = e.run("2026-03-19", clock=clock, sleep=clock.sleep)
    (move,) = [a for a in first.committed if a.type == "reassign"]
    e.record_outcome(move.id, {"cancelled": "undone by hand"}, clock=clock)
    later = e.run("2026-03-20", clock=clock, sleep=clock.sleep)
    assert not later.committed and later.plan.stats["suppressed"] == {"duplicate": 2}


def test_an_escalation_to_a_supervisor_deactivated_since_is_cancelled_a_task_for_a_manager_who_left_is_not(
    store: Store,
) -> None:
    """A plan never escalates to a supervisor who has left (it goes up the chain), so one committed to a
    supervisor deactivated before delivery is stale. A task for a manager who has left, with no active
    supervisor, is planned so on purpose (the plan warns): a catch-up run cancelled it, and it was lost."""
    store.add(managers=[{"id": "s1"}, {"id": "m1", "supervisor_id": "s1"}, {"id": "m9", "active": False}],
              clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c9", "manager_id": "m9"}],
              touches=[{"id": f"t{c}", "client_id": c, "at": "2026-01-01T10:00:00"} for c in ("c1", "c9")])  # fmt: skip
    rules = {"version": 1, "rules": [{"id": "f", "kind": "forgotten", "after": "30d", "then": [
        {"create_task": {"title": "Call", "due_in": "1d"}}, {"escalate": {"to": "supervisor", "template": "x"}}]}]}
    clock = FakeClock(datetime(2026, 3, 5, tzinfo=UTC))

    def down(a: Action) -> None:
        raise RuntimeError("CRM down")

    e = engine_for(rules, store)
    e.run("2026-03-01", handlers=down, retry=Retry(base_delay=0, stop_after=1), clock=clock, sleep=clock.sleep)
    store.upsert(managers=[{"id": "s1", "active": False}])
    h = RecordingHandler()
    report = e.run("2026-03-02", handlers=h, clock=clock, sleep=clock.sleep)  # a catch-up night: as_of is past
    assert report.dispatch is not None
    gone = {store.ledger(ids=[i])[0].key: why for i, why in report.dispatch.cancelled.items()}
    assert gone == {"f:c1:2026-01-01:escalate": "manager s1 is no longer active"}
    assert sorted((a.type, a.client_id) for a in h.actions) == [("create_task", "c1"), ("create_task", "c9")]


def test_a_reassignment_is_delivered_before_the_clients_other_actions(store: Store) -> None:
    """Forgotten and released in one plan: the task goes to the new manager, so the CRM gets the move
    first (in key order the task, `forgotten:...`, came before `release:...:reassign`)."""
    store.add(managers=[{"id": "m1"}, {"id": "m2"}],
              clients=[{"id": f"c{k}", "manager_id": "m1", "created_at": "2025-01-01"} for k in (1, 2)])
    rules = {"version": 1, "rules": [
        {"id": "forgotten", "kind": "forgotten", "after": "30d"},
        {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "7d",
         "then": [{"reassign": {"strategy": "least_loaded"}},
                  {"notify_manager": {"to": "new_manager", "template": "moved"}}]}]}  # fmt: skip
    h = RecordingHandler()
    engine_for(rules, store).run("2026-03-01", handlers=h)
    assert [a.type for a in h.actions] == ["reassign", "reassign", "create_task", "create_task",
                                           "notify_manager", "notify_manager"]  # then in ledger (key) order
    assert {a.assignee_id for a in h.by_type("create_task")} == {"m2"}  # type: ignore[attr-defined]


def test_two_dispatchers_that_read_one_pending_action_deliver_it_once(store: Store) -> None:
    """A reactive session and a nightly run read the same pending action; while the first delivers it,
    the second must not (it used to count its own attempt and call the CRM again)."""
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"}])
    engine_for(FORGOTTEN, store).run("2026-03-01")  # committed, no handler: pending
    stale = store.ledger(status=["pending"])
    calls: list[str] = []
    other = retainer.adapters.Dispatcher(store, lambda a: calls.append("other"))

    def first(a: Action) -> None:
        calls.append("first")
        report = other.dispatch(stale)  # the other one read the ledger before this attempt was counted
        assert report.skipped == [a.id] and not report.done

    retainer.adapters.Dispatcher(store, first).dispatch(store.ledger(status=["pending"]))
    assert calls == ["first"] and store.ledger()[0].status == "done"


def test_a_missed_night_caught_up_sends_nothing_that_was_settled_since(store: Store) -> None:
    """The night of the 18th runs on the 19th, after a payment made on the 19th: its plan as of the 18th
    sees the invoice unpaid, but the reminder must not go out now. And a cancelled reminder, never
    sent, uses up no cap."""
    rules = {"version": 1, "rules": [
        {"id": "dunning", "kind": "debtor",
         "steps": [{"after": "3d", "notify_client": {"channel": "sms", "template": "r"}}]}],
        "policies": {"caps": [{"channel": "sms", "limit": 1, "per": "1w", "window": "calendar"}]}}  # fmt: skip
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
              invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-14",
                         "amount": 100, "paid_at": "2026-02-19T09:00"},
                        {"id": "i2", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                         "amount": 100}])
    e = engine_for(rules, store)
    h = RecordingHandler()
    now = lambda: retainer.engine.utc_now().replace(year=2026, month=2, day=19, hour=12)  # noqa: E731
    report = e.run("2026-02-17", handlers=h, clock=now)  # i1 is 3 days overdue; i2 2 days
    assert [a.key for a in h.actions] == [] and list(report.dispatch.cancelled.values()) == ["paid"]  # type: ignore[union-attr]
    report = e.run("2026-02-18", handlers=h, clock=now)  # i2's turn: the cancelled i1 sent nothing this week
    assert [a.key for a in h.actions] == ["dunning:c1:i2+3d:notify_client"]


def test_a_store_written_for_the_earlier_protocol_plans_without_cancellations(store: Store) -> None:
    """A host's own store class, written before `Store.cancellations`: Engine.plan raised AttributeError on the
    first committed move it met. Such a store plans as before (no move is decided again)."""

    class Older:
        def __init__(self, base: Store) -> None:
            self._base = base

        def __getattr__(self, name: str) -> Any:
            if name == "cancellations":
                raise AttributeError(name)
            return getattr(self._base, name)

    store.add(managers=[{"id": "m1"}, {"id": "m2"}], clients=[{"id": "c1", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00:00"}])  # fmt: skip
    clock = FakeClock(datetime(2026, 3, 20, 2, 0, tzinfo=UTC))
    engine_for(WITH_RELEASE, store).run("2026-03-19", clock=clock, sleep=clock.sleep)  # the move is committed
    old = retainer.Engine(retainer.load_rules(WITH_RELEASE), Older(store))  # type: ignore[arg-type]
    assert old.plan("2026-03-20").stats["suppressed"] == {"duplicate": 2}


REMINDER = {"version": 1, "rules": [{"id": "debtor", "kind": "debtor", "steps": [
    {"after": "3d", "notify_client": {"channel": "email", "template": "reminder"}}]}]}  # fmt: skip


def _owed(i: int, **kw: Any) -> dict[str, Any]:
    """Client c<i>'s invoice i<i>, 1,200 due on 15 February (a reminder is due 3 days later)."""
    return {"id": f"i{i}", "client_id": f"c{i}", "issued_at": "2026-02-01", "due_at": "2026-02-15",
            "amount": "1200", **kw}  # fmt: skip


def _debtors(store: Store, n: int) -> None:
    store.add(managers=[{"id": "m1"}], clients=[{"id": f"c{i}", "manager_id": "m1"} for i in range(1, n + 1)],
              invoices=[_owed(i) for i in range(1, n + 1)])  # fmt: skip


def test_a_long_delivery_looks_again_at_what_it_has_not_sent(store: Store) -> None:
    """Found in a vendor's review: a night of webhook delivery takes hours, and the CRM's sync writes meanwhile.
    The run read the invoices once, before its first delivery, and dunned at 03:00 the client who had paid at
    01:00. Every `Retry.recheck` seconds the actions not sent yet are looked at again."""
    rules, inv = REMINDER, _owed
    _debtors(store, 3)
    clock = FakeClock(datetime(2026, 2, 20, 23, 0, tzinfo=UTC))
    sent: list[str | None] = []

    def slow_crm(a: Action) -> None:
        sent.append(a.client_id)
        if a.client_id == "c1":  # the sync writes c2's payment while c1's reminder takes its time
            store.upsert(invoices=[inv(2, paid_at="2026-02-20T23:00")])
            clock.sleep(10)
        if a.client_id == "c2":
            clock.sleep(30)

    report = engine_for(rules, store).run("2026-02-20", handlers=slow_crm, retry=Retry(recheck=10), clock=clock,
                                          sleep=clock.sleep)  # fmt: skip
    assert sent == ["c1", "c3"]
    assert report.dispatch is not None and list(report.dispatch.cancelled.values()) == ["paid"]
    (c2,) = store.ledger(client_ids=["c2"])
    assert c2.outcome is not None and c2.outcome["cancelled"] == "paid"


def test_a_move_cancelled_by_a_later_look_no_longer_holds_its_clients_actions(store: Store) -> None:
    """Found in review: the move timed out, waited for its retry, and the next look cancelled it (the client was
    given to m3 meanwhile); the client's reminder kept waiting for the move, re-queued for ever at full CPU,
    holding the run lock."""
    rules = {"version": 1, "rules": [
        {"id": "forgotten", "kind": "forgotten", "after": "30d"},
        {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "7d"},
        {"id": "debtor", "kind": "debtor", "steps": [
            {"after": "3d", "notify_client": {"channel": "email", "template": "reminder"}}]}]}  # fmt: skip
    store.add(managers=[{"id": "m1"}, {"id": "m2"}, {"id": "m3"}], clients=[{"id": "c1", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00:00"}],
              invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2025-12-01", "due_at": "2025-12-15",
                         "amount": "100"}])  # fmt: skip
    clock = FakeClock(datetime(2026, 3, 2, 1, 0, tzinfo=UTC))
    reads = [0]

    def counted() -> datetime:
        reads[0] += 1
        assert reads[0] < 10_000, "the dispatch loops"
        return clock()

    calls: list[str] = []

    def crm(a: Action) -> None:
        calls.append(a.type)
        if a.type == "reassign":
            store.upsert(clients=[{"id": "c1", "manager_id": "m3"}])
            raise TimeoutError("CRM timed out")

    report = engine_for(rules, store).run("2026-03-01", handlers=crm, retry=Retry(base_delay=60, recheck=30),
                                          clock=counted, sleep=clock.sleep)  # fmt: skip
    assert calls == ["reassign", "notify_client"]
    assert report.dispatch is not None
    assert "the client was given to m3 in the CRM since" in report.dispatch.cancelled.values()


def test_a_later_look_leaves_alone_what_another_dispatcher_delivered_meanwhile(store: Store) -> None:
    """Found in review: a session's tick delivered c2's reminder while the run's c1 call took a minute, then c2
    paid; the run's next look recorded the delivered reminder as cancelled ("paid"), never sent."""
    rules, inv = REMINDER, _owed
    _debtors(store, 2)
    clock = FakeClock(datetime(2026, 2, 20, 23, 0, tzinfo=UTC))
    ticked: list[str] = []

    def slow_crm(a: Action) -> None:
        if a.client_id == "c1":
            retainer.adapters.Dispatcher(store, ticked.append, clock=clock, sleep=clock.sleep).dispatch_active()
            store.upsert(invoices=[inv(2, paid_at="2026-02-20T23:00")])
            clock.sleep(60)

    report = engine_for(rules, store).run("2026-02-20", handlers=slow_crm, retry=Retry(recheck=30), clock=clock,
                                          sleep=clock.sleep)  # fmt: skip
    (c2,) = store.ledger(client_ids=["c2"])
    assert ticked and c2.status == "done" and c2.outcome is None
    assert report.dispatch is not None and not report.dispatch.cancelled


def _round_robin_releases(store: Store) -> tuple[retainer.Engine, FakeClock]:
    """c1 of m1 (of m1 to m4), silent since 1 January; released round-robin after 30 + 7 days."""
    rules = {"version": 1, "rules": [
        {"id": "forgotten", "kind": "forgotten", "after": "30d"},
        {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "7d",
         "then": [{"reassign": {"strategy": "round_robin"}}]}]}  # fmt: skip
    store.add(managers=[{"id": f"m{i}"} for i in (1, 2, 3, 4)], clients=[{"id": "c1", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00:00Z"}])  # fmt: skip
    return engine_for(rules, store), FakeClock(datetime(2026, 7, 1, 2, 0, tzinfo=UTC))


def test_a_chain_of_moves_the_data_catches_up_with_is_no_move_by_hand(store: Store) -> None:
    """Found in review: moves m1 -> m2, m2 -> m3, m3 -> m4 waited (a pull host behind); the data then showed m2,
    the first carried out, and the last move was cancelled as a move by hand: the client stayed with m3, who
    had forgotten it too."""
    e, clock = _round_robin_releases(store)
    e.run("2026-03-01", clock=clock)
    store.add(touches=[{"id": "t2", "client_id": "c1", "at": "2026-03-02T10:00:00Z"}])
    e.run("2026-04-10", clock=clock)
    store.add(touches=[{"id": "t3", "client_id": "c1", "at": "2026-04-11T10:00:00Z"}])
    e.run("2026-05-20", clock=clock)
    store.upsert(clients=[{"id": "c1", "manager_id": "m2"}])  # the CRM carried out the first
    h = RecordingHandler()
    report = e.run("2026-05-21", handlers=h, clock=clock, sleep=clock.sleep)
    assert [(a.from_manager_id, a.to_manager_id) for a in h.actions if a.type == "reassign"] == [
        ("m1", "m2"), ("m2", "m3"), ("m3", "m4")]  # type: ignore[attr-defined]
    assert report.dispatch is not None and not report.dispatch.cancelled


def test_an_action_a_later_look_cancelled_is_not_also_left_for_the_next_run(store: Store) -> None:
    """Found in review: the CRM down, c2 paid while its call hung; given up on, the run counted c2's reminder,
    cancelled by then, as left for the next run too."""
    rules, inv = REMINDER, _owed
    _debtors(store, 2)
    clock = FakeClock(datetime(2026, 2, 20, 23, 0, tzinfo=UTC))

    def down(a: Action) -> None:
        if a.client_id == "c2":
            store.upsert(invoices=[inv(2, paid_at="2026-02-20T23:00")])
            clock.sleep(40)
        raise ConnectionError("CRM down")

    report = engine_for(rules, store).run("2026-02-20", handlers=down, clock=clock, sleep=clock.sleep,
                                          retry=Retry(base_delay=60, recheck=30, stop_after=3))  # fmt: skip
    assert report.dispatch is not None and list(report.dispatch.cancelled.values()) == ["paid"]
    assert report.dispatch.left == 0 and list(report.dispatch.failed) == [store.ledger(client_ids=["c1"])[0].id]


def test_a_client_given_back_by_hand_to_an_old_moves_manager_is_a_move_by_hand(store: Store) -> None:
    """Found in review: m1 -> m2 and m2 -> m3 were carried out; m3 -> m4 waited (the CRM down); a supervisor gave
    the client back to m2. m2, the manager of an old move, was taken for the chain catching up, and the move
    went out, taking the client from m2."""
    e, clock = _round_robin_releases(store)

    def crm(a: Action) -> None:  # one that carries the moves out
        if a.type == "reassign":
            store.upsert(clients=[{"id": "c1", "manager_id": a.to_manager_id}])  # type: ignore[attr-defined]

    e.run("2026-03-01", handlers=crm, clock=clock, sleep=clock.sleep)
    store.add(touches=[{"id": "t2", "client_id": "c1", "at": "2026-03-02T10:00:00Z"}])
    e.run("2026-04-10", handlers=crm, clock=clock, sleep=clock.sleep)
    store.add(touches=[{"id": "t3", "client_id": "c1", "at": "2026-04-11T10:00:00Z"}])
    e.run("2026-05-20", clock=clock)  # m3 -> m4 waits
    store.upsert(clients=[{"id": "c1", "manager_id": "m2"}])
    h = RecordingHandler()
    report = e.run("2026-05-21", handlers=h, clock=clock, sleep=clock.sleep)
    assert [a for a in h.actions if a.type == "reassign"] == [] and report.dispatch is not None
    assert "the client was given to m2 in the CRM since" in report.dispatch.cancelled.values()



def _boss_crm(store: Store) -> None:
    store.add(managers=[{"id": "boss"}, {"id": "m1", "supervisor_id": "boss"}, {"id": "m2", "supervisor_id": "boss"},
                        {"id": "m3", "supervisor_id": "boss"}],
              clients=[{"id": "c1", "manager_id": "m1", "name": "Acme"}, {"id": "c3", "manager_id": "m3"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00", "kind": "call"},
                       {"id": "t3", "client_id": "c3", "at": "2026-03-10T10:00", "kind": "call"}])  # fmt: skip


def _sent(h: RecordingHandler) -> list[tuple[str, str | None]]:
    return [(a.key, getattr(a, "assignee_id", None) or getattr(a, "to_manager_id", None)) for a in h.actions]


def test_a_task_or_escalation_for_a_manager_who_left_goes_to_the_supervisor_above(store: Store) -> None:
    """Found in a many-nights review: a task committed for m1, waiting while the CRM was down, was delivered to
    m1 after m1 left (a lost task, its key spent); an escalation waiting when its supervisor left was cancelled
    and told nobody. Each is cancelled (manager_left) and decided again for the active supervisor above."""
    _boss_crm(store)
    engine = engine_for({"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"}]}, store)
    engine.run("2026-03-02")  # no handler: the task waits
    store.upsert(managers=[{"id": "m1", "supervisor_id": "boss", "active": False}])
    h = RecordingHandler()
    report = engine.run("2026-03-03", handlers=h)
    assert _sent(h) == [] and report.counts()["cancelled"] == 1
    h = RecordingHandler()
    engine.run("2026-03-04", handlers=h)
    assert _sent(h) == [("forgotten:c1:2026-01-01#2:create_task", "boss")]


def test_an_escalation_waiting_when_its_supervisor_left_goes_to_the_one_above(store: Store) -> None:
    _boss_crm(store)
    store.add(managers=[{"id": "top"}])
    store.upsert(managers=[{"id": "boss", "supervisor_id": "top"}])
    rules = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"},
                       {"id": "nag", "kind": "escalate", "watch_rule": "forgotten", "after": "10d"}]}  # fmt: skip
    engine = engine_for(rules, store)
    engine.run("2026-03-02", handlers=RecordingHandler())  # the task goes out
    engine.run("2026-03-12")  # no handler: the escalation to boss waits
    assert [e.key for e in store.ledger() if e.status == "pending"] == ["nag:c1:2026-03-02:escalate"]
    store.upsert(managers=[{"id": "boss", "supervisor_id": "top", "active": False}])
    engine.run("2026-03-13", handlers=RecordingHandler())
    h = RecordingHandler()
    engine.run("2026-03-14", handlers=h)
    assert _sent(h) == [("nag:c1:2026-03-02#2:escalate", "top")]


def test_a_move_carried_out_unconfirmed_to_a_manager_who_left_is_decided_again_elsewhere(store: Store) -> None:
    """Found in a many-nights review: the CRM applied a move, the answer was lost, and the new manager left; the
    run cancelled the move (manager_left), and since the data showed the move, the client stayed with the one
    who left for good. It is released again, neither to them nor back to the manager who forgot it."""
    _boss_crm(store)
    rules = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"},
                       {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "14d",
                        "then": [{"reassign": {"strategy": "least_loaded"}}]}]}  # fmt: skip
    engine = engine_for(rules, store)

    def applied_then_dropped(a: Action) -> None:
        if a.type == "reassign":
            store.upsert(clients=[{"id": "c1", "manager_id": a.to_manager_id, "name": "Acme"}])  # type: ignore[attr-defined]
        raise ConnectionError("server disconnected without sending a response")

    engine.run("2026-03-16", handlers=applied_then_dropped, retry=Retry(max_attempts=5, base_delay=0, stop_after=1))
    (move,) = [e for e in store.ledger() if e.type == "reassign"]
    assert move.payload_fields["to_manager_id"] == "m2" and store.get("clients", "c1").manager_id == "m2"  # type: ignore[union-attr]
    store.upsert(managers=[{"id": "m2", "supervisor_id": "boss", "active": False}])
    engine.run("2026-03-17", handlers=RecordingHandler())
    h = RecordingHandler()
    engine.run("2026-03-18", handlers=h)
    assert ("release:c1:2026-01-01#2:reassign", "m3") in _sent(h)


def test_a_run_for_a_day_that_has_not_begun_in_the_rules_zone_says_so(store: Store) -> None:
    """Found in a time review: the documented crontab took `date +%F` on a UTC server; at 02:30 UTC it is the
    evening before in New York, and every night's actions went out a day early, without a word."""
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}])
    rules = {"timezone": "America/New_York", "rules": [{"id": "f", "kind": "forgotten", "after": "60d"}]}
    engine = engine_for(rules, store)
    cron = datetime(2026, 3, 5, 2, 30, tzinfo=UTC)  # 21:30 on 4 March in New York
    early = engine.run("2026-03-05", clock=lambda: cron).plan.warnings
    assert early == ["as_of 2026-03-05 has not begun in the rules' zone (America/New_York: it is 2026-03-04 21:30 "
                     "there): this run acts on what is due by the end of that day, before it comes. A date from "
                     "the server's clock in another zone? Take it in the rules' zone "
                     "(`TZ=America/New_York date +%F`)"]  # fmt: skip
    assert engine.run("2026-03-05", clock=lambda: cron, dry_run=True).plan.warnings == early  # as the run says
    assert engine.plan("2026-03-06").warnings == []  # a plan looks ahead as it is asked to
    assert engine.run("2026-03-05", clock=lambda: cron.replace(hour=5)).plan.warnings == []  # 00:00 there


def test_a_message_cancelled_after_an_attempt_still_counts_against_its_cap(store: Store) -> None:
    """Found in a many-nights review: an SMS went out but its answer was lost; the client paid, the SMS was
    recorded cancelled, stopped counting, and a second SMS went out that week against 1 per calendar week."""
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
              invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-03-01",
                         "amount": 100},
                        {"id": "i2", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-03-02",
                         "amount": 100}])  # fmt: skip
    rules = {"rules": [{"id": "debtor", "kind": "debtor", "steps": [
                 {"after": "10d", "notify_client": {"channel": "sms", "template": "pay"}}]}],
             "policies": {"caps": [{"channel": "sms", "limit": 1, "per": "1w", "window": "calendar"}]}}  # fmt: skip
    engine = engine_for(rules, store)

    def lost_answer(a: Action) -> None:
        raise ConnectionError("server disconnected without sending a response")

    engine.run("2026-03-11", handlers=lost_answer, retry=Retry(max_attempts=5, base_delay=0, stop_after=1))
    store.upsert(invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-03-01",
                            "amount": 100, "paid_at": "2026-03-12T08:00"}])  # fmt: skip
    dispatched = engine.run("2026-03-12", handlers=RecordingHandler()).dispatch
    assert dispatched is not None and list(dispatched.cancelled) == dispatched.unsure  # it may have gone out
    (first,) = [e for e in store.ledger() if "i1" in e.key]
    assert first.cancelled == "paid" and first.attempts == 1
    held = engine.plan("2026-03-13").suppressed
    assert [(s.action.key, s.reason_code) for s in held] == [("debtor:c1:i2+10d:notify_client", "cap")]


def test_a_task_waiting_while_its_client_is_moved_by_hand_goes_to_the_new_owner(store: Store) -> None:
    """Found in a many-nights review: a task for m1, waiting while the CRM was down, was delivered to m1 after
    the CRM gave the client to m3 by hand; m3 never heard the client had been silent since January."""
    _boss_crm(store)
    engine = engine_for({"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"}]}, store)
    engine.run("2026-03-02")  # no handler: the task for m1 waits
    store.upsert(clients=[{"id": "c1", "manager_id": "m3", "name": "Acme"}])  # moved by hand in the CRM
    h = RecordingHandler()
    assert engine.run("2026-03-03", handlers=h).counts()["cancelled"] == 1 and _sent(h) == []
    h = RecordingHandler()
    engine.run("2026-03-04", handlers=h)
    assert _sent(h) == [("forgotten:c1:2026-01-01#2:create_task", "m3")]
    # a task for the supervisor of a manager who left is no hand move: it goes
    store.upsert(managers=[{"id": "m3", "supervisor_id": "boss", "active": False}],
                 clients=[{"id": "c3", "manager_id": "m3"}])  # fmt: skip
    h = RecordingHandler()
    engine.run("2026-05-12", handlers=h)
    assert ("forgotten:c3:2026-03-10:create_task", "boss") in _sent(h)


def test_a_win_back_answer_recorded_on_the_task_decided_again_moves_the_process_on(store: Store) -> None:
    """Found in a reactive review: the win-back's reason task, decided again for the supervisor of a manager who
    left (`#2`), got its churn_reason, and the process never moved on: the reason was read on the first key."""
    store.add(managers=[{"id": "boss"}, {"id": "m1", "supervisor_id": "boss"}],
              clients=[{"id": "c1", "manager_id": "m1", "name": "Acme", "created_at": "2025-01-01"}],
              invoices=[{"id": f"a{n}", "client_id": "c1", "issued_at": f"2025-{n:02}-01", "amount": "500",
                         "paid_at": f"2025-{n:02}-02"} for n in (7, 9, 11)],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-02-10T10:00", "kind": "call"}])  # fmt: skip
    rules = {"rules": [{"id": "churned", "kind": "churned", "min_orders": 3, "lookback": "365d", "silence": "90d"},
                       {"id": "winback", "kind": "winback", "min_revenue": 1000, "on_outcome": {
                           "price": [{"propose_offer": {"offer": "loyalty", "amount": 0}}]}}]}  # fmt: skip
    engine = engine_for(rules, store)
    engine.run("2026-02-20")  # no handler: the reason task for m1 waits
    store.upsert(managers=[{"id": "m1", "supervisor_id": "boss", "active": False}])
    engine.run("2026-02-21", handlers=RecordingHandler())
    engine.run("2026-02-22", handlers=RecordingHandler())
    (again,) = [e for e in store.ledger(rule="winback") if "#2" in e.key]
    assert again.payload_fields["assignee_id"] == "boss"
    engine.record_outcome(again.id, {"churn_reason": "price"})
    report = engine.run("2026-02-23", handlers=RecordingHandler())
    assert [a.key for a in report.committed] == ["winback:c1:2025-11-01~price:propose_offer"]


@pytest.mark.parametrize("task_first", [True, False])
def test_only_the_cancelled_action_of_a_match_is_decided_again(store: Store, task_first: bool) -> None:
    """Found in review: with the task cancelled for a manager who left, the next plan decided the whole match
    again: the client got the e-mail a second time, or (the e-mail first) the task was never decided again."""
    _boss_crm(store)
    then = [{"create_task": {"title": "Call", "assignee": "manager"}},
            {"notify_client": {"channel": "email", "template": "miss_you"}}]
    engine = engine_for({"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d",
                                    "then": then if task_first else then[::-1]}]}, store)  # fmt: skip
    mails = RecordingHandler()
    engine.run("2026-03-02", handlers={"notify_client": mails})  # the e-mail goes out, the task waits
    store.upsert(managers=[{"id": "m1", "supervisor_id": "boss", "active": False}])
    engine.run("2026-03-03", handlers={"notify_client": mails, "create_task": RecordingHandler()})
    tasks = RecordingHandler()
    engine.run("2026-03-04", handlers={"notify_client": mails, "create_task": tasks})
    assert _sent(tasks) == [("forgotten:c1:2026-01-01#2:create_task", "boss")]
    assert [a.key for a in mails.actions] == ["forgotten:c1:2026-01-01:notify_client"]


def test_a_task_for_a_manager_named_by_id_who_left_is_still_delivered(store: Store) -> None:
    """Found in review: `assignee: m1` for a manager who left (with a supervisor) was cancelled every night and
    decided again for m1 again, never delivered. A rule that names the manager is not redirected."""
    store.add(managers=[{"id": "boss"}, {"id": "m1", "supervisor_id": "boss", "active": False},
                        {"id": "m2", "supervisor_id": "boss"}],
              clients=[{"id": "c1", "manager_id": "m2"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00", "kind": "call"}])  # fmt: skip
    task = {"create_task": {"title": "Call", "assignee": "m1"}}
    engine = engine_for({"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d", "then": [task]}]}, store)
    engine.run("2026-03-02")  # waits
    h = RecordingHandler()
    engine.run("2026-03-03", handlers=h)
    assert _sent(h) == [("forgotten:c1:2026-01-01:create_task", "m1")]


@pytest.mark.parametrize("error", [StoreError, StoreBusyError])
def test_a_store_that_fails_mid_delivery_says_what_went_out(
    store: Store, monkeypatch: pytest.MonkeyPatch, error: type[StoreError]
) -> None:
    """Found in an ops review: a disk that filled up after 503 deliveries were recorded stopped the run with
    "commit failed ...; nothing of this write was kept", which read as if the night had been undone."""
    crm(store, 5)
    record = type(store).finish_attempts
    calls = [0]

    def full_disk(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] >= 4:  # a lock held past Retry.lock_wait is waited for, then raised
            raise error("crm.db: commit failed: disk I/O error; nothing of this write was kept")
        return record(self, *args, **kwargs)

    monkeypatch.setattr(type(store), "finish_attempts", full_disk)
    h = RecordingHandler()
    with pytest.raises(StoreError) as exc:
        run(store, handlers=h)
    assert str(exc.value).startswith("crm.db: commit failed: disk I/O error; nothing of this write was kept. "
                                     "Delivery stopped there: 3 action(s) had been delivered and recorded, 0 dead; "
                                     "the rest wait in the ledger (the one whose result could not be recorded "
                                     "too: it goes again), and the next run delivers them")  # fmt: skip
    assert type(exc.value) is error  # a lock held too long is still worth trying again (StoreBusyError)
    monkeypatch.undo()
    assert len(h.actions) == 4 and run(store, handlers=h).dispatch is not None  # the fourth goes again
    assert {e.status for e in store.ledger()} == {"done"}


def test_an_action_tried_in_this_run_then_cancelled_by_its_later_look_may_have_gone_out(store: Store) -> None:
    """Found in a review: the run's own later look (`Retry.recheck`) cancelled an SMS it had tried a moment before
    (the gateway timed out), and its report did not say it may have gone out: it read the attempts of before."""
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}])
    rules = {"rules": [{"id": "sms", "category": "retention", **ALL,
                        "then": [{"notify_client": {"channel": "sms", "template": "hi"}}]}]}  # fmt: skip

    def gateway(action: Action) -> None:
        if action.client_id == "c1":
            raise TimeoutError("read timed out (the SMS gateway may have sent it)")
        store.upsert(clients=[{"id": "c1", "manager_id": "m1", "contact_policy": "do_not_contact"}])  # meanwhile

    d = run(store, "2026-03-01", rules, handlers=gateway, retry=Retry(max_attempts=3, base_delay=0, recheck=0)).dispatch
    (sms,) = store.ledger(client_ids=["c1"])
    assert d is not None and list(d.cancelled.values()) == ["do_not_contact"] and d.unsure == [sms.id]
    assert sms.attempts == 1


def test_a_dispatcher_that_does_not_know_the_rules_holds_marketing_for_a_no_marketing_client(store: Store) -> None:
    """`Dispatcher(no_marketing=None)` (a replay without the rules): an up-sell for a client who opted out is
    neither sent nor cancelled; looked at again once the client opts back in, it goes (found in a review: the
    hold was kept for good by a dispatcher used again)."""
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}])
    upsell = {"id": "upsell", "category": "development", **ALL, "then": [{"propose_offer": {"offer": "pro"}}]}
    rules = {"rules": [upsell]}
    (offer,) = run(store, "2026-03-01", rules).committed  # no handler: it waits
    store.upsert(clients=[{"id": "c1", "manager_id": "m1", "contact_policy": "no_marketing"}])
    h = RecordingHandler()
    d = Dispatcher(store, h)  # built without the rules: no_marketing=None
    first = d.dispatch_active()
    assert list(first.held) == [offer.id] and first.cancelled == {} and h.actions == []
    assert [x.status for x in store.ledger()] == ["pending"]
    store.upsert(clients=[{"id": "c1", "manager_id": "m1", "contact_policy": "ok"}])  # opted back in
    again = d.dispatch_active()
    assert again.held == {} and again.done == [offer.id] and [a.id for a in h.actions] == [offer.id]
