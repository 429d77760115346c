"""SQLite store: facts in indexed tables, per-client aggregates computed in SQL.

Encodings keep SQL comparisons exact and cheap: instants are fixed-width UTC text
(`2026-03-01T09:00:00Z`, sorts like the instant), money is an INTEGER of 1/10000 units (sums are
exact), tags are `;`-joined text, attributes JSON. Every aggregate over one entity is answered by a
single scan (one `GROUP BY client_id` with a CASE per aggregate), never a query per client, except
the latest-activity instants of a nightly plan: per-client summaries maintained by every write answer
those when no fact is dated after as_of (see `_LATEST`).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import stat
import threading
import urllib.parse
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ..actions import Action
from ..errors import DataError, RunInProgressError, StoreBusyError, StoreError
from ..ledger import (
    LedgerEntry,
    RunRecord,
    Status,
    action_payload,
    check_outcome,
    check_query,
    claim_token,
    merge_outcome,
)
from ..model import ENTITIES, Client, Entity, Manager, no_gc
from ..timeutil import same_zone, to_utc_text, zone_name
from . import _ingest
from .base import EXISTS_FIELD, TIME_FIELDS, AggSpec, Changes, Pred

if TYPE_CHECKING:
    import sqlite_utils

SCHEMA_VERSION = "2"  # 2: per-client summaries (retainer_latest, retainer_newest) that every writer maintains
_MIGRATES = ("1",)  # older versions this one upgrades on open
_SCALE = 10_000

# field kind per entity field: text | instant | money | bool | int | tags | json
_KINDS: dict[str, dict[str, str]] = {
    "managers": {
        "id": "text",
        "name": "text",
        "active": "bool",
        "supervisor_id": "text",
        "max_clients": "int",
        "team": "text",
    },
    "clients": {
        "id": "text",
        "manager_id": "text",
        "name": "text",
        "status": "text",
        "tags": "tags",
        "contact_policy": "text",
        "abc_class": "text",
        "cost_to_serve": "money",
        "created_at": "instant",
        "attributes": "json",
    },
    "touches": {
        "id": "text",
        "client_id": "text",
        "at": "instant",
        "kind": "text",
        "direction": "text",
        "manager_id": "text",
        "channel": "text",
        "action_id": "text",
    },
    "tasks": {
        "id": "text",
        "client_id": "text",
        "manager_id": "text",
        "created_at": "instant",
        "due_at": "instant",
        "done_at": "instant",
        "status": "text",
        "kind": "text",
        "source": "text",
        "action_id": "text",
    },
    "deals": {
        "id": "text",
        "client_id": "text",
        "created_at": "instant",
        "closed_at": "instant",
        "status": "text",
        "amount": "money",
    },
    "invoices": {
        "id": "text",
        "client_id": "text",
        "issued_at": "instant",
        "due_at": "instant",
        "amount": "money",
        "paid_at": "instant",
        "paid_amount": "money",
    },
    "offers": {
        "id": "text",
        "client_id": "text",
        "category": "text",
        "made_at": "instant",
        "ends_at": "instant",
        "amount": "money",
        "action_id": "text",
    },
    "contracts": {
        "id": "text",
        "client_id": "text",
        "starts_at": "instant",
        "ends_at": "instant",
        "monthly_amount": "money",
    },
}
_SQLTYPE = {"text": str, "instant": str, "money": int, "bool": int, "int": int, "tags": str, "json": str}

#: facts per client from which every client's max/min is read by index seeks rather than a grouped scan
SEEK_DENSITY = 4

_INDEXES: dict[str, list[list[str]]] = {
    "clients": [["manager_id"]],
    "touches": [["client_id", "at", "direction", "kind"]],
    # (client_id, instant) indexes also let a partial plan seek each client's latest instant (the
    # summarised columns) instead of reading all of its rows: see _aggregate_seek
    # (client_id, due_at, ...) covers "open and due on or after a day" (has_future_task, its next due date)
    # without a row lookup per task: busy clients have dozens
    "tasks": [["client_id", "created_at"], ["client_id", "due_at", "status", "done_at", "created_at"],
              ["client_id", "done_at"]],
    "deals": [["client_id", "created_at"], ["client_id", "closed_at"]],
    "invoices": [["client_id", "issued_at"], ["client_id", "paid_at"]],
    "offers": [["client_id", "made_at"]],
    "contracts": [["client_id", "starts_at"]],
}

# SQL for the virtual fields of base.VIRTUAL_FIELDS (kept in lockstep with base.virtual_value)
_DONE = "(done_at IS NOT NULL AND done_at <= :asof)"
_PAID = "(CASE WHEN paid_at IS NOT NULL AND paid_at <= :asof THEN COALESCE(paid_amount, amount) ELSE 0 END)"
_VIRTUAL_SQL: dict[str, dict[str, tuple[str, str]]] = {
    "touches": {"medium": ("lower(coalesce(channel, kind))", "text")},
    "tasks": {
        "is_done": (f"(status != 'cancelled' AND {_DONE})", "bool"),
        "is_open": (
            f"(status != 'cancelled' AND NOT {_DONE} AND (CASE WHEN done_at IS NULL THEN status = 'open' ELSE 1 END))",
            "bool",
        ),
    },
    "deals": {
        "is_open": "(CASE WHEN closed_at IS NULL THEN status = 'open' ELSE closed_at > :asof END)",
        "is_won": "(status = 'won' AND (closed_at IS NULL OR closed_at <= :asof))",
        "is_lost": "(status = 'lost' AND (closed_at IS NULL OR closed_at <= :asof))",
    },
    "invoices": {
        "paid_total": (_PAID, "money"),
        "outstanding": (f"max(amount - {_PAID}, 0)", "money"),
    },
    "contracts": {"span": ("(coalesce(starts_at, '') || '|' || coalesce(ends_at, ''))", "text")},
}
_VIRTUAL_SQL["deals"] = {k: (v, "bool") for k, v in _VIRTUAL_SQL["deals"].items()}  # type: ignore[misc]

# Per-client summaries for the nightly case: `retainer_latest` holds, per client, the latest value of
# a few instants (the sources of `last_activity_at`, also `last_invoice_at`) over ALL of the client's
# rows, and `retainer_newest` the newest value of each instant field involved over the whole table. For
# an as_of at or after the newest value of both the summarised field and the table's EXISTS_FIELD, no
# row is dated after as_of, so `max(field) <= as_of` over the rows that exist at as_of is exactly the
# summary: `aggregate` reads one row per client instead of scanning the facts. For any earlier as_of
# it scans, as before. A load recomputes the summaries of the clients it touches (a replaced fact's
# former client too) and raises the newest instants, in its own transaction.
# column -> (entity, field, where): answers AggSpec(entity, "max", field, where, time_field=field, since=any)
_LATEST: dict[str, tuple[str, str, tuple[Pred, ...]]] = {
    "touches_at": ("touches", "at", ()),
    "tasks_created_at": ("tasks", "created_at", (Pred("source", "ne", "retainer"),)),
    "tasks_done_at": ("tasks", "done_at", (Pred("status", "ne", "cancelled"),)),
    "deals_created_at": ("deals", "created_at", ()),
    "deals_closed_at": ("deals", "closed_at", ()),
    "invoices_issued_at": ("invoices", "issued_at", ()),
    "invoices_paid_at": ("invoices", "paid_at", ()),
}
_WORD = re.compile(r"[a-z_]+")


def _columns(entity: str, sql: str) -> set[str]:
    """The columns of `entity` an SQL expression of ours reads (virtual fields included)."""
    return {w for w in _WORD.findall(sql) if w in _KINDS[entity]}


def _index_sql(entity: str, cols: list[str]) -> str:
    # named as sqlite-utils names indexes: stores made by earlier versions have them under these names
    return f'CREATE INDEX IF NOT EXISTS "idx_{entity}_{"_".join(cols)}" ON {entity} ({", ".join(cols)})'


_LATEST_BY_SPEC = {(e, f, w): col for col, (e, f, w) in _LATEST.items()}
_SUMMARY_COLS: dict[str, list[str]] = {}  # entity -> its retainer_latest columns
for _c, (_e, _f, _w) in _LATEST.items():
    _SUMMARY_COLS.setdefault(_e, []).append(_c)
# the instant fields whose newest value decides whether the summaries answer: summarised and EXISTS_FIELD
_NEWEST: dict[str, list[str]] = {}
for _e, _f, _w in _LATEST.values():
    _NEWEST.setdefault(_e, [])
    for _x in (EXISTS_FIELD[_e], _f):
        if _x not in _NEWEST[_e]:
            _NEWEST[_e].append(_x)
# stamped in retainer_meta: a retainer with another definition rebuilds the summaries on open
_LATEST_DEF = json.dumps([[c, e, f, [[p.field, p.op, p.value] for p in w]] for c, (e, f, w) in _LATEST.items()])
_LATEST_DDL = f"""
CREATE TABLE IF NOT EXISTS retainer_latest (client_id TEXT PRIMARY KEY, {', '.join(f'{c} TEXT' for c in _LATEST)})
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS retainer_newest (entity TEXT NOT NULL, field TEXT NOT NULL, value TEXT,
                                            PRIMARY KEY (entity, field));
"""


# The ledger. `seq` keeps commit order; `key` and `id` are unique, so a duplicate can never be
# committed even by a writer that skipped the duplicate check (the transaction fails instead).
_LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS retainer_actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL,
    type TEXT NOT NULL,
    rule TEXT NOT NULL,
    client_id TEXT NOT NULL,
    category TEXT NOT NULL,
    as_of TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    outcome TEXT,
    outcome_at TEXT,
    payload TEXT NOT NULL,
    claimed_by TEXT
);
CREATE INDEX IF NOT EXISTS retainer_actions_status ON retainer_actions (status, seq);
CREATE INDEX IF NOT EXISTS retainer_actions_client ON retainer_actions (client_id, as_of);
CREATE INDEX IF NOT EXISTS retainer_actions_as_of ON retainer_actions (as_of);
CREATE TABLE IF NOT EXISTS retainer_runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    as_of TEXT NOT NULL,
    rules_digest TEXT NOT NULL,
    started_at TEXT NOT NULL,
    status TEXT NOT NULL,
    finished_at TEXT,
    counts TEXT NOT NULL DEFAULT '{}',
    kind TEXT
);
"""
# (client, manager) -> the ledger's newest seq when a write last gave the client that manager
# (`Store.manager_changes`)
_CHANGES_DDL = """
CREATE TABLE IF NOT EXISTS retainer_manager_changes (
    client_id TEXT NOT NULL, manager_id TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (client_id, manager_id)
) WITHOUT ROWID;
"""
#: ledger columns later versions added: read as empty in a read-only store written before them
_LEDGER_NEW = {"retainer_actions": {"claimed_by": "text"}, "retainer_runs": {"kind": "text"}}
_LEDGER_COLS = (
    "id, key, run_id, type, rule, client_id, category, as_of, status, attempts, last_error, "
    "created_at, updated_at, outcome, outcome_at, payload, claimed_by"
)


def _existing_at(
    entity: str, as_of: datetime, client_ids: Sequence[str] | None
) -> tuple[list[str], dict[str, Any]]:
    """SQL conditions (and their parameters) for the facts that exist at as_of, of some clients."""
    exists = EXISTS_FIELD[entity]
    params: dict[str, Any] = {"asof": to_utc_text(as_of)}
    conds = [f"({exists} IS NULL OR {exists} <= :asof)"]
    if client_ids is not None:
        params["ids"] = json.dumps(list(client_ids))
        conds.append("client_id IN (SELECT value FROM json_each(:ids))")
    return conds, params


class _StoredIds:
    """The ids of one table as a load sees them: those it added, and any stored one, looked up by
    primary key on first use. A small write (one touch) never reads every client id."""

    def __init__(self, conn: sqlite3.Connection, entity: str) -> None:
        self.conn, self.entity = conn, entity
        self.added: set[str] = set()
        self.stored: dict[str, bool] = {}
        # a table empty when the load began has nothing to look up (a bulk load asks once per row)
        self.empty = conn.execute(f"SELECT 1 FROM {entity} LIMIT 1").fetchone() is None

    def __contains__(self, id: object) -> bool:
        if id in self.added:
            return True
        if self.empty or not isinstance(id, str):
            return False
        hit = self.stored.get(id)
        if hit is None:
            hit = self.stored[id] = self.conn.execute(
                f"SELECT 1 FROM {self.entity} WHERE id = ?", [id]
            ).fetchone() is not None
        return hit

    def update(self, ids: Iterable[str]) -> None:
        self.added.update(ids)


def _args(params: Sequence[Any] | Mapping[str, Any]) -> Any:
    return params if isinstance(params, Mapping) else list(params)


def _instant(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v else None


def _entry(r: Sequence[Any]) -> LedgerEntry:
    """A row of `_LEDGER_COLS, seq`."""
    return LedgerEntry(
        id=r[0], key=r[1], run_id=r[2], type=r[3], rule=r[4], client_id=r[5] or None, category=r[6],
        as_of=datetime.fromisoformat(r[7]), status=r[8], attempts=r[9], last_error=r[10],
        created_at=datetime.fromisoformat(r[11]), updated_at=datetime.fromisoformat(r[12]),
        outcome=json.loads(r[13]) if r[13] else None, outcome_at=_instant(r[14]), payload=r[15], claimed_by=r[16],
        seq=r[17],
    )


_ENCODERS: dict[str, Any] = {}


def _encoder(entity: str) -> Any:
    """`encode(models) -> iterator of rows` in _KINDS order, the columns encoded as the store keeps them
    (see the module docstring): generated once per entity, the inverse of `_builder`."""
    fn = _ENCODERS.get(entity)
    if fn is not None:
        return fn
    env: dict[str, Any] = {"utc": to_utc_text, "UTC": UTC, "dumps": json.dumps, "scale": _SCALE}
    items = []
    for j, (field, kind) in enumerate(_KINDS[entity].items()):
        v = f"d[{field!r}]"
        match kind:
            case "instant":
                # to_utc_text, inline for the usual aware UTC instant in whole seconds
                expr = (f"None if (v{j} := {v}) is None else v{j}.isoformat()[:19] + 'Z' "
                        f"if v{j}.tzinfo is UTC and not v{j}.microsecond else utc(v{j})")
            case "money":
                expr = f"None if (v{j} := {v}) is None else int(v{j} * scale)"
            case "bool":
                expr = f"None if (v{j} := {v}) is None else int(v{j})"
            case "tags":
                expr = f"None if (v{j} := {v}) is None else ';'.join(sorted(v{j}))"
            case "json":
                expr = f"None if (v{j} := {v}) is None else dumps(v{j}, sort_keys=True, default=str)"
            case _:
                expr = v
        items.append(expr)
    src = (
        "def encode(models):\n"
        "    for m in models:\n"
        "        d = m.__dict__\n"
        f"        yield ({', '.join(items)},)\n"
    )
    exec(compile(src, f"<retainer row encoder: {entity}>", "exec"), env)  # our own source, from _KINDS
    fn = _ENCODERS[entity] = env["encode"]
    return fn


def _to_db(kind: str, v: Any) -> Any:
    if v is None:
        return None
    match kind:
        case "instant":
            return to_utc_text(v)
        case "money":
            return int(v * _SCALE)
        case "bool":
            return int(bool(v))
        case "tags":
            return ";".join(sorted(v))
        case "json":
            return json.dumps(v, sort_keys=True, default=str)
        case _:
            return v


_NO_TAGS: frozenset[str] = frozenset()


def _converter(kind: str) -> Any:
    """Column decoder, or None for columns SQLite already returns in their Python form."""
    match kind:
        case "instant":
            return datetime.fromisoformat
        case "money":
            return lambda v: Decimal(v) / _SCALE
        case "bool":
            return bool
        case "tags":
            return lambda v: frozenset(t for t in v.split(";") if t) if v else _NO_TAGS
        case "json":
            return json.loads
        case _:
            return None




_BUILDERS: dict[str, Any] = {}


def _builder(entity: str) -> Any:
    """`build(rows) -> [model, ...]` for rows of `SELECT <every column in _KINDS order>`: the models
    `fast_model` makes (no validation: the store wrote these rows), from a function generated once
    per entity, so each row is one tuple unpack and one dict display instead of a loop over columns."""
    fn = _BUILDERS.get(entity)
    if fn is not None:
        return fn
    kinds = _KINDS[entity]
    model = ENTITIES[entity]
    assert model.model_config.get("frozen"), "the builder shares one fields set between instances"
    env: dict[str, Any] = {"new": model.__new__, "model": model, "sa": object.__setattr__,
                           "fromiso": datetime.fromisoformat, "loads": json.loads, "fields": set(kinds)}
    names = [f"c{j}" for j in range(len(kinds))]
    items = []
    for j, (field, kind) in enumerate(kinds.items()):
        v = names[j]
        match kind:
            case "instant":
                expr = f"None if {v} is None else fromiso({v})"
            case "money" | "tags":
                env[f"conv{j}"] = _converter(kind)
                hit = f"memo{j}[{v}] if {v} in memo{j} else memo{j}.setdefault({v}, conv{j}({v}))"
                expr = f"None if {v} is None else {hit}"
            case "bool":
                expr = f"None if {v} is None else bool({v})"
            case "json":
                empty = "{}" if field == "attributes" else "None"  # Client.attributes is never None
                expr = f"{empty} if {v} is None else {{}} if {v} == '{{}}' else loads({v})"
            case _:
                expr = v
        items.append(f"{field!r}: {expr}")
    memos = "".join(f"    memo{j} = {{}}\n" for j, k in enumerate(kinds.values()) if k in ("money", "tags"))
    src = (
        "def build(rows):\n"
        f"{memos}"
        "    out = []\n"
        "    append = out.append\n"
        f"    for ({', '.join(names)},) in rows:\n"
        f"        d = {{{', '.join(items)}}}\n"
        "        m = new(model)\n"
        "        sa(m, '__dict__', d)\n"
        "        sa(m, '__pydantic_fields_set__', fields)\n"  # entities are frozen: one set for all
        "        sa(m, '__pydantic_extra__', None)\n"
        "        sa(m, '__pydantic_private__', None)\n"
        "        append(m)\n"
        "    return out\n"
    )
    exec(compile(src, f"<retainer row builder: {entity}>", "exec"), env)  # our own source, from _KINDS
    fn = _BUILDERS[entity] = env["build"]
    return fn


def lock_file(path: str | Path) -> str:
    """The run lock beside a database, by its real path: one lock whatever the path (symlinks, ../)."""
    return os.path.realpath(path) + "-runlock"


def store_files(path: str | Path) -> list[Path]:
    """Every file a SQLite store consists of: the database, SQLite's WAL and shared memory, the run lock."""
    return [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")] + [Path(lock_file(path))]


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _insert(conn: sqlite3.Connection, sql: str, b: _ingest.Batch) -> None:
    """`executemany` of a batch, naming the row and field of text SQLite cannot store: a lone surrogate (a
    stray `\\udc80` escape in a JSONL name) is not UTF-8, and raised a bare UnicodeEncodeError out of an
    import (the memory store, which holds Python strings, keeps it)."""
    try:
        conn.executemany(sql, _encoder(b.entity)(b.models))
    except UnicodeEncodeError:
        for n, m in enumerate(b.models):
            for name, v in m:
                texts = v if isinstance(v, frozenset) else v.values() if isinstance(v, dict) else (v,)
                for t in texts:
                    if isinstance(t, str) and not _is_utf8(t):
                        at = next(k for k, c in enumerate(t) if "\ud800" <= c <= "\udfff")
                        raise DataError(
                            f"text UTF-8 cannot hold (a lone surrogate, {t[at]!r}, at character {at + 1}: a stray "
                            f"escape, or bytes decoded with errors='surrogateescape'); this store keeps UTF-8 text",
                            **b.where(n), id=m.id if _is_utf8(m.id) else None, field=name,
                        ) from None  # fmt: skip
        raise


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _zone_of(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM retainer_meta WHERE key = 'timezone'").fetchone()
    return row[0] if row else None


def _json_text(value: Any) -> str:
    """JSON for a TEXT column: as written (Cyrillic stays readable), or with escapes where UTF-8 cannot hold
    a character (a lone surrogate in an outcome a host recorded), which read back the same."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if _is_utf8(text) else json.dumps(value, sort_keys=True, default=str)


class SQLiteStore:
    """A CRM snapshot in one SQLite file (WAL mode, so readers never block the writer)."""

    _absent: ClassVar[frozenset[tuple[str, str]]] = frozenset()  # (table, column) an old read-only store lacks
    _changes = False  # whether the store has retainer_manager_changes (an old read-only one may not)
    _closed = False

    def __init__(
        self, path: str | Path, *, timezone: tzinfo | None = None, url: str | None = None, create: bool = True
    ) -> None:
        """`timezone`: how naive times in added rows are read; None: UTC, and no zone is recorded for the store
        (nobody chose it: see `recorded_zone`)."""
        self.path = str(path)
        self.url = url or f"sqlite:///{self.path}"
        self.tz = timezone or UTC
        self.zone_defaulted = timezone is None
        self._mem_lock = threading.Lock()
        self._checkpointer: tuple[threading.Event, threading.Thread] | None = None
        # whether this call makes the file: an importer that fails removes what it created
        self.created = self.path != ":memory:" and not Path(self.path).exists()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []  # every thread's, to close
        self._conns_lock = threading.Lock()
        #: why this store only reads (a file on a read-only mount, a snapshot): None when it can write
        self.read_only: str | None = None
        self._uri: str | None = None  # how every thread's connection opens a read-only file
        try:
            try:
                conn = self._connect()
                self._ensure_schema(create)  # first: a file that is not a store is refused untouched
            except sqlite3.OperationalError as exc:
                conn = self._open_read_only(exc)
            writable = not self.read_only and self.path != ":memory:"
            if writable and conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode = wal")
            self._tune(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open SQLite store {self.path!r}: {exc}") from exc

    def _open_read_only(self, exc: sqlite3.OperationalError) -> sqlite3.Connection:
        """Open a store that cannot be written where it lies, for reading: a file on a read-only mount or
        in a directory this user cannot write, where SQLite cannot make the write-ahead log's files
        beside it. Plans, reports and explanations only read; anything that writes fails, saying why.
        A log left by a writer that did not close the store holds commits the file does not yet: then it
        cannot be read here, and the error says so rather than read the file without them."""
        path = Path(self.path)
        why = str(exc).lower()
        if self.path == ":memory:" or not path.is_file() or not ("unable to open" in why or "readonly" in why):
            raise exc  # a locked or broken store is not a read-only one
        self._close_connections()
        self._conns = []
        wal = Path(f"{self.path}-wal")
        pending = wal.exists() and wal.stat().st_size > 0
        quoted = urllib.parse.quote(str(path.resolve()))
        tries = [f"file:{quoted}?mode=ro"] + ([] if pending else [f"file:{quoted}?mode=ro&immutable=1"])
        for uri in tries:
            self._uri, self.read_only = uri, f"{self.path} is read-only here: SQLite cannot write beside it ({exc})"
            try:
                conn = self._connect()
                self._ensure_schema(create=False)
            except sqlite3.OperationalError:
                self._close_connections()
                self._conns = []
                continue
            return conn
        self.read_only = None
        if pending:
            raise StoreError(
                f"cannot open SQLite store {self.path!r}: {exc}. It cannot be written here, and its write-ahead "
                f"log {wal.name} holds commits not yet in the file: open it once where it is writable (or copy "
                "the file and its -wal together to a writable place)"
            ) from exc
        raise exc

    def _connect(self) -> sqlite3.Connection:
        """A new connection for this thread, kept to be closed with the store."""
        if self._uri is not None:
            conn = sqlite3.connect(self._uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        self._local.conn = conn
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _tune(self, conn: sqlite3.Connection) -> None:
        """Per connection: how it writes and reads a WAL file."""
        if self.path == ":memory:":
            return
        # WAL + NORMAL: a commit survives any process crash (kill -9 included) and the file is never
        # corrupted; only an OS crash or power loss may roll back the last commits, whole. FULL would
        # fsync every delivery attempt the dispatcher records.
        conn.execute("PRAGMA synchronous = NORMAL")
        # reads: the file mapped instead of copied page by page through read(), and a page cache that
        # holds a plan's working set (the default 2 MB thrashes on a 100k-client store)
        conn.execute("PRAGMA mmap_size = 1073741824").fetchall()
        conn.execute("PRAGMA cache_size = -65536")

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection. A store object may be shared by threads (a web app's workers, a run
        delivering while another thread records outcomes): each gets its own connection to the file, as
        two processes would, instead of one connection whose transactions would interleave. An in-memory
        database has only the one."""
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed (store.close()): open it again to use it")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.path == ":memory:":
                return self._conns[0]
            conn = self._connect()
            self._tune(conn)
        return conn

    @conn.setter
    def conn(self, conn: sqlite3.Connection) -> None:  # this thread's (a wrapper, in benchmarks/reactive.py)
        self._local.conn = conn

    @cached_property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the connection, for making tables: imported only by the commands that make a
        store (it costs 60 ms of every start, and reads go through `conn`)."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def _tables(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]

    def _ensure_schema(self, create: bool = True) -> None:
        tables = self._tables()
        self._summaries = False  # whether retainer_latest/retainer_newest are there and current
        if "retainer_meta" in tables:
            row = self.conn.execute("SELECT value FROM retainer_meta WHERE key = 'schema_version'").fetchone()
            if row and row[0] != SCHEMA_VERSION and row[0] not in _MIGRATES:
                raise StoreError(f"{self.path}: schema version {row[0]}, this retainer reads {SCHEMA_VERSION}")
            if "retainer_actions" not in tables:
                self.conn.executescript(_LEDGER_DDL)  # a store imported before the ledger existed
            self._changes = "retainer_manager_changes" in tables or self._add_changes_table()
            self._add_new_columns()
            self._summaries = self._summaries_current() or self._migrate()
            self._add_new_indexes()
            return
        foreign = tables
        if foreign:  # somebody else's database (the CRM's own?): never write into it
            raise StoreError(
                f"{self.path} is not a retainer store: it has a {foreign[0]!r} table but no retainer_meta. "
                f"Load its data into a new store with `retainer import DIR --to sqlite:///new.db`"
            )
        if not create:
            raise StoreError(
                f"{self.path} is an empty database, not a retainer store: "
                f"load data into it first (`retainer import DIR --to sqlite:///{self.path}`)"
            )
        self.conn.executescript(_LEDGER_DDL + _CHANGES_DDL)
        self._changes = True
        with self.conn:
            for entity, kinds in _KINDS.items():
                self.db[entity].create(  # type: ignore[union-attr]
                    {f: _SQLTYPE[k] for f, k in kinds.items()}, pk="id", if_not_exists=True
                )
                for cols in _INDEXES.get(entity, []):
                    self.conn.execute(_index_sql(entity, cols))
            self.db["retainer_cursors"].create(
                {"name": str, "value": str},
                pk="name",  # type: ignore[union-attr]
                if_not_exists=True,
            )
            self.db["retainer_meta"].create(  # type: ignore[union-attr]
                {"key": str, "value": str}, pk="key", if_not_exists=True
            )
            self.conn.execute("INSERT OR IGNORE INTO retainer_meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
            self._build_summaries(self.conn)
        self._summaries = True

    def _summaries_current(self) -> bool:
        row = self.conn.execute(
            "SELECT (SELECT value FROM retainer_meta WHERE key = 'schema_version'), "
            "(SELECT value FROM retainer_meta WHERE key = 'latest_def')"
        ).fetchone()
        return row == (SCHEMA_VERSION, _LATEST_DEF)

    def _migrate(self) -> bool:
        """Bring a store written by an older retainer (or another summary definition) up to date: build
        the summaries from the facts, once, and stamp the schema version, so an older retainer (which
        would not maintain them) refuses the file from then on. A store that cannot be written now
        (read-only, busy) stays as it is and is read by scanning the facts."""
        try:
            with self._transaction() as conn:
                if not self._summaries_current():  # another process may have migrated it meanwhile
                    self._build_summaries(conn)
                    conn.execute("INSERT OR REPLACE INTO retainer_meta VALUES ('schema_version', ?)",
                                 [SCHEMA_VERSION])
        except (StoreError, sqlite3.OperationalError):
            return False
        return True

    def _build_summaries(self, conn: sqlite3.Connection) -> None:
        """(Re)compute both summary tables from the facts, in the caller's transaction."""
        conn.execute("DROP TABLE IF EXISTS retainer_latest")
        conn.execute("DROP TABLE IF EXISTS retainer_newest")
        for stmt in _LATEST_DDL.split(";"):
            if stmt.strip():
                conn.execute(stmt)
        for entity in _NEWEST:
            self._refresh_summaries(conn, entity, None)
            conn.execute(
                "INSERT OR REPLACE INTO retainer_newest (entity, field, value) "
                + " UNION ALL ".join(f"SELECT ?, ?, (SELECT MAX({f}) FROM {entity})" for f in _NEWEST[entity]),
                [x for f in _NEWEST[entity] for x in (entity, f)],
            )
        conn.execute("INSERT OR REPLACE INTO retainer_meta VALUES ('latest_def', ?)", [_LATEST_DEF])

    def _refresh_summaries(
        self, conn: sqlite3.Connection, entity: str, client_ids: set[str] | None, cols: list[str] | None = None
    ) -> None:
        """Recompute retainer_latest's columns of `entity` (or just `cols`) for `client_ids` (every client:
        None) from the facts."""
        cols = cols or _SUMMARY_COLS[entity]
        params: dict[str, Any] = {}
        exprs = [(_LATEST[c][1], self._latest_cond(entity, c, params)) for c in cols]
        sets = ", ".join(f"{c} = excluded.{c}" for c in cols)
        if client_ids is None:
            select = ", ".join(f"MAX(CASE WHEN {cond} THEN {f} END)" for f, cond in exprs)
            sql = (f"INSERT INTO retainer_latest (client_id, {', '.join(cols)}) "
                   f"SELECT client_id, {select} FROM {entity} WHERE client_id IS NOT NULL GROUP BY client_id "
                   f"ON CONFLICT (client_id) DO UPDATE SET {sets}")
        else:
            params["ids"] = json.dumps(sorted(client_ids))
            select = ", ".join(
                f"(SELECT MAX({f}) FROM {entity} WHERE client_id = j.value AND {cond})" for f, cond in exprs
            )
            sql = (f"INSERT INTO retainer_latest (client_id, {', '.join(cols)}) "
                   f"SELECT j.value, {select} FROM json_each(:ids) AS j WHERE 1 "
                   f"ON CONFLICT (client_id) DO UPDATE SET {sets}")
        conn.execute(sql, params)

    def _add_new_indexes(self) -> None:
        """Indexes later versions added: built once, on the first open where the store is writable. They
        only make reads faster, so a store that cannot be written now is read without them."""
        have = self._indexes()
        missing = [(e, cols) for e, ixs in _INDEXES.items() for cols in ixs if (e, *cols) not in have]
        if not missing:
            return
        try:
            with self._transaction() as conn:
                for entity, cols in missing:
                    conn.execute(_index_sql(entity, cols))
        except (StoreError, sqlite3.OperationalError):
            pass
        self.__dict__.pop("_seekable", None)

    def _add_changes_table(self) -> bool:
        """The table of manager changes, in a store written before it; a store that cannot be written now is
        read without it (every committed move reads as before: not carried out while the data shows the
        manager it was taken from)."""
        try:
            with self._transaction() as conn:
                conn.execute(_CHANGES_DDL)
                # a move the data already shows carried out is done: without this, a client taken back by
                # hand after the upgrade went to the manager it was released to again
                conn.execute(
                    "INSERT OR REPLACE INTO retainer_manager_changes (client_id, manager_id, seq) "
                    "SELECT a.client_id, c.manager_id, (SELECT COALESCE(MAX(seq), 0) FROM retainer_actions) "
                    "FROM retainer_actions a JOIN clients c ON c.id = a.client_id WHERE a.type = 'reassign' "
                    "AND json_extract(a.payload, '$.to_manager_id') = c.manager_id GROUP BY a.client_id"
                )
        except (StoreError, sqlite3.OperationalError):
            return False
        return True

    def _indexes(self) -> set[tuple[str, ...]]:
        """(entity, column, column, ...) of every index on the fact tables."""
        out = set()
        for entity in _INDEXES:
            for _seq, name, *_ in self.conn.execute(f"PRAGMA index_list({entity})").fetchall():
                cols = [r[2] for r in self.conn.execute(f'PRAGMA index_info("{name}")').fetchall()]
                out.add((entity, *cols))
        return out

    @cached_property
    def _seekable(self) -> set[tuple[str, str]]:
        """(entity, field) pairs with an index on (client_id, field, ...): a client's max or min of that
        field is one index seek."""
        return {(ix[0], ix[2]) for ix in self._indexes() if len(ix) >= 3 and ix[1] == "client_id"}

    def _missing_columns(self) -> list[tuple[str, str, str]]:
        out = []
        for entity, kinds in (*_KINDS.items(), *_LEDGER_NEW.items()):
            have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({entity})")}
            out += [(entity, f, k) for f, k in kinds.items() if have and f not in have]
        return out

    def _add_new_columns(self) -> None:
        """Columns later versions added (all optional): a store imported by an earlier retainer gets them
        empty, so it keeps working without a re-import. Checked again under the write lock: two processes
        opening an old store at once (a session service and the nightly run) both saw them missing, and
        the second failed on "duplicate column name". A store that cannot be written (read-only) is still
        read when only columns that may be empty are missing (the ledger's new ones, `tasks.action_id`): they
        read as empty."""
        self._absent = frozenset()
        if not self._missing_columns():
            return
        try:
            with self._transaction():
                for entity, f, k in self._missing_columns():
                    sqltype = "INTEGER" if _SQLTYPE[k] is int else "TEXT"
                    self.conn.execute(f'ALTER TABLE {entity} ADD COLUMN "{f}" {sqltype}')
        except (sqlite3.OperationalError, StoreError) as exc:
            missing = self._missing_columns()
            # an optional column (all that later versions add are) reads as empty: `tasks.action_id` is new, and a
            # store written before it, on a read-only mount, could not be planned at all
            if all(entity in _LEDGER_NEW or not ENTITIES[entity].model_fields[f].is_required()
                   for entity, f, _ in missing):  # fmt: skip
                self._absent = frozenset((entity, f) for entity, f, _ in missing)
                return
            raise StoreError(f"{self.path} was written by an earlier retainer and cannot be upgraded here ({exc}); "
                             "open it once where it is writable") from None

    def _columns(self, entity: str) -> str:
        """An entity's columns for a SELECT, in `_KINDS` order: NULL for one an old read-only store lacks."""
        return ", ".join(self._col(entity, c, "NULL") for c in _KINDS[entity])

    def _col(self, entity: str, col: str, absent: str) -> str:
        """`col`, or what it reads as in a read-only store from before the column (`_add_new_columns`)."""
        return absent if (entity, col) in self._absent else col

    # ------------------------------------------------------------ facts

    def add(self, **rows: Iterable[Entity | Mapping[str, Any]]) -> dict[str, int]:
        return self.load(_ingest.batches(rows, self.tz), replace=False)

    def upsert(self, **rows: Iterable[Entity | Mapping[str, Any]]) -> dict[str, int]:
        return self.load(_ingest.batches(rows, self.tz), replace=True)

    def _ids(self, entity: str) -> _StoredIds:
        return _StoredIds(self.conn, entity)

    @property
    def recorded_zone(self) -> str | None:
        """The zone this store's facts were written in (times without an offset read in it), recorded by its
        first write of facts in a zone named when it was opened; None before that (or in a store written by
        an older retainer)."""
        if self.read_only is None and "retainer_meta" not in self._tables():
            return None
        return _zone_of(self.conn)

    def _claim_zone(self, conn: sqlite3.Connection) -> None:
        """Facts are written in one zone: a nightly `import --replace` that read the same 23:30 call in UTC
        after the first import read it in Moscow moved it to the next day, and the same silence got a second
        task (a new episode date). Refused, naming both zones, before any row is written. A zone nobody named
        (open_store's UTC default) is not recorded: naming the right one later is the fix for it."""
        if getattr(self, "zone_defaulted", False):
            return
        mine = zone_name(self.tz)
        recorded = _zone_of(conn)
        if recorded is None:
            conn.execute("INSERT INTO retainer_meta VALUES ('timezone', ?)", [mine])
        elif not same_zone(recorded, mine):
            raise DataError(
                f"{self.path}: its facts were written with times without an offset read in {recorded}; these "
                f"would be read in {mine}, moving every such time (and the day it falls on) by the difference. "
                f"Open the store with timezone={recorded!r} (retainer import --timezone {recorded}, or a rule file "
                f"in that zone), or load the data into a new store"
            )

    def load(self, batches: Iterable[_ingest.Batch], *, replace: bool = False) -> dict[str, int]:
        """Write validated batches in ONE transaction: all of them, or nothing when one is bad.

        Batches may come lazily (a file importer streams them), so memory stays bounded. A table that
        is empty when its first batch arrives is bulk-loaded: its secondary indexes are dropped and
        built again once its rows are in (one sort instead of a B-tree insert per row), and its
        summaries are computed by one grouped scan; both inside the transaction, so a failed load
        leaves the indexes as they were.
        """
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        counts: dict[str, int] = {}
        known: dict[str, _ingest.IdSet] = {}
        seen: dict[str, set[str]] = {}
        pending: _ingest.Pending = []
        was_empty: dict[str, bool] = {}
        deferred: list[str] = []  # CREATE INDEX statements of bulk-loaded tables, run after their rows
        bulk_summaries: set[str] = set()  # entities loaded into an empty table: summarised after the load
        with self._no_mmap() as bulk_reads, self._transaction() as conn:
            self._claim_zone(conn)
            summaries = self._summaries = self._summaries_current()  # under the write lock: settled
            for b in batches:
                if not known:
                    for e in ("managers", "clients"):  # empty before the load: nothing to look up, a plain set
                        ids = self._ids(e)
                        known[e] = set() if ids.empty else ids
                if b.entity not in was_empty:  # first batch of this entity: before any of our own rows
                    was_empty[b.entity] = not conn.execute(f"SELECT 1 FROM {b.entity} LIMIT 1").fetchone()
                    if was_empty[b.entity]:
                        bulk_reads()
                        deferred += self._drop_indexes(conn, b.entity)
                bulk = was_empty[b.entity] and b.entity not in known
                if not bulk:
                    existing = known[b.entity] if b.entity in known else self._existing(b.entity, b.models)
                    _ingest.check_batch(b, seen.setdefault(b.entity, set()), existing, replace=replace)
                _ingest.check_references(b, known, pending)
                if b.entity in known:
                    known[b.entity].update(m.id for m in b.models)
                cols = list(_KINDS[b.entity])
                managers = (self._managers_of(conn, b) if self._changes and b.entity == "clients" and not bulk
                            and replace else None)  # fmt: skip
                before = None
                if summaries and b.entity in _NEWEST and b.models:
                    before = self._note_summaries(conn, b, replace and not was_empty[b.entity], bulk_summaries)
                if bulk:  # the primary key finds a repeated id; `_duplicate` then says which line has it
                    sql = f"INSERT INTO {b.entity} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                    conn.execute("SAVEPOINT batch")
                    try:
                        _insert(conn, sql, b)
                    except sqlite3.IntegrityError:
                        conn.execute("ROLLBACK TO batch")
                        self._duplicate(conn, b)
                        raise
                    conn.execute("RELEASE batch")
                else:
                    sql = f"{verb} INTO {b.entity} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                    _insert(conn, sql, b)
                if before is not None:
                    self._merge_summaries(conn, b, before)
                if managers:
                    self._note_manager_changes(conn, b, managers)
                counts[b.entity] = counts.get(b.entity, 0) + len(b.models)
            _ingest.check_pending(pending, known)
            for stmt in deferred:
                conn.execute(stmt)
            for entity in sorted(bulk_summaries):  # one grouped scan each
                self._refresh_summaries(conn, entity, None)
        written = sum(counts.values())
        if written >= 1000 or (written and any(was_empty.values())):
            # statistics for the query planner: worth it after a bulk load, not after every small write
            # (a CRM posting one touch at a time would pay ~45 ms per event at 10k clients)
            self.conn.execute("ANALYZE")
        return counts

    @contextmanager
    def _no_mmap(self) -> Iterator[Any]:
        """`off()` makes a bulk load read the file through the page cache, not the readers' memory map:
        building an index over a bulk load reads every page of the table, and mapped pages stay in the
        process's resident memory (a 1M-client import would hold gigabytes of them). The readers'
        setting comes back after the load; small writes never touch it."""
        conn = self.conn
        before: list[int] = []

        def off() -> None:
            if not before:
                row = conn.execute("PRAGMA mmap_size").fetchone()
                before.append(int(row[0]) if row else 0)
                conn.execute("PRAGMA mmap_size = 0").fetchall()

        try:
            yield off
        finally:
            if before and before[0]:
                conn.execute(f"PRAGMA mmap_size = {before[0]}").fetchall()

    def _duplicate(self, conn: sqlite3.Connection, b: _ingest.Batch) -> None:
        """Raise the DataError naming the first row of `b` whose id is already in its table, which was
        empty before this load: so the earlier row is in this load too (an earlier batch, or above it)."""
        there = self._existing(b.entity, b.models)
        _ingest.check_batch(b, there, set(), replace=False)

    @staticmethod
    def _drop_indexes(conn: sqlite3.Connection, entity: str) -> list[str]:
        """Drop the secondary indexes of `entity` (in the caller's transaction); their CREATE statements."""
        found = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL "
            "ORDER BY name",
            [entity],
        ).fetchall()
        for name, _sql in found:
            conn.execute(f'DROP INDEX "{name}"')
        return [sql for _name, sql in found]

    def _note_summaries(
        self, conn: sqlite3.Connection, b: _ingest.Batch, replacing: bool, bulk_summaries: set[str]
    ) -> list[tuple[Any, ...]] | None:
        """Before a batch is written: raise the newest instants to the batch's. A table empty before this
        load is summarised whole after it, by one grouped scan (None). Otherwise returns the summarised
        values of the rows the batch replaces, for `_merge_summaries`."""
        entity = b.entity
        for f in _NEWEST[entity]:
            newest = max((v for m in b.models if (v := m.__dict__[f]) is not None), default=None)
            if newest is not None:
                conn.execute(
                    "INSERT INTO retainer_newest (entity, field, value) VALUES (?, ?, ?) ON CONFLICT (entity, field) "
                    "DO UPDATE SET value = CASE WHEN value IS NULL OR excluded.value > value THEN excluded.value "
                    "ELSE value END",
                    [entity, f, to_utc_text(newest)],
                )
        if entity in bulk_summaries:
            return None
        if not conn.execute(f"SELECT 1 FROM {entity} LIMIT 1").fetchone():
            bulk_summaries.add(entity)
            return None
        return self._summarised_rows(conn, entity, [m.id for m in b.models]) if replacing else []

    def _latest_cond(self, entity: str, col: str, params: dict[str, Any]) -> str:
        """SQL: the row counts for retainer_latest's column `col` (its parameters go into `params`)."""
        _e, f, where = _LATEST[col]
        return " AND ".join([f"{f} IS NOT NULL", *(self._pred(entity, p, f"{col}_{k}", params)
                                                   for k, p in enumerate(where))])  # fmt: skip

    def _summarised_rows(self, conn: sqlite3.Connection, entity: str, ids: list[str]) -> list[tuple[Any, ...]]:
        """(id, client_id, value of each of the entity's retainer_latest columns) of rows `ids`: the value
        is NULL where the row does not count for that column."""
        params: dict[str, Any] = {"ids": json.dumps(ids)}
        exprs = [f"CASE WHEN {self._latest_cond(entity, c, params)} THEN {_LATEST[c][1]} END"
                 for c in _SUMMARY_COLS[entity]]  # fmt: skip
        return conn.execute(
            f"SELECT id, client_id, {', '.join(exprs)} FROM {entity} WHERE id IN (SELECT value FROM json_each(:ids))",
            params,
        ).fetchall()

    def _merge_summaries(self, conn: sqlite3.Connection, b: _ingest.Batch, before: list[tuple[Any, ...]]) -> None:
        """After a batch is written into a table that had rows: fold its rows into retainer_latest.

        A latest instant only moves forward when rows arrive, so the new value is the larger of the
        summary and the batch's rows. Only where a replaced row WAS the client's latest and its new version
        no longer is (moved back in time, to another client, or out of the column's filter) are the
        client's rows read again: so one payment costs a few indexed lookups, not a scan of every invoice
        of a client with thousands of them.
        """
        entity = b.entity
        cols = _SUMMARY_COLS[entity]
        after = self._summarised_rows(conn, entity, [m.id for m in b.models])
        clients = {r[1] for r in after if r[1] is not None} | {r[1] for r in before if r[1] is not None}
        if not clients:
            return
        current = {
            r[0]: list(r[1:])
            for r in conn.execute(
                f"SELECT client_id, {', '.join(cols)} FROM retainer_latest "
                "WHERE client_id IN (SELECT value FROM json_each(?))",
                [json.dumps(sorted(clients))],
            )
        }
        new = {cid: current.get(cid, [None] * len(cols)) for cid in clients}
        now = {r[0]: r for r in after}
        stale: dict[int, set[str]] = {}  # column -> clients to read again
        for r in before:
            cid = r[1]
            if cid is None:
                continue
            later = now.get(r[0])
            for j, old in enumerate(r[2:]):
                if old is None or old != new[cid][j]:
                    continue  # not the client's latest: the summary does not depend on it
                if later is None or later[1] != cid or later[2 + j] is None or later[2 + j] < old:
                    stale.setdefault(j, set()).add(cid)
        for r in after:
            cid = r[1]
            if cid is None:
                continue
            row = new[cid]
            for j, v in enumerate(r[2:]):
                if v is not None and (row[j] is None or v > row[j]):
                    row[j] = v
        conn.executemany(
            f"INSERT INTO retainer_latest (client_id, {', '.join(cols)}) VALUES (?, {', '.join('?' * len(cols))}) "
            f"ON CONFLICT (client_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in cols)}",
            [(cid, *vals) for cid, vals in sorted(new.items())],
        )
        for j, ids in sorted(stale.items()):
            self._refresh_summaries(conn, entity, ids, [cols[j]])

    @staticmethod
    def _managers_of(conn: sqlite3.Connection, b: _ingest.Batch) -> dict[str, str]:
        """The stored manager of each client of a batch about to be replaced."""
        rows = conn.execute("SELECT id, manager_id FROM clients WHERE id IN (SELECT value FROM json_each(?))",
                            [json.dumps([m.id for m in b.models])])  # fmt: skip
        return dict(rows.fetchall())

    def _note_manager_changes(self, conn: sqlite3.Connection, b: _ingest.Batch, before: dict[str, str]) -> None:
        """Date the manager each client of this batch was given by the ledger's newest seq (`manager_changes`)."""
        changed = [m for m in b.models if m.id in before and before[m.id] != m.manager_id]  # type: ignore[attr-defined]
        seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM retainer_actions").fetchone()[0] if changed else 0
        if seq:
            conn.executemany("INSERT OR REPLACE INTO retainer_manager_changes VALUES (?, ?, ?)",
                             [(m.id, m.manager_id, seq) for m in changed])  # type: ignore[attr-defined]  # fmt: skip

    def manager_changes(self, client_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        if not self._changes or not client_ids:
            return {}
        out: dict[str, dict[str, int]] = {}
        for cid, manager, seq in self.conn.execute(
            "SELECT client_id, manager_id, seq FROM retainer_manager_changes "
            "WHERE client_id IN (SELECT value FROM json_each(?))",
            [json.dumps(list(client_ids))],
        ):
            out.setdefault(cid, {})[manager] = seq
        return out

    def _existing(self, entity: str, models: list[Entity]) -> set[str]:
        ids = json.dumps([m.id for m in models])
        return {
            r[0]
            for r in self.conn.execute(f"SELECT id FROM {entity} WHERE id IN (SELECT value FROM json_each(?))", [ids])
        }

    def _rows(
        self, entity: str, sql_tail: str = "", params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> Iterator[Entity]:
        """Streamed in chunks, so iterating a large fact table keeps memory bounded."""
        cur = self.conn.execute(f"SELECT {self._columns(entity)} FROM {entity} {sql_tail}", _args(params))
        build = _builder(entity)
        while rows := cur.fetchmany(10_000):
            yield from build(rows)

    def _models(
        self, entity: str, sql_tail: str = "", params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[Any]:
        build = _builder(entity)
        with no_gc():
            sql = f"SELECT {self._columns(entity)} FROM {entity} {sql_tail}"
            rows = self.conn.execute(sql, _args(params)).fetchall()
            return build(rows)

    def get(self, entity: str, id: str) -> Entity | None:
        _ingest.check_entity(entity)
        return next(self._rows(entity, "WHERE id = ?", [id]), None)

    def facts(
        self, entity: str, as_of: datetime, where: Sequence[Pred] = (), client_ids: Sequence[str] | None = None
    ) -> list[Entity]:
        _ingest.check_entity(entity)
        conds, params = _existing_at(entity, as_of, client_ids)
        conds += [self._pred(entity, p, f"p{k}", params) for k, p in enumerate(where)]
        # Every client's facts in client order: SQLite would walk the (client_id, ...) index to skip the sort,
        # with a row lookup per fact; a plain scan and a sort of the rows that pass is several times faster
        # (a plan's invoices with money outstanding at 100k clients: 0.83 s -> 0.23 s).
        hint = "NOT INDEXED " if client_ids is None and all(p.field != "id" for p in where) else ""
        return self._models(entity, f"{hint}WHERE {' AND '.join(conds)} ORDER BY client_id, id", params)

    def iter(self, entity: str) -> Iterator[Entity]:
        _ingest.check_entity(entity)
        return self._rows(entity, "ORDER BY id")

    def count(self, entity: str) -> int:
        _ingest.check_entity(entity)
        return int(self.conn.execute(f"SELECT count(*) FROM {entity}").fetchone()[0])

    def clients(self, as_of: datetime, ids: Sequence[str] | None = None) -> list[Client]:
        tail = "WHERE (created_at IS NULL OR created_at <= ?)"
        params: list[Any] = [to_utc_text(as_of)]
        if ids is not None:
            tail += " AND id IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(ids)))
        return self._models("clients", tail + " ORDER BY id", params)

    def managers(self) -> list[Manager]:
        return self._models("managers", "ORDER BY id")

    def data_version(self) -> int:
        """Changes when another connection (another process, another thread's) commits: a cheap "has
        anything changed behind my back" for caches such as a reactive session's managers."""
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def manager_loads(self, as_of: datetime) -> dict[str, int]:
        return dict(
            self.conn.execute(
                # every client is read: a plain scan beats the manager_id index and a row lookup per client
                "SELECT manager_id, count(*) FROM clients NOT INDEXED WHERE status != 'archived' "
                "AND (created_at IS NULL OR created_at <= ?) GROUP BY manager_id",
                [to_utc_text(as_of)],
            ).fetchall()
        )

    def moves_in_flight(self, as_of: datetime) -> dict[str, tuple[str, str]]:
        # one join instead of a ledger entry and a client object per move: 29,000 committed releases at
        # 100k took 0.9 s through ledger() and clients()
        out: dict[str, tuple[str, str]] = {}
        # a move the data has shown carried out since its commit is over, and so is every move before it
        # (`ledger.carried_out`)
        changes = ("m.seq IS NOT NULL AND m.seq >= a.seq", "LEFT JOIN retainer_manager_changes m ON "
                   "m.client_id = a.client_id AND m.manager_id = json_extract(a.payload, '$.to_manager_id')"
                   ) if self._changes else ("0", "")  # fmt: skip
        rows = self.conn.execute(
            "SELECT a.client_id, c.manager_id, json_extract(a.payload, '$.to_manager_id'), "
            f"json_extract(a.payload, '$.from_manager_id'), json_extract(a.outcome, '$.cancelled'), {changes[0]} "
            f"FROM retainer_actions a JOIN clients c ON c.id = a.client_id {changes[1]} "
            "WHERE a.type = 'reassign' AND a.status IN ('pending', 'failed', 'done') AND a.as_of <= ? "
            "AND c.status != 'archived' AND (c.created_at IS NULL OR c.created_at <= ?) ORDER BY a.seq",
            [to_utc_text(as_of)] * 2,
        )
        for cid, manager, to, frm, cancelled, done in rows:  # as ledger.unapplied_moves: chained, in commit order
            if cancelled:
                continue
            if done:
                out.pop(cid, None)
            elif to and (frm == manager or (cid in out and frm == out[cid][1])):
                out[cid] = (manager, to)
        return {cid: move for cid, move in out.items() if move[1] != move[0]}

    def fact_steps(self, steps: Sequence[datetime]) -> list[Changes]:
        bounds = [to_utc_text(t) for t in steps]  # fixed-width UTC text compares like the instants
        out: list[Changes] = [{} for _ in bounds[1:]]
        if not out:
            return out
        with no_gc():  # a year of a 100k CRM is over a million rows at once
            self._fact_steps(bounds, out)
        return out

    def _fact_steps(self, bounds: list[str], out: list[Changes]) -> None:
        for entity, fields in TIME_FIELDS.items():
            cid = "id" if entity == "clients" else "client_id"
            for f in fields:  # one scan per column, sorted by SQLite; then a bisect per step, not per row
                rows = self.conn.execute(
                    f"SELECT {f}, {cid} FROM {entity} WHERE {f} > ? AND {f} <= ? ORDER BY {f}", [bounds[0], bounds[-1]]
                ).fetchall()
                if not rows:
                    continue
                times, ids = zip(*rows, strict=True)
                start = 0
                for i, b in enumerate(bounds[1:]):
                    end = bisect_right(times, b, start)
                    if end > start:
                        out[i][(entity, f)] = set(ids[start:end])
                    start = end

    # ------------------------------------------------------------ aggregates

    def aggregate(
        self, specs: Sequence[AggSpec], as_of: datetime, client_ids: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = [{} for _ in specs]
        summarised = self._summarised(specs, as_of)
        by_entity: dict[str, list[int]] = {}
        for i, s in enumerate(specs):
            if i not in summarised:
                by_entity.setdefault(s.entity, []).append(i)
        with no_gc():
            read = [i for i, col in summarised.items() if col]
            if read:
                self._aggregate_latest([specs[i] for i in read], [results[i] for i in read], client_ids)
            for entity, idxs in by_entity.items():
                outs = [results[i] for i in idxs]
                self._aggregate_entity(entity, [specs[i] for i in idxs], outs, as_of, client_ids)
        return results

    def _summarised(self, specs: Sequence[AggSpec], as_of: datetime) -> dict[int, str]:
        """The specs retainer_latest answers as of `as_of` (index -> column): see _LATEST."""
        if not self._summaries:
            return {}
        cols = {
            i: col
            for i, s in enumerate(specs)
            if s.fn == "max" and s.field == s.time_field
            and (col := _LATEST_BY_SPEC.get((s.entity, s.field, s.where))) is not None
        }
        if not cols:
            return {}
        newest = {(e, f): v for e, f, v in self.conn.execute("SELECT entity, field, value FROM retainer_newest")}
        asof = to_utc_text(as_of)

        def after(entity: str, field: str) -> bool:
            v = newest.get((entity, field))
            return v is not None and v > asof

        # "" for a field no row has ever had a value in (no deals at all, say): nothing to read
        return {
            i: "" if newest.get((specs[i].entity, specs[i].field), "") is None else col
            for i, col in cols.items()
            if not any(after(specs[i].entity, f) for f in (specs[i].field or "", EXISTS_FIELD[specs[i].entity]))
        }

    def _aggregate_latest(
        self, specs: list[AggSpec], outs: list[dict[str, Any]], client_ids: Sequence[str] | None
    ) -> None:
        cols = list(dict.fromkeys(_LATEST_BY_SPEC[(s.entity, s.field, s.where)] for s in specs))
        sql = f"SELECT client_id, {', '.join(cols)} FROM retainer_latest"
        params: list[Any] = []
        if client_ids is not None:
            sql += " WHERE client_id IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(client_ids)))
        sql += " ORDER BY client_id"  # the order of the scan's GROUP BY client_id
        rows = self.conn.execute(sql, params).fetchall()
        if not rows:
            return
        ids = [r[0] for r in rows]
        fromiso = datetime.fromisoformat
        for s, out in zip(specs, outs, strict=True):
            j = cols.index(_LATEST_BY_SPEC[(s.entity, s.field, s.where)]) + 1
            since = to_utc_text(s.since) if s.since is not None else ""
            out.update({i: fromiso(v) for i, r in zip(ids, rows, strict=True) if (v := r[j]) is not None and v > since})

    def _expr(self, entity: str, field: str) -> tuple[str, str]:
        virtual = _VIRTUAL_SQL.get(entity, {})
        if field in virtual:
            return virtual[field]
        kind = _KINDS[entity].get(field)
        if kind is None:
            raise StoreError(f"unknown field {entity}.{field}")
        return f'"{field}"', kind

    def _aggregate_entity(
        self,
        entity: str,
        specs: list[AggSpec],
        outs: list[dict[str, Any]],
        as_of: datetime,
        client_ids: Sequence[str] | None,
    ) -> None:
        seek = [
            n for n, s in enumerate(specs)
            if s.fn in ("max", "min") and (entity, s.field) in self._seekable
        ]  # fmt: skip
        if seek and (client_ids is not None or self._dense(entity)):
            self._aggregate_seek(entity, [specs[n] for n in seek], [outs[n] for n in seek], as_of, client_ids)
            rest = [n for n in range(len(specs)) if n not in seek]
            if not rest:
                return
            specs, outs = [specs[n] for n in rest], [outs[n] for n in rest]
        base, params = _existing_at(entity, as_of, client_ids)
        exists = EXISTS_FIELD[entity]
        selects, kinds, filters = [], [], []
        used = {"client_id", exists}
        for n, spec in enumerate(specs):
            cond = " AND ".join(self._spec_conds(entity, n, spec, params)) or "1"
            filters.append(cond)
            if spec.fn == "count":
                selects.append(f"SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)")
                kinds.append("int")
            elif spec.fn == "list":  # values never contain the separator: ids, numbers, ISO instants
                expr, kind = self._expr(entity, spec.field or "id")
                selects.append(f"GROUP_CONCAT(CASE WHEN {cond} THEN {expr} END, char(31))")
                kinds.append("list:" + ("money" if kind == "money" else kind))
                used.update(_columns(entity, expr))
            else:
                expr, kind = self._expr(entity, spec.field or "id")
                selects.append(f"{spec.fn.upper()}(CASE WHEN {cond} THEN {expr} END)")
                kinds.append("money" if kind == "money" else kind)
                used.update(_columns(entity, expr))
            used.update(_columns(entity, cond))
        times = {spec.time_field for spec in specs}
        if len(times) == 1 and None not in times and all(spec.since is not None for spec in specs):
            # every aggregate counts a window: one bound at the earliest start drops the older rows before the
            # aggregates' own conditions are looked at (a year of invoices among three: 0.56 s -> 0.45 s)
            t, _ = self._expr(entity, times.pop())  # type: ignore[arg-type]
            params["since"] = to_utc_text(min(spec.since for spec in specs))  # type: ignore[type-var]
            base.append(f"{t} > :since")
        if "1" not in filters:  # a row no aggregate counts need not be grouped at all
            base.append("(" + " OR ".join(f"({c})" for c in filters) + ")")
        # Reading a whole table through an index that lacks some of the columns used costs one random row
        # lookup per fact: a plain scan (and a sort of the rows that pass) is several times faster.
        covered = any(ix[0] == "client_id" and used <= set(ix) for ix in _INDEXES.get(entity, []))
        hint = "" if covered or client_ids is not None else " NOT INDEXED"
        sql = (f"SELECT client_id, {', '.join(selects)} FROM {entity}{hint} WHERE {' AND '.join(base)} "
               f"GROUP BY client_id")
        rows = self.conn.execute(sql, params).fetchall()
        if not rows:
            return
        ids = [r[0] for r in rows]
        for j, kind in enumerate(kinds):
            if kind.startswith("list:"):
                lf = _converter(kind[5:]) or (lambda x: x)
                for row in rows:
                    if row[j + 1] is not None:
                        outs[j][row[0]] = sorted(lf(x) for x in str(row[j + 1]).split("\x1f"))
                continue
            f = _converter(kind)
            out = outs[j]
            vals = [r[j + 1] for r in rows]
            if specs[j].fn == "count":
                out.update({i: v for i, v in zip(ids, vals, strict=True) if v})
            elif f is None:
                out.update({i: v for i, v in zip(ids, vals, strict=True) if v is not None})
            else:
                out.update({i: f(v) for i, v in zip(ids, vals, strict=True) if v is not None})

    def _spec_conds(self, entity: str, n: int, spec: AggSpec, params: dict[str, Any]) -> list[str]:
        """SQL conditions for the rows aggregate `n` counts: dated at or before :asof (and after its
        window start), and its filters; their parameters go into `params`."""
        conds = []
        if spec.time_field:
            t, _ = self._expr(entity, spec.time_field)
            conds.append(f"{t} IS NOT NULL AND {t} <= :asof")
            if spec.since is not None:
                params[f"s{n}"] = to_utc_text(spec.since)
                conds.append(f"{t} > :s{n}")
        return conds + [self._pred(entity, p, f"p{n}_{k}", params) for k, p in enumerate(spec.where)]

    def _dense(self, entity: str) -> bool:
        """Whether `entity` holds at least SEEK_DENSITY facts per client (rowids as the estimate: two index
        reads). Then a seek per client beats a grouped scan even over every client: at 20 touches a client,
        100k seeks take a third of the time of reading the 2M rows."""
        n = self.conn.execute(f"SELECT max(rowid) FROM {entity}").fetchone()[0] or 0
        c = self.conn.execute("SELECT max(rowid) FROM clients").fetchone()[0] or 0
        return c > 0 and n >= SEEK_DENSITY * c

    def _aggregate_seek(
        self,
        entity: str,
        specs: list[AggSpec],
        outs: list[dict[str, Any]],
        as_of: datetime,
        client_ids: Sequence[str] | None,
    ) -> None:
        """Max/min aggregates of some clients (None: every client), each one walk of a (client_id, field)
        index from the end that stops at the first row that counts: a client with thousands of touches costs
        one seek, not a read of every row (the grouped scan's cost, which a backtest's sweep pays for every
        busy client on every step, and a plan as of a date before the newest fact for every client)."""
        base, params = _existing_at(entity, as_of, None)
        if client_ids is not None:
            params["ids"] = json.dumps(list(client_ids))
        subs, kinds = [], []
        for n, spec in enumerate(specs):
            expr, kind = self._expr(entity, spec.field or "id")
            conds = [*base, f"{expr} IS NOT NULL", *self._spec_conds(entity, n, spec, params)]
            order = "DESC" if spec.fn == "max" else "ASC"
            subs.append(f"(SELECT {expr} FROM {entity} WHERE client_id = j.value AND {' AND '.join(conds)} "
                        f"ORDER BY {expr} {order} LIMIT 1)")  # fmt: skip
            kinds.append("money" if kind == "money" else kind)
        ids = "json_each(:ids)" if client_ids is not None else "(SELECT id AS value FROM clients)"
        sql = f"SELECT j.value, {', '.join(subs)} FROM {ids} AS j ORDER BY j.value"  # as GROUP BY does
        rows = self.conn.execute(sql, params).fetchall()
        for j, (kind, out) in enumerate(zip(kinds, outs, strict=True)):
            f = _converter(kind) or (lambda x: x)
            out.update({r[0]: f(v) for r in rows if (v := r[j + 1]) is not None})

    def _pred(self, entity: str, p: Pred, name: str, params: dict[str, Any]) -> str:
        expr, kind = self._expr(entity, p.field)
        if p.op == "null":
            return f"{expr} IS NULL"
        if p.op == "notnull":
            return f"{expr} IS NOT NULL"
        if p.op in ("in", "not_in"):
            params[name] = json.dumps([_to_db(kind, v) for v in sorted(p.value, key=str)])
            neg = "NOT " if p.op == "not_in" else ""
            return f"({expr} IS NOT NULL AND {expr} {neg}IN (SELECT value FROM json_each(:{name})))"
        params[name] = _to_db(kind, p.value)
        sym = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[p.op]
        return f"{expr} {sym} :{name}"

    # ------------------------------------------------------------ cursors

    def get_cursor(self, name: str) -> str | None:
        row = self.conn.execute("SELECT value FROM retainer_cursors WHERE name = ?", [name]).fetchone()
        return row[0] if row else None

    def set_cursor(self, name: str, value: str) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO retainer_cursors VALUES (?, ?)", [name, value])

    def cursors(self, prefix: str) -> dict[str, str]:
        # a range of the primary key, not LIKE: `_` and `%` in a prefix are plain characters, and the
        # range is one index seek; every name that starts with the prefix sorts below prefix + U+10FFFF
        rows = self.conn.execute("SELECT name, value FROM retainer_cursors WHERE name >= ? AND name < ? ORDER BY name",
                                 [prefix, prefix + "\U0010ffff"])  # fmt: skip
        return dict(rows)

    # ------------------------------------------------------------ ledger

    @contextmanager
    def run_lock(self, owner: str) -> Iterator[None]:
        """An OS file lock beside the database: the kernel drops it when the holder dies (even by
        SIGKILL), so a crashed run never blocks the next one, and nothing has to guess staleness."""
        if self.path == ":memory:":
            if not self._mem_lock.acquire(blocking=False):
                raise RunInProgressError(f"another retainer run is in progress on {self.url}")
            try:
                yield
            finally:
                self._mem_lock.release()
            return
        if self.read_only:
            raise StoreError(f"{self.read_only}: a run commits to its ledger and cannot run on it")
        with suppress(OSError):
            if (links := os.stat(self.path).st_nlink) > 1:  # two runs through two names: each its own lock and WAL
                raise StoreError(
                    f"{self.path} has {links} names (hard links): a run through another of them would take a lock "
                    f"and a write-ahead log of its own, deliver every action again and corrupt the store (SQLite: "
                    f"'multiple links to the same file'). Keep one name: remove the other links, or copy the file"
                )
        lock_path = lock_file(self.path)
        try:  # not through a link: `crm.db-runlock -> victim` left the victim empty
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot take the run lock {lock_path}: {exc.strerror}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"cannot take the run lock {lock_path}: not a regular file")
            if not _try_lock(fd):
                holder = os.pread(fd, 500, 0).decode(errors="replace").strip() or "unknown holder"
                raise RunInProgressError(
                    f"another retainer run is in progress on {self.path} ({holder}); "
                    f"it holds {lock_path}. Wait for it to finish, or stop it, then run again"
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{owner}, pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                _unlock(fd)
        finally:
            os.close(fd)

    def ledger_status(self, keys: Iterable[str]) -> dict[str, Status]:
        if not self.conn.execute("SELECT 1 FROM retainer_actions LIMIT 1").fetchone():
            return {}  # an empty ledger (every plan before the first run) costs nothing
        return dict(
            self.conn.execute(
                "SELECT key, status FROM retainer_actions WHERE key IN (SELECT value FROM json_each(?))",
                [json.dumps(list(keys))],
            ).fetchall()
        )

    def cancellations(self, keys: Iterable[str]) -> dict[str, str]:
        if not self.conn.execute("SELECT 1 FROM retainer_actions LIMIT 1").fetchone():
            return {}
        rows = self.conn.execute(
            "SELECT key, json_extract(outcome, '$.code') FROM retainer_actions WHERE key IN "
            "(SELECT value FROM json_each(?)) AND status = 'done' "
            "AND coalesce(json_extract(outcome, '$.cancelled'), '') NOT IN ('', 0, '[]', '{}')",  # falsy: not cancelled
            [json.dumps(list(keys))],
        ).fetchall()
        return {k: code if isinstance(code, str) else "" for k, code in rows}

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees one state of the store: a plan's. Read one query at a time, a CRM sync that
        committed between them (a call logged and its reminder closed, in one transaction) gave a plan the old
        last activity and the new tasks, and it released clients whose managers had just called them. A read
        transaction in WAL mode blocks no writer. Inside one already (a caller's), it is that one."""
        conn = self.conn
        if conn.in_transaction or self.path == ":memory:":  # in memory: one connection, which every thread shares
            yield
            return
        conn.execute("BEGIN")  # deferred: the snapshot is taken at the first read
        try:
            yield
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")  # it read only; nothing to undo

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front, so a check (duplicate keys, existing ids) and
        the writes that follow it see the same database."""
        if self.read_only:
            raise StoreError(f"{self.read_only}: cannot write")
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            busy = getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            raise (StoreBusyError if busy else StoreError)(f"{self.path}: cannot write: {exc}") from exc
        try:
            yield conn
        except sqlite3.OperationalError as exc:  # a full disk, an I/O error: say so, not a traceback
            self._rollback(conn)
            raise StoreError(f"{self.path}: cannot write: {exc}; nothing of this write was kept") from exc
        except BaseException:
            self._rollback(conn)
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback(conn)
            raise StoreError(f"{self.path}: commit failed: {exc}; nothing of this write was kept") from exc

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        """SQLite has already rolled back after some errors (SQLITE_FULL): a second ROLLBACK would raise
        "no transaction is active" over the error that says what happened."""
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def commit_run(self, run: RunRecord, actions: Sequence[Action], cursors: Mapping[str, str]) -> list[Action]:
        at = to_utc_text(run.started_at)
        with self._transaction() as conn:
            there = {
                r[0]
                for r in conn.execute(
                    "SELECT key FROM retainer_actions WHERE key IN (SELECT value FROM json_each(?))",
                    [json.dumps([a.key for a in actions])],
                )
            }
            fresh: list[Action] = []
            for a in actions:
                if a.key not in there:
                    there.add(a.key)
                    fresh.append(a)
            conn.execute(
                "INSERT INTO retainer_runs (id, as_of, rules_digest, started_at, status, counts, kind) "
                "VALUES (?,?,?,?,?,?,?)",
                [run.id, run.as_of.isoformat(), run.rules_digest, at, run.status, json.dumps(dict(run.counts)),
                 run.kind],
            )
            conn.executemany(
                f"INSERT INTO retainer_actions ({_LEDGER_COLS}) VALUES ({', '.join('?' * 17)})",
                (
                    (a.id, a.key, run.id, a.type, a.rule, a.client_id or "", a.category, to_utc_text(a.as_of),
                     "pending", 0, None, at, at, None, None, action_payload(a), None)
                    for a in fresh
                ),
            )
            conn.executemany("INSERT OR REPLACE INTO retainer_cursors VALUES (?, ?)", list(cursors.items()))
        return fresh

    def finish_run(
        self, run_id: str, finished_at: datetime, counts: Mapping[str, int], status: str = "finished"
    ) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE retainer_runs SET status = ?, finished_at = ?, counts = ? WHERE id = ?",
                [status, to_utc_text(finished_at), json.dumps(dict(counts), sort_keys=True), run_id],
            )

    def runs(self, limit: int | None = None, kind: str | None = None) -> list[RunRecord]:
        kind_col = self._col("retainer_runs", "kind", "NULL")
        rows = self.conn.execute(
            f"SELECT id, as_of, rules_digest, started_at, status, finished_at, counts, COALESCE({kind_col}, 'run') "
            f"FROM retainer_runs WHERE ? IS NULL OR COALESCE({kind_col}, 'run') = ? ORDER BY seq DESC LIMIT ?",
            [kind, kind, -1 if limit is None else limit],
        ).fetchall()
        return [
            RunRecord(
                id=r[0], as_of=datetime.fromisoformat(r[1]), rules_digest=r[2],
                started_at=datetime.fromisoformat(r[3]), status=r[4], finished_at=_instant(r[5]),
                counts=json.loads(r[6]), kind=r[7],
            )
            for r in rows
        ]

    def ledger(
        self,
        *,
        status: Sequence[Status] | None = None,
        ids: Sequence[str] | None = None,
        client_ids: Sequence[str] | None = None,
        rule: str | None = None,
        types: Sequence[str] | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[LedgerEntry]:
        check_query(status, since, ids=ids, client_ids=client_ids, types=types)
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("as_of >= ?")
            params.append(to_utc_text(since))
        for col, values in (("status", status), ("id", ids), ("client_id", client_ids), ("type", types)):
            if values is not None:
                where.append(f"{col} IN (SELECT value FROM json_each(?))")
                params.append(json.dumps(list(values)))
        if rule is not None:
            where.append("rule = ?")
            params.append(rule)
        cols = _LEDGER_COLS.replace("claimed_by", self._col("retainer_actions", "claimed_by", "NULL"))
        sql = f"SELECT {cols}, seq FROM retainer_actions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq LIMIT ?"
        params.append(-1 if limit is None else limit)
        return [_entry(r) for r in self.conn.execute(sql, params)]

    def _known(self, conn: sqlite3.Connection, ids: Sequence[str]) -> None:
        found = {
            r[0]
            for r in conn.execute(
                "SELECT id FROM retainer_actions WHERE id IN (SELECT value FROM json_each(?))", [json.dumps(list(ids))]
            )
        }
        missing = [i for i in ids if i not in found]
        if missing:
            raise StoreError(f"no action with id {missing[0]!r} in the ledger of {self.url}")

    def begin_attempts(
        self, ids: Sequence[str], at: datetime, seen: Mapping[str, int] | None = None,
        claims: Mapping[str, str | None] | None = None,
    ) -> list[str]:  # fmt: skip
        t, holder = to_utc_text(at), claim_token()
        counted = []
        with self._transaction() as conn:
            for i in ids:  # by id, one row each: the unique index, never a scan of the ledger
                cur = conn.execute(
                    "UPDATE retainer_actions SET attempts = attempts + 1, updated_at = ?, claimed_by = ? "
                    "WHERE id = ? AND status IN ('pending', 'failed') AND (? IS NULL OR attempts = ?) "
                    "AND (? = 0 OR claimed_by IS ?)",
                    [t, holder, i, *[seen.get(i) if seen is not None else None] * 2,
                     int(claims is not None and i in claims), claims.get(i) if claims is not None else None],
                )
                if cur.rowcount:
                    counted.append(i)
        return counted

    def finish_attempts(
        self, results: Sequence[tuple[str, Status, str | None, int]], at: datetime,
        claims: Mapping[str, str | None] | None = None,
    ) -> None:  # fmt: skip
        t = to_utc_text(at)
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE retainer_actions SET status = ?, last_error = ?, attempts = ?, updated_at = ?, "
                "claimed_by = NULL WHERE id = ? AND status IN ('pending', 'failed') AND (? = 0 OR claimed_by IS ? "
                "OR (? IS NOT NULL AND substr(claimed_by, 1, length(?) + 1) = ? || '@'))",
                [(st, error, n, t, i, int(claims is not None and i in claims), *[(claims or {}).get(i)] * 4)
                 for i, st, error, n in results],
            )  # fmt: skip

    def requeue(self, ids: Sequence[str], at: datetime, claims: Mapping[str, str | None] | None = None) -> list[str]:
        with self._transaction() as conn:
            self._known(conn, ids)
            moved = [
                r[0]
                for r in conn.execute(
                    "SELECT id, claimed_by FROM retainer_actions WHERE status IN ('failed', 'dead') "
                    "AND id IN (SELECT value FROM json_each(?)) ORDER BY seq",
                    [json.dumps(list(ids))],
                )
                if claims is None or r[0] not in claims or claims[r[0]] == r[1]
            ]
            conn.execute(
                "UPDATE retainer_actions SET status = 'pending', attempts = 0, updated_at = ?, claimed_by = NULL "
                "WHERE id IN (SELECT value FROM json_each(?))",
                [to_utc_text(at), json.dumps(moved)],
            )
        return moved

    def set_outcome(self, id: str, outcome: Mapping[str, Any], at: datetime) -> LedgerEntry:
        outcome = check_outcome(outcome)
        t = to_utc_text(at)
        with self._transaction() as conn:
            self._known(conn, [id])
            (before,) = conn.execute("SELECT outcome FROM retainer_actions WHERE id = ?", [id]).fetchone()
            merged = merge_outcome(json.loads(before) if before else None, outcome)
            conn.execute(
                "UPDATE retainer_actions SET outcome = ?, outcome_at = ?, updated_at = ?, "
                "status = CASE status WHEN 'dead' THEN 'dead' ELSE 'done' END WHERE id = ?",  # dead never took effect
                [_json_text(merged), t, t, id],
            )
        return self.ledger(ids=[id])[0]

    def checkpoint_in_background(self, every: float = 0.5) -> bool:
        """Copy the write-ahead log into the database file from a thread (and connection) of its own,
        every `every` seconds, instead of inside whichever commit takes the log past 1,000 pages: that
        commit pays 10 to 15 ms, about one small write in a hundred. For a process that writes one fact
        at a time and must answer at once (`reactive.Session` turns it on). `close()` stops it. Whether
        this call started it."""
        if self.path == ":memory:" or self._checkpointer is not None:
            return False
        stop, path = threading.Event(), self.path

        def run() -> None:
            conn = sqlite3.connect(path, check_same_thread=False)
            try:
                while not stop.wait(every):
                    # PASSIVE never waits for, nor blocks, the writer or a reader; busy: the next round catches up
                    with suppress(sqlite3.Error):
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                conn.close()

        thread = threading.Thread(target=run, name=f"retainer checkpoints {path}", daemon=True)
        self.conn.execute("PRAGMA wal_autocheckpoint = 0")
        thread.start()
        self._checkpointer = (stop, thread)
        return True

    def stop_checkpoints(self) -> None:
        """Back to checkpoints inside commits (SQLite's default)."""
        if self._checkpointer is None:
            return
        stop, thread = self._checkpointer
        self._checkpointer = None
        stop.set()
        thread.join()
        self.conn.execute("PRAGMA wal_autocheckpoint = 1000")

    def close(self) -> None:
        """Close every thread's connection; the store is unusable after (StoreError), as a host that closes it
        at shutdown while a worker still plans should be told in a way it can map."""
        self.stop_checkpoints()
        self._close_connections()
        self._closed = True

    def _close_connections(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
