"""Built-in rule kinds as presets over the generic machinery.

A preset turns its friendly parameters (`after`, `overrides`, `grace`, ...) into the same parts a
generic rule has: a condition AST, an episode feature, default actions, evidence and a reason. The
engine only ever sees `CompiledRule`s, so there is one evaluator for every kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..conditions import All, AnyOf, Leaf, Node, Not, OlderThan, Path, parse_condition
from ..features import FeatureRegistry
from ..schema import ActionSpec, CreateTaskSpec, ForgottenRule, GenericRule, ReassignSpec, ReleaseRule


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

    def features(self) -> set[str]:
        fs = set(self.condition.features()) | set(self.evidence) | set(self.aliases.values())
        if self.episode:
            fs.add(self.episode)
        return fs


@dataclass
class CompileContext:
    registry: FeatureRegistry
    tz: Any
    path: Path
    compiled: dict[str, CompiledRule]
    kinds: dict[str, str]  # rule id -> kind, for references

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
        raise PresetError(f"unknown episode feature {rule.episode!r}", (*ctx.path, "episode"))
    return Parts(cond, rule.episode, (), tuple(sorted(cond.features())), rule.description or describe(cond))


def _activity_aliases(ctx: CompileContext, rule: ForgottenRule) -> tuple[str, dict[str, str]]:
    last, anchor = ctx.registry.activity(rule.activity)
    if last == "last_activity_at":
        return anchor, {}
    days = f"days_since_activity[{last.split('[', 1)[1]}"
    if days not in ctx.registry.extra:
        base = ctx.registry.get("days_since_activity")
        from ..features import FeatureImpl, _days

        ctx.registry.add(
            FeatureImpl(days, "int", base.doc, deps=(anchor,), compute=lambda f: _days(f.as_of, f.column(anchor)))
        )
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


def _release(rule: ReleaseRule, ctx: CompileContext) -> Parts:
    ref = ctx.compiled.get(rule.forgotten_rule)
    if ref is None or ref.kind != "forgotten" or ref.threshold is None:
        what = "is not a forgotten rule" if rule.forgotten_rule in ctx.kinds else "does not exist"
        raise PresetError(f"forgotten_rule {rule.forgotten_rule!r} {what}", (*ctx.path, "forgotten_rule"))
    # `grace` extends every client's own threshold (hours and days may mix: docs/decisions.md)
    threshold = replace(ref.threshold, plus=rule.grace)
    assert isinstance(ref.condition, All)
    parts: list[Node] = [ref.condition.children[0], threshold]
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


#: kind name -> preset. Register a new kind here and in schema.Rule.
PRESETS: dict[str, Callable[[Any, CompileContext], Parts]] = {
    "generic": _generic,
    "forgotten": _forgotten,
    "release": _release,
}

#: kinds compiled after the others because they refer to them
DEPENDENT_KINDS = ("release",)
