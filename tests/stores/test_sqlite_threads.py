"""One SQLite store object shared by threads, as a web app shares it: each thread gets its own
connection, so a run delivering on one thread and writes on another never meet in one transaction."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import retainer
from retainer.adapters import CallbackHandler

RULES = {"version": 1, "rules": [{"id": "f", "kind": "forgotten", "after": "30d",
                                  "then": [{"create_task": {"title": "Call {client.name}"}}]}]}  # fmt: skip


def test_a_run_and_writes_on_other_threads_share_one_store(tmp_path: Path) -> None:
    """A run delivered on one thread while another added touches and recorded outcomes failed 4 times in
    4 with "cannot start a transaction within a transaction", leaving actions pending."""
    store = retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}")
    store.add(managers=[{"id": "m1"}], clients=[{"id": f"c{i:02d}", "manager_id": "m1", "created_at": "2025-01-01"}
                                                     for i in range(40)])
    engine = retainer.Engine(retainer.load_rules(RULES), store)
    stop, errors, written = threading.Event(), [], [0]

    def writer() -> None:
        while not stop.is_set():
            try:
                written[0] += 1
                # dated after the run's as_of: invisible to its plan, however the threads interleave (a touch of
                # 28 February left c00 unforgotten when the writer got in first, and 39 of 40 were planned)
                store.add(touches=[{"id": f"w{written[0]}", "client_id": "c00", "at": "2026-03-05T10:00"}])
                done = store.ledger(status=["done"], limit=1)
                if done:
                    engine.record_outcome(done[0].id, {"n": written[0]})
            except Exception as exc:  # every failure is the finding
                errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.001)

    t = threading.Thread(target=writer)
    t.start()
    try:
        report = engine.run("2026-03-01", handlers=CallbackHandler(lambda a: time.sleep(0.002)))
    finally:
        stop.set()
        t.join()
    assert errors == [] and written[0] > 5
    assert report.dispatch is not None and len(report.dispatch.done) == 40 and report.dispatch.complete
    assert {e.status for e in store.ledger()} == {"done"}
    assert [r.status for r in store.runs()] == ["finished"]
    store.close()


def test_every_connection_is_tuned_for_wal(tmp_path: Path) -> None:
    """Reopened (already WAL) or opened on another thread: NORMAL sync, the file mapped, a large cache."""
    path = tmp_path / "crm.db"
    retainer.open_store(f"sqlite:///{path}").close()
    store = retainer.open_store(f"sqlite:///{path}")
    seen = []

    def settings() -> None:
        c = store.conn  # type: ignore[attr-defined]
        seen.append(tuple(c.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous",
                                                                                "mmap_size", "cache_size")))

    settings()
    t = threading.Thread(target=settings)
    t.start()
    t.join()
    assert seen == [("wal", 1, 1073741824, -65536)] * 2
    store.close()


def test_a_plan_reads_one_state_of_the_store_while_the_crm_writes(tmp_path: Path, monkeypatch: Any) -> None:
    """Found in an ops review: a plan read the store one query at a time, so a CRM sync that committed between
    two reads (a call logged) gave it the clients of one state and the activity of another. A plan now reads
    one state: the one when it began, whatever is committed meanwhile (and the sync is not blocked)."""
    path = tmp_path / "crm.db"
    store = retainer.open_store(f"sqlite:///{path}")
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"}])
    engine = retainer.Engine(retainer.load_rules(RULES), store)
    before = engine.plan("2026-03-01").to_json()
    assert '"f:c1:' in before
    sync = retainer.open_store(f"sqlite:///{path}")  # the CRM's own connection
    read_clients = type(store).clients

    def then_the_crm_writes(self: Any, *args: Any, **kwargs: Any) -> Any:
        rows = read_clients(self, *args, **kwargs)
        sync.add(touches=[{"id": "t1", "client_id": "c1", "at": "2026-02-28T10:00:00Z"}])  # committed meanwhile
        return rows

    monkeypatch.setattr(type(store), "clients", then_the_crm_writes)
    assert engine.plan("2026-03-01").to_json() == before
    monkeypatch.undo()
    assert sync.get("touches", "t1") is not None and engine.plan("2026-03-01").actions == []  # the next plan sees it


def test_a_run_refuses_a_store_with_a_second_name(tmp_path: Path) -> None:
    """Found in an ops review: two runs through two hard links of one store each took the lock of their own name
    (and SQLite a WAL of its own): every action went out twice, and the store was corrupted 4 times in 5."""
    import os

    path = tmp_path / "crm.db"
    store = retainer.open_store(f"sqlite:///{path}")
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"}])
    engine = retainer.Engine(retainer.load_rules(RULES), store)
    os.link(path, tmp_path / "alias.db")
    with pytest.raises(retainer.StoreError, match=r"crm.db has 2 names \(hard links\)"):
        engine.run("2026-03-01")
    assert store.ledger() == []
    os.unlink(tmp_path / "alias.db")
    assert engine.run("2026-03-01").committed


def test_an_in_memory_store_takes_a_write_from_another_thread_while_a_plan_reads(monkeypatch: Any) -> None:
    """Found in a review: `sqlite:///:memory:` has one connection, which every thread shares; the plan's read
    transaction on it refused another thread's write ("cannot start a transaction within a transaction")."""
    store = retainer.open_store("sqlite:///:memory:")
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"}])
    engine = retainer.Engine(retainer.load_rules(RULES), store)
    inside, go_on = threading.Event(), threading.Event()
    read_clients = type(store).clients

    def held_there(self: Any, *args: Any, **kwargs: Any) -> Any:
        rows = read_clients(self, *args, **kwargs)
        inside.set()
        go_on.wait(5)
        return rows

    monkeypatch.setattr(type(store), "clients", held_there)
    t = threading.Thread(target=lambda: engine.plan("2026-03-01"))
    t.start()
    try:
        assert inside.wait(5)
        store.add(touches=[{"id": "t1", "client_id": "c1", "at": "2026-02-28T10:00:00Z"}])
    finally:
        go_on.set()
        t.join()
    assert store.get("touches", "t1") is not None
