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


@pytest.mark.parametrize("text", ["2026-03-01+03:00", "2026-03-01-05:00", "2026-03-01x10:00", "2026-03-01x10:00:00",
                                  "20260301+0300"])  # fmt: skip
def test_a_date_with_an_offset_or_an_odd_separator_is_no_instant(store: Store, text: str) -> None:
    """Python reads any character after the date as the separator: `2026-03-01+03:00` (a date with its offset, as
    SOAP and 1C write it) was stored as 03:00 local, its offset and sign lost, in facts, imports and as_of."""
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}])
    with pytest.raises(retainer.DataError, match=r"touches\[0\] id=t1 field at: invalid date/time"):
        store.add(touches=[{"id": "t1", "client_id": "c1", "at": text}])
    assert store.count("touches") == 0
    with pytest.raises(retainer.RetainerError, match="invalid as_of"):
        engine_for(RULES, store).plan(text)
    for fine in ("2026-03-01T10:00", "2026-03-01 10:00:00", "2026-03-01t10:00", "20260301T100000",
                 "2026-03-01T10:00+03:00", "2026-03-01"):  # fmt: skip
        engine_for(RULES, store).plan(fine)


def test_an_import_reads_a_date_with_an_offset_as_no_instant(tmp_path: Path) -> None:
    from retainer.datafiles import import_data

    d = tmp_path / "crm"
    d.mkdir()
    (d / "managers.csv").write_text("id\nm1\n")
    (d / "clients.csv").write_text("id,manager_id\nc1,m1\n")
    (d / "touches.csv").write_text("id,client_id,at\nt1,c1,2026-03-01x10:00:00\n")  # 19 characters: the fast path
    with pytest.raises(retainer.DataError, match=r"touches\.csv:2 id=t1 field at: invalid date/time"):
        import_data(d, retainer.open_store("memory://"))


def test_tags_and_attributes_given_from_python_are_what_every_store_keeps(store: Store) -> None:
    """A tag holding `;` came back from SQLite as two tags, and an attribute that is no JSON value (a Decimal, a
    date) as its text, while the memory store kept them: the two stores planned differently."""
    import datetime as dt
    from decimal import Decimal

    store.add(managers=[{"id": "m1"}])
    store.add(clients=[{"id": "c1", "manager_id": "m1", "tags": [" vip ", "", "key-account"]}])
    assert store.get("clients", "c1").tags == {"vip", "key-account"}  # type: ignore[union-attr]
    with pytest.raises(retainer.DataError, match=r"clients\[0\] id=c2 field tags: a tag cannot hold ';'"):
        store.add(clients=[{"id": "c2", "manager_id": "m1", "tags": ["a;b"]}])
    for value in (Decimal("7"), dt.date(2026, 1, 1), {1, 2}, float("nan")):
        with pytest.raises(retainer.DataError, match=r"field attributes: attributes\['x'\] is .*: attributes hold "
                                                     r"JSON values"):  # fmt: skip
            store.add(clients=[{"id": "c3", "manager_id": "m1", "attributes": {"x": value}}])
    store.add(clients=[{"id": "c4", "manager_id": "m1", "attributes": {"x": [1, "a", {"b": None}], "y": 2.5}}])
    assert store.count("clients") == 2


def test_a_model_copied_with_bad_values_is_validated_like_a_dict(store: Store) -> None:
    """`get()` then `model_copy(update=...)`, the natural way to send the full client back, skipped validation: a
    status 'bogus' or a time as text got into the store, and plans crashed."""
    crm(store)
    c1 = store.get("clients", "c1")
    assert c1 is not None
    with pytest.raises(retainer.DataError, match=r"clients\[0\] id=c1 field status: Input should be 'active'"):
        store.upsert(clients=[c1.model_copy(update={"status": "bogus"})])
    t1 = store.get("touches", "t2")
    assert t1 is not None
    store.upsert(touches=[t1.model_copy(update={"at": "2025-11-05"})])
    assert store.get("touches", "t2").at.tzinfo is not None  # type: ignore[union-attr]
    engine_for(RULES, store).plan("2026-03-01")


def test_what_a_host_maps_to_a_bad_request_or_a_retry_has_a_class_of_its_own(store: Store) -> None:
    """Found in a vendor's review: a mistyped date in a query string raised a plain RetainerError (a web layer
    mapping ValueError/ArgumentError to 400 answered 500), and "another run is in progress" was the same
    StoreError as "database not found", so a job runner could not tell "retry later" from "misconfigured"."""
    crm(store)
    e = engine_for(RULES, store)
    for bad in ("yesterday", "2026-02-30"):
        with pytest.raises(retainer.ArgumentError, match="invalid as_of"):
            e.plan(bad)
        with pytest.raises(ValueError):
            e.explain("c1", bad)
    with pytest.raises(retainer.ArgumentError, match="unknown rule 'x'"):
        e.explain("c1", "2026-03-01", rule="x")
    inner: list[BaseException] = []

    def nested(_action: retainer.Action) -> None:
        try:
            e.run("2026-03-01")
        except retainer.StoreBusyError as exc:
            inner.append(exc)

    e.run("2026-03-01", handlers=nested)
    assert inner and all(isinstance(x, retainer.RunInProgressError) for x in inner)  # one per action
    assert "another retainer run is in progress" in str(inner[0])


def test_an_explanation_pickles_for_a_cache_or_a_task_queue(store: Store) -> None:
    """Plans, actions and ledger entries pickled; an explanation did not (its "no value" marker was a class made
    on the fly), so it could not go into Django's cache or a Celery result."""
    import pickle

    crm(store)
    ex = engine_for(RULES, store).explain("c1", "2026-03-01")
    back = pickle.loads(pickle.dumps(ex))
    assert str(back) == str(ex) and back.to_dict() == ex.to_dict()
