"""Built-in rule kinds as presets over the generic machinery.

A preset turns its friendly parameters (`after`, `overrides`, `grace`, ...) into the same parts a
generic rule has: a condition AST, an episode feature, default actions, evidence and a reason. The
engine only ever sees `CompiledRule`s, so there is one evaluator for every kind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from ...errors import did_you_mean
from ...timeutil import parse_duration
from ..conditions import All, AnyOf, Leaf, Node, Not, OlderThan, Path, parse_condition
from ..features import (
    FeatureImpl,
    FeatureRegistry,
    _days,
    churn_silence_feature,
    norm_reason,
    outcome_feature,
    since_release_feature,
    unresolved_feature,
)
from ..schema import (
    ActionSpec,
    ChurnedRule,
    CreateDealSpec,
    CreateTaskSpec,
    DebtorRule,
    EscalateRule,
    EscalateSpec,
    ForgottenRule,
    GenericRule,
    OverdueTasksRule,
    ReassignSpec,
    ReleaseRule,
    RepeatSaleRule,
    StartProcessSpec,
    TagSpec,
    UnpaidRule,
    WinbackRule,
)


@dataclass(frozen=True)
class CompiledRule:
    id: str
    kind: str
    category: str
    condition: Node
    episode: str | None
    then: tuple[ActionSpec, ...]
    evidence: tuple[str, ...]
    reason: str
    threshold: OlderThan | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    subject: str = "client"  # client | invoice | manager: what one row of the evaluation is
    ladder: int | None = None  # rank of this step in a ladder (debtor): only the latest due step is sent
    suffix: str = ""  # appended to the episode: one key per ladder step / process step
    part: str | None = None  # "step 10d", "outcome price": which part of a multi-part rule this is
    #: an evidence column in days whose larger value is the older episode, where the episode is no date (an
    #: invoice id): which of the rule's actions goes first for a cap or a manager's slots (`policies.Guard`)
    age: str | None = None

    def features(self) -> set[str]:
        fs = set(self.condition.features()) | set(self.evidence) | set(self.aliases.values())
        if self.episode:
            fs.add(self.episode)
        return fs

    @cached_property
    def key_kinds(self) -> tuple[str, ...]:
        """The last part of the keys of the rule's actions in `then` order (`create_task`,
        `create_task#2`, ...), plus the escalation a failed release produces. Worked out once per rule:
        a plan asks for every match."""
        counts: Counter[str] = Counter()
        out = []
        for spec in self.then:
            counts[spec.type] += 1
            n = counts[spec.type]
            out.append(spec.type if n == 1 else f"{spec.type}#{n}")
        if self.reassign is not None and counts["escalate"] == 0:
            out.append("escalate")
        return tuple(out)

    @cached_property
    def silence(self) -> OlderThan | None:
        """The threshold without its `plus`: when the silence a release's episode names was reached, which
        a grace then extends (one object per rule, so a frame's memo of its durations is found again)."""
        if self.threshold is None or self.threshold.plus is None:
            return self.threshold
        return replace(self.threshold, plus=None)

    @cached_property
    def reassign(self) -> ReassignSpec | None:
        """The rule's reassignment, if one of its actions is one."""
        return next((s.reassign for s in self.then if s.reassign is not None), None)


@dataclass
class CompileContext:
    registry: FeatureRegistry
    tz: Any
    path: Path
    compiled: dict[str, CompiledRule]
    kinds: dict[str, str]  # rule id -> kind, for references
    definitions: dict[str, Any] = field(default_factory=dict)  # rule id -> its rule-file model

    def condition(self, raw: Any, sub: Path) -> Node:
        return parse_condition(raw, self.registry, self.tz, (*self.path, *sub))


class PresetError(ValueError):
    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Parts:
    condition: Node
    episode: str | None
    default_then: tuple[ActionSpec, ...]
    evidence: tuple[str, ...]
    reason: str
    threshold: OlderThan | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    then: tuple[ActionSpec, ...] | None = None  # a part's own actions (ladder steps, process steps)
    subject: str = "client"
    ladder: int | None = None
    suffix: str = ""
    part: str | None = None
    # where each of `then`'s actions is written in the rule (up to its fields), for errors that name the line:
    # ("steps", 2, "create_task") for a ladder step's; ("then", k, type) when not given
    then_at: tuple[tuple[Any, ...], ...] | None = None
    age: str | None = None


def describe(node: Node) -> str:
    """A one-line reading of a condition, used as the reason of generic rules."""
    if isinstance(node, Leaf):
        return node.text()
    if isinstance(node, OlderThan):
        return f"{node.feature} at least {node.default} ago"
    if isinstance(node, Not):
        return f"not ({describe(node.child)})"
    if isinstance(node, All | AnyOf):
        sep = " and " if isinstance(node, All) else " or "
        return sep.join(describe(c) for c in node.children)
    return repr(node)


def _generic(rule: GenericRule, ctx: CompileContext) -> Parts:
    cond = ctx.condition(rule.when, ("when",))
    if rule.episode is not None and rule.episode not in ctx.registry:
        raise PresetError(f"unknown episode feature {rule.episode!r}{did_you_mean(rule.episode, ctx.registry.names())}",
                          (*ctx.path, "episode"))
    return Parts(cond, rule.episode, (), tuple(sorted(cond.features())), rule.description or describe(cond))


def _narrowed(ctx: CompileContext, base: str, last: str, build: Callable[[str, str], FeatureImpl]) -> str:
    """`base` read over the activity `last` counts: `base` itself for every activity, else `base[key]` with the
    key of the `activity:` narrowing (`days_since_activity[1a2b3c4d]`), built (`build(name, doc)`) once per file."""
    if last == "last_activity_at":
        return base
    name = f"{base}[{last.split('[', 1)[1]}"
    if name not in ctx.registry.extra:
        ctx.registry.add(build(name, ctx.registry.get(base).doc))
    return name


def _activity_aliases(ctx: CompileContext, rule: ForgottenRule) -> tuple[str, dict[str, str]]:
    last, anchor = ctx.registry.activity(rule.activity)
    if last == "last_activity_at":
        return anchor, {}
    days = _narrowed(ctx, "days_since_activity", last, lambda name, doc: FeatureImpl(
        name, "int", doc, deps=(anchor,), compute=lambda f: _days(f.as_of, f.column(anchor))))  # fmt: skip
    return anchor, {"last_activity_at": last, "days_since_activity": days}


def _forgotten(rule: ForgottenRule, ctx: CompileContext) -> Parts:
    anchor, aliases = _activity_aliases(ctx, rule)
    cases: list[tuple[Node, Any]] = [(Leaf("attributes.forgotten_after", "exists", True), "attributes.forgotten_after")]
    for k, o in enumerate(rule.overrides):
        cases.append((ctx.condition(o.when, ("overrides", k, "when")), o.after))
    labels = ("client attribute forgotten_after", *(f"override #{k + 1}" for k in range(len(rule.overrides))))
    threshold = OlderThan(anchor, rule.after, tuple(cases), case_labels=labels)
    status = Leaf("status", "in", frozenset(rule.statuses))
    days = aliases.get("days_since_activity", "days_since_activity")
    return Parts(
        All((status, threshold)),
        anchor,
        (ActionSpec(create_task=CreateTaskSpec()),),
        (days, aliases.get("last_activity_at", "last_activity_at")),
        f"no activity for {{{days}}} days (threshold {{threshold}})",
        threshold,
        aliases,
    )


def _besides(node: Node, threshold: Node) -> Node:
    """A forgotten rule's condition without its threshold: what a release or an escalation keeps of it
    (its statuses, and the rule's own `when:`, which only the first used to be) while putting a longer
    threshold in its place."""
    if isinstance(node, All):
        kept = tuple(_besides(c, threshold) for c in node.children if c is not threshold)
        return kept[0] if len(kept) == 1 else All(kept)
    return node


def _release(rule: ReleaseRule, ctx: CompileContext) -> Parts:
    ref = ctx.compiled.get(rule.forgotten_rule)
    if ref is None or ref.kind != "forgotten" or ref.threshold is None:
        what = "is not a forgotten rule" if rule.forgotten_rule in ctx.kinds else "does not exist"
        hint = _rules_of(ctx, "forgotten", rule.forgotten_rule)
        raise PresetError(f"forgotten_rule {rule.forgotten_rule!r} {what}{hint}",
                          (*ctx.path, "forgotten_rule"))
    # `grace` extends every client's own threshold (hours and days may mix: docs/decisions.md)
    threshold = replace(ref.threshold, plus=rule.grace)
    parts: list[Node] = [_besides(ref.condition, ref.threshold), threshold]
    evidence = list(ref.evidence)
    if rule.unless_future_task:
        parts.append(Leaf("has_future_task", "eq", False))
        evidence.append("has_future_task")
    days = ref.aliases.get("days_since_activity", "days_since_activity")
    return Parts(
        All(tuple(parts)),
        ref.episode,
        (ActionSpec(reassign=ReassignSpec()),),
        tuple(evidence),
        f"no activity for {{{days}}} days, past the threshold plus grace ({{threshold}})"
        + (" and no future task" if rule.unless_future_task else ""),
        threshold,
        dict(ref.aliases),
    )


def _churned(rule: ChurnedRule, ctx: CompileContext) -> Parts:
    orders = f"orders_{rule.lookback}"
    status = Leaf("status", "eq", "active")
    leaves: list[Node] = [status, Leaf(orders, "gte", rule.min_orders)]
    if rule.silence_factor is not None:
        name = f"churn_silence[{rule.silence_factor}x gap in {rule.lookback}, min {rule.min_silence}]"
        if name not in ctx.registry.extra:
            ctx.registry.add(churn_silence_feature(name, rule.lookback, rule.silence_factor, rule.min_silence))
        leaves.append(Leaf(name, "exists", True))
        threshold = OlderThan(
            "last_invoice_at", rule.min_silence, ((Leaf(name, "exists", True), name),),
            case_labels=(f"{rule.silence_factor} x the median gap between orders",),
        )
    else:
        threshold = OlderThan("last_invoice_at", rule.silence or parse_duration("90d"))
    leaves.append(threshold)
    return Parts(
        All(tuple(leaves)),
        "last_invoice_at",
        (ActionSpec(tag=TagSpec(tag="churned")), ActionSpec(start_process=StartProcessSpec(process="winback"))),
        (orders, "last_invoice_at", "days_since_last_invoice"),
        f"{{{orders}}} orders within {rule.lookback}, none for {{days_since_last_invoice}} days "
        f"(threshold {{threshold}})",
        threshold,
    )


def _rules_of(ctx: CompileContext, kind: str | None, wrong: str, own: str = "") -> str:
    """What a reference to another rule could have named: a did-you-mean, else the rules of that kind."""
    ids = [rid for rid, k in ctx.kinds.items() if (kind is None or k == kind) and rid != own]
    if hint := did_you_mean(wrong, ids):
        return hint
    what = f"{kind} rules" if kind else "rules"
    return f"; the {what} in this file: {', '.join(ids)}" if ids else f"; there are no {what} in this file"


def _find(ctx: CompileContext, ref: str | None, kind: str, field_: str) -> CompiledRule:
    if ref is None:
        found = [rid for rid, k in ctx.kinds.items() if k == kind]
        if len(found) != 1:
            why = "there is none" if not found else f"there are several ({', '.join(sorted(found))})"
            raise PresetError(f"{field_} is needed: name the {kind} rule ({why})", (*ctx.path, "kind"))
        ref = found[0]
    got = ctx.compiled.get(ref)
    if got is None or got.kind != kind:
        what = f"is not a {kind} rule" if ref in ctx.kinds else "does not exist"
        raise PresetError(f"{field_} {ref!r} {what}{_rules_of(ctx, kind, ref)}", (*ctx.path, field_))
    return got


def _winback(rule: WinbackRule, ctx: CompileContext) -> list[Parts]:
    ref = _find(ctx, rule.churned_rule, "churned", "churned_rule")
    if rule.min_revenue is None and rule.classes is None:
        raise PresetError("say who is worth winning back: min_revenue, classes, or both", (*ctx.path, "kind"))
    lookback = rule.lookback or ctx.definitions[ref.id].lookback
    revenue = f"revenue_{lookback}"
    value: list[Node] = []
    if rule.min_revenue is not None:
        value.append(Leaf(revenue, "gte", rule.min_revenue))
    if rule.classes is not None:
        value.append(Leaf("abc_class", "in", frozenset(rule.classes)))
    base = All((*ref.condition.children, value[0] if len(value) == 1 else AnyOf(tuple(value))))  # type: ignore[attr-defined]
    options = rule.task.options or []
    for reason in rule.on_outcome:
        if options and reason not in options:
            from ...errors import did_you_mean

            raise PresetError(
                f"on_outcome {reason!r} is not one of the task's options ({', '.join(options)})"
                f"{did_you_mean(reason, options)}",
                (*ctx.path, "on_outcome", reason),
            )
    evidence = (*ref.evidence, revenue, "abc_class")
    reason_text = (f"churned: {{{ref.evidence[0]}}} orders within {lookback}, none for "
                   f"{{days_since_last_invoice}} days; {{{revenue}}} revenue, class {{abc_class}}")
    step1 = Parts(
        base, "last_invoice_at", (), evidence, reason_text, ref.threshold,
        then=(ActionSpec(create_task=rule.task), *(rule.then or ())), part="find the churn reason",
        then_at=(("task",), *(("then", k, a.type) for k, a in enumerate(rule.then or ()))),
    )
    out = [step1]
    name = f"outcome[{rule.id}.{rule.outcome_field}]"
    ctx.registry.add(outcome_feature(name, rule.id, "last_invoice_at", "create_task", rule.outcome_field, options))
    for reason, actions in sorted(rule.on_outcome.items()):
        out.append(
            Parts(
                All((*base.children, Leaf(name, "eq", norm_reason(reason)))),
                "last_invoice_at", (), (*evidence, name),
                f"{reason_text}; the reason found: {reason}", ref.threshold,
                then=tuple(actions), suffix=f"~{reason}", part=f"outcome {reason}",
                then_at=tuple(("on_outcome", reason, k, a.type) for k, a in enumerate(actions)),
            )
        )
    return out


def _followed_up(ctx: CompileContext, rule: UnpaidRule) -> tuple[str, str]:
    """The last-activity feature an unpaid rule reads, and its "activity since issue" flag: narrowed by the rule's
    `activity:` (a regular buyer's next invoices and payments are activity by default, so its forgotten invoice
    never got a task; `activity: {sources: [touches, tasks]}` counts only talking to the client)."""
    last, _anchor = ctx.registry.activity(rule.activity)
    since = _narrowed(ctx, "invoice.activity_since_issue", last,
                      lambda name, doc: FeatureImpl(name, "bool", doc, deps=(last,), subject="invoice"))  # fmt: skip
    return last, since


def _unpaid(rule: UnpaidRule, ctx: CompileContext) -> Parts:
    threshold = OlderThan("invoice.issued_at", rule.after)
    last, since = _followed_up(ctx, rule)
    return Parts(
        All((Leaf("status", "in", frozenset({"active", "prospect"})), threshold, Leaf(since, "eq", False))),
        "invoice.id",
        (ActionSpec(create_task=CreateTaskSpec(
            title="Invoice {invoice.id} for {invoice.amount} is unpaid for {invoice.days_since_issue} days "
                  "and nobody talked to {client.name} since",
            due_in=parse_duration("1d"))),),
        ("invoice.id", "invoice.amount", "invoice.outstanding", "invoice.days_since_issue", last),
        "invoice {invoice.id} issued {invoice.days_since_issue} days ago (threshold {threshold}), unpaid "
        "{invoice.outstanding}, no activity since",
        threshold,
        subject="invoice",
        age="invoice.days_since_issue",  # the oldest debt first, whatever its id
    )


def _debtor(rule: DebtorRule, ctx: CompileContext) -> list[Parts]:
    if rule.then:
        raise PresetError("a debtor rule's actions are its steps; remove then:", (*ctx.path, "then"))
    steps = sorted(enumerate(rule.steps), key=lambda t: t[1].after.approx_days())
    out = []
    for rank, (_k, step) in enumerate(steps):
        threshold = OlderThan("invoice.due_at", step.after)
        leaves: list[Node] = [threshold]
        if rule.min_amount > 0:
            leaves.append(Leaf("invoice.outstanding", "gte", rule.min_amount))
        out.append(
            Parts(
                All(tuple(leaves)),
                "invoice.id",
                (),
                ("invoice.id", "invoice.amount", "invoice.outstanding", "invoice.days_overdue"),
                f"invoice {{invoice.id}}: {{invoice.outstanding}} unpaid, {{invoice.days_overdue}} days past due "
                f"(step {step.after})",
                threshold,
                then=tuple(step.then),
                # written inline ({after: 3d, notify_client: ...}) or under then: the line lookup skips
                # the parts a file does not have
                then_at=tuple(("steps", _k, "then", j, a.type) for j, a in enumerate(step.then)),
                subject="invoice",
                age="invoice.days_overdue",
                ladder=rank,
                suffix=f"+{step.after}",
                part=f"step {step.after}",
            )
        )
    return out


def _escalate(rule: EscalateRule, ctx: CompileContext) -> Parts:
    default = (ActionSpec(escalate=EscalateSpec()),)
    if rule.forgotten_rule is not None:
        ref = _find(ctx, rule.forgotten_rule, "forgotten", "forgotten_rule")
        assert ref.threshold is not None
        name = f"since_release[{ref.threshold.feature}]"
        if name not in ctx.registry.extra:
            ctx.registry.add(since_release_feature(name, ref.threshold.feature))
        threshold = replace(ref.threshold, feature=name, plus=rule.after)
        days = ref.aliases.get("days_since_activity", "days_since_activity")
        return Parts(
            All((_besides(ref.condition, ref.threshold), Leaf("released_at", "exists", True), threshold)),
            "released_at",
            default,
            ("released_at", days, ref.aliases.get("last_activity_at", "last_activity_at")),
            f"released on {{released_at}} and forgotten again: no activity for {{{days}}} days "
            f"(threshold {{threshold}} since the later of the release and the last activity)",
            threshold,
            dict(ref.aliases),
        )
    assert rule.watch_rule is not None and rule.after is not None
    if rule.watch_rule not in ctx.kinds:
        hint = _rules_of(ctx, None, rule.watch_rule, rule.id)
        raise PresetError(f"watch_rule {rule.watch_rule!r} does not exist{hint}", (*ctx.path, "watch_rule"))
    if rule.watch_rule == rule.id:
        raise PresetError("an escalate rule cannot watch itself; name the rule whose actions it watches",
                          (*ctx.path, "watch_rule"))
    name = f"unresolved_since[{rule.watch_rule}]"
    if name not in ctx.registry.extra:
        ctx.registry.add(unresolved_feature(name, rule.watch_rule))
    threshold = OlderThan(name, rule.after)
    return Parts(
        All((Leaf("status", "ne", "archived"), threshold)),
        name,
        default,
        (name, "last_activity_at"),
        f"{rule.watch_rule}'s action of {{{name}}} is still unresolved after {{threshold}} "
        "(no outcome, no activity with the client since)",
        threshold,
    )


def _repeat_sale(rule: RepeatSaleRule, ctx: CompileContext) -> Parts:
    threshold = OlderThan("last_won_deal_at", rule.after)
    return Parts(
        All((Leaf("status", "eq", "active"), threshold, Leaf("open_deals", "eq", 0))),
        "last_won_deal_at",
        (ActionSpec(create_deal=CreateDealSpec()),),
        ("last_won_deal_at", "days_since_won_deal", "open_deals"),
        "last won deal {days_since_won_deal} days ago (threshold {threshold}) and no deal open",
        threshold,
    )


def _overdue_tasks(rule: OverdueTasksRule, ctx: CompileContext) -> Parts:
    count = f"overdue_tasks[{rule.after}]"
    period = f"period[{rule.every}]"
    for name, typ, doc in ((count, "int", f"open tasks overdue by {rule.after} or more"),
                           (period, "str", f"the current {rule.every}")):
        if name not in ctx.registry.extra:
            ctx.registry.add(FeatureImpl(name, typ, doc, subject="manager"))
    return Parts(
        Leaf(count, "gte", rule.count),
        period,
        (ActionSpec(escalate=EscalateSpec()),),
        (count,),
        f"{{{count}}} open tasks overdue by {rule.after} or more (limit {rule.count})",
        None,
        {"overdue_tasks": count},
        subject="manager",
    )


#: kind name -> preset. Register a new kind here and in schema.Rule.
PRESETS: dict[str, Callable[[Any, CompileContext], Parts | list[Parts]]] = {
    "generic": _generic,
    "forgotten": _forgotten,
    "release": _release,
    "churned": _churned,
    "winback": _winback,
    "unpaid": _unpaid,
    "debtor": _debtor,
    "escalate": _escalate,
    "repeat_sale": _repeat_sale,
    "overdue_tasks": _overdue_tasks,
}

#: kinds compiled after the others because they refer to them
DEPENDENT_KINDS = ("release", "winback", "escalate")
