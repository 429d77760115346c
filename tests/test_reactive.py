"""Reactive mode (retainer.reactive): per-event decisions, processes as durable-rules statecharts.

The central property: a session fed a sequence of events commits the same keys as the batch engine
running (`Engine.run`) at the same instants over the same facts. The rest: processes resume after a
restart, payments cancel pending dunning steps, an inbound contact tells the manager about a waiting
offer, durable-rules gets explicit unique ids and its exceptions reach the caller.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("durable.engine", reason="reactive mode needs durable-rules: pip install -e '.[reactive]'")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retainer
from retainer.adapters.dispatch import Retry
from retainer.reactive import CURSOR, ReactiveError, Session, charts_for
from retainer.stores import Store
from retainer.testing import RecordingHandler
from tests.conftest import fresh, make_store
from tests.test_cli import SCRIPT

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)


DEBTOR = {
    "id": "debtor", "kind": "debtor",
    "steps": [
        {"after": "3d", "notify_client": {"channel": "email", "template": "reminder"}},
        {"after": "10d", "notify_client": {"channel": "sms", "template": "reminder"}},
        {"after": "20d", "create_task": {"title": "Call {client.name} about {invoice.id}"}},
    ],
}
CHURNED = {"id": "churned", "kind": "churned", "min_orders": 3, "lookback": "365d", "silence": "90d"}
WINBACK = {
    "id": "winback", "kind": "winback", "min_revenue": 3000,
    "on_outcome": {"survey_needed": [{"create_task": {"title": "Survey call to {client.name}", "due_in": "2d"}}],
                   "price": [{"propose_offer": {"offer": "discount", "deliver": "next_inbound"}}]},
}
FORGOTTEN = {"id": "forgotten", "kind": "forgotten", "after": "30d"}
RULES = {"version": 1, "rules": [DEBTOR, CHURNED, WINBACK, FORGOTTEN]}


def seed(store: Store) -> None:
    """One client: three paid orders (churned 90 days after the last), one invoice falling due on day 50."""
    store.add(
        managers=[{"id": "boss", "name": "Boss"}, {"id": "m1", "name": "Anna", "supervisor_id": "boss"}],
        clients=[{"id": "c1", "manager_id": "m1", "name": "Acme", "created_at": at(0)}],
        invoices=[{"id": f"i{d}", "client_id": "c1", "issued_at": at(d), "amount": "1000", "paid_at": at(d)}
                  for d in (0, 20, 40)]
        + [{"id": "due", "client_id": "c1", "issued_at": at(40), "due_at": at(50), "amount": "500"}],
        tasks=[{"id": "crm1", "client_id": "c1", "created_at": at(1), "due_at": at(200)}],
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = make_store("sqlite", tmp_path)
    seed(s)
    yield s
    s.close()


def keys(store: Store) -> list[str]:
    return sorted(e.key for e in store.ledger())


# ---------------------------------------------------------------- charts from the rule file


def test_charts_are_generated_from_the_rule_file() -> None:
    charts = {c.name: c for c in charts_for(retainer.load_rules(RULES))}
    assert set(charts) == {"debtor~dunning", "winback~winback", "winback~offer"}
    assert charts["debtor~dunning"].states == ("new", "step_3d", "step_10d", "step_20d", "paid")
    assert charts["winback~winback"].reasons == ("price", "survey_needed")
    assert ("reason_pending", "outcome:price") in charts["winback~winback"].transitions
    full = {c.name for c in charts_for(retainer.load_rules(Path("examples/rules/full.yaml")))}
    assert full == {"debtor~dunning", "winback~winback", "winback~offer", "upsell-mid-contract~offer"}


# ---------------------------------------------------------------- dunning


def test_dunning_ladder_runs_and_a_payment_cancels_its_pending_steps(store: Store) -> None:
    s = Session(RULES, store)  # no handlers: committed actions stay pending for the host
    r = s.tick(at(53))
    assert [a.key for a in r.committed] == ["debtor:c1:due+3d:notify_client"]
    assert s.process_states("c1") == {"debtor:c1:due:dunning": ("debtor~dunning", "step_3d")}
    r = s.post({"type": "invoice_paid", "id": "due", "at": at(54)})
    (step,) = store.ledger(ids=r.cancelled)
    assert step.key == "debtor:c1:due+3d:notify_client"
    assert step.status == "done" and step.outcome == {"cancelled": "paid", "at": at(54).isoformat()}
    assert [(t.from_state, t.to_state) for t in r.transitions] == [("step_3d", "paid")]
    assert s.process_states("c1") == {}
    assert not [a for a in s.tick(at(80)).committed if a.rule == "debtor"]  # the ladder stopped


@pytest.mark.parametrize("left", ["pending", "dead"])
def test_a_payment_delivered_twice_closes_its_ladder_once(store: Store, left: str) -> None:
    """Found in review: the copy reported the ladder paid again (`new -> paid`) and cancelled its step again,
    with the copy's date."""
    def down(action: Any) -> None:
        raise ConnectionError("503")

    # no handlers: the reminder stays pending; a CRM that is down: it goes dead
    s = Session(RULES, store) if left == "pending" else Session(RULES, store, down, retry=Retry(max_attempts=1))
    s.tick(at(53))
    assert [e.status for e in store.ledger()] == [left]
    first = s.post({"type": "invoice_paid", "id": "due", "at": at(54)})
    assert [(t.from_state, t.to_state) for t in first.transitions] == [("step_3d", "paid")] and first.cancelled
    copy = s.post({"type": "invoice_paid", "id": "due", "at": at(54), "event_id": "again"})
    assert copy.transitions == [] and copy.cancelled == []
    (step,) = store.ledger(ids=first.cancelled)
    assert step.outcome == {"cancelled": "paid", "at": at(54).isoformat()}


@pytest.mark.parametrize("known", [True, False])
def test_a_payment_the_crm_wrote_first_then_posted_still_cancels_the_pending_step(store: Store, known: bool) -> None:
    """Found in review: a payment written to the store (a sync) and then posted looked like a copy of an event
    already taken in, so the step left pending stayed pending, for a host that sends pending actions itself."""
    if known:
        Session(RULES, store).tick(at(53))  # a session met the ladder (and saved it)
    else:
        retainer.Engine(retainer.load_rules(RULES), store).run(at(53))  # a nightly run started it
    inv = store.get("invoices", "due")
    assert inv is not None
    store.upsert(invoices=[{**inv.model_dump(), "paid_at": at(54)}])
    r = Session(RULES, store).post({"type": "invoice_paid", "id": "due", "at": at(54)})
    assert [(t.from_state, t.to_state) for t in r.transitions] == [("step_3d" if known else "new", "paid")]
    (step,) = store.ledger(ids=r.cancelled)
    assert step.key == "debtor:c1:due+3d:notify_client" and step.status == "done"


def test_a_partial_payment_keeps_the_ladder(store: Store) -> None:
    s = Session(RULES, store)
    s.tick(at(53))
    r = s.post({"type": "invoice_paid", "id": "due", "at": at(54), "amount": "100"})
    assert r.cancelled == [] and r.transitions == []
    assert [a.key for a in s.tick(at(60)).committed if a.rule == "debtor"] == ["debtor:c1:due+10d:notify_client"]


def test_instalments_add_up_and_the_last_one_stops_the_ladder(store: Store) -> None:
    """`amount` is this payment: 200 then 300 pay the 500 in full (before, the second overwrote the first
    and the ladder sent an SMS to a client who had paid everything)."""
    s = Session(RULES, store)
    s.tick(at(53))
    assert s.post({"type": "invoice_paid", "id": "due", "at": at(54), "amount": "200"}).transitions == []
    r = s.post({"type": "invoice_paid", "id": "due", "at": at(55), "amount": 300})
    assert [(t.from_state, t.to_state) for t in r.transitions] == [("step_3d", "paid")]
    inv = store.get("invoices", "due")
    assert (inv.paid_amount, inv.paid_at) == (500, at(55))  # type: ignore[union-attr]
    assert not [a for a in s.tick(at(80)).committed if a.rule == "debtor"]


def test_a_running_total_is_taken_as_it_is_so_a_redelivered_payment_changes_nothing(store: Store) -> None:
    s = Session(RULES, store)
    s.tick(at(53))
    for _ in range(2):  # the same event twice, as an at-least-once queue may deliver it
        s.post({"type": "invoice_paid", "id": "due", "at": at(54), "paid_total": "200"})
    assert store.get("invoices", "due").paid_amount == 200  # type: ignore[union-attr]
    assert [a.key for a in s.tick(at(60)).committed if a.rule == "debtor"] == ["debtor:c1:due+10d:notify_client"]


@pytest.mark.parametrize("late", [False, True])
def test_a_running_total_delivered_out_of_order_does_not_move_the_payment_backwards(store: Store, late: bool) -> None:
    """A queue hands over the 11:00 total (paid in full) before the 10:00 one (200): the stale event wrote 200
    back over the full payment, the ladder was adopted again, and the next tick dunned a client who had paid."""
    s = Session(RULES, store)
    s.tick(at(53))
    part = {"type": "invoice_paid", "id": "due", "at": at(54) + timedelta(hours=10), "paid_total": "200"}
    full = {"type": "invoice_paid", "id": "due", "at": at(54) + timedelta(hours=11), "paid_total": "500"}
    for ev in [full, part] if late else [part, full]:
        s.post(ev)
    inv = store.get("invoices", "due")
    assert (inv.paid_amount, inv.paid_at) == (500, at(54) + timedelta(hours=11))  # type: ignore[union-attr]
    assert s.process_states("c1") == {}
    assert not [a for a in s.tick(at(80)).committed if a.rule == "debtor"]


def test_post_with_as_of_writes_the_fact_at_its_own_time(store: Store) -> None:
    """Found in review: `post(event, as_of=now)` wrote the payment dated at the as_of, so a late copy of an older
    total passed for the newest payment and undid the full one (the client who paid got the SMS), and a task
    done on day 52 was stored as done when it was posted."""
    s = Session(RULES, store)
    s.tick(at(53))
    s.post({"type": "invoice_paid", "id": "due", "at": at(54.5), "paid_total": "500"}, as_of=at(54.6))
    s.post({"type": "invoice_paid", "id": "due", "at": at(54.4), "paid_total": "200"}, as_of=at(54.7))  # late
    inv = store.get("invoices", "due")
    assert inv is not None and (inv.paid_amount, inv.paid_at) == (500, at(54.5))
    store.add(tasks=[{"id": "k1", "client_id": "c1", "created_at": at(10)}])
    s.post({"type": "task_done", "id": "k1", "at": at(52)}, as_of=at(54.8))
    assert store.get("tasks", "k1").done_at == at(52)  # type: ignore[union-attr]
    assert not [a for a in s.tick(at(61)).committed if a.rule == "debtor"]


def test_a_payment_dated_by_day_and_posted_with_as_of_that_day_is_seen_by_its_decision(store: Store) -> None:
    """Found in review: a day without a time was stored at the day's end, after an as_of earlier that day, so the
    decision did not see the payment: the ladder stayed open and that day's reminder went out. Written at its
    as_of instead, a late copy of the day's first total passed for a later payment and undid the full one. It is
    written at the day's start, as the store writes a date, and every copy of that day with it."""
    now = [at(60.3)]
    s = Session(RULES, store, clock=lambda: now[0])
    s.tick(at(53))
    day = at(60).date().isoformat()
    first = {"type": "invoice_paid", "id": "due", "at": day, "paid_total": "200"}
    s.post(first, as_of=now[0])
    now[0] = at(60.4)
    r = s.post({**first, "paid_total": "500"}, as_of=now[0])  # the first, partly paid, sent that day's step
    assert [(t.from_state, t.to_state) for t in r.transitions] == [("step_10d", "paid")]
    assert not [a for a in r.committed if a.rule == "debtor"] and s.process_states("c1") == {}
    start_of_day = at(60).replace(hour=0, minute=0, second=0)
    assert store.get("invoices", "due").paid_at == start_of_day  # type: ignore[union-attr]
    now[0] = at(60.5)
    s.post(first, as_of=now[0])  # the first total again, late: a copy (every copy of that day is at its start)
    inv = store.get("invoices", "due")
    assert inv is not None and (inv.paid_amount, inv.paid_at) == (500, start_of_day)
    assert s.process_states("c1") == {}


def test_a_smaller_running_total_at_the_instant_of_the_stored_one_is_an_older_copy(store: Store) -> None:
    """Found in review: payments dated by day share their instant; the first instalment's total redelivered after
    the second (paid in full) moved the payment back to 200, reopened the ladder and dunned the client."""
    s = Session(RULES, store)
    s.tick(at(53))
    first = {"type": "invoice_paid", "id": "due", "at": at(54), "paid_total": "200"}
    s.post(first)
    s.post({**first, "paid_total": "500"})
    assert s.process_states("c1") == {}
    s.post(first)
    assert store.get("invoices", "due").paid_amount == 500  # type: ignore[union-attr]
    assert s.process_states("c1") == {}
    assert not [a for a in s.tick(at(61)).committed if a.rule == "debtor"]


def test_an_instalment_delivered_late_is_added_and_keeps_the_later_date(store: Store) -> None:
    s = Session(RULES, store)
    s.tick(at(53))
    s.post({"type": "invoice_paid", "id": "due", "at": at(55), "amount": "200"})
    s.post({"type": "invoice_paid", "id": "due", "at": at(54), "amount": "100"})  # paid the day before
    inv = store.get("invoices", "due")
    assert (inv.paid_amount, inv.paid_at) == (300, at(55))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"amount": "100", "paid_total": "100"}, "not both"),
        ({"amount": "lots"}, "amount 'lots' is not an amount of money"),
        ({"paid_total": -5}, "paid_total -5 is not an amount of money"),
    ],
)
def test_a_payment_that_is_not_money_is_refused_before_anything_is_written(
    store: Store, extra: dict[str, Any], message: str
) -> None:
    s = Session(RULES, store)
    with pytest.raises(ReactiveError, match=message):
        s.post({"type": "invoice_paid", "id": "due", "at": at(54), **extra})
    assert store.get("invoices", "due").paid_at is None  # type: ignore[union-attr]


def test_a_touch_delivered_twice_is_written_once_and_decided_again(store: Store) -> None:
    s = Session(RULES, store)
    touch = {"type": "touch", "id": "t9", "client_id": "c1", "at": at(54), "direction": "inbound"}
    s.post(touch)
    again = s.post(touch)  # before, the second raised DataError: id already exists
    assert again.client_id == "c1" and again.committed == []
    assert [t.id for t in store.iter("touches")] == ["t9"]


def test_a_manager_fact_is_written_and_refreshes_the_cache_without_a_decision(store: Store) -> None:
    s = Session(RULES, store)
    r = s.post({"type": "fact", "entity": "managers", "row": {"id": "m2", "name": "Boris"}, "at": at(54)})
    assert (r.client_id, r.plan, r.committed) == (None, None, [])
    assert store.get("managers", "m2") is not None
    assert "m2" in {m.id for m in s.engine.store.managers()}  # the session's cached managers know m2


def test_a_failing_handler_is_tried_once_and_post_never_sleeps(store: Store) -> None:
    """The default delivery in a session: one attempt, the action left `failed` for the next run (which
    retries it); with the dispatcher's default backoff a failing endpoint held each post for 15 s."""
    slept: list[float] = []
    failing = RecordingHandler(fail=lambda a: True)
    s = Session(RULES, store, handlers=failing, sleep=slept.append)
    r = s.tick(at(53))
    (step,) = store.ledger(ids=[a.id for a in r.committed])
    assert (step.status, step.attempts, slept) == ("failed", 1, [])
    rec = RecordingHandler()
    retainer.Engine(retainer.load_rules(RULES), store).run(at(53), handlers=rec)  # the next run delivers it
    assert step.id in {a.id for a in rec.actions}
    assert store.ledger(ids=[step.id])[0].status == "done"


def test_a_crm_saying_later_never_makes_post_sleep(store: Store) -> None:
    """Found in a review of the throttling: a 429 no longer counted as a failure, so a session waited out the
    pauses inside `post`, calling the CRM again and again for up to 10 minutes."""
    slept: list[float] = []
    calls: list[str] = []

    def crm(a: retainer.Action) -> None:
        calls.append(a.id)
        raise retainer.adapters.RetryLater("429 Too Many Requests", None)

    s = Session(RULES, store, handlers=crm, sleep=slept.append)
    r = s.tick(at(53))
    assert slept == [] and len(calls) == 1 and r.committed
    assert {e.status for e in store.ledger(ids=[a.id for a in r.committed])} <= {"failed", "pending"}


def test_restart_resumes_a_dunning_ladder(store: Store, tmp_path: Path) -> None:
    Session(RULES, store).tick(at(53))
    assert json.loads(store.get_cursor(CURSOR + "c1") or "") == {"debtor:c1:due:dunning": ["debtor~dunning", "step_3d"]}
    again = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}")  # a new process over the same file
    s2 = Session(RULES, again)
    r = s2.tick(at(60))
    assert [a.key for a in r.committed if a.rule == "debtor"] == ["debtor:c1:due+10d:notify_client"]
    assert [(t.from_state, t.to_state) for t in r.transitions] == [("step_3d", "step_10d")]
    r = s2.post({"type": "invoice_paid", "id": "due", "at": at(61)})
    assert [(t.from_state, t.to_state) for t in r.transitions] == [("step_10d", "paid")]
    assert len(r.cancelled) == 2  # no handlers: both steps were still pending


def _pay_in_store(store: Store, day: float, amount: str | None = None) -> None:
    """The CRM records the payment itself (an import, `store.upsert`): no `invoice_paid` event."""
    inv = store.get("invoices", "due")
    assert inv is not None
    store.upsert(invoices=[{**inv.model_dump(), "paid_at": at(day), "paid_amount": amount}])


@pytest.mark.parametrize("restarted", [False, True])
def test_a_payment_written_to_the_store_directly_closes_its_ladder_at_the_next_tick(
    store: Store, tmp_path: Path, restarted: bool
) -> None:
    """Found in review: a payment the CRM wrote to the store itself never moved the session's ladder, so the
    ladder stayed open for good (in `process_states`, and saved again with the client's every change). The
    next tick closes it as the event would have, its undelivered step cancelled; after a restart too, from
    the saved states alone."""
    s = Session(RULES, store)  # no handlers: the first step stays pending
    s.tick(at(53))
    _pay_in_store(store, 54)
    if restarted:
        store = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}")  # a new process over the same file
        s = Session(RULES, store)
    r = s.tick(at(55))
    assert [(t.chart, t.sid, t.from_state, t.to_state) for t in r.transitions] == [
        ("debtor~dunning", "debtor:c1:due:dunning", "step_3d", "paid")]  # fmt: skip
    assert r.dispatch is not None  # without handlers too: the tick looks at what waits, as Engine.run does
    (step,) = store.ledger(ids=list(r.dispatch.cancelled))
    assert step.key == "debtor:c1:due+3d:notify_client" and step.status == "done"
    assert step.outcome is not None and step.outcome["cancelled"] == "paid"
    assert json.loads(store.get_cursor(CURSOR + "c1") or "") == {}
    assert s.process_states("c1") == {}
    assert s.tick(at(56)).transitions == []


def test_a_tick_works_on_a_store_written_before_store_cursors() -> None:
    """A backend that declares the Store protocol but predates `cursors` inherits its stub, which returns None:
    every tick with a dunning rule raised after delivering (found in review). Its ladders in memory still close."""
    from retainer.stores.memory import MemoryStore

    class Older(MemoryStore):
        cursors = Store.cursors  # the protocol's stub

    store = Older()
    seed(store)
    s = Session(RULES, store)
    assert [a.key for a in s.tick(at(53)).committed if a.rule == "debtor"] == ["debtor:c1:due+3d:notify_client"]
    _pay_in_store(store, 54)
    assert [(t.from_state, t.to_state) for t in s.tick(at(55)).transitions] == [("step_3d", "paid")]


def test_a_tick_without_handlers_cancels_a_pending_step_a_nightly_run_left_for_an_invoice_paid_since(
    store: Store,
) -> None:
    """Found in review: the session had never met the client, so its tick did not know the ladder, and without
    handlers it did not look at the ledger either: the step stayed pending for a host that pulls and sends
    pending actions, as Engine.run without handlers never leaves it."""
    retainer.Engine(retainer.load_rules(RULES), store).run(at(53))  # no handlers: the step waits, pending
    _pay_in_store(store, 54)
    r = Session(RULES, store).tick(at(55))
    assert r.dispatch is not None and list(r.dispatch.cancelled.values()) == ["paid"]
    assert [e.status for e in store.ledger(status=["pending"])] == []


@pytest.mark.parametrize(("day", "amount"), [(54, "100"), (70, None)])
def test_a_ladder_stays_open_while_the_store_shows_money_owed_at_the_tick(
    store: Store, day: float, amount: str | None
) -> None:
    """Partly paid, or paid only after the tick's as_of: the ladder goes on, and its next step comes."""
    s = Session(RULES, store)
    s.tick(at(53))
    _pay_in_store(store, day, amount)
    r = s.tick(at(60))
    assert [(t.from_state, t.to_state) for t in r.transitions] == [("step_3d", "step_10d")]
    assert s.process_states("c1") == {"debtor:c1:due:dunning": ("debtor~dunning", "step_10d")}


def test_a_partly_paid_invoice_keeps_its_ladder_when_a_session_adopts_it(store: Store) -> None:
    """The session's `invoice_paid` event and the dispatcher keep a partly paid ladder going; adopting it from
    the ledger treated any payment as paid in full, so the session lost the process."""
    retainer.Engine(retainer.load_rules(RULES), store).run(at(53))  # the nightly run's first dunning step
    inv = store.get("invoices", "due")
    assert inv is not None
    store.upsert(invoices=[{**inv.model_dump(), "paid_at": at(54), "paid_amount": "1"}])
    assert Session(RULES, store).process_states("c1") == {"debtor:c1:due:dunning": ("debtor~dunning", "step_3d")}
    store.upsert(invoices=[{**inv.model_dump(), "paid_at": at(54)}])  # paid in full: nothing left to chase
    assert Session(RULES, store).process_states("c1") == {}


def test_a_sessions_records_are_not_nightly_runs(store: Store, tmp_path: Path) -> None:
    """`retainer runs` listed every event's record among the nights; and a nightly run took a session's
    record, still `committed` while it delivered, for a run killed after its commit."""
    s = Session(RULES, store)
    r = s.tick(at(53))
    assert r.committed and [x.kind for x in store.runs()] == ["event"]
    store.commit_run(dataclasses.replace(store.runs()[0], id="busy", status="committed"), [], {})  # delivering now
    retainer.Engine(retainer.load_rules(RULES), store).run(at(53))
    assert [(x.kind, x.status) for x in store.runs()] == [("run", "finished"), ("event", "committed"),
                                                          ("event", "finished")]  # fmt: skip
    listed = subprocess.run([SCRIPT, "runs", "-d", str(tmp_path / "crm.db"), "-f", "json"], capture_output=True,
                            text=True)  # fmt: skip
    assert [x["kind"] for x in json.loads(listed.stdout)] == ["run"]
    assert "reactive sessions' records are left out: --events lists them too" in listed.stderr
    every = subprocess.run([SCRIPT, "runs", "-d", str(tmp_path / "crm.db"), "-f", "json", "--events"],
                           capture_output=True, text=True)  # fmt: skip
    assert len(json.loads(every.stdout)) == 3


# ---------------------------------------------------------------- win-back and next_inbound offers


def test_restart_resumes_a_winback_mid_process_and_an_inbound_call_tells_the_manager(
    store: Store, tmp_path: Path
) -> None:
    s = Session(RULES, store)
    s.post({"type": "invoice_paid", "id": "due", "at": at(41)})
    r = s.tick(at(131))
    (task,) = [a for a in r.committed if a.rule == "winback"]
    assert s.process_states("c1")["winback:c1:2026-02-10:winback"] == ("winback~winback", "reason_pending")
    store.close()
    rec = RecordingHandler()
    s2 = Session(RULES, retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}"), rec)
    r = s2.post({"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": "Price"}, "at": at(132)})
    assert [a.key for a in r.committed] == ["winback:c1:2026-02-10~price:propose_offer"]
    assert [(t.chart, t.from_state, t.to_state) for t in r.transitions] == [
        ("winback~winback", "reason_pending", "next_price"),
        ("winback~winback", "next_price", "done"),
        ("winback~offer", "new", "waiting"),
    ]
    out = s2.post({"type": "touch", "id": "t-out", "client_id": "c1", "at": at(133), "direction": "outbound"})
    assert not out.committed  # only an inbound contact presents the offer
    r = s2.post({"type": "touch", "id": "t-in", "client_id": "c1", "at": at(134), "kind": "call",
                 "direction": "inbound"})
    (note,) = r.committed
    assert note.type == "notify_manager" and note.to_manager_id == "m1"
    assert note.key == "winback:c1:2026-02-10~price~inbound:notify_manager"
    assert "offer discount is waiting" in note.reason and note.evidence["touch_id"] == "t-in"
    assert [a.key for a in rec.actions] == [
        "winback:c1:2026-02-10~price:propose_offer", "winback:c1:2026-02-10~price~inbound:notify_manager"]
    again = s2.post({"type": "touch", "id": "t-in2", "client_id": "c1", "at": at(135), "direction": "inbound"})
    assert not again.committed  # presented once
    assert s2.process_states("c1") == {}


def _offer_waiting(store: Store, **kw: Any) -> tuple[Session, str]:
    """c1 churned, the win-back's reason was `price`: a discount waits for c1's next inbound call."""
    s = Session(RULES, store, **kw)
    s.post({"type": "invoice_paid", "id": "due", "at": at(41)})
    (task,) = [a for a in s.tick(at(131)).committed if a.rule == "winback"]
    r = s.post({"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": "price"}, "at": at(132)})
    (offer,) = [a.id for a in r.committed if a.type == "propose_offer"]
    return s, offer


@pytest.mark.parametrize("restarted", [False, True])
def test_an_outcome_on_a_waiting_offer_closes_it_after_a_restart_too(
    store: Store, tmp_path: Path, restarted: bool
) -> None:
    """Found in review: after a restart the session looked for the offer among the client's processes before it
    had read them, so a declined offer stayed waiting and the client's next call prompted the manager."""
    s, offer = _offer_waiting(store)
    if restarted:
        s = Session(RULES, retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}"))
    r = s.post({"type": "outcome", "action_id": offer, "outcome": {"result": "declined"}, "at": at(133)})
    assert [(t.chart, t.from_state, t.to_state) for t in r.transitions] == [("winback~offer", "waiting", "closed")]
    call = s.post({"type": "touch", "id": "t-in", "client_id": "c1", "at": at(134), "direction": "inbound"})
    assert not call.committed


def test_the_prompt_about_a_waiting_offer_goes_to_the_active_supervisor_of_a_manager_who_left(store: Store) -> None:
    """Found in review: the prompt went to the manager who had left (the engine gives her tasks to the nearest
    active supervisor), and no dispatcher check stops a message: it was lost."""
    s, _offer = _offer_waiting(store)
    s.post({"type": "fact", "entity": "managers", "at": at(133),
            "row": {"id": "m1", "name": "Anna", "supervisor_id": "boss", "active": False}})  # fmt: skip
    call = s.post({"type": "touch", "id": "t-in", "client_id": "c1", "at": at(134), "direction": "inbound"})
    (note,) = call.committed
    assert note.type == "notify_manager" and note.to_manager_id == "boss"


def test_a_win_back_whose_reason_was_recorded_past_the_session_is_done_when_its_next_step_is_committed(
    store: Store,
) -> None:
    """Found in review: with the reason recorded through `Engine.record_outcome` (or `retainer actions outcome`)
    and the next step committed by a tick, the session's win-back stayed `reason_pending` for good."""
    s = Session(RULES, store)
    s.post({"type": "invoice_paid", "id": "due", "at": at(41)})
    (task,) = [a for a in s.tick(at(131)).committed if a.rule == "winback"]
    retainer.Engine(retainer.load_rules(RULES), store).record_outcome(task.id, {"churn_reason": "survey_needed"})
    r = s.tick(at(132))
    assert [a.key for a in r.committed if a.rule == "winback"] == ["winback:c1:2026-02-10~survey_needed:create_task"]
    moved = [(t.chart, t.from_state, t.to_state) for t in r.transitions]
    assert moved == [("winback~winback", "reason_pending", "done")]
    assert s.process_states("c1") == {}


@pytest.mark.parametrize("restart", [False, True])
def test_a_win_back_whose_reason_task_is_decided_again_stays_one_process_that_moves_on(
    store: Store, restart: bool
) -> None:
    """Left by a review: the reason task, cancelled when its manager left and decided again for the supervisor
    (`#2`), opened a second win-back; the answer on it moved that one, and the first stayed `reason_pending`
    for good (and came back so after a restart, read from the ledger)."""
    s = Session(RULES, store)
    s.post({"type": "invoice_paid", "id": "due", "at": at(41)})
    assert "winback" in [a.rule for a in s.tick(at(131)).committed]  # no handlers: the task waits for m1
    s.post({"type": "fact", "entity": "managers", "at": at(131.5),
            "row": {"id": "m1", "name": "Anna", "supervisor_id": "boss", "active": False}})  # fmt: skip
    s.tick(at(132))  # the waiting task is cancelled (manager_left) ...
    (again,) = [a for a in s.tick(at(133)).committed if a.rule == "winback"]  # ... and decided again for boss
    assert (again.key, again.assignee_id) == ("winback:c1:2026-02-10#2:create_task", "boss")
    if restart:
        s = Session(RULES, store)  # reads its saved processes, and what the ledger adds to them
    assert s.process_states("c1") == {"winback:c1:2026-02-10:winback": ("winback~winback", "reason_pending")}
    r = s.post({"type": "outcome", "action_id": again.id, "outcome": {"churn_reason": "survey_needed"},
                "at": at(134)})  # fmt: skip
    assert [a.key for a in r.committed] == ["winback:c1:2026-02-10~survey_needed:create_task"]
    assert s.process_states("c1") == {}
    assert Session(RULES, store).process_states("c1") == {}  # and so after a restart


def test_a_win_back_saved_under_its_task_decided_again_is_its_episodes_process(store: Store) -> None:
    """Found in a review: sessions saved by the code before the fix above kept the `#2` process, which no trigger
    moves any more, `reason_pending` for good."""
    Session(RULES, store).tick(at(131))  # the win-back's reason task, and its process saved
    store.set_cursor("reactive:client:c1", json.dumps({
        "winback:c1:2026-02-10#2:winback": ["winback~winback", "reason_pending"],
        "winback:c1:2026-02-10:winback": ["winback~winback", "reason_pending"]}))  # fmt: skip

    def winbacks() -> dict[str, tuple[str, str]]:
        return {k: v for k, v in Session(RULES, store).process_states("c1").items() if k.startswith("winback")}

    assert winbacks() == {"winback:c1:2026-02-10:winback": ("winback~winback", "reason_pending")}
    store.set_cursor("reactive:client:c1", json.dumps({
        "winback:c1:2026-02-10#2:winback": ["winback~winback", "next_survey_needed"]}))  # the old one alone
    # no answer in the ledger: the ledger's view of the episode's process, not the saved `#2` state
    assert winbacks() == {"winback:c1:2026-02-10:winback": ("winback~winback", "reason_pending")}
    # answered and acted on (the old code took the answer on the `#2` process, and the first one was left waiting)
    engine = retainer.Engine(retainer.load_rules(RULES), store)
    (task,) = [e for e in store.ledger(rule="winback")]
    engine.record_outcome(task.id, {"churn_reason": "survey_needed"})
    engine.run(at(132))
    assert [e.key for e in store.ledger(rule="winback")][-1] == "winback:c1:2026-02-10~survey_needed:create_task"
    store.set_cursor("reactive:client:c1", json.dumps({
        "winback:c1:2026-02-10:winback": ["winback~winback", "reason_pending"]}))  # fmt: skip
    assert winbacks() == {}


def test_an_outcome_posted_again_later_does_not_reopen_a_finished_win_back(store: Store) -> None:
    """Found in review: the task's outcome sent again with a later time (a note added to it) took the finished
    win-back back to `next_survey_needed`, where it stayed: its next step was committed already."""
    s = Session(RULES, store)
    s.post({"type": "invoice_paid", "id": "due", "at": at(41)})
    (task,) = [a for a in s.tick(at(131)).committed if a.rule == "winback"]
    outcome = {"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": "survey_needed"}}
    assert s.post({**outcome, "at": at(132)}).committed
    assert s.process_states("c1") == {}
    again = s.post({**outcome, "at": at(133)})
    assert again.transitions == [] and again.committed == []
    assert s.process_states("c1") == {}


def test_only_a_call_made_after_the_offer_and_not_after_now_presents_it(store: Store) -> None:
    """Found in review: a call logged late that happened before the offer existed, or an inbound meeting logged
    with its planned time, presented the offer, and the client's real next call got no prompt."""
    s, _offer = _offer_waiting(store, clock=lambda: at(140))  # the offer was made on day 132
    for when in (at(131), at(150)):
        r = s.post({"type": "touch", "id": f"t{when.day}", "client_id": "c1", "at": when, "direction": "inbound"})
        assert not r.committed and r.transitions == []
    r = s.post({"type": "touch", "id": "t-real", "client_id": "c1", "at": at(139), "direction": "inbound"})
    assert [a.type for a in r.committed] == ["notify_manager"]


def test_a_call_after_the_offer_was_committed_presents_it_even_before_the_offers_as_of() -> None:
    """An offer decided as of the end of a day (a tick at night for that day, a post with a later as_of) exists
    from its commit: a call between the two is the call it waits for."""
    store = make_store("memory", Path("."))
    seed(store)
    now = [at(132.1)]
    s = Session(RULES, store, clock=lambda: now[0])
    s.post({"type": "invoice_paid", "id": "due", "at": at(41)})
    (task,) = [a for a in s.tick(at(131)).committed if a.rule == "winback"]
    r = s.post({"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": "price"}, "at": at(132)},
               as_of=at(132.9))  # committed at 132.1, decided as of 132.9
    assert [a.type for a in r.committed] == ["propose_offer"]
    now[0] = at(132.5)
    call = s.post({"type": "touch", "id": "t-in", "client_id": "c1", "at": at(132.3), "direction": "inbound"})
    assert [a.type for a in call.committed] == ["notify_manager"]


def test_a_process_started_by_a_nightly_run_is_adopted(store: Store) -> None:
    store.upsert(invoices=[{"id": "due", "client_id": "c1", "issued_at": at(40), "due_at": at(50), "amount": "500",
                            "paid_at": at(41)}])
    report = retainer.Engine(retainer.load_rules(RULES), store).run(at(131))
    (task,) = [a for a in report.committed if a.rule == "winback"]
    s = Session(RULES, store)
    assert s.process_states("c1") == {"winback:c1:2026-02-10:winback": ("winback~winback", "reason_pending")}
    r = s.post({"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": "survey_needed"}, "at": at(132)})
    assert [a.key for a in r.committed] == ["winback:c1:2026-02-10~survey_needed:create_task"]


def test_a_reason_without_a_next_step_closes_the_process(store: Store) -> None:
    store.upsert(invoices=[{"id": "due", "client_id": "c1", "issued_at": at(40), "due_at": at(50), "amount": "500",
                            "paid_at": at(41)}])
    s = Session(RULES, store)
    (task,) = [a for a in s.tick(at(131)).committed if a.rule == "winback"]
    r = s.post({"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": "other"}, "at": at(132)})
    assert not r.committed and [t.to_state for t in r.transitions] == ["closed"]
    assert s.process_states("c1") == {}


# ---------------------------------------------------------------- durable-rules hygiene


def test_every_message_to_durable_rules_has_an_explicit_unique_id(store: Store) -> None:
    s = Session(RULES, store)
    sent: list[dict[str, Any]] = []
    real = s._host.post

    def spy(name: str, message: dict[str, Any], complete: Any = None) -> Any:
        sent.append(dict(message))
        return real(name, message, complete)

    s._host.post = spy  # type: ignore[method-assign]
    s.tick(at(53))
    s.tick(at(60))
    s.post({"type": "invoice_paid", "id": "due", "at": at(61)})
    # an instance is loaded in its saved state (resume), takes its trigger and is deleted again
    assert [m["trigger"] for m in sent] == [
        "committed:+3d", "resume:step_3d", "committed:+10d", "resume:step_10d", "paid"]
    assert all(m.get("id") and m.get("sid") for m in sent)
    assert len({m["id"] for m in sent}) == len(sent)
    for m in sent:  # durable-rules holds no instance between events
        with pytest.raises(Exception, match="error code"):
            s._host.get_state("debtor~dunning", m["sid"])


def test_an_exception_inside_a_durable_rules_action_reaches_the_caller(store: Store) -> None:
    s = Session(RULES, store)

    class Boom(list):  # type: ignore[type-arg]
        def append(self, item: Any) -> None:
            raise ZeroDivisionError("inside a durable-rules action")

    s._fired = Boom()
    with pytest.raises(ZeroDivisionError, match="inside a durable-rules action"):
        s.tick(at(53))
    # nothing half-done is kept in the session: its view is the ledger's, where the step is committed
    assert s.process_states("c1") == {"debtor:c1:due:dunning": ("debtor~dunning", "step_3d")}
    s._fired = []
    r = s.tick(at(54))  # the step is committed already; the next step moves the rebuilt instance
    assert r.committed == []
    r = s.tick(at(60))
    assert [(t.from_state, t.to_state) for t in r.transitions] == [("step_3d", "step_10d")]


def test_an_exception_durable_rules_records_in_its_state_is_raised(store: Store) -> None:
    s = Session(RULES, store)
    s._host.post = lambda *a, **k: {"sid": "x", "exception": "exception caught boom"}  # type: ignore[method-assign]
    with pytest.raises(ReactiveError, match="exception caught boom"):
        s.tick(at(53))


def test_a_session_keeps_more_processes_open_than_durable_rules_holds_and_a_restart_resumes_them(
    tmp_path: Path,
) -> None:
    """durable-rules holds at most 1,024 instances per ruleset: a tick over 1,100 open ladders raised a raw
    MemoryError after committing and delivering, every night, and saved no process state (then 1,024)."""
    rules = retainer.load_rules(DEBTOR_FILE)
    n = 1100
    store = make_store("sqlite", tmp_path, rules.timezone)
    _debtors(store, n)
    s = Session(rules, store)
    assert len(s.tick("2026-02-20").committed) == n
    saved = [json.loads(store.get_cursor(f"{CURSOR}c{i}") or "{}") for i in range(1, n + 1)]
    assert saved == [{f"debtor:c{i}:i{i}:dunning": ["debtor~dunning", "step_3d"]} for i in range(1, n + 1)]
    store.close()
    again = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}", timezone=rules.timezone)  # a restart
    s2 = Session(rules, again)
    r = s2.tick("2026-02-26")
    assert len(r.committed) == n
    assert [(t.from_state, t.to_state) for t in r.transitions] == [("step_3d", "step_10d")] * n
    paid = s2.post({"type": "invoice_paid", "id": f"i{n}", "at": "2026-02-27T09:00"})
    assert [(t.from_state, t.to_state) for t in paid.transitions] == [("step_10d", "paid")]
    assert s2.process_states(f"c{n}") == {} and s2.process_states("c1") == {
        "debtor:c1:i1:dunning": ("debtor~dunning", "step_10d")}
    again.close()


def test_a_saved_state_the_rule_file_no_longer_has_is_read_from_the_ledger(store: Store) -> None:
    """A step removed from the ladder since the state was saved: it cannot be loaded into durable-rules, so
    every event for the client failed; the ledger says where the process stands instead."""
    Session(RULES, store).tick(at(53))
    store.set_cursor(CURSOR + "c1", json.dumps({"debtor:c1:due:dunning": ["debtor~dunning", "step_5d"]}))
    s = Session(RULES, store)
    assert s.process_states("c1") == {"debtor:c1:due:dunning": ("debtor~dunning", "step_3d")}
    assert [(t.from_state, t.to_state) for t in s.tick(at(60)).transitions] == [("step_3d", "step_10d")]


def test_a_durable_rules_failure_is_a_reactive_error_and_the_states_moved_before_it_are_saved() -> None:
    rules = retainer.load_rules(DEBTOR_FILE)
    with fresh() as store:
        _debtors(store, 3)
        s = Session(rules, store)
        real, calls = s._host.post, []

        def full(name: str, message: dict[str, Any], complete: Any = None) -> Any:
            calls.append(message["sid"])
            if len(calls) == 2:
                raise MemoryError  # what durable-rules' C extension raises when a ruleset is full
            return real(name, message, complete)

        s._host.post = full  # type: ignore[method-assign]
        with pytest.raises(ReactiveError, match=r"durable-rules failed in debtor~dunning for debtor:c2:i2:dunning "
                                                r"\(committed:\+3d\): MemoryError"):
            s.tick("2026-02-20")
        assert len(store.ledger()) == 3  # committed before the processes moved
        assert store.get_cursor(CURSOR + "c1") and store.get_cursor(CURSOR + "c2") is None
        # the next event builds durable-rules afresh; the ledger tells the session where c2 and c3 stand
        r = s.tick("2026-02-26")
        assert [(t.sid, t.from_state, t.to_state) for t in r.transitions] == [
            (f"debtor:c{i}:i{i}:dunning", "step_3d", "step_10d") for i in (1, 2, 3)]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "visit"}, "a type in"),
        ({"type": "touch", "id": "t", "client_id": "c1"}, "no `at`"),
        ({"type": "invoice_paid", "id": "nope", "at": "2026-03-01"}, "no invoice 'nope'"),
        ({"type": "outcome", "action_id": "x", "at": "2026-03-01"}, "needs `action_id` and an `outcome`"),
        ({"type": "touch", "id": "t", "client_id": "c1", "at": "02.03.2026"},
         r"an event's `at`: invalid time '02.03.2026': use a date \(2026-03-01\)"),
    ],
)
def test_bad_events_are_refused(store: Store, event: dict[str, Any], message: str) -> None:
    with pytest.raises(ReactiveError, match=message):
        Session(RULES, store).post(event)


def test_the_session_caches_match_the_store(store: Store) -> None:
    store.add(clients=[{"id": f"x{i}", "manager_id": "m1" if i % 2 else "boss", "created_at": at(i),
                        "status": "archived" if i % 5 == 0 else "active"} for i in range(1, 30)]
              + [{"id": "undated", "manager_id": "boss"}])
    s = Session(RULES, store)
    for d in (-1, 0, 3, 10, 29, 100):
        assert s._cache.manager_loads(at(d)) == store.manager_loads(at(d))
    assert s._cache.managers() == store.managers()


def test_a_tick_is_the_nightly_run(tmp_path: Path) -> None:
    with fresh() as a, fresh() as b:
        for st_ in (a, b):
            seed(st_)
            st_.add(clients=[{"id": f"x{i}", "manager_id": "m1", "created_at": at(0)} for i in range(5)])
        s = Session(RULES, a)
        e = retainer.Engine(retainer.load_rules(RULES), b)
        for d in (31, 53, 60, 131):
            s.tick(at(d))
            e.run(at(d))
            assert keys(a) == keys(b)


# ---------------------------------------------------------------- the property: reactive == batch


@st.composite
def event_sequences(draw: st.DrawFn) -> list[tuple[float, str, Any]]:
    """(day, kind, detail) in time order, over the seeded client's life (days 41..260)."""
    n = draw(st.integers(1, 14))
    days = sorted(draw(st.lists(st.floats(41, 260, allow_nan=False), min_size=n, max_size=n, unique=True)))
    out = []
    for d in days:
        kind = draw(st.sampled_from(["touch_in", "touch_out", "pay", "invoice", "outcome", "task_done", "tick"]))
        reasons = ["price", "survey_needed", "other", "bad_product"]
        detail = draw(st.sampled_from(reasons)) if kind == "outcome" else None
        out.append((round(d, 3), kind, detail))
    return out


def _same_fact(kind: str, day: float, n: int, paid: set[str], invoices: list[str]) -> dict[str, Any] | None:
    when = at(day)
    if kind in ("touch_in", "touch_out"):
        return {"type": "touch", "id": f"t{n}", "client_id": "c1", "at": when,
                "direction": "inbound" if kind == "touch_in" else "outbound"}
    if kind == "pay":
        open_ = [i for i in invoices if i not in paid]
        if not open_:
            return None
        paid.add(open_[0])
        return {"type": "invoice_paid", "id": open_[0], "at": when}
    if kind == "invoice":
        invoices.append(f"n{n}")
        return {"type": "fact", "entity": "invoices", "at": when,
                "row": {"id": f"n{n}", "client_id": "c1", "issued_at": when, "due_at": when + timedelta(days=7),
                        "amount": "800"}}
    if kind == "task_done":
        if "crm1" in paid:
            return None
        paid.add("crm1")
        return {"type": "task_done", "id": "crm1", "at": when}
    return {"type": "tick", "at": when}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_sequences())
def test_reactive_session_and_batch_engine_commit_the_same_keys(events: list[tuple[float, str, Any]]) -> None:
    rules = retainer.load_rules(RULES)
    with fresh("sqlite") as reactive_store, fresh() as batch_store:
        seed(reactive_store)
        seed(batch_store)
        session = Session(rules, reactive_store)
        engine = retainer.Engine(rules, batch_store)
        paid: set[str] = set()
        invoices = ["due"]
        for n, (day, kind, detail) in enumerate(events):
            when = at(day)
            if kind == "outcome":
                task = next((e for e in reactive_store.ledger(rule="winback", types=["create_task"])
                             if "~" not in e.key and not e.outcome), None)
                if task is None:
                    continue
                session.post({"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": detail},
                              "at": when})
                engine.record_outcome(task.id, {"churn_reason": detail}, clock=lambda w=when: w)
                engine.run(when)
            else:
                ev = _same_fact(kind, day, n, paid, invoices)
                if ev is None:
                    continue
                session.post(ev)
                if ev["type"] == "touch":
                    batch_store.add(touches=[{k: v for k, v in ev.items() if k != "type"}])
                elif ev["type"] == "invoice_paid":
                    inv = batch_store.get("invoices", ev["id"])
                    batch_store.upsert(invoices=[{**inv.model_dump(), "paid_at": when}])  # type: ignore[union-attr]
                elif ev["type"] == "fact":
                    batch_store.upsert(invoices=[ev["row"]])
                elif ev["type"] == "task_done":
                    task = batch_store.get("tasks", "crm1")
                    batch_store.upsert(tasks=[{**task.model_dump(), "done_at": when, "status": "done"}])  # type: ignore[union-attr]
                engine.run(when)
            reactive = [k for k in keys(reactive_store) if "~inbound:" not in k]
            assert reactive == keys(batch_store), f"after event {n} ({kind} on day {day})"
        # the extra keys are exactly the inbound contacts that presented a waiting offer
        for e in reactive_store.ledger():
            if "~inbound:" in e.key:
                offer_key = e.action.evidence["offer_key"]
                assert offer_key in keys(batch_store)
                touch = reactive_store.get("touches", e.action.evidence["touch_id"])
                assert touch is not None and touch.direction == "inbound"  # type: ignore[attr-defined]


def test_the_session_moves_sqlite_checkpoints_off_the_event_path(store: Store) -> None:
    """A commit that takes the write-ahead log past 1,000 pages copies it into the file (10-15 ms, one
    event in a hundred at 100k clients): the session has a thread do that instead, and stops it on close."""
    autocheckpoint = lambda: store.db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]  # type: ignore[attr-defined]  # noqa: E731
    with Session(RULES, store) as s:
        assert store._checkpointer is not None and autocheckpoint() == 0  # type: ignore[attr-defined]
        s.tick(at(53))
    assert store._checkpointer is None and autocheckpoint() == 1000  # type: ignore[attr-defined]
    assert store.checkpoint_in_background()  # type: ignore[attr-defined]
    Session(RULES, store).close()  # did not start it: leaves it running
    assert store._checkpointer is not None  # type: ignore[attr-defined]


def test_an_offer_a_nightly_run_committed_after_the_session_met_the_client_is_presented(tmp_path: Path) -> None:
    """The session read a client's processes from the ledger only when it first met the client: a
    win-back offer the nightly run committed later (after the manager recorded the reason) waited for a
    call the session never reported."""
    rules = retainer.load_rules(Path(__file__).parents[1] / "examples" / "rules" / "winback.yaml")
    store = make_store("sqlite", tmp_path)
    store.add(managers=[{"id": "boss"}, {"id": "m1", "supervisor_id": "boss"}],
              clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"}],
              invoices=[{"id": f"c1-{k}", "client_id": "c1", "issued_at": f"2025-{m}-01", "amount": 40000,
                         "paid_at": f"2025-{m}-01"} for k, m in ((1, 10), (2, 11), (3, 12))])
    engine = retainer.Engine(rules, store)
    task = next(a for a in engine.run("2026-03-01").committed if a.type == "create_task")
    session = Session(rules, store)
    session.post({"type": "touch", "id": "t1", "client_id": "c1", "at": "2026-03-02T10:00", "direction": "outbound"})
    engine.record_outcome(task.id, {"churn_reason": "price"})
    offer = [a for a in engine.run("2026-03-03").committed if a.type == "propose_offer"]
    assert len(offer) == 1 and offer[0].deliver == "next_inbound"  # type: ignore[attr-defined]
    call = session.post({"type": "touch", "id": "t2", "client_id": "c1", "at": "2026-03-04T11:00",
                         "direction": "inbound"})
    assert [a.type for a in call.committed] == ["notify_manager"]
    assert [(t.from_state, t.to_state) for t in call.transitions] == [("waiting", "presented")]


def test_a_call_about_an_offer_is_told_to_the_manager_the_client_was_given_to(tmp_path: Path) -> None:
    """Released to m2 in the night, the client calls before the CRM's export shows the move: the news
    goes to m2 (as the night's task did), not to m1 who lost the client."""
    rules = retainer.load_rules({"version": 1, "rules": [
        {"id": "forgotten", "kind": "forgotten", "after": "60d"},
        {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "14d"},
        {"id": "keep", "category": "retention", "when": {"days_since_activity": {"gte": 60}}, "episode": "client_id",
         "then": [{"propose_offer": {"offer": "loyalty", "deliver": "next_inbound"}}]}]})  # fmt: skip
    store = make_store("sqlite", tmp_path)
    store.add(managers=[{"id": "m1"}, {"id": "m2"}], clients=[{"id": "c1", "manager_id": "m1"}],
              touches=[{"id": "t0", "client_id": "c1", "at": "2025-12-01"}])
    session = Session(rules, store, handlers=RecordingHandler())
    night = session.tick("2026-03-01")
    assert {a.type: getattr(a, "to_manager_id", None) for a in night.committed}["reassign"] == "m2"
    call = session.post({"type": "touch", "id": "t1", "client_id": "c1", "at": "2026-03-02T10:00",
                         "direction": "inbound"})
    assert [(a.type, a.to_manager_id) for a in call.committed] == [("notify_manager", "m2")]  # type: ignore[attr-defined]


# ---------------------------------------------------------------- delivery from a session (a vendor's review)

DEBTOR_FILE = Path(__file__).resolve().parents[1] / "examples" / "rules" / "debtor.yaml"


def _debtors(store: Store, n: int) -> None:
    store.add(managers=[{"id": "m1", "name": "Anna"}],
              clients=[{"id": f"c{i}", "manager_id": "m1", "name": f"Client {i}"} for i in range(1, n + 1)],
              invoices=[{"id": f"i{i}", "client_id": f"c{i}", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                         "amount": "1200"} for i in range(1, n + 1)])  # fmt: skip


def test_a_tick_delivers_what_earlier_ticks_left_when_the_crm_did_not_answer() -> None:
    """One 503 during a tick: the session gives up on the handler for that tick (one attempt per event).
    The next tick delivers what is still pending or failed, as the nightly run does."""
    rules = retainer.load_rules(DEBTOR_FILE)
    with fresh() as store:
        _debtors(store, 3)
        calls: list[str] = []

        def crm(action: Any) -> None:
            calls.append(action.key)
            if len(calls) == 1:
                raise ConnectionError("503 Service Unavailable")

        s = Session(rules, store, crm, clock=lambda: datetime(2026, 2, 21, tzinfo=UTC))
        first = s.tick("2026-02-20")
        assert len(first.committed) == 3
        assert {e.status for e in store.ledger()} != {"done"}
        second = s.tick("2026-02-21")
        assert not second.committed and second.dispatch is not None
        assert {e.key: e.status for e in store.ledger()} == {x.key: "done" for x in first.committed}


def test_a_late_event_does_not_send_a_reminder_for_an_invoice_paid_since() -> None:
    """A call logged on Feb 20 that happened on Feb 18 at 09:00, before the payment at noon the session
    already took in: planned as of 09:00 the invoice is unpaid; the reminder is committed, then cancelled
    before it goes out, as Engine.run does for a past night."""
    rules = retainer.load_rules(DEBTOR_FILE)
    with fresh() as store:
        _debtors(store, 1)
        sent: list[str] = []
        s = Session(rules, store, lambda a: sent.append(a.key), clock=lambda: datetime(2026, 2, 20, tzinfo=UTC))
        s.tick("2026-02-17")
        s.post({"type": "invoice_paid", "id": "i1", "at": "2026-02-18T12:00"})
        r = s.post({"type": "touch", "id": "t1", "client_id": "c1", "at": "2026-02-18T09:00", "kind": "call"})
        assert [a.rule for a in r.committed] == ["debtor"]
        assert sent == []
        assert r.dispatch is not None and list(r.dispatch.cancelled) == [r.committed[0].id]


@pytest.mark.parametrize("policy", ["do_not_contact", "no_marketing"])
def test_no_prompt_about_a_waiting_offer_for_a_client_who_asked_not_to_be_contacted(policy: str) -> None:
    """no_marketing: found in an over-selling review, the manager was prompted to present the win-back discount
    to a client who had opted out of marketing since the offer was planned."""
    with fresh() as store:
        seed(store)
        rec = RecordingHandler()
        s = Session(RULES, store, rec)
        s.tick(at(160))
        (task,) = [x for x in store.ledger() if x.rule == "winback"]
        s.post({"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": "price"}, "at": at(161)})
        assert [x.type for x in store.ledger() if x.rule == "winback"].count("propose_offer") == 1
        client = store.get("clients", "c1")
        assert client is not None
        s.post({"type": "fact", "entity": "clients", "at": at(162),
                "row": {**client.model_dump(), "contact_policy": policy}})  # fmt: skip
        r = s.post({"type": "touch", "id": "in1", "client_id": "c1", "at": at(163), "kind": "call",
                    "direction": "inbound"})  # fmt: skip
        assert r.committed == []
        assert not [x for x in store.ledger() if x.type == "notify_manager"]


def test_a_session_counts_its_own_releases_against_capacity() -> None:
    """Three forgotten clients of m1 get an outcome event each: every event plans its client alone. m2 and m3
    have room for one client each; the third client cannot be released, as one nightly plan decides."""
    release = {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "14d",
               "then": [{"reassign": {"strategy": "least_loaded"}}]}
    rules = {"version": 1, "rules": [{"id": "forgotten", "kind": "forgotten", "after": "30d"}, release]}
    with fresh() as store:
        store.add(managers=[{"id": "boss"}, {"id": "m1", "supervisor_id": "boss"},
                            {"id": "m2", "supervisor_id": "boss", "max_clients": 1},
                            {"id": "m3", "supervisor_id": "boss", "max_clients": 1}],
                  clients=[{"id": f"c{i}", "manager_id": "m1", "created_at": "2025-01-01"} for i in (1, 2, 3)],
                  touches=[{"id": f"t{i}", "client_id": f"c{i}", "at": "2025-11-01T10:00"} for i in (1, 2, 3)])
        s = Session(rules, store)
        tasks = s.tick("2025-12-05").committed  # forgotten since Dec 1; releases from Dec 15
        assert [t.type for t in tasks] == ["create_task"] * 3
        for task in tasks:
            s.post({"type": "outcome", "action_id": task.id, "outcome": {"result": "no answer"},
                    "at": "2026-03-01T10:00"})  # fmt: skip
        given = sorted(e.payload_fields["to_manager_id"] for e in store.ledger(types=["reassign"]))
        assert given == ["m2", "m3"]


@pytest.mark.parametrize("through_session", [True, False])
def test_a_payment_below_min_amount_stops_the_ladder_its_committed_step_included(through_session: bool) -> None:
    """debtor.yaml: "bringing what is left below 100 stops the ladder at once". 1150 of 1200 paid: the
    step committed before the payment is cancelled by the session, and a run that delivers a step
    committed without a session leaves it out too."""
    rules = retainer.load_rules(DEBTOR_FILE)
    with fresh() as store:
        _debtors(store, 1)
        engine = retainer.Engine(rules, store)
        if through_session:
            s = Session(rules, store)
            (step,) = s.tick("2026-02-18").committed
            r = s.post({"type": "invoice_paid", "id": "i1", "at": "2026-02-19T09:00", "amount": "1150"})
            assert r.cancelled == [step.id] and s.process_states("c1") == {}
        else:
            (step,) = engine.run("2026-02-18").committed
            paid = {"paid_amount": "1150", "paid_at": "2026-02-19T09:00:00Z"}
            store.upsert(invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                                    "amount": "1200", **paid}])  # fmt: skip
        sent: list[str] = []
        report = engine.run("2026-02-19", handlers=lambda a: sent.append(a.key))
        assert sent == []
        if not through_session:
            assert report.dispatch is not None
            assert "below the rule's min_amount 100" in report.dispatch.cancelled[step.id]


def test_threads_sharing_a_session_lose_no_process_state(tmp_path: Path) -> None:
    """Two worker threads post payments to one session over SQLite: every ladder is closed, and a restarted
    session reads them closed (the threads raced on the states to save, and some were never saved)."""
    import threading

    rules = retainer.load_rules(DEBTOR_FILE)
    store = make_store("sqlite", tmp_path, rules.timezone)
    n = 200
    store.add(managers=[{"id": "m1"}], clients=[{"id": f"c{i}", "manager_id": "m1"} for i in range(n)],
              invoices=[{"id": f"i{i}", "client_id": f"c{i}", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                         "amount": "1200"} for i in range(n)])  # fmt: skip
    s = Session(rules, store)
    s.tick("2026-02-26")

    def worker(k: int) -> None:
        for i in range(k, n, 2):
            s.post({"type": "invoice_paid", "id": f"i{i}", "at": "2026-02-27T10:00"})

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    again = Session(rules, store)
    assert [i for i in range(n) if again.process_states(f"c{i}")] == []
    store.close()


def test_an_outcome_delivered_twice_is_taken_in_once() -> None:
    """An at-least-once queue redelivers an outcome event: the second copy brought the finished win-back
    back as an open process that never moved again, in every later session."""
    with fresh() as store:
        seed(store)
        s = Session(RULES, store)
        s.tick(at(160))
        (task,) = [x for x in store.ledger() if x.rule == "winback"]
        ev = {"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": "survey_needed"}, "at": at(161)}
        first = s.post(ev)
        assert [a.type for a in first.committed] == ["create_task"]
        states = s.process_states("c1")
        again = s.post(ev)
        assert again.committed == [] and again.transitions == []
        assert s.process_states("c1") == states == Session(RULES, store).process_states("c1")


def test_a_payment_below_min_amount_cancels_a_replayed_step() -> None:
    """Engine.replay looks at a dead step again as a run does: paid down below min_amount, it is cancelled."""
    rules = retainer.load_rules(DEBTOR_FILE)
    with fresh() as store:
        _debtors(store, 1)
        engine = retainer.Engine(rules, store)

        def down(a: Any) -> None:
            raise ConnectionError("503")

        (step,) = engine.run("2026-02-18", handlers=down, retry=Retry(max_attempts=1)).committed
        assert store.ledger(ids=[step.id])[0].status == "dead"
        paid = {"paid_amount": "1150", "paid_at": "2026-02-19T09:00:00Z"}
        store.upsert(invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                                "amount": "1200", **paid}])  # fmt: skip
        sent: list[str] = []
        _moved, report = engine.replay([step.id], handlers=lambda a: sent.append(a.key))
        assert sent == [] and report is not None and step.id in report.cancelled


@pytest.mark.parametrize("in_worker", [False, True])
def test_a_session_sees_a_manager_deactivated_by_another_process(tmp_path: Path, in_worker: bool) -> None:
    """The nightly import (another connection) sets m2 inactive; the session, which never ticked since,
    must not give a client to m2. SQLite's data_version counts per connection, and each thread has its
    own: a worker thread's first look must read the managers, not compare with the main thread's count."""
    import threading

    release = {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "14d",
               "then": [{"reassign": {}}]}
    rules = {"version": 1, "rules": [{"id": "forgotten", "kind": "forgotten", "after": "30d"}, release]}
    store = make_store("sqlite", tmp_path)
    store.add(managers=[{"id": "m1"}, {"id": "m2"}, {"id": "m3"}],
              clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"},
                       {"id": "c3", "manager_id": "m3", "created_at": "2025-01-01"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2025-11-01T10:00"},
                       {"id": "t3", "client_id": "c3", "at": "2025-12-01T10:00"}])  # fmt: skip
    s = Session(rules, store)
    (task,) = s.tick("2025-12-05").committed
    other = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}", create=False)
    other.upsert(managers=[{"id": "m2", "active": False}])
    other.close()
    got: list[Any] = []

    def decide() -> None:
        r = s.post({"type": "outcome", "action_id": task.id, "outcome": {"result": "no answer"}, "at": "2026-03-01"})
        got.extend(a.to_manager_id for a in r.committed if a.type == "reassign")

    if in_worker:
        t = threading.Thread(target=decide)
        t.start()
        t.join()
    else:
        decide()
    assert got == ["m3"]
    store.close()


def test_an_outcome_recorded_through_the_engine_then_posted_still_moves_the_process() -> None:
    """Only the same event again (recorded as of its own `at`) is a repeat: a host that records the outcome
    with Engine.record_outcome and also posts it to the session gets the next step."""
    states = []
    for through_engine in (False, True):
        with fresh() as store:
            seed(store)
            s = Session(RULES, store)
            s.tick(at(160))
            (task,) = [x for x in store.ledger() if x.rule == "winback"]
            if through_engine:
                retainer.Engine(RULES, store).record_outcome(task.id, {"churn_reason": "survey_needed"})
            r = s.post({"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": "survey_needed"},
                        "at": at(161)})  # fmt: skip
            assert [a.type for a in r.committed] == ["create_task"]
            states.append((s.process_states("c1"), [(t.from_state, t.to_state) for t in r.transitions]))
    assert states[0] == states[1] and states[0][1]


@pytest.mark.parametrize("bought_again", [False, True])
def test_no_win_back_prompt_for_a_client_who_bought_again(bought_again: bool) -> None:
    """The win-back stops as soon as the client buys again: its discount, waiting for the client's call,
    is not offered to a client who came back on its own."""
    with fresh() as store:
        seed(store)
        s = Session(RULES, store, RecordingHandler())
        s.tick(at(160))
        (task,) = [x for x in store.ledger() if x.rule == "winback"]
        s.post({"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": "price"}, "at": at(161)})
        if bought_again:
            s.post({"type": "fact", "entity": "invoices", "at": at(162),
                    "row": {"id": "back", "client_id": "c1", "issued_at": at(162), "amount": "5000"}})  # fmt: skip
        r = s.post({"type": "touch", "id": "in1", "client_id": "c1", "at": at(163), "kind": "call",
                    "direction": "inbound"})  # fmt: skip
        prompts = [a for a in r.committed if a.type == "notify_manager"]
        assert len(prompts) == (0 if bought_again else 1)


# ---------------------------------------------------------------- instants later than the clock (a vendor's review)

NOW = datetime(2026, 2, 19, 9, 0, tzinfo=UTC)  # the invoices of _debtors fell due on Feb 15: 4 days overdue


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.tick("2062-02-19"),  # 2062 for 2026: a typo in the year
        lambda s: s.post({"type": "tick", "at": "2026-02-21"}),
        lambda s: s.post({"type": "touch", "id": "t1", "client_id": "c1", "at": "2026-02-19"}, as_of="2026-03-30"),
    ],
)
def test_a_session_refuses_to_decide_after_tomorrow_as_engine_run_does(call: Any) -> None:
    """A tick as of 2062 committed and delivered, right now, the actions due then, and their keys were spent:
    the real ones were suppressed as duplicates when their day came."""
    rules = retainer.load_rules(DEBTOR_FILE)
    with fresh() as store:
        _debtors(store, 1)
        s = Session(rules, store, RecordingHandler(), clock=lambda: NOW)
        with pytest.raises(retainer.ArgumentError, match=r"is after tomorrow \(2026-02-20, by the clock\): a (tick|"
                                                         r"post with as_of) commits and delivers"):
            call(s)
        assert store.ledger() == [] and store.runs() == []
        with pytest.raises(retainer.ArgumentError, match="a run commits"):  # one check, the run's
            retainer.Engine(rules, store).run("2062-02-19", clock=lambda: NOW)
        assert [a.key for a in s.tick("2026-02-20").committed] == ["debtor:c1:i1+3d:notify_client"]  # tomorrow


def test_an_event_dated_later_than_now_is_written_and_decided_as_of_now() -> None:
    """A CRM logs a meeting with its planned time, 10 days ahead. Decided as of that instant, the +10d SMS
    went out now, 6 days early, and the +3d e-mail due today was skipped as superseded."""
    rules = retainer.load_rules(DEBTOR_FILE)
    with retainer.open_store("memory://", timezone=rules.timezone) as store:
        _debtors(store, 1)
        rec = RecordingHandler()
        s = Session(rules, store, rec, clock=lambda: NOW)
        r = s.post({"type": "touch", "id": "meet", "client_id": "c1", "at": "2026-03-01T10:00", "kind": "meeting"})
        assert r.as_of == NOW
        assert [a.key for a in rec.actions] == ["debtor:c1:i1+3d:notify_client"]
        assert r.plan is not None and not r.plan.suppressed
        meeting = store.get("touches", "meet")
        assert meeting is not None
        assert meeting.at == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)  # type: ignore[attr-defined]
        # a payment dated later counts from its date: the ladder goes on until then
        r = s.post({"type": "invoice_paid", "id": "i1", "at": "2026-02-25T10:00"})
        assert r.transitions == []
        assert s.process_states("c1") == {"debtor:c1:i1:dunning": ("debtor~dunning", "step_3d")}
        invoice = store.get("invoices", "i1")
        assert invoice is not None
        assert invoice.paid_at == datetime(2026, 2, 25, 7, 0, tzinfo=UTC)  # type: ignore[attr-defined]


@pytest.mark.parametrize("day", ["2026-03-11", "20260311", "2026-W11-3"])
def test_an_event_dated_today_without_a_time_is_decided_with_its_fact(day: str) -> None:
    """A CRM exports a payment date, not a time. Posted at 10:00, `at: 2026-03-11` was stored at the day's end,
    taken for a future event and decided as of now, before the payment: the client who had just paid in full
    got the next reminder. So did the compact spelling `20260311`, which the store and as_of read as that day
    but the session took for an instant."""
    steps = [{"after": "3d", "notify_client": {"channel": "email", "template": "reminder"}},
             {"after": "10d", "notify_client": {"channel": "sms", "template": "final"}}]
    rules = retainer.load_rules({"version": 1, "rules": [{"id": "debtor", "kind": "debtor", "steps": steps}]})
    with retainer.open_store("memory://", timezone=rules.timezone) as store:
        store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
                  invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-03-01",
                             "amount": 900}])  # fmt: skip
        rec = RecordingHandler()
        s = Session(rules, store, rec, clock=lambda: datetime(2026, 3, 11, 10, 0, tzinfo=UTC))
        s.tick("2026-03-10T23:00")
        assert [a.key for a in rec.actions] == ["debtor:c1:i1+3d:notify_client"]
        r = s.post({"type": "invoice_paid", "id": "i1", "at": day})
        assert r.committed == [] and [a.key for a in rec.actions] == ["debtor:c1:i1+3d:notify_client"]
        assert [t.to_state for t in r.transitions] == ["paid"]


def test_a_payment_dated_by_day_is_seen_by_the_clients_next_event_that_day() -> None:
    """Found in review: the payment posted with a date only was written at the day's end (the store writes a date
    at its start); the client's call at 10:29 that day was decided as of 10:29, before it, and sent the next
    reminder to the client who had paid, reopening the ladder."""
    steps = [{"after": "3d", "notify_client": {"channel": "email", "template": "reminder"}},
             {"after": "10d", "notify_client": {"channel": "sms", "template": "final"}}]
    rules = retainer.load_rules({"version": 1, "timezone": "Europe/Moscow",
                                 "rules": [{"id": "debtor", "kind": "debtor", "steps": steps}]})  # fmt: skip
    with retainer.open_store("memory://", timezone=rules.timezone) as store:
        store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
                  invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-03-01",
                             "amount": 900}])  # fmt: skip
        rec = RecordingHandler()
        s = Session(rules, store, rec, clock=lambda: datetime.fromisoformat("2026-03-11T10:30:00+03:00"))
        s.tick("2026-03-10")
        assert [t.to_state for t in s.post({"type": "invoice_paid", "id": "i1", "at": "2026-03-11"}).transitions] == [
            "paid"]
        call = s.post({"type": "touch", "id": "t1", "client_id": "c1", "at": "2026-03-11T10:29", "kind": "call"})
        assert call.committed == [] and [a.key for a in rec.actions] == ["debtor:c1:i1+3d:notify_client"]
        assert s.process_states("c1") == {}
        assert store.get("invoices", "i1").paid_at == datetime.fromisoformat("2026-03-11T00:00:00+03:00")  # type: ignore[union-attr]


REMINDER_ONLY = retainer.load_rules({"version": 1, "rules": [{"id": "debtor", "kind": "debtor", "steps": [
    {"after": "3d", "notify_client": {"channel": "email", "template": "reminder"}}]}]})  # fmt: skip


def _owing(rules: retainer.RuleSet, due: str) -> Store:
    """A memory store with c1 owing invoice i1, 1,200 due on `due`."""
    store = retainer.open_store("memory://", timezone=rules.timezone)
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
              invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": due, "amount": 1200}])
    return store


def test_without_handlers_an_event_dated_before_a_payment_leaves_no_reminder_waiting() -> None:
    """Found in review: a session without handlers (the host pulls what waits in the ledger) took a call dated
    before a payment it already held; planned as of the call, the reminder for the paid invoice was committed
    and left `pending`, for the host to send. It is cancelled as a delivery would cancel it."""
    rules = REMINDER_ONLY
    with _owing(rules, "2026-02-15") as store:
        s = Session(rules, store, clock=lambda: datetime(2026, 2, 19, 12, 0, tzinfo=UTC))
        s.post({"type": "invoice_paid", "id": "i1", "at": "2026-02-18T10:00"})
        late = s.post({"type": "touch", "id": "t1", "client_id": "c1", "at": "2026-02-18T09:00", "kind": "call"})
        assert [a.key for a in late.committed] == ["debtor:c1:i1+3d:notify_client"]  # as of 09:00, before it
        assert late.dispatch is not None and list(late.dispatch.cancelled.values()) == ["paid"]
        assert store.ledger(status=["pending"]) == []


def test_a_win_back_stops_when_the_client_buys_again(tmp_path: Path) -> None:
    """Found in review: the client bought again while the win-back waited for its churn reason; the process
    stayed `reason_pending`, the reason recorded after moved it to `next_price`, and there it stayed through
    every tick and restart. winback.yaml: "the process stops as soon as the client buys again"."""
    rules = retainer.load_rules(Path(__file__).parents[1] / "examples" / "rules" / "winback.yaml")
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    store = retainer.open_store(url, timezone=rules.timezone)
    store.add(managers=[{"id": "m1", "supervisor_id": "m9"}, {"id": "m9"}], clients=[{"id": "c1", "manager_id": "m1"}],
              invoices=[{"id": f"i{n}", "client_id": "c1", "issued_at": d, "amount": "50000", "paid_at": d}
                        for n, d in enumerate(["2025-06-01", "2025-08-01", "2025-10-01"])])  # fmt: skip
    clock = lambda: datetime(2026, 3, 20, 9, 0, tzinfo=UTC)  # noqa: E731
    s = Session(rules, store, clock=clock)
    (task,) = [a for a in s.tick("2026-01-10").committed if a.type == "create_task"]
    s.post({"type": "fact", "entity": "invoices", "at": "2026-01-11T10:00",
            "row": {"id": "new1", "client_id": "c1", "issued_at": "2026-01-11T10:00", "amount": "1000"}})  # fmt: skip
    s.post({"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": "price"}, "at": "2026-01-12T10:00"})
    closed = s.tick("2026-02-01")
    assert [(t.to_state, t.trigger) for t in closed.transitions] == [("closed", "returned")]
    assert s.process_states("c1") == {} and not [e for e in store.ledger() if "~" in e.key]
    s.close()
    again = Session(rules, retainer.open_store(url, timezone=rules.timezone), clock=clock)  # a restart
    assert again.process_states("c1") == {} and again.tick("2026-03-01").transitions == []


def test_a_win_back_is_not_closed_by_an_invoice_issued_after_the_tick(tmp_path: Path) -> None:
    """Found in review: an invoice scheduled for next month (or later on the tick's own day) closed the win-back
    of a client the engine, as of the tick, still had churned."""
    rules = retainer.load_rules(Path(__file__).parents[1] / "examples" / "rules" / "winback.yaml")
    store = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}", timezone=rules.timezone)
    store.add(managers=[{"id": "m1", "supervisor_id": "m9"}, {"id": "m9"}], clients=[{"id": "c1", "manager_id": "m1"}],
              invoices=[{"id": f"i{n}", "client_id": "c1", "issued_at": d, "amount": "50000", "paid_at": d}
                        for n, d in enumerate(["2025-06-01", "2025-08-01", "2025-10-01"])])  # fmt: skip
    s = Session(rules, store, clock=lambda: datetime(2026, 3, 20, 9, 0, tzinfo=UTC))
    s.tick("2026-01-10")
    store.add(invoices=[{"id": "later", "client_id": "c1", "issued_at": "2026-04-01", "amount": "1000"}])
    tick = s.tick("2026-02-01")
    assert tick.transitions == [] and list(s.process_states("c1").values()) == [("winback~winback", "reason_pending")]
    assert tick.plan is not None and tick.plan.stats["rules"]["winback"]["matched"] == 1


def test_a_ladder_a_nightly_run_moved_on_is_shown_at_the_ledgers_step(tmp_path: Path) -> None:
    """Found in review: a session tick sent +3d; a nightly run beside it sent +10d and +20d; the session kept
    showing (and saving) `step_3d` for the client it knew."""
    steps = [{"after": "3d", "notify_client": {"channel": "email", "template": "reminder"}},
             {"after": "10d", "notify_client": {"channel": "sms", "template": "final"}},
             {"after": "20d", "create_task": {"title": "Call about the debt"}}]  # fmt: skip
    rules = retainer.load_rules({"version": 1, "rules": [{"id": "debtor", "kind": "debtor", "steps": steps}]})
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    store = retainer.open_store(url, timezone=rules.timezone)
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
              invoices=[{"id": "i7", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                         "amount": "1200"}])  # fmt: skip
    clock = lambda: datetime(2026, 3, 10, 9, 0, tzinfo=UTC)  # noqa: E731
    s = Session(rules, store, clock=clock)
    s.tick("2026-02-18")
    night = retainer.Engine(rules, retainer.open_store(url, timezone=rules.timezone))
    night.run("2026-02-25", clock=clock)
    night.run("2026-03-07", clock=clock)
    s.post({"type": "touch", "id": "t1", "client_id": "c1", "at": "2026-03-08T10:00", "kind": "call"})
    assert s.process_states("c1") == {"debtor:c1:i7:dunning": ("debtor~dunning", "step_20d")}
    s.close()
    restarted = Session(rules, retainer.open_store(url, timezone=rules.timezone), clock=clock)
    assert restarted.process_states("c1") == {"debtor:c1:i7:dunning": ("debtor~dunning", "step_20d")}


@pytest.mark.parametrize("full_first", [False, True])
def test_a_payment_dated_by_day_comes_after_that_days_timed_instalment(full_first: bool) -> None:
    """Found in review: written at the day's start, the full payment dated by day came before the 500 paid at
    10:00 that day, so either order of arrival left 500 of 1,200 paid, and the client was dunned."""
    rules = REMINDER_ONLY
    with _owing(rules, "2026-03-01") as store:
        s = Session(rules, store, clock=lambda: datetime(2026, 3, 11, 18, 0, tzinfo=UTC))
        partial = {"type": "invoice_paid", "id": "i1", "at": "2026-03-11T10:00", "paid_total": "500"}
        full = {"type": "invoice_paid", "id": "i1", "at": "2026-03-11"}
        for e in ([full, partial] if full_first else [partial, full]):
            s.post(e)
        inv = store.get("invoices", "i1")
        assert inv is not None and inv.paid_amount == 1200  # type: ignore[attr-defined]
        assert not s.tick("2026-03-12").committed


def _churn_reason_recorded(winback: dict[str, Any], reason: str) -> retainer.reactive.Reaction:
    """A client who churned in February (three orders, then 90 days of silence) under `winback`: the reason task
    committed by a tick on 15 May, then `reason` recorded through the session."""
    churned = {"id": "churned", "kind": "churned", "min_orders": 3, "lookback": "365d", "silence": "90d"}
    rules = retainer.load_rules({"version": 1, "rules": [churned, winback]})
    with retainer.open_store("memory://", timezone=rules.timezone) as store:
        store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
                  invoices=[{"id": f"i{d}", "client_id": "c1", "issued_at": d, "amount": "2000", "paid_at": d}
                            for d in ("2026-01-01", "2026-01-20", "2026-02-10")])  # fmt: skip
        s = Session(rules, store, clock=lambda: datetime(2026, 6, 1, tzinfo=UTC))
        (task,) = [a for a in s.tick("2026-05-15").committed if a.type == "create_task"]
        return s.post({"type": "outcome", "action_id": task.id, "outcome": {"churn_reason": reason},
                       "at": "2026-05-16T10:00"})  # fmt: skip


@pytest.mark.parametrize("recorded", ["survey-needed", "Survey needed"])
def test_a_win_back_reason_spelt_with_a_hyphen_in_the_rule_file_moves_the_process_on(recorded: str) -> None:
    """Found in review: the session compared the answer, made `survey_needed`, with the rule file's own
    `survey-needed`, took it for a reason without a next step and closed the process, while the engine
    committed the survey call."""
    wb = {"id": "winback", "kind": "winback", "min_revenue": 3000,
          "task": {"title": "Why?", "due_in": "3d", "options": ["price", "survey-needed", "other"]},
          "on_outcome": {"survey-needed": [{"create_task": {"title": "Survey call", "due_in": "2d"}}]}}
    r = _churn_reason_recorded(wb, recorded)
    assert [a.key for a in r.committed] == ["winback:c1:2026-02-10~survey-needed:create_task"]
    assert [(t.to_state, t.trigger) for t in r.transitions] == [
        ("next_survey_needed", "outcome:survey-needed"), ("done", "committed:~survey-needed")]


def test_a_win_back_without_next_steps_still_opens_a_session() -> None:
    """Found in review: a valid win-back rule without `on_outcome` made every Session fail to start (its chart had
    a `done` state with no way in, which durable-rules takes for a second start state)."""
    r = _churn_reason_recorded({"id": "winback", "kind": "winback", "min_revenue": 3000}, "price")
    assert [(t.to_state, t.trigger) for t in r.transitions] == [("closed", "outcome:*")]


def test_a_session_refuses_a_store_that_reads_naive_times_in_another_zone_than_the_rules() -> None:
    """Rules in Moscow, a store opened without timezone= (naive times read as UTC): a call at 10:00 was stored
    as 10:00 UTC and decided as of 10:00 Moscow (07:00 UTC), before it happened, so the client on the phone
    was reported forgotten. The engine's warning sat in reaction.plan.warnings, which nobody reads."""
    rules = retainer.load_rules(DEBTOR_FILE)
    with retainer.open_store("memory://") as store:
        with pytest.raises(retainer.ArgumentError, match=r"without a timezone.*rules count days in Europe/Moscow.*"
                                                         r"open_store\(url, timezone=rules.timezone\)"):
            Session(rules, store)
        Session(RULES, store).close()  # rules counting days in UTC read naive times as the store does
    for tz in (rules.timezone, "UTC"):  # said explicitly: the host knows what its CRM's times are
        with retainer.open_store("memory://", timezone=tz) as store:
            Session(rules, store).close()


def test_an_events_time_without_an_offset_is_read_in_the_stores_zone() -> None:
    """A store whose times are UTC (said explicitly), rules counting days in Moscow: the call at 10:00 was
    stored as 10:00 UTC and decided as of 10:00 Moscow time, three hours before it, so a client on the
    phone after 60 days of silence was reported forgotten."""
    rules = retainer.load_rules({"version": 1, "timezone": "Europe/Moscow",
                                 "rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"}]})  # fmt: skip
    with retainer.open_store("memory://", timezone="UTC") as store:
        store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
                  touches=[{"id": "t1", "client_id": "c1", "at": "2025-12-31T10:00"}])  # fmt: skip
        s = Session(rules, store)
        r = s.post({"type": "touch", "id": "t2", "client_id": "c1", "at": "2026-03-01T10:00", "direction": "inbound"})
        assert r.as_of == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
        assert r.committed == []


def test_the_call_note_waiting_when_its_manager_left_still_goes(store: Store) -> None:
    """Found in a reactive review: the note about a client's call on a waiting offer (a session's own action,
    no plan decides it again) waited while the CRM was down; its manager left, and the next tick cancelled it
    as manager_left, so nobody heard of the call. It goes (to the manager it names, as a plan's task would)."""
    down = [True]
    sent: list[str] = []

    def crm(a: Any) -> None:
        if down[0]:
            raise ConnectionError("CRM down")
        sent.append(a.key)

    s, _ = _offer_waiting(store)
    s = Session(RULES, store, crm, retry=Retry(max_attempts=5, base_delay=0, stop_after=1))
    s.post({"type": "touch", "id": "t-in", "client_id": "c1", "at": at(134), "kind": "call", "direction": "inbound"})
    s.post({"type": "fact", "entity": "managers", "at": at(134.1),
            "row": {"id": "m1", "name": "Anna", "supervisor_id": "boss", "active": False}})  # fmt: skip
    down[0] = False
    s.tick(at(135))
    assert "winback:c1:2026-02-10~price~inbound:notify_manager" in sent
