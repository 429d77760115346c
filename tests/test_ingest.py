"""Bulk loading: the compiled row converters agree with the models, a bulk load into an empty store
ends in the same store as incremental writes, and a bad row deep in a big file still names
file:line:field and writes nothing."""

from __future__ import annotations

import csv
import random
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import strategies as S
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import retainer
from retainer.cli import app
from retainer.datafiles import CHUNK, import_data
from retainer.model import ENTITIES, MAX_AMOUNT
from retainer.stores import _ingest

ROOT = Path(__file__).resolve().parents[1]

# Spellings a CRM export has, and the near misses the converters must leave to the model.
TEXT = ["c1", "Acme Ltd", " c1", "c1 ", "  ", "\x1cc1", "c1\xa0", "0", "\u2003x"]
INSTANTS = [
    "2026-03-01T10:00:00",
    "2026-03-01",
    "2026-03-01T10:00",
    "2026-03-01T10:00:00Z",
    "2026-03-01T10:00:00+03:00",
    "2026-03-01 10:00:00",
    "2025-11-31T10:00:00",
    "2026-03-01T24:00:00",
    " 2026-03-01T10:00:00",
    "2026-03-01T10:00:00 ",
    "2026-03-01T10:00:00.5",
    "20260301T100000",
    "2026-03-01T10:00:0Z",
    "2026-03-01T1:00:00Z",
    "x" * 19,
    "-60",
    "0001-01-01T00:00:00",  # 1C's empty date: an empty cell
    "0001-01-01",
    " 0001-01-01",
    "0001-01-01T00:00:00Z",
    "1899-12-31T23:00:00",
    "3000-01-01",
    "9999-12-31T23:59:59-12:00",
    "9999-12-31",  # "no end": an empty cell where the field may be empty
    "3999-12-31T23:59:59",  # 1C's largest date
    " 9999-12-31T23:59:59Z ",
    "2999-12-31",
    "9999-13-45",  # not dates at all, in no year: refused
    "31.10.2025",
    "4/15/2026",
    "45945",
    "3000000000",
    "3a00-01-01",
    "45",
]
MONEY = ["1.5", "100", "1.23456", "1.2300", "abc", "1e3", "NaN", "Infinity", " 2 ", "-0", "0.0001", "1,5"]
BOOLS = ["true", "false", "True", "TRUE", "yes", "no", "1", "0", "2", " true", "t"]
INTS = ["5", "0", "-1", "+5", " 5", "\u0663", "1.0", "007", "1_000"]
TAGS = ["vip", "vip;key-account", " a ; b ;", ";", "a;;a"]
JSON = ['{"x": 1}', '{"a": {"b": [2]}}', "[1]", "{", "null", '"x"', "{}"]


def _cells(model: type[Any], name: str) -> st.SearchStrategy[str]:
    """Cell text for one field: typical values, near misses, anything at all, and empty."""
    kind = {
        "at": INSTANTS,
        "amount": MONEY,
        "paid_amount": MONEY,
        "cost_to_serve": MONEY,
        "monthly_amount": MONEY,
        "active": BOOLS,
        "max_clients": INTS,
        "tags": TAGS,
        "attributes": JSON,
    }
    f = model.model_fields[name]
    pool = kind.get(name) or (INSTANTS if name.endswith("_at") else None)
    if pool is None and hasattr(f.annotation, "__args__") and all(isinstance(a, str) for a in f.annotation.__args__):
        lits = list(f.annotation.__args__)
        pool = [*lits, f" {lits[0]}", lits[0].upper()]
    pool = pool or TEXT
    return st.one_of(st.sampled_from(pool), st.sampled_from(pool), st.just(""), st.text(max_size=6))


@st.composite
def csv_rows(draw: st.DrawFn, entity: str) -> tuple[str, tuple[str, ...], list[list[str]]]:
    model = ENTITIES[entity]
    names = list(model.model_fields)
    header = tuple(draw(st.permutations(names))[: draw(st.integers(1, len(names)))])
    rows = draw(st.lists(st.tuples(*(_cells(model, n) for n in header)).map(list), min_size=1, max_size=12))
    return entity, header, rows


def _by_model(entity: str, row: dict[str, Any], tz: Any) -> tuple[str, Any]:
    """What the model's own validation makes of a row: ("ok", values, fields set) or ("error", message)."""
    try:
        m = _ingest._validate_one(ENTITIES[entity], row, {"tz": tz}, entity=entity, where=7, file="f.csv")
    except retainer.DataError as exc:
        return "error", str(exc)
    return "ok", (m.__dict__, m.model_fields_set)


def _by_rows(entity: str, rows: list[Any], tz: Any, header: tuple[str, ...] | None) -> tuple[str, Any]:
    try:
        [m] = _ingest.validate_rows(entity, rows, tz, file="f.csv", lines=[7], header=header)
    except retainer.DataError as exc:
        return "error", str(exc)
    return "ok", (m.__dict__, m.model_fields_set)


@pytest.mark.parametrize("entity", list(ENTITIES))
@settings(max_examples=150, deadline=None)
@given(data=st.data(), zone=st.sampled_from(["UTC", "Europe/Moscow"]))
def test_csv_converter_accepts_and_rejects_exactly_like_the_model(entity: str, data: st.DataObject, zone: str) -> None:
    _, header, rows = data.draw(csv_rows(entity))
    tz = retainer.timeutil.get_tz(zone)
    for cells in rows:
        expected = _by_model(entity, {h: (v if v != "" else None) for h, v in zip(header, cells, strict=True)}, tz)
        assert _by_rows(entity, [cells], tz, header) == expected


ODD = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, width=16),
    st.booleans(),
    st.lists(st.sampled_from(["a", " b"]), max_size=2),
    st.dictionaries(st.sampled_from(["k", "1"]), st.integers(0, 2), max_size=2),
)


@pytest.mark.parametrize("entity", list(ENTITIES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_mapping_rows_take_the_same_path_with_the_same_result(entity: str, data: st.DataObject) -> None:
    """`store.add(...)` rows (and JSONL objects) are mappings with values of any type."""
    _, header, rows = data.draw(csv_rows(entity))
    row = {h: data.draw(st.one_of(st.just(v), ODD)) for h, v in zip(header, rows[0], strict=True)}
    tz = retainer.timeutil.get_tz("UTC")
    assert _by_rows(entity, [row], tz, None) == _by_model(entity, dict(row), tz)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Moscow", "America/New_York"])
@pytest.mark.parametrize("required", [True, False])
def test_every_instant_spelling_converts_exactly_like_the_model(zone: str, required: bool) -> None:
    """The random rows above seldom reach the converter (they need every required field valid); here each
    spelling meets it, in a required field (created_at) and in one with a default (due_at)."""
    tz = retainer.timeutil.get_tz(zone)
    header = ("id", "client_id", "created_at", "due_at")
    for v in INSTANTS:
        cells = ["k1", "c1", v, "2026-01-01"] if required else ["k1", "c1", "2026-01-01", v]
        expected = _by_model("tasks", {h: (c if c != "" else None) for h, c in zip(header, cells, strict=True)}, tz)
        assert _by_rows("tasks", [cells], tz, header) == expected, v
    if not required:  # a 1C export has one in every open task and unpaid invoice: kept off the model's slow path
        convert = _ingest._converter(ENTITIES["tasks"], header, zone == "UTC")
        assert convert(("k1", "c1", "2026-01-01", "0001-01-01T00:00:00"), tz).due_at is None
        assert convert(("k1", "c1", "2026-01-01", "9999-12-31"), tz) is None  # rare: the model's path decides


def test_the_converters_take_the_reference_workload_without_the_model() -> None:
    """Guards the speed of `retainer import`: gen.py's rows never need the model's validation."""
    crm = ROOT / "examples" / "crm"
    tz = retainer.timeutil.get_tz("UTC")
    for path in sorted(crm.glob("*.csv")):
        with path.open(newline="") as f:
            header, *rows = list(csv.reader(f))
        conv = _ingest._converter(ENTITIES[path.stem], tuple(header), True)
        slow = [r for r in rows if conv(r, tz) is None]
        assert not slow, (path.name, slow[:2])


# ---------------------------------------------------------------- bulk and incremental loads


def _snapshot(db: Path) -> dict[str, Any]:
    """Everything a query can see: every table's rows (the summaries included) and the index definitions."""
    conn = sqlite3.connect(db)
    try:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                "'sqlite_%' AND name NOT IN ('retainer_runs', 'retainer_actions')"
            )
        ]
        out: dict[str, Any] = {t: sorted(map(repr, conn.execute(f"SELECT * FROM {t}"))) for t in tables}
        out["indexes"] = sorted(conn.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index'"))
        return out
    finally:
        conn.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(S.crms(max_clients=10), st.integers(2, 4), st.randoms(use_true_random=False))
def test_bulk_load_into_an_empty_store_equals_incremental_loads(
    crm: dict[str, list[dict[str, Any]]], parts: int, rnd: random.Random
) -> None:
    rules = retainer.load_rules(ROOT / "examples" / "rules" / "full.yaml")
    with tempfile.TemporaryDirectory() as d:
        bulk, steps = Path(d) / "bulk.db", Path(d) / "steps.db"
        with retainer.open_store(f"sqlite:///{bulk}") as s:
            S.load(s, crm)
            plan_bulk = retainer.Engine(rules, s).plan("2026-03-01").to_json()
        with retainer.open_store(f"sqlite:///{steps}") as s:
            # managers and clients first (references), then every fact table in `parts` slices, interleaved
            s.add(managers=crm["managers"])
            s.add(clients=crm["clients"])
            mixed = S.shuffled(crm, rnd)
            for k in range(parts):
                s.add(
                    **{
                        e: rows[k::parts]
                        for e, rows in mixed.items()
                        if e not in ("managers", "clients") and rows[k::parts]
                    }
                )
            plan_steps = retainer.Engine(rules, s).plan("2026-03-01").to_json()
        memory = S.load(retainer.open_store("memory://"), crm)
        assert plan_bulk == plan_steps == retainer.Engine(rules, memory).plan("2026-03-01").to_json()
        assert _snapshot(bulk) == _snapshot(steps)


# ---------------------------------------------------------------- a bad row in a big file


def _big_crm(folder: Path, touches: int) -> None:
    folder.mkdir()
    (folder / "managers.csv").write_text("id,name\nm1,Anna\n")
    (folder / "clients.csv").write_text("id,manager_id\n" + "".join(f"c{i},m1\n" for i in range(100)))
    with (folder / "touches.csv").open("w") as f:
        f.write("id,client_id,at,kind\n")
        f.writelines(f"t{i},c{i % 100},2025-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00,call\n" for i in range(touches))


@pytest.mark.parametrize(
    "bad", [("2025-02-30T10:00:00", "at", "invalid date/time"), ("", "at", "required field is empty")]
)
def test_a_bad_row_deep_in_a_big_file_names_file_line_field_and_writes_nothing(
    tmp_path: Path, bad: tuple[str, str, str]
) -> None:
    value, field, message = bad
    n = 2 * CHUNK + 10
    crm = tmp_path / "crm"
    _big_crm(crm, n)
    with (crm / "touches.csv").open("a") as f:
        f.write(f"t{n},c1,{value},call\n")
    db = tmp_path / "crm.db"
    result = CliRunner().invoke(app, ["import", str(crm), "--to", f"sqlite:///{db}", "--timezone", "UTC"])
    assert result.exit_code == 2
    assert f"touches.csv:{n + 2} id=t{n} field {field}: {message}" in " ".join(result.output.split())
    assert not db.exists()
    # into a store that has data: the facts, the summaries and the indexes are as they were
    good = tmp_path / "good"
    _big_crm(good, 10)
    with retainer.open_store(f"sqlite:///{db}") as s:
        import_data(good, s)
    before = _snapshot(db)
    with retainer.open_store(f"sqlite:///{db}") as s, pytest.raises(retainer.DataError) as info:
        import_data(crm, s, replace=True)
    assert f"touches.csv:{n + 2}" in str(info.value) and f"field {field}" in str(info.value)
    assert _snapshot(db) == before


def test_a_dangling_reference_after_a_bulk_load_leaves_the_indexes_in_place(tmp_path: Path) -> None:
    """The bulk path drops the fact tables' indexes inside the load's transaction: a rejected load must
    bring them back with everything else."""
    crm = tmp_path / "crm"
    _big_crm(crm, 500)
    with (crm / "touches.csv").open("a") as f:
        f.write("t500,c404,2025-01-01T10:00:00,call\n")
    db = tmp_path / "crm.db"
    with retainer.open_store(f"sqlite:///{db}") as s:
        before = _snapshot(db)
        with pytest.raises(retainer.DataError, match=r"touches\.csv:502 id=t500 field client_id: unknown client"):
            import_data(crm, s)
    after = _snapshot(db)
    assert after == before and any("touches" in r[1] for r in after["indexes"])


def test_a_repeated_id_across_chunks_of_a_bulk_load_names_the_later_line(tmp_path: Path) -> None:
    """A bulk load leaves repeated ids to the primary key; the error still names the row, as before."""
    n = CHUNK + 10
    crm = tmp_path / "crm"
    _big_crm(crm, n)
    with (crm / "touches.csv").open("a") as f:
        f.write("t5,c1,2025-01-01T10:00:00,call\n")
    with retainer.open_store(f"sqlite:///{tmp_path / 'crm.db'}") as s:
        with pytest.raises(retainer.DataError) as info:
            import_data(crm, s)
        assert s.count("touches") == 0 and s.count("clients") == 0
    why = "duplicate id: an earlier row of this load has it too"
    assert str(info.value) == f"{crm / 'touches.csv'}:{n + 2} id=t5 field id: {why}"


@pytest.mark.parametrize("amount", ["1E100", "922337203685477.5808", "-922337203685477.5808"])
def test_an_amount_too_large_for_the_store_is_a_data_error_naming_the_row(store: Any, amount: str) -> None:
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}])
    with pytest.raises(retainer.DataError, match=r"invoices\[0\] id=i1 field amount: .*too large"):
        store.add(invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-01-01", "amount": amount}])
    assert store.add(invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-01-01",
                                "amount": str(MAX_AMOUNT)}]) == {"invoices": 1}
    (inv,) = store.facts("invoices", datetime(2026, 3, 1, tzinfo=UTC))
    assert inv.amount == MAX_AMOUNT  # the largest amount round-trips exactly


@pytest.mark.parametrize("cell", ["45945", "3000000000", "31.10.2025", "9999-13-45", "3a00-01-01"])
def test_only_a_real_date_in_the_year_3000_or_later_is_no_end(cell: str) -> None:
    """An Excel day number (45945 is 2025-10-15) or a Russian-style date was read as "no date", and the
    invoice was never dunned: only an ISO date that far reads as empty."""
    store = retainer.open_store("memory://", timezone="Europe/Moscow")
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}])
    row = {"id": "i1", "client_id": "c1", "issued_at": "2025-10-01", "amount": 5}
    with pytest.raises(retainer.DataError, match=r"invoices\[0\] id=i1 field due_at: invalid date/time"):
        store.add(invoices=[{**row, "due_at": cell}])
    store.add(invoices=[{**row, "due_at": "9999-12-31"}])
    assert store.get("invoices", "i1").due_at is None  # type: ignore[union-attr]
