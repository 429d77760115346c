"""Data folders: CSV and JSONL, row-level errors with file:line, all-or-nothing loading."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

import retainer
from retainer.datafiles import import_data, open_source

ROOT = Path(__file__).resolve().parents[1]
CRM = ROOT / "examples" / "crm"


def _to_jsonl(src: Path, dst: Path) -> None:
    dst.mkdir()
    for f in src.glob("*.csv"):
        with f.open(newline="") as fh, (dst / f"{f.stem}.jsonl").open("w") as out:
            for row in csv.DictReader(fh):
                out.write(json.dumps({k: v for k, v in row.items() if v != ""}) + "\n")


def test_jsonl_folder_plans_like_csv(tmp_path: Path) -> None:
    _to_jsonl(CRM, tmp_path / "j")
    rules = retainer.load_rules(ROOT / "examples" / "rules" / "retention.yaml")
    a = retainer.Engine(rules, open_source(str(CRM), rules.tz)).plan("2026-03-01").to_json()
    b = retainer.Engine(rules, open_source(str(tmp_path / "j"), rules.tz)).plan("2026-03-01").to_json()
    assert a == b


def test_tags_are_separated_by_semicolons_or_commas(tmp_path: Path) -> None:
    """Found in an analyst review: `"key-account,vip"` was one tag, so the key-account override never applied,
    without a word."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "managers.csv").write_text("id\nm1\n")
    (d / "clients.csv").write_text('id,manager_id,tags\nc1,m1,"key-account,vip"\nc2,m1,key-account; vip\n'
                                   'c3,m1,"a, b;c"\nc4,m1,\n')  # fmt: skip
    store = retainer.open_store("memory://")
    import_data(d, store)
    assert {c.id: c.tags for c in store.iter("clients")} == {
        "c1": {"key-account", "vip"}, "c2": {"key-account", "vip"}, "c3": {"a", "b", "c"}, "c4": frozenset()}


def test_an_empty_csv_file_is_an_error_not_a_table_without_rows(tmp_path: Path) -> None:
    """Found in an analyst review: a 0-byte touches.csv (an export that failed) was read as no touches, and
    every client looked forgotten; a 0-byte clients.csv was blamed on touches.csv. A header alone is no rows."""
    d = tmp_path / "d"
    shutil.copytree(CRM, d)
    (d / "touches.csv").write_text("")
    with pytest.raises(retainer.DataError, match=r"touches\.csv:1: the file is empty, without even its header line"):
        import_data(d, retainer.open_store("memory://"))
    (d / "touches.csv").write_text("id,client_id,at\n")
    import_data(d, store := retainer.open_store("memory://"))
    assert store.count("touches") == 0 and store.count("clients") > 0


def test_csv_and_jsonl_for_one_entity_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "d"
    shutil.copytree(CRM, d)
    (d / "touches.jsonl").write_text("")
    with pytest.raises(retainer.DataError, match=r"both touches\.csv and touches\.jsonl"):
        import_data(d, retainer.open_store("memory://"))


def test_unknown_column_names_file_line_1(tmp_path: Path) -> None:
    d = tmp_path / "d"
    shutil.copytree(CRM, d)
    text = (d / "clients.csv").read_text().replace("contact_policy", "contactpolicy", 1)
    (d / "clients.csv").write_text(text)
    with pytest.raises(retainer.DataError) as e:
        import_data(d, retainer.open_store("memory://"))
    assert str(e.value).startswith(f"{d / 'clients.csv'}:1 field contactpolicy: unknown column")


@pytest.mark.parametrize(
    ("sep", "hint"),
    [(";", "the header looks separated by ';': retainer reads comma-separated CSV"),
     ("\t", "the header looks separated by '\\t': retainer reads comma-separated CSV")],
)
def test_a_csv_separated_by_something_else_says_so(tmp_path: Path, sep: str, hint: str) -> None:
    """Excel's default in many locales is ';'."""
    d = tmp_path / "d"
    shutil.copytree(CRM, d)
    (d / "clients.csv").write_text((d / "clients.csv").read_text().replace(",", sep))
    with pytest.raises(retainer.DataError, match=re.escape(hint)):
        import_data(d, retainer.open_store("memory://"))


def test_a_trailing_comma_in_the_header_says_so(tmp_path: Path) -> None:
    d = tmp_path / "d"
    shutil.copytree(CRM, d)
    lines = (d / "clients.csv").read_text().splitlines()
    (d / "clients.csv").write_text("\n".join([lines[0] + ","] + [x + "," for x in lines[1:]]) + "\n")
    with pytest.raises(retainer.DataError, match=r"clients\.csv:1: unknown column ''; an empty column name"):
        import_data(d, retainer.open_store("memory://"))


def test_a_column_twice_in_the_header_is_refused(tmp_path: Path) -> None:
    """The csv module keeps the last of two same-named cells: a stale `status` column appended by a
    spreadsheet made active clients archived, silently."""
    d = tmp_path / "d"
    shutil.copytree(CRM, d)
    lines = (d / "clients.csv").read_text().splitlines()
    (d / "clients.csv").write_text("\n".join([lines[0] + ",status"] + [x + ",archived" for x in lines[1:]]) + "\n")
    store = retainer.open_store("memory://")
    with pytest.raises(retainer.DataError) as e:
        import_data(d, store)
    assert str(e.value) == f"{d / 'clients.csv'}:1 field status: column 'status' appears twice in the header"
    assert list(store.iter("clients")) == []


def test_a_jsonl_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    _to_jsonl(CRM, tmp_path / "j")
    p = tmp_path / "j" / "clients.jsonl"
    p.write_text("\ufeff" + p.read_text(), encoding="utf-8")
    store = retainer.open_store("memory://")
    import_data(tmp_path / "j", store)
    assert len(list(store.iter("clients"))) == len((CRM / "clients.csv").read_text().splitlines()) - 1


def test_bad_jsonl_line(tmp_path: Path) -> None:
    _to_jsonl(CRM, tmp_path / "j")
    p = tmp_path / "j" / "invoices.jsonl"
    p.write_text(p.read_text() + '{"id": "i9", "client_id": "c1", "issued_at": "2026-01-01", "amount": "1.23456"}\n')
    with pytest.raises(retainer.DataError) as e:
        import_data(tmp_path / "j", retainer.open_store("memory://"))
    assert f"{p}:3" in str(e.value) and "field amount" in str(e.value) and "4 decimal places" in str(e.value)


def test_dangling_reference_is_reported_with_its_line(tmp_path: Path) -> None:
    d = tmp_path / "d"
    shutil.copytree(CRM, d)
    with (d / "tasks.csv").open("a") as f:
        f.write("k9,c404,m1,2026-01-01T00:00,,,open,call,crm\n")
    store = retainer.open_store(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(retainer.DataError) as e:
        import_data(d, store)
    assert f"{d / 'tasks.csv'}:3 id=k9 field client_id: unknown client 'c404'" == str(e.value)
    assert store.count("clients") == 0 and store.count("managers") == 0


def test_naive_times_are_read_in_the_store_zone(tmp_path: Path) -> None:
    moscow = retainer.open_store("memory://", timezone="Europe/Moscow")
    import_data(CRM, moscow)
    utc = retainer.open_store("memory://", timezone=UTC)
    import_data(CRM, utc)
    t_msk, t_utc = moscow.get("touches", "t1"), utc.get("touches", "t1")
    assert (t_utc.at - t_msk.at).total_seconds() == 3 * 3600


@pytest.mark.parametrize(("name", "needle"), [("Touches.csv", "did you mean touches.csv"),
                                              ("toches.jsonl", "did you mean touches.jsonl"),
                                              ("notes.csv", "unknown data file notes.csv")])
def test_a_misnamed_file_is_an_error_not_silently_skipped(tmp_path: Path, name: str, needle: str) -> None:
    d = tmp_path / "crm"
    shutil.copytree(CRM, d)
    (d / "touches.csv").rename(d / name)
    with pytest.raises(retainer.DataError) as info:
        open_source(str(d), UTC)
    assert needle in str(info.value) and info.value.file == str(d / name)


@pytest.mark.parametrize("name", ["touches.ndjson", "touches.json", "Touches.tsv", "touches.txt", "touches.xlsx",
                                  "touches.csv.gz", "touches.csv.bak"])
def test_an_entity_file_in_a_format_not_read_is_an_error_not_silently_skipped(tmp_path: Path, name: str) -> None:
    """`touches.ndjson` skipped without a word made every client look forgotten (mass reassignments)."""
    d = tmp_path / "crm"
    shutil.copytree(CRM, d)
    (d / "touches.csv").rename(d / name)
    with pytest.raises(retainer.DataError) as info:
        open_source(str(d), UTC)
    assert info.value.file == str(d / name)
    assert str(info.value).startswith(f"{d / name}: not read; retainer reads touches.csv or touches.jsonl")


def test_files_that_are_not_data_are_ignored(tmp_path: Path) -> None:
    d = tmp_path / "crm"
    shutil.copytree(CRM, d)
    for name in ("README.md", ".gitkeep", ".~lock.touches.csv#", "notes.txt", "export.log"):
        (d / name).write_text("x\n")
    assert open_source(str(d), UTC).count("touches") > 0


def _clients(d: Path, rows: int, name_of: Any) -> Path:
    shutil.copytree(CRM, d)
    p = d / "clients.csv"
    lines = ["id,manager_id,name,status,tags,contact_policy,created_at"]
    lines += [f"c{i},m1,{name_of(i)},active,,ok,2025-01-10" for i in range(1, rows + 1)]
    p.write_text("\n".join(lines) + "\n")
    for f in d.iterdir():  # only the clients and managers: the example's facts name clients c1..c6
        if f.stem not in ("clients", "managers"):
            f.unlink()
    return p


def test_a_quote_left_open_in_a_big_file_is_reported_on_its_line(tmp_path: Path) -> None:
    """Over the csv module's 128 KB cell limit the runaway quote was a `_csv.Error` traceback, exit 1."""
    p = _clients(tmp_path / "d", 5000, lambda i: '"OOO ""Romashka""' if i == 10 else f"Client {i}")
    with pytest.raises(retainer.DataError) as e:
        import_data(tmp_path / "d", retainer.open_store("memory://"))
    assert str(e.value).startswith(f'{p}:11: a quote (") opened on this line is not closed, so lines 11 to '), str(
        e.value
    )


def test_a_cell_over_the_csv_limit_is_reported_on_its_line(tmp_path: Path) -> None:
    p = _clients(tmp_path / "d", 3, lambda i: "x" * 200_000 if i == 2 else f"Client {i}")
    with pytest.raises(retainer.DataError) as e:
        import_data(tmp_path / "d", retainer.open_store("memory://"))
    assert str(e.value).startswith(f"{p}:3: a cell is longer than 131,072 characters"), str(e.value)
    assert ".jsonl" in str(e.value)

def test_empty_required_cell_and_bad_date_messages(tmp_path: Path) -> None:
    d = tmp_path / "crm"
    shutil.copytree(CRM, d)
    lines = (d / "touches.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("at")] = ""
    (d / "touches.csv").write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(retainer.DataError) as info:
        open_source(str(d), UTC)
    assert str(info.value).endswith("field at: required field is empty"), str(info.value)
    row[header.index("at")] = "2025-11-31T10:00"
    (d / "touches.csv").write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(retainer.DataError) as info:
        open_source(str(d), UTC)
    assert "touches.csv:2" in str(info.value) and "Value error" not in str(info.value)
    assert "invalid date/time '2025-11-31T10:00'" in str(info.value)


def test_readers_never_create_a_store(tmp_path: Path) -> None:
    for src in (f"sqlite:///{tmp_path / 'typo.db'}", str(tmp_path / "typo.db")):
        with pytest.raises(retainer.StoreError, match="database not found"):
            open_source(src, UTC)
    assert not list(tmp_path.iterdir())
    with pytest.raises(retainer.StoreError, match="starts empty"):
        open_source("memory://", UTC)


@pytest.mark.parametrize(
    ("name", "line", "change", "encoding"),
    [
        ("clients.csv", 4, lambda text: text.replace("Cedar Foods", "Кедр Foods", 1), "cp1251"),
        ("managers.csv", 1, lambda text: text, "utf-16"),  # its header is not UTF-8 either
        ("touches.jsonl", 2, lambda text: text.replace('"c2"', '"c\u00e92"', 1), "latin-1"),
    ],
)
def test_a_file_that_is_not_utf8_names_its_first_bad_line(
    tmp_path: Path, name: str, line: int, change: Any, encoding: str
) -> None:
    """Found by a new-user review: a cp1251 CSV raised UnicodeDecodeError (exit 1) and `import` left an
    empty database behind, which the next plan read as a CRM without clients."""
    d = tmp_path / "d"
    if name.endswith(".jsonl"):
        _to_jsonl(CRM, d)
    else:
        shutil.copytree(CRM, d)
    p = d / name
    text = p.read_text(encoding="utf-8")
    assert change(text) != text or encoding == "utf-16"
    p.write_text(change(text), encoding=encoding)
    with pytest.raises(retainer.DataError) as e:
        import_data(d, retainer.open_store("memory://"))
    assert str(e.value).startswith(f"{p}:{line}") and "not UTF-8 text" in str(e.value)
    db = tmp_path / "crm.db"
    from tests.test_cli import run

    r = run("import", str(d), "--to", f"sqlite:///{db}")
    assert r.returncode == 2 and f"{name}:{line}" in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.glob("crm.db*")) == [], "a rejected import left a database behind"


def test_a_quote_left_open_is_reported_on_the_line_that_opens_it(tmp_path: Path) -> None:
    """Found by a new-user review: the error named the file's last line, where the runaway row ended."""
    d = tmp_path / "d"
    shutil.copytree(CRM, d)
    p = d / "touches.csv"
    lines = p.read_text().splitlines()
    lines[3] = lines[3].replace("call", '"call', 1)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(retainer.DataError) as e:
        import_data(d, retainer.open_store("memory://"))
    assert str(e.value).startswith(f"{p}:4: ")
    assert f'a quote (") opened on this line is not closed, so lines 4 to {len(lines)} were read as one row' in str(
        e.value
    )
    lines[3] = lines[3] + ",extra"  # a plain row of the wrong width still names its own line
    lines[3] = lines[3].replace('"call', "call", 1)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(retainer.DataError, match=r"touches\.csv:4: expected 7 cells, found 8"):
        import_data(d, retainer.open_store("memory://"))


def test_an_amount_paid_without_its_date_is_a_data_error(tmp_path: Path) -> None:
    """Found by a new-user review: 300 paid of 1000, with no paid_at, imported and then counted as nothing
    paid (the dunning said 1000 outstanding)."""
    d = tmp_path / "d"
    shutil.copytree(CRM, d)
    p = d / "invoices.csv"
    header = p.read_text().splitlines()[0].split(",")
    row = {"id": "b1", "client_id": "c1", "issued_at": "2026-01-05", "amount": "1000", "paid_amount": "300"}
    p.write_text(p.read_text() + ",".join(row.get(h, "") for h in header) + "\n")
    n = len(p.read_text().splitlines())
    with pytest.raises(retainer.DataError) as e:
        import_data(d, retainer.open_store("memory://"))
    assert str(e.value) == f"{p}:{n} id=b1 field paid_amount: paid_amount needs paid_at (when it was paid); " \
                           "without it nothing counts as paid"
    with pytest.raises(retainer.DataError, match="paid_amount needs paid_at"):
        retainer.open_store("memory://").add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
                                             invoices=[row])  # fmt: skip


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_full_export_archives_the_clients_it_no_longer_lists(tmp_path: Path, backend: str) -> None:
    """Found by a new-user review: a client deleted in the CRM stayed in the store after the nightly
    `import --replace` and kept getting tasks and reassignments."""
    from conftest import make_store

    store = make_store(backend, tmp_path)
    import_data(CRM, store)
    rules = retainer.load_rules(ROOT / "examples" / "rules" / "retention.yaml")
    planned = {a.client_id for a in retainer.Engine(rules, store).plan("2026-03-01").actions}
    gone = sorted(planned)[0]  # a client tonight's plan acts on, then deleted in the CRM
    d = tmp_path / "export"
    shutil.copytree(CRM, d)
    rows = (d / "clients.csv").read_text().splitlines()
    (d / "clients.csv").write_text("\n".join(r for r in rows if not r.startswith(gone + ",")) + "\n")
    kept = import_data(d, store, replace=True)  # without the option: nothing is deleted, as before
    assert "archived" not in kept and store.get("clients", gone).status != "archived"  # type: ignore[union-attr]
    counts = import_data(d, store, replace=True, archive_missing=True)
    assert counts["archived"] == 1 and counts["clients"] == len(rows) - 2
    assert store.get("clients", gone).status == "archived"  # type: ignore[union-attr]
    assert gone not in {a.client_id for a in retainer.Engine(rules, store).plan("2026-03-01").actions}
    with (CRM / "touches.csv").open(newline="") as f:  # its history stays
        assert [t.id for t in store.iter("touches") if t.client_id == gone] == [  # type: ignore[attr-defined]
            r["id"] for r in csv.DictReader(f) if r["client_id"] == gone]
    assert import_data(d, store, replace=True, archive_missing=True)["archived"] == 0  # archived once
    with pytest.raises(retainer.DataError, match="archive_missing needs replace"):
        import_data(d, store, archive_missing=True)
    before = [(c.id, c.status) for c in store.iter("clients")]  # type: ignore[attr-defined]
    (d / "clients.csv").write_text(rows[0] + "\n")  # a failed export: the header alone
    with pytest.raises(retainer.DataError, match=r"clients.csv: the clients file lists no client: archiving all"):
        import_data(d, store, replace=True, archive_missing=True)
    assert [(c.id, c.status) for c in store.iter("clients")] == before  # type: ignore[attr-defined]
    (d / "clients.csv").unlink()  # the same failed export, without the file at all (found in a cron review)
    with pytest.raises(retainer.DataError, match=r"archive_missing is for a full export, and this folder has no "
                                                 r"clients file"):  # fmt: skip
        import_data(d, store, replace=True, archive_missing=True)
    assert [(c.id, c.status) for c in store.iter("clients")] == before  # type: ignore[attr-defined]


def test_a_repeated_key_in_a_jsonl_row_is_refused(tmp_path: Path) -> None:
    """json kept the last client_id silently: the touch counted for another client, as a CSV column twice is
    refused."""
    _to_jsonl(CRM, tmp_path / "j")
    p = tmp_path / "j" / "touches.jsonl"
    p.write_text('{"id": "t1", "client_id": "c1", "at": "2025-12-20T10:00", "client_id": "c2"}\n')
    with pytest.raises(retainer.DataError) as info:
        open_source(str(tmp_path / "j"), UTC)
    assert str(info.value).startswith(f"{p}:1 field client_id: duplicate key 'client_id'"), str(info.value)


def test_a_repeated_key_in_a_csv_attributes_cell_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "crm"
    shutil.copytree(CRM, d)
    p = d / "clients.csv"
    lines = p.read_text().splitlines()
    lines[0] += ",attributes"
    lines[1] += ',"{""segment"": ""a"", ""segment"": ""b""}"'
    lines[2:] = [line + "," for line in lines[2:]]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(retainer.DataError, match=r"clients.csv:2 id=c1 field attributes: .*duplicate key 'segment'"):
        open_source(str(d), UTC)


def test_1c_empty_date_reads_as_an_empty_cell(tmp_path: Path) -> None:
    """1C writes 0001-01-01T00:00:00 for "no date": in Moscow it was an OverflowError traceback, in UTC a task
    done (or an invoice paid) in year 1."""
    d = tmp_path / "crm"
    shutil.copytree(CRM, d)
    p = d / "tasks.csv"
    lines = p.read_text().splitlines()
    assert lines[0] == "id,client_id,manager_id,created_at,due_at,done_at,status,kind,source"
    p.write_text("\n".join([*lines, "k2,c4,m2,2025-12-02T09:00,0001-01-01T00:00:00,0001-01-01,open,call,crm"]) + "\n")
    for zone in ("Europe/Moscow", "UTC", "America/New_York"):
        store = retainer.open_store("memory://", timezone=zone)
        import_data(d, store)
        task = store.get("tasks", "k2")
        assert (task.due_at, task.done_at) == (None, None)
        assert "due_at" not in task.model_fields_set  # as an empty cell: the default, not a value
    p.write_text("\n".join([*lines, "k2,c4,m2,0001-01-01T00:00:00,,,open,call,crm"]) + "\n")
    with pytest.raises(retainer.DataError) as e:
        import_data(d, retainer.open_store("memory://", timezone="Europe/Moscow"))
    assert str(e.value) == (f"{p}:{len(lines) + 1} id=k2 field created_at: '0001-01-01T00:00:00' is 1C's empty date, "
                            "and this field needs a date")


@pytest.mark.parametrize("zone", ["Europe/Moscow", "UTC"])
@pytest.mark.parametrize("when", ["9999-12-31T23:59:59-12:00", "0001-01-01T03:00:00", "1899-12-31", "3000-01-01"])
def test_a_date_outside_the_years_1900_to_2999_names_its_row_and_field(tmp_path: Path, when: str, zone: str) -> None:
    """`0001-01-01` (in Moscow) or `9999-12-31T23:59:59-12:00` was an uncaught OverflowError, exit 1. In a field
    that may be empty, a date in the year 3000 or later is "no end" (9999-12-31, 1C's 3999-12-31): empty."""
    d = tmp_path / "crm"
    shutil.copytree(CRM, d)
    p = d / "tasks.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join([*lines, f"k2,c4,m2,2025-12-02T09:00,{when},,open,call,crm"]) + "\n")
    if when[:4] >= "3000":  # "no end" in a field that may be empty (9999-12-31: an open-ended contract)
        store = retainer.open_store("memory://", timezone=zone)
        import_data(d, store)
        assert store.get("tasks", "k2").due_at is None  # type: ignore[union-attr]
    else:
        with pytest.raises(retainer.DataError) as e:
            import_data(d, retainer.open_store("memory://", timezone=zone))
        assert str(e.value) == (f"{p}:{len(lines) + 1} id=k2 field due_at: invalid date/time {when!r}: dates must "
                                "lie between the years 1900 and 2999 (leave the cell empty for none)")
    store = retainer.open_store("memory://", timezone=zone)
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}])
    with pytest.raises(retainer.DataError, match=r"touches\[0\] id=t1 field at: .*between the years 1900 and 2999"):
        store.add(touches=[{"id": "t1", "client_id": "c1", "at": when}])


# ---------------------------------------------------------------- hostile files: special files, huge values


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "crm"
    shutil.copytree(CRM, d)
    return d


@pytest.mark.parametrize(("make", "what"), [
    (lambda p: p.mkdir(), "a folder"),  # was an IsADirectoryError traceback
    (lambda p: os.mkfifo(p), "a pipe"),  # `plan` waited for a writer for ever
    (lambda p: p.symlink_to(os.devnull), "a device"),  # `/dev/zero` was one endless line, until memory ran out
])
def test_a_data_file_that_is_not_a_regular_file_is_refused(tmp_path: Path, make: Any, what: str) -> None:
    import threading

    d = _folder(tmp_path)
    make(d / "deals.csv")
    # for the pipe, a writer that hangs up after 3 s: a reader would otherwise wait for one for ever
    fd = os.open(d / "deals.csv", os.O_RDWR) if what == "a pipe" else None
    lock, open_ = threading.Lock(), [fd is not None]

    def hang_up() -> None:
        with lock:
            if open_[0] and fd is not None:
                os.close(fd)
                open_[0] = False

    timer = threading.Timer(3, hang_up)
    timer.start()
    try:
        with pytest.raises(retainer.DataError) as info:
            open_source(str(d), UTC)
    finally:
        timer.cancel()
        hang_up()
    assert str(info.value) == f"{d / 'deals.csv'}: not a regular file ({what}): a data file must be a file"


def test_a_link_to_a_regular_data_file_is_read(tmp_path: Path) -> None:
    """An export kept elsewhere and linked into the folder is still a data file."""
    d = _folder(tmp_path)
    (tmp_path / "touches.csv").write_bytes((d / "touches.csv").read_bytes())
    (d / "touches.csv").unlink()
    (d / "touches.csv").symlink_to(tmp_path / "touches.csv")
    assert len(list(open_source(str(d), UTC).iter("touches"))) == len(list(open_source(str(CRM), UTC).iter("touches")))


@pytest.mark.parametrize(("line", "message"), [
    ('{"id": "c9", "manager_id": "m1", "n": ' + "9" * 5000 + "}", "not valid JSON: a number with more than 4,300"),
    ('{"id": "c9", "manager_id": "m1", "attributes": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "not valid JSON: nested too deeply"),
    ('{"id": "c9", "manager_id": "m1", "attributes": {"a": ' + "[" * 40 + "]" * 40 + "}}",
     "field attributes: attributes nest more than 32 levels deep"),
    ('{"id": "c9", "manager_id": "m1", "cost_to_serve": "1e999999999"}',
     "field cost_to_serve: amount '1e999999999' is too large"),
    ('{"id": "c9", "manager_id": "m1", "cost_to_serve": 1e999999999}', "invalid amount 'inf'"),
])
def test_a_hostile_jsonl_value_is_a_data_error_naming_its_line(tmp_path: Path, line: str, message: str) -> None:
    """Each of these was a traceback (RecursionError, AttributeError, decimal.Overflow) and exit 1."""
    _to_jsonl(CRM, tmp_path / "j")
    p = tmp_path / "j" / "clients.jsonl"
    p.write_text(p.read_text() + line + "\n")
    with pytest.raises(retainer.DataError) as info:
        open_source(str(tmp_path / "j"), UTC)
    n = len(p.read_text().splitlines())
    assert str(info.value).startswith(f"{p}:{n}") and message in str(info.value), str(info.value)


@pytest.mark.parametrize(("cell", "message"), [
    ("1e999999999", "field cost_to_serve: amount '1e999999999' is too large"),
    ("-1E+99999999999", "field cost_to_serve: amount '-1E+99999999999' is too large"),
])
def test_a_money_cell_with_a_huge_exponent_is_a_data_error(tmp_path: Path, cell: str, message: str) -> None:
    d = _folder(tmp_path)
    (d / "clients.csv").write_text(f"id,manager_id,cost_to_serve\nc9,m1,{cell}\n")
    with pytest.raises(retainer.DataError, match=re.escape(message)):
        open_source(str(d), UTC)


def test_attributes_nested_deeply_in_a_csv_cell_are_a_data_error(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    p = d / "clients.csv"
    lines = p.read_text().splitlines()
    lines[0] += ",attributes"
    lines[1] += ',"{""a"": ' + "[" * 50_000 + "]" * 50_000 + '}"'
    lines[2:] = [line + "," for line in lines[2:]]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(retainer.DataError, match=r"clients.csv:2 id=c1 field attributes: attributes nest more than 32"):
        open_source(str(d), UTC)


def test_a_jsonl_line_over_the_limit_is_refused_on_its_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retainer.datafiles.MAX_JSONL_LINE", 1000)
    _to_jsonl(CRM, tmp_path / "j")
    p = tmp_path / "j" / "clients.jsonl"
    p.write_text(p.read_text() + '{"id": "c9", "manager_id": "m1", "name": "' + "x" * 2000 + '"}\n')
    with pytest.raises(retainer.DataError, match=r"clients.jsonl:\d+: the line is longer than 1,000 characters"):
        open_source(str(tmp_path / "j"), UTC)


@pytest.mark.parametrize("store_url", ["memory://", "sqlite"])
def test_a_replace_never_resets_a_value_only_because_its_column_is_missing(tmp_path: Path, store_url: str) -> None:
    """Found in a cron review: a nightly export whose saved report lost the `contact_policy` column made a
    do-not-contact client contactable (and wiped tags and created_at), exit 0, no warning."""
    first = tmp_path / "first"
    first.mkdir()
    (first / "managers.csv").write_text("id\nm1\n")
    (first / "clients.csv").write_text("id,manager_id,contact_policy,tags\nc1,m1,ok,\nc2,m1,do_not_contact,vip\n")
    url = store_url if store_url == "memory://" else f"sqlite:///{tmp_path / 'crm.db'}"
    store = retainer.open_store(url)
    import_data(first, store)
    nightly = tmp_path / "nightly"
    nightly.mkdir()
    (nightly / "clients.csv").write_text("id,manager_id,name\nc1,m1,Acme\nc2,m1,Bolt\nc3,m1,New\n")
    with pytest.raises(retainer.DataError) as e:
        import_data(nightly, store, replace=True)
    assert str(e.value).startswith(f"{nightly / 'clients.csv'}:3 id=c2 field contact_policy: the row has no column "
                                   "'contact_policy', so --replace would reset the stored contact_policy "
                                   "'do_not_contact' to 'ok'")  # fmt: skip
    assert store.get("clients", "c2").contact_policy == "do_not_contact"  # type: ignore[union-attr]
    assert store.get("clients", "c3") is None and store.get("clients", "c1").name is None  # type: ignore[union-attr]
    # a JSONL row without the key is the same slip
    (nightly / "clients.csv").unlink()
    (nightly / "clients.jsonl").write_text('{"id": "c2", "manager_id": "m1", "contact_policy": "do_not_contact"}\n')
    with pytest.raises(retainer.DataError, match=r"clients.jsonl:1 id=c2 field tags: the row has no key 'tags'"):
        import_data(nightly, store, replace=True)
    # said outright, an empty cell resets; a missing column whose stored values are its default resets nothing
    (nightly / "clients.jsonl").unlink()
    (nightly / "clients.csv").write_text("id,manager_id,contact_policy,tags\nc1,m1,ok,\nc2,m1,,\nc3,m1,ok,\n")
    assert import_data(nightly, store, replace=True) == {"clients": 3}
    assert store.get("clients", "c2").contact_policy == "ok" and store.get("clients", "c2").tags == frozenset()  # type: ignore[union-attr]


def test_a_row_over_several_lines_is_named_by_the_line_it_begins_on(tmp_path: Path) -> None:
    """Found in a cron review: a row whose quoted name ran over lines 3-5 was reported at line 5, in the middle
    of the name."""
    d = tmp_path / "crm"
    d.mkdir()
    (d / "managers.csv").write_text("id\nm1\n")
    (d / "clients.csv").write_text('id,manager_id,name,status\nc1,m1,Acme,active\nc2,m1,"Big\nLong\nName",actve\n')
    with pytest.raises(retainer.DataError, match=r"clients.csv:3 id=c2 field status"):
        import_data(d, retainer.open_store("memory://"))


def test_a_client_archived_as_missing_comes_back_with_an_export_without_a_status_column(tmp_path: Path) -> None:
    """Found in review: a client archived by --archive-missing that the export listed again, in an export with
    no status column, was refused ("would reset status 'archived' to 'active'") every night after."""
    d = tmp_path / "x"
    d.mkdir()
    (d / "managers.csv").write_text("id\nm1\n")
    (d / "clients.csv").write_text("id,manager_id\nc1,m1\nc2,m1\n")
    store = retainer.open_store("memory://")
    import_data(d, store)
    (d / "clients.csv").write_text("id,manager_id\nc1,m1\n")
    assert import_data(d, store, replace=True, archive_missing=True)["archived"] == 1
    (d / "clients.csv").write_text("id,manager_id\nc1,m1\nc2,m1\n")
    assert import_data(d, store, replace=True, archive_missing=True)["archived"] == 0
    assert store.get("clients", "c2").status == "active"  # type: ignore[union-attr]
