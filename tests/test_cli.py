"""The `retainer` console script, run for real in a subprocess, as users run it."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import retainer

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "examples" / "rules" / "retention.yaml"
CRM = ROOT / "examples" / "crm"
SCRIPT = shutil.which("retainer", path=str(Path(sys.executable).parent)) or "retainer"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0
    assert re.fullmatch(r"\d+\.\d+\.\d+\s*", r.stdout)


def test_demo_runs_offline_and_explains(tmp_path: Path) -> None:
    r = run("demo", "--dir", str(tmp_path / "d"), "--clients", "400")
    assert r.returncode == 0, r.stderr
    assert "retainer demo" in r.stdout
    assert "Per manager" in r.stdout
    assert "why " in r.stdout and "✔" in r.stdout
    db = tmp_path / "d" / "crm.db"
    assert db.exists() and (tmp_path / "d" / "rules.yaml").exists()
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from clients").fetchone()[0] == 400
    # the "Next:" hint is a working command
    hint = run("plan", "--rules", str(tmp_path / "d" / "rules.yaml"), "--data", str(db), "--as-of", "2026-03-01",
               "--format", "json")
    assert hint.returncode == 0, hint.stderr
    assert json.loads(hint.stdout)["actions"]


def test_demo_runs_again_in_its_own_folder_but_never_over_someone_elses_files(tmp_path: Path) -> None:
    """Found by a new-user review: `--dir .` in a project replaced its rules.yaml and crm.db in silence."""
    d = tmp_path / "d"
    assert run("demo", "--dir", str(d), "--clients", "20").returncode == 0
    assert run("demo", "--dir", str(d), "--clients", "20").returncode == 0  # its own earlier demo: fine
    (d / "rules.yaml").write_text("mine\n")
    r = run("demo", "--dir", str(d), "--clients", "20")
    assert r.returncode == 2 and "a rules.yaml that is not the demo's" in r.stderr
    assert (d / "rules.yaml").read_text() == "mine\n"
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "crm.db").write_bytes(b"the CRM's own")
    r = run("demo", "--dir", str(mine), "--clients", "20")
    assert r.returncode == 2 and "already holds crm.db; the demo would overwrite crm.db" in r.stderr
    assert (mine / "crm.db").read_bytes() == b"the CRM's own" and sorted(p.name for p in mine.iterdir()) == ["crm.db"]


def test_plan_limit_is_not_negative() -> None:
    r = run("plan", "-r", str(RULES), "-d", str(CRM), "--as-of", "2026-03-01", "-f", "table", "--limit", "-5")
    assert r.returncode == 2 and "--limit" in r.stderr


def test_validate_ok_and_bad(tmp_path: Path) -> None:
    r = run("validate", str(RULES))
    assert r.returncode == 0, r.stderr
    assert "forgotten" in r.stdout and "release" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - id: f\n    kind: forgotten\n    after: 60 days\n")
    r = run("validate", str(bad))
    assert r.returncode == 2
    assert f"{bad}:5 (rule f)" in r.stderr
    assert "duration" in r.stderr
    assert "Traceback" not in r.stderr


def test_schema_is_json_schema() -> None:
    r = run("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert "rules" in schema["properties"]
    assert "ForgottenRule" in json.dumps(schema)


def test_schema_accepts_every_example_the_validator_accepts() -> None:
    """Found by a new-user review: the schema refused a ladder step with its action inline and `tag: x`
    (debtor.yaml, full.yaml, policies.yaml), so an editor or CI using it flagged the project's own files."""
    import jsonschema
    import yaml

    schema = json.loads(run("schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    files = sorted((ROOT / "examples" / "rules").glob("*.yaml"))
    assert len(files) >= 10
    for f in files:
        retainer.load_rules(f)  # the validator's word
        assert [e.message for e in v.iter_errors(yaml.safe_load(f.read_text()))] == [], f.name
    step = {"after": "3d", "notify_client": {"template": "x"}}
    ladder = {"version": 1, "rules": [{"id": "d", "kind": "debtor", "steps": [step]}]}
    assert v.is_valid(ladder)
    for wrong in ({**step, "tag": "y"}, {"after": "3d"}, {**step, "then": [{"tag": "y"}]}):
        ladder["rules"][0]["steps"] = [wrong]  # two actions, none, or inline and then: the validator refuses each
        assert not v.is_valid(ladder), wrong
        with pytest.raises(retainer.RulesError):
            retainer.load_rules(ladder)


def test_plan_json_from_csv_folder() -> None:
    r = run("plan", "--rules", str(RULES), "--data", str(CRM), "--as-of", "2026-03-01", "--format", "json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["as_of"] == "2026-03-01T23:59:59+03:00"
    got = {(a["rule"], a["client_id"], a["type"]) for a in plan["actions"]}
    assert ("forgotten", "c1", "create_task") in got
    assert ("release", "c2", "reassign") in got
    assert not any(a["client_id"] == "c3" for a in plan["actions"])  # do_not_contact
    assert {s["reason_code"] for s in plan["suppressed"]} == {"do_not_contact"}
    assert not any(a["client_id"] == "c5" for a in plan["actions"])  # archived
    # piped output defaults to JSON and is byte-identical run to run
    again = run("plan", "--rules", str(RULES), "--data", str(CRM), "--as-of", "2026-03-01")
    assert again.stdout == r.stdout
    # the command writes the plan's bytes as they are: what the API gives, plus a newline
    import retainer
    from retainer.datafiles import open_source

    rules = retainer.load_rules(RULES)
    assert r.stdout == retainer.Engine(rules, open_source(str(CRM), rules.tz)).plan("2026-03-01").to_json() + "\n"


def _plan_bytes(data: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    cmd = [SCRIPT, "plan", "-r", str(RULES), "-d", str(data), "--as-of", "2026-03-01", "-f", "json"]
    return subprocess.run(cmd, capture_output=True, timeout=300, env={**os.environ, **env})


def test_plan_json_follows_stdouts_encoding(tmp_path: Path) -> None:
    """JSON goes straight to stdout's bytes only when those are UTF-8; any other encoding the text layer
    applies, as to every other output (a Cyrillic name in cp1251 is cp1251, not UTF-8)."""
    import retainer
    from retainer.datafiles import open_source

    crm = tmp_path / "crm"
    shutil.copytree(CRM, crm)
    path = crm / "clients.csv"
    path.write_text(path.read_text(encoding="utf-8").replace("Acme Logistics", "Ромашка"), encoding="utf-8")
    rules = retainer.load_rules(RULES)
    text = retainer.Engine(rules, open_source(str(crm), rules.tz)).plan("2026-03-01").to_json() + "\n"
    assert "Ромашка" in text
    utf8 = _plan_bytes(crm, {"PYTHONIOENCODING": "utf-8"})
    assert utf8.returncode == 0, utf8.stderr
    assert utf8.stdout == text.encode("utf-8")
    cp1251 = _plan_bytes(crm, {"PYTHONIOENCODING": "cp1251"})
    assert cp1251.returncode == 0, cp1251.stderr
    assert cp1251.stdout == text.encode("cp1251")


def test_plan_json_with_a_lone_surrogate_in_the_data(tmp_path: Path) -> None:
    """A name with a stray escape (`\\udc80` in a JSONL file) is not UTF-8: orjson refuses it, the standard
    library writes it, and stdout's error handler decides, as for any text (here: surrogateescape)."""
    crm = tmp_path / "crm"
    shutil.copytree(CRM, crm)
    rows = list(csv.DictReader((crm / "clients.csv").open(encoding="utf-8")))
    (crm / "clients.csv").unlink()
    rows[0]["name"] = "Acme \udc80 Logistics"
    (crm / "clients.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if v != ""}) + "\n"
                                               for r in rows), encoding="utf-8")  # fmt: skip
    r = _plan_bytes(crm, {"PYTHONIOENCODING": "utf-8:surrogateescape"})
    assert r.returncode == 0, r.stderr
    assert b"Acme \x80 Logistics" in r.stdout


@pytest.mark.parametrize("encoding", ["utf-8", "cp1251"])
def test_plan_json_in_pieces_keeps_their_order_through_both_layers(
    monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """`retainer plan` writes the JSON a piece at a time: orjson's bytes straight to stdout's buffer, a piece
    with a lone surrogate through the text layer (its error handler decides). Interleaved, the pieces
    come out in order, and make the plan's JSON."""
    import io

    from retainer import cli
    from retainer import plan as plan_module
    from retainer.stores.memory import MemoryStore

    monkeypatch.setattr(plan_module, "_PIECE", 1)
    store = MemoryStore()
    names = ["Ж0", "Ж1", "X\udc80", "Ж3", "Ж4"]
    store.add(managers=[{"id": "m1"}],
              clients=[{"id": f"c{i}", "manager_id": "m1", "name": n} for i, n in enumerate(names)])
    rules = {"rules": [{"id": "hi", "when": {"status": {"eq": "active"}},
                        "then": [{"create_task": {"title": "Call {client.name}", "due_in": "1d"}}]}]}  # fmt: skip
    plan = retainer.Engine(retainer.load_rules(rules), store).plan("2026-03-01")
    assert sum(isinstance(p, str) for p in plan.pieces()) == 1
    raw = io.BytesIO()
    stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding=encoding, errors="surrogateescape", newline="\n")
    monkeypatch.setattr(sys, "stdout", stdout)
    stdout.write("before\n")  # held by the text layer: it goes first
    cli._write_json(plan)
    stdout.flush()
    assert raw.getvalue() == ("before\n" + plan.to_json() + "\n").encode(encoding, "surrogateescape")


def test_plan_jsonl_and_table() -> None:
    r = run("plan", "-r", str(RULES), "-d", str(CRM), "--as-of", "2026-03-01", "-f", "jsonl")
    assert r.returncode == 0
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert {x["kind"] for x in lines} == {"action", "suppressed"}
    t = run("plan", "-r", str(RULES), "-d", str(CRM), "--as-of", "2026-03-01", "-f", "table")
    assert t.returncode == 0
    assert "forgotten" in t.stdout and "create_task" in t.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--as-of", "2026-13-01"], "invalid as_of '2026-13-01': no such date or time (month must be in 1..12)"),
        (["--as-of", "2026-02-29"], "no such date or time (day is out of range for month)"),
        (["--as-of", "soon"], "invalid as_of 'soon': use a date (2026-03-01) or ISO 8601 instant"),
        (["--as-of", "1772352000"], "invalid as_of '1772352000': a bare number (a Unix timestamp?): use a date"),
        # an OverflowError traceback in the rules' zone (Moscow), as_of or not
        (["--as-of", "0001-01-01T00:00"], "invalid as_of '0001-01-01T00:00': dates must lie between the years 1900"),
        (["--as-of", "9999-12-31T23:59:59-12:00"], "dates must lie between the years 1900 and 2999"),
        (["--as-of", "2026-03-01", "--format", "xml"], "--format"),
    ],
)
def test_plan_bad_arguments_exit_2(args: list[str], message: str) -> None:
    r = run("plan", "--rules", str(RULES), "--data", str(CRM), *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_plan_missing_rules_and_data_exit_2(tmp_path: Path) -> None:
    r = run("plan", "--rules", str(tmp_path / "nope.yaml"), "--data", str(CRM), "--as-of", "2026-03-01")
    assert r.returncode == 2 and "not found" in r.stderr
    r = run("plan", "--rules", str(RULES), "--data", str(tmp_path / "nope.db"), "--as-of", "2026-03-01")
    assert r.returncode == 2 and "not found" in r.stderr
    r = run("plan", "--rules", str(RULES), "--data", "postgres://x", "--as-of", "2026-03-01")
    assert r.returncode == 2 and "scheme" in r.stderr
    r = run("plan", "--rules", str(RULES), "--data", str(tmp_path / "crm-export"), "--as-of", "2026-03-01")
    assert r.returncode == 2 and "crm-export': no such file or folder" in r.stderr  # a mistyped folder


def test_a_store_urls_password_is_never_echoed() -> None:
    """Cron mail and CI logs kept `postgresql://crm:S3cretPass@db.internal/crm` from the error message."""
    r = run("plan", "--rules", str(RULES), "--data", "postgresql://crm:S3cretPass@db.internal/crm?sslpassword=x",
            "--as-of", "2026-03-01")  # fmt: skip
    assert r.returncode == 2 and "'postgresql://***@db.internal/crm?***'" in r.stderr, r.stderr
    assert "S3cretPass" not in r.stderr
    with pytest.raises(retainer.StoreError) as info:
        retainer.open_store("sqlite://crm:S3cretPass@db.internal/crm.db")
    assert "S3cretPass" not in str(info.value) and "'sqlite://***@db.internal/crm.db'" in str(info.value)


def _bad_crm(tmp_path: Path) -> Path:
    d = tmp_path / "crm"
    shutil.copytree(CRM, d)
    lines = (d / "touches.csv").read_text().splitlines()
    lines[3] = lines[3].replace("2025-10-01T09:00", "2025-10-41T09:00")
    (d / "touches.csv").write_text("\n".join(lines) + "\n")
    return d


def test_bad_data_row_names_file_line_and_field(tmp_path: Path) -> None:
    d = _bad_crm(tmp_path)
    r = run("plan", "--rules", str(RULES), "--data", str(d), "--as-of", "2026-03-01")
    assert r.returncode == 2
    assert f"{d / 'touches.csv'}:4" in r.stderr
    assert "id=t3" in r.stderr and "field at" in r.stderr


def test_import_is_all_or_nothing(tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    bad_crm = _bad_crm(tmp_path)
    r = run("import", str(bad_crm), "--to", f"sqlite:///{db}", "--rules", str(RULES))
    assert r.returncode == 2
    assert list(tmp_path.glob("crm.db*")) == [], "a rejected import left a database behind"
    r = run("import", str(tmp_path / "nowhere"), "--to", f"sqlite:///{db}")
    assert r.returncode == 2 and "data folder not found" in r.stderr and not db.exists()
    r = run("import", str(CRM), "--to", f"sqlite:///{db}", "--rules", str(RULES))
    assert r.returncode == 0, r.stderr
    assert "imported" in r.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from touches").fetchone()[0] == 6
    again = run("import", str(CRM), "--to", f"sqlite:///{db}")
    assert again.returncode == 2 and "already exists" in again.stderr and "--replace" in again.stderr
    bad = run("import", str(bad_crm), "--to", f"sqlite:///{db}", "--rules", str(RULES), "--replace")
    assert bad.returncode == 2 and db.exists()
    n_managers = len((CRM / "managers.csv").read_text().splitlines()) - 1
    with sqlite3.connect(db) as con:  # an existing store keeps what it had: managers came first, rolled back
        assert con.execute("select count(*) from managers").fetchone()[0] == n_managers
        assert con.execute("select count(*) from touches").fetchone()[0] == 6
    # the imported store plans exactly like the folder it came from
    a = run("plan", "-r", str(RULES), "-d", str(db), "--as-of", "2026-03-01", "-f", "json")
    b = run("plan", "-r", str(RULES), "-d", str(CRM), "--as-of", "2026-03-01", "-f", "json")
    assert a.stdout == b.stdout


def test_explain(tmp_path: Path) -> None:
    r = run("explain", "-r", str(RULES), "-d", str(CRM), "--as-of", "2026-03-01", "--client", "c2",
            "--rule", "forgotten")
    assert r.returncode == 0, r.stderr
    assert "MATCHED" in r.stdout
    assert "last activity at least 30d ago (override #1)" in r.stdout
    assert "[value: 2026-01-15T12:00:00+03:00, 45 days before as_of]" in r.stdout
    r = run("explain", "-r", str(RULES), "-d", str(CRM), "--as-of", "2026-03-01", "--client", "c4", "-f", "json")
    data = json.loads(r.stdout)
    rules = {x["rule"]: x for x in data["rules"]}
    assert rules["forgotten"]["matched"] is False  # wholesale: 90d threshold
    assert rules["silent-big-spender"]["matched"] is True
    r = run("explain", "-r", str(RULES), "-d", str(CRM), "--as-of", "2026-03-01", "--client", "zz")
    assert r.returncode == 2 and "no such client in the store: 'zz'" in r.stderr and r.stdout == ""
    r = run("explain", "-r", str(RULES), "-d", str(CRM), "--as-of", "2026-03-01", "--client", "c1", "--rule", "x")
    assert r.returncode == 2 and "unknown rule" in r.stderr


def test_python_dash_m() -> None:
    r = subprocess.run([sys.executable, "-m", "retainer", "validate", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_plan_on_a_missing_database_fails_and_creates_nothing(tmp_path: Path) -> None:
    r = run("plan", "-r", str(RULES), "-d", "sqlite:///nope.db", "--as-of", "2026-03-01", cwd=tmp_path)
    assert r.returncode == 2 and "database not found" in r.stderr
    assert not list(tmp_path.iterdir())


def test_plan_warns_about_a_bad_threshold_attribute(tmp_path: Path) -> None:
    d = tmp_path / "crm"
    shutil.copytree(CRM, d)
    with (d / "clients.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["attributes"] = json.dumps({"forgotten_after": "20 days"}) if row["id"] == "c1" else ""
    with (d / "clients.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = run("plan", "-r", str(RULES), "-d", str(d), "--as-of", "2026-03-01", "-f", "json")
    assert r.returncode == 0, r.stderr
    assert "rule forgotten, client c1: attributes.forgotten_after '20 days' is not a duration" in r.stderr
    plan = json.loads(r.stdout)
    assert plan["stats"]["rules"]["forgotten"]["bad_threshold"] == 1
    assert any("client c1" in w for w in plan["warnings"])
    assert not [a for a in plan["actions"] if a["client_id"] == "c1" and a["rule"] == "forgotten"]
    r = run("explain", "-r", str(RULES), "-d", str(d), "--as-of", "2026-03-01", "--client", "c1",
            "--rule", "forgotten")
    assert "no threshold, attributes.forgotten_after '20 days' is not a duration" in r.stdout
    assert "None ago" not in r.stdout


def test_plan_json_is_the_same_whatever_the_hash_seed(tmp_path: Path) -> None:
    """Sets (tags, `in` lists) must never leak their hash-dependent order into a plan."""
    import os

    assert run("demo", "--dir", str(tmp_path / "demo"), "--clients", "400").returncode == 0
    rules = ROOT / "examples" / "rules" / "full.yaml"
    outs = []
    for seed in ("1", "3", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        r = subprocess.run([SCRIPT, "plan", "--rules", str(rules), "--data", str(tmp_path / "demo" / "crm.db"),
                            "--as-of", "2026-03-01", "-f", "json"], capture_output=True, text=True, env=env, check=True)
        outs.append(r.stdout)
    assert outs[0] == outs[1] == outs[2]
    assert "abc_class in [A, B]" in outs[0]


def test_plan_of_clients_refuses_ids_it_does_not_know(tmp_path: Path) -> None:
    """A typo (or `-c c1,c2` taken as one id) gave an empty plan and exit 0 with no word about it; then a
    warning and exit 0, while `explain` exited 2 for the same id. Bad input: exit 2, naming the ids."""
    r = run("plan", "-r", str(RULES), "-d", str(CRM), "--as-of", "2026-03-01", "-c", "c2", "-c", "zz", "-c", "c1,c2",
            "-c", "acme:2", "-f", "json")  # fmt: skip
    assert r.returncode == 2 and r.stdout == ""
    assert "no such client in the store: zz, c1,c2, acme:2" in r.stderr
    ok = run("plan", "-r", str(RULES), "-d", str(CRM), "--as-of", "2026-03-01", "-c", "c2", "-f", "json")
    assert ok.returncode == 0 and {a["client_id"] for a in json.loads(ok.stdout)["actions"]} == {"c2"}


def test_brackets_in_messages_and_tables_are_shown_not_read_as_markup(tmp_path: Path) -> None:
    """rich reads `[retention, development]` as a style and drops it: the error said "e.g.  (leave it out"."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - {id: f, kind: forgotten, after: 30d}\npolicies:\n  priority: []\n")
    r = run("validate", str(bad))
    assert r.returncode == 2 and "e.g. [retention, development] (leave it out" in r.stderr, r.stderr
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "managers.csv").write_text("id,name\nm1,Anna\n")
    (tmp_path / "d" / "clients.csv").write_text("id,manager_id,name,created_at\n[vip]c1,m1,ACME,2025-01-01\n")
    rules = tmp_path / "r.yaml"
    rules.write_text("version: 1\nrules:\n  - {id: f, kind: forgotten, after: 30d}\n")
    r = run("plan", "-r", str(rules), "-d", str(tmp_path / "d"), "--as-of", "2026-03-01", "-f", "table")
    assert r.returncode == 0 and "[vip]c1" in r.stdout, r.stdout


def test_import_archive_missing(tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    assert run("import", str(CRM), "--to", f"sqlite:///{db}").returncode == 0
    export = tmp_path / "export"
    shutil.copytree(CRM, export)
    rows = (export / "clients.csv").read_text().splitlines()
    (export / "clients.csv").write_text("\n".join(rows[:-1]) + "\n")  # the last client was deleted in the CRM
    r = run("import", str(export), "--to", f"sqlite:///{db}", "--archive-missing")
    assert r.returncode == 2 and "--archive-missing needs --replace" in r.stderr
    r = run("import", str(export), "--to", f"sqlite:///{db}", "--replace", "--archive-missing")
    assert r.returncode == 0 and "archived 1 client(s) the export no longer lists" in r.stderr
    # no zone given: the import says how it read local times (a call at 23:30 in Kyiv was a day late, silently)
    assert "times without an offset were read as UTC" in r.stderr
    r = run("import", str(export), "--to", f"sqlite:///{db}", "--replace", "--rules", str(RULES))
    assert r.returncode == 0 and "without an offset" not in r.stderr
    # the zone named is the store's from now on: a nightly import without --rules reads in it, and says so
    r = run("import", str(export), "--to", f"sqlite:///{db}", "--replace", "--archive-missing")
    assert r.returncode == 0 and "times without an offset were read in Europe/Moscow, the zone of this store's" \
        in r.stderr, r.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("select status from clients where id = ?", [rows[-1].split(",")[0]]).fetchone() == (
            "archived",)


def test_a_store_keeps_the_zone_it_was_first_imported_in(tmp_path: Path) -> None:
    """Found in a cron review: the first import named the rules' zone, the nightly `--replace` (as the crontab in
    operations.md wrote it) did not, read the same 23:30 call as UTC, moved it to the next day, and the same
    silence got a second task. Now the nightly import reads in the recorded zone, and another zone named
    outright is refused with nothing written."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "managers.csv").write_text("id,name\nm1,Anna\n")
    (export / "clients.csv").write_text("id,manager_id,name\nc1,m1,Acme\n")
    (export / "touches.csv").write_text("id,client_id,at,kind\nt1,c1,2025-12-31T23:30,call\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\ntimezone: Europe/Moscow\nrules:\n  - {id: f, kind: forgotten, after: 30d}\n")
    db, out = tmp_path / "crm.db", tmp_path / "actions.jsonl"

    def touch_at() -> str:
        with sqlite3.connect(db) as con:
            return str(con.execute("SELECT at FROM touches").fetchone()[0])

    assert run("import", str(export), "--to", f"sqlite:///{db}", "--rules", str(rules)).returncode == 0
    assert touch_at() == "2025-12-31T20:30:00Z"
    night = ("run", "--rules", str(rules), "--data", str(db), "-H", f"jsonl:{out}", "--as-of")
    assert run(*night, "2026-03-01").returncode == 0
    r = run("import", str(export), "--to", str(db), "--replace", "--archive-missing")
    assert r.returncode == 0 and "read in Europe/Moscow, the zone of this store's first import" in r.stderr
    assert touch_at() == "2025-12-31T20:30:00Z"
    assert run(*night, "2026-03-02").returncode == 0
    assert [json.loads(x)["key"] for x in out.read_text().splitlines()] == ["f:c1:2025-12-31:create_task"]

    r = run("import", str(export), "--to", str(db), "--replace", "--timezone", "UTC")
    assert r.returncode == 2 and "read in Europe/Moscow; these would be read in UTC" in r.stderr, r.stderr
    assert touch_at() == "2025-12-31T20:30:00Z"  # nothing written
    for same in ("Europe/Moscow", "W-SU"):  # the same clock by another name is no other zone
        assert run("import", str(export), "--to", str(db), "--replace", "--timezone", same).returncode == 0


@pytest.mark.parametrize("args", [("--as-of", "2026-03-01", "--as-of", "2026-04-15"),
                                  ("--as-of=2026-03-01", "--as-of", "2026-04-15"),
                                  ("--as-of", "2026-03-01", "-r", str(RULES))])  # fmt: skip
def test_an_option_that_takes_one_value_given_twice_is_refused(tmp_path: Path, args: tuple[str, ...]) -> None:
    """click keeps the last: a wrapper that appended its own --as-of committed another night, silently."""
    db = tmp_path / "crm.db"
    r = run("run", "--rules", str(RULES), "--data", str(db), *args)
    assert r.returncode == 2 and "is given twice; give it once" in r.stderr, r.stderr
    assert not db.exists()
    ok = run("actions", "list", "--data", str(tmp_path / "none.db"), "--status", "dead", "--status", "failed")
    assert "given twice" not in ok.stderr  # repeatable options stay repeatable


@pytest.mark.parametrize("args", [("actions", "list", "--limit", "-1"), ("runs", "--limit", "-5")])
def test_a_negative_limit_is_refused(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Found in a cron review: `actions list --limit -1` listed every row (exit 0) where `plan --limit -1` exits 2."""
    r = run(*args, "--data", str(tmp_path / "crm.db"))
    assert r.returncode == 2 and "-1" not in r.stdout


def test_import_of_a_file_says_it_wants_the_folder(tmp_path: Path) -> None:
    r = run("import", str(CRM / "clients.csv"), "--to", f"sqlite:///{tmp_path / 'x.db'}")
    assert r.returncode == 2 and "clients.csv is a file: import reads a folder of data files" in r.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("command", [[], ["run"], ["runs"], ["import"], ["actions", "list"], ["actions", "replay"]])
def test_help_shows_no_value_for_a_flag(command: list[str]) -> None:
    """Found in a docs review: help showed `--dry-run <bool>` and `--help <bool>`, and `--dry-run true` failed."""
    r = run(*command, "--help")
    assert r.returncode == 0 and "--help" in r.stdout
    assert "<bool>" not in r.stdout, r.stdout


def test_a_store_damaged_where_a_plan_reads_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    """Found in an ops review: pages overwritten in a fact table (a bad sector, a torn copy) gave a 50-line
    traceback and exit 1, which says "actions went dead"; damage found when the store is opened was clear."""
    r = run("demo", "--dir", str(tmp_path / "d"), "--clients", "400")
    assert r.returncode == 0, r.stderr
    db = tmp_path / "d" / "crm.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with db.open("r+b") as f:  # twenty pages in the middle of the fact tables
        f.seek(50 * 4096)
        f.write(b"\xa5" * 4096 * 20)
    r = run("plan", "--rules", str(tmp_path / "d" / "rules.yaml"), "--data", str(db), "--as-of", "2026-03-01")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "error: the store cannot be read: database disk image is malformed. Restore it from a backup" in r.stderr
