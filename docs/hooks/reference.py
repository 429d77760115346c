"""MkDocs hook: the "Rule reference" page, generated at build time so it never drifts from the code.

The page (`reference.md`, a virtual file: nothing is written to disk or committed) is rendered from
`retainer.rules.schema.RuleFile.model_json_schema()` (what `retainer schema` prints), the built-in
feature registry (`retainer.rules.features`), the condition operators (`retainer.rules.conditions.OPS`)
and the planned action types (`retainer.actions.ACTION_TYPES`).

Every field gets its type, default and description. A description comes from the schema
(`Field(description=...)` in `retainer/rules/schema.py`, the better place for it); the `NOTES` below
fill in the fields whose schema has none. Anything that would make the page incomplete or stale (a
field with no description, a note for a field that no longer exists or that the schema now describes
itself, a definition the page does not place, an operator without a meaning) is logged as a warning,
which fails `mkdocs build --strict` in CI. `tests/test_docs_reference.py` checks the same without MkDocs.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

PAGE = "reference.md"
log = logging.getLogger("mkdocs.plugins.retainer.reference")

# Descriptions for fields whose schema has none, keyed "Definition.field".
NOTES: dict[str, str] = {
    # the file
    "RuleFile.version": "format version of the rule file; only 1 exists",
    "RuleFile.timezone": "IANA time zone name; calendar days, date-only `as_of` values and naive times use it",
    "RuleFile.features": "named aggregates, usable in conditions, episodes and templates like built-in features",
    "RuleFile.templates": "message templates by id; an action naming one also carries the rendered subject and body",
    "RuleFile.rules": "the rules; `kind` selects each rule's shape (default `generic`)",
    "RuleFile.policies": "policies applied to every rule's actions",
    # every rule
    "ForgottenRule.after": "the default threshold: days (or other duration) since the last activity",
    "ForgottenRule.overrides": "other thresholds by condition; the first match wins; a client attribute "
    "`forgotten_after` beats them all",
    "ForgottenRule.statuses": "client statuses the rule watches (`archived` is refused)",
    "ForgottenRule.activity": "narrows what counts as activity (default: every source, kind and direction)",
    "ReleaseRule.forgotten_rule": "id of a `forgotten` rule of this file: its threshold, overrides and activity apply",
    "ReleaseRule.grace": "how long after becoming forgotten the release fires",
    "ReleaseRule.unless_future_task": "an open task due on or after as_of's date prevents the release",
    "Override.when": "the condition a client must meet for this threshold",
    "Override.after": "the threshold for those clients",
    "ActivitySpec.sources": "kinds of facts that count as activity",
    "ActivitySpec.kinds": "touch kinds that count (default: all)",
    "ActivitySpec.directions": "touch directions that count (default: all)",
    # actions
    "ActionSpec.create_task": "a task in the CRM",
    "ActionSpec.reassign": "give the client to another manager",
    "ActionSpec.notify_manager": "a message to a manager",
    "ActionSpec.notify_client": "a message to the client",
    "ActionSpec.escalate": "a message about the client to a supervisor (by default)",
    "ActionSpec.tag": "add a tag to the client (`- tag: churned` is short for `{tag: churned}`)",
    "ActionSpec.untag": "remove a tag from the client (`- untag: churned` works too)",
    "ActionSpec.propose_offer": "propose an offer to the client",
    "ActionSpec.create_deal": "open a deal in the CRM",
    "ActionSpec.start_process": "start a CRM process (`- start_process: winback` works too)",
    "CreateTaskSpec.title": "the task's title (a template)",
    "CreateTaskSpec.due_in": "the task is due this long after as_of's date",
    "CreateTaskSpec.kind": "the task's kind in the CRM",
    "ReassignSpec.strategy": "`least_loaded`: fewest non-archived clients; `round_robin`: the next eligible "
    "manager in id order",
    "ReassignSpec.same_team": "only managers of the current manager's team",
    "NotifyManagerSpec.template": "template id (rendered when the file defines it)",
    "NotifyClientSpec.channel": "channel the host uses, e.g. email or sms",
    "NotifyClientSpec.template": "template id (rendered when the file defines it)",
    "EscalateSpec.template": "template id (rendered when the file defines it)",
    "TagSpec.tag": "the tag",
    "ProposeOfferSpec.offer": "the offer's id in the CRM",
    "ProposeOfferSpec.amount": "the offer's amount",
    "ProposeOfferSpec.deliver": "`outbound`: contact the client now; `next_inbound`: when the client next "
    "gets in touch",
    "CreateDealSpec.title": "the deal's title (a template)",
    "CreateDealSpec.amount": "the deal's amount",
    "StartProcessSpec.process": "the process's id in the CRM",
    # named features and templates
    "FeatureDef.min": "entity.field whose smallest value is the feature, e.g. invoices.due_at",
    "FeatureDef.max": "entity.field whose largest value is the feature, e.g. touches.at",
    "TemplateDef.subject": "subject line (a template)",
    "TemplateDef.body": "message body (a template)",
}

# What every planned action carries (retainer.actions.Action), for the host's adapter.
ACTION_NOTES: dict[str, str] = {
    "type": "the action type, as in `then:`",
    "id": "`uuid5(key)`: the same situation always has the same id (use it as an idempotency key)",
    "key": "`rule:client:episode:type`",
    "rule": "the rule's id",
    "client_id": "the client",
    "category": "the rule's category",
    "reason": "one line for people",
    "evidence": "the feature values, threshold and episode the action was decided on",
    "as_of": "the instant the plan was made as of",
}

OP_NOTES: dict[str, str] = {
    "eq": "equal (a bare value means `eq`)",
    "ne": "not equal",
    "gt": "greater than",
    "gte": "greater than or equal",
    "lt": "less than",
    "lte": "less than or equal",
    "in": "one of a list",
    "not_in": "none of a list",
    "between": "within an inclusive range `[low, high]`",
    "contains": "a set (tags) holds the value, or a text contains it",
    "exists": "the value is (`true`) or is not (`false`) missing",
    "older_than": "a date feature is at least this duration before as_of (the calendar rule of `after`)",
}

# Where each definition goes: (definition, heading, anchor); the page adds any definition not listed.
RULES = [("GenericRule", "`kind: generic`"), ("ForgottenRule", "`kind: forgotten`"), ("ReleaseRule", "`kind: release`"),
         ("Override", "`overrides:` entries"), ("ActivitySpec", "`activity:`"), ("ChurnedRule", "`kind: churned`"),
         ("WinbackRule", "`kind: winback`"), ("UnpaidRule", "`kind: unpaid`"), ("DebtorRule", "`kind: debtor`"),
         ("LadderStep", "`steps:` entries (debtor)"), ("EscalateRule", "`kind: escalate`"),
         ("RepeatSaleRule", "`kind: repeat_sale`"), ("OverdueTasksRule", "`kind: overdue_tasks`")]
POLICY_PARTS = [("Cap", "`caps:` entries"), ("SpendGrowth", "`spend_growth:`"), ("Cooloff", "`cooloff:`"),
                ("Unprofitable", "`no_development_for_unprofitable:`"), ("AbcSpec", "`abc:` (the file's ABC analysis)")]
LABELS = {"GenericRule": "generic rule", "ForgottenRule": "forgotten rule", "ReleaseRule": "release rule",
          "ActionSpec": "action", "FeatureDef": "named feature", "TemplateDef": "template", "Policies": "policies",
          "Override": "override", "ActivitySpec": "activity", "ChurnedRule": "churned rule",
          "WinbackRule": "winback rule", "UnpaidRule": "unpaid rule", "DebtorRule": "debtor rule",
          "LadderStep": "ladder step", "EscalateRule": "escalate rule", "RepeatSaleRule": "repeat_sale rule",
          "OverdueTasksRule": "overdue_tasks rule", "Cap": "cap", "SpendGrowth": "spend growth",
          "Cooloff": "cool-off", "Unprofitable": "unprofitable", "AbcSpec": "ABC analysis"}


def _anchor(name: str) -> str:
    return name.lower()


def _code(value: str) -> str:
    tick = "``" if "`" in value else "`"
    pad = " " if "`" in value else ""
    return f"{tick}{pad}{value}{pad}{tick}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class _Renderer:
    def __init__(self) -> None:
        from pydantic import TypeAdapter

        from retainer.rules import schema as schema_module
        from retainer.rules.schema import Condition, DurationField, RuleFile

        self.module = schema_module
        self.schema = RuleFile.model_json_schema()
        self.defs: dict[str, Any] = self.schema["$defs"]
        self.duration = TypeAdapter(DurationField).json_schema()
        self.condition = TypeAdapter(Condition).json_schema()
        self.problems: list[str] = []
        self.used_notes: set[str] = set()
        self.placed: set[str] = set()
        self.labels = dict(LABELS)
        for key, fs in self.defs["ActionSpec"]["properties"].items():
            for alt in fs.get("anyOf", [fs]):
                if "$ref" in alt:
                    self.labels.setdefault(alt["$ref"].rsplit("/", 1)[-1], f"{key} options")

    # ---------------------------------------------------------------- types

    def _is(self, s: dict[str, Any], kind: dict[str, Any]) -> bool:
        strip = ("title", "default", "description")
        return {k: v for k, v in s.items() if k not in strip} == {k: v for k, v in kind.items() if k not in strip}

    def type_of(self, s: dict[str, Any]) -> str:
        if self._is(s, self.duration):
            return "[duration](#duration)"
        if self._is(s, self.condition):
            return "[condition](#condition)"
        if "$ref" in s:
            name = s["$ref"].rsplit("/", 1)[-1]
            return f"[{self.labels.get(name, name)}](#{_anchor(name)})"
        for key in ("anyOf", "oneOf"):
            if key in s:
                alts = [a for a in s[key] if a.get("type") != "null"]
                return " or ".join(self.type_of(a) for a in alts) or "null"
        if "const" in s:
            return _code(json.dumps(s["const"]))
        if "enum" in s:
            return "one of " + ", ".join(_code(str(v)) for v in s["enum"])
        t = s.get("type")
        if t == "array":
            items = s.get("items", {})
            if "enum" in items:
                out = "list of " + ", ".join(_code(str(v)) for v in items["enum"])
            else:
                out = f"list of {self.type_of(items)}" if items else "list"
            if s.get("minItems"):
                out += f" (at least {s['minItems']})"
            return out
        if t == "object":
            extra = s.get("additionalProperties")
            if isinstance(extra, dict) and extra:
                return f"map of name to {self.type_of(extra)}"
            return "mapping"
        out = {"string": "text", "integer": "integer", "number": "number", "boolean": "true/false"}.get(t, str(t))
        out = {"date": "date", "date-time": "date and time"}.get(s.get("format", ""), out)
        if "pattern" in s:
            out += f" matching {_code(s['pattern'])}"
        if "maxLength" in s:
            out += f", at most {s['maxLength']} characters"
        if s.get("minLength"):
            out += f", at least {s['minLength']} character{'s' if s['minLength'] > 1 else ''}"
        return out

    # ---------------------------------------------------------------- defaults and descriptions

    def default_of(self, model: str, field: str, s: dict[str, Any], required: bool) -> str:
        if required:
            return "**required**"
        if "default" in s:
            value = s["default"]
        else:  # a default_factory: the JSON schema leaves it out, the model knows it
            cls = getattr(self.module, model, None)
            info = getattr(cls, "model_fields", {}).get(field)
            if info is None or info.default_factory is None:
                return "—"
            from pydantic import TypeAdapter

            typ = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            adapter = TypeAdapter(typ)  # type: ignore[valid-type]
            value = adapter.dump_python(info.default_factory(), mode="json")  # type: ignore[call-arg]
        return "none" if value is None else _code(json.dumps(value, ensure_ascii=False))

    def description_of(self, model: str, field: str, s: dict[str, Any]) -> str:
        desc = s.get("description")
        generic = {self.duration.get("description"), self.condition.get("description")}
        if desc in generic:
            desc = None
        note = NOTES.get(f"{model}.{field}")
        if note is not None:
            self.used_notes.add(f"{model}.{field}")
            if desc:
                self.problems.append(f"{model}.{field}: the schema now describes it; remove it from NOTES")
        text = desc or note
        if not text:
            self.problems.append(
                f"{model}.{field} has no description: add Field(description=...) in retainer/rules/schema.py "
                f"(or a line to NOTES in docs/hooks/reference.py)"
            )
            return ""
        return text

    # ---------------------------------------------------------------- blocks

    def table(self, name: str, s: dict[str, Any] | None = None) -> list[str]:
        s = s if s is not None else self.defs[name]
        self.placed.add(name)
        required = set(s.get("required", ()))
        out = ["| field | type | default | description |", "|---|---|---|---|"]
        for field, fs in s.get("properties", {}).items():
            typ = self.type_of(fs)
            default = self.default_of(name, field, fs, field in required)
            desc = self.description_of(name, field, fs)
            out.append(f"| `{field}` | {_cell(typ)} | {_cell(default)} | {_cell(desc)} |")
        return [*out, ""]

    def section(self, level: str, name: str, heading: str) -> list[str]:
        out = [f"{level} {heading} {{#{_anchor(name)}}}", ""]
        doc = self.defs[name].get("description")
        if doc:
            out += [doc, ""]
        return out + self.table(name)

    def actions(self) -> list[str]:
        from retainer.actions import ACTION_TYPES, Action

        spec = self.defs["ActionSpec"]
        by_def: dict[str, list[str]] = {}
        for key, fs in spec["properties"].items():
            ref = next((a["$ref"] for a in fs.get("anyOf", [fs]) if "$ref" in a), None)
            if ref:
                by_def.setdefault(ref.rsplit("/", 1)[-1], []).append(key)
        out = ["## Actions {#actionspec}", "", "Each entry of `then:` has exactly one key, the action type; its "
               "value holds the action's options (an empty value takes every default).", ""]
        out += self.table("ActionSpec")
        base = set(Action.model_fields)
        for name, keys in by_def.items():
            out += self.section("###", name, ", ".join(f"`{k}`" for k in keys))
            for key in keys:
                cls = ACTION_TYPES.get(key)
                if cls is None:
                    self.problems.append(f"action {key!r} of the rule schema is not in retainer.actions.ACTION_TYPES")
                    continue
                props = cls.model_json_schema().get("properties", {})
                own = [f"`{f}` ({self.type_of(props[f])})" for f in cls.model_fields if f not in base]
                out += [f"A planned `{key}` carries, besides the [common fields](#planned-actions): "
                        + (", ".join(own) or "nothing else") + ".", ""]
        missing = set(ACTION_TYPES) - set(spec["properties"])
        if missing:
            self.problems.append(f"action types without a rule-file spec: {sorted(missing)}")
        props = Action.model_json_schema()["properties"]
        out += ["### Every planned action {#planned-actions}", "",
                "What a plan (and a handler) sees, whatever the type:", "",
                "| field | type | meaning |", "|---|---|---|"]
        for f in Action.model_fields:
            if f not in ACTION_NOTES:
                self.problems.append(f"planned action field {f!r} has no meaning in ACTION_NOTES")
            out.append(f"| `{f}` | {_cell(self.type_of(props[f]))} | {_cell(ACTION_NOTES.get(f, ''))} |")
        return [*out, ""]

    def features(self) -> list[str]:
        from retainer.rules.features import FeatureRegistry

        reg = FeatureRegistry()
        out = ["## Built-in features {#features}", "",
               "Usable in conditions, `episode:` and templates (`{days_since_activity}`), from "
               "`retainer.rules.features`.", "", "| feature | type | meaning |", "|---|---|---|"]
        for name, typ, doc in reg.describe():
            out.append(f"| `{name}` | {typ} | {_cell(doc)} |")
        for name in reg.names():
            if name.endswith("_<window>"):
                example = name.replace("<window>", "90d")
                impl = reg.get(example)
                out.append(f"| `{name}` | {impl.type} | for any duration window; `{example}`: {_cell(impl.doc)} |")
            elif name == "attributes.<key>":
                out.append(f"| `{name}` | any | the client attribute `<key>` |")
        return [*out, ""]

    def value_types(self) -> list[str]:
        from retainer.rules.conditions import OPS

        out = ["## Value types", "", "### Duration {#duration}", "",
               f"{self.duration.get('description', '')}: text matching "
               f"{_code(self.duration['anyOf'][0]['pattern'])}, or a whole number (of days).", "",
               "### Condition {#condition}", "",
               f"A mapping: {self.condition.get('description', '')}.", "", "| operator | holds when |", "|---|---|"]
        for op in OPS:
            if op not in OP_NOTES:
                self.problems.append(f"condition operator {op!r} has no meaning in OP_NOTES")
            out.append(f"| `{op}` | {_cell(OP_NOTES.get(op, ''))} |")
        for op in sorted(set(OP_NOTES) - set(OPS)):
            self.problems.append(f"OP_NOTES names {op!r}, which retainer.rules.conditions.OPS no longer has")
        return [*out, ""]

    def render(self) -> str:
        out = [
            "# Rule reference",
            "",
            '!!! note "Generated from the code"',
            "    This page is generated when the site is built, from `RuleFile.model_json_schema()` (the JSON "
            "Schema that `retainer schema` prints), the built-in feature registry and the action types, so it "
            "always matches the code. The guide to the same file, with examples, is [The rule file](rules.md).",
            "",
            "## The rule file {#rulefile}",
            "",
            "A YAML or JSON document with these top-level keys.",
            "",
        ]
        out += self.table("RuleFile", self.schema)
        out += ["## Rules", "", "`kind` selects one of the shapes below; without it, a rule is `generic`.", ""]
        for name, heading in RULES:
            out += self.section("###", name, heading)
        out += self.actions()
        out += self.section("##", "FeatureDef", "Named features (`features:`)")
        out += self.section("##", "TemplateDef", "Templates (`templates:`)")
        out += self.section("##", "Policies", "Policies (`policies:`)")
        for name, heading in POLICY_PARTS:
            out += self.section("###", name, heading)
        for name in sorted(set(self.defs) - self.placed):
            self.problems.append(f"definition {name} has no place of its own on the page (listed at the end)")
            out += self.section("##", name, name)
        out += self.value_types()
        out += self.features()
        for key in sorted(set(NOTES) - self.used_notes):
            self.problems.append(f"NOTES[{key!r}] names no field of the schema any more; remove it")
        return "\n".join(out).rstrip() + "\n"


def render() -> tuple[str, list[str]]:
    """The page's Markdown and the problems found while rendering it (each fails a strict build)."""
    r = _Renderer()
    text = r.render()
    return text, r.problems


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    if files.get_file_from_path(PAGE) is not None:
        log.warning("docs/%s exists, but that page is generated by docs/hooks/reference.py: remove the file", PAGE)
        return files
    text, problems = render()
    for problem in problems:
        log.warning("rule reference: %s", problem)
    files.append(File.generated(config, PAGE, content=text))
    return files
