"""The in-memory store: the readable reference every other backend must agree with."""

from __future__ import annotations

import dataclasses
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

from ..actions import Action
from ..errors import RunInProgressError, StoreError
from ..ledger import (
    ACTIVE,
    LedgerEntry,
    RunRecord,
    Status,
    action_payload,
    check_outcome,
    check_query,
    claim_is,
    claim_token,
    merge_outcome,
    moves_in_flight,
)
from ..model import Client, Entity, Manager
from . import _ingest
from .base import COMPARE, EXISTS_FIELD, TIME_FIELDS, VIRTUAL_FIELDS, AggSpec, Changes, Pred, virtual_value

_ENTRY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(LedgerEntry) if f.default is not dataclasses.MISSING}


def _entry(values: Mapping[str, Any], **changes: Any) -> LedgerEntry:
    """A ledger entry from values this store made or copied, without the frozen dataclass's __init__
    (a third of the time: a year's backtest makes a third of a million entries and updates each)."""
    e = object.__new__(LedgerEntry)
    e.__dict__.update(values, **changes)
    return e


class MemoryStore:
    """Facts in dicts keyed by id. Aggregates are plain Python loops: slow, obviously right."""

    def __init__(self, url: str = "memory://", *, timezone: tzinfo = UTC) -> None:
        self.url = url
        self.tz = timezone
        self.read_only: str | None = None  # as a SQLite store's: host code reads it on either
        self._facts: dict[str, dict[str, Entity]] = {e: {} for e in _ingest.ENTITIES}
        self._cursors: dict[str, str] = {}
        self._ledger: dict[str, LedgerEntry] = {}  # by id, in commit order
        # ids still pending or failed, with their commit position: a dispatcher asks for those on every
        # run, and a year's backtest keeps a third of a million settled actions in this ledger
        self._active: dict[str, int] = {}
        self._seq: dict[str, int] = {}  # id -> commit position
        # client -> its ids in commit order: a partial plan's policies and ledger features ask for a few
        # hundred clients' actions every step of a backtest, out of tens of thousands
        self._by_client: dict[str | None, list[str]] = {}
        # ids and as_of in commit order, and whether as_of never went back (a backtest's or a nightly
        # run's ledger): then "planned since" is a bisection, not a read of the whole ledger
        self._order: list[str] = []
        self._as_ofs: list[datetime] = []
        self._as_of_sorted = True
        self._keys: dict[str, str] = {}  # key -> id
        # client -> {manager: the ledger's length when a write last gave the client that manager}
        self._manager_changes: dict[str, dict[str, int]] = {}
        self._runs: dict[str, RunRecord] = {}
        self._lock = threading.Lock()
        self._holder: str | None = None

    # ------------------------------------------------------------ facts

    def add(self, **rows: Iterable[Entity | Mapping[str, Any]]) -> dict[str, int]:
        return self.load(_ingest.batches(rows, self.tz), replace=False)

    def upsert(self, **rows: Iterable[Entity | Mapping[str, Any]]) -> dict[str, int]:
        return self.load(_ingest.batches(rows, self.tz), replace=True)

    def load(self, batches: Iterable[_ingest.Batch], *, replace: bool = False) -> dict[str, int]:
        """Write validated batches atomically: all of them, or nothing when one is bad."""
        staged: list[_ingest.Batch] = []
        known = {e: _ingest.Known(self._facts[e]) for e in ("managers", "clients")}
        seen: dict[str, set[str]] = {}
        pending: _ingest.Pending = []
        for b in batches:
            stored = _ingest.Known(self._facts[b.entity])
            _ingest.check_batch(b, seen.setdefault(b.entity, set()), stored, replace=replace)
            _ingest.check_references(b, known, pending)
            if b.entity in known:
                known[b.entity].update(m.id for m in b.models)
            staged.append(b)
        _ingest.check_pending(pending, known)
        counts: dict[str, int] = {}
        for b in staged:  # all checked: now write
            table = self._facts[b.entity]
            clients = b.entity == "clients" and bool(self._ledger)
            for m in b.models:
                if clients and (old := table.get(m.id)) is not None and old.manager_id != m.manager_id:  # type: ignore[attr-defined]
                    self._manager_changes.setdefault(m.id, {})[m.manager_id] = len(self._ledger)  # type: ignore[attr-defined]
                table[m.id] = m
            counts[b.entity] = counts.get(b.entity, 0) + len(b.models)
        return counts

    def get(self, entity: str, id: str) -> Entity | None:
        _ingest.check_entity(entity)
        return self._facts[entity].get(id)

    def iter(self, entity: str) -> Iterator[Entity]:
        _ingest.check_entity(entity)
        table = self._facts[entity]
        return (table[k] for k in sorted(table))

    def count(self, entity: str) -> int:
        _ingest.check_entity(entity)
        return len(self._facts[entity])

    def clients(self, as_of: datetime, ids: Sequence[str] | None = None) -> list[Client]:
        table: dict[str, Any] = self._facts["clients"]
        keys = sorted(table) if ids is None else sorted(k for k in set(ids) if k in table)
        return [c for k in keys if ((c := table[k]).created_at is None or c.created_at <= as_of)]

    def managers(self) -> list[Manager]:
        return list(self.iter("managers"))  # type: ignore[arg-type]

    def manager_loads(self, as_of: datetime) -> dict[str, int]:
        loads: dict[str, int] = {}
        for c in self.clients(as_of):
            if c.status != "archived":
                loads[c.manager_id] = loads.get(c.manager_id, 0) + 1
        return loads

    def moves_in_flight(self, as_of: datetime) -> dict[str, tuple[str, str]]:
        return moves_in_flight(self, as_of)

    def manager_changes(self, client_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        return {c: dict(self._manager_changes[c]) for c in client_ids if c in self._manager_changes}

    # ------------------------------------------------------------ aggregates

    def aggregate(
        self, specs: Sequence[AggSpec], as_of: datetime, client_ids: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        wanted = set(client_ids) if client_ids is not None else None
        return [self._aggregate(s, as_of, wanted) for s in specs]

    def _rows_at(
        self, entity: str, as_of: datetime, where: Sequence[Pred], wanted: set[str] | None
    ) -> Iterator[tuple[Any, Callable[[Any, str], Any]]]:
        exists = EXISTS_FIELD[entity]
        virtual = VIRTUAL_FIELDS.get(entity, {})

        def value(row: Any, name: str) -> Any:
            if name in virtual:
                return virtual_value(entity, name, row, as_of)
            return getattr(row, name)

        def matches(row: Any, p: Pred) -> bool:
            v = value(row, p.field)
            if p.op == "null":
                return v is None
            if p.op == "notnull":
                return v is not None
            return v is not None and COMPARE[p.op](v, p.value)

        table = self._facts[entity]
        ids = next((p.value for p in where if p.field == "id" and p.op == "in"), None)
        # rows by id are looked up, not scanned for: a dispatcher checks an event's dunning step this way
        rows = table.values() if ids is None else [table[i] for i in sorted(set(ids), key=str) if i in table]
        for row in rows:
            if wanted is not None and row.client_id not in wanted:  # type: ignore[attr-defined]
                continue
            born = getattr(row, exists)
            if born is not None and born > as_of:
                continue
            if all(matches(row, p) for p in where):
                yield row, value

    def facts(
        self, entity: str, as_of: datetime, where: Sequence[Pred] = (), client_ids: Sequence[str] | None = None
    ) -> list[Entity]:
        _ingest.check_entity(entity)
        wanted = set(client_ids) if client_ids is not None else None
        rows = [r for r, _ in self._rows_at(entity, as_of, where, wanted)]
        return sorted(rows, key=lambda r: (r.client_id, r.id))  # type: ignore[attr-defined]

    def _aggregate(self, spec: AggSpec, as_of: datetime, wanted: set[str] | None) -> dict[str, Any]:
        groups: dict[str, list[Any]] = {}
        for row, value in self._rows_at(spec.entity, as_of, spec.where, wanted):
            if spec.time_field is not None:
                t = getattr(row, spec.time_field)
                if t is None or t > as_of or (spec.since is not None and t <= spec.since):
                    continue
            groups.setdefault(row.client_id, []).append(None if spec.field is None else value(row, spec.field))

        out: dict[str, Any] = {}
        for cid, vals in groups.items():
            if spec.fn == "count":
                out[cid] = len(vals)
                continue
            present = [v for v in vals if v is not None]
            if not present:
                continue
            if spec.fn == "list":
                out[cid] = sorted(present)
            elif spec.fn == "sum":
                out[cid] = sum(present, Decimal(0) if isinstance(present[0], Decimal) else 0)
            else:
                out[cid] = max(present) if spec.fn == "max" else min(present)
        return out

    def fact_steps(self, steps: Sequence[datetime]) -> list[Changes]:
        out: list[Changes] = [{} for _ in steps[1:]]
        if not out:
            return out
        lo, hi = steps[0], steps[-1]
        for entity, fields in TIME_FIELDS.items():
            for row in self._facts[entity].values():
                cid = row.id if entity == "clients" else row.client_id  # type: ignore[attr-defined]
                for f in fields:
                    t = getattr(row, f)
                    if t is not None and lo < t <= hi:
                        out[bisect_left(steps, t, 1) - 1].setdefault((entity, f), set()).add(cid)
        return out

    # ------------------------------------------------------------ cursors

    def get_cursor(self, name: str) -> str | None:
        return self._cursors.get(name)

    def set_cursor(self, name: str, value: str) -> None:
        self._cursors[name] = value

    def cursors(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in sorted(self._cursors.items()) if k.startswith(prefix)}

    # ------------------------------------------------------------ ledger

    @contextmanager
    def run_lock(self, owner: str) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            raise RunInProgressError(
                f"another retainer run is in progress on {self.url} ({self._holder}); try again later"
            )
        self._holder = owner
        try:
            yield
        finally:
            self._holder = None
            self._lock.release()

    def ledger_status(self, keys: Iterable[str]) -> dict[str, Status]:
        return {k: self._ledger[self._keys[k]].status for k in keys if k in self._keys}

    def cancellations(self, keys: Iterable[str]) -> dict[str, str]:
        out = {}
        for k in keys:
            e = self._ledger[self._keys[k]] if k in self._keys else None
            if e is not None and e.status == "done" and e.cancelled is not None:
                code = (e.outcome or {}).get("code")
                out[k] = code if isinstance(code, str) else ""
        return out

    def commit_run(
        self, run: RunRecord, actions: Sequence[Action], cursors: Mapping[str, str], *, delivered: bool = False
    ) -> list[Action]:
        """`delivered`: the actions are recorded as delivered at the run's start (one attempt, `done`), as a
        dispatcher that takes everything at once would leave them: a backtest's ledger, where updating each
        entry again after the commit cost a third of the commit."""
        staged: dict[str, LedgerEntry] = {}
        committed: list[Action] = []
        status, attempts = ("done", 1) if delivered else ("pending", 0)
        for a in actions:
            if a.key in self._keys or a.key in staged:
                continue
            committed.append(a)
            staged[a.key] = _entry(
                {"id": a.id, "key": a.key, "run_id": run.id, "type": a.type, "rule": a.rule, "client_id": a.client_id,
                 "category": a.category, "as_of": a.as_of, "status": status, "attempts": attempts,
                 "created_at": run.started_at, "updated_at": run.started_at, "payload": action_payload(a),
                 **_ENTRY_DEFAULTS, "seq": len(self._ledger) + len(staged) + 1}
            )  # fmt: skip
        if run.id in self._runs:
            raise StoreError(f"run {run.id} is already recorded")
        self._runs[run.id] = run
        for k, e in staged.items():
            self._seq[e.id] = e.seq  # an index of the entries' own seq, for sorting ids fast
            if not delivered:
                self._active[e.id] = self._seq[e.id]
            self._ledger[e.id] = e
            self._keys[k] = e.id
            self._by_client.setdefault(e.client_id, []).append(e.id)
            if self._as_ofs and e.as_of < self._as_ofs[-1]:
                self._as_of_sorted = False
            self._order.append(e.id)
            self._as_ofs.append(e.as_of)
        self._cursors.update(cursors)
        return committed

    def finish_run(
        self, run_id: str, finished_at: datetime, counts: Mapping[str, int], status: str = "finished"
    ) -> None:
        r = self._runs[run_id]
        self._runs[run_id] = dataclasses.replace(r, status=status, finished_at=finished_at, counts=dict(counts))

    def runs(self, limit: int | None = None, kind: str | None = None) -> list[RunRecord]:
        out = [r for r in reversed(self._runs.values()) if kind is None or r.kind == kind]
        return out if limit is None else out[:limit]

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
        idset = set(ids) if ids is not None else None
        cset = set(client_ids) if client_ids is not None else None
        rows: Iterable[LedgerEntry]
        if status is not None and set(status) <= set(ACTIVE):
            rows = [self._ledger[i] for i in sorted(self._active, key=self._active.__getitem__)]
        elif idset is not None or (cset is not None and len(cset) < len(self._ledger)):
            # a few ids or clients: look them up rather than read the whole ledger
            picked = idset if idset is not None else [i for c in cset or () for i in self._by_client.get(c, ())]
            rows = [self._ledger[i] for i in sorted((i for i in picked if i in self._seq), key=self._seq.__getitem__)]
        elif since is not None and self._as_of_sorted:
            rows = [self._ledger[i] for i in self._order[bisect_left(self._as_ofs, since) :]]
        else:
            rows = self._ledger.values()
        out = []
        for e in rows:
            if status is not None and e.status not in status:
                continue
            if (idset is not None and e.id not in idset) or (cset is not None and e.client_id not in cset):
                continue
            if (rule is not None and e.rule != rule) or (types is not None and e.type not in types):
                continue
            if since is not None and e.as_of < since:
                continue
            out.append(e)
            if limit is not None and len(out) >= limit:
                break
        return out

    def _update(self, id: str, **changes: Any) -> LedgerEntry:
        e = self._ledger.get(id)
        if e is None:
            raise StoreError(f"no action with id {id!r} in the ledger of {self.url}")
        new = _entry(e.__dict__, **changes)  # keeps its parsed action (a cached property)
        if new.status != e.status:
            if new.status in ACTIVE:
                self._active.setdefault(id, self._seq[id])  # back from dead
            else:
                self._active.pop(id, None)
        e = new
        self._ledger[id] = e
        return e

    def begin_attempts(
        self, ids: Sequence[str], at: datetime, seen: Mapping[str, int] | None = None,
        claims: Mapping[str, str | None] | None = None,
    ) -> list[str]:  # fmt: skip
        counted, holder = [], claim_token()
        for i in ids:
            e = self._ledger[i]
            if (e.status in ("pending", "failed") and (seen is None or seen.get(i) in (None, e.attempts))
                    and (claims is None or i not in claims or claims[i] == e.claimed_by)):  # fmt: skip
                self._update(i, attempts=e.attempts + 1, updated_at=at, claimed_by=holder)
                counted.append(i)
        return counted

    def finish_attempts(
        self, results: Sequence[tuple[str, Status, str | None, int]], at: datetime,
        claims: Mapping[str, str | None] | None = None,
    ) -> None:  # fmt: skip
        for i, st, error, n in results:
            e = self._ledger[i]
            if e.status in ("pending", "failed") and (claims is None or i not in claims
                                                      or claim_is(e.claimed_by, claims[i])):  # fmt: skip
                self._update(i, status=st, last_error=error, attempts=n, updated_at=at, claimed_by=None)

    def requeue(self, ids: Sequence[str], at: datetime, claims: Mapping[str, str | None] | None = None) -> list[str]:
        for i in ids:
            self._update(i)  # unknown ids fail before anything moves
        moved = []
        for i in ids:
            e = self._ledger[i]
            if e.status in ("failed", "dead") and (claims is None or i not in claims or claims[i] == e.claimed_by):
                self._update(i, status="pending", attempts=0, updated_at=at, claimed_by=None)
                moved.append(i)
        return moved

    def set_outcome(self, id: str, outcome: Mapping[str, Any], at: datetime) -> LedgerEntry:
        outcome = check_outcome(outcome)
        before = self._update(id).outcome or {}  # unknown id: StoreError
        e = self._update(id, outcome=merge_outcome(before, outcome), outcome_at=at, updated_at=at)
        if e.status not in ("done", "dead"):  # a dead action never took effect, whatever the host says of it
            e = self._update(id, status="done")
        return e

    def close(self) -> None:
        pass

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
