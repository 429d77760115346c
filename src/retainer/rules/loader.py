"""Load a rule file (YAML or JSON) into a compiled, validated `RuleSet`.

Every error names the file, the 1-based line of the offending key and the rule id. Line numbers
come from the YAML node tree (JSON is read by the same parser), so pydantic's error locations
and our own semantic checks both map back to where the analyst has to look.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path as FsPath
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ArgumentError, RepeatedKeyError, RulesError, did_you_mean, read_rules_text, unique_keys
from ..model import nests_deeper
from ..policies import policy_features
from ..timeutil import get_tz
from . import templates
from .conditions import All, ConditionError, Path
from .features import FeatureDefError, FeatureRegistry, named_feature, register_spend_growth_alias
from .kinds import DEPENDENT_KINDS, PRESETS, CompileContext, CompiledRule, PresetError
from .schema import RuleFile


class _Lines:
    """Maps a path inside the document (keys and list indexes) to the line of its key."""

    def __init__(self) -> None:
        self.lines: dict[Path, int] = {}

    def line(self, path: Path) -> int | None:
        """Longest known prefix of `path`; unknown parts (pydantic's union tags) are skipped."""
        best: int | None = self.lines.get(())
        cur: Path = ()
        for part in path:
            nxt = (*cur, part)
            if nxt in self.lines:
                cur = nxt
                best = self.lines[nxt]
        return best


#: How deep a rule or scenario file may nest (a `when:` of all/any/not is a handful of levels); deeper
#: was a RecursionError and a traceback, and 5,000 `[` fit in 10 KB.
MAX_DEPTH = 100
#: How many values anchors and aliases (`&a`, `*a`, `<<: *a`) may add to a file beyond those written out.
#: Each alias was built again in full, so ten levels of ten aliases (477 bytes) asked for 10^10 values.
ALIAS_BUDGET = 10_000


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses, while composing the node tree (cheaply: aliases are shared there), a tree
    nested deeper than MAX_DEPTH or one whose aliases expand to more than ALIAS_BUDGET extra values."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._written = 0  # nodes in the text itself
        self._size: dict[int, tuple[int, int]] = {}  # id(node) -> (values once aliases are expanded, height)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        line = self.peek_event().start_mark.line + 1
        if self._depth >= MAX_DEPTH:
            raise RulesError(f"nested more than {MAX_DEPTH} levels deep", line=line)
        alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        try:
            node: yaml.Node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:
            size, height = self._size[id(node)]
        else:
            self._written += 1
            kids: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                kids = node.value
            elif isinstance(node, yaml.MappingNode):
                kids = [n for kv in node.value for n in kv]
            size = 1 + sum(self._size[id(k)][0] for k in kids)
            height = 1 + max((self._size[id(k)][1] for k in kids), default=0)
            self._size[id(node)] = (size, height)
        if size > self._written + ALIAS_BUDGET:
            raise RulesError(f"anchors and aliases (*name) expand to more than {ALIAS_BUDGET:,} values; "
                             "write the values out", line=line)  # fmt: skip
        if self._depth + height > MAX_DEPTH:
            raise RulesError(f"nested more than {MAX_DEPTH} levels deep (through an alias)", line=line)
        return node


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: Path, lines: _Lines) -> Any:
    lines.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        # a key written here overrides one a merge (`<<: *base`) brings, as YAML says; written twice, it is a slip
        written = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
        loader.flatten_mapping(node)  # the merged pairs first, then the written ones: the last one wins
        out: dict[Any, Any] = {}
        merged: set[Any] = set()
        for k, v in node.value:
            key = loader.construct_object(k, deep=True)
            if isinstance(key, int | float | bool):
                key = str(key).lower() if isinstance(key, bool) else str(key)
            if key in out and key not in merged:
                raise RulesError(f"duplicate key {key!r}", line=k.start_mark.line + 1)
            merged.discard(key)
            if id(k) not in written:
                merged.add(key)
            lines.lines[(*path, key)] = k.start_mark.line + 1
            out[key] = _construct(loader, v, (*path, key), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, v, (*path, i), lines) for i, v in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except ValueError as exc:  # YAML's own date resolver: `2026-13-01` looks like a date but is not one
        raise RulesError(f"invalid value {node.value!r}: {exc}", line=node.start_mark.line + 1) from None


def _yaml_problem(exc: yaml.MarkedYAMLError, text: str) -> tuple[str, int | None]:
    """PyYAML's complaint, with what an analyst can do about the usual slips: an indentation that does not
    line up ("expected <block end>, but found '?'"), a key without a space after its colon (reported at the
    line after it, or past the end of the file)."""
    mark = exc.problem_mark or exc.context_mark
    problem = str(exc.problem or exc)
    line = mark.line + 1 if mark else None
    rows = text.splitlines()
    if problem.startswith("expected <block end>") or problem.startswith("expected <block mapping start>"):
        return (f"{problem}: this line is indented differently from the lines above it; the keys of one mapping "
                "line up (a rule's `kind:`, `after:` and `then:` start under its `id:`, after the `- `)", line)
    if "found character '\\t'" in problem:
        return f"{problem}: YAML indents with spaces, and this line has a tab; replace it with spaces", line
    if problem == "could not find expected ':'" and line is not None:
        last = min(line, len(rows))  # PyYAML names the line after the slip, or one past the end of the file
        for n in range(last, max(last - 3, 0), -1):
            if (m := _NO_SPACE.match(rows[n - 1].strip())) is not None:
                return f"{rows[n - 1].strip()!r}: write a space after the colon ({m[1]}: {m[2]})", n
        return f"{problem} (a key needs `: ` after it, as in `after: 60d`)", last
    return problem, line


#: the rule file's own keys: one of them inside a rule was indented under it by mistake
_TOP_LEVEL = frozenset(RuleFile.model_fields)

#: `after:60d`: a key and its value without the space YAML needs between them
_NO_SPACE = re.compile(r"^(?:- )?([\w.-]+):([^\s/].*)$")


def parse_yaml(text: str, source: str, what: str = "rule file") -> tuple[Any, _Lines]:
    """Rule or scenario text (YAML, or JSON read as YAML for its line numbers) and where each key is."""
    lines = _Lines()
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise RulesError(f"the {what} is empty", file=source)
        data = _construct(loader, node, (), lines)
    except yaml.MarkedYAMLError as exc:
        message, line = _yaml_problem(exc, text)
        raise RulesError(f"not valid YAML/JSON: {message}", file=source, line=line) from None
    except RulesError as exc:
        exc.file = source
        raise RulesError(exc.message, file=source, line=exc.line) from None
    finally:
        loader.dispose()
    return data, lines


@dataclass
class RuleSet:
    """A validated, compiled rule file: what `Engine` evaluates."""

    file: RuleFile
    source: str
    tz: tzinfo
    registry: FeatureRegistry
    rules: list[CompiledRule]
    digest: str
    _needed: set[str] = field(default_factory=set)

    @property
    def timezone(self) -> str:
        return self.file.timezone

    def rule(self, rule_id: str) -> CompiledRule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    def features_needed(self) -> set[str]:
        return set(self._needed)


def _rule_id_at(data: Any, path: Path) -> str | None:
    if len(path) >= 2 and path[0] == "rules" and isinstance(path[1], int):
        try:
            rid = data["rules"][path[1]].get("id")
            return str(rid) if rid is not None else None
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
    return None


RULE_KINDS = frozenset(PRESETS)


def _field_path(loc: Sequence[Any]) -> str:
    """`activity.kinds[0]` for ('rules', 0, 'forgotten', 'activity', 'kinds', 0): the rule is already named."""
    parts = list(loc)
    if len(parts) >= 2 and parts[0] == "rules" and isinstance(parts[1], int):
        parts = parts[3:] if len(parts) > 2 and parts[2] in RULE_KINDS else parts[2:]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}" if out else str(p)
    return out


def _strip(t: Any) -> Any:
    """The type inside `Annotated[...]` and `X | None`."""
    while True:
        if get_origin(t) is Annotated:
            t = get_args(t)[0]
        elif get_origin(t) in (Union, UnionType) and type(None) in get_args(t) and len(get_args(t)) == 2:
            t = next(a for a in get_args(t) if a is not type(None))
        else:
            return t


def _kinds_of(m: Any) -> tuple[Any, ...]:
    """The `kind` values a member of a discriminated union takes (its `Literal`), or none."""
    f = m.model_fields.get("kind") if isinstance(m, type) and issubclass(m, BaseModel) else None
    return get_args(f.annotation) if f is not None else ()


def _fields_at(loc: Sequence[Any]) -> list[str]:
    """The keys the rule file's schema allows where `loc` ends (for the did-you-mean of an unknown key), walked
    from RuleFile through models, lists, mappings and the rule kinds' union (its tag is in `loc`)."""
    t: Any = RuleFile
    for p in loc:
        t = _strip(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            f = t.model_fields.get(p) if isinstance(p, str) else None
            if f is None:
                return []
            t = f.annotation
        elif get_origin(t) is list and isinstance(p, int):
            t = get_args(t)[0]
        elif get_origin(t) is dict and isinstance(p, str):
            t = get_args(t)[1]
        elif get_origin(t) in (Union, UnionType):  # the rule kinds, a union discriminated by `kind`: `p` is it
            t = next((m for m in get_args(t) if p in _kinds_of(m)), None)
            if t is None:
                return []
        else:
            return []
    t = _strip(t)
    return list(t.model_fields) if isinstance(t, type) and issubclass(t, BaseModel) else []


def _pydantic_message(err: Mapping[str, Any]) -> str:
    t, loc = err["type"], err["loc"]
    if t == "extra_forbidden":
        if len(loc) == 4 and loc[0] == "rules" and loc[-1] in _TOP_LEVEL:  # `policies:` under the last rule (rules,
            # its index, its kind, the key); not a `timezone:` deeper in
            return (f"unknown field {loc[-1]!r} in a rule: `{loc[-1]}:` belongs at the top of the file, not indented "
                    f"under a rule (start it at the first column, as `rules:`)")
        return f"unknown field {loc[-1]!r}{did_you_mean(str(loc[-1]), _fields_at(loc[:-1]))}"
    if t == "missing":
        where = _field_path(loc[:-1]) if loc and loc[0] != "rules" else ""
        return f"{where}: required field {loc[-1]!r} is missing" if where else f"required field {loc[-1]!r} is missing"
    if t == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown rule kind {ctx.get('tag')!r}; valid kinds: {ctx.get('expected_tags')}"
    if t == "literal_error":
        return f"{_field_path(loc)}: {err['msg']} (got {err.get('input')!r})"
    if t == "string_pattern_mismatch" and loc and loc[-1] == "id":  # the regex said nothing to an analyst
        return (f"id {err.get('input')!r}: an id is Latin letters, digits and _ . - (it starts with a letter or a "
                f"digit; no spaces): e.g. forgotten-clients; the rule's `description` takes any text")
    if t == "dict_type" and loc and loc[-1] in ("when", "overrides_when") and isinstance(err.get("input"), list):
        return (f"{loc[-1]}: a list of conditions needs `all:` (each must hold) or `any:` (one is enough): "
                f"when: {{all: [...]}}")
    msg = str(err["msg"]).removeprefix("Value error, ")
    if loc and loc[0] != "rules":  # policies.caps[1].limit: outside a rule, only the path says where
        return f"{_field_path(loc)}: {msg}"
    field = next((p for p in reversed(loc) if isinstance(p, str) and "[" not in p), None)
    return f"{field}: {msg}" if field else msg


def load_rules(source: str | FsPath | Mapping[str, Any]) -> RuleSet:
    """Load rules from a file path, YAML/JSON text, or an already-parsed dict; raise RulesError."""
    if not isinstance(source, str | FsPath | Mapping):  # None would be read as a file named "None"
        raise ArgumentError(f"rules come from a file path, YAML/JSON text or a dict, not {source!r}")
    if isinstance(source, Mapping):
        return compile_rules(dict(source), _Lines(), "<dict>")
    one_line = isinstance(source, str) and "\n" not in source
    # one line is a path, unless it reads as YAML (`{...}`, or `key: value` naming no file): "rule file not
    # found: version: 1, rules: [...]" puzzled a host passing a one-line rule set
    if isinstance(source, FsPath) or (one_line and not source.lstrip().startswith("{")  # type: ignore[union-attr]
                                      and not (": " in source and not FsPath(source).exists())):
        p = FsPath(source)
        if not p.exists():
            raise RulesError(f"rule file not found: {p}", file=str(p))
        text = read_rules_text(p, "the rule file")
        name = str(p)
    else:
        text, name = str(source), "<text>"
    if name.endswith(".json") or text.lstrip().startswith("{"):
        data, lines = parse_json(text, name)
    else:
        data, lines = parse_yaml(text, name)
    return compile_rules(data, lines, name)


def parse_json(text: str, source: str) -> tuple[Any, _Lines]:
    """Strict JSON (tabs, escaped surrogate pairs, no repeated key); line numbers borrowed from the YAML
    node tree when that parser can read the same text, else errors name the file only."""
    try:
        data = json.loads(text, object_pairs_hook=unique_keys)
    except RepeatedKeyError as exc:
        _named_by_yaml(text, source, "duplicate key")  # refuses the same repeat, naming its line
        raise RulesError(str(exc), file=source) from None
    except RecursionError:
        _named_by_yaml(text, source, "nested")
        raise RulesError(f"nested more than {MAX_DEPTH} levels deep", file=source) from None
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise RulesError(f"not valid JSON: {getattr(exc, 'msg', exc)}", file=source, line=line) from None
    try:
        _, lines = parse_yaml(text, source)
    except RulesError as exc:
        if exc.message.startswith("nested"):
            raise
        lines = _Lines()
        if nests_deeper(data, MAX_DEPTH):
            raise RulesError(f"nested more than {MAX_DEPTH} levels deep", file=source) from None
    return data, lines


def _named_by_yaml(text: str, source: str, error: str) -> None:
    """Raise the YAML reader's error about `text` if it is the `error` JSON found: it names the line."""
    try:
        parse_yaml(text, source)
    except RulesError as named:
        if named.message.startswith(error):
            raise named from None


def _check_texts(
    rule: CompiledRule, rf: RuleFile, registry: FeatureRegistry, path: Path, source: str, lines: _Lines,
    then_at: tuple[Path, ...] | None = None,
) -> set[str]:
    """Every placeholder of the reason, titles and templates exists; returns the features they use. `then_at`:
    where each action is written in the rule (a ladder step's, a win-back outcome's), for the error's line."""
    has_reassign = any(a.type == "reassign" for a in rule.then)
    texts: list[tuple[str, Path]] = [(rule.reason, path)]
    for k, a in enumerate(rule.then):
        p = a.params
        for fld in ("title", "template"):
            text = getattr(p, fld, None)
            if text is None:
                continue
            ap: Path = (*path, *(then_at[k] if then_at else ("then", k, a.type)), fld)
            if fld == "template" and text in rf.templates:
                t = rf.templates[text]
                texts += [(t.body, ("templates", text, "body"))]
                if t.subject:
                    texts += [(t.subject, ("templates", text, "subject"))]
            elif fld == "title":
                texts.append((text, ap))
    allow = (*(("new_manager",) if has_reassign else ()), *(("invoice",) if rule.subject == "invoice" else ()))
    used: set[str] = set()
    for text, tp in texts:
        try:
            found = templates.check(
                text,
                lambda n: n in registry or n in rule.aliases or (n == "threshold" and rule.threshold is not None),
                allow=allow,
                names=lambda: [*registry.names(), *rule.aliases, *(("threshold",) if rule.threshold else ())],
            )
        except templates.TemplateError as exc:
            raise RulesError(str(exc), file=source, line=lines.line(tp), rule=rule.id) from None
        used.update(u for u in found if u != "threshold")
    if rule.subject != "manager":  # as in `when:` (_check_subject): a text cannot read another subject's columns
        for u in sorted(used):
            sub = registry.get(rule.aliases.get(u, u)).subject
            if sub not in ("client", rule.subject):
                tp = next((tp for text, tp in texts if "{" + u + "}" in text), path)
                raise RulesError(_only_in(f"{{{u}}}", sub), file=source, line=lines.line(tp), rule=rule.id)
    if rule.subject == "manager":
        bad = sorted(u for u in used if registry.get(rule.aliases.get(u, u)).subject == "client"
                     and u not in MANAGER_COLUMNS)
        if bad:
            raise RulesError(f"{{{bad[0]}}} is about a client; an {rule.kind} rule is about a manager: use "
                             "{manager.name}, {overdue_tasks}, {as_of}", file=source, line=lines.line(path),
                             rule=rule.id)
    return used


MANAGER_COLUMNS = frozenset({"manager_id", "manager_team", "manager_active"})


def _only_in(name: str, subject: str) -> str:
    """Why a client rule cannot read `name`, a column of another subject (in `when:` or in a text)."""
    if subject == "invoice":
        return f"{name} is only available in rules about one invoice at a time (unpaid, debtor)"
    return f"{name} is only available in {subject}-level rules (overdue_tasks)"


def _check_subject(rule: CompiledRule, registry: FeatureRegistry, path: Path) -> None:
    """A client rule cannot read invoice.* columns, a manager rule only reads manager columns."""
    for name in sorted(rule.features()):
        sub = registry.get(name).subject
        if rule.subject == "manager":
            if sub != "manager" and name not in MANAGER_COLUMNS:
                raise PresetError(
                    f"{name} is about a client; {rule.kind} rules are about managers "
                    f"(use {', '.join(sorted(MANAGER_COLUMNS))})",
                    (*path, "when"),
                )
        elif sub not in ("client", rule.subject):
            raise PresetError(_only_in(name, sub), (*path, "when"))


def compile_rules(data: Any, lines: _Lines, source: str) -> RuleSet:
    def fail(message: str, path: Path) -> RulesError:
        return RulesError(message, file=source, line=lines.line(path), rule=_rule_id_at(data, path))

    if not isinstance(data, dict):
        raise fail("a rule file is a mapping with version, rules, ...", ())
    if "steps" in data and ("given" in data or isinstance(data.get("rules"), dict | str)):
        raise fail("this is a scenario (given, steps), not a rule file: run it with `retainer test`", ())
    try:
        rf = RuleFile.model_validate(data)
    except ValidationError as exc:
        # a misspelt key shows up as "unknown field" AND "missing field": name the typo first
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        err = errors[0]
        loc = tuple(err["loc"])
        if err["type"] == "union_tag_invalid":
            loc = (*loc, "kind")
        raise fail(_pydantic_message(err), loc) from None

    tz = get_tz(rf.timezone)
    abc = rf.abc
    registry = FeatureRegistry(**({"abc_window": abc.window, "abc_a": abc.a, "abc_b": abc.b} if abc else {}))
    register_spend_growth_alias(registry)
    for name, d in rf.features.items():
        if registry.is_reserved(name):
            raise fail(f"feature {name!r} is built in; choose another name", ("features", name))
        try:
            registry.add(named_feature(name, d, tz))
        except FeatureDefError as exc:
            raise fail(str(exc), ("features", name, *exc.key)) from None

    seen: dict[str, int] = {}
    for i, r in enumerate(rf.rules):
        if r.id in seen:
            raise fail(f"duplicate rule id {r.id!r} (first defined at rule #{seen[r.id] + 1})", ("rules", i, "id"))
        seen[r.id] = i

    compiled: dict[str, CompiledRule] = {}
    kinds = {r.id: r.kind for r in rf.rules}
    order = sorted(range(len(rf.rules)), key=lambda i: (rf.rules[i].kind in DEPENDENT_KINDS, rf.rules[i].id))
    needed: set[str] = set()
    parts_of: dict[str, list[CompiledRule]] = {}
    definitions = {d.id: d for d in rf.rules}  # once: built per rule, 8,000 rules took 37 s to validate
    for i in order:
        r = rf.rules[i]
        path: Path = ("rules", i)
        ctx = CompileContext(registry, tz, path, compiled, kinds, definitions)
        out: list[CompiledRule] = []
        try:
            made = PRESETS[r.kind](r, ctx)
            extra = ctx.condition(r.when, ("when",)) if r.when is not None and r.kind != "generic" else None
            for parts in made if isinstance(made, list) else [made]:
                cond = parts.condition if extra is None else All((parts.condition, extra))
                then = parts.then if parts.then is not None else tuple(r.then) if r.then else parts.default_then
                rule = CompiledRule(
                    id=r.id,
                    kind=r.kind,
                    category=r.category,
                    condition=cond,
                    episode=parts.episode,
                    then=then,
                    evidence=parts.evidence,
                    reason=parts.reason,
                    threshold=parts.threshold,
                    aliases=parts.aliases,
                    description=r.description,
                    subject=parts.subject,
                    ladder=parts.ladder,
                    suffix=parts.suffix,
                    part=parts.part,
                    age=parts.age,
                )
                used = _check_texts(rule, rf, registry, path, source, lines, parts.then_at)
                _check_subject(rule, registry, path)
                out.append(rule)
                if r.enabled:
                    needed |= {parts.aliases.get(u, u) for u in used}
                    needed |= rule.features()
        except (ConditionError, PresetError) as exc:
            raise fail(str(exc), exc.path) from None
        compiled[r.id] = out[0]
        parts_of[r.id] = out
    needed |= {"manager_id", "contact_policy", "status"}
    needed |= policy_features(rf.policies)
    needed = {n for n in needed if registry.get(n).subject == "client"}
    rules = sorted(
        (p for r in rf.rules if r.enabled for p in parts_of[r.id]), key=lambda c: (c.id, c.ladder or 0, c.suffix)
    )
    canonical = json.dumps(rf.model_dump(mode="json"), sort_keys=True, default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return RuleSet(rf, source, tz, registry, rules, digest, needed)
