"""Compiled templates render exactly as a plain interpreter of the template text would."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retainer.model import Client, Manager
from retainer.rules.templates import ENGINE_OBJECTS, _parts, _show, bound
from retainer.testing import run_scenario_file

VALUES: dict[str, Any] = {
    "days_since_activity": 61,
    "amount": Decimal("1200.50"),
    "whole": Decimal("1200.00"),
    "ratio": 0.25,
    "last_at": datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
    "day": date(2026, 2, 1),
    "tags": frozenset({"vip", "b"}),
    "nothing": None,
    "text": "it's {not} a placeholder",
}
CLIENT = Client(id="c1", name="O'Brien & \"Sons\" \\ {x}", manager_id="m1")
MANAGER = Manager(id="m1", name="Anna")

literal = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=8)
placeholder = st.sampled_from(
    [f"{{{n}}}" for n in VALUES]
    + ["{client.name}", "{client.id}", "{client.segment}", "{manager.name}", "{supervisor.name}",
       "{new_manager.name}", "{as_of}", "{rule}", "{{", "}}", "{ days_since_activity }"]
)


def interpret(text: str, objects: dict[str, Any], value: Any) -> str:
    """The reference: walk the parsed pieces one by one."""
    buf: list[str] = []
    for is_ph, name, obj, attr in _parts(text):
        if not is_ph:
            buf.append(name)
        elif obj and obj in objects:
            o = objects[obj]
            buf.append("" if o is None else _show(getattr(o, attr, None)))
        elif name in objects:
            buf.append(_show(objects[name]))
        else:
            buf.append(_show(value(name)))
    return "".join(buf)


COLUMNS = {name: ["other row", v] for name, v in VALUES.items()}


def column(name: str) -> list[Any]:
    return COLUMNS.get(name, [None, None])


@given(st.lists(st.one_of(literal, placeholder), max_size=8), st.booleans())
def test_compiled_template_renders_like_the_interpreter(pieces: list[str], has_new: bool) -> None:
    text = "".join(pieces)
    objects = {"client": CLIENT, "manager": MANAGER, "supervisor": None,
               "new_manager": MANAGER if has_new else None, "as_of": "2026-03-01", "rule": "r1"}  # fmt: skip
    assert set(objects) == set(ENGINE_OBJECTS)
    # features are read from their columns by row number (row 1 here)
    expected = interpret(text, objects, lambda name: column(name)[1])
    assert bound(text, ENGINE_OBJECTS, column)(objects, 1) == expected
    fewer = {k: objects[k] for k in ("client", "as_of")}  # another set of objects: the rest are columns
    assert bound(text, tuple(fewer), column)(fewer, 1) == interpret(text, fewer, lambda name: column(name)[1])


def test_compiled_template_keeps_quotes_and_backslashes_literal() -> None:
    text = "'\"\\n{{x}} {client.name}"
    objects = dict.fromkeys(ENGINE_OBJECTS)
    objects["client"] = CLIENT
    assert bound(text, ENGINE_OBJECTS, column)(objects, 0) == "'\"\\n{x} " + CLIENT.name


@pytest.mark.parametrize(("zone", "at", "shown"), [
    ("Europe/Moscow", "2026-03-01T01:00", "2026-03-01"),  # 22:00 UTC the day before
    ("America/New_York", "2026-03-01T20:00", "2026-03-01"),  # 01:00 UTC the day after
])
def test_dates_in_texts_are_the_rule_sets_local_dates(tmp_path: Path, zone: str, at: str, shown: str) -> None:
    """`{invoice.due_at}` and `{last_activity_at}` were the UTC date: a day early east of UTC for every
    date-only value, while the evidence and the episode key said the local date."""
    scenario = tmp_path / "dates.scenario.yaml"
    scenario.write_text(f"""
rules:
  version: 1
  timezone: {zone}
  rules:
    - {{id: quiet, when: {{days_since_activity: {{gte: 1}}}}, episode: last_activity_at,
       then: [{{create_task: {{title: "last {{last_activity_at}}"}}}}]}}
    - id: debtor
      kind: debtor
      steps:
        - {{after: 3d, create_task: {{title: "{{invoice.id}} issued {{invoice.issued_at}} due {{invoice.due_at}}"}}}}
given:
  managers: [{{id: m1}}]
  clients: [{{id: c1, manager_id: m1}}]
  touches: [{{id: t1, client_id: c1, at: "{at}"}}]
  invoices: [{{id: i1, client_id: c1, issued_at: 2026-02-01, due_at: 2026-03-01, amount: 100}}]
steps:
  - as_of: 2026-03-04
    expect: [{{rule: quiet, title: "last {shown}"}}, {{rule: debtor, title: "i1 issued 2026-02-01 due 2026-03-01"}}]
""")
    run_scenario_file(scenario)


def test_money_in_texts_is_rounded_to_the_cent_half_up() -> None:
    assert [_show(Decimal(x)) for x in ("1000.125", "1000.135", "1000.124", "1000", "99.5")] == [
        "1000.13", "1000.14", "1000.12", "1000", "99.50"]  # half to even gave 1000.12 for 1000.125


def test_a_text_with_thousands_of_placeholders_plans() -> None:
    """`validate` passed a title of 1,500 placeholders, and every plan then died with a RecursionError in
    compile(): the template was one `a + b + ...` expression nested that deep."""
    import retainer

    title = "{client.name} {{x}} {days_since_activity} " * 1000
    rules = retainer.load_rules({"version": 1, "rules": [
        {"id": "f", "kind": "forgotten", "after": "30d", "then": [{"create_task": {"title": title}}]}]})
    store = retainer.open_store("memory://")
    store.add(managers=[{"id": "m1"}],
              clients=[{"id": "c1", "manager_id": "m1", "name": "A", "created_at": "2025-01-01"}])
    [action] = retainer.Engine(rules, store).plan("2026-03-01").actions
    assert action.title == "A {x} 424 " * 1000  # type: ignore[attr-defined]
