"""The rule file as pydantic models: what analysts write, validated before anything runs.

`retainer schema` prints `RuleFile.model_json_schema()`, so editors can complete rule files and the
reference docs cannot drift from the code. Semantics that need the whole file (feature names,
placeholders, references between rules) are checked afterwards by `loader.compile_rules`.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ..errors import did_you_mean
from ..timeutil import Duration, get_tz, parse_duration

DURATION_PATTERN = r"^(\d+\s*(h|d|w|mo|y)|P.*|\d+)$"

DurationField = Annotated[
    Duration,
    BeforeValidator(lambda v: v if isinstance(v, Duration) else parse_duration(v)),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "integer", "minimum": 0}],
            "description": "45d, 6w, 2mo (calendar months), 1y, 36h, ISO 8601 (P60D), or a number of days",
        }
    ),
]

RuleId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)]
Category = Literal["collection", "retention", "service", "development"]

#: A condition: `{all: [...]}`, `{any: [...]}`, `{not: {...}}`, or leaves `{feature: {op: value}}`
#: (a bare value means `eq`). Parsed into an AST by `conditions.parse_condition`.
Condition = Annotated[
    dict[str, Any],
    WithJsonSchema(
        {
            "type": "object",
            "description": "all/any/not, or {feature: {op: value}} with ops eq ne gt gte lt lte in not_in "
            "between contains exists older_than; a bare value means eq",
            "minProperties": 1,
        }
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- actions (the `then:` list)

Recipient = Annotated[str, Field(description="manager (the client's), supervisor, or a manager id")]


class CreateTaskSpec(_Model):
    title: str = "Contact {client.name}: no activity for {days_since_activity} days"
    due_in: DurationField = Field(default_factory=lambda: parse_duration("1d"))
    assignee: Recipient = "manager"
    kind: str | None = "call"


class ReassignSpec(_Model):
    strategy: Literal["least_loaded", "round_robin"] = "least_loaded"
    pool: list[str] | None = Field(default=None, description="candidate manager ids (default: all)")
    same_team: bool = False


class NotifyManagerSpec(_Model):
    to: Recipient = "manager"
    template: str


class NotifyClientSpec(_Model):
    channel: str = "email"
    template: str


class EscalateSpec(_Model):
    to: Recipient = "supervisor"
    template: str | None = None


class TagSpec(_Model):
    tag: str = Field(min_length=1)


class ProposeOfferSpec(_Model):
    offer: str
    amount: Decimal | None = None
    deliver: Literal["outbound", "next_inbound"] = "outbound"


class CreateDealSpec(_Model):
    title: str = "Repeat sale to {client.name}"
    amount: Decimal | None = None


class StartProcessSpec(_Model):
    process: str = Field(min_length=1)


def _shorthand(field: str) -> Any:
    return BeforeValidator(lambda v: {field: v} if isinstance(v, str) else v)


class ActionSpec(_Model):
    """Exactly one key: the action type."""

    create_task: CreateTaskSpec | None = None
    reassign: ReassignSpec | None = None
    notify_manager: NotifyManagerSpec | None = None
    notify_client: NotifyClientSpec | None = None
    escalate: EscalateSpec | None = None
    tag: Annotated[TagSpec | None, _shorthand("tag")] = None
    untag: Annotated[TagSpec | None, _shorthand("tag")] = None
    propose_offer: ProposeOfferSpec | None = None
    create_deal: CreateDealSpec | None = None
    start_process: Annotated[StartProcessSpec | None, _shorthand("process")] = None

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if len(data) != 1:
                raise ValueError(f"an action has exactly one key (its type), got {sorted(data) or 'none'}")
            ((k, v),) = data.items()
            if k not in cls.model_fields:
                hint = did_you_mean(str(k), cls.model_fields)
                raise ValueError(f"unknown action {k!r}{hint} (actions: {', '.join(cls.model_fields)})")
            if v is None:
                return {k: {}}
        return data

    @cached_property
    def type(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    @cached_property
    def params(self) -> Any:
        return getattr(self, self.type)


# ---------------------------------------------------------------- named features


class FeatureDef(_Model):
    """An aggregate over one kind of fact per client, e.g. `{count: touches, where: {...}, within: 30d}`."""

    count: str | None = Field(default=None, description="entity to count: touches, tasks, deals, ...")
    sum: str | None = Field(default=None, description="entity.field to sum, e.g. invoices.amount")
    min: str | None = None
    max: str | None = None
    where: dict[str, Any] = Field(default_factory=dict, description="field: value or {op: value}")
    within: DurationField | None = Field(default=None, description="only facts in this window up to as_of")
    by: str | None = Field(default=None, description="the time field the window applies to")

    @model_validator(mode="after")
    def _one_fn(self) -> FeatureDef:
        fns = [f for f in ("count", "sum", "min", "max") if getattr(self, f)]
        if len(fns) != 1:
            raise ValueError("a feature has exactly one of count, sum, min, max")
        return self

    @property
    def fn(self) -> str:
        return next(f for f in ("count", "sum", "min", "max") if getattr(self, f))

    @property
    def target(self) -> str:
        return getattr(self, self.fn)


class TemplateDef(_Model):
    subject: str | None = None
    body: str


# ---------------------------------------------------------------- rules


class _RuleBase(_Model):
    id: RuleId
    description: str | None = None
    enabled: bool = True
    category: Category = "retention"
    when: Condition | None = Field(default=None, description="extra condition every match must meet")
    then: list[ActionSpec] | None = None


class Override(_Model):
    when: Condition
    after: DurationField


class ActivitySpec(_Model):
    """Which facts count as activity (default: all of them)."""

    sources: list[Literal["touches", "tasks", "deals", "invoices"]] = Field(
        default_factory=lambda: ["touches", "tasks", "deals", "invoices"]
    )
    kinds: list[Literal["call", "email", "meeting", "message", "sms", "comment", "document"]] | None = None
    directions: list[Literal["inbound", "outbound", "internal"]] | None = None


class GenericRule(_RuleBase):
    kind: Literal["generic"] = "generic"
    when: Condition
    episode: str | None = Field(
        default=None, description="feature whose value identifies an episode (default: once per client)"
    )
    then: list[ActionSpec] = Field(min_length=1)


class ForgottenRule(_RuleBase):
    kind: Literal["forgotten"]
    after: DurationField
    overrides: list[Override] = Field(default_factory=list)
    statuses: list[Literal["active", "prospect", "archived"]] = Field(default_factory=lambda: ["active"])
    activity: ActivitySpec | None = None

    @field_validator("statuses")
    @classmethod
    def _no_archived(cls, v: list[str]) -> list[str]:
        if "archived" in v:
            raise ValueError("archived clients get nothing; remove 'archived' from statuses")
        return v


class ReleaseRule(_RuleBase):
    kind: Literal["release"]
    forgotten_rule: RuleId
    grace: DurationField = Field(default_factory=lambda: parse_duration("0d"))
    unless_future_task: bool = True


Rule = Annotated[GenericRule | ForgottenRule | ReleaseRule, Field(discriminator="kind")]


class Policies(_Model):
    do_not_contact: Literal[True] = Field(
        default=True, description="always on: no action is planned for a do_not_contact client"
    )


class RuleFile(_Model):
    version: Literal[1] = 1
    timezone: str = "UTC"
    features: dict[str, FeatureDef] = Field(default_factory=dict)
    templates: dict[str, TemplateDef] = Field(default_factory=dict)
    rules: list[Rule] = Field(min_length=1)
    policies: Policies = Field(default_factory=Policies)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        get_tz(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("rules"), list):
            data = dict(data)
            data["rules"] = [
                {**r, "kind": "generic"} if isinstance(r, dict) and "kind" not in r else r for r in data["rules"]
            ]
        return data
