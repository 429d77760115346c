"""The Store contract: facts in, per-client aggregates out; and the ledger of what runs committed.

Aggregates are requested as `AggSpec`s, a tiny declarative language every backend implements:
the memory store in Python (the reference), SQL stores in SQL. The evaluator never loops over raw
facts itself, so a SQL backend does the heavy lifting where the data lives.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args, runtime_checkable

from ..model import ENTITIES, Client, Entity, Manager
from ..timeutil import to_utc_text

if TYPE_CHECKING:
    from ..actions import Action
    from ..ledger import LedgerEntry, RunRecord, Status
    from ._ingest import Batch

__all__ = [
    "COMPARE",
    "EXISTS_FIELD",
    "TIME_FIELDS",
    "VIRTUAL_FIELDS",
    "VIRTUAL_SOURCES",
    "AggSpec",
    "Changes",
    "Pred",
    "Store",
    "virtual_value",
]  # fmt: skip

#: Comparison operators shared by store predicates and rule conditions (one definition).
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
}

Op = Literal["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "null", "notnull"]


@dataclass(frozen=True)
class Pred:
    """`field op value` on one fact; `field` may be a virtual field (see VIRTUAL_FIELDS)."""

    field: str
    op: Op
    value: Any = None


@dataclass(frozen=True)
class AggSpec:
    """One per-client aggregate: `fn(field)` over `entity` rows that exist at as_of and match `where`.

    A row exists at as_of when its `EXISTS_FIELD` is empty or not after as_of (facts from the future
    are invisible). With `time_field`, only rows whose `time_field` is set, `<= as_of` and (with
    `since`) `> since` count: that is how windows such as `within: 30d` reach the store.
    """

    entity: str
    fn: Literal["count", "sum", "max", "min", "list"]  # list: every value, sorted
    field: str | None = None
    where: tuple[Pred, ...] = ()
    time_field: str | None = None
    since: datetime | None = None


#: The field that dates a fact; facts dated after as_of are ignored everywhere.
EXISTS_FIELD: dict[str, str] = {
    "touches": "at",
    "tasks": "created_at",
    "deals": "created_at",
    "invoices": "issued_at",
    "offers": "made_at",
    "contracts": "starts_at",
}


def _is_instant(annotation: Any) -> bool:
    todo = [annotation]
    while todo:
        t = todo.pop()
        if t is datetime:
            return True
        todo.extend(get_args(t))
    return False


#: Every date/time field of the clients and the facts: `Store.fact_steps` reports their values.
TIME_FIELDS: dict[str, tuple[str, ...]] = {
    entity: tuple(f for f, info in model.model_fields.items() if _is_instant(info.annotation))
    for entity, model in ENTITIES.items()
    if entity != "managers"
}

#: Fields whose value depends on as_of (the state of a fact at that instant), per entity.
VIRTUAL_FIELDS: dict[str, dict[str, str]] = {
    "touches": {
        "medium": "the channel in lower case, or the touch kind when no channel is given (what channel caps count)",
    },
    "tasks": {
        "is_open": "open at as_of: not cancelled and not yet done",
        "is_done": "completed on or before as_of (not cancelled)",
    },
    "deals": {
        "is_open": "open at as_of: not closed yet",
        "is_won": "won on or before as_of",
        "is_lost": "lost on or before as_of",
    },
    "invoices": {
        "paid_total": "amount paid on or before as_of",
        "outstanding": "amount - paid_total",
    },
    "contracts": {
        "span": "`starts_at|ends_at` as UTC text: its max is the contract that started last, with its own end",
    },
}


#: Per step of a sweep: (entity, field) -> the clients with a value of that field in the step (`fact_steps`).
Changes = dict[tuple[str, str], set[str]]


#: The time field each virtual field reads besides the row's static fields (None: only static ones).
#: The backtest's sweep (`sweep.Quiet`) relies on it: a fact on that field can change the virtual value.
VIRTUAL_SOURCES: dict[tuple[str, str], str | None] = {
    ("touches", "medium"): None,
    ("tasks", "is_open"): "done_at", ("tasks", "is_done"): "done_at",
    ("deals", "is_open"): "closed_at", ("deals", "is_won"): "closed_at", ("deals", "is_lost"): "closed_at",
    ("invoices", "paid_total"): "paid_at", ("invoices", "outstanding"): "paid_at",
    ("contracts", "span"): None,
}  # fmt: skip


def virtual_value(entity: str, name: str, row: Any, as_of: datetime) -> Any:
    """The reference definition of every virtual field; SQL stores mirror it exactly."""
    if entity == "touches" and name == "medium":
        return (row.channel if row.channel is not None else row.kind).lower()
    if entity == "tasks":
        done = row.done_at is not None and row.done_at <= as_of
        if name == "is_done":  # a cancelled task with a done_at (some CRMs stamp it) was not completed
            return done and row.status != "cancelled"
        if name == "is_open":
            if row.status == "cancelled" or done:
                return False
            return row.status == "open" if row.done_at is None else True
    if entity == "deals":
        closed = row.closed_at is not None and row.closed_at <= as_of
        if name == "is_open":
            return row.status == "open" if row.closed_at is None else not closed
        if name in ("is_won", "is_lost"):  # a deal closed after as_of was still open then
            return row.status == ("won" if name == "is_won" else "lost") and (row.closed_at is None or closed)
    if entity == "invoices":
        paid = Decimal(0)
        if row.paid_at is not None and row.paid_at <= as_of:
            paid = row.paid_amount if row.paid_amount is not None else row.amount
        if name == "paid_total":
            return paid
        if name == "outstanding":
            return max(row.amount - paid, Decimal(0))
    if entity == "contracts" and name == "span":
        return "|".join(to_utc_text(t) if t is not None else "" for t in (row.starts_at, row.ends_at))
    raise KeyError(f"{entity}.{name}")


class ManagerLoads:
    """Non-archived clients per manager as of any instant, from the clients' creation times: for callers
    that ask again and again while the clients stay the same (a reactive session's events, a backtest's
    steps). Each answer costs one bisection per manager, or a copy once every client exists."""

    def __init__(self, clients: Iterable[Client]) -> None:
        undated: dict[str, int] = {}
        dated: dict[str, list[datetime]] = {}
        for c in clients:
            if c.status == "archived":
                continue
            if c.created_at is None:
                undated[c.manager_id] = undated.get(c.manager_id, 0) + 1
            else:
                dated.setdefault(c.manager_id, []).append(c.created_at)
        self._by = {mid: (sorted(dated.get(mid, [])), undated.get(mid, 0)) for mid in set(undated) | set(dated)}
        self._newest = max((t[-1] for t, _ in self._by.values() if t), default=None)
        self._all = {mid: len(t) + n for mid, (t, n) in self._by.items() if len(t) + n}

    def at(self, as_of: datetime) -> dict[str, int]:
        if self._newest is None or as_of >= self._newest:
            return dict(self._all)
        out = {}
        for mid, (times, n) in self._by.items():
            k = n + bisect.bisect_right(times, as_of)
            if k:
                out[mid] = k
        return out


@runtime_checkable
class Store(Protocol):
    """Facts (clients, managers, touches, ...) and what the evaluator needs from them.

    Every method here is covered by the contract suite in tests/stores/; a backend is done when it
    passes it. Sequences returned are sorted by id, so plans do not depend on insertion order.
    """

    url: str
    tz: tzinfo  # how naive timestamps in added rows are read
    read_only: str | None  # why the store only reads (a file SQLite cannot write beside), or None

    def add(self, **rows: Iterable[Entity | Mapping[str, Any]]) -> dict[str, int]:
        """Insert new facts, keyed by entity name (`clients=[...]`). Dicts are validated (naive times
        read in the store's time zone). A duplicate id, a bad field or a reference to an unknown
        client/manager raises `DataError` naming entity, row, id and field; nothing is written then.
        Returns the number of rows added per entity."""
        ...

    def upsert(self, **rows: Iterable[Entity | Mapping[str, Any]]) -> dict[str, int]:
        """Like `add`, but an existing id is replaced by the new version."""
        ...

    def load(self, batches: Iterable[Batch], *, replace: bool = False) -> dict[str, int]:
        """Write already-validated batches atomically (all or nothing); `add` and `upsert` use it.
        Batches may be a lazy iterator, so a large import never holds every row in memory."""
        ...

    def get(self, entity: str, id: str) -> Entity | None: ...

    def iter(self, entity: str) -> Iterator[Entity]:
        """Every fact of one entity, by id."""
        ...

    def count(self, entity: str) -> int: ...

    def clients(self, as_of: datetime, ids: Sequence[str] | None = None) -> list[Client]:
        """Clients that exist at as_of (created_at empty or not after it), optionally only `ids`."""
        ...

    def managers(self) -> list[Manager]: ...

    def manager_loads(self, as_of: datetime) -> dict[str, int]:
        """Non-archived clients existing at as_of, per manager id (capacity checks)."""
        ...

    def moves_in_flight(self, as_of: datetime) -> dict[str, tuple[str, str]]:
        """Non-archived client id -> (the manager the data shows, the one the moves gave it to) for the
        reassignments committed by as_of that the data does not show yet, chained, and not refused (dead),
        cancelled or carried out (`ledger.unapplied_moves`, for every client at once;
        `ledger.moves_in_flight` is the reference)."""
        ...

    def manager_changes(self, client_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Client id -> {manager id: the `seq` of the newest ledger entry when a write (`upsert`) last gave
        the client that manager}, for those of `client_ids` whose manager a write has changed while the
        ledger held entries. A reassignment is carried out once the data has shown the client with the
        manager it gave it to (`ledger.carried_out`); from then on the data says who has the client."""
        ...

    def aggregate(
        self, specs: Sequence[AggSpec], as_of: datetime, client_ids: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """One `{client_id: value}` per spec, in order. Clients without matching rows are absent.
        count -> int, sum -> Decimal (money) or int, max/min -> the field's type."""
        ...

    def facts(
        self,
        entity: str,
        as_of: datetime,
        where: Sequence[Pred] = (),
        client_ids: Sequence[str] | None = None,
    ) -> list[Entity]:
        """Fact rows that exist at as_of and match `where` (virtual fields evaluated at as_of), sorted by
        (client_id, id): the rows per-invoice and per-task rules iterate over."""
        ...

    def fact_steps(self, steps: Sequence[datetime]) -> list[Changes]:
        """Per interval `(steps[i], steps[i + 1]]` (`steps` ascending, so one entry fewer): the clients
        with a value of each date/time field of a fact (and of their own `created_at`) in it, keyed by
        `(entity, field)`. These are the moments at which something about a client can change, which a
        backtest sweeps in time order instead of re-planning everyone; sets, because a sweep only asks
        who and what, and set algebra over a year's facts is a few milliseconds a step."""
        ...

    def get_cursor(self, name: str) -> str | None:
        """Round-robin position saved by an earlier run."""
        ...

    def set_cursor(self, name: str, value: str) -> None: ...

    def cursors(self, prefix: str) -> dict[str, str]:
        """Every cursor whose name starts with `prefix`, by name (a reactive session's saved process states
        are `reactive:client:<id>`: a tick looks them all over in one read)."""
        ...

    # ------------------------------------------------------------ ledger

    def run_lock(self, owner: str) -> AbstractContextManager[None]:
        """Held for a whole run. A second run on the same store fails at once with `StoreError`
        naming the holder, instead of waiting or interleaving; a killed holder releases it."""
        ...

    def ledger_status(self, keys: Iterable[str]) -> dict[str, Status]:
        """The committed ones among `keys`, with their status (duplicate detection)."""
        ...

    def cancellations(self, keys: Iterable[str]) -> dict[str, str]:
        """The ones among `keys` cancelled before they went out (outcome `{"cancelled": ...}`), with the code
        the cancellation gave ("" when it gave none, as a host's does): `ledger.MANAGER_LEFT` asks for a new
        decision. One indexed read, as `ledger_status`: a plan asks it for every committed move it meets."""
        ...

    def commit_run(self, run: RunRecord, actions: Sequence[Action], cursors: Mapping[str, str]) -> list[Action]:
        """In ONE transaction: the run record, every action whose key is not in the ledger yet (as
        `pending`), and the round-robin cursors. Returns the actions committed, in order; the others
        were already there. A crash leaves all of it or none of it."""
        ...

    def finish_run(
        self, run_id: str, finished_at: datetime, counts: Mapping[str, int], status: str = "finished"
    ) -> None:
        """Close a run record: `finished`, or `interrupted` for one found unfinished by a later run."""
        ...

    def runs(self, limit: int | None = None, kind: str | None = None) -> list[RunRecord]:
        """Run records, newest first; only those of one `kind` (`run`, or a reactive session's `event`) if given."""
        ...

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
        """Committed actions in commit order, filtered by any of the arguments (`since`: planned as of
        that instant or later; what caps, escalations and processes look back on)."""
        ...

    def begin_attempts(
        self, ids: Sequence[str], at: datetime, seen: Mapping[str, int] | None = None,
        claims: Mapping[str, str | None] | None = None,
    ) -> list[str]:  # fmt: skip
        """Count one more delivery attempt for each id still `pending` or `failed`, BEFORE its handler
        is called, durably, so a crash mid-delivery can never let attempts exceed the limit. Returns
        the ids counted: one that became `done` meanwhile (the host recorded an outcome) is skipped, and
        so is one whose attempts are no longer those in `seen` (id -> attempts when the caller read it):
        another dispatcher (a reactive session, a run in another process) has just taken it, and
        counting it here too would deliver it twice. Each counted entry is claimed for this process
        (`claimed_by = ledger.claim_token()`) until `finish_attempts`: while it runs, other dispatchers
        leave the action alone (`ledger.claim_alive`). `claims` (id -> `claimed_by` when the caller read it):
        only an id whose claim is still that one is counted. Attempts alone can come back to the same number
        (a replay resets them, then its own delivery counts one) while another dispatcher delivers it."""
        ...

    def finish_attempts(
        self, results: Sequence[tuple[str, Status, str | None, int]], at: datetime,
        claims: Mapping[str, str | None] | None = None,
    ) -> None:  # fmt: skip
        """Record `(id, status, error or None, attempts)` after delivery, and drop the claim, in one
        transaction; only for actions still `pending` or `failed` (an outcome the host recorded meanwhile
        stands), and, with `claims`, still claimed as given there (a process's identity, `claim_holder()`,
        matches its own claims): a dispatcher giving up on an action must not mark it dead while another
        one delivers it."""
        ...

    def requeue(self, ids: Sequence[str], at: datetime, claims: Mapping[str, str | None] | None = None) -> list[str]:
        """Put `failed`/`dead` actions back to `pending` with attempts reset and no claim (replay); returns
        those that moved. `done` ones stay done: replaying a delivered action would duplicate it. `claims` as
        in `begin_attempts`: an id claimed since the caller read it (a dispatcher retrying it) stays."""
        ...

    def set_outcome(self, id: str, outcome: Mapping[str, Any], at: datetime) -> LedgerEntry:
        """What the host reports back (task completed, churn reason), merged into earlier outcomes. An
        action still `pending` or `failed` becomes `done`: the host says it was acted on. A `dead` one stays
        `dead`: the CRM refused it, so it never took effect (a refused move is no move), and `replay
        --dead` leaves it, as the host has closed it. An empty outcome, or an unknown id: an error."""
        ...

    def close(self) -> None: ...
