"""The tiny CRM the adapter tests deliver from: one manager (with a supervisor), one forgotten client."""

from __future__ import annotations

from typing import Any

import retainer
from retainer.stores import Store

AS_OF = "2026-03-15"
#: One client nobody touched since New Year: exactly one create_task action as of AS_OF.
FORGOTTEN = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"}]}
#: The same client, three action types: create_task, notify_manager (to the supervisor) and tag.
THREE_TYPES = {
    "rules": [
        {
            "id": "forgotten",
            "kind": "forgotten",
            "after": "60d",
            "then": [
                {"create_task": {"title": "Call {client.name}", "due_in": "2d"}},
                {"notify_manager": {"to": "supervisor", "template": "forgotten"}},
                {"tag": "forgotten"},
            ],
        }
    ]
}


def fill(store: Store) -> Store:
    store.add(
        managers=[{"id": "m1", "name": "Anna", "supervisor_id": "m9"}, {"id": "m9", "name": "Olga"}],
        clients=[{"id": "c1", "manager_id": "m1", "name": "Acme"}],
        touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00", "kind": "call"}],
    )
    return store


def engine(store: Store, rules: dict[str, Any] = FORGOTTEN) -> retainer.Engine:
    return retainer.Engine(retainer.load_rules(rules), store)
