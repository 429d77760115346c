"""Deliver committed actions through handlers, with retries, backoff and a dead-letter status.

The ledger is the source of truth at every step: each attempt is counted before its handler is
called (so a crash can never let attempts exceed `max_attempts`), its result is recorded right
after, and an action is `done` only once its handler returned. Clock and sleep are injectable, so tests of
backoff take no time.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import inspect
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ..actions import ACTION_TYPES, Action
from ..errors import ArgumentError, DispatchError, StoreBusyError, StoreError, did_you_mean
from ..ledger import (
    ACTIVE,
    MANAGER_LEFT,
    OWNER_CHANGED,
    LedgerEntry,
    Status,
    claim_alive,
    claim_holder,
    delivering,
    manager_changes,
)
from ..model import active_supervisor
from ..policies import MARKETING, SELLING_TYPES
from ..stores.base import Pred, virtual_value
from ..timeutil import END_OF_TIME
from .base import ActionHandler, CallbackHandler, PermanentError, RetryLater

__all__ = ["DispatchReport", "Dispatcher", "Retry", "describe_error", "dunning_over", "utc_now"]

#: one handler or a mapping by action type; a plain function `fn(action)` is wrapped in CallbackHandler
Handlers = Mapping[str, ActionHandler | Callable[[Action], object]] | ActionHandler | Callable[[Action], object]


def utc_now() -> datetime:
    """The only wall clock in retainer: ledger timestamps and backoff, never planning."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Retry:
    """Exponential backoff: attempt n waits `base_delay * factor**(n-1)` seconds (at most `max_delay`)
    before attempt n+1; after `max_attempts` failures the action is `dead`."""

    max_attempts: int = 5
    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 60.0
    #: this many retryable failures in a row through one handler mean its endpoint is down: the run
    #: stops using it and leaves the rest of its actions for the next run (None: never give up early)
    stop_after: int | None = 10
    #: seconds a ledger write waits for another writer's lock (the CRM's own sync, an import) before the
    #: run stops: the store's own wait is 5 s, and a night stopped by a sync, after a delivery it could not
    #: record, sent that action again and left the rest for a day
    lock_wait: float = 600.0
    #: seconds a run keeps waiting on a CRM that asks to slow down (`RetryLater`, HTTP 429) with no delivery
    #: through that handler in between, before it leaves the handler's actions for the next run
    throttle_wait: float = 600.0
    #: seconds of delivery after which the actions not sent yet are looked at again (a payment, do_not_contact,
    #: a manager who left, written by the CRM's sync meanwhile): a webhook night takes hours, and the client who
    #: paid at 01:00 was dunned at 03:00 on what the run read at midnight
    recheck: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ArgumentError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.stop_after is not None and self.stop_after < 1:
            raise ArgumentError(f"stop_after must be at least 1, not {self.stop_after}")
        waits = ("base_delay", "factor", "max_delay", "lock_wait", "throttle_wait", "recheck")
        if any(getattr(self, n) < 0 for n in waits) or self.factor < 1:
            raise ArgumentError("delays must be >= 0 and factor >= 1")
        bad = [n for n in waits if not math.isfinite(getattr(self, n))]
        if bad:  # `--retry-delay nan` waited the whole max_delay before every retry
            raise ArgumentError(f"{bad[0]} must be a finite number of seconds, not {getattr(self, bad[0])}")

    def delay(self, attempt: int) -> float:
        try:
            return float(min(self.max_delay, self.base_delay * self.factor ** (attempt - 1)))
        except OverflowError:  # a long run of "later"s: factor ** 1024 is past a float
            return float(self.max_delay)


def describe_error(exc: BaseException) -> str:
    """`TimeoutError: POST ... timed out`: the cause, named, in one line, as text any store can keep (a CRM's
    answer decoded with `surrogateescape` holds lone surrogates, which SQLite refused: the run crashed)."""
    text = " ".join(str(exc).split()).encode("utf-8", "backslashreplace").decode("utf-8")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class DispatchReport:
    """What one dispatch did. An action ends `done` or `dead`, unless its handler was given up on
    (`stopped`: it stays `pending`/`failed` for the next run, those in `failed` with their error)."""

    done: list[str] = field(default_factory=list)
    dead: dict[str, str] = field(default_factory=dict)  # id -> last error
    failed: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    no_handler: dict[str, int] = field(default_factory=dict)  # action type -> actions left pending
    stopped: dict[str, str] = field(default_factory=dict)  # handler -> why it was given up on
    left: int = 0  # actions not delivered because their handler was given up on
    skipped: list[str] = field(default_factory=list)  # done meanwhile (the host recorded an outcome)
    #: being delivered by another dispatcher when this one read the ledger (a reactive session, a run in
    #: another process): left to it. It records the result; a `failed` one is retried by the next run
    in_flight: list[str] = field(default_factory=list)
    #: id -> why: committed by an earlier run, and no longer to be sent (do_not_contact, paid)
    cancelled: dict[str, str] = field(default_factory=dict)
    #: those of `cancelled` tried before, without a confirmed answer (a timeout, a lost connection, a crash
    #: mid-call): the CRM may have carried them out, and they still count against caps and spend
    unsure: list[str] = field(default_factory=list)
    #: id -> why: neither sent nor cancelled, left for the next run to decide (a replay without the rules)
    held: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Everything routed to a handler was delivered."""
        return not (self.dead or self.failed or self.left)

    def to_dict(self) -> dict[str, Any]:
        return {
            "done": len(self.done),
            "dead": dict(sorted(self.dead.items())),
            "failed": dict(sorted(self.failed.items())),
            "stopped": dict(sorted(self.stopped.items())),
            "left": self.left,
            "skipped": len(self.skipped),
            "in_flight": len(self.in_flight),
            "cancelled": dict(sorted(self.cancelled.items())),
            "unsure": sorted(self.unsure),
            "held": dict(sorted(self.held.items())),
            "attempts": self.attempts,
            "no_handler": dict(sorted(self.no_handler.items())),
        }


def handler_name(h: Any) -> str:
    """How messages name a handler: its own repr (a webhook's URL without secrets, a function's name), or
    its class when it has none (`<crm.Handler object at 0x7f...>` says nothing to the reader)."""
    return repr(h) if type(h).__repr__ is not object.__repr__ else type(h).__qualname__


def _check_signature(name: str, h: Any) -> None:
    """A handler's mistakes that every delivery would repeat, found before anything is committed: a class
    passed for an instance, a function that does not take one action. Found at delivery instead, each
    action would fail, be retried with backoff, and look like a CRM that is down."""
    fn = h.fn if isinstance(h, CallbackHandler) else h.handle
    if _is_async(fn):
        raise DispatchError(
            f"handler for {name!r} ({handler_name(h)}) is async: it would return a coroutine that nobody awaits, "
            f"and its actions would be recorded as delivered. Give a function that delivers before it returns, "
            f"e.g. lambda action: asyncio.run(send(action)), or asyncio.run_coroutine_threadsafe(send(action), "
            f"loop).result() from a thread beside your event loop"
        )
    if _is_generator(fn):
        raise DispatchError(
            f"handler for {name!r} ({handler_name(h)}) is a generator function (a `yield` in its body): calling it "
            f"returns a generator without running a line of it, and its actions would be recorded as delivered. "
            f"Deliver in the body and return; a handler's return value is ignored"
        )
    if isinstance(h, type) and not isinstance(inspect.getattr_static(h, "handle", None), staticmethod | classmethod):
        # `handle(self, action=None)` on the class binds the action to self: the instance was meant
        raise DispatchError(f"handler for {name!r} is the class {h.__qualname__}: pass an instance, {h.__name__}(...)")
    try:
        inspect.signature(fn).bind(object())
    except TypeError as exc:
        if isinstance(fn, type):  # a class without `handle`, called per action: its instance was meant
            raise DispatchError(f"handler for {name!r} is the class {fn.__qualname__}: "
                                f"pass an instance, {fn.__name__}(...)") from None  # fmt: skip
        raise DispatchError(f"handler for {name!r} ({handler_name(h)}) must take one argument, the action: "
                            f"{exc}") from None  # fmt: skip
    except ValueError:
        pass  # a builtin without a signature: trusted


def _bodies(fn: Any) -> tuple[Any, Any]:
    """The function a handler's call runs, behind functools.partial, and an object's `__call__` (or None)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    call = None if inspect.isroutine(fn) or isinstance(fn, type) else inspect.getattr_static(type(fn), "__call__", None)
    return fn, call


def _is_async(fn: Any) -> bool:
    """`async def`, also behind functools.partial or as an object's `async def __call__`."""
    fn, call = _bodies(fn)
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn) or inspect.iscoroutinefunction(call)


def _is_generator(fn: Any) -> bool:
    """A stray `yield`: the body runs only when someone iterates, and a dispatcher never does."""
    fn, call = _bodies(fn)
    return inspect.isgeneratorfunction(fn) or inspect.isgeneratorfunction(call)


def _as_handler(h: Any) -> Any:
    """A plain function `fn(action)` is a handler too (wrapped in CallbackHandler); anything else as is."""
    return h if hasattr(h, "handle") or not callable(h) else CallbackHandler(h)


class Dispatcher:
    """Routes each action to the handler for its type (`"*"` catches the rest), in ledger order."""

    def __init__(
        self,
        store: Any,
        handlers: Handlers,
        *,
        retry: Retry | None = None,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        batch: int = 200,  # actions taken from the queue between two looks at the retries that are due
        min_outstanding: Mapping[str, Decimal] | None = None,
        fixed: frozenset[str] = frozenset(),
        no_marketing: bool | None = None,
    ) -> None:
        """`min_outstanding`: rule id -> the least an invoice must still owe for that rule's dunning steps to
        go out (a debtor rule's `min_amount`; Engine and Session pass their rules', `Engine.voiding`).
        `no_marketing`: the rules' policy of that name (on unless a rule file turns it off); None (the default,
        for a dispatcher built without the rules, as a replay without them is): not known, so a retention or
        development message, offer or deal for a `no_marketing` client is neither sent nor cancelled, but left
        waiting for the next run, which knows (`report.held`)."""
        if isinstance(handlers, Mapping):
            self.handlers: dict[str, ActionHandler] = {k: _as_handler(h) for k, h in handlers.items()}
        elif hasattr(handlers, "handle") or callable(handlers):
            self.handlers = {"*": _as_handler(handlers)}
        else:
            raise DispatchError(f"a handler is a function fn(action) or has a handle(action) method; got {handlers!r}")
        for name, h in self.handlers.items():
            if name != "*" and name not in ACTION_TYPES:  # a typo would leave those actions pending, silently
                raise DispatchError(f"handlers: unknown action type {name!r}{did_you_mean(name, ACTION_TYPES)} "
                                    f"(known: {', '.join(ACTION_TYPES)}, and '*' for the rest)")
            if not hasattr(h, "handle"):
                raise DispatchError(
                    f"handler for {name!r} is neither a function fn(action) nor has a handle(action) method: {h!r}"
                )
            _check_signature(name, h)
        self.store = store
        self.retry = retry or Retry()
        self.clock = clock
        self.sleep = sleep
        self.batch = batch
        self.min_outstanding = dict(min_outstanding or {})
        #: rules whose tasks or messages name a manager id, not a role: decided again, they would go to the one
        #: who left again, so they are not cancelled for it
        self.fixed = fixed
        self.no_marketing = no_marketing
        self._held: dict[str, str] = {}  # id -> why it waits for the next run (`no_marketing=None`)
        self._chain: dict[str, Any] | None = None  # every manager, for `_left`

    def route(self, action_type: str) -> ActionHandler | None:
        handler = self.handlers.get(action_type)  # `is None`, not `or`: a handler may be falsy (an empty list)
        return handler if handler is not None else self.handlers.get("*")

    def dispatch_active(self, known: Iterable[Action] = ()) -> DispatchReport:
        """Deliver everything `pending` or `failed` in the ledger: this run's actions and whatever an
        interrupted earlier run left behind. `known` are action objects already in hand (the run's
        own), used instead of parsing their ledger copies again."""
        entries = self.store.ledger(status=ACTIVE)
        by_id = {a.id: a for a in known}
        if by_id:
            for e in entries:
                a = by_id.get(e.id)
                if a is not None:
                    e.__dict__["action"] = a  # fills the cached_property: the same action, unparsed
        return self.dispatch(entries)

    def dispatch(self, entries: Iterable[LedgerEntry]) -> DispatchReport:
        """Deliver `entries`. Each is looked at again first, and cancelled when it must not go out any more:
        the plan that committed it may be a night old, or seconds old with a payment written since (a session
        took it in while the nightly run was planning, and the run sent the reminder: found in review)."""
        report = DispatchReport()
        try:
            return self._dispatch(entries, report)
        except StoreError as exc:  # a full disk while recording an attempt: said as "nothing of this write was
            # kept", it read as if the whole night had been undone, with hundreds delivered and recorded
            if not (report.done or report.dead or report.failed):
                raise
            busy = isinstance(exc, StoreBusyError)  # still worth trying again: the same class, said so
            raise type(exc)(
                f"{exc}. Delivery stopped there: {len(report.done):,} action(s) had been delivered and recorded, "
                f"{len(report.dead):,} dead; the rest wait in the ledger (the one whose result could not be "
                f"recorded too: it goes again), and the next run delivers them"
                + ("" if busy else " (free the disk first, if it is full)")) from exc  # fmt: skip

    def _dispatch(self, entries: Iterable[LedgerEntry], report: DispatchReport) -> DispatchReport:
        queue: list[LedgerEntry] = []
        read_at = self.clock()
        active = []
        for e in entries:
            if e.status not in ACTIVE:
                continue
            if claim_alive(e, read_at):  # never two deliveries at once; a claim whose process died is stale
                report.in_flight.append(e.id)
            else:
                active.append(e)
        void = self._cancel(active, report)
        for e in active:
            if e.id in void:
                continue
            if (why := self._held.get(e.id)) is not None:
                report.held[e.id] = why
                continue
            if self.route(e.type) is None:
                report.no_handler[e.type] = report.no_handler.get(e.type, 0) + 1
            else:
                queue.append(e)
        # reassignments first: the same plan's task for the client goes to the new manager, and a CRM that
        # checks a task's assignee against the client's owner must see the move before the task
        queue.sort(key=lambda e: e.type != "reassign")  # stable: ledger order otherwise
        attempts = {e.id: e.attempts for e in queue}
        claims = {e.id: e.claimed_by for e in queue}  # with attempts, what a claim checks is unchanged
        waiting: list[tuple[float, int, LedgerEntry]] = []  # (due, order, entry) for retries
        order = {e.id: n for n, e in enumerate(queue)}
        streak: dict[int, int] = {}  # failures in a row that were not rejections, per handler (by id)
        spent: dict[int, dict[str, int]] = {}  # per handler, the actions failed in its streak: their attempts before
        given_up: set[int] = set()  # handlers (by id) this dispatch stopped using
        # client -> when its reassignment is tried again: its other actions wait for it, so the CRM still
        # sees the move first when the move needed a retry (a task for the new manager went first, was
        # refused as not the owner's, and died)
        moving: dict[str, float] = {}
        stalled: set[str] = set()  # clients whose move this dispatch gave up on: their other actions wait too
        dead_moves: dict[str, str] = {}  # the episode (key prefix) of a move that went dead here -> its error
        # a CRM that answered "too many requests" (`RetryLater`): the seconds it asked for, by action, and when
        # each such handler (by id) may be called again. Sent back to back, ten actions in a burst met ten 429s
        # and the run gave up on a CRM that was up, every night
        throttled: dict[str, float | None] = {}
        paused: dict[int, float] = {}
        slowed: dict[int, int] = {}  # per handler, "slow down" answers since its last delivery (the pause grows)
        slowed_since: dict[int, float] = {}  # and when the first of them came
        queue.reverse()  # pop() from the end = ledger order
        checked = self.clock().timestamp()
        gone: set[str] = set()  # cancelled by a later look (`Retry.recheck`), wherever they wait
        while queue or waiting:
            now = self.clock().timestamp()
            ready: list[LedgerEntry] = []
            while waiting and waiting[0][0] <= now and len(ready) < self.batch:
                ready.append(heapq.heappop(waiting)[2])
            while queue and len(ready) < self.batch:
                ready.append(queue.pop())
            if not ready:  # at least a millisecond: a clock that rounds a tiny wait to nothing looped for ever
                self.sleep(max(0.001, waiting[0][0] - now))
                continue
            for k, e in enumerate(ready):
                if self.clock().timestamp() - checked >= self.retry.recheck:  # what the CRM wrote since the last look
                    checked = self.clock().timestamp()
                    unsent = [x for x in (*ready[k:], *queue, *(w[2] for w in waiting)) if x.id not in gone]
                    void = self._cancel(unsent, report, again=True, tried=attempts)
                    gone |= void.keys()
                    for x in unsent:
                        if x.id in void and x.type == "reassign":  # its client's actions wait for it no more
                            moving.pop(x.client_id or "", None)
                if e.id in gone:
                    continue
                if (why := self._held.get(e.id)) is not None:  # a later look's: it waits for the next run
                    report.held[e.id] = why
                    continue
                h = self.route(e.type)
                if id(h) in given_up:
                    report.left += e.id not in report.failed  # the failed ones are reported with their error
                    if e.type == "reassign" and e.client_id is not None:
                        stalled.add(e.client_id)  # left for the next run: the client's other actions wait too
                    continue
                if e.type != "reassign" and e.client_id in stalled:  # its move is left for the next run
                    report.left += e.id not in report.failed
                    continue
                if e.type != "reassign" and e.client_id in moving:
                    heapq.heappush(waiting, (moving[e.client_id], order[e.id], e))  # right after the move
                    continue
                if (until := paused.get(id(h), 0.0)) > self.clock().timestamp():  # the CRM asked to slow down
                    heapq.heappush(waiting, (until, order[e.id], e))
                    if e.type == "reassign" and e.client_id is not None:
                        moving[e.client_id] = until  # its client's other actions wait for it, as for a retry
                    continue
                if e.type != "reassign" and (died := dead_moves.get(_episode(e.key))) is not None:
                    # planned with a move the CRM refused: "moved to Ivan" would be false. Dead with it, not
                    # cancelled: replaying the dead actions once the CRM takes the move sends both
                    why = f"not sent: the move it was planned with went dead ({died})"
                    self.patiently(self.store.finish_attempts, [(e.id, "dead", why, attempts[e.id])], self.clock(),
                                {e.id: claims[e.id]})  # fmt: skip
                    report.dead[e.id] = why
                    report.failed.pop(e.id, None)
                    continue
                st, rejected = self._attempt(e, attempts, claims, report, throttled)
                if st == "dead" and e.type == "reassign":
                    dead_moves[_episode(e.key)] = report.dead.get(e.id, "")
                over = None  # why the run stops waiting on a handler that keeps saying "later"
                if e.id in throttled:  # every call through this handler waits, not only this action's retry
                    asked, now = _seconds(throttled.pop(e.id)), self.clock().timestamp()
                    n = slowed[id(h)] = slowed.get(id(h), 0) + 1
                    since = slowed_since.setdefault(id(h), now)
                    # as asked, or backing off while it names no time; at least a second either way (a CRM saying
                    # "later" with no wait, or `--retry-delay 0`, was called back to back)
                    pause = asked if asked is not None and asked > 0 else max(_throttle_backoff(n), self.retry.delay(n))
                    paused[id(h)] = now + min(pause, max(self.retry.max_delay, _THROTTLE_CAP))
                    if now - since >= self.retry.throttle_wait:
                        over = (f"asked to slow down for {now - since:g}s with nothing delivered, the last: "
                                f"{report.failed.get(e.id, '')}")
                elif st is not None:  # an answer that was not "later": the CRM takes requests again
                    slowed.pop(id(h), None)
                    slowed_since.pop(id(h), None)
                if st == "failed":
                    due = max(self.clock().timestamp() + self.retry.delay(attempts[e.id]), paused.get(id(h), 0.0))
                    heapq.heappush(waiting, (due, order[e.id], e))
                    if e.type == "reassign" and e.client_id is not None:
                        moving[e.client_id] = due
                elif e.type == "reassign":
                    moving.pop(e.client_id or "", None)
                if st in ("failed", "dead") and not rejected:  # the endpoint failed, not the request
                    streak[id(h)] = streak.get(id(h), 0) + 1
                    spent.setdefault(id(h), {}).setdefault(e.id, attempts[e.id] - 1)
                    if self.retry.stop_after is not None and streak[id(h)] >= self.retry.stop_after:
                        error = report.failed.get(e.id) or report.dead[e.id]
                        over = f"{streak[id(h)]} failures in a row, the last: {error}"
                        self._give_back(spent.pop(id(h)), attempts, report)
                elif st == "done":
                    streak[id(h)] = 0
                    spent.pop(id(h), None)
                if over is not None:
                    report.stopped[handler_name(h)] = over
                    given_up.add(id(h))
                    # its retries are not waited for: they stay `failed` for the next run, and so do the actions
                    # waiting for a move it was to retry
                    dropped = [w[2] for w in waiting if id(self.route(w[2].type)) in given_up and w[2].id not in gone]
                    stalled |= {x.client_id for x in dropped if x.type == "reassign" and x.client_id is not None}
                    report.left += sum(x.id not in report.failed for x in dropped)  # waited, never tried
                    waiting = [w for w in waiting if id(self.route(w[2].type)) not in given_up]
                    heapq.heapify(waiting)
        return report

    def _give_back(self, spent: Mapping[str, int], attempts: dict[str, int], report: DispatchReport) -> None:
        """The attempts of the failures that made this dispatch give up on a handler were the endpoint's (down),
        not the actions': each `failed` action gets them back (`spent`: id -> its attempts before them). Kept,
        a night the CRM was down used up the retries, and one error the next night made an action dead. Only when
        the failures were spread over several actions: one action failing alone (a session tries each action
        once, `stop_after=1`) says nothing of the endpoint."""
        if len(spent) < 2:
            return
        back = [(i, "failed", report.failed[i], n) for i, n in spent.items() if i in report.failed and attempts[i] > n]
        if back:
            self.patiently(self.store.finish_attempts, back, self.clock(), dict.fromkeys((i for i, *_ in back), None))
            for i, *_, n in back:
                attempts[i] = n

    def patiently(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A ledger write that meets another writer's lock waits for it, up to `Retry.lock_wait`: the CRM writes
        its facts while a run delivers (that is why a run holds no write transaction), and the result of a
        delivery must be recorded, or the next run sends the action again."""
        deadline, pause = None, 0.5
        while True:
            try:
                return fn(*args)
            except StoreBusyError:
                now = self.clock().timestamp()
                deadline = now + self.retry.lock_wait if deadline is None else deadline
                if now >= deadline:
                    raise
                self.sleep(min(pause, deadline - now))
                pause = min(pause * 2, 10.0)

    def _cancel(
        self, entries: list[LedgerEntry], report: DispatchReport, again: bool = False,
        tried: Mapping[str, int] | None = None,
    ) -> dict[str, tuple[str, str | None]]:  # fmt: skip
        """Cancel the entries that must not go out any more (`_void`), in the ledger and the report. `again`: the
        entries were read before delivery began, so only those still waiting in the ledger now, and not being
        delivered elsewhere, are cancelled (a session's tick may have delivered one meanwhile). `tried`: the
        attempts this dispatch counted (the entries' own are as read before it tried them)."""
        void = self._void(entries) if entries else {}
        if again and void:
            now = self.clock()
            still = {x.id for x in self.store.ledger(ids=list(void)) if x.status in ACTIVE and not claim_alive(x, now)}
            void = {i: why for i, why in void.items() if i in still}
        for e in entries:
            if e.id in void:
                now = self.clock()
                why, code = void[e.id]
                outcome = {"cancelled": why, "at": now.isoformat(), **({"code": code} if code else {})}
                self.patiently(self.store.set_outcome, e.id, outcome, now)
                report.cancelled[e.id] = why
                if (tried or {}).get(e.id, e.attempts):  # tried, and no answer came: it may have gone out
                    report.unsure.append(e.id)
                report.failed.pop(e.id, None)  # an earlier attempt of this run failed: cancelled now
        return void

    def _void(self, earlier: list[LedgerEntry]) -> dict[str, tuple[str, str | None]]:
        """Actions an earlier run committed that must not go out now (id -> why, and the code of a reassignment
        whose new manager left, which the next plan decides again: `MANAGER_LEFT`), whatever rule planned them:
        their client has asked not to be contacted since (`do_not_contact` means no action at all), or the
        invoice they chase is paid, or the client has been archived since (an import with --archive-missing
        archives a client deleted in the CRM), or the manager they go to has left since (`_left`). The plan
        that committed them could not know; the one that delivers them (a night later, or a replay) must
        not send them."""
        out: dict[str, tuple[str, str | None]] = {}
        managers: dict[str, Any] = {}
        self._chain = None  # read again for each look: managers change between runs
        for e in earlier:  # held at an earlier look: looked at again (the client may have opted back in)
            self._held.pop(e.id, None)
        # (client, manager it was to go to) -> why the move is cancelled, and the code of one decided again
        moves: dict[tuple[str, str], tuple[str, str | None]] = {}
        # a cancelled move's episode (`release:c2:2026-01-15:`) -> the manager it named, why, and the code: the
        # rule's other actions ("Borealis Trade moved to Ivan", told to the supervisor) are about a move that
        # never happened
        episodes: dict[str, tuple[str, str, str | None]] = {}
        # their clients and the invoices they chase, read at once: one by one, a first night at 100k clients
        # read 40,000 clients in 40,000 queries
        ids = {e.client_id for e in earlier if e.client_id is not None}
        clients = {c.id: c for c in self.store.clients(END_OF_TIME, sorted(ids))} if ids else {}
        chased = {i for e in earlier if isinstance(i := e.action.evidence.get("invoice.id"), str)}
        invoices = {i.id: i for i in self.store.facts("invoices", END_OF_TIME, (Pred("id", "in", frozenset(chased)),))
                    } if chased else {}  # fmt: skip
        # tasks for a manager other than the one the data shows: the CRM may have moved their client by hand
        other = [e for e in earlier if e.type == "create_task" and e.client_id in clients
                 and getattr(e.action, "assignee_id", None) not in (None, clients[e.client_id].manager_id)]  # fmt: skip
        # when the data gave each client to its manager, for the moves and those tasks: one read
        moved = {e.client_id for e in earlier if e.type == "reassign" and e.client_id is not None}
        changes = manager_changes(self.store, sorted(moved | {e.client_id for e in other if e.client_id}))
        # ... since the task was committed (a first night's tasks for the managers its moves give clients to are not)
        stale = [e for e in other if e.seq > 0
                 and changes.get(e.client_id or "", {}).get(clients[e.client_id or ""].manager_id, -1) >= e.seq]
        history: dict[str | None, list[LedgerEntry]] = {}  # their clients' moves, read when one is needed
        for e in earlier:
            cid = e.client_id
            if cid is None:
                continue
            c = clients.get(cid)
            if c is not None and c.contact_policy == "do_not_contact":
                out[e.id] = ("do_not_contact", None)
                continue
            if c is not None and c.status == "archived":  # archived clients get nothing (deleted in the CRM?)
                out[e.id] = ("archived", None)
                continue
            if (self.no_marketing is not False and c is not None and c.contact_policy == "no_marketing"
                    and e.type in SELLING_TYPES and e.category in MARKETING):  # fmt: skip
                if self.no_marketing is None:  # the rules are not known: whether it may go is theirs to say
                    self._held[e.id] = ("its client is no_marketing, and without the rule file (--rules) a replay "
                                        "cannot tell whether it may go: the next run decides")  # fmt: skip
                else:
                    out[e.id] = ("no_marketing", None)  # opted out since: the consent the plan checked is gone
                continue
            if (left := self._left(e, managers)) is not None:
                gone = left[0]
                out[e.id] = left
                if e.type == "reassign":
                    moves[(cid, e.action.to_manager_id)] = (gone, MANAGER_LEFT)  # type: ignore[attr-defined]
                    episodes[_episode(e.key)] = (e.action.to_manager_id, gone, MANAGER_LEFT)  # type: ignore[attr-defined]
                continue
            invoice = e.action.evidence.get("invoice.id")  # a dunning step's invoice
            inv = invoices.get(invoice) if isinstance(invoice, str) else None
            if inv is not None and (why := dunning_over(inv, self.clock(), self.min_outstanding.get(e.rule, 0))):
                out[e.id] = (why, None)
        # a night the CRM was down, then a supervisor gave the client to a third manager: sent the next night,
        # the move took the client from them. The data is the truth; the move is not decided again. Unless the
        # data is catching up with a chain of moves (m1 -> m2, then m2 -> m3: it shows m2 now), read only then
        hand = {e.id: (e, why) for e in earlier if e.id not in out and e.type == "reassign" and e.client_id in clients
                and (why := _moved_by_hand(e, clients[e.client_id].manager_id, changes))}  # fmt: skip
        if hand or stale:
            cids = {e.client_id for e, _ in hand.values()} | {e.client_id for e in stale}
            for x in self.store.ledger(client_ids=sorted(c for c in cids if c), types=["reassign"]):
                history.setdefault(x.client_id, []).append(x)
        if hand:
            for e, why in hand.values():
                chain = _chain(e, history.get(e.client_id, []), changes.get(e.client_id or "", {}))
                if clients[e.client_id or ""].manager_id not in chain:
                    # the release's own note ("moved to m2") goes with it; another rule's task for m2 is decided
                    # again for the manager the data shows (the client is still forgotten)
                    out[e.id] = (why, OWNER_CHANGED)
                    moves[(e.client_id or "", e.action.to_manager_id)] = (why, OWNER_CHANGED)  # type: ignore[attr-defined]
                    episodes[_episode(e.key)] = (e.action.to_manager_id, why, None)  # type: ignore[attr-defined]
        if moves:  # the tasks and messages planned with a cancelled move, for the manager it named, go with it,
            # and so does everything else its rule planned with it; all are decided again with the move
            for e in earlier:
                if e.id in out or e.client_id is None:
                    continue
                if (ep := episodes.get(_episode(e.key))) is not None:
                    out[e.id] = (f"its client's move to {ep[0]} was cancelled: {ep[1]}", ep[2])
                elif e.type in ("create_task", "notify_manager"):
                    who = getattr(e.action, "assignee_id", None) or getattr(e.action, "to_manager_id", None)
                    if (why := moves.get((e.client_id, who or ""))) is not None:
                        # decided again with the move (when it is), for the manager the next plan gives the client to
                        out[e.id] = (f"its client's move to {who} was cancelled: {why[0]}", why[1])
        # a task waiting while the CRM gave its client to another manager by hand: for the manager the data shows
        # now, decided again (delivered, it reached the one who had lost the client, and its key was spent); not
        # when one of our own moves gave the client to that manager
        for e in stale:
            now = clients[e.client_id or ""].manager_id
            ours = {x.payload_fields.get("to_manager_id") for x in history.get(e.client_id, ())}
            if e.id not in out and now not in ours:
                out[e.id] = (f"the client was given to {now} in the CRM since", OWNER_CHANGED)
        return out

    def _left(self, e: LedgerEntry, managers: dict[str, Any]) -> tuple[str, str | None] | None:
        """Why an earlier run's action must not go out any more, and the code that has the next plan decide it
        again (`MANAGER_LEFT`), when the manager it is for has been deactivated since (or is gone from the
        data). A night the CRM was down, then a morning export that deactivated the manager, sent the client
        to someone who had left. A reassignment is decided again for another manager. A task, a message to a
        manager or an escalation is cancelled only when an active supervisor above the one who left can
        take it, and the next plan gives it to them, as a plan does for a manager who has left (delivered to
        the one who left, it was lost, and its key spent); with nobody above, a task or message still goes
        (the plan warned), and an escalation, which nobody can read, is cancelled."""
        if e.type not in ("reassign", "escalate", "create_task", "notify_manager"):
            return None
        # the action, which `_void` parses anyway: its payload parsed again, and kept, took 100 MB at 100k
        who = getattr(e.action, "assignee_id" if e.type == "create_task" else "to_manager_id", None)
        if not who:
            return None
        if who not in managers:
            managers[who] = self.store.get("managers", who)
        m = managers[who]
        if m is not None and m.active:
            return None
        why = f"manager {who} is no longer in the data" if m is None else f"manager {who} is no longer active"
        if e.type == "reassign":
            return why, MANAGER_LEFT
        if "~" in e.key.rsplit(":", 2)[-2] and e.type != "escalate":
            return None  # a session's own (a call about a waiting offer) or a process step: no plan decides it again
        if self._chain is None:  # every manager, once a look: the chain above the one who left
            self._chain = {x.id: x for x in self.store.managers()}
        if m is not None and e.rule not in self.fixed and active_supervisor(m, self._chain) is not None:
            return why, MANAGER_LEFT
        return (why, None) if e.type == "escalate" else None

    def _attempt(
        self, e: LedgerEntry, attempts: dict[str, int], claims: dict[str, str | None], report: DispatchReport,
        throttled: dict[str, float | None],
    ) -> tuple[Status | None, bool]:  # fmt: skip
        """One delivery, recorded around the call: the attempt is counted before it (so an action that
        kills the process uses up its own attempts, never another's), the result right after (so a
        crash loses at most the result of the one action in flight). Returns the new status (None:
        done meanwhile) and whether the failure says nothing about the endpoint: the handler rejected the
        action (`PermanentError`), or was not called at all (no attempts left)."""
        limit = self.retry.max_attempts
        st: Status
        rejected = False
        if attempts[e.id] >= limit:  # e.g. max_attempts lowered, or crashes used them up
            st, err = "dead", e.last_error or (
                f"gave up after {attempts[e.id]} attempts that never returned (the process stopped while delivering it)"
            )
            rejected = True  # no call was made: says nothing about the endpoint, so no step towards giving up on it
            # only as it was read: a dispatcher with more attempts to give may be delivering it now
            self.patiently(self.store.finish_attempts, [(e.id, st, err, attempts[e.id])], self.clock(),
                        {e.id: claims[e.id]})  # fmt: skip
        else:
            with delivering(e.id):  # marked before the claim: a thread of this process reading it then waits
                if not self.patiently(self.store.begin_attempts, [e.id], self.clock(), {e.id: attempts[e.id]},
                                   {e.id: claims[e.id]}):  # fmt: skip
                    # done meanwhile (the host recorded an outcome), or another dispatcher is delivering it
                    report.skipped.append(e.id)
                    report.failed.pop(e.id, None)
                    return None, False
                attempts[e.id] += 1
                report.attempts += 1
                mine = {e.id: claim_holder()}
                handler = self.route(e.type)
                assert handler is not None
                try:
                    if inspect.isawaitable(result := handler.handle(e.action)):
                        what = _discard(result)
                        raise PermanentError(f"the handler returned an awaitable instead of delivering ({what}): "
                                             f"make it deliver before it returns")
                    if inspect.isgenerator(result):  # `lambda a: (send(x) for x in ...)`: nothing ran
                        result.close()
                        raise PermanentError("the handler returned a generator, closed unrun: nothing was sent; "
                                             "make it deliver before it returns")
                except PermanentError as exc:
                    st, err, rejected = "dead", describe_error(exc) + " (not retried)", True
                except RetryLater as exc:  # the CRM took nothing and asked to be called later: no attempt spent,
                    # and the endpoint is up (a rate limit never made the run give up on it, nor an action dead)
                    attempts[e.id] -= 1
                    st, err, rejected = "failed", describe_error(exc), True
                    throttled[e.id] = exc.seconds
                except Exception as exc:
                    st, err = ("dead" if attempts[e.id] >= limit else "failed"), describe_error(exc)
                except BaseException as exc:  # Ctrl-C or exit in the handler: whether it went out is unknown
                    why = f"interrupted while delivering ({type(exc).__name__})"
                    with contextlib.suppress(StoreBusyError):  # locked: the stale claim says it, after we exit
                        self.store.finish_attempts([(e.id, "failed", why, attempts[e.id])], self.clock(), mine)
                    raise
                else:
                    st, err = "done", None
                # drops the claim, if still ours (a delivery past the lease may have been taken over)
                self.patiently(self.store.finish_attempts, [(e.id, st, err, attempts[e.id])], self.clock(), mine)
                claims[e.id] = None
        if st == "failed":
            report.failed[e.id] = err or ""
            return st, rejected
        report.failed.pop(e.id, None)
        if st == "done":
            report.done.append(e.id)
        else:
            report.dead[e.id] = err or ""
        return st, rejected


#: a "later" that names no time: 1, 2, 4 ... seconds whatever the retry delays (`--retry-delay 0` called the CRM
#: back to back), up to a minute, or `max_delay` when that is longer
_THROTTLE_CAP = 60.0


def _throttle_backoff(n: int) -> float:
    return min(2.0 ** min(n - 1, 16), _THROTTLE_CAP)


def _seconds(value: Any) -> float | None:
    """`RetryLater.seconds` as a number of seconds, or None when it names none that can be read (an adapter's
    Decimal or text is read; a wrong type crashed the run)."""
    try:
        n = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return n if n is not None and math.isfinite(n) else None


def _moved_by_hand(e: LedgerEntry, now: str | None, changes: Mapping[str, Mapping[str, int]]) -> str | None:
    """Why a reassignment not delivered yet must not go out: since it was committed, the data has given its
    client to a manager it neither takes the client from nor gives it to (moved by hand in the CRM)."""
    if now is None or e.seq <= 0 or changes.get(e.client_id or "", {}).get(now, -1) < e.seq:
        return None  # the data showed that manager before the move was decided: a move of a chain not shown yet
    # the action `_void` parsed already (its payload parsed again for each of 29,000 moves took 0.4 s)
    if now in (getattr(e.action, "from_manager_id", None), getattr(e.action, "to_manager_id", None)):
        return None
    return f"the client was given to {now} in the CRM since"


def _chain(e: LedgerEntry, moves: list[LedgerEntry], changes: Mapping[str, int]) -> set[Any]:
    """The managers of the chain of moves `e` ends (m1 -> m2, then m2 -> m3 decided before the data showed the
    first): the data showing one of them is catching up with the chain, not a move by hand. Walked back from
    `e` through the moves that gave the client to the manager the next one takes it from, up to one the data
    had shown carried out before the next was committed (an old move's manager, given the client back by hand
    later, is not in the chain)."""
    f = e.payload_fields
    out = {f.get("from_manager_id"), f.get("to_manager_id")}
    cur = e
    while True:
        frm = cur.payload_fields.get("from_manager_id")
        prev = next((x for x in reversed(moves) if x.seq < cur.seq and not x.void
                     and x.payload_fields.get("to_manager_id") == frm), None)  # fmt: skip
        if prev is None or prev.seq <= changes.get(frm, -1) < cur.seq:  # shown carried out before `cur`
            return out
        out.add(prev.payload_fields.get("from_manager_id"))
        cur = prev


def _episode(key: str) -> str:
    """`release:c2:2026-01-15:` of `release:c2:2026-01-15:notify_manager`: what one rule decided for one episode."""
    return key.rpartition(":")[0] + ":"


def _discard(awaitable: Any) -> str:
    """Stop what a handler returned instead of delivering, and say what that means for the action: a coroutine
    never ran (closed, so Python does not warn of it at exit); a task or future already scheduled is cancelled,
    but it may have sent the action meanwhile."""
    if inspect.iscoroutine(awaitable):
        awaitable.close()
        return "a coroutine, closed unrun: nothing was sent"
    cancel = getattr(awaitable, "cancel", None)
    if callable(cancel) and cancel():
        return "a scheduled task, cancelled: it may have sent the action before that"
    return "it may have run: whether the action went out is unknown"


def dunning_over(invoice: Any, at: datetime, minimum: Decimal | int = 0) -> str | None:
    """Why an invoice's dunning ladder is over at `at` (None: it goes on): paid, or paid down below the
    debtor rule's `min_amount` (a step written before says more is owed). A partly paid invoice's goes on."""
    left = virtual_value("invoices", "outstanding", invoice, at)
    if left <= 0:
        return "paid"
    if left < minimum:
        return f"paid down to {left}, below the rule's min_amount {minimum}"
    return None


def replay(
    store: Any,
    ids: Iterable[str] = (),
    *,
    dead: bool = False,
    handlers: Handlers | None = None,
    retry: Retry | None = None,
    clock: Callable[[], datetime] = utc_now,
    sleep: Callable[[float], None] = time.sleep,
    min_outstanding: Mapping[str, Decimal] | None = None,
    fixed: frozenset[str] = frozenset(),
    no_marketing: bool | None = None,
) -> tuple[list[str], DispatchReport | None]:
    """Put `failed`/`dead` actions (the given ids, and every dead one with `dead=True`) back to
    `pending` with fresh attempts, then deliver them now if handlers are given (else the next run
    does). Holds the run lock: two dispatchers at once could deliver one action twice. `min_outstanding`,
    `fixed` and `no_marketing` as for `Dispatcher` (`Engine.replay` passes its rules'; without them,
    `no_marketing` is not known, and what it would decide waits for the next run)."""
    wanted = list(dict.fromkeys(ids))
    named = set(wanted)
    with store.run_lock("replay"):
        if dead:  # not one the host closed with an outcome ("refused"): named by id, it goes out again
            wanted += [e.id for e in store.ledger(status=["dead"]) if e.id not in set(wanted) and not e.outcome]
        now = clock()
        # a reactive session takes no run lock: an action it is retrying right now stays with it
        read = store.ledger(ids=wanted) if wanted else []
        busy = {e.id for e in read if claim_alive(e, now)}
        claims = {e.id: e.claimed_by for e in read}
        moved = store.requeue([i for i in wanted if i not in busy], now, claims) if wanted else []
        if handlers is None:
            return moved, None
        # an action named by id that waits (`pending`: an interrupted replay or run left it) goes with them: it
        # was named to go now, and "already waiting" left it for the next run
        waiting = [e.id for e in read if e.id in named and e.status == "pending" and e.id not in busy]
        todo = list(dict.fromkeys([*moved, *waiting]))
        d = Dispatcher(store, handlers, retry=retry, clock=clock, sleep=sleep, min_outstanding=min_outstanding,
                       fixed=fixed, no_marketing=no_marketing)
        return moved, d.dispatch(store.ledger(ids=todo)) if todo else DispatchReport()
