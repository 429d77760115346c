"""What a host writes against retainer's typed API (checked by tests/test_typing.py with mypy --strict)."""

from __future__ import annotations

import retainer
from retainer.adapters import CallbackHandler, Handlers
from retainer.testing import RecordingHandler


def create_task(action: retainer.Action) -> dict[str, str]:  # a CRM client's call returns its response
    assert isinstance(action, retainer.CreateTask)
    return {"assignee": action.assignee_id or ""}


handlers: Handlers = {"create_task": CallbackHandler(create_task), "*": RecordingHandler()}


def nightly(engine: retainer.Engine, path: str) -> int:
    report = engine.run("2026-03-01", handlers=handlers)
    with open(path, "wb") as f:
        for piece in report.plan.json_pieces():
            f.write(piece)
    engine.run("2026-03-02", handlers=CallbackHandler(create_task))
    return 0 if report.ok else 1


clients = [retainer.Client(id="c1", manager_id="m1", tags=["vip"]), retainer.Client(id="c2", manager_id="m1",
                                                                                   tags={"key-account"})]
