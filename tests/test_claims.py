"""Delivery claims: an action being delivered by one dispatcher is not delivered again by another that
reads the ledger meanwhile (a nightly run while a reactive session delivers), and a claim whose process
died is stale, so the action still goes out (DESIGN §6, §7: never lose or duplicate an action)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import retainer
from retainer.actions import Action
from retainer.adapters import Dispatcher, Retry
from retainer.adapters.dispatch import replay
from retainer.ledger import CLAIM_LEASE, LedgerEntry, _start_time, claim_alive, claim_holder, delivering
from retainer.testing import RecordingHandler

RULES = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"}]}
AS_OF = "2026-03-02"
TIMEOUT = 60


def crm(store: Any, n: int = 3) -> None:
    store.add(
        managers=[{"id": "m1"}],
        clients=[{"id": f"c{i}", "manager_id": "m1"} for i in range(1, n + 1)],
        touches=[{"id": f"t{i}", "client_id": f"c{i}", "at": "2026-01-01T10:00:00", "kind": "call"}
                 for i in range(1, n + 1)],
    )  # fmt: skip


def claimed(store: Any) -> LedgerEntry:
    """An entry of `store`'s ledger with an attempt begun by this process."""
    crm(store, 1)
    retainer.Engine(RULES, store).run(AS_OF)  # committed, no handler: pending
    (e,) = store.ledger()
    store.begin_attempts([e.id], datetime.now(UTC))
    (e,) = store.ledger()
    return e  # type: ignore[no-any-return]


def test_a_claim_of_this_process_holds_while_it_delivers(store: Any) -> None:
    e = claimed(store)
    now = datetime.now(UTC)
    assert e.claimed_by is not None and e.claimed_by.partition("@")[0] == claim_holder()
    with delivering(e.id):
        assert claim_alive(e, now)  # another thread of this process is delivering it
    assert not claim_alive(e, now)  # left behind by an attempt that ended without its result: stale


def test_a_claim_lives_as_long_as_its_process(store: Any) -> None:
    e = claimed(store)
    now = e.updated_at + timedelta(seconds=1)
    host, ns = claim_holder().split("/")[:2]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = _start_time(child.pid)
        theirs = dataclasses.replace(e, claimed_by=f"{host}/{ns}/{child.pid}/{started}")
        assert claim_alive(theirs, now)
        assert not claim_alive(theirs, e.updated_at + CLAIM_LEASE)  # its result never came: stale after the lease
        if started:  # Linux: a pid reused by another process does not keep the claim
            assert not claim_alive(dataclasses.replace(e, claimed_by=f"{host}/{ns}/{child.pid}/1"), now)
    finally:
        child.kill()
        child.wait()
    assert not claim_alive(theirs, now)


def test_the_lease_runs_on_the_machines_clock_not_a_dispatchers(store: Any) -> None:
    """A session with an injected clock in the past stamped its attempts months ago: a run with the real
    clock took its live claim for an expired one and delivered the action a second time."""
    e = claimed(store)
    host, seen = claim_holder().split("/")[:2]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        who = f"{host}/{seen}/{child.pid}/{_start_time(child.pid)}"
        past = e.updated_at - timedelta(days=90)  # the claimant's injected clock
        fresh = dataclasses.replace(e, claimed_by=f"{who}@{int(time.time())}", updated_at=past)
        assert claim_alive(fresh, datetime.now(UTC))
        old = int(time.time() - CLAIM_LEASE.total_seconds() - 1)
        assert not claim_alive(dataclasses.replace(fresh, claimed_by=f"{who}@{old}"), datetime.now(UTC))
    finally:
        child.kill()
        child.wait()


def test_two_dispatchers_of_one_process_on_one_action_keep_its_mark() -> None:
    """The one refused its claim used to unmark the id as it left, and the other's live claim looked stale."""
    from retainer import ledger

    with delivering("a1"):
        with delivering("a1"):
            pass  # the second dispatcher, refused
        assert "a1" in ledger._delivering
    assert "a1" not in ledger._delivering


@pytest.mark.parametrize("token", ["elsewhere/4026531836/1/1", "{host}/4026000000/1/1"],
                         ids=["another-host", "another-pid-namespace"])  # fmt: skip
def test_a_claim_whose_process_cannot_be_seen_is_trusted_for_the_lease(store: Any, token: str) -> None:
    """Two containers of one pod share a host name, not their pids: pid 1 here is not pid 1 there."""
    e = dataclasses.replace(claimed(store), claimed_by=token.format(host=socket.gethostname()))
    assert claim_alive(e, e.updated_at + CLAIM_LEASE - timedelta(seconds=1))
    assert not claim_alive(e, e.updated_at + CLAIM_LEASE)


def test_another_thread_leaves_an_action_in_flight_alone(tmp_path: Path) -> None:
    store = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}")
    crm(store, 2)
    retainer.Engine(RULES, store).run(AS_OF)
    first, second = (e.id for e in store.ledger())
    inside, release = threading.Event(), threading.Event()
    sent: list[str] = []

    def slow(a: Action) -> None:
        sent.append(a.id)
        if a.id == first:
            inside.set()
            assert release.wait(TIMEOUT)

    session = threading.Thread(target=lambda: Dispatcher(store, slow).dispatch_active())
    session.start()
    try:
        assert inside.wait(TIMEOUT)
        h = RecordingHandler()
        report = Dispatcher(store, h).dispatch_active()  # the nightly run, reading the ledger now
        assert report.in_flight == [first] and h.ids == [second]
        assert report.to_dict()["in_flight"] == 1
    finally:
        release.set()
        session.join(TIMEOUT)
    assert sent == [first]  # the session found the second one delivered meanwhile
    assert [(e.status, e.attempts, e.claimed_by) for e in store.ledger()] == [("done", 1, None)] * 2
    store.close()


def test_a_replay_leaves_an_action_a_session_is_retrying(tmp_path: Path) -> None:
    """Found by a review: a session retrying a failed action takes no run lock, and a replay reset it and
    delivered it while the session's second try was still running."""
    store = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}")
    crm(store, 1)
    retainer.Engine(RULES, store).run(AS_OF)
    (e,) = store.ledger()
    inside, release = threading.Event(), threading.Event()
    tries: list[str] = []

    def flaky(a: Action) -> None:
        tries.append(a.id)
        if len(tries) == 1:
            raise ConnectionError("down")
        inside.set()
        assert release.wait(TIMEOUT)

    retry = Retry(max_attempts=3, base_delay=0)
    session = threading.Thread(target=lambda: Dispatcher(store, flaky, retry=retry).dispatch_active())
    session.start()
    try:
        assert inside.wait(TIMEOUT)  # its second try is running; the entry is `failed` from the first
        assert store.ledger()[0].status == "failed"
        h = RecordingHandler()
        moved, report = replay(store, [e.id], handlers=h)
        assert moved == [] and h.ids == [] and report is not None and report.attempts == 0
    finally:
        release.set()
        session.join(TIMEOUT)
    assert tries == [e.id, e.id] and [(x.status, x.attempts) for x in store.ledger()] == [("done", 2)]
    store.close()


CHILD = textwrap.dedent(
    """
    import json, pathlib, sys, time
    import retainer
    from retainer.adapters import Dispatcher

    db, work = sys.argv[1], pathlib.Path(sys.argv[2])
    store = retainer.open_store("sqlite:///" + db)

    def slow(action):  # a reactive session's webhook that takes its time on the first action
        with (work / "sent").open("a") as f:
            f.write(action.id + "\\n")
        if not (work / "inside").exists():  # written whole, then named: the test reads it as soon as it exists
            (work / "inside.tmp").write_text(action.id)
            (work / "inside.tmp").rename(work / "inside")
            deadline = time.monotonic() + 60
            while not (work / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)

    report = Dispatcher(store, slow).dispatch_active()
    print(json.dumps(report.to_dict()))
    """
)


def wait_for(path: Path, child: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the child never started delivering"
        time.sleep(0.01)


@pytest.mark.parametrize("killed", [False, True], ids=["in-flight", "killed-mid-delivery"])
def test_a_run_in_another_process_never_delivers_an_action_twice_nor_loses_it(tmp_path: Path, killed: bool) -> None:
    db = tmp_path / "crm.db"
    store = retainer.open_store(f"sqlite:///{db}")
    crm(store, 3)
    retainer.Engine(RULES, store).run(AS_OF)  # committed by last night's run, without a handler
    ids = [e.id for e in store.ledger()]
    script = tmp_path / "session.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(db), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        wait_for(tmp_path / "inside", child)
        in_flight = (tmp_path / "inside").read_text()
        if killed:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(TIMEOUT)
        h = RecordingHandler()
        report = retainer.Engine(RULES, store).run(AS_OF, handlers=h)
        assert report.dispatch is not None
        if killed:  # its claim died with it: delivered again (at least once), never lost
            assert report.dispatch.in_flight == [] and sorted(h.ids) == sorted(ids)
        else:
            assert report.dispatch.in_flight == [in_flight] and in_flight not in h.ids
            assert sorted(h.ids) == sorted(set(ids) - {in_flight})
    finally:
        (tmp_path / "release").touch()
        out, _ = child.communicate(timeout=TIMEOUT)
    sent = (tmp_path / "sent").read_text().split()
    if not killed:
        assert child.returncode == 0 and json.loads(out)["done"] == 1
        assert sent == [in_flight] and sorted(sent + h.ids) == sorted(ids)  # each exactly once
        entries = store.ledger()
        assert {(e.status, e.attempts, e.claimed_by) for e in entries} == {("done", 1, None)}
    else:
        assert {(e.status, e.claimed_by) for e in store.ledger()} == {("done", None)}
        assert store.ledger(ids=[in_flight])[0].attempts == 2  # the killed attempt counts
    store.close()


def old_store(path: Path) -> None:
    """A SQLite store with one pending task, as a retainer from before claims and run kinds left it."""
    store = retainer.open_store(f"sqlite:///{path}")
    crm(store, 1)
    retainer.Engine(RULES, store).run(AS_OF)
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE retainer_actions DROP COLUMN claimed_by")
        db.execute("ALTER TABLE retainer_runs DROP COLUMN kind")


def test_a_store_from_before_claims_and_run_kinds_gets_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_store(path)
    store = retainer.open_store(f"sqlite:///{path}")
    (e,) = store.ledger()
    assert e.claimed_by is None and e.status == "pending"
    assert [r.kind for r in store.runs(kind="run")] == ["run"]  # written before kinds: runs
    h = RecordingHandler()
    retainer.Engine(RULES, store).run(AS_OF, handlers=h)
    assert h.ids == [e.id] and store.ledger()[0].status == "done"
    store.close()


def test_an_action_taken_over_from_a_dead_process_is_retried_by_its_new_dispatcher(tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    store = retainer.open_store(f"sqlite:///{db}")
    crm(store, 1)
    retainer.Engine(RULES, store).run(AS_OF)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host, ns = claim_holder().split("/")[:2]
    with sqlite3.connect(db) as conn:  # killed mid-delivery: its claim stays
        conn.execute("UPDATE retainer_actions SET attempts = 1, claimed_by = ?", [f"{host}/{ns}/{child.pid}/1"])
    h = RecordingHandler(fail=1)
    report = Dispatcher(store, h, retry=Retry(max_attempts=3, base_delay=0)).dispatch_active()
    assert report.done and report.attempts == 2  # the retry is checked against its own claim, not the dead one's
    assert [(e.status, e.attempts, e.claimed_by) for e in store.ledger()] == [("done", 3, None)]
    store.close()


def test_a_run_out_of_attempts_leaves_dead_an_action_another_dispatcher_took_since(store: Any) -> None:
    """A run with max_attempts=1 read an action with one attempt made, unclaimed; a session with more
    attempts to give took it right after. The run must not write it dead over the session's delivery."""
    crm(store, 1)
    retainer.Engine(RULES, store).run(AS_OF)
    (e,) = store.ledger()
    store.begin_attempts([e.id], datetime.now(UTC))
    store.finish_attempts([(e.id, "failed", "ConnectionError: down", 1)], datetime.now(UTC))

    class SessionTakesItAfterTheRead:  # the store as the run sees it: the session claims between read and write
        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def ledger(self, **kw: Any) -> Any:
            read = store.ledger(**kw)
            store.begin_attempts([e.id], datetime.now(UTC))
            return read

    report = Dispatcher(SessionTakesItAfterTheRead(), RecordingHandler(), retry=Retry(max_attempts=1)).dispatch_active()
    assert list(report.dead) == [e.id]  # the run's own view: it gave up
    (after,) = store.ledger()
    assert after.status == "failed" and after.claimed_by is not None  # the ledger: still the session's


def test_an_old_store_that_cannot_be_written_is_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its ledger's new columns read as empty: a read-only copy from before claims and run kinds."""
    from retainer.stores.sqlite import SQLiteStore

    path = tmp_path / "old.db"
    old_store(path)

    def read_only(self: Any) -> Any:
        raise retainer.StoreError(f"{self.path}: cannot write: attempt to write a readonly database")

    monkeypatch.setattr(SQLiteStore, "_transaction", read_only)
    store = retainer.open_store(f"sqlite:///{path}")
    (e,) = store.ledger()
    assert (e.status, e.claimed_by) == ("pending", None)
    assert [r.kind for r in store.runs(kind="run")] == ["run"] and store.runs(kind="event") == []
    assert len(retainer.Engine(RULES, store).plan(AS_OF).suppressed) == 1  # the duplicate, from the ledger
    store.close()


def test_two_processes_opening_an_old_store_at_once_both_open_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = retainer.open_store(f"sqlite:///{path}")
    crm(store, 1)
    store.close()
    script = tmp_path / "open.py"
    script.write_text("import sys, retainer\nretainer.open_store('sqlite:///' + sys.argv[1]).close()\n")
    for _ in range(4):
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE retainer_runs DROP COLUMN kind")
        procs = [subprocess.Popen([sys.executable, str(script), str(path)], stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]  # fmt: skip
        errors = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
