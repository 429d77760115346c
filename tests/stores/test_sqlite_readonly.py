"""A store that cannot be written where it lies (a read-only mount, a snapshot, a folder the user cannot
write) is read: plans, reports and explanations need no writes. Anything that writes says why it cannot.

The folder is made read-only for real: a read-only bind mount when running as root (root writes through
file modes), file modes otherwise."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

import retainer
from retainer.datafiles import import_data
from retainer.errors import StoreError
from retainer.ledger import RunRecord
from retainer.stores.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "examples" / "rules" / "retention.yaml"
CRM = ROOT / "examples" / "crm"
SCRIPT = shutil.which("retainer", path=str(Path(sys.executable).parent)) or "retainer"
AS_OF = "2026-03-01"


def _make_read_only(src: Path, view: Path) -> bool:
    """`view` shows `src` read-only; False when this machine cannot do that."""
    if os.geteuid() != 0:
        view.symlink_to(src)
        for f in src.iterdir():
            f.chmod(0o444)
        src.chmod(0o555)
        return True
    view.mkdir()
    if shutil.which("mount") is None:
        return False
    ok = subprocess.run(["mount", "--bind", str(src), str(view)], capture_output=True).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True).returncode == 0:
        return True
    if ok:
        subprocess.run(["umount", str(view)], capture_output=True)
    return False


def _release(src: Path, view: Path) -> None:
    if os.geteuid() == 0:  # lazily if busy: a failed test may still hold the file open
        if subprocess.run(["umount", str(view)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(view)], capture_output=True)
    else:
        src.chmod(0o755)


@pytest.fixture
def writable(tmp_path: Path) -> Path:
    """A closed store with the example CRM (closing it folds the write-ahead log into the file)."""
    folder = tmp_path / "crm"
    folder.mkdir()
    store = retainer.open_store(f"sqlite:///{folder / 'crm.db'}", timezone="Europe/Moscow")
    import_data(CRM, store)
    store.close()
    assert sorted(p.name for p in folder.iterdir()) == ["crm.db"]
    return folder


@contextmanager
def _read_only(src: Path, tmp_path: Path) -> Iterator[Path]:
    view = tmp_path / "ro"
    if not _make_read_only(src, view):
        pytest.skip("cannot make a read-only folder here: running as root where `mount --bind` is not allowed")
    try:
        (view / "probe").touch()
    except OSError:
        pass
    else:
        _release(src, view)
        pytest.skip("the folder made read-only can still be written (a file system that ignores modes)")
    try:
        yield view
    finally:
        _release(src, view)


@pytest.fixture
def ro(writable: Path, tmp_path: Path) -> Iterator[Path]:
    with _read_only(writable, tmp_path) as view:
        yield view


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_a_read_only_store_plans_as_the_writable_one_does(writable: Path, tmp_path: Path) -> None:
    rules = retainer.load_rules(RULES)
    store = retainer.open_store(f"sqlite:///{writable / 'crm.db'}", timezone=rules.timezone)
    expected = retainer.Engine(rules, store).plan(AS_OF).to_json()
    store.close()
    for p in list(writable.iterdir()):
        if p.name != "crm.db":
            p.unlink()
    with _read_only(writable, tmp_path) as view:
        store = retainer.open_store(f"sqlite:///{view / 'crm.db'}", timezone=rules.timezone, create=False)
        assert isinstance(store, SQLiteStore) and store.read_only
        plan = retainer.Engine(rules, store).plan(AS_OF)
        assert plan.actions and plan.to_json() == expected
        assert store.ledger() == [] and store.runs() == []
        store.close()


def test_writes_to_a_read_only_store_say_why_and_change_nothing(ro: Path) -> None:
    store = retainer.open_store(f"sqlite:///{ro / 'crm.db'}", create=False)
    before = store.count("clients")
    with pytest.raises(StoreError, match=r"read-only.*cannot write"):
        store.add(clients=[{"id": "new", "name": "New", "manager_id": "m1"}])
    with pytest.raises(StoreError, match=r"read-only.*cannot write"):
        store.set_cursor("x", "y")
    with pytest.raises(StoreError, match="read-only"):
        retainer.Engine(retainer.load_rules(RULES), store).run(AS_OF)
    assert store.count("clients") == before and store.get("clients", "new") is None
    store.close()


def test_the_cli_reads_a_read_only_store_and_refuses_to_run_on_it(ro: Path) -> None:
    data = str(ro / "crm.db")
    r = _cli("plan", "--rules", str(RULES), "--data", data, "--as-of", AS_OF, "-f", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["actions"]
    r = _cli("report", "--rules", str(RULES), "--data", data, "--as-of", AS_OF)
    assert r.returncode == 0, r.stderr
    r = _cli("run", "--rules", str(RULES), "--data", data, "--as-of", AS_OF)
    assert r.returncode == 2
    assert "read-only" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in ro.iterdir()) == ["crm.db"]


def test_a_read_only_store_with_commits_only_in_its_log_is_refused_not_read_without_them(
    writable: Path, tmp_path: Path
) -> None:
    """A copy taken while a writer had it open: the newest commits are in crm.db-wal. Reading the file
    alone would plan without them."""
    live = retainer.open_store(f"sqlite:///{writable / 'crm.db'}", create=False)
    assert isinstance(live, SQLiteStore)
    live.conn.execute("PRAGMA wal_autocheckpoint = 0")
    live.add(clients=[{"id": "late", "name": "Late", "manager_id": "m1"}])
    snap, check = tmp_path / "snap", tmp_path / "check"
    for folder in (snap, check):
        folder.mkdir()
        shutil.copy(writable / "crm.db", folder / "crm.db")
        shutil.copy(writable / "crm.db-wal", folder / "crm.db-wal")
    live.close()
    c = sqlite3.connect(check / "crm.db")  # the copy of the file and its log holds the new client
    assert c.execute("SELECT count(*) FROM clients WHERE id = 'late'").fetchone() == (1,)
    c.close()
    assert (snap / "crm.db-wal").stat().st_size > 0
    with (
        _read_only(snap, tmp_path) as view,
        pytest.raises(StoreError, match=r"crm\.db-wal holds commits not yet in the file"),
    ):
        retainer.open_store(f"sqlite:///{view / 'crm.db'}", create=False)


def test_a_store_from_before_manager_changes_gets_the_table_or_is_read_without_it(
    writable: Path, tmp_path: Path
) -> None:
    """Written before `retainer_manager_changes`: opened where it can be written it gets the table (and a
    client moved back by hand overtakes the move from then on); read-only, every committed move reads as
    before, not carried out while the data shows the manager it was taken from."""
    from retainer.actions import Reassign, action_id

    key = "release:c1:e:reassign"
    move = Reassign(id=action_id(key), key=key, rule="release", client_id="c1", category="retention", reason="r",
                    as_of=datetime(2026, 2, 1, tzinfo=UTC), from_manager_id="m1", to_manager_id="m2")  # fmt: skip
    db = writable / "crm.db"
    store = retainer.open_store(f"sqlite:///{db}", create=False)
    store.commit_run(RunRecord(id="r1", as_of=move.as_of, rules_digest="x", started_at=move.as_of), [move], {})
    store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE retainer_manager_changes")
    conn.close()
    at = datetime(2026, 3, 1, tzinfo=UTC)
    with _read_only(writable, tmp_path) as view:
        old = retainer.open_store(f"sqlite:///{view / 'crm.db'}", create=False)
        assert old.moves_in_flight(at) == {"c1": ("m1", "m2")} and old.manager_changes(["c1"]) == {}
        old.close()
    store = retainer.open_store(f"sqlite:///{db}", create=False)
    store.upsert(clients=[{**store.get("clients", "c1").model_dump(), "manager_id": "m2"}])  # type: ignore[union-attr]
    store.upsert(clients=[{**store.get("clients", "c1").model_dump(), "manager_id": "m1"}])  # type: ignore[union-attr]
    assert store.manager_changes(["c1"]) == {"c1": {"m2": 1, "m1": 1}} and store.moves_in_flight(at) == {}
    # a move the data showed carried out before the upgrade: taken back by hand after it, it stays back
    store.upsert(clients=[{**store.get("clients", "c1").model_dump(), "manager_id": "m2"}])  # type: ignore[union-attr]
    store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE retainer_manager_changes")
    conn.close()
    store = retainer.open_store(f"sqlite:///{db}", create=False)
    assert store.manager_changes(["c1"]) == {"c1": {"m2": 1}}
    store.upsert(clients=[{**store.get("clients", "c1").model_dump(), "manager_id": "m1"}])  # type: ignore[union-attr]
    assert store.moves_in_flight(at) == {}
    store.close()


def test_a_store_from_before_tasks_action_id_is_read_read_only(writable: Path, tmp_path: Path) -> None:
    """`tasks.action_id` is new: a store written before it could not be opened where it cannot be written
    ("cannot be upgraded here"), so plan, explain and report failed on a read-only mount. The optional column
    reads as empty; opened writable, the store gets it."""
    db = writable / "crm.db"
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE tasks DROP COLUMN action_id")
    conn.close()
    with _read_only(writable, tmp_path) as view:
        old = retainer.open_store(f"sqlite:///{view / 'crm.db'}", create=False, timezone="Europe/Moscow")
        tasks = list(old.iter("tasks"))
        assert tasks and {t.action_id for t in tasks} == {None}  # type: ignore[attr-defined]
        plan = retainer.Engine(retainer.load_rules(RULES), old).plan(AS_OF)
        old.close()
    store = retainer.open_store(f"sqlite:///{db}", create=False, timezone="Europe/Moscow")
    assert retainer.Engine(retainer.load_rules(RULES), store).plan(AS_OF).to_json() == plan.to_json()
    store.close()
    with sqlite3.connect(db) as conn:
        assert "action_id" in {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
    conn.close()
