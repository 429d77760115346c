"""Rule files: validation errors with file:line and rule id, JSON/dict input, generic rules,
named features, episodes and explain (DESIGN §3, §5, §12)."""

from __future__ import annotations

import json
import subprocess
import textwrap
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_cli import SCRIPT

import retainer
from retainer import RulesError
from retainer.plan import Plan
from retainer.stores import Store
from tests.conftest import engine_for


def load_error(tmp_path: Path, text: str, name: str = "rules.yaml") -> tuple[RulesError, str]:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    with pytest.raises(RulesError) as info:
        retainer.load_rules(str(p))
    return info.value, str(p)


def assert_error(err: RulesError, path: str, line: int, rule: str | None, *needles: str) -> None:
    text = str(err)
    assert err.file == path
    assert err.line == line, text
    assert text.startswith(f"{path}:{line}"), text
    if rule is not None:
        assert err.rule == rule, text
        assert rule in text
    for n in needles:
        assert n in text, text


# ---------------------------------------------------------------- errors with file:line and rule id


def test_unknown_feature_with_did_you_mean(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: wake
            when:
              all:
                - {tags: {contains: vip}}
                - days_since_activty: {gte: 30}
            then:
              - tag: sleepy
        """)
    assert_error(err, p, 7, "wake", "days_since_activty", "did you mean", "days_since_activity")


def test_unknown_feature_in_an_override(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: forgotten
            kind: forgotten
            after: 60d
            overrides:
              - after: 30d
                when:
                  tagz: {contains: key-account}
        """)
    assert_error(err, p, 9, "forgotten", "tagz", "tags")


def test_unknown_operator(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: r1
            when:
              days_since_activity:
                gte: 1
                gtee: 5
            then: [{tag: x}]
        """)
    assert_error(err, p, 7, "r1", "gtee", "unknown operator")


def test_unknown_field(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: forgotten
            kind: forgotten
            after: 60d
            colour: red
        """)
    assert_error(err, p, 6, "forgotten", "colour")


def test_an_error_outside_the_rules_names_its_path(tmp_path: Path) -> None:
    """`limit: Input should be...` did not say which cap; `required field 'for'` not which policy."""
    err, p = load_error(tmp_path, """
        version: 1
        rules: [{id: f, kind: forgotten, after: 60d}]
        policies:
          caps:
            - {category: development, limit: 1, per: 60d}
            - category: development
              limit: -1
              per: 30d
        """)
    assert_error(err, p, 7, None, "policies.caps[1].limit: Input should be greater than or equal to 0")
    err, p = load_error(tmp_path, """
        version: 1
        rules: [{id: f, kind: forgotten, after: 60d}]
        policies:
          cooloff: {blocks: [development]}
        """)
    assert_error(err, p, 4, None, "policies.cooloff: required field 'for' is missing")


def test_a_scenario_given_as_a_rule_file_says_so(tmp_path: Path) -> None:
    """`retainer validate x.scenario.yaml` said "unknown field 'name'"."""
    err, _p = load_error(tmp_path, """
        name: caps
        rules:
          version: 1
          rules: [{id: f, kind: forgotten, after: 60d}]
        given: {managers: [{id: m1}]}
        steps: [{as_of: 2026-03-01, expect: []}]
        """)
    assert "this is a scenario (given, steps), not a rule file: run it with `retainer test`" in str(err)


def test_misspelt_required_field_is_reported_as_unknown_field(tmp_path: Path) -> None:
    # the analyst typed `aftr`; the offending key is line 5
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: forgotten
            kind: forgotten
            aftr: 60d
        """)
    assert_error(err, p, 5, "forgotten", "aftr")


def test_unknown_field_in_an_action(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: forgotten
            kind: forgotten
            after: 60d
            then:
              - create_task:
                  title: hi
                  due: 2d
        """)
    assert_error(err, p, 9, "forgotten", "due")


def test_unknown_top_level_field(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rulez: []
        rules:
          - {id: f, kind: forgotten, after: 60d}
        """)
    assert_error(err, p, 2, None, "rulez")


@pytest.mark.parametrize(("bad", "why"), [
    ("sixty", "duration"), ("60x", "duration"), ("-5d", "duration"), ("P1DT2H", "duration"),
    ("3000000d", "too long: at most 100 years"), ("100000y", "too long: at most 100 years"),  # no date offset
])
def test_bad_duration(tmp_path: Path, bad: str, why: str) -> None:
    err, p = load_error(tmp_path, f"""
        version: 1
        rules:
          - id: forgotten
            kind: forgotten
            after: "{bad}"
        """)
    assert_error(err, p, 5, "forgotten", bad, why)


def test_bad_duration_in_an_action(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: forgotten
            kind: forgotten
            after: 60d
            then:
              - create_task:
                  title: hi
                  due_in: tomorrow
        """)
    assert_error(err, p, 9, "forgotten", "tomorrow")


def test_duplicate_rule_id(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: forgotten
            kind: forgotten
            after: 60d
          - kind: forgotten
            id: forgotten
            after: 30d
        """)
    assert_error(err, p, 7, "forgotten", "duplicate")


def test_release_pointing_at_a_missing_rule(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: forgotten
            kind: forgotten
            after: 60d
          - id: release
            kind: release
            forgotten_rule: forgoten
            grace: 14d
        """)
    assert_error(err, p, 8, "release", "forgotten_rule 'forgoten' does not exist; did you mean 'forgotten'?")


def test_release_pointing_at_a_non_forgotten_rule(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: release
            kind: release
            forgotten_rule: aaa-generic
          - id: aaa-generic
            when: {status: active}
            then: [{tag: x}]
        """)
    assert_error(err, p, 5, "release", "aaa-generic", "not a forgotten rule; there are no forgotten rules in this file")


def test_release_grace_in_hours_on_a_day_threshold_loads(tmp_path: Path) -> None:
    """Hours on top of days is allowed (docs/decisions.md, "Hours plus days"), not a load error."""
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent("""
        version: 1
        rules:
          - id: forgotten
            kind: forgotten
            after: 60d
          - id: release
            kind: release
            forgotten_rule: forgotten
            grace: 36h
        """))
    assert [r.id for r in retainer.load_rules(p).rules] == ["forgotten", "release"]


@pytest.mark.parametrize("title", ["Call {client.nam}", "Call {foo}", "Call {new_manager.name}", "Call {client.name"])
def test_unknown_placeholder_in_a_title(tmp_path: Path, title: str) -> None:
    err, p = load_error(tmp_path, f"""
        version: 1
        rules:
          - id: forgotten
            kind: forgotten
            after: 60d
            then:
              - create_task:
                  due_in: 2d
                  title: "{title}"
        """)
    assert_error(err, p, 9, "forgotten")


def test_unknown_placeholder_in_a_template_body(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        templates:
          nudge:
            subject: "About {client.name}"
            body: "Dear {manager.name}, call {client.name}: {bogus}"
        rules:
          - id: forgotten
            kind: forgotten
            after: 60d
            then:
              - notify_manager: {template: nudge}
        """)
    # the line of the body; the rule that uses the template is named
    assert_error(err, p, 5, "forgotten", "bogus")


def test_unknown_placeholder_in_a_template_subject(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        templates:
          nudge:
            body: "Dear {manager.name}"
            subject: "About {client.nmae}"
        rules:
          - id: forgotten
            kind: forgotten
            after: 60d
            then:
              - notify_manager: {template: nudge}
        """)
    assert err.line == 5 and err.file == p and "client.nmae" in str(err)


def test_unknown_rule_kind(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: forgotten
            kind: forgoten
            after: 60d
        """)
    assert_error(err, p, 4, "forgotten", "forgoten")


def test_bad_timezone(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        timezone: Mars/Olympus
        rules:
          - {id: forgotten, kind: forgotten, after: 60d}
        """)
    assert_error(err, p, 2, None, "Mars/Olympus")


def test_a_timezone_that_depends_on_the_machine_is_refused(tmp_path: Path) -> None:
    """`localtime` is a file of the tz database: the same rules gave other days on a laptop and a server."""
    err, p = load_error(tmp_path, """
        version: 1
        timezone: localtime
        rules:
          - {id: forgotten, kind: forgotten, after: 60d}
        """)
    assert_error(err, p, 2, None, "'localtime' depends on the machine")


def test_named_feature_with_an_unknown_entity(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        features:
          gadgets_30d:
            within: 30d
            count: widgets
        rules:
          - {id: forgotten, kind: forgotten, after: 60d}
        """)
    assert_error(err, p, 5, None, "widgets")


def test_named_feature_with_an_unknown_field(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        features:
          revenue:
            within: 90d
            sum: invoices.amout
        rules:
          - {id: forgotten, kind: forgotten, after: 60d}
        """)
    assert_error(err, p, 5, None, "amout")


def test_named_feature_with_an_unknown_where_field(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        features:
          calls:
            count: touches
            where:
              direction: outbound
              knd: call
        rules:
          - {id: forgotten, kind: forgotten, after: 60d}
        """)
    assert_error(err, p, 7, None, "knd")


def test_named_feature_may_not_shadow_a_builtin(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        features:
          tags: {count: touches}
        rules:
          - {id: forgotten, kind: forgotten, after: 60d}
        """)
    assert_error(err, p, 3, None, "tags")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("version: 1\nrules:\n  - id: r1\n    kind: forgotten\n    after: 60d\n   bad: x\n", 6),
        ("version: 1\nrules:\n  - id: r1\n    kind: forgotten\n    after: 60d\n    description: a: b\n", 6),
        ("version: 1\nrules:\n  - id: r1\n    kind: forgotten\n    after: [60d\n", 6),
    ],
)
def test_yaml_syntax_error(tmp_path: Path, text: str, line: int) -> None:
    err, p = load_error(tmp_path, text)
    assert_error(err, p, line, None, "YAML")


def test_duplicate_key(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: r1
            kind: forgotten
            after: 60d
            after: 30d
        """)
    assert_error(err, p, 6, None, "after")


@pytest.mark.parametrize(
    ("leaf", "needle"),
    [
        ("days_since_activity: {gte: abc}", "abc"),
        ("days_since_activity: {between: [1]}", "between"),
        ("days_since_activity: {in: 5}", "in"),
        ("days_since_activity: {exists: maybe}", "exists"),
        ("days_since_activity: {contains: 5}", "contains"),
        ("tags: {eq: vip}", "tags"),
        ("tags: {between: [a, b]}", "tags is a set: use contains, in, not_in or exists"),
        ("tags: {contains: [vip, key-account]}", "contains takes one value; for any of several write {tags: {in"),
        ("days_since_activity: {older_than: 30d}", "older_than"),
        ("last_activity_at: {older_than: soon}", "soon"),
        ("days_since_activity: {}", "days_since_activity"),
        # a value the feature never takes is a typo
        ("status: archivd", "did you mean 'archived'"),
        ("contact_policy: {in: [ok, dnc]}", "contact_policy is never 'dnc'"),
        ("status: {ne: activ}", "status is never 'activ'"),
    ],
)
def test_bad_condition_values(tmp_path: Path, leaf: str, needle: str) -> None:
    err, p = load_error(tmp_path, f"""
        version: 1
        rules:
          - id: r1
            then: [{{tag: x}}]
            when:
              {leaf}
        """)
    assert_error(err, p, 6, "r1", needle)


def test_unknown_episode_feature(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: r1
            when: {status: active}
            episode: last_invoice
            then: [{tag: x}]
        """)
    assert_error(err, p, 5, "r1", "last_invoice")


def test_missing_file_and_directory() -> None:
    with pytest.raises(RulesError, match="not found"):
        retainer.load_rules("/nonexistent/rules.yaml")


def test_rules_error_is_a_retainer_error(tmp_path: Path) -> None:
    err, _ = load_error(tmp_path, "version: 2\nrules: []\n")
    assert isinstance(err, retainer.RetainerError)


# ---------------------------------------------------------------- JSON files, text and dicts


RULE_DICT: dict[str, Any] = {
    "version": 1,
    "timezone": "Europe/Moscow",
    "rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"}],
}


def test_json_rule_file_works(tmp_path: Path, store: Store) -> None:
    p = tmp_path / "rules.json"
    p.write_text(json.dumps(RULE_DICT, indent=2), encoding="utf-8")
    rs = retainer.load_rules(str(p))
    assert rs.timezone == "Europe/Moscow"
    assert [r.id for r in rs.rules] == ["forgotten"]
    rs2 = retainer.load_rules(p)  # a Path works too
    assert rs2.digest == rs.digest
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T12:00:00+03:00"}])
    assert [a.client_id for a in retainer.Engine(rs, store).plan("2026-03-02").actions] == ["c1"]


def test_json_rule_file_errors_have_lines(tmp_path: Path) -> None:
    bad = {"version": 1, "rules": [{"id": "forgotten", "kind": "forgotten", "after": "6x"}]}
    err, p = load_error(tmp_path, json.dumps(bad, indent=2), name="rules.json")
    # {, "version", "rules": [, {, "id", "kind", "after" -> line 7
    assert_error(err, p, 7, "forgotten", "6x")


def test_load_rules_from_a_dict_and_text(store: Store) -> None:
    rs = retainer.load_rules(RULE_DICT)
    assert isinstance(rs, retainer.RuleSet)
    assert rs.rule("forgotten").kind == "forgotten"
    text = "version: 1\ntimezone: Europe/Moscow\nrules:\n  - {id: forgotten, kind: forgotten, after: 60d}\n"
    assert retainer.load_rules(text).digest == rs.digest
    assert retainer.load_rules(json.dumps(RULE_DICT)).digest == rs.digest
    # Engine takes a dict as well
    assert isinstance(retainer.Engine(RULE_DICT, store).rules, retainer.RuleSet)


def test_load_rules_from_a_bad_dict_names_the_rule() -> None:
    with pytest.raises(RulesError) as info:
        retainer.load_rules({"version": 1, "rules": [{"id": "f", "kind": "forgotten", "after": "soon"}]})
    assert info.value.rule == "f" and "soon" in str(info.value)


def test_bare_int_duration_means_days() -> None:
    rs = retainer.load_rules({"version": 1, "rules": [{"id": "f", "kind": "forgotten", "after": 60}]})
    th = rs.rule("f").threshold
    assert th is not None and th.default.days == 60


def test_disabled_rules_do_not_run(store: Store) -> None:
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}])
    rules = {"version": 1, "rules": [
        {"id": "on", "when": {"status": "active"}, "then": [{"tag": "a"}]},
        {"id": "off", "enabled": False, "when": {"status": "active"}, "then": [{"tag": "b"}]}]}
    assert {a.rule for a in engine_for(rules, store).plan("2026-03-01").actions} == {"on"}


# ---------------------------------------------------------------- generic rules: operators

AS_OF = "2026-06-01"


def ago(n: int) -> str:
    return (date.fromisoformat(AS_OF) - timedelta(days=n)).isoformat() + "T12:00:00Z"


@pytest.fixture
def crm(store: Store) -> Store:
    """c1: invoice 100 days ago; c2: invoice 10 days ago; c3: no invoices (missing values)."""
    store.add(
        managers=[{"id": "m1", "name": "Anna"}, {"id": "m2", "active": False}],
        clients=[
            {"id": "c1", "manager_id": "m1", "name": "Acme Corp", "tags": ["vip", "key-account"],
             "abc_class": "A", "attributes": {"region": "north"}},
            {"id": "c2", "manager_id": "m1", "name": "Beta", "abc_class": "B"},
            {"id": "c3", "manager_id": "m2", "name": "Gamma", "tags": ["vip"], "status": "prospect"},
        ],
        invoices=[
            {"id": "i1", "client_id": "c1", "issued_at": ago(100), "amount": "1000.50"},
            {"id": "i2", "client_id": "c2", "issued_at": ago(10), "amount": 50},
        ],
    )
    return store


def matching(store: Store, when: dict[str, Any], as_of: str = AS_OF) -> set[str]:
    rules = {"version": 1, "rules": [{"id": "g", "when": when, "then": [{"tag": "hit"}]}]}
    plan = engine_for(rules, store).plan(as_of)
    return {a.client_id for a in plan.actions}


DSLI = "days_since_last_invoice"


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({DSLI: {"eq": 100}}, {"c1"}),
        ({DSLI: 100}, {"c1"}),  # a bare value means eq
        ({DSLI: {"ne": 100}}, {"c2"}),  # missing (c3) is false even for ne
        ({DSLI: {"gt": 10}}, {"c1"}),
        ({DSLI: {"gte": 10}}, {"c1", "c2"}),
        ({DSLI: {"lt": 100}}, {"c2"}),
        ({DSLI: {"lte": 100}}, {"c1", "c2"}),
        ({DSLI: {"in": [10, 50]}}, {"c2"}),
        ({DSLI: {"not_in": [10]}}, {"c1"}),
        ({DSLI: {"between": [10, 100]}}, {"c1", "c2"}),
        ({DSLI: {"between": [11, 99]}}, set()),
        ({DSLI: {"exists": True}}, {"c1", "c2"}),
        ({DSLI: {"exists": False}}, {"c3"}),
        ({DSLI: {"gte": 10, "lte": 50}}, {"c2"}),  # several ops on one feature: all must hold
        ({"tags": {"contains": "vip"}}, {"c1", "c3"}),
        ({"tags": {"contains": "key-account"}}, {"c1"}),
        # on a set, in / not_in: any of the values, none of them (the whole set was looked up as one value)
        ({"tags": {"in": ["key-account", "nope"]}}, {"c1"}),
        ({"tags": {"in": ["vip", "key-account"]}}, {"c1", "c3"}),
        ({"tags": {"not_in": ["vip"]}}, {"c2"}),
        ({"tags": {"not_in": ["key-account", "nope"]}}, {"c2", "c3"}),
        ({"name": {"contains": "Corp"}}, {"c1"}),
        ({"status": "prospect"}, {"c3"}),
        ({"status": {"in": ["active", "prospect"]}}, {"c1", "c2", "c3"}),
        ({"status": {"not_in": ["active"]}}, {"c3"}),
        ({"manager_id": {"ne": "m1"}}, {"c3"}),
        ({"manager_active": False}, {"c3"}),
        ({"abc_class": {"in": ["A", "B"]}}, {"c1", "c2"}),
        ({"revenue_365d": {"gte": "1000.5"}}, {"c1"}),
        ({"revenue_365d": {"lt": 100}}, {"c2", "c3"}),  # revenue is 0, not missing, without invoices
        ({"revenue_30d": {"eq": 50}}, {"c2"}),
        ({"last_invoice_at": {"older_than": "100d"}}, {"c1"}),
        ({"last_invoice_at": {"older_than": "101d"}}, set()),
        ({"last_invoice_at": {"older_than": "10d"}}, {"c1", "c2"}),
        ({"last_invoice_at": {"gte": "2026-05-01"}}, {"c2"}),
        ({"attributes.region": "north"}, {"c1"}),
        ({"attributes.region": {"exists": False}}, {"c2", "c3"}),
    ],
)
def test_operators(crm: Store, when: dict[str, Any], expected: set[str]) -> None:
    assert matching(crm, when) == expected


@pytest.mark.parametrize("op", ["eq", "ne", "gt", "gte", "lt", "lte"])
def test_missing_values_make_comparisons_false(crm: Store, op: str) -> None:
    hits = matching(crm, {DSLI: {op: 50}})
    assert "c3" not in hits


@pytest.mark.parametrize(
    ("leaf", "value"),
    [("in", [0, 10, 100]), ("not_in", [1]), ("between", [-1000, 1000]), ("older_than", "0d"), ("exists", True)],
)
def test_missing_values_make_every_op_false_except_exists_false(crm: Store, leaf: str, value: Any) -> None:
    feature = "last_invoice_at" if leaf == "older_than" else DSLI
    assert "c3" not in matching(crm, {feature: {leaf: value}})
    assert "c3" in matching(crm, {DSLI: {"exists": False}})


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"not": {"tags": {"contains": "vip"}}}, {"c2"}),
        ({"not": {DSLI: {"gt": 50}}}, {"c2", "c3"}),  # not of a false-on-missing leaf holds
        ({"any": [{DSLI: {"gt": 50}}, {"status": "prospect"}]}, {"c1", "c3"}),
        ({"all": [{"tags": {"contains": "vip"}}, {DSLI: {"exists": True}}]}, {"c1"}),
        ({"all": [{"any": [{"name": "Beta"}, {"name": "Gamma"}]}, {"not": {"status": "prospect"}}]}, {"c2"}),
        ({"any": [{"all": [{"tags": {"contains": "vip"}}, {"not": {"abc_class": "A"}}]}, {DSLI: 10}]},
         {"c2", "c3"}),
        ({"not": {"any": [{"name": "Beta"}, {"not": {"tags": {"contains": "vip"}}}]}}, {"c1", "c3"}),
        # several keys in one mapping: all of them
        ({"tags": {"contains": "vip"}, "status": "active"}, {"c1"}),
    ],
)
def test_all_any_not_nesting(crm: Store, when: dict[str, Any], expected: set[str]) -> None:
    assert matching(crm, when) == expected


def test_generic_rule_is_once_per_client_without_episode(crm: Store) -> None:
    rules = {"version": 1, "rules": [{"id": "g", "when": {"status": "active"}, "then": [{"tag": "hit"}]}]}
    eng = engine_for(rules, crm)
    p1, p2 = eng.plan(AS_OF), eng.plan("2026-07-01")
    assert [a.key for a in p1.actions] == [a.key for a in p2.actions]
    assert {a.tag for a in p1.actions} == {"hit"}
    assert all(a.category == "retention" for a in p1.actions)


def test_generic_rule_category_reason_and_evidence(crm: Store) -> None:
    rules = {"version": 1, "rules": [{"id": "g", "category": "development",
                                      "when": {DSLI: {"gte": 90}}, "then": [{"tag": "hit"}]}]}
    (a,) = engine_for(rules, crm).plan(AS_OF).actions
    assert a.category == "development"
    assert a.evidence[DSLI] == 100
    assert DSLI in a.reason


# ---------------------------------------------------------------- named features and episodes


def test_named_count_feature_with_where_and_within_boundary(store: Store) -> None:
    store.add(
        managers=[{"id": "m1"}],
        clients=[{"id": "c1", "manager_id": "m1"}],
        touches=[
            {"id": "t1", "client_id": "c1", "at": ago(29), "direction": "outbound"},  # in
            {"id": "t2", "client_id": "c1", "at": ago(0), "direction": "outbound"},  # in (as_of day)
            {"id": "t3", "client_id": "c1", "at": ago(30), "direction": "outbound"},  # 30 days old: out
            {"id": "t4", "client_id": "c1", "at": ago(1), "direction": "inbound"},  # filtered by where
            {"id": "t5", "client_id": "c1", "at": ago(-1), "direction": "outbound"},  # after as_of
        ],
    )
    rules = {
        "version": 1,
        "features": {"outbound_30d_named": {"count": "touches", "where": {"direction": "outbound"},
                                            "within": "30d"}},
        "rules": [{"id": "g", "when": {"outbound_30d_named": {"gte": 0}}, "then": [{"tag": "x"}]}],
    }
    eng = engine_for(rules, store)
    (a,) = eng.plan(AS_OF).actions
    assert a.evidence["outbound_30d_named"] == 2
    # the built-in outbound_<window> agrees
    assert matching(store, {"outbound_30d": 2}) == {"c1"}
    # a day later t1 is 30 days old and t5 is in
    (b,) = eng.plan((date.fromisoformat(AS_OF) + timedelta(days=1)).isoformat()).actions
    assert b.evidence["outbound_30d_named"] == 2


def test_named_count_feature_without_window_and_with_ops(store: Store) -> None:
    store.add(
        managers=[{"id": "m1"}],
        clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}],
        touches=[
            {"id": "t1", "client_id": "c1", "at": ago(400), "kind": "call"},
            {"id": "t2", "client_id": "c1", "at": ago(5), "kind": "meeting"},
            {"id": "t3", "client_id": "c1", "at": ago(5), "kind": "email"},
        ],
    )
    rules = {
        "version": 1,
        "features": {"live": {"count": "touches", "where": {"kind": {"in": ["call", "meeting"]}}}},
        "rules": [{"id": "g", "when": {"live": {"gte": 0}}, "then": [{"tag": "x"}]}],
    }
    ev = {a.client_id: a.evidence["live"] for a in engine_for(rules, store).plan(AS_OF).actions}
    assert ev == {"c1": 2, "c2": 0}


def test_named_sum_feature(store: Store) -> None:
    store.add(
        managers=[{"id": "m1"}],
        clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}],
        invoices=[
            {"id": "i1", "client_id": "c1", "issued_at": ago(10), "amount": "100.25"},
            {"id": "i2", "client_id": "c1", "issued_at": ago(89), "amount": "0.75"},
            {"id": "i3", "client_id": "c1", "issued_at": ago(90), "amount": 1000},  # 90 days old: out
            {"id": "i4", "client_id": "c2", "issued_at": ago(200), "amount": 5},
        ],
    )
    rules = {
        "version": 1,
        "features": {"rev90": {"sum": "invoices.amount", "within": "90d"}},
        "rules": [{"id": "g", "when": {"rev90": {"gt": 100}},
                   "then": [{"create_task": {"title": "{client.id} spent {rev90}"}}]}],
    }
    plan = engine_for(rules, store).plan(AS_OF)
    (a,) = plan.actions
    assert a.client_id == "c1"
    assert a.title == "c1 spent 101"
    assert str(a.evidence["rev90"]) in ("101", "101.00", "101.0000")
    assert matching(store, {"revenue_90d": 101}) == {"c1"}
    assert matching(store, {"revenue_90d": 0}) == {"c2"}


def test_episode_feature_gives_one_key_per_episode(store: Store) -> None:
    store.add(
        managers=[{"id": "m1"}],
        clients=[{"id": "c1", "manager_id": "m1"}],
        invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-01-10T12:00:00Z", "amount": 10}],
    )
    rules = {"version": 1, "rules": [{"id": "sleep", "when": {DSLI: {"gte": 30}}, "episode": "last_invoice_at",
                                      "then": [{"tag": "sleeping"}]}]}
    eng = engine_for(rules, store)
    assert eng.plan("2026-02-08").actions == []
    (a,) = eng.plan("2026-02-09").actions
    assert "2026-01-10" in a.key and a.evidence["episode"] == "2026-01-10"
    assert [x.key for x in eng.plan("2026-03-01").actions] == [a.key]
    store.add(invoices=[{"id": "i2", "client_id": "c1", "issued_at": "2026-03-05T12:00:00Z", "amount": 10}])
    assert eng.plan("2026-04-03").actions == []
    (b,) = eng.plan("2026-04-04").actions
    assert b.key != a.key and "2026-03-05" in b.key


def test_plan_json_is_stable(crm: Store) -> None:
    rules = {"version": 1, "rules": [
        {"id": "b", "when": {"tags": {"contains": "vip"}}, "then": [{"tag": "v"}, {"tag": "w"}]},
        {"id": "a", "when": {DSLI: {"exists": True}}, "then": [{"tag": "x"}]}]}
    p: Plan = engine_for(rules, crm).plan(AS_OF)
    keys = [a.key for a in p.actions]
    assert keys == sorted(keys) and len(set(keys)) == len(keys) == 6
    assert p.to_json() == engine_for(dict(rules, rules=rules["rules"][::-1]), crm).plan(AS_OF).to_json()
    data = json.loads(p.to_json())
    assert set(data) >= {"as_of", "actions", "suppressed", "stats"}
    assert data["as_of"].startswith("2026-06-01T23:59:59")


# ---------------------------------------------------------------- explain


def test_explain_lists_each_condition_with_value_and_held(crm: Store) -> None:
    rules = {"version": 1, "rules": [{"id": "g", "when": {"all": [
        {DSLI: {"gte": 90}},
        {"any": [{"tags": {"contains": "vip"}}, {"status": "prospect"}]},
        {"not": {"revenue_365d": {"lt": 500}}},
    ]}, "then": [{"tag": "hit"}]}]}
    eng = engine_for(rules, crm)
    ex = eng.explain("c1", AS_OF, rule="g")
    (r,) = ex.rules
    assert r.rule == "g" and r.matched
    assert [a.type for a in r.actions] == ["tag"]
    d = r.condition.to_dict()
    assert d["held"] is True
    leaf, anyof, notnode = d["children"]
    assert leaf == {"condition": f"{DSLI} ≥ 90", "held": True, "value": 100}
    assert anyof["held"] is True
    assert [(c["held"], c["value"]) for c in anyof["children"]] == [(True, ["key-account", "vip"]),
                                                                  (False, "active")]
    assert notnode["held"] is True and notnode["children"][0]["held"] is False
    assert notnode["children"][0]["value"] in ("1000.50", "1000.5")
    text = str(ex)
    assert "c1" in text and "rule g" in text and "MATCHED" in text
    assert f"{DSLI} ≥ 90" in text and "100" in text

    ex2 = eng.explain("c2", AS_OF)
    (r2,) = ex2.rules
    assert not r2.matched and r2.actions == []
    leaf2 = r2.condition.to_dict()["children"][0]
    assert leaf2["held"] is False and leaf2["value"] == 10
    assert "not matched" in str(ex2)

    ex3 = eng.explain("c3", AS_OF)
    leaf3 = ex3.rules[0].condition.to_dict()["children"][0]
    assert leaf3["held"] is False and leaf3.get("value") is None


def test_explain_forgotten_shows_threshold_and_override(store: Store) -> None:
    store.add(managers=[{"id": "m1"}],
              clients=[{"id": "c1", "manager_id": "m1", "tags": ["key-account"]}],
              touches=[{"id": "t1", "client_id": "c1", "at": ago(45)}])
    rules = {"version": 1, "rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d", "overrides": [
        {"when": {"tags": {"contains": "key-account"}}, "after": "30d"}]}]}
    ex = engine_for(rules, store).explain("c1", AS_OF)
    (r,) = ex.rules
    assert r.matched and r.threshold == "30d"
    text = str(ex)
    assert "30d" in text and "override" in text
    assert len(r.actions) == 1


def test_explain_unknown_client_and_rule(crm: Store) -> None:
    eng = engine_for({"version": 1, "rules": [{"id": "g", "when": {"status": "active"}, "then": [{"tag": "x"}]}]},
                     crm)
    ex = eng.explain("nope", AS_OF)
    assert ex.rules == [] and ex.note
    with pytest.raises(retainer.RetainerError, match="zzz"):
        eng.explain("c1", AS_OF, rule="zzz")


def test_named_max_feature_on_instants_and_virtual_fields(store: Store) -> None:
    store.add(
        managers=[{"id": "m1"}],
        clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}],
        touches=[
            {"id": "t1", "client_id": "c1", "at": ago(50), "direction": "inbound"},
            {"id": "t2", "client_id": "c1", "at": ago(5), "direction": "outbound"},
            {"id": "t3", "client_id": "c2", "at": ago(20), "direction": "inbound"},
        ],
        tasks=[
            {"id": "k1", "client_id": "c1", "created_at": ago(60), "status": "open"},
            {"id": "k2", "client_id": "c1", "created_at": ago(60), "status": "done", "done_at": ago(1)},
            {"id": "k3", "client_id": "c1", "created_at": ago(60), "status": "done", "done_at": ago(-3)},
            {"id": "k4", "client_id": "c1", "created_at": ago(60), "status": "cancelled"},
        ],
    )
    rules = {
        "version": 1,
        "features": {
            "last_inbound_at": {"max": "touches.at", "where": {"direction": "inbound"}},
            "open_task_count": {"count": "tasks", "where": {"is_open": True}},
        },
        "rules": [{"id": "g", "when": {"last_inbound_at": {"older_than": "30d"}}, "then": [{"tag": "x"}]}],
    }
    plan = engine_for(rules, store).plan(AS_OF)
    assert [a.client_id for a in plan.actions] == ["c1"]
    # k1 open, k3 done only after as_of
    assert matching_rules(store, rules["features"], {"open_task_count": 2}) == {"c1"}


def matching_rules(store: Store, features: dict[str, Any], when: dict[str, Any]) -> set[str]:
    rules = {"version": 1, "features": features, "rules": [{"id": "g", "when": when, "then": [{"tag": "x"}]}]}
    return {a.client_id for a in engine_for(rules, store).plan(AS_OF).actions}


def test_json_rule_file_indented_with_tabs(tmp_path: Path) -> None:
    # valid JSON (JSON.stringify(x, null, "\t"), Go's MarshalIndent with "\t") must load
    p = tmp_path / "rules.json"
    p.write_text(json.dumps(RULE_DICT, indent="\t"), encoding="utf-8")
    assert retainer.load_rules(str(p)).digest == retainer.load_rules(RULE_DICT).digest


def test_json_rule_file_with_escaped_astral_characters(tmp_path: Path) -> None:
    title = "Call \U0001F4DE {client.name}"
    data = {"version": 1, "rules": [{"id": "f", "kind": "forgotten", "after": "60d",
                                     "then": [{"create_task": {"title": title}}]}]}
    p = tmp_path / "rules.json"
    p.write_text(json.dumps(data), encoding="utf-8")  # ensure_ascii: "\ud83d\udcde"
    spec = retainer.load_rules(str(p)).rule("f").then[0].create_task
    assert spec is not None and spec.title == title


def test_load_rules_from_a_dict_keeps_non_bmp_text(store: Store) -> None:
    title = "Позвонить \U0001F4DE {client.name}"
    rules = {"version": 1, "rules": [{"id": "f", "kind": "forgotten", "after": "60d",
                                      "then": [{"create_task": {"title": title}}]}]}
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "name": "Acme"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00:00Z"}])
    plan = engine_for(rules, store).plan("2026-03-02")
    assert plan.actions[0].title == "Позвонить \U0001F4DE Acme"
    plan.to_json().encode("utf-8")  # no lone surrogates


# ---------------------------------------------------------------- typos in values, actions and paths


def test_free_text_values_are_not_restricted(tmp_path: Path) -> None:
    """abc_class may carry the CRM's own labels; tags are free."""
    p = tmp_path / "ok.yaml"
    p.write_text("version: 1\nrules:\n  - id: x\n    when: {all: [{abc_class: AA}, {tags: {contains: vip}}]}\n"
                 "    then: [{create_task: {title: hi}}]\n")
    retainer.load_rules(p)


def test_unknown_action_suggests_the_right_one(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: x
            kind: forgotten
            after: 60d
            then:
              - create_tsk: {title: hi}
        """)
    assert_error(err, p, 7, "x", "unknown action 'create_tsk'", "did you mean 'create_task'")


def test_list_items_are_named_by_their_path(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: x
            kind: forgotten
            after: 60d
            activity: {kinds: [phone]}
        """)
    assert_error(err, p, 6, "x", "activity.kinds[0]", "'phone'")


def test_threshold_placeholder_only_where_there_is_a_threshold(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: x
            when: {days_since_activity: {gte: 10}}
            then:
              - create_task: {title: "over {threshold}"}
        """)
    assert_error(err, p, 6, "x", "threshold")


@pytest.mark.parametrize(
    ("text", "line", "rule", "needle"),
    [
        ("""
        version: 1
        rules:
          - id: f
            kind: forgotten
            after: 60d
            then:
              - create_task: {title: "{client.name} {invoice.amount}"}
        """, 7, "f", "{invoice.amount} is only available in rules about one invoice at a time"),
        ("""
        version: 1
        templates:
          t: {subject: "Invoice {invoice.id}", body: "hi"}
        rules:
          - id: g
            when: {status: active}
            then:
              - notify_client: {template: t}
        """, 3, "g", "{invoice.id} is only available in rules about one invoice at a time"),
        ("""
        version: 1
        rules:
          - id: h
            when: {status: active}
            then:
              - create_task: {title: "{overdue_tasks} overdue"}
        """, 6, "h", "{overdue_tasks} is only available in manager-level rules (overdue_tasks)"),
    ],
)
def test_a_text_cannot_read_another_subjects_columns(tmp_path: Path, text: str, line: int, rule: str,
                                                     needle: str) -> None:
    """Found by a new-user review: `validate` said ok and `plan` died on an IndexError. `when:` refused
    the same columns already."""
    err, p = load_error(tmp_path, text)
    assert_error(err, p, line, rule, needle)


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("{kind: cal}", "touches.kind is one of call, comment, document, email, meeting, message, sms, not 'cal'; "
                        "did you mean 'call'?"),
        ("{direction: {in: [outbound, sideways]}}", "touches.direction is one of inbound, internal, outbound, "
                                                    "not 'sideways'"),
    ],
)
def test_a_named_features_where_refuses_a_value_its_field_never_takes(tmp_path: Path, where: str,
                                                                      needle: str) -> None:
    """Found by a new-user review: `kind: cal` validated, counted nothing, and the rule fired for everyone."""
    err, p = load_error(tmp_path, f"""
        version: 1
        features:
          calls: {{count: touches, where: {where}, within: 30d}}
        rules:
          - {{id: g, when: {{calls: {{eq: 0}}}}, then: [{{tag: x}}]}}
        """)
    assert_error(err, p, 3, None, needle)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_named_feature_can_count_touches_by_medium(backend: str, tmp_path: Path) -> None:
    """`medium` (the channel, or the kind) is text: `where: {medium: sms}` was refused as "not a number"."""
    from tests.conftest import make_store

    store = make_store(backend, tmp_path)
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-02-20", "kind": "message", "channel": "SMS"},
                       {"id": "t2", "client_id": "c2", "at": "2026-02-20", "kind": "email"}])  # fmt: skip
    rules = {"version": 1, "features": {"texts": {"count": "touches", "where": {"medium": "sms"}}},
             "rules": [{"id": "r", "when": {"texts": {"gte": 1}}, "then": [{"tag": "texted"}]}]}  # fmt: skip
    plan = engine_for(rules, store).plan("2026-03-01")
    assert [a.client_id for a in plan.actions] == ["c1"]


def test_a_between_with_its_bounds_reversed_is_refused(tmp_path: Path) -> None:
    """Found by a new-user review: `between: [60, 30]` validated and could never hold."""
    err, p = load_error(tmp_path, """
        version: 1
        rules:
          - id: w
            when: {days_since_last_invoice: {between: [60, 30]}}
            then: [{tag: x}]
        """)
    assert_error(err, p, 4, "w", "between [60, 30] never holds: write the low bound first")


@pytest.mark.parametrize("bound", ["{gt: 66}", "{between: [30, 66]}", "{lte: -0.1}"])
def test_contract_progress_outside_0_to_1_is_refused(tmp_path: Path, bound: str) -> None:
    """The seed's "the last third of the contract" written as 66 passed validate and never matched."""
    err, path = load_error(tmp_path, f"""
        version: 1
        rules:
          - id: renew
            category: retention
            when: {{contract_progress: {bound}}}
            then: [{{tag: renew}}]
        """)
    assert_error(err, path, 5, "renew", "contract_progress runs from 0 to 1 (0.5 = halfway)")


@pytest.mark.parametrize(("feature", "bound"), [("spend_growth", "{gt: 20}"), ("spend_growth_90d", "{lt: -30}"),
                                              ("spend_growth_30d", "{between: [0, 50]}")])  # fmt: skip
def test_spend_growth_written_as_a_whole_percent_is_refused(tmp_path: Path, feature: str, bound: str) -> None:
    """Found in an analyst review: `spend_growth: {gt: 20}` (meant: +20 %) passed validate and never held; the
    policy's `max: 20` was refused with "write 20%"."""
    err, path = load_error(tmp_path, f"""
        version: 1
        rules:
          - id: grew
            when: {{{feature}: {bound}}}
            then: [{{tag: grew}}]
        """)
    assert_error(err, path, 4, "grew", f"{feature} is a share of the earlier spend (0.2 = +20 %)", "write")


def test_a_files_own_feature_named_like_spend_growth_is_not_a_share() -> None:
    """Found in review: `spend_growth_eur` (a sum of money) was refused as a share: only the built-in windows are."""
    retainer.load_rules({"version": 1, "features": {"spend_growth_eur": {"sum": "invoices.amount", "within": "90d"}},
                         "rules": [{"id": "g", "when": {"spend_growth_eur": {"gt": 5000}}, "then": [{"tag": "g"}]}]})


@pytest.mark.parametrize("bound", ['"20%"', "0.2", '"150%"', "-1"])
def test_spend_growth_takes_percent_text_under_either_name(tmp_path: Path, bound: str) -> None:
    """`spend_growth` is `spend_growth_90d`: "20%" was refused for the first and taken for the second."""
    for feature in ("spend_growth", "spend_growth_90d"):
        retainer.load_rules({"version": 1, "rules": [{"id": "g", "then": [{"tag": "g"}],
                                                      "when": {feature: {"gt": yaml.safe_load(bound)}}}]})  # fmt: skip


def test_shares_take_percent_text(store: Store) -> None:
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
              contracts=[{"id": "k1", "client_id": "c1", "starts_at": "2026-01-01T00:00:00Z",
                          "ends_at": "2027-01-01T00:00:00Z"}])  # fmt: skip
    as_of = "2026-09-01T00:00:00Z"  # 0.6658 of the contract
    for bound, hit in (("66%", True), ("67%", False), ("0.66", True)):
        rules = {"version": 1, "rules": [{"id": "late", "category": "retention", "then": [{"tag": "late"}],
                                          "when": {"contract_progress": {"gt": bound}}}]}  # fmt: skip
        assert bool(engine_for(rules, store).plan(as_of).actions) is hit, bound


@pytest.mark.parametrize("cond", ["{gte: .nan}", '{gte: "NaN"}', "{lt: .inf}", '{gt: "-Infinity"}', "{gte: 1.0e+400}",
                                  "{between: [.nan, 5]}", "{in: [5, .nan]}", ".nan"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(tmp_path: Path, cond: str) -> None:
    """NaN passed validate, then every plan crashed with decimal.InvalidOperation (inside between, validate
    itself did); infinity made the rule silently never (or always) match."""
    err, p = load_error(tmp_path, f"""
        version: 1
        rules:
          - id: g
            when: {{revenue_365d: {cond}}}
            then: [{{tag: x}}]
        """)
    assert_error(err, p, 4, "g", "revenue_365d", "is not a finite number")


def test_a_non_finite_number_in_a_named_feature_is_refused(tmp_path: Path) -> None:
    err, p = load_error(tmp_path, """
        version: 1
        features:
          big: {sum: invoices.amount, where: {amount: {gte: .nan}}}
        rules:
          - id: g
            when: {big: {gte: 1}}
            then: [{tag: x}]
        """)
    assert_error(err, p, 3, None, "amount", "is not a finite number")


def test_a_non_finite_number_for_a_client_attribute_is_refused() -> None:
    with pytest.raises(RulesError, match=r"attributes.score: nan is not a finite number"):
        retainer.load_rules({"version": 1, "rules": [
            {"id": "g", "when": {"attributes.score": {"gte": float("nan")}}, "then": [{"tag": "x"}]}]})


def test_a_repeated_key_in_a_json_rule_file_is_refused_with_its_line(tmp_path: Path) -> None:
    """json.loads kept the last `after` silently: the rule ran with 30d, as YAML and CSV refuse a repeat."""
    text = '{\n "version": 1,\n "rules": [\n  {"id": "f", "kind": "forgotten", "after": "60d", "after": "30d"}\n ]\n}'
    err, p = load_error(tmp_path, text, name="rules.json")
    assert_error(err, p, 4, None, "duplicate key 'after'")
    with pytest.raises(RulesError, match="duplicate key 'after'"):  # JSON text, and JSON YAML cannot read (a tab)
        retainer.load_rules(text.replace('"version"', '\t"version"').replace("\n", " "))


def test_a_key_written_beside_a_yaml_merge_overrides_it_and_one_written_twice_is_refused(tmp_path: Path) -> None:
    """Found in an analyst's review: `{<<: *base, id: forgotten-key}` was refused as "duplicate key 'id'",
    though YAML says the key written overrides the merged one (and yaml.safe_load reads it so)."""
    rules = retainer.load_rules("""version: 1
rules:
  - &base {id: forgotten, kind: forgotten, after: 60d}
  - {<<: *base, id: forgotten-key, after: 30d}
""")
    assert [(r.id, str(r.after)) for r in rules.file.rules] == [("forgotten", "60d"), ("forgotten-key", "30d")]
    err, p = load_error(tmp_path, "version: 1\nrules:\n  - &b {id: f, kind: forgotten, after: 60d}\n"
                                  "  - {<<: *b, id: g, id: h}\n")  # fmt: skip
    assert_error(err, p, 4, None, "duplicate key 'id'")


@pytest.mark.parametrize(("value", "shown"), [("[60d]", "['60d']"), ("{d: 60}", "{'d': 60}")])
def test_a_duration_that_is_a_list_or_mapping_is_a_rules_error(tmp_path: Path, value: str, shown: str) -> None:
    """`after: [60d]` was a TypeError traceback (unhashable type: 'list') from validate and load_rules."""
    err, p = load_error(tmp_path, f"""
        version: 1
        rules:
          - id: f
            kind: forgotten
            after: {value}
        """)
    assert_error(err, p, 5, "f", f"invalid duration {shown}: expected a string like 60d")
    err, p = load_error(tmp_path, f"""
        version: 1
        rules:
          - id: g
            when: {{last_activity_at: {{older_than: {value}}}}}
            then: [{{tag: x}}]
        """)
    assert_error(err, p, 4, "g", f"invalid duration {shown}")


def test_a_json_rule_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Notepad writes one; YAML rule files and data files took it, JSON said "decode using utf-8-sig"."""
    p = tmp_path / "rules.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(RULE_DICT, indent=2).encode())
    assert retainer.load_rules(p).digest == retainer.load_rules(RULE_DICT).digest


def test_a_rule_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    """A Russian comment saved in cp1251 was reported by byte position, not by line."""
    p = tmp_path / "rules.yaml"
    p.write_bytes("version: 1\n# Привет\nrules:\n  - {id: f, kind: forgotten, after: 60d}\n".encode("cp1251"))
    with pytest.raises(RulesError) as info:
        retainer.load_rules(p)
    assert_error(info.value, str(p), 2, None, "not UTF-8 text (byte 0xcf in column 3); save the file as UTF-8")



@pytest.mark.parametrize("cond", ["{gte: 0001-01-01T00:00:00}", "{lte: 9999-12-31}",
                                  "{between: [2026-01-01, 9999-12-31]}", '{gt: "9999-12-31T23:59:59-12:00"}'])
def test_a_date_outside_the_years_1900_to_2999_in_a_rule_is_refused(tmp_path: Path, cond: str) -> None:
    """In Moscow `0001-01-01` (and `9999-12-31` with `lte`, in any zone) was an OverflowError from validate."""
    err, p = load_error(tmp_path, f"""
        version: 1
        timezone: Europe/Moscow
        rules:
          - id: g
            when: {{created_at: {cond}}}
            then: [{{tag: x}}]
        """)
    assert_error(err, p, 5, "g", "created_at: ", "dates must lie between the years 1900 and 2999")


def test_validate_notes_a_recipient_or_template_one_typo_away(tmp_path: Path) -> None:
    """`to: supervisr` is a manager id (nobody), and `template: relased` an id for the host (no text): both
    valid, both meant otherwise, and `validate` said "ok". It still does, with a note for each."""
    from retainer.rules.notes import near_misses

    f = tmp_path / "r.yaml"
    f.write_text(textwrap.dedent("""\
        version: 1
        templates:
          released: {subject: "Client moved", body: "{client.name} is yours"}
        rules:
          - id: debtor
            kind: debtor
            steps:
              - {after: 3d, create_task: {title: Call, assignee: manger}}
              - {after: 30d, escalate: {to: supervisr}}
          - id: tell
            kind: forgotten
            after: 60d
            then: [{notify_manager: {template: relased}}, {notify_manager: {template: released, to: m7}}]
        """))
    assert near_misses(retainer.load_rules(f)) == [
        "rule debtor: create_task for 'manger' goes to a manager of that id; did you mean 'manager'?",
        "rule debtor: escalate for 'supervisr' goes to a manager of that id; did you mean 'supervisor'?",
        "rule tell: template 'relased' is not defined in this file, so the host gets it as an id, with no subject "
        "or body; did you mean 'released'?",
    ]
    r = subprocess.run([SCRIPT, "validate", str(f)], capture_output=True, text=True)
    assert r.returncode == 0 and "note: rule tell: template 'relased' is not defined" in r.stderr


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("rules: [{id: f, kind: forgotten, afer: 60d}]", "unknown field 'afer'; did you mean 'after'?"),
        ("rules: [{id: f, kind: forgotten}]\npolicies: {cool_off: {}}",
         "unknown field 'cool_off'; did you mean 'cooloff'?"),
        ("rules: [{id: d, kind: debtor, steps: [{after: 3d, escalate: {tto: supervisor}}]}]",
         "unknown field 'tto'; did you mean 'to'?"),
        ("rules: [{id: g, when: {status: active}, then: [{create_task: {titel: x}}]}]",
         "unknown field 'titel'; did you mean 'title'?"),
        ("templates: {a: {subjet: x, body: y}}\nrules: [{id: g, when: {status: active}}]",
         "unknown field 'subjet'; did you mean 'subject'?"),
        ("verison: 1\nrules: [{id: g, when: {status: active}}]", "unknown field 'verison'; did you mean 'version'?"),
        ("rules: [{id: g, when: {status: active}, zzz: 1}]", "unknown field 'zzz'"),  # nothing close: no guess
    ],
)
def test_a_misspelt_key_gets_a_did_you_mean(text: str, hint: str) -> None:
    """Features, actions and operators got hints, keys of rules, policies and steps did not (`afer`)."""
    with pytest.raises(RulesError) as exc:
        retainer.load_rules(text if text.startswith("verison") else f"version: 1\n{text}")
    assert str(exc.value).endswith(hint)


@pytest.mark.parametrize(("step", "line"), [
    ("- {after: 20d, create_task: {title: 'Call about {invoice.outstandng}'}}", 8),
    ("- after: 20d\n        then:\n          - create_task:\n"
     "              title: 'Call about {invoice.outstandng}'", 11),
])
def test_a_placeholder_typo_in_a_ladder_step_names_its_own_line(tmp_path: Path, step: str, line: int) -> None:
    """It named the rule's first line (`- id: debtor`), 30 lines above the typo, in a step written either way."""
    f = tmp_path / "r.yaml"
    f.write_text("version: 1\nrules:\n  - id: debtor\n    kind: debtor\n    steps:\n"
                 "      - {after: 3d, notify_client: {channel: email, template: reminder}}\n"
                 f"      - {{after: 10d, notify_client: {{channel: sms, template: reminder}}}}\n      {step}\n")
    with pytest.raises(RulesError, match=rf"r.yaml:{line} \(rule debtor\): unknown placeholder \{{invoice.outstandng"):
        retainer.load_rules(f)
# ---------------------------------------------------------------- hostile files: aliases, nesting


def _alias_bomb(levels: int) -> str:
    """Ten aliases of the level below per level: 377 bytes at 6 levels took 4 s and 400 MB to refuse."""
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    rule = f"{{id: r, kind: forgotten, after: 60d, description: *a{levels - 1}}}"
    return "\n".join(lines) + f"\nversion: 1\nrules:\n  - {rule}\n"


def test_aliases_that_expand_past_the_budget_are_refused_before_they_are_built(tmp_path: Path) -> None:
    import time

    started = time.monotonic()
    err, p = load_error(tmp_path, _alias_bomb(5))  # 100,000 values: 0.5 s unchecked
    assert time.monotonic() - started < 2.0
    assert_error(err, p, 4, None, "anchors and aliases (*name) expand to more than 10,000 values")


def test_a_scenario_file_is_read_with_the_same_alias_budget(tmp_path: Path) -> None:
    from retainer.testing import ScenarioError, load_scenario

    p = tmp_path / "bomb.scenario.yaml"
    p.write_text(_alias_bomb(5), encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"bomb.scenario.yaml:4: anchors and aliases"):
        load_scenario(p)


def test_a_few_aliases_still_load(tmp_path: Path) -> None:
    p = tmp_path / "rules.yaml"
    p.write_text(textwrap.dedent("""
        version: 1
        rules:
          - {id: f, kind: forgotten, after: 60d, then: &then [{create_task: {title: "call {client.name}"}}]}
          - {id: g, kind: forgotten, after: 90d, then: *then}
        """), encoding="utf-8")
    assert [r.id for r in retainer.load_rules(p).rules] == ["f", "g"]


@pytest.mark.parametrize(("name", "text", "line"), [
    ("rules.yaml", "version: 1\nrules: " + "[" * 5000 + "]" * 5000 + "\n", 2),
    ("rules.json", '{"version": 1,\n "rules": ' + "[" * 100_000 + "]" * 100_000 + "}", 2),
    ("rules.json", '{"version": 1,\n "rules": ' + "[" * 150 + "]" * 150 + "}", 2),
    ("rules.yaml", "a: &a " + "[" * 60 + "]" * 60 + "\nversion: 1\nrules: " + "[" * 50 + "*a" + "]" * 50, 3),
])
def test_a_rule_file_nested_too_deeply_is_a_rules_error(tmp_path: Path, name: str, text: str, line: int) -> None:
    """5,000 `[` was a RecursionError traceback (exit 1) from validate, plan and the scenario runner."""
    err, p = load_error(tmp_path, text, name=name)
    assert_error(err, p, line, None, "nested more than 100 levels deep")


def test_rule_definitions_are_indexed_once_per_file_not_once_per_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The id -> rule index was built again for every rule: 8,000 rules took 37 s to validate."""
    from retainer.rules import loader

    seen: set[int] = set()
    real = loader.CompileContext

    def spy(*args: Any) -> Any:
        seen.add(id(args[5]))
        return real(*args)

    monkeypatch.setattr(loader, "CompileContext", spy)
    retainer.load_rules({"version": 1, "rules": [
        {"id": f"f{n}", "kind": "forgotten", "after": f"{30 + n}d"} for n in range(50)]})
    assert len(seen) == 1


def test_one_line_of_yaml_is_rules_not_a_file_name() -> None:
    """`load_rules("rules: [...]")` said "rule file not found: rules: [...]"; a one-line path still is a path."""
    assert [r.id for r in retainer.load_rules("rules: [{id: f, kind: forgotten, after: 60d}]").rules] == ["f"]
    with pytest.raises(RulesError, match=r"rule file not found: nope\.yaml"):
        retainer.load_rules("nope.yaml")


@pytest.mark.parametrize(("text", "line", "rule", "needle"), [
    # found in an analyst review: these slips met a regex, a pydantic type name, or no error at all
    ("  - {id: забытые клиенты, kind: forgotten, after: 60d}\n", 3, "забытые клиенты",
     "an id is Latin letters, digits and _ . - (it starts with a letter or a digit; no spaces)"),
    ("  - id: g\n    when:\n      and:\n        - {days_since_activity: {gte: 10}}\n    then: [{tag: x}]\n", 5, "g",
     "'and' is not a condition: did you mean `all:`?"),
    ("  - id: g\n    when:\n      or: [{days_since_activity: {gte: 10}}]\n    then: [{tag: x}]\n", 5, "g",
     "did you mean `any:`?"),
    ("  - id: g\n    when:\n      - {days_since_activity: {gte: 10}}\n    then: [{tag: x}]\n", 4, "g",
     "when: a list of conditions needs `all:` (each must hold) or `any:` (one is enough)"),
    ("  - {id: f, kind: forgotten, after: 0d}\n", 3, "f", "after: must be longer than 0, not 0d"),
    ("  - id: f\n    kind: forgotten\n    after: 60d\n    overrides: [{when: {tags: {contains: vip}}, after: 0d}]\n",
     6, "f", "must be longer than 0, not 0d"),
    # and these met a bare "does not exist" or "unknown", with nothing to go on
    ("  - {id: forgotten, kind: forgotten, after: 60d}\n  - {id: e, kind: escalate, watch_rule: forgoten, after: 1d}\n",
     4, "e", "watch_rule 'forgoten' does not exist; did you mean 'forgotten'?"),
    ("  - {id: f, kind: forgotten, after: 60d}\n  - {id: e, kind: escalate, watch_rule: x, after: 1d}\n", 4, "e",
     "watch_rule 'x' does not exist; the rules in this file: f"),
    ("  - {id: f, kind: forgotten, after: 60d}\n  - {id: r, kind: release, forgotten_rule: x, grace: 1d}\n", 4,
     "r", "forgotten_rule 'x' does not exist; the forgotten rules in this file: f"),
    ("  - {id: g, when: {status: active}, episode: last_invoce_at, then: [{tag: x}]}\n", 3, "g",
     "unknown episode feature 'last_invoce_at'; did you mean 'last_invoice_at'?"),
    ("  - {id: r, kind: repeat_sale, after: 30d, then: [{create_task: {title: '{days_since_wondeal}'}}]}\n", 3, "r",
     "unknown placeholder {days_since_wondeal}; did you mean 'days_since_won_deal'?"),
    ("  - id: f\n    kind: forgotten\n    after: 60d\n    policies:\n      manager_daily_task_limit: 5\n", 6, "f",
     "`policies:` belongs at the top of the file, not indented under a rule"),
])  # fmt: skip
def test_likely_slips_get_a_message_that_says_what_to_write(
    tmp_path: Path, text: str, line: int, rule: str, needle: str
) -> None:
    err, path = load_error(tmp_path, "version: 1\nrules:\n" + text)
    assert_error(err, path, line, rule, needle)


@pytest.mark.parametrize(("text", "line", "needle"), [
    # found in an analyst review: PyYAML's own words, and once a line past the end of the file
    ("  - id: f\n    kind: forgotten\n    after: 60d\n  then:\n    - create_task: {title: x}\n", 6,
     "this line is indented differently from the lines above it"),
    ("  - id: f\n  kind: forgotten\n  after: 60d\n", 4, "the keys of one mapping line up"),
    ("  - id: f\n    kind: forgotten\n    after:60d\n", 5, "'after:60d': write a space after the colon (after: 60d)"),
    ("  - id: f\n    kind:forgotten\n    after: 60d\n", 4, "'kind:forgotten': write a space after the colon"),
    ("  - id: f\n\tkind: forgotten\n", 4, "YAML indents with spaces, and this line has a tab"),
])  # fmt: skip
def test_yaml_slips_name_their_line_and_what_to_do(tmp_path: Path, text: str, line: int, needle: str) -> None:
    err, path = load_error(tmp_path, "version: 1\nrules:\n" + text)
    assert_error(err, path, line, None, "not valid YAML/JSON", needle)


def test_a_top_level_key_deeper_in_a_rule_is_a_field_the_action_does_not_have(tmp_path: Path) -> None:
    """Found in review: `timezone:` in a create_task was told to move to the top of the file, which would have
    changed the whole rule set's zone."""
    text = "version: 1\nrules:\n  - id: f\n    kind: forgotten\n    after: 60d\n    then:\n" \
           "      - create_task: {title: x, timezone: UTC}\n"  # fmt: skip
    err, path = load_error(tmp_path, text)
    assert_error(err, path, 7, "f")
    assert str(err).endswith("unknown field 'timezone'"), str(err)

