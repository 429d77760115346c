"""The supervisor's digest (`retainer report`): content from facts, plan and ledger; Markdown and HTML,
the HTML checked in a real headless browser."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from test_cli import RULES, run

import retainer
from retainer.actions import Action
from retainer.report import digest

FR = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"},
                {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "14d"}]}  # fmt: skip
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def crm() -> retainer.Store:
    store = retainer.open_store("memory://")
    store.add(
        managers=[{"id": "m1", "name": "Anna", "supervisor_id": "boss"}, {"id": "m2", "name": "Ivan",
                   "supervisor_id": "boss"}, {"id": "boss", "name": "Olga"}],
        clients=[{"id": "c1", "manager_id": "m1", "name": "Acme"}, {"id": "c2", "manager_id": "m1", "name": "Borey"},
                 {"id": "c3", "manager_id": "m2", "name": "Vega"}],
        touches=[{"id": "t1", "client_id": "c1", "at": "2025-12-01T10:00:00", "kind": "call"},
                 {"id": "t2", "client_id": "c2", "at": "2026-01-01T10:00:00", "kind": "call"},
                 {"id": "t3", "client_id": "c3", "at": "2026-02-25T10:00:00", "kind": "call"}],
        invoices=[{"id": "i1", "client_id": "c3", "issued_at": "2026-01-05", "due_at": "2026-01-20",
                   "amount": "1200.50"},
                  {"id": "i2", "client_id": "c3", "issued_at": "2026-02-01", "due_at": "2026-02-15", "amount": "300",
                   "paid_at": "2026-02-20", "paid_amount": "100"},
                  {"id": "i3", "client_id": "c3", "issued_at": "2026-02-20", "due_at": "2026-03-20", "amount": "999"}],
    )  # fmt: skip
    return store


def test_digest_sections() -> None:
    store = crm()
    engine = retainer.Engine(FR, store)
    engine.run("2026-03-01")  # c1: forgotten and released; c2 is forgotten from 2 March (day 60)
    first = store.ledger()[0]
    second = store.ledger()[1]
    assert (first.type, second.type) == ("create_task", "reassign")
    morning = datetime(2026, 3, 2, 9, tzinfo=UTC)
    engine.record_outcome(first.id, {"cancelled": "do_not_contact", "churn_reason": " Price"}, clock=lambda: morning)
    engine.record_outcome(second.id, {"result": "moved", "churn_reason": "price"}, clock=lambda: morning)
    d = digest(engine, "2026-03-02", label="retention.yaml")
    md = d.to_markdown()
    titles = [s.title for s in d.sections]
    assert titles[:3] == ["Forgotten clients per manager", "Longest forgotten (top 30)", "Releases"]
    forgotten = d.sections[0]
    # c2 is new today; c1, tasked and released by the earlier run, is Ivan's now, though the data says Anna's
    assert forgotten.rows == [["Anna (m1)", 1], ["Ivan (m2)", 1]]
    assert [r[:2] for r in d.sections[1].rows] == [["Acme (c1)", "Ivan (m2)"], ["Borey (c2)", "Anna (m1)"]]
    releases = d.sections[2]
    # from the ledger: whom it went to, and when
    assert releases.rows == [["Acme (c1)", "Anna (m1)", "Ivan (m2)", "release", "2026-03-01"]]
    assert releases.note == "0 client(s) released to a more responsive manager tonight, 1 earlier and still forgotten."
    debtors = next(s for s in d.sections if s.title.startswith("Debtors"))
    # i1 fully overdue, i2 partly paid; i3 not yet due
    assert debtors.rows == [["Vega (c3)", "Ivan (m2)", Decimal("1400.50"), "2026-01-20", 41]]
    assert "| Vega (c3) | Ivan (m2) | 1,400.50 | 2026-01-20 | 41 |" in md
    churn = next(s for s in d.sections if s.title == "Churn reasons")
    assert churn.rows == [["price", 2]]  # " Price" and "price" are one answer
    delivery = next(s for s in d.sections if s.title == "Delivery")
    assert delivery.rows == [["done", 1], ["cancelled", 1]]  # a cancelled action was never delivered


def test_cli_report_markdown_and_html(tmp_path: Path) -> None:
    crm_dir = RULES.parents[1] / "crm"
    r = run("report", "-r", str(RULES), "-d", str(crm_dir), "--as-of", "2026-03-01")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# Supervisor's digest as of 2026-03-01") and "## Debtors" in r.stdout
    md, html = tmp_path / "r.md", tmp_path / "r.html"
    base = ["report", "-r", str(RULES), "-d", str(crm_dir), "--as-of", "2026-03-01", "--out"]
    assert run(*base, str(md)).returncode == 0
    assert md.read_text().startswith("# Supervisor's digest")
    assert run(*base, str(html)).returncode == 0
    text = html.read_text()
    assert text.startswith("<!doctype html>") and "<svg" in text and "<table>" in text
    bad = run("report", "-r", str(RULES), "-d", str(crm_dir), "--as-of", "2026-03-01", "--out", str(tmp_path / "r.pdf"))
    assert bad.returncode == 2 and "give a .html or .md file" in bad.stderr


def _browser(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={cwd / 'profile'}"]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it with apt-get)")
def test_html_reports_render_in_a_real_browser(tmp_path: Path) -> None:
    """Tables and charts are in the DOM the browser built, and the page paints (a real screenshot)."""
    crm_dir = RULES.parents[1] / "crm"
    digest_html = tmp_path / "digest.html"
    assert run("report", "-r", str(RULES), "-d", str(crm_dir), "--as-of", "2026-03-01", "--out",
               str(digest_html)).returncode == 0  # fmt: skip
    assert run("backtest", "-r", str(RULES), "-d", str(crm_dir), "--from", "2026-01-01", "--to", "2026-03-01",
               "--step", "1w", "--compare", str(RULES), "--out", str(tmp_path / "bt")).returncode == 0  # fmt: skip
    for page, min_tables, min_charts in ((digest_html, 3, 1), (tmp_path / "bt" / "backtest.html", 4, 4)):
        dom = _browser("--dump-dom", page.as_uri(), cwd=tmp_path)
        assert dom.returncode == 0, dom.stderr[-500:]
        assert dom.stdout.count("<table>") >= min_tables and dom.stdout.count("<svg") >= min_charts
        assert "<polyline" in dom.stdout or "<rect" in dom.stdout
        shot = tmp_path / f"{page.stem}.png"
        r = _browser(f"--screenshot={shot}", "--window-size=1100,1400", page.as_uri(), cwd=tmp_path)
        assert r.returncode == 0 and shot.exists()
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a painted page, not a blank one


def test_digest_counts_forgotten_clients_a_full_day_holds_back() -> None:
    store = crm()
    rules = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"}],
             "policies": {"manager_daily_task_limit": 1}}
    engine = retainer.Engine(rules, store)
    plan = engine.plan("2026-03-02")
    assert [s.reason_code for s in plan.suppressed] == ["manager_task_limit"]  # c1 and c2 forgotten, one slot
    d = digest(engine, "2026-03-02")
    assert d.sections[0].rows == [["Anna (m1)", 2]]


def test_digest_counts_each_forgotten_client_once_whatever_the_rules_do() -> None:
    """It counted `create_task` actions: 0 for a forgotten rule that notifies the manager, twice a client
    of a rule with two tasks or of two forgotten rules."""
    store = crm()
    task = {"create_task": {"assignee": "manager", "title": "Call", "due_in": "2d"}}
    notify = {"notify_manager": {"template": "forgotten"}}
    rules = {"rules": [
        {"id": "f60", "kind": "forgotten", "after": "60d", "then": [notify]},
        {"id": "f30", "kind": "forgotten", "after": "30d",
         "then": [task, {"create_task": {"assignee": "supervisor", "title": "Check", "due_in": "2d"}}]},
    ]}  # fmt: skip
    only_notify = {"rules": rules["rules"][:1]}
    assert digest(retainer.Engine(only_notify, store), "2026-03-02").sections[0].rows == [["Anna (m1)", 2]]
    d = digest(retainer.Engine(rules, store), "2026-03-02")
    assert d.sections[0].rows == [["Anna (m1)", 2]]  # c1 and c2, each once; c3 was touched in February
    longest = d.sections[1].rows
    assert [(r[0], r[2]) for r in longest] == [("Acme (c1)", 91), ("Borey (c2)", 60)]


def test_an_invoice_due_today_is_not_a_debt_yet() -> None:
    """As the rules' overdue features count it: due before as_of's day began."""
    store = crm()
    store.add(invoices=[{"id": "i4", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-03-02",
                         "amount": "50"},
                        {"id": "i5", "client_id": "c2", "issued_at": "2026-02-01", "due_at": "2026-03-01T23:00:00",
                         "amount": "70"}])  # fmt: skip
    debtors = next(s for s in digest(retainer.Engine(FR, store), "2026-03-02").sections if s.title.startswith("Debt"))
    assert [r[0] for r in debtors.rows] == ["Vega (c3)", "Borey (c2)"]  # i5 was due yesterday; i4 is due today


def test_markdown_cells_show_crm_names_as_text() -> None:
    """Found by a new-user review: a `|` in a client's name split the row, and HTML in a name reached the
    wiki the digest is pasted into. (The HTML page escaped both already.)"""
    store = crm()
    store.upsert(clients=[{"id": "c3", "manager_id": "m2", "name": "<img src=x onerror=alert(1)> Vega | Pipe"}])
    md = digest(retainer.Engine(FR, store), "2026-03-02").to_markdown()
    assert "| &lt;img src=x onerror=alert(1)&gt; Vega \\| Pipe (c3) | Ivan (m2) | 1,400.50 |" in md
    assert "<img" not in md
    engine = retainer.Engine(FR, store)
    engine.run("2026-03-01")  # once a run has committed actions, the delivery note says how to list dead ones
    assert "`retainer actions list --data DB --status dead`" in digest(engine, "2026-03-02").to_markdown()


def test_markdown_links_and_images_in_crm_names_show_as_text() -> None:
    """A name `[Re-login required](https://evil.example/login) ![i](http://evil.example/p.png)` came out as is,
    and the rendered digest showed a phishing link and loaded a tracking image."""
    markdown = pytest.importorskip("markdown")
    store = crm()
    evil = "[Re-login required](https://evil.example/login) ![i](http://evil.example/p.png) *x* `y`"
    store.upsert(clients=[{"id": "c3", "manager_id": "m2", "name": evil}], managers=[{"id": "m2", "name": evil}])
    md = digest(retainer.Engine(FR, store), "2026-03-02").to_markdown()
    assert "\\[Re-login required\\](https://evil.example/login) \\!\\[i\\](http://evil.example/p.png)" in md
    html = markdown.markdown(md, extensions=["tables"])
    assert "<a " not in html and "<img" not in html and "<em>" not in html and "<code>y</code>" not in html
    assert "[Re-login required](https://evil.example/login)" in html
    store.upsert(clients=[{"id": "c3", "manager_id": "m2", "name": "Vega\x1b[2J\x1b]0;pwned\x07"}])
    md = digest(retainer.Engine(FR, store), "2026-03-02").to_markdown()  # printed by `retainer report`
    assert "\x1b" not in md and "\x07" not in md and "Vega\\\\x1b\\[2J" in md


def test_releases_due_tonight_come_first_with_their_date() -> None:
    store = crm()
    store.add(clients=[{"id": "c10", "manager_id": "m1"}],
              touches=[{"id": "t10", "client_id": "c10", "at": "2025-12-01T10:00:00", "kind": "call"}])  # fmt: skip
    d = digest(retainer.Engine(FR, store), "2026-03-01")  # nothing committed: c1 and c10 are released tonight
    releases = d.sections[2]
    assert [(r[0], r[4]) for r in releases.rows] == [("Acme (c1)", "2026-03-01"), ("c10", "2026-03-01")]
    assert releases.note.startswith("2 client(s) released to a more responsive manager tonight, 0 earlier")


def test_a_release_the_crm_refused_moved_nobody() -> None:
    from retainer.adapters import PermanentError

    def crm_refuses_moves(a: Action) -> None:
        if a.type == "reassign":
            raise PermanentError("manager m2 cannot take clients")

    store = crm()
    engine = retainer.Engine(FR, store)
    engine.run("2026-03-01", handlers=crm_refuses_moves)
    assert [e.status for e in store.ledger() if e.type == "reassign"] == ["dead"]
    d = digest(engine, "2026-03-02")
    assert d.sections[0].rows == [["Anna (m1)", 2]]  # c1 is still Anna's
    assert d.sections[2].rows == []


def test_a_released_debtor_is_its_new_managers_and_a_past_digest_counts_only_what_was_committed_by_then() -> None:
    """c1 (Anna's in the data) is released to Ivan on Mar 1 and owes money: the debtors say Ivan, as the
    forgotten clients do. A later run's actions and outcomes are not in a digest of an earlier date."""
    store = crm()
    store.add(invoices=[{"id": "i9", "client_id": "c1", "issued_at": "2025-11-20", "due_at": "2025-12-05",
                         "amount": "50"}])  # fmt: skip
    engine = retainer.Engine(FR, store)
    engine.run("2026-03-01")
    debtors = next(s for s in digest(engine, "2026-03-02").sections if s.title.startswith("Debtors"))
    assert [r[:2] for r in debtors.rows] == [["Vega (c3)", "Ivan (m2)"], ["Acme (c1)", "Ivan (m2)"]]
    assert debtors.chart == [("Ivan (m2)", 1450.5)]
    engine.run("2026-04-01")  # c2: forgotten and released since; its task gets a churn reason at once
    later = [e for e in store.ledger() if e.as_of > engine.as_of("2026-03-02").instant]
    assert later
    engine.record_outcome(later[0].id, {"churn_reason": "price"}, clock=lambda: datetime(2026, 4, 1, 12, tzinfo=UTC))
    d = digest(engine, "2026-03-02")
    delivery = next(s for s in d.sections if s.title == "Delivery")
    assert delivery.rows == [["pending", 2]]  # the night of Mar 1 only
    assert next(s for s in d.sections if s.title == "Churn reasons").rows == []
    now = digest(engine, "2026-04-01")
    assert next(s for s in now.sections if s.title == "Churn reasons").rows == [["price", 1]]


def test_a_client_released_again_tonight_is_listed_under_tonights_manager() -> None:
    """Released m1 -> m2 (not carried out), called by m2, forgotten again: tonight's move is from m2 (the
    owner on paper) to another manager, who gets the task; the digest listed the client under m2."""
    store = crm()
    store.add(managers=[{"id": "m3", "name": "Oleg", "supervisor_id": "boss"}])
    engine = retainer.Engine(FR, store)
    engine.run("2026-03-01")  # c1: Anna -> Ivan (or Oleg: least loaded)
    (first,) = [a for a in store.ledger() if a.type == "reassign"]
    store.add(touches=[{"id": "t9", "client_id": "c1", "at": "2026-03-02T10:00:00", "kind": "call"}])
    plan = engine.plan("2026-05-20")
    (move,) = [a for a in plan.actions if a.type == "reassign" and a.client_id == "c1"]
    assert move.from_manager_id == first.payload_fields["to_manager_id"]  # type: ignore[attr-defined]
    d = digest(engine, "2026-05-20")
    rows = {r[0]: r[1] for r in d.sections[1].rows}
    assert rows["Acme (c1)"].endswith(f"({move.to_manager_id})")  # type: ignore[attr-defined]


def test_a_digest_with_a_managers_escalation_beside_client_actions() -> None:
    """`overdue_tasks` escalates about a manager (no client): sorted with the clients' ids, it crashed
    `retainer report` for every rule set with supervisor control, examples/rules/full.yaml among them."""
    store = crm()
    store.add(tasks=[{"id": f"k{n}", "client_id": "c3", "manager_id": "m2", "created_at": "2026-01-01",
                      "due_at": "2026-02-20", "status": "open"} for n in (1, 2)])  # fmt: skip
    rules = {"rules": [*FR["rules"], {"id": "overdue", "kind": "overdue_tasks", "count": 2, "after": "3d"}]}
    engine = retainer.Engine(rules, store)
    assert {a.client_id for a in engine.plan("2026-03-02").actions} == {"c1", "c2", None}
    d = digest(engine, "2026-03-02")
    assert d.sections[0].rows == [["Anna (m1)", 1], ["Ivan (m2)", 1]]  # c1 released to Ivan tonight


def test_a_past_date_digest_shows_the_churn_reason_its_escalation_names() -> None:
    """Found in a backtest review: a reason recorded today for a win-back planned in June drove the escalation
    in the digest as of June, while the same page said "no churn reasons recorded yet"."""
    store = retainer.open_store("memory://")
    store.add(managers=[{"id": "m1", "name": "Anna", "supervisor_id": "m9"}, {"id": "m9", "name": "Olga"}],
              clients=[{"id": "c1", "manager_id": "m1", "name": "Acme"}],
              invoices=[{"id": f"i{n}", "client_id": "c1", "issued_at": f"2026-0{n}-10", "amount": 1000}
                        for n in (1, 2, 3)])  # fmt: skip
    rules = retainer.load_rules({"rules": [
        {"id": "churned", "kind": "churned", "min_orders": 3, "silence": "90d"},
        {"id": "winback", "kind": "winback", "min_revenue": 3000,
         "on_outcome": {"bad_service": [{"escalate": {"to": "supervisor"}}]}}]})  # fmt: skip
    engine = retainer.Engine(rules, store)
    engine.run("2026-06-08")
    (task,) = [e for e in store.ledger() if e.rule == "winback"]
    engine.record_outcome(task.id, {"churn_reason": "bad_service"}, clock=lambda: datetime(2026, 7, 1, tzinfo=UTC))
    d = digest(engine, "2026-06-09")
    escalations = next(s for s in d.sections if s.title.startswith("Escalations"))
    assert any("bad_service" in str(cell) for row in escalations.rows for cell in row)  # it names the reason
    assert next(s for s in d.sections if s.title == "Churn reasons").rows == [["bad_service", 1]]
