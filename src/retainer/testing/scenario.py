"""Scenario tests: facts, then steps that run the rules as of a date, commit, and check what happened.

One engine path for YAML and Python: a `*.scenario.yaml` file is read into a `Scenario` (the Python
builder) and its steps are checked with the same `Step.expect` / `absent` / `suppressed` calls a
Python test would use. Each step is a real `Engine.run` on an in-memory store with a fresh ledger
(delivery through a `RecordingHandler`), so idempotency, grace periods and caps across runs behave as
in production. Time is frozen: the ledger's clock is the step's as_of.

Dates in `given` rows and in expectations may be relative to the step's as_of: `-61d`, `+2d`, `-3mo`,
`-36h` (calendar units move the as_of date; hours move the as_of instant).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from dateutil.relativedelta import relativedelta
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..actions import ACTION_TYPES, Action, Suppression
from ..adapters.recording import RecordingHandler
from ..engine import Engine
from ..errors import ArgumentError, DataError, RetainerError, RulesError, did_you_mean, read_rules_text
from ..ledger import LedgerEntry, RunReport, action_payload
from ..rules.features import is_option, norm_reason
from ..rules.loader import RuleSet, _Lines, _pydantic_message, compile_rules, load_rules, parse_yaml
from ..stores import open_store
from ..stores._ingest import validate_rows
from ..timeutil import AsOf, parse_duration

__all__ = ["Scenario", "ScenarioError", "ScenarioFailure", "Step", "load_scenario", "run_scenario_file"]

#: what a scenario file's name ends with; both spellings of YAML, as an explicit path already ran either
SUFFIXES = (".scenario.yaml", ".scenario.yml")

_RELATIVE = re.compile(r"^([+-])\s*(\d+\s*(?:h|d|w|mo|y))$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ScenarioError(RulesError):
    """A scenario file that cannot be read: names the file and line, like a rule file error."""


class ScenarioFailure(AssertionError):
    """A step did not do what the scenario expects; the message is the whole readable report."""


def _unknown_name(field: str, value: Any, rule_ids: list[str], disabled: Sequence[str] = (),
                  clients: Sequence[str] | None = None) -> str | None:  # fmt: skip
    """A rule id, action type or client id that nothing can match (a typo, or a disabled rule where an
    action is expected), said with the closest real one."""
    if field == "rule" and value in disabled:
        return f"rule {value!r} is disabled (enabled: false): it plans nothing"
    if field == "rule" and value not in rule_ids:
        return f"no rule {value!r} in the rule set{did_you_mean(str(value), rule_ids)}"
    if field == "type" and value not in ACTION_TYPES:
        return f"no action type {value!r}{did_you_mean(str(value), ACTION_TYPES)}"
    if field == "client_id" and clients is not None and value is not None \
            and not any(_scalar_equal(value, c) for c in clients):  # fmt: skip
        return f"no client {value!r} in the scenario at this step{did_you_mean(str(value), clients)}"
    return None


#: the actions' fields that hold a date or an instant (where `+2` means `+2d` forgotten)
_DATE_FIELDS = frozenset({n for c in ACTION_TYPES.values() for n, f in c.model_fields.items()
                          if "date" in str(f.annotation)})  # fmt: skip
_NUMBER = re.compile(r"^[+-]?\s*\d+$")


#: the actions' fields that hold a mapping or a list; every other field holds one value
_STRUCTURED = {n: ("a mapping" if "dict" in str(f.annotation) else "a list") for c in ACTION_TYPES.values()
               for n, f in c.model_fields.items() if "dict" in str(f.annotation) or "list" in str(f.annotation)}


def _shape(field: str, value: Any) -> str | None:
    """Why an expectation's value can never equal a field's: a list or a mapping where the field holds one
    value (`rule: [a, b]`, `due_at: {gte: ...}`: expectations have no operators), or text that is no date in
    a date's field (`due_at: 03.03.2026`, `+1 day`). In `absent:` such an entry passed whatever the rules did."""
    kind = "a list" if isinstance(value, list) else "a mapping" if isinstance(value, Mapping) else None
    if kind is not None and _STRUCTURED.get(field) != kind:
        return (f"{field}: {json.dumps(value, default=str, ensure_ascii=False)} is {kind}, and an action's {field} is "
                + (f"{_STRUCTURED[field]}" if field in _STRUCTURED else "one value")
                + ": write one entry per value (expectations have no operators such as gte or in)")
    if field in _DATE_FIELDS and isinstance(value, str) and not _unitless(value) and not _is_date(value):
        return (f"{field}: {value!r} is not a date: write 2026-03-03, an instant (2026-03-03T10:00), or a date "
                f"relative to the step's as_of (+2d, -1w, +36h)")
    return None


def _is_date(text: str) -> bool:
    try:
        datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _unitless(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and bool(_NUMBER.match(v.strip())))


def _signed(v: Any) -> str:
    t = str(v).replace(" ", "").strip()
    return t if t[:1] in "+-" else f"+{t}"


def _planned_types(rules: RuleSet, rule_id: Any) -> tuple[str, ...]:
    """The action types rule `rule_id` can plan, in its order: its parts' `then` (every ladder and process
    step) and the escalation of a release that finds nobody; none for a rule that is not planned."""
    kinds = (k.split("#", 1)[0] for r in rules.rules if r.id == rule_id for k in r.key_kinds)
    return tuple(dict.fromkeys(kinds))


#: the fields that say which action it is (a closest match agrees on these first)
_IDENTITY = frozenset({"key", "rule", "client_id", "type"})

def resolve_relative(value: Any, a: AsOf) -> Any:
    """`-61d` -> the date 61 days before the as_of date; `-36h` -> that instant; anything else as is."""
    if not isinstance(value, str):
        return value
    m = _RELATIVE.match(value.strip())
    if not m:
        return value
    sign, d = m.group(1), parse_duration(m.group(2))
    if d.is_hours:
        delta = timedelta(hours=d.hours)
        return (a.instant + delta if sign == "+" else a.instant - delta).isoformat()
    step = relativedelta(months=d.months, days=d.days)
    return (a.date + step if sign == "+" else a.date - step).isoformat()


# ---------------------------------------------------------------- matching


def _scalar_equal(expected: Any, actual: Any) -> bool:
    if expected is None or actual is None:
        return expected is actual
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float | Decimal) and not isinstance(actual, str | int | float):
        return False
    if isinstance(expected, int | float | Decimal) or isinstance(actual, int | float):
        try:
            return Decimal(str(expected)) == Decimal(str(actual))
        except InvalidOperation:
            return False
    e = expected.isoformat() if isinstance(expected, date) and not isinstance(expected, datetime) else str(expected)
    if e == str(actual):
        return True
    if _DATE.match(e) and isinstance(actual, str) and len(actual) > 10 and actual[10] == "T":
        return actual[:10] == e  # a date matches any instant on that (local) day
    try:  # instants written in another offset or precision
        want, got = datetime.fromisoformat(e), datetime.fromisoformat(str(actual))
    except ValueError:
        return False
    if want.tzinfo is None and got.tzinfo is not None:
        # a time without an offset is a wall-clock time in the rules' zone, as in `given`; an action writes
        # its instants in that zone, so its own wall clock is the one to compare
        return want == got.replace(tzinfo=None)
    return want == got


def matches(expected: Any, actual: Any) -> bool:
    """Subset match: every key given must match; nested mappings (evidence) match as subsets too."""
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(k in actual and matches(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(map(matches, expected, actual))
    return _scalar_equal(expected, actual)


def _resolve(spec: Any, a: AsOf) -> Any:
    if isinstance(spec, Mapping):
        return {k: _resolve(v, a) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_resolve(v, a) for v in spec]
    return resolve_relative(spec, a)


def _flat(action: Action) -> dict[str, Any]:
    return json.loads(action_payload(action))  # as the host sees it: dates ISO, money as numbers


def _suppressed_view(s: Suppression) -> dict[str, Any]:
    return {**_flat(s.action), "reason_code": s.reason_code, "detail": s.detail}


_HELD = frozenset({"reason_code", "detail"})  # what a suppression adds to its action's fields


def _flat_fields(type_: Any = None, held: bool = True) -> set[str]:
    """Every field an action of `type_` (any type: None) has, and with `held` what a suppression adds:
    what an expectation may name. An `absent:` entry checks new actions: `reason_code` there matched
    nothing, and the step passed whatever the policies held back."""
    out = set(_HELD) if held else set()
    for name, cls in ACTION_TYPES.items():
        if type_ is None or type_ == name:
            out |= set(cls.model_fields)
    return out


def _closest(resolved: Mapping[str, Any], views: list[dict[str, Any]], label: str = "closest") -> str:
    """The candidate that agrees most with an expectation and how it differs, on a line of its own; who
    it is about counts double: the action of the rule expected, with a wrong date, is closer than another
    rule's action with the right date."""
    if not views:
        return ""
    best = max(views, key=lambda v: sum((2 if k in _IDENTITY else 1) * (k in v and matches(x, v[k]))
                                        for k, x in resolved.items()))  # fmt: skip
    diff = [f"{k}: expected {json.dumps(x, default=str)}, got {json.dumps(best.get(k), default=str)}"
            for k, x in resolved.items() if not (k in best and matches(x, best[k]))]  # fmt: skip
    who = f"{best.get('type')} {best.get('client_id')} (rule {best.get('rule')})"
    return f"\n      {label}: {who}, " + "; ".join(diff)


def _show(spec: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {json.dumps(v, default=str, ensure_ascii=False)}" for k, v in spec.items()) + "}"


_TARGETS = (("to_manager_id", "to"), ("assignee_id", "to"), ("channel", "by"), ("tag", "tag"), ("offer", "offer"))


def _who(a: Action) -> str:
    """`reassign c1 (rule release, to m2)`: which action it is, in a few words."""
    target = next((f"{word} {getattr(a, f)}" for f, word in _TARGETS if getattr(a, f, None)), "")
    return f"{a.type} {a.client_id} (rule {a.rule}{', ' + target if target else ''})"


def _line(a: Action) -> str:
    return f"{_who(a)}: {a.reason}"


def _match(fits: list[list[int]]) -> dict[int, int]:
    """A maximum matching of entries to actions (action -> entry), by augmenting paths: `fits[i]` lists the
    actions entry i matches. A step has a handful of each, so the simple algorithm is plenty."""
    owner: dict[int, int] = {}

    def place(i: int, seen: set[int]) -> bool:
        for j in fits[i]:
            if j not in seen:
                seen.add(j)
                if j not in owner or place(owner[j], seen):  # free, or its entry can move to another action
                    owner[j] = i
                    return True
        return False

    for i in range(len(fits)):
        place(i, set())
    return owner


@dataclass
class _Pairs:
    fits: list[list[int]]  # per entry, the actions (or suppressions) it matches
    owner: dict[int, int]  # action -> the entry it stands for
    missing: list[int]  # entries without an action of their own
    problems: list[str]  # what is wrong with each of those


# ---------------------------------------------------------------- the Python builder


def _wanted(check: str, specs: Sequence[Mapping[str, Any]], fields: Mapping[str, Any], strict: bool,
            instead: str) -> list[Mapping[str, Any]]:  # fmt: skip
    """The entries of a check; none (and no `exact`/`only`) would check nothing and pass whatever happened."""
    wanted = [*specs, *([fields] if fields else [])]
    if not wanted and not strict:
        raise ArgumentError(f"{check}() with no entry checks nothing: name the fields of an action; {instead}")
    return wanted


@dataclass
class Step:
    """What one step did, with assertions that explain themselves when they fail."""

    scenario: Scenario
    number: int
    as_of: AsOf
    report: RunReport
    label: str = ""
    line: int | None = None  # where the step is written, in a scenario file
    # while a scenario file's step runs all its checks: what each failing one found, reported together
    _found: list[tuple[list[str], list[Any], list[Any]]] | None = field(default=None, repr=False)

    @contextmanager
    def all_checks(self) -> Iterator[Step]:
        """Run several checks and fail once with what every failing one found: a wrong `expect` hid a failing
        `absent` or `suppressed` of the same step, and the analyst fixed one at a time."""
        self._found = []
        try:
            yield self
        finally:
            found, self._found = self._found, None
        if found:
            self.fail([p for f in found for p in f[0]], [c for f in found for c in f[1]],
                      [r for f in found for r in f[2]])

    @property
    def warnings(self) -> list[str]:
        """What the plan said about the data (a client skipped for a `forgotten_after` that is not a duration)."""
        return self.report.plan.warnings

    @property
    def actions(self) -> list[Action]:
        """The new actions this step committed (duplicates of earlier steps are suppressed)."""
        return self.report.committed

    @property
    def suppressed(self) -> list[Suppression]:
        return self.report.plan.suppressed

    def expect(self, *specs: Mapping[str, Any], exact: bool = False, **fields: Any) -> Step:
        """Each spec (or the keyword fields) matches a new action of its own: two alike need two actions.
        `exact`: and every new action matches some spec (one spec may match several)."""
        wanted = _wanted("expect", specs, fields, exact, "expect(exact=True) says there is no new action")
        views = [_flat(a) for a in self.actions]
        pairs = self._pair("an action", wanted, views, [_who(a) for a in self.actions], False)
        missing = pairs.missing
        extra = [j for j in range(len(views)) if not any(j in f for f in pairs.fits)] if exact else []
        if missing or extra:
            self.fail(
                pairs.problems + [f"unexpected action: {_line(self.actions[j])}" for j in extra],
                [wanted[i].get("client_id") for i in missing] + [self.actions[j].client_id for j in extra],
                [wanted[i].get("rule") for i in missing] + [self.actions[j].rule for j in extra],
            )
        return self

    def absent(self, *specs: Mapping[str, Any], **fields: Any) -> Step:
        """No new action matches any of the specs."""
        wanted = _wanted("absent", specs, fields, False, "expect(exact=True) says there is no new action")
        views = [_flat(a) for a in self.actions]
        # a misspelt name can match nothing, so the check would pass whatever the rules do
        blind = [(s, h) for s in wanted
                 if (h := self._hints(_resolve(s, self.as_of), views, expected=False, held=False))]  # fmt: skip
        found = [(s, a) for s in wanted for a, v in zip(self.actions, views, strict=True)
                 if matches(_resolve(s, self.as_of), v)]  # fmt: skip
        if found or blind:
            self.fail(
                [f"expected no action matching {_show(s)}, found: {_line(a)}" for s, a in found]
                + [f"absent {_show(s)} can never match an action: {'; '.join(h)}" for s, h in blind],
                [a.client_id for _, a in found] + [s.get("client_id") for s, _ in blind],
                [a.rule for _, a in found] + [s.get("rule") for s, _ in blind],
            )
        return self

    def held_back(self, *specs: Mapping[str, Any], only: bool = False, **fields: Any) -> Step:
        """Each spec matches a suppressed action of its own (its fields plus `reason_code`, `detail`). `only`:
        no suppression other than those (and `duplicate`s, the normal result of running again)."""
        wanted = _wanted("held_back", specs, fields, only, "held_back(only=True) says nothing was held back")
        views = [_suppressed_view(s) for s in self.suppressed]
        pairs = self._pair("a suppressed action", wanted, views,
                           [f"{_who(s.action)} held back ({s.reason_code})" for s in self.suppressed], True)
        missing = pairs.missing
        extra = [j for j, s in enumerate(self.suppressed)
                 if s.reason_code != "duplicate" and not any(j in f for f in pairs.fits)] if only else []  # fmt: skip
        if missing or extra:
            held = self.suppressed
            self.fail(
                pairs.problems + [f"unexpected suppression ({held[j].reason_code}): {_line(held[j].action)}"
                                  for j in extra],
                [wanted[i].get("client_id") for i in missing] + [held[j].action.client_id for j in extra],
                [wanted[i].get("rule") for i in missing] + [held[j].action.rule for j in extra],
            )
        return self

    def _pair(
        self, what: str, wanted: list[Mapping[str, Any]], views: list[dict[str, Any]], lines: list[str], held: bool
    ) -> _Pairs:
        """Give each entry an action of its own, as many as can have one (a maximum matching: the order
        of the entries never matters), and say what is wrong with each entry left without one. `lines`
        name the actions (or suppressions) in a few words."""
        resolved = [_resolve(w, self.as_of) for w in wanted]
        fits = [[j for j, v in enumerate(views) if matches(r, v)] for r in resolved]
        owner = _match(fits)
        missing = [i for i in range(len(wanted)) if i not in owner.values()]
        problems = []
        for i in missing:
            if not fits[i]:
                problems.append(self._not_found(what, wanted[i], views, held=held))
                continue
            (j, *more) = fits[i]
            taken = (f"the only one that matches, {lines[j]}, is entry {owner[j] + 1}'s" if not more else
                     f"the {len(fits[i])} that match are other entries': "
                     + "; ".join(f"{lines[k]} (entry {owner[k] + 1})" for k in fits[i]))  # fmt: skip
            others = _closest(resolved[i], [v for j, v in enumerate(views) if j not in fits[i]], "closest other")
            problems.append(f"expected {what} of its own matching entry {i + 1} {_show(resolved[i])}: {taken}; each "
                            f"entry stands for one, so two alike need two{others}")
        return _Pairs(fits, owner, missing, problems)

    def _not_found(self, what: str, spec: Mapping[str, Any], views: list[dict[str, Any]], held: bool = True) -> str:
        """What was wanted (relative dates resolved), the closest candidate and how it differs, and
        hints for names that cannot match anything (a misspelt field, rule id or action type)."""
        resolved = _resolve(spec, self.as_of)
        msg = f"expected {what} matching {_show(resolved)}: none found"
        if hints := self._hints(resolved, views, held=held):
            return msg + "; " + "; ".join(hints)
        return msg + _closest(resolved, views)

    def _hints(
        self, resolved: Mapping[str, Any], views: list[dict[str, Any]], expected: bool = True, held: bool = True
    ) -> list[str]:
        """Names in an expectation that no action can have: a misspelt field, rule id or action type, a
        client the scenario does not have, a field the named action type does not have, an action type or
        field the named rule never plans, a suppression's field where new actions are checked
        (`held=False`), and where an action is `expected`, a disabled rule (`absent:` may name one: it is a
        real rule). `expect`, `absent` and `suppressed` all ask here."""
        hints = []
        sc = self.scenario
        t = resolved.get("type")
        type_ = t if isinstance(t, str) and t in ACTION_TYPES else None
        rule = resolved.get("rule")
        plans = _planned_types(sc.engine.rules, rule)
        known = _flat_fields(None, held) | {k for v in views for k in v if held or k not in _HELD}
        if type_ is not None:
            own = _flat_fields(type_, held)
        else:  # the fields of what the named rule plans
            own = set().union(*(_flat_fields(x, held) for x in plans)) if plans else known
        defined = sc.engine.rules.file.rules
        rule_ids = [r.id for r in defined]
        disabled = [r.id for r in defined if not r.enabled] if expected else []
        clients = [c.id for c in sc.store.iter("clients")]
        for k, v in resolved.items():
            if k in _HELD and not held:
                hints.append(f"{k!r} is a suppression's field, and new actions have none: check what a policy "
                             "held back with `suppressed:`")
            elif shape := _shape(k, v):
                hints.append(shape)
            elif k == "evidence" and isinstance(v, Mapping):
                hints += self._evidence_hints(v, rule, views)
            elif k not in known:
                hints.append(f"there is no field {k!r}{did_you_mean(k, known)}")
            elif k not in own and type_ is not None:
                hints.append(f"a {type_} has no field {k!r}")
            elif k not in own:
                hints.append(f"rule {rule!r} plans only {', '.join(plans)}: none has a field {k!r}")
            elif k == "type" and plans and v not in plans:
                hints.append(f"rule {rule!r} plans no {v}, only {', '.join(plans)}")
            elif k in _DATE_FIELDS and _unitless(v):  # `due_at: +2`: a number, as `at: -60` in `given` is refused
                hints.append(f"{k}: {v} is a number where a date belongs: write {_signed(v)}d (days from the step's "
                             f"as_of), or a date")
            elif hint := _unknown_name(k, v, rule_ids, disabled, clients):
                hints.append(hint)
        return hints

    def _evidence_hints(self, evidence: Mapping[str, Any], rule: Any, views: list[dict[str, Any]]) -> list[str]:
        """Keys under `evidence:` no action of the named rule (any rule, when none is named) can carry: a
        misspelt `thresold` made an `absent:` entry that could never match, and it passed."""
        rules = [r for r in self.scenario.engine.rules.rules if rule is None or r.id == rule]
        names = {n.split("[", 1)[0] for r in rules for n in r.evidence} | {"episode"}
        names |= {"threshold"} if any(r.threshold is not None for r in rules) else set()
        names |= {k for v in views if isinstance(v.get("evidence"), Mapping) for k in v["evidence"]}
        return [f"evidence has no {k!r}{did_you_mean(str(k), names)}" for k in evidence if k not in names]

    def fail(self, problems: list[str], clients: Sequence[Any], rules: Sequence[Any]) -> None:
        # an entry's client or rule that is no single value (a list, a mapping) names nobody to explain
        clients = [c if isinstance(c, str | int) else None for c in clients]
        rules = [r if isinstance(r, str) else None for r in rules]
        if self._found is not None:  # within all_checks: reported with the step's other failures
            self._found.append((problems, list(clients), list(rules)))
            return
        raise ScenarioFailure(self.describe(problems, clients, rules))

    def describe(self, problems: list[str], clients: Sequence[Any], rules: Sequence[Any]) -> str:
        """The failure report: where, what was expected, what happened, and why the rules decided so."""
        sc = self.scenario
        where = f"{sc.source}:{self.line}" if sc.source and self.line else sc.source
        head = f"scenario {sc.name}" + (f" ({where})" if where else "")
        label = f" ({self.label})" if self.label else ""
        out = [head, f"step {self.number}{label}, as of {self.report.plan.as_of.isoformat()}:"]
        out += [f"  ✗ {p}" for p in problems]
        out += [f"  warning: {w}" for w in self.warnings]  # a client skipped over its data may be the why
        out.append(f"  new actions ({len(self.actions)}):" if self.actions else "  new actions: none")
        out += [f"    {_line(a)}" for a in self.actions]
        if self.suppressed:
            out.append(f"  suppressed ({len(self.suppressed)}):")
            out += [f"    {s.reason_code}: {_line(s.action)} — {s.detail}" for s in self.suppressed]
        seen: set[tuple[str, str | None]] = set()
        # an entry that names no client: the scenario's clients, when they are few enough to read (it printed
        # no why at all, though the scenario had one client; found in an analyst review)
        few = [] if all(clients) else [m.id for m in sc.engine.store.clients(self.as_of.instant)]
        pairs = [(c, r) for cs, r in zip(clients, rules, strict=False)
                 for c in ([cs] if cs else few if len(few) <= 3 else [])]  # fmt: skip
        for c, r in pairs:
            if (c, r) in seen:
                continue
            seen.add((c, r))
            rule = r if r in {x.id for x in sc.engine.rules.rules} else None
            out.append(f"  why ({'rule ' + rule if rule else 'every rule'}, client {c}):")
            ex = sc.engine.explain(str(c), self.as_of.instant, rule=rule)
            if ex.note:
                out.append(f"    {ex.note}")
            for r in ex.rules:  # conditions only: the ledger now holds this step's own commit
                verdict = "MATCHED" if r.matched else "not matched"
                extra = f", threshold {r.threshold}" if r.threshold else ""
                part = f" [{r.part}]" if r.part else ""
                out.append(f"    rule {r.rule} ({r.kind}){part}: {verdict}{extra}")
                out += ["      " + line for line in r.condition.lines()]
        return "\n".join(out)


class Scenario:
    """Build a scenario in Python: `Scenario(rules).given(...)`, then `step = s.at("2026-03-02")` and
    `step.expect(type="create_task", client_id="c1")`. Facts go to a fresh in-memory store; each
    `at` is a real run that commits to the ledger before the next one."""

    def __init__(self, rules: RuleSet | str | Path | Mapping[str, Any], *, name: str = "scenario",
                 source: str | None = None) -> None:  # fmt: skip
        self.rules = rules if isinstance(rules, RuleSet) else load_rules(rules)
        self.name = name
        self.source = source
        self.store = open_store("memory://", timezone=self.rules.tz)
        self.engine = Engine(self.rules, self.store)
        self.steps: list[Step] = []
        self._pending: list[tuple[dict[str, list[Any]], _Lines | None, tuple[Any, ...]]] = []

    @property
    def warnings(self) -> list[str]:
        """Every step's plan warnings, by step: a passing scenario may still have skipped a client over its data
        (`retainer test` and pytest show them)."""
        return [f"step {st.number}: {w}" for st in self.steps for w in st.warnings]

    def given(self, **rows: list[Mapping[str, Any]]) -> Scenario:
        """Facts for the next step; relative dates (`-61d`) are read against that step's as_of."""
        self._pending.append(({k: list(v) for k, v in rows.items()}, None, ()))
        return self

    def upsert(self, **rows: list[Mapping[str, Any]]) -> Scenario:
        """Facts that replace earlier ones with the same id before the next step: the CRM applied a
        reassignment, a client changed its contact policy, an invoice was paid."""
        self._pending.append(({k: list(v) for k, v in rows.items()}, None, ("upsert",)))
        return self

    def record(self, outcome: Mapping[str, Any], **match: Any) -> LedgerEntry:
        """What the host reports back on an action an earlier step committed (a win-back task's
        `churn_reason`), matched by its fields as in `expect`; exactly one action must match."""
        committed = self.store.ledger()
        if not committed:  # the first step's `record`: c1 "not in the scenario" sent the analyst looking for a typo
            raise RetainerError(f"record {_show(match)}: nothing is committed yet: record reports on an action an "
                                f"earlier step committed, so it belongs to a later step than the one planning it")
        found = [e for e in committed if matches(match, _flat(e.action))]
        if len(found) != 1:
            what = "no committed action matches" if not found else f"{len(found)} committed actions match"
            listed = "".join(f"\n  {_line(e.action)}" for e in found[:5])
            rule_ids = [r.id for r in self.engine.rules.rules]
            clients = [c.id for c in self.store.iter("clients")]
            known = _flat_fields(None, held=False)
            listed += "".join(f"\n  there is no field {k!r}{did_you_mean(k, known)}" for k in match if k not in known)
            listed += "".join(f"\n  {hint}" for k, v in match.items()
                              if v is not None and (hint := _shape(k, v) or _unknown_name(k, v, rule_ids, (), clients)))
            raise RetainerError(f"record {_show(match)}: {what}; it needs exactly one (add rule, client_id, type "
                                f"or key){listed}")
        if problem := self._unanswerable(found[0].action, outcome):
            raise RetainerError(f"record {_show(match)}: {problem}")
        at = self.steps[-1].as_of.instant if self.steps else None
        return self.engine.record_outcome(found[0].id, outcome, **({"clock": lambda: at} if at else {}))

    def _unanswerable(self, action: Action, outcome: Mapping[str, Any]) -> str | None:
        """Why a process waiting for this answer could never act on it: the rule reads its answer from one
        key (a win-back's `outcome_field`, `churn_reason`), and the engine acts on one of the task's options
        only (anything else: it warns and waits). None when the answer fits or the rule reads none."""
        options = getattr(action, "options", None)
        rule = next((r for r in self.rules.file.rules if r.id == action.rule), None)
        key = getattr(rule, "outcome_field", None)
        if not options or not isinstance(key, str) or not isinstance(outcome, Mapping):
            return None
        if key not in outcome:
            close = next((k for k in outcome if did_you_mean(str(k), [key])), None)
            return (f"rule {action.rule!r} reads the answer from {key!r}, and the outcome {_show(outcome)} has none, "
                    f"so the rule would never move on" + (f"; did you mean {key!r} for {close!r}?" if close else ""))
        if not is_option(outcome[key], options):
            return (f"{key} {outcome[key]!r} is not one of the task's options ({', '.join(options)}), so rule "
                    f"{action.rule!r} would never move on{did_you_mean(norm_reason(outcome[key]), options)}")
        return None

    def _given_from_file(self, rows: dict[str, list[Any]], lines: _Lines, path: tuple[Any, ...]) -> None:
        self._pending.append((rows, lines, path))

    def at(self, as_of: str | date | datetime, *, label: str = "") -> Step:
        """Run as of `as_of` (committing to the ledger) and return the step to check."""
        try:
            a = self.engine.as_of(as_of)
        except ArgumentError as exc:  # with the engine's hint (a date, 2026-03-01, or an ISO 8601 instant)
            raise RetainerError(f"step {len(self.steps) + 1}: {exc}") from exc
        if self.steps and a.instant < (last := self.steps[-1].as_of).instant:  # the ledger would hold the future
            this, that = (str(a.date), str(last.date)) if a.date != last.date else (
                a.instant.astimezone(a.tz).isoformat(), last.instant.astimezone(a.tz).isoformat()
                + ", the end of that day: a date alone means its end")  # fmt: skip
            raise RetainerError(f"step {len(self.steps) + 1}: as_of {this} is before step {len(self.steps)}'s "
                                f"({that}); steps go forward in time, as nights do")  # fmt: skip
        for rows, lines, path in self._pending:
            self._add(rows, a, lines, path, replace=bool(path) and path[-1] == "upsert")
        self._pending.clear()
        report = self.engine.run(a.instant, handlers=RecordingHandler(), clock=lambda: a.instant,
                                 sleep=lambda s: None)  # fmt: skip
        step = Step(self, len(self.steps) + 1, a, report, label)
        self.steps.append(step)
        return step

    def _add(self, rows: dict[str, list[Any]], a: AsOf, lines: _Lines | None, path: tuple[Any, ...],
             replace: bool = False) -> None:
        models: dict[str, list[Any]] = {}
        for entity, items in rows.items():
            resolved = [_resolve(r, a) if isinstance(r, Mapping) else r for r in items]
            at_lines = [lines.line((*path, entity, i)) or 0 for i in range(len(items))] if lines else None
            try:
                models[entity] = validate_rows(entity, resolved, self.rules.tz, file=self.source if lines else None,
                                               lines=at_lines)  # fmt: skip
            except DataError as exc:
                message = exc.message
                if "invalid date/time" in message and any(
                        _unitless(r.get(exc.field or "")) for r in items if isinstance(r, Mapping)):  # fmt: skip
                    # `at: -60`: a date relative to the step wants its unit, as in expectations
                    message += " (or a date relative to the step's as_of, with its unit: -60d, +2d, -36h)"
                if lines is not None:
                    row = exc.row if isinstance(exc.row, int) else None
                    line = row if row is not None else lines.line((*path, entity))
                    raise ScenarioError(message if exc.field is None else f"{entity}: field {exc.field}: {message}",
                                        file=self.source, line=line) from None  # fmt: skip
                raise
        try:
            (self.store.upsert if replace else self.store.add)(**models)
        except DataError as exc:
            if lines is None or exc.entity is None:
                raise
            line = lines.line((*path, exc.entity, exc.row, exc.field) if isinstance(exc.row, int) else (*path,))
            msg = str(exc)
            if "already exists" in msg:  # the store's hint does not apply inside a scenario
                msg = msg.split(" (to replace it")[0] + " (to change it, put the row under the step's `upsert:`)"
            raise ScenarioError(msg, file=self.source, line=line) from None


# ---------------------------------------------------------------- the YAML format


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    as_of: str | date | datetime
    label: str = ""
    given: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    upsert: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)  # rows replacing same-id ones
    record: list[dict[str, Any]] = Field(default_factory=list)  # outcomes reported before this step runs
    # the checks; None: not given (a key given with no value is refused by _check_something)
    expect: list[dict[str, Any]] | None = None  # [] = no new action at all
    exact: bool | None = None
    absent: list[dict[str, Any]] | None = None
    suppressed: list[dict[str, Any]] | None = None  # [] = nothing held back (duplicates aside)


class ScenarioSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    description: str | None = None
    rules: str | dict[str, Any]
    given: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    steps: list[StepSpec] = Field(min_length=1)


#: what to write instead of a check key left with no value (YAML null: `expect:` with every entry commented out)
_NO_VALUE = {
    "expect": "list the new actions, or write `expect: []` for \"no new action\"",
    "exact": "write `exact: true` for \"no other new action\", or leave the key out",
    "absent": "list the actions that must not appear (`expect: []` says there is no new action at all)",
    "suppressed": "list the held-back actions, or write `suppressed: []` for \"nothing held back\"",
}


def _check_something(st: StepSpec, i: int, lines: _Lines, source: str) -> None:
    """A step passes whatever the rules do when its checks are empty: refuse it as bad input. A key with no
    value (`expect:` whose entries were all commented out) read as "no check", and so did a step with
    none, so an analyst who silenced a failing expectation "for now" got a green suite."""
    for key, instead in _NO_VALUE.items():
        if key in st.model_fields_set and getattr(st, key) is None:
            raise ScenarioError(f"step {i + 1}: `{key}:` has no value (were its entries commented out?), so it "
                                f"checks nothing: {instead}", file=source, line=lines.line(("steps", i, key)))
    if st.absent == []:
        raise ScenarioError(f"step {i + 1}: `absent: []` checks nothing: {_NO_VALUE['absent']}", file=source,
                            line=lines.line(("steps", i, "absent")))  # fmt: skip
    if st.expect is None and not st.exact and not st.absent and st.suppressed is None:
        raise ScenarioError(f"step {i + 1} checks nothing, so it passes whatever the rules do: say what it must do "
                            "with `expect: [...]` (the new actions), `expect: []` (no new action), `absent: [...]` "
                            "or `suppressed: [...]`", file=source, line=lines.line(("steps", i)))  # fmt: skip


@dataclass
class LoadedScenario:
    spec: ScenarioSpec
    path: Path
    lines: _Lines
    rules: RuleSet
    name: str = field(default="")


def scenario_name(path: Path) -> str:
    """`orders` for `orders.scenario.yaml` or `orders.scenario.yml`."""
    return next((path.name.removesuffix(x) for x in SUFFIXES if path.name.endswith(x)), path.name)


def scenario_files(folder: Path) -> list[Path]:
    """Every `*.scenario.yaml` and `*.scenario.yml` under `folder`, sorted."""
    return sorted(f for x in SUFFIXES for f in folder.rglob("*" + x))


def load_scenario(path: str | Path) -> LoadedScenario:
    """Read and validate a `*.scenario.yaml`; errors name the file and line."""
    p = Path(path)
    source = str(p)
    text = read_rules_text(p, "the scenario", ScenarioError)
    try:
        data, lines = parse_yaml(text, source, "scenario")
    except RulesError as exc:
        raise ScenarioError(exc.message, file=source, line=exc.line) from None
    if not isinstance(data, dict):
        raise ScenarioError("a scenario is a mapping with rules, given and steps", file=source, line=1)
    if "version" in data and "steps" not in data:  # `retainer test rules.yaml`: "unknown field 'version'"
        raise ScenarioError("this is a rule file (version, rules), not a scenario: check it with `retainer "
                            "validate`, and test it with a *.scenario.yaml that names it (rules: its path)",
                            file=source, line=lines.line(("version",)))  # fmt: skip
    try:
        spec = ScenarioSpec.model_validate(data)
    except ValidationError as exc:
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        raise ScenarioError(_pydantic_message(err), file=source, line=lines.line(tuple(err["loc"]))) from None
    for i, st in enumerate(spec.steps):
        _check_something(st, i, lines, source)
    if isinstance(spec.rules, str):
        rules_path = (p.parent / spec.rules).resolve()
        if not rules_path.exists():
            raise ScenarioError(f"rule file not found: {spec.rules} (relative to this scenario)", file=source,
                                line=lines.line(("rules",)))  # fmt: skip
        rules = load_rules(rules_path)
    else:
        sub = _Lines()
        sub.lines = {k[1:]: v for k, v in lines.lines.items() if k[:1] == ("rules",)}
        rules = compile_rules(spec.rules, sub, source)
    name = spec.name or scenario_name(p)
    return LoadedScenario(spec, p, lines, rules, name)


def run_scenario_file(path: str | Path) -> Scenario:
    """Run every step of a scenario file; raise `ScenarioFailure` at the first step that fails."""
    ls = load_scenario(path)
    sc = Scenario(ls.rules, name=ls.name, source=str(ls.path))
    if ls.spec.given:
        sc._given_from_file(ls.spec.given, ls.lines, ("given",))
    for i, st in enumerate(ls.spec.steps):
        if st.given:
            sc._given_from_file(st.given, ls.lines, ("steps", i, "given"))
        if st.upsert:
            sc._given_from_file(st.upsert, ls.lines, ("steps", i, "upsert"))
        for k, item in enumerate(st.record):
            fields = {f: v for f, v in item.items() if f != "outcome"}
            outcome = item.get("outcome")
            line = ls.lines.line(("steps", i, "record", k))
            if not isinstance(outcome, dict) or not fields:
                raise ScenarioError("record takes the fields of one committed action and an outcome mapping, e.g. "
                                    "{rule: winback, client_id: c1, outcome: {churn_reason: price}}",
                                    file=str(ls.path), line=line)  # fmt: skip
            with suppress(RetainerError):  # a bad as_of is reported where it is written, below
                fields = _resolve(fields, sc.engine.as_of(st.as_of))  # relative to its step, as in `expect`
            try:
                sc.record(outcome, **fields)
            except RetainerError as exc:
                raise ScenarioError(str(exc), file=str(ls.path), line=line) from None
        try:
            step = sc.at(st.as_of, label=st.label)
        except ScenarioError:
            raise
        except RetainerError as exc:  # a bad or backward as_of: where it is written
            raise ScenarioError(str(exc), file=str(ls.path), line=ls.lines.line(("steps", i, "as_of"))) from None
        step.line = ls.lines.line(("steps", i))
        with step.all_checks():
            if st.expect is not None or st.exact:
                step.expect(*(st.expect or ()), exact=bool(st.exact) or not st.expect)  # `expect: []`: nothing new
            if st.absent:
                step.absent(*st.absent)
            if st.suppressed is not None:
                step.held_back(*st.suppressed, only=not st.suppressed)
    return sc
