"""`retainer run`, `actions` and `runs` through the real console script, as an operator uses them."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_cli import CRM, RULES, SCRIPT, run

import retainer


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "crm.db"
    r = run("import", str(CRM), "--to", f"sqlite:///{path}", "--rules", str(RULES))
    assert r.returncode == 0, r.stderr
    return str(path)


def go(db: str, *args: str) -> tuple[int, dict, str]:
    r = run("run", "-r", str(RULES), "-d", db, "--as-of", "2026-03-01", "-f", "json", *args)
    assert "Traceback" not in r.stderr
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}, r.stderr


def ledger(db: str, *args: str) -> list[dict]:
    r = run("actions", "list", "-d", db, "-f", "json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_run_delivers_once_and_a_rerun_finds_only_duplicates(db: str, tmp_path: Path) -> None:
    out = tmp_path / "actions.jsonl"
    code, first, _ = go(db, "--handler", f"jsonl:{out}")
    assert code == 0
    n = first["counts"]["new"]
    assert n > 0 and first["counts"]["done"] == n and first["counts"]["duplicate"] == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    # delivered in ledger (key) order, reassignments first
    assert [x["id"] for x in lines] == [a["id"] for a in sorted(first["new"], key=lambda a: a["type"] != "reassign")]
    code, second, _ = go(db, "--handler", f"jsonl:{out}")
    assert code == 0 and second["counts"]["new"] == 0 and second["counts"]["duplicate"] == n
    assert len(out.read_text().splitlines()) == n
    assert {e["status"] for e in ledger(db)} == {"done"}
    runs = json.loads(run("runs", "-d", db, "-f", "json").stdout)
    assert [r["counts"]["new"] for r in runs] == [0, n] and {r["status"] for r in runs} == {"finished"}


def test_dry_run_writes_nothing(db: str) -> None:
    code, report, _ = go(db, "--dry-run")
    assert code == 0 and report["dry_run"] is True and report["run"] is None
    assert report["counts"]["new"] == len(report["new"]) > 0  # what a run would commit, not `new: 0`
    assert ledger(db) == [] and json.loads(run("runs", "-d", db, "-f", "json").stdout) == []


def test_without_a_handler_actions_wait_pending(db: str) -> None:
    code, report, _ = go(db)
    assert code == 0 and report["counts"]["no_handler"] == report["counts"]["new"]
    assert {e["status"] for e in ledger(db)} == {"pending"}


def down_url() -> str:
    """A local port nobody listens on: every POST is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/hook"


def test_failed_delivery_goes_dead_with_its_cause_then_replay(db: str, tmp_path: Path) -> None:
    url = down_url()
    code, report, stderr = go(db, "--handler", f"webhook:{url}", "--max-attempts", "2", "--retry-delay", "0")
    assert code == 1  # some actions went dead: cron sees a failure
    dead = ledger(db, "--status", "dead")
    # and its log, with JSON on stdout, says so in one line
    assert f"error: {len(dead)} action(s) dead, 0 left for the next run; see `retainer actions list" in stderr
    assert len(dead) == report["counts"]["new"] == report["counts"]["dead"] > 0
    tried = [e for e in dead if not e["last_error"].startswith("not sent: the move it was planned with went dead")]
    assert all(e["attempts"] == 2 and e["last_error"].startswith(f"ConnectionError: POST {url} failed") for e in tried)
    assert {e["type"] for e in dead if e not in tried} == {"notify_manager"}  # the release's note, with its move
    table = run("run", "-r", str(RULES), "-d", db, "--as-of", "2026-03-01")
    assert table.returncode == 0 and "duplicate" in table.stdout  # dead ones are not re-sent by a run

    good = tmp_path / "good.jsonl"
    r = run("actions", "replay", "-d", db, "--dead", "--handler", f"jsonl:{good}")
    assert r.returncode == 0, r.stderr
    assert f"requeued {len(dead)} action(s)" in r.stderr
    assert ledger(db, "--status", "dead") == [] and len(good.read_text().splitlines()) == len(dead)
    assert {e["attempts"] for e in ledger(db)} == {1}  # the note too: requeued with its move, then sent once


def test_replay_without_handler_leaves_them_for_the_next_run(db: str, tmp_path: Path) -> None:
    go(db, "--handler", f"webhook:{down_url()}", "--max-attempts", "1")
    one = ledger(db, "--status", "dead")[0]["id"]
    r = run("actions", "replay", "-d", db, one)
    assert r.returncode == 0 and "next `retainer run` delivers them" in r.stderr
    assert [e["id"] for e in ledger(db, "--status", "pending")] == [one]
    code, report, _ = go(db, "--handler", f"jsonl:{tmp_path / 'ok.jsonl'}")
    assert code == 0 and report["counts"]["new"] == 0 and report["dispatch"]["done"] == 1


def test_actions_a_replay_left_waiting_are_pointed_out_and_go_when_named(db: str, tmp_path: Path) -> None:
    """Found in an ops review: a replay killed midway left the rest `pending`; the same replay again said
    "requeued 0, delivered 0", and naming them said "already waiting" and sent nothing, until the next run."""
    go(db, "--handler", f"webhook:{down_url()}", "--max-attempts", "1")
    dead = [e["id"] for e in ledger(db, "--status", "dead")]
    assert len(dead) > 2
    run("actions", "replay", "-d", db, *dead[:2])  # requeued, not delivered: as a replay killed midway leaves them
    out = tmp_path / "sent.jsonl"
    r = run("actions", "replay", "-d", db, "--dead", "--handler", f"jsonl:{out}")
    assert r.returncode == 0 and f"requeued {len(dead) - 2} action(s)" in r.stderr
    assert "2 action(s) wait as pending (an interrupted run or replay left them" in r.stderr
    r = run("actions", "replay", "-d", db, *dead[:2], "--handler", f"jsonl:{out}")
    assert r.returncode == 0 and r.stderr.count("was waiting (pending): delivered now") == 2, r.stderr
    assert ledger(db, "--status", "pending") == [] and len(out.read_text().splitlines()) == len(dead)


@pytest.mark.parametrize("policy", [True, False])
def test_a_replay_without_the_rules_leaves_marketing_for_a_no_marketing_client_to_the_next_run(
    tmp_path: Path, policy: bool
) -> None:
    """Found in a review: `actions replay` without --rules read no_marketing as on and cancelled, for good, an
    up-sell the rule file allowed (`no_marketing: false`); with the rules, it is cancelled or sent as they say."""
    from retainer.adapters import PermanentError

    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"version": 1, "policies": {"no_marketing": policy}, "rules": [
        {"id": "upsell", "category": "development", "when": {"status": {"eq": "active"}},
         "then": [{"propose_offer": {"offer": "pro"}}]}]}))  # fmt: skip
    db = tmp_path / "crm.db"
    store = retainer.open_store(f"sqlite:///{db}")
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}])

    def rejected(a: object) -> None:
        raise PermanentError("rejected")

    (offer,) = retainer.Engine(retainer.load_rules(rules), store).run("2026-03-01", handlers=rejected).committed
    store.upsert(clients=[{"id": "c1", "manager_id": "m1", "contact_policy": "no_marketing"}])
    store.close()
    out = tmp_path / "sent.jsonl"
    r = run("actions", "replay", "-d", str(db), "--dead", "--handler", f"jsonl:{out}")
    assert r.returncode == 0 and "left 1 action(s) for the next run: its client is no_marketing" in r.stderr
    assert [e["status"] for e in ledger(str(db))] == ["pending"] and not out.exists()
    r = run("actions", "replay", "-d", str(db), offer.id, "--handler", f"jsonl:{out}", "--rules", str(rules))
    assert r.returncode == 0, r.stderr
    what = "delivered now" if not policy else "cancelled (no_marketing)"
    assert f"{offer.id} was waiting (pending): {what}" in r.stderr
    assert out.exists() is (not policy)


def test_outcome_recorded_from_the_command_line(db: str) -> None:
    go(db)
    first = ledger(db)[0]["id"]
    r = run("actions", "outcome", "-d", db, first, "result=completed", "churn_reason=price")
    assert r.returncode == 0, r.stderr
    e = ledger(db, "--status", "done")[0]
    assert e["id"] == first and e["outcome"] == {"result": "completed", "churn_reason": "price"}
    bad = run("actions", "outcome", "-d", db, "no-such-id", "result=x")
    assert bad.returncode == 2 and "no action with id 'no-such-id'" in bad.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "-r", str(RULES), "-d", str(CRM), "--as-of", "2026-03-01"], "Import it first: retainer import"),
        (["actions", "list", "-d", str(CRM)], "is a folder of files, which keeps no ledger"),
        (["run", "-r", str(RULES), "-d", "missing.db", "--as-of", "2026-03-01"], "database not found"),
        (["run", "-r", str(RULES), "-d", "{db}", "--as-of", "2026-03-01", "-H", "jsnl:x"], "did you mean 'jsonl'"),
        (["run", "-r", str(RULES), "-d", "{db}", "--as-of", "2026-03-01", "-H", "webhook:ftp://x"], "http://"),
        (["run", "-r", str(RULES), "-d", "{db}", "--as-of", "2026-03-01", "-H", "create_tsk=jsonl:x"],
         "unknown action type 'create_tsk'"),
        (["run", "-r", str(RULES), "-d", "{db}", "--as-of", "2026-03-01", "--max-attempts", "0"], "max_attempts"),
        (["actions", "list", "-d", "{db}", "--status", "deadd"], "did you mean 'dead'"),
        (["actions", "replay", "-d", "{db}"], "give action ids or --dead"),
        (["actions", "replay", "-d", "{db}", "nope"], "no action with id 'nope'"),
        (["run", "-r", str(RULES), "-d", "{db}", "--as-of", "2026-03-01", "-H", "jsonl:/no/such/dir/x.jsonl"],
         "folder /no/such/dir does not exist"),
        (["run", "-r", str(RULES), "-d", "{db}", "--as-of", "2026-03-01", "-H", "jsonl:/tmp"], "is a folder"),
        (["run", "-r", str(RULES), "-d", "{db}", "--as-of", "2026-03-01", "-H", "webhook:http://x", "--timeout", "0"],
         "timeout must be a positive number"),
        (["run", "-r", str(RULES), "-d", "{db}", "--as-of", "2026-03-01", "-H", "create_task="], "after '='"),
        (["run", "-r", str(RULES), "-d", "{db}", "--as-of", "9999-12-31"], "between the years 1900 and 2999"),
        (["run", "-r", str(RULES), "-d", "memory://", "--as-of", "2026-03-01"], "keeps its ledger"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(db: str, args: list[str], message: str) -> None:
    r = run(*(a.replace("{db}", db) for a in args))
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert ledger(db) == []


def test_outcome_outside_the_tasks_options_is_warned_about(tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    store = retainer.open_store(f"sqlite:///{db}")
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
              invoices=[{"id": f"i{k}", "client_id": "c1", "issued_at": d, "amount": 1000}
                        for k, d in enumerate(("2025-10-01", "2025-11-01", "2025-12-01"))])
    rules = {"rules": [{"id": "churned", "kind": "churned", "min_orders": 3},
                       {"id": "winback", "kind": "winback", "min_revenue": 100}]}
    task = next(a for a in retainer.Engine(rules, store).run("2026-03-15").committed if a.rule == "winback")
    store.close()
    r = run("actions", "outcome", "--data", str(db), task.id, "churn_reason=prise")
    assert r.returncode == 0 and "is one of this task's options" in r.stderr and "will not move on" in r.stderr
    r = run("actions", "outcome", "--data", str(db), task.id, "churn_reason=Price")
    assert r.returncode == 0 and "warning" not in r.stderr


@pytest.mark.parametrize(
    ("env", "args", "shown"),
    [
        ("Authorization Bearer supersecret", [], "RETAINER_WEBHOOK_HEADERS line 1 'Authorization ...'"),
        ("X-Ok: 1\nX-Token abc123", [], "RETAINER_WEBHOOK_HEADERS line 2 'X-Token ...'"),
        ("", ["--header", "X-Token abc123"], "--header 'X-Token ...'"),
    ],
)
def test_a_malformed_header_is_named_without_its_secret(tmp_path: Path, env: str, args: list[str], shown: str) -> None:
    """Found by a new-user review: the error echoed the whole line, token included, into the cron log, and
    blamed --header for a line of the environment variable."""
    import os
    import subprocess
    import sys

    db = tmp_path / "crm.db"
    assert run("import", str(CRM), "--to", f"sqlite:///{db}", "--rules", str(RULES)).returncode == 0
    r = subprocess.run(
        [sys.executable, "-m", "retainer", "run", "-r", str(RULES), "-d", str(db), "--as-of", "2026-03-01",
         "--handler", "webhook:http://127.0.0.1:9/x", *args],
        capture_output=True, text=True, env={**os.environ, "RETAINER_WEBHOOK_HEADERS": env},
    )  # fmt: skip
    assert r.returncode == 2 and f"{shown}: expected 'Name: value'" in r.stderr
    assert "supersecret" not in r.stderr and "abc123" not in r.stderr


def _signal_while_delivering(tmp_path: Path, sig: int) -> tuple[int, str, str]:
    """`retainer run` delivering to a webhook that takes 10 s to answer, sent `sig` mid-call: its exit code,
    its stderr and the store."""
    import http.server
    import signal
    import sys
    import threading

    started = threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            started.set()
            threading.Event().wait(10)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        db = tmp_path / "crm.db"
        assert run("import", str(CRM), "--to", f"sqlite:///{db}", "--rules", str(RULES)).returncode == 0
        p = subprocess.Popen(
            [sys.executable, "-m", "retainer", "run", "-r", str(RULES), "-d", str(db), "--as-of", "2026-03-01",
             "--handler", f"webhook:http://127.0.0.1:{srv.server_address[1]}/x"],
            stderr=subprocess.PIPE, text=True,
            # a shell starts a background job (`pytest &`) with SIGINT ignored, and a child inherits that:
            # Python then installs no Ctrl-C handler, and the run delivered on, 10 s a call, past the timeout
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        assert started.wait(30), "no delivery started"
        p.send_signal(sig)
        err = p.communicate(timeout=30)[1]
    finally:
        srv.shutdown()
    return p.returncode, err, f"sqlite:///{db}"


def test_ctrl_c_while_delivering_says_nothing_is_lost(tmp_path: Path) -> None:
    """Found by a new-user review: the message was dead code (typer exits 130 on Ctrl-C without a word)."""
    import signal

    code, err, url = _signal_while_delivering(tmp_path, signal.SIGINT)
    assert code == 130
    assert "interrupted: what was committed stays in the ledger" in err and "Traceback" not in err
    statuses = {e.status for e in retainer.open_store(url).ledger()}
    assert statuses and statuses <= {"pending", "failed"}  # committed, none delivered, none lost


def test_sigterm_while_delivering_records_the_attempt_and_exits_143(tmp_path: Path) -> None:
    """A scheduler stopping the job (systemd, Kubernetes) sends SIGTERM. Killed outright, the run left the
    action it was delivering claimed, and a run in a new container trusts a claim for 10 minutes; stopped
    as Ctrl-C stops it, the attempt is recorded, so the next run delivers it at once."""
    import signal

    code, err, url = _signal_while_delivering(tmp_path, signal.SIGTERM)
    assert code == 143, err
    assert "terminated: what was committed stays in the ledger" in err and "Traceback" not in err
    entries = retainer.open_store(url).ledger()
    assert {e.status for e in entries} <= {"pending", "failed"}
    cut = [e for e in entries if e.status == "failed"]
    assert len(cut) == 1 and cut[0].last_error == "interrupted while delivering (Terminated)"
    assert cut[0].claimed_by is None  # nothing left for the next run to wait on


def test_actions_list_shows_a_cancelled_action_as_cancelled(tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    store = retainer.open_store(f"sqlite:///{db}")
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"}])
    report = retainer.Engine({"rules": [{"id": "f", "kind": "forgotten", "after": "60d"}]}, store).run("2026-03-01")
    store.set_outcome(report.committed[0].id, {"cancelled": "do_not_contact"}, datetime.now(UTC))
    store.close()
    r = subprocess.run([SCRIPT, "actions", "list", "-d", str(db), "-f", "table"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "200"}, timeout=60)
    assert r.returncode == 0 and "cancelled (do_not_contact)" in r.stdout, r.stdout


def test_run_leaves_an_action_another_dispatcher_is_delivering(db: str, tmp_path: Path) -> None:
    code, first, _ = go(db)  # committed, no handler: pending
    assert code == 0
    busy = first["new"][0]["id"]
    now = datetime.now(UTC).isoformat()
    with sqlite3.connect(db) as conn:  # a session in another container is delivering it right now
        conn.execute("UPDATE retainer_actions SET attempts = 1, claimed_by = 'crm-web-7/31/99', updated_at = ? "
                     "WHERE id = ?", [now, busy])  # fmt: skip
    out = tmp_path / "actions.jsonl"
    r = run("run", "-r", str(RULES), "-d", db, "--as-of", "2026-03-01", "--handler", f"jsonl:{out}", "-f", "table")
    assert r.returncode == 0, r.stderr
    assert "left 1 action(s) to the dispatcher delivering them now" in r.stdout
    sent = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert busy not in sent and len(sent) == first["counts"]["new"] - 1
    (e,) = [e for e in ledger(db) if e["id"] == busy]
    assert (e["status"], e["attempts"], e["claimed_by"]) == ("pending", 1, "crm-web-7/31/99")
    table = run("actions", "list", "-d", db, "-f", "table", "--status", "pending").stdout
    assert "(deliveringsince" in "".join(c for c in table if c not in "│ \n")  # folded in a narrow terminal


def test_actions_list_says_when_the_process_delivering_an_action_has_stopped(db: str) -> None:
    """Found in an ops review: after a `kill -9` mid-delivery, `actions list` said the action was being delivered
    by a process that was gone, for good."""
    import time

    from retainer.ledger import claim_holder

    code, first, _ = go(db)
    assert code == 0
    host, seen, *_ = claim_holder().split("/")
    killed = f"{host}/{seen}/999999999/1@{int(time.time())}"  # this host, a pid that runs nothing
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE retainer_actions SET attempts = 1, claimed_by = ?, updated_at = ? WHERE id = ?",
                     [killed, datetime.now(UTC).isoformat(), first["new"][0]["id"]])  # fmt: skip
    r = run("actions", "list", "-d", db, "-f", "table", "--status", "pending")
    flat = "".join(c for c in r.stdout if c not in "│ \n")
    assert "whichstopped;thenextrundeliversit" in flat and "(deliveringsince" not in flat, r.stdout


@pytest.mark.parametrize("with_rules", [False, True])
def test_replay_with_the_rules_cancels_a_step_paid_down_below_min_amount(tmp_path: Path, with_rules: bool) -> None:
    """`actions replay` reads no rules unless given them: a dead reminder for an invoice paid down to 50
    (below the rule's min_amount 100) goes out without them, and is cancelled with them."""
    from retainer.adapters.dispatch import Retry

    rules_file = RULES.parent / "debtor.yaml"
    path = tmp_path / "crm.db"
    store = retainer.open_store(f"sqlite:///{path}")
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "name": "Acme"}],
              invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                         "amount": "1200"}])  # fmt: skip

    def down(a: object) -> None:
        raise ConnectionError("503")

    (step,) = retainer.Engine(retainer.load_rules(rules_file), store).run(
        "2026-02-18", handlers=down, retry=Retry(max_attempts=1)).committed
    store.upsert(invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                            "amount": "1200", "paid_amount": "1150", "paid_at": "2026-02-19T09:00:00Z"}])  # fmt: skip
    store.close()
    out = tmp_path / "sent.jsonl"
    r = run("actions", "replay", "--data", str(path), step.id, "--handler", f"jsonl:{out}",
            *(["--rules", str(rules_file)] if with_rules else []))  # fmt: skip
    assert r.returncode == 0, r.stderr
    sent = out.read_text().splitlines() if out.exists() else []
    assert len(sent) == (0 if with_rules else 1)


def test_a_step_cancelled_after_a_try_without_an_answer_is_said_to_have_maybe_gone_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left by a many-nights review: a reminder tried once (the connection dropped before the CRM answered), then
    cancelled for a payment, was reported "not sent", though the CRM may have sent it."""
    from retainer.adapters.dispatch import Retry

    rules_file = RULES.parent / "debtor.yaml"
    path = tmp_path / "crm.db"
    store = retainer.open_store(f"sqlite:///{path}")
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1", "name": "Acme"}],
              invoices=[{"id": f"i{n}", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                         "amount": "1200"} for n in (1, 2)])  # fmt: skip

    def lost(a: object) -> None:
        raise ConnectionError("server disconnected without sending a response")

    engine = retainer.Engine(retainer.load_rules(rules_file), store)
    tried = engine.run("2026-02-18", handlers=lost, retry=Retry(max_attempts=5, base_delay=0, stop_after=1))
    assert len(tried.committed) == 2
    store.upsert(invoices=[{"id": f"i{n}", "client_id": "c1", "issued_at": "2026-02-01", "due_at": "2026-02-15",
                            "amount": "1200", "paid_at": "2026-02-19T09:00:00Z"} for n in (1, 2)])  # fmt: skip
    store.close()
    r = run("run", "-r", str(rules_file), "-d", str(path), "--as-of", "2026-02-19", "--handler",
            f"jsonl:{tmp_path / 'sent.jsonl'}", "-f", "table")  # fmt: skip
    assert r.returncode == 0, r.stderr
    flat = " ".join(r.stdout.split())
    assert "cancelled 2 action(s) committed earlier and not sent: paid since" in flat
    # the first try stopped the run (stop_after=1): the other reminder was never tried
    assert "1 of the cancelled action(s) had been tried without a confirmed answer" in flat, r.stdout
    report = json.loads(run("run", "-r", str(rules_file), "-d", str(path), "--as-of", "2026-02-19", "-f", "json",
                            "--dry-run").stdout)  # fmt: skip
    assert report["counts"]["new"] == 0
    monkeypatch.setenv("COLUMNS", "400")  # one line a row
    table = "".join(c for c in run("actions", "list", "-d", str(path), "-f", "table").stdout if c not in "│ \n")
    assert table.count("cancelled(paid),afteratrywithoutaconfirmedanswer:itmayhavegoneout") == 1, table
    assert table.count("cancelled(paid)") == 2, table


def test_a_typo_in_an_actions_list_filter_is_pointed_out(db: str) -> None:
    """Found in a docs review: `--rule forgoten` or `--client C2` listed nothing, exit 0, as if retainer had never
    done anything for the client; `plan -c` and `explain --rule` say so."""
    assert go(db)[0] == 0
    r = run("actions", "list", "-d", db, "--rule", "forgoten", "-c", "C2", "-f", "json")
    assert r.returncode == 0 and json.loads(r.stdout) == []
    assert "no action of rule 'forgoten' in the ledger; did you mean 'forgotten'?" in r.stderr
    assert "no client 'C2' in the store" in r.stderr
    r = run("actions", "list", "-d", db, "--rule", "forgotten", "-c", "c2", "-f", "json")
    assert json.loads(r.stdout) and r.stderr == ""


def test_control_characters_and_markup_from_the_crm_reach_the_terminal_as_text(tmp_path: Path) -> None:
    """A client id `c1<ESC>[2J<ESC>]0;pwned<ESC>\\` cleared the operator's screen and set the window title
    from the plan table, and a webhook's answer `[reverse]FORGED[/reverse]` was read as rich markup."""
    import csv
    import shutil

    from httpfake import FakeServer, Reply

    data = tmp_path / "crm"
    shutil.copytree(CRM, data)
    evil = "c1\x1b[2J\x1b]0;pwned\x1b\\"
    for f in data.glob("*.csv"):
        rows = [[evil if c == "c1" else c for c in row] for row in csv.reader(f.open(newline="", encoding="utf-8"))]
        with f.open("w", newline="", encoding="utf-8") as g:
            csv.writer(g).writerows(rows)
    r = run("plan", "-r", str(RULES), "-d", str(data), "--as-of", "2026-03-01", "-f", "table")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\\x1b" in r.stdout

    db = tmp_path / "crm.db"
    assert run("import", str(data), "--to", f"sqlite:///{db}", "--rules", str(RULES)).returncode == 0
    server = FakeServer(default=Reply(422, "[reverse]FORGED[/reverse] root:x:0 \x1b]0;pwned\x07"))
    try:
        r = run("run", "-r", str(RULES), "-d", str(db), "--as-of", "2026-03-01", "-f", "table",
                "--handler", f"webhook:{server.url}")
    finally:
        server.close()
    shown = r.stdout + r.stderr
    assert r.returncode == 1 and "\x1b" not in shown and "\x07" not in shown
    assert "[reverse]FORGED[/reverse] root:x:0 \\x1b]0;pwned\\x07" in shown
    r = run("actions", "list", "-d", str(db), "--status", "dead")
    assert "\x1b" not in r.stdout and "[reverse]FORGED[/reverse] root:x:0" in r.stdout.replace("\n", "")
    # not piped through a table 80 columns wide: the error on a line of its own (a docs review read it 4
    # characters a line beside the action id)
    r = run("actions", "list", "-d", str(db), "--status", "dead", "-f", "table")
    assert "\x1b" not in r.stdout
    errors = [x for x in r.stdout.splitlines() if x.startswith("    last error: ")]
    assert errors and all("[reverse]FORGED[/reverse] root:x:0 \\x1b]0;pwned\\x07" in x for x in errors), r.stdout
