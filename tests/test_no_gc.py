"""`no_gc`: plans pause the cyclic collector; what they leave behind must still be collectable."""

from __future__ import annotations

import gc
import weakref

from retainer.model import no_gc


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_cycles_built_while_paused_are_still_collected() -> None:
    with no_gc():
        assert not gc.isenabled()
        refs = [weakref.ref(Node()) for _ in range(100)]
    assert gc.isenabled()
    gc.collect()
    assert all(r() is None for r in refs)


def test_a_hosts_frozen_objects_stay_frozen() -> None:
    kept = [Node() for _ in range(10)]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with no_gc():
            _ = [Node() for _ in range(10)]
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
    del kept


def test_nested_pauses_resume_once() -> None:
    with no_gc():
        with no_gc():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_finished_plan_leaves_no_cycles_behind() -> None:
    """The client frame memoises its invoice and manager frames; were they to point back at it strongly, a
    plan's clients and columns (240 MB at 100k with the example rule set) would outlive it until a full
    collection, which a long-running host may not run for hours."""
    from retainer import Engine, load_rules, open_store
    from retainer.rules.features import FeatureFrame, SubFrame

    store = open_store("memory://")
    store.add(
        managers=[{"id": "boss", "name": "Boss"}, {"id": "m1", "name": "Anna", "supervisor_id": "boss"}],
        clients=[{"id": "c1", "manager_id": "m1", "name": "Acme"}],
        invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-01-01T10:00:00Z", "due_at": "2026-01-05",
                   "amount": "500"}],
        tasks=[{"id": f"t{n}", "client_id": "c1", "manager_id": "m1", "created_at":
                "2026-01-01T10:00:00Z", "due_at": "2026-01-02"} for n in range(3)],
    )
    rules = load_rules({"version": 1, "rules": [
        {"id": "unpaid", "kind": "unpaid", "after": "7d"},
        {"id": "overdue", "kind": "overdue_tasks", "count": 2, "after": "3d"},
    ]})
    engine = Engine(rules, store)
    gc.collect()
    gc.disable()
    try:
        plan = engine.plan("2026-03-01")
        assert {a.rule for a in plan.actions} == {"unpaid", "overdue"}  # both sub-frames were built
        assert not [o for o in gc.get_objects() if isinstance(o, FeatureFrame | SubFrame)]
    finally:
        gc.enable()
