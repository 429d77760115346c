"""The rule file as pydantic models: what analysts write, validated before anything runs.

`retainer schema` prints `json_schema()` (`RuleFile.model_json_schema()`, with the inline ladder step), so
editors can complete rule files and the reference docs cannot drift from the code. Semantics that need
the whole file (feature names, placeholders, references between rules) are checked afterwards by
`loader.compile_rules`.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
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


KNOWN_CHANNELS = ("any_outbound", "call", "email", "meeting", "message", "sms", "comment", "document")


def _channel(v: str) -> str:
    """Channels compare in lower case (`SMS` is sms); a close miss of a known one is a typo, any other name
    may be the CRM's own channel (whatsapp)."""
    v = v.strip().lower()
    if v not in KNOWN_CHANNELS:
        hint = did_you_mean(v, KNOWN_CHANNELS)
        if hint:
            raise ValueError(f"channel {v!r}{hint}")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- actions (the `then:` list)

Recipient = Annotated[str, Field(description="manager (the client's), supervisor, or a manager id")]


class CreateTaskSpec(_Model):
    title: str = "Contact {client.name}: no activity for {days_since_activity} days"
    due_in: DurationField = Field(default_factory=lambda: parse_duration("1d"))
    assignee: Recipient = "manager"
    kind: str | None = "call"
    options: list[str] | None = Field(
        default=None, description="answers the manager picks from when closing the task (win-back churn reasons)"
    )


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

    @field_validator("channel")
    @classmethod
    def _channel(cls, v: str) -> str:
        return _channel(v)


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


def _shorthand(field: str, spec: type[BaseModel]) -> Any:
    """`tag: churned` for `tag: {tag: churned}`; the JSON Schema says so too (editors accept both)."""
    return BeforeValidator(lambda v: {field: v} if isinstance(v, str) else v, json_schema_input_type=str | spec | None)


class ActionSpec(_Model):
    """Exactly one key: the action type."""

    create_task: CreateTaskSpec | None = None
    reassign: ReassignSpec | None = None
    notify_manager: NotifyManagerSpec | None = None
    notify_client: NotifyClientSpec | None = None
    escalate: EscalateSpec | None = None
    tag: Annotated[TagSpec | None, _shorthand("tag", TagSpec)] = None
    untag: Annotated[TagSpec | None, _shorthand("tag", TagSpec)] = None
    propose_offer: ProposeOfferSpec | None = None
    create_deal: CreateDealSpec | None = None
    start_process: Annotated[StartProcessSpec | None, _shorthand("process", StartProcessSpec)] = None

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


CATEGORY_DOC = ("what the actions are for: collection, retention, service or development (priority, caps, "
                "cool-off and no_marketing look at it)")


class _RuleBase(_Model):
    id: RuleId = Field(description="unique rule id; part of every action key")
    description: str | None = Field(default=None, description="free text; a generic rule's action reason when set")
    enabled: bool = Field(default=True, description="`false` keeps the rule in the file without evaluating it")
    category: Category = Field(default="retention", description=CATEGORY_DOC)
    when: Condition | None = Field(default=None, description="extra condition every match must meet")
    then: list[ActionSpec] | None = Field(default=None, description="the actions to plan (default: the kind's own)")


def _not_now(d: Duration) -> Duration:
    """`after: 0d` made every client forgotten every night ("no activity for 0 days" for one called that
    morning): refused, as a window of no length is."""
    if not (d.months or d.days or d.hours):
        raise ValueError(f"must be longer than 0, not {d}: a client is forgotten after some time without "
                         f"activity (e.g. 60d)")
    return d


#: how long without activity a client is forgotten after (a forgotten rule's `after`, and its overrides')
ForgottenAfter = Annotated[DurationField, AfterValidator(_not_now)]


class Override(_Model):
    when: Condition
    after: ForgottenAfter


class ActivitySpec(_Model):
    """Which facts count as activity (default: all of them)."""

    sources: list[Literal["touches", "tasks", "deals", "invoices"]] = Field(
        default_factory=lambda: ["touches", "tasks", "deals", "invoices"]
    )
    kinds: list[Literal["call", "email", "meeting", "message", "sms", "comment", "document"]] | None = None
    directions: list[Literal["inbound", "outbound", "internal"]] | None = None


class GenericRule(_RuleBase):
    kind: Literal["generic"] = Field(default="generic", description="may be omitted for generic rules")
    when: Condition = Field(description="the condition a client must meet")
    episode: str | None = Field(
        default=None, description="feature whose value identifies an episode (default: once per client)"
    )
    then: list[ActionSpec] = Field(min_length=1, description="the actions to plan for each matching client")


class ForgottenRule(_RuleBase):
    kind: Literal["forgotten"] = Field(description="an active client whose last activity is at least `after` ago")
    after: ForgottenAfter
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
    kind: Literal["release"] = Field(
        description="a client still forgotten `grace` after it became forgotten: give it to another manager")
    forgotten_rule: RuleId
    grace: DurationField = Field(default_factory=lambda: parse_duration("0d"))
    unless_future_task: bool = True


Money = Annotated[Decimal, Field(ge=0)]


class ChurnedRule(_RuleBase):
    """Bought regularly, then stopped: at least `min_orders` invoices within `lookback`, and none for
    `silence` (or `silence_factor` times the client's own median gap between invoices)."""

    kind: Literal["churned"] = Field(
        description="a buyer who stopped buying (default: tag churned, start_process winback)")
    min_orders: int = Field(default=2, ge=1, description="invoices needed within lookback to count as a buyer")
    lookback: DurationField = Field(default_factory=lambda: parse_duration("365d"),
                                    description="the window min_orders are counted in")
    silence: DurationField | None = Field(default=None, description="no invoice for this long (default 90d)")
    silence_factor: Decimal | None = Field(
        default=None, gt=0, description="no invoice for this many times the client's median gap between invoices"
    )
    min_silence: DurationField = Field(
        default_factory=lambda: parse_duration("30d"), description="floor for silence_factor (weekly buyers)"
    )

    @model_validator(mode="after")
    def _one_silence(self) -> ChurnedRule:
        if self.silence is not None and self.silence_factor is not None:
            raise ValueError("give silence or silence_factor, not both")
        return self


WINBACK_REASONS = ["bad_product", "bad_service", "price", "other", "survey_needed"]


class WinbackRule(_RuleBase):
    """Seed 000: a task to find out why a valuable churned client left, then next steps per reason."""

    kind: Literal["winback"] = Field(description="seed 000's win-back process for valuable churned clients")
    churned_rule: RuleId | None = Field(default=None, description="the churned rule (default: the only one)")
    min_revenue: Money | None = Field(default=None, description="revenue within lookback at least this")
    lookback: DurationField | None = Field(default=None, description="revenue window (default: the churned rule's)")
    classes: list[Literal["A", "B", "C"]] | None = Field(default=None, description="or an ABC class among these")
    task: CreateTaskSpec = Field(
        default_factory=lambda: CreateTaskSpec(
            title="Find out why {client.name} stopped buying ({days_since_last_invoice} days without an order)",
            due_in=parse_duration("3d"),
            options=list(WINBACK_REASONS),
        ),
        description="step 1: the 'determine the churn reason' task",
    )
    outcome_field: str = Field(default="churn_reason", description="the outcome key the host records the reason in")

    @field_validator("task")
    @classmethod
    def _default_options(cls, v: CreateTaskSpec) -> CreateTaskSpec:
        # a custom title must not lose the answers the manager picks from (and on_outcome is checked against)
        return v if v.options is not None else v.model_copy(update={"options": list(WINBACK_REASONS)})
    on_outcome: dict[str, list[ActionSpec]] = Field(
        default_factory=dict, description="reason -> the actions of the next step"
    )


class UnpaidRule(_RuleBase):
    """An invoice issued and not paid, with no activity since, `after` its issue."""

    kind: Literal["unpaid"] = Field(description="an unpaid invoice nobody followed up (one task per invoice)")
    category: Category = Field(default="collection", description=CATEGORY_DOC)
    after: DurationField = Field(default_factory=lambda: parse_duration("7d"), description="time since issue")
    activity: ActivitySpec | None = Field(
        default=None, description="which facts since the issue count as following it up (default: all of them)"
    )


class LadderStep(_Model):
    """One rung of a dunning ladder: `after` past due, one action written inline
    (`{after: 3d, notify_client: ...}`) or several under `then:`."""

    after: DurationField = Field(description="time past the invoice's due date")
    then: list[ActionSpec] = Field(min_length=1, description="the step's actions (or one action inline)")

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "after" not in data:
            raise ValueError("a step needs after: how long past the due date it fires, e.g. {after: 10d, ...}")
        if "then" not in data:
            rest = {k: v for k, v in data.items() if k != "after"}
            if not rest:
                raise ValueError("a step needs an action, e.g. {after: 10d, notify_client: {template: reminder}}")
            return {"after": data["after"], "then": [rest]}
        return data


class DebtorRule(_RuleBase):
    """A dunning ladder per overdue invoice, counted from its due date; payment stops it."""

    kind: Literal["debtor"] = Field(description="a dunning ladder per overdue invoice")
    category: Category = Field(default="collection", description=CATEGORY_DOC)
    steps: list[LadderStep] = Field(min_length=1, description="the rungs; each fires once per invoice")
    min_amount: Money = Field(default=Decimal(0), description="ignore invoices with less outstanding")

    @field_validator("steps")
    @classmethod
    def _distinct(cls, v: list[LadderStep]) -> list[LadderStep]:
        seen = [str(s.after) for s in v]
        if len(set(seen)) != len(seen):
            raise ValueError(f"two steps with the same after ({', '.join(seen)})")
        return v


class EscalateRule(_RuleBase):
    """Complain to the supervisor when nothing helped."""

    kind: Literal["escalate"] = Field(description="complain to the supervisor when nothing helped")
    forgotten_rule: RuleId | None = Field(
        default=None, description="escalate a released client that this forgotten rule finds forgotten again"
    )
    watch_rule: RuleId | None = Field(default=None, description="or: escalate when this rule's action is unresolved")
    after: DurationField | None = Field(
        default=None, description="watch_rule: unresolved this long; forgotten_rule: extra days after the threshold"
    )

    @model_validator(mode="after")
    def _one_mode(self) -> EscalateRule:
        if (self.forgotten_rule is None) == (self.watch_rule is None):
            raise ValueError("give exactly one of forgotten_rule or watch_rule")
        if self.watch_rule is not None and self.after is None:
            raise ValueError("watch_rule needs after (how long the action may stay unresolved)")
        return self


class RepeatSaleRule(_RuleBase):
    """The last won deal is `after` old and nothing is open: time to sell again."""

    kind: Literal["repeat_sale"] = Field(description="time to sell again: the last won deal is old, none open")
    category: Category = Field(default="development", description=CATEGORY_DOC)
    after: DurationField = Field(description="time since the last won deal closed")


class OverdueTasksRule(_RuleBase):
    """A manager-level rule: too many open tasks overdue -> the supervisor hears of it."""

    kind: Literal["overdue_tasks"] = Field(description="a manager with too many overdue tasks (about managers)")
    count: int = Field(ge=1, description="at least this many overdue tasks")
    after: DurationField = Field(default_factory=lambda: parse_duration("1d"), description="overdue by this much")
    every: Literal["day", "week", "month"] = Field(default="week", description="at most one escalation per period")


Rule = Annotated[
    GenericRule
    | ForgottenRule
    | ReleaseRule
    | ChurnedRule
    | WinbackRule
    | UnpaidRule
    | DebtorRule
    | EscalateRule
    | RepeatSaleRule
    | OverdueTasksRule,
    Field(discriminator="kind"),
]

# ---------------------------------------------------------------- policies

Percent = Annotated[
    Decimal,
    BeforeValidator(lambda v: Decimal(v[:-1].strip()) / 100 if isinstance(v, str) and v.strip().endswith("%") else v),
    WithJsonSchema({"anyOf": [{"type": "string", "pattern": r"^\d+(\.\d+)?\s*%$"}, {"type": "number"}],
                    "description": "20% or 0.2"}),
]




#: (months, days, hours) -> the calendar window it can be
_PERIODS = {(0, 1, 0): "1d", (0, 7, 0): "1w", (1, 0, 0): "1mo"}


def _positive(d: Duration, name: str) -> Duration:
    """A window of no length counts nothing (a cap) or holds everything (no spend in it): refused."""
    if not (d.months or d.days or d.hours):
        raise ValueError(f"{name} must be longer than 0, not {d}")
    return d


class Cap(_Model):
    """At most `limit` contacts per client in a window, by category or by channel."""

    category: Category | None = Field(default=None, description="count actions (and CRM offers) of this category")
    channel: str | None = Field(default=None, description="any_outbound, or a channel/touch kind such as email, sms")
    limit: int = Field(ge=0, description="at most this many per client in the window")
    per: DurationField = Field(description="the window's length; calendar windows: 1d, 1w or 1mo")
    window: Literal["rolling", "calendar"] = Field(
        default="rolling", description="rolling: the last `per` up to as_of; calendar: this day, week or month")
    categories: list[Category] | None = Field(
        default=None, description="a channel cap on these categories' actions only, e.g. [retention, development] "
        "so that dunning always goes out (the CRM's touches count whatever their purpose)")

    @model_validator(mode="after")
    def _one_scope(self) -> Cap:
        if (self.category is None) == (self.channel is None):
            raise ValueError("a cap has exactly one of category or channel")
        if self.categories is not None and self.channel is None:
            raise ValueError("categories narrows a channel cap; a category cap already has its category")
        _positive(self.per, "per")
        if self.window == "calendar" and self.period() is None:
            raise ValueError(f"a calendar window is a day, week or month (per: 1d, 1w or 1mo), not {self.per}")
        return self

    def period(self) -> str | None:
        """A calendar window's unit, by value (P1W is 1w)."""
        return _PERIODS.get((self.per.months, self.per.days, self.per.hours))

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, v: str | None) -> str | None:
        return None if v is None else _channel(v)

    def label(self) -> str:
        scope = self.category or f"channel {self.channel}"
        if self.categories:
            scope += f" ({', '.join(self.categories)})"
        return f"{scope}: {self.limit} per {self.per} {self.window}"


class SpendGrowth(_Model):
    """No offer that raises a client's spend by more than `max` (seed 004)."""

    max: Percent = Field(default=Decimal("0.2"), ge=0, description="the largest growth allowed (equal is allowed)")

    @field_validator("max", mode="before")
    @classmethod
    def _share(cls, v: Any) -> Any:
        n = v
        if isinstance(v, str) and not v.strip().endswith("%"):  # "20" from a JSON form means 20 %, not 2000 %
            with contextlib.suppress(ArithmeticError):
                n = Decimal(v.strip())
        if not isinstance(n, str | bool) and isinstance(n, int | float | Decimal) and n > 1:
            raise ValueError(f"{v} would allow +{n * 100}%: write {n}% (or {Decimal(str(n)) / 100} as a share)")
        return v
    window: DurationField = Field(default_factory=lambda: parse_duration("90d"),
                                  description="spend = invoices issued within this window")
    allow_without_baseline: bool = Field(default=False, description="offer to clients with no spend in the window")

    _window = field_validator("window")(lambda v: _positive(v, "window"))


class Cooloff(_Model):
    """No selling right after a promotion ends (seed 004)."""

    after: Literal["offer_end"] = Field(default="offer_end", description="counted from the latest offer's ends_at")
    for_: DurationField = Field(alias="for", description="how long the cool-off lasts")
    blocks: list[Category] = Field(default_factory=lambda: ["development"], description="categories held back")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _for = field_validator("for_")(lambda v: _positive(v, "for"))


class Unprofitable(_Model):
    """No development for loss-making clients (seed 004)."""

    window: DurationField = Field(default_factory=lambda: parse_duration("180d"),
                                  description="profit = revenue minus cost_to_serve over this window")

    _window = field_validator("window")(lambda v: _positive(v, "window"))


class Policies(_Model):
    do_not_contact: Literal[True] = Field(
        default=True, description="always on: no action is planned for a do_not_contact client"
    )
    no_marketing: bool = Field(
        default=True,
        description="on unless set false: no_marketing clients get no retention/development messages, offers or deals",
    )
    caps: list[Cap] = Field(default_factory=list, description="contact-frequency caps per client")
    priority: list[Category] | None = Field(
        default=None, description="categories, highest first: e.g. [collection, retention, service, development]"
    )
    spend_growth: SpendGrowth | None = Field(default=None, description="cap on spend growth by offers")
    cooloff: Cooloff | None = Field(default=None, description="pause after an offer ends")
    no_development_for_unprofitable: Unprofitable | None = Field(
        default=None, description="no development actions for clients whose profit is negative")
    manager_daily_task_limit: int | None = Field(
        default=None, ge=1, description="at most this many retainer tasks per manager per day; the rest waits")

    @field_validator("priority")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("a category appears twice in priority")
        if v is not None and len(v) < 2:  # `priority: []` once meant the default order: say what it does
            raise ValueError("priority orders categories: name at least two, e.g. [retention, development] "
                             "(leave it out for no priority)")
        return v


class AbcSpec(_Model):
    """How `abc_class` is computed for clients whose data has none."""

    window: DurationField = Field(default_factory=lambda: parse_duration("365d"), description="revenue window")
    a: Percent = Field(default=Decimal("0.8"), description="A: the clients making the first a of revenue")
    b: Percent = Field(default=Decimal("0.15"), description="B: the next b; C the rest")

    @model_validator(mode="after")
    def _shares(self) -> AbcSpec:
        if not (self.a > 0 and self.b >= 0 and self.a + self.b <= 1):
            raise ValueError("abc shares: 0 < a and a + b <= 100%")
        return self


class RuleFile(_Model):
    version: Literal[1] = 1
    timezone: str = "UTC"
    features: dict[str, FeatureDef] = Field(default_factory=dict)
    templates: dict[str, TemplateDef] = Field(default_factory=dict)
    rules: list[Rule] = Field(min_length=1)
    policies: Policies = Field(default_factory=Policies)
    abc: AbcSpec | None = Field(default=None, description="how abc_class is computed when the data lacks it")

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


def json_schema() -> dict[str, Any]:
    """The rule file's JSON Schema (`retainer schema`): `RuleFile.model_json_schema()`, with a ladder step
    written as the validator reads it: `after` with `then:`, or with exactly one action inline, each action
    as `ActionSpec` describes it under `then:` (the generated schema knew only `then:`, so it refused the
    ladder of every example)."""
    out = RuleFile.model_json_schema()
    step = out["$defs"]["LadderStep"]
    for name, action in out["$defs"]["ActionSpec"]["properties"].items():
        step["properties"][name] = {**action, "description": f"the step's one action, inline: {name}"}
    step["required"] = ["after"]
    step["oneOf"] = [{"required": ["then"]}, *({"required": [name]} for name in ActionSpec.model_fields)]
    return out
