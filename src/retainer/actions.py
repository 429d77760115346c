"""Actions: what a plan asks the host CRM to do. Frozen, typed, with a deterministic key and id.

`key` = rule, subject, episode and action type; `id = uuid5(NAMESPACE, key)`. The same episode
always yields the same key, so a ledger recognises a repeat however often retainer runs.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "NAMESPACE",
    "Action",
    "AnyAction",
    "CreateDeal",
    "CreateTask",
    "Escalate",
    "NotifyClient",
    "NotifyManager",
    "ProposeOffer",
    "Reassign",
    "StartProcess",
    "Suppression",
    "Tag",
    "Untag",
    "action_id",
    "parse_action",
]

#: Fixed namespace for action ids: never change it, or every ledger would see new actions.
NAMESPACE = uuid.UUID("6f1b3c2e-8d4a-5b7e-9c1f-2a3b4c5d6e7f")

Category = Literal["collection", "retention", "service", "development"]


_NS = NAMESPACE.bytes
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # RFC 4122 variant bits over a hex digit


def action_id(key: str) -> str:
    """`str(uuid.uuid5(NAMESPACE, key))`, spelled out from the hex digest: a plan makes one per action,
    and the stdlib's UUID object costs five times the hash."""
    x = hashlib.sha1(_NS + key.encode()).hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


class Action(BaseModel):
    """Fields every action carries; the subclasses add their own."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    type: str
    id: str
    key: str
    rule: str
    client_id: str | None  # None only for manager-level rules (overdue_tasks)
    category: Category
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    as_of: datetime

    @property
    def outbound(self) -> bool:
        """Contacts the client directly (what contact policies and channel caps are about)."""
        return False


class CreateTask(Action):
    type: Literal["create_task"] = "create_task"
    assignee_id: str | None
    title: str
    due_at: date
    task_kind: str | None = None
    options: list[str] | None = None  # answers to pick from when closing it (win-back churn reasons)


class Reassign(Action):
    type: Literal["reassign"] = "reassign"
    from_manager_id: str
    to_manager_id: str | None  # None only in a suppressed reassign (nobody was eligible)


class NotifyManager(Action):
    type: Literal["notify_manager"] = "notify_manager"
    to_manager_id: str | None
    template: str
    subject: str | None = None
    body: str | None = None


class NotifyClient(Action):
    type: Literal["notify_client"] = "notify_client"
    channel: str
    template: str
    subject: str | None = None
    body: str | None = None

    @property
    def outbound(self) -> bool:
        return True


class Escalate(Action):
    type: Literal["escalate"] = "escalate"
    to_manager_id: str
    about_manager_id: str | None = None
    template: str | None = None
    subject: str | None = None
    body: str | None = None


class Tag(Action):
    type: Literal["tag"] = "tag"
    tag: str


class Untag(Action):
    type: Literal["untag"] = "untag"
    tag: str


class ProposeOffer(Action):
    type: Literal["propose_offer"] = "propose_offer"
    offer: str
    amount: Decimal | None = None
    deliver: Literal["outbound", "next_inbound"] = "outbound"

    @property
    def outbound(self) -> bool:
        return self.deliver == "outbound"


class CreateDeal(Action):
    type: Literal["create_deal"] = "create_deal"
    title: str
    amount: Decimal | None = None


class StartProcess(Action):
    type: Literal["start_process"] = "start_process"
    process: str


AnyAction = Annotated[
    CreateTask
    | Reassign
    | NotifyManager
    | NotifyClient
    | Escalate
    | Tag
    | Untag
    | ProposeOffer
    | CreateDeal
    | StartProcess,
    Field(discriminator="type"),
]


@lru_cache(maxsize=1)
def _adapter() -> TypeAdapter[Any]:
    """Built on first use: a plan never validates its actions, and building costs start-up time."""
    return TypeAdapter(AnyAction)


ACTION_TYPES: dict[str, type[Action]] = {
    c.model_fields["type"].default: c  # type: ignore[misc]
    for c in (
        CreateTask,
        Reassign,
        NotifyManager,
        NotifyClient,
        Escalate,
        Tag,
        Untag,
        ProposeOffer,
        CreateDeal,
        StartProcess,
    )
}


def parse_action(data: dict[str, Any]) -> Action:
    """Rebuild an action from its JSON form (ledger rows, plan files)."""
    return _adapter().validate_python(data)  # type: ignore[no-any-return]


class Suppression(BaseModel):
    """An action a rule proposed and a policy (or the ledger) held back, with why."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    action: AnyAction
    reason_code: str
    detail: str
