"""What a script passes to the Python API, as a script author writes it (found in a review from Python)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import engine_for

import retainer
from retainer.stores import Store

RULES = {"version": 1, "rules": [{"id": "f", "kind": "forgotten", "after": "60d"}]}


def crm(store: Store) -> None:
    store.add(managers=[{"id": "m1"}], clients=[{"id": 5, "manager_id": "m1"}, {"id": "c1", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": 5, "at": "2025-12-01"}, {"id": "t2", "client_id": "c1",
                                                                          "at": "2025-12-01"}])  # fmt: skip


def test_clients_may_be_any_iterable_read_once(store: Store) -> None:
    """A generator of ids was read twice, and the plan was empty, without a word."""
    crm(store)
    e = engine_for(RULES, store)
    want = [a.key for a in e.plan("2026-03-01", clients=["c1"]).actions]
    assert want == ["f:c1:2025-12-01:create_task"]
    assert [a.key for a in e.plan("2026-03-01", clients=iter(["c1"])).actions] == want
    assert [a.key for a in e.plan("2026-03-01", clients=(c for c in ["c1"])).actions] == want


def test_an_int_id_names_the_client_as_store_add_took_it(store: Store) -> None:
    """`store.add` takes `id: 5` as "5"; plan and explain said "no such client" (memory) or "created after
    as_of" (SQLite) for 5, and bytes raised a TypeError from the store."""
    crm(store)
    e = engine_for(RULES, store)
    assert [a.client_id for a in e.plan("2026-03-01", clients=[5]).actions] == ["5"]
    assert e.explain(5, "2026-03-01").rules[0].matched  # type: ignore[arg-type]
    for bad in ([b"5"], [None], [True]):
        with pytest.raises(retainer.ArgumentError, match="a client id is text"):
            e.plan("2026-03-01", clients=bad)  # type: ignore[arg-type]


def test_a_path_opens_a_sqlite_store(tmp_path: Path) -> None:
    store = retainer.open_store(tmp_path / "crm.db")
    crm(store)
    assert retainer.open_store(str(tmp_path / "crm.db")).count("clients") == 2
    with pytest.raises(retainer.ArgumentError, match="a store URL is text"):
        retainer.open_store(42)  # type: ignore[arg-type]


def test_replay_refuses_one_id_given_as_a_string(store: Store) -> None:
    """It replayed one id per character, and said "no action with id '1'"."""
    crm(store)
    e = engine_for(RULES, store)
    (a, *_) = e.run("2026-03-01").committed
    with pytest.raises(retainer.ArgumentError, match=r"ids is a list of action ids, e\.g\. \["):
        e.replay(a.id)
    assert e.replay([a.id])[0] == []  # pending, not failed or dead: nothing to put back
