"""examples/adapter/: the example CRM adapter and its nightly script, against a fake CRM on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from httpfake import PROXY_VARS, FakeClock, FakeServer, Reply, closed_port_url

import retainer
from retainer.actions import Reassign
from retainer.adapters import PermanentError, Retry
from retainer.ledger import LedgerEntry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "adapter"
AS_OF = "2026-03-15"
RULES = """\
version: 1
timezone: Europe/Moscow
rules:
  - id: forgotten
    kind: forgotten
    after: 60d
    then:
      - create_task: {title: "Call {client.name}", due_in: 2d}
      - tag: forgotten
  - id: release
    kind: release
    forgotten_rule: forgotten
    grace: 14d
    then:
      - reassign: {strategy: least_loaded, same_team: true}
      - notify_manager: {to: supervisor, template: released}
      - escalate: {to: supervisor}
"""


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # nightly.py does `from crm_adapter import ...`, as it would run as a script
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, ModuleType]]:
    for name in ("crm_adapter", "nightly"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # undone after the test
    yield load("crm_adapter"), load("nightly")


@pytest.fixture
def fake_crm() -> Iterator[FakeServer]:
    s = FakeServer(default=Reply(201, '{"id": "crm-1"}'))
    yield s
    s.close()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """A SQLite CRM: Acme forgotten (task + tag), Globex forgotten long enough to be released to Ivan."""
    rules, db = tmp_path / "rules.yaml", tmp_path / "crm.db"
    rules.write_text(RULES, encoding="utf-8")
    store = retainer.open_store(f"sqlite:///{db}", timezone="Europe/Moscow")
    store.add(
        managers=[
            {"id": "m1", "name": "Anna", "team": "north", "supervisor_id": "m9"},
            {"id": "m2", "name": "Ivan", "team": "north", "supervisor_id": "m9"},
            {"id": "m9", "name": "Olga"},
        ],
        clients=[
            {"id": "c1", "manager_id": "m1", "name": "Acme"},
            {"id": "north/c2", "manager_id": "m1", "name": "Globex"},  # a slash that must not split the URL path
        ],
        touches=[
            {"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00", "kind": "call"},
            {"id": "t2", "client_id": "north/c2", "at": "2025-12-01T10:00", "kind": "call"},
        ],
    )
    store.close()
    return rules, db


def ledger(db: Path) -> dict[str, LedgerEntry]:
    store = retainer.open_store(f"sqlite:///{db}", create=False)
    try:
        return {f"{e.type} {e.client_id}": e for e in store.ledger()}
    finally:
        store.close()


def sent(fake_crm: FakeServer) -> dict[str, tuple[str, str, Any]]:
    """Idempotency-Key -> (method, path, JSON body) of every request the CRM received."""
    return {r.headers["idempotency-key"]: (r.method, r.path, r.json()) for r in fake_crm.requests}


def test_nightly_delivers_every_action_to_its_endpoint(
    example: tuple[ModuleType, ModuleType],
    files: tuple[Path, Path],
    fake_crm: FakeServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = example[1].main(
        ["--rules", str(files[0]), "--data", str(files[1]), "--as-of", AS_OF, "--crm-url", fake_crm.url + "/api/"]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out) == {
        "new": 7, "duplicate": 0, "suppressed": 0, "done": 7, "dead": 0, "failed": 0, "no_handler": 0, "left": 0,
        "cancelled": 0,
    }  # fmt: skip
    entries = ledger(files[1])
    assert {e.status for e in entries.values()} == {"done"}
    got = sent(fake_crm)
    assert len(fake_crm.requests) == len(got) == 7  # one request per action, each with its own key
    task = entries["create_task c1"]
    assert got[task.id] == (
        "POST",
        "/api/tasks",
        {
            "client_id": "c1",
            "assignee_id": "m1",
            "title": "Call Acme",
            "due_date": "2026-03-17",
            "kind": "call",
            "note": task.action.reason,
        },
    )
    assert got[entries["create_task north/c2"].id][:2] == ("POST", "/api/tasks")
    assert got[entries["reassign north/c2"].id] == ("PATCH", "/api/clients/north%2Fc2", {"manager_id": "m2"})
    note = got[entries["notify_manager north/c2"].id]
    assert note[:2] == ("POST", "/api/notifications")
    assert (note[2]["type"], note[2]["to_manager_id"], note[2]["template"]) == ("notify_manager", "m9", "released")
    escalation = got[entries["escalate north/c2"].id]
    assert escalation[:2] == ("POST", "/api/notifications")
    assert escalation[2]["type"] == "escalate" and escalation[2]["to_manager_id"] == "m9"
    tag = entries["tag c1"]
    assert got[tag.id] == ("POST", "/api/events", json.loads(tag.payload))
    assert all(r.headers["content-type"] == "application/json" for r in fake_crm.requests)
    assert all("authorization" not in r.headers for r in fake_crm.requests)


def test_a_rerun_sends_nothing_new(
    example: tuple[ModuleType, ModuleType],
    files: tuple[Path, Path],
    fake_crm: FakeServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--rules", str(files[0]), "--data", str(files[1]), "--as-of", AS_OF, "--crm-url", fake_crm.url]
    assert example[1].main(args) == 0
    capsys.readouterr()
    assert example[1].main(args) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["new"], counts["duplicate"], counts["done"]) == (0, 7, 0)
    assert len(fake_crm.requests) == 7


def test_a_422_is_a_dead_action_naming_the_status(
    example: tuple[ModuleType, ModuleType],
    files: tuple[Path, Path],
    fake_crm: FakeServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_crm.reject_next(422, '{"error": "m2 is on leave"}')  # the first request: the reassignment
    args = ["--rules", str(files[0]), "--data", str(files[1]), "--as-of", AS_OF, "--crm-url", fake_crm.url]
    assert example[1].main(args) == 1
    out = capsys.readouterr()
    # the move, and the note and escalation its rule planned with it ("moved to m2" would be false), unsent
    assert json.loads(out.out)["dead"] == 3 and json.loads(out.out)["done"] == 4
    dead, *with_it = sorted((e for e in ledger(files[1]).values() if e.status == "dead"),
                            key=lambda e: (e.type != "reassign", e.type))  # fmt: skip
    assert [(e.type, e.attempts) for e in with_it] == [("escalate", 0), ("notify_manager", 0)]
    assert all("went dead (PermanentError" in (e.last_error or "") for e in with_it)
    assert dead.id == fake_crm.requests[0].headers["idempotency-key"]  # the rejected request
    assert dead.attempts == 1
    assert dead.last_error is not None
    assert dead.last_error.startswith("PermanentError: PATCH ") and "422" in dead.last_error
    assert "m2 is on leave" in dead.last_error and dead.last_error.endswith("(not retried)")
    assert f"dead {dead.id}: " in out.err and "422" in out.err
    assert len(fake_crm.requests) == 5

    assert example[1].main(args) == 0  # dead waits for a person: the next night does not retry it
    assert len(fake_crm.requests) == 5


def test_nightly_runs_as_a_script(files: tuple[Path, Path], fake_crm: FakeServer) -> None:
    """As cron would run it: `python examples/adapter/nightly.py ...`, the adapter found next to it."""
    argv = ["--rules", str(files[0]), "--data", str(files[1]), "--as-of", AS_OF, "--crm-url", fake_crm.url]
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "nightly.py"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={"CRM_TOKEN": "from-env", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["done"] == 7
    assert {r.headers["authorization"] for r in fake_crm.requests} == {"Bearer from-env"}


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--data", "{tmp}/missing.db", "database not found"),
        ("--rules", "{tmp}/missing.yaml", "rule file not found"),
        ("--as-of", "2026-13-01", "invalid as_of"),
        ("--crm-url", "crm.example/api", "must start with http:// or https://"),
    ],
)
def test_bad_input_exits_2(
    example: tuple[ModuleType, ModuleType],
    files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    option: str,
    value: str,
    message: str,
) -> None:
    given = {"--rules": str(files[0]), "--data": str(files[1]), "--as-of": AS_OF, "--crm-url": "http://127.0.0.1:1"}
    given[option] = value.format(tmp=tmp_path)
    assert example[1].main([x for kv in given.items() for x in kv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists()


# ------------------------------------------------------------------ the handler alone, through Engine.run


@pytest.fixture
def engine(files: tuple[Path, Path]) -> Iterator[retainer.Engine]:
    rules = retainer.load_rules(files[0])
    store = retainer.open_store(f"sqlite:///{files[1]}", timezone=rules.timezone, create=False)
    yield retainer.Engine(rules, store)
    store.close()


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_retryable_answers_are_retried_with_the_same_key(
    example: tuple[ModuleType, ModuleType], engine: retainer.Engine, fake_crm: FakeServer, status: int
) -> None:
    clock = FakeClock()
    fake_crm.queue(status)  # the first request of the night is turned away once
    with example[0].ExampleCRMHandler(fake_crm.url, token="s3cret") as handler:
        report = engine.run(AS_OF, handlers=handler, retry=Retry(max_attempts=3), clock=clock, sleep=clock.sleep)
    assert report.ok and report.counts()["done"] == 7
    first, *rest = sorted(engine.store.ledger(), key=lambda e: e.type != "reassign")  # in delivery order
    assert first.attempts == 2 and {e.attempts for e in rest} == {1} and clock.sleeps == [1.0]
    assert len(fake_crm.requests) == 8
    keys = [r.headers["idempotency-key"] for r in fake_crm.requests]
    rejected, retried = fake_crm.requests[0], fake_crm.requests[keys.index(first.id, 1)]
    assert rejected.headers["idempotency-key"] == retried.headers["idempotency-key"] == first.id
    assert rejected.body == retried.body
    # the moved client's other actions wait for its move: the CRM sees the new owner first
    same_client = [i for i, e in enumerate(keys) for x in rest if x.id == e and x.client_id == first.client_id]
    assert same_client and min(same_client) > keys.index(first.id, 1)
    assert {r.headers["authorization"] for r in fake_crm.requests} == {"Bearer s3cret"}


def test_a_crm_that_is_down_is_retried_then_dead(
    example: tuple[ModuleType, ModuleType], engine: retainer.Engine
) -> None:
    clock = FakeClock()
    url = closed_port_url().removesuffix("/hook")
    with example[0].ExampleCRMHandler(url, timeout=2.0) as handler:
        report = engine.run(AS_OF, handlers=handler, retry=Retry(max_attempts=2, stop_after=None), clock=clock,
                            sleep=clock.sleep)
    # the released client's other actions wait for its move's retry, so theirs comes a backoff later
    assert report.counts()["dead"] == 7 and clock.sleeps == [1.0, 1.0]
    # the release's note and escalation go dead with their move, unsent
    notes = [e for e in engine.store.ledger() if e.type in ("notify_manager", "escalate")]
    assert notes and {(e.status, e.attempts) for e in notes} == {("dead", 0)}
    entries = [e for e in engine.store.ledger() if e not in notes]
    assert {(e.status, e.attempts) for e in entries} == {("dead", 2)}
    assert all(
        (e.last_error or "").startswith(f"ConnectionError: {'PATCH' if e.type == 'reassign' else 'POST'} ")
        for e in entries
    )
    assert all(f"{url}/" in (e.last_error or "") and "failed:" in (e.last_error or "") for e in entries)


def test_a_reassign_without_target_is_refused(example: tuple[ModuleType, ModuleType]) -> None:
    action = Reassign(
        id="x", key="k", rule="release", client_id="c1", category="retention", reason="r",
        as_of="2026-03-15T00:00:00+00:00", from_manager_id="m1", to_manager_id=None,
    )  # fmt: skip
    handler = example[0].ExampleCRMHandler("http://127.0.0.1:1")
    with pytest.raises(PermanentError, match="no target manager"):
        handler.handle(action)
    handler.close()


def test_a_crm_that_does_not_answer_makes_the_night_fail(
    example: tuple[ModuleType, ModuleType],
    files: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found by a new-user review: with the CRM down, the handler was given up on, nothing was delivered,
    and the job exited 0, so cron mailed nobody."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["--rules", str(files[0]), "--data", str(files[1]), "--as-of", AS_OF,
            "--crm-url", f"http://127.0.0.1:{port}/api", "--timeout", "1"]  # fmt: skip
    assert example[1].main(args) == 1
    out = capsys.readouterr()
    counts = json.loads(out.out)
    assert counts["done"] == 0 and counts["dead"] == 0 and counts["failed"] + counts["left"] == 7
    assert "nightly: gave up on" in out.err and "actions wait for the next run" in out.err
    assert {e.status for e in ledger(files[1]).values()} <= {"pending", "failed"}  # nothing lost
