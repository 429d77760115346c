"""Stateful property test: facts arrive, runs happen at increasing as_of with handlers that fail in
every way, dead actions are replayed; after every step the ledger holds each key once, no planned
action is lost, and no action was tried more than `max_attempts` times."""

from __future__ import annotations

import contextlib
import tempfile
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from httpfake import FakeClock
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import retainer
from retainer.adapters import Retry
from retainer.ledger import STATUSES
from retainer.testing import RecordingHandler

RULES = retainer.load_rules({
    "rules": [
        {"id": "forgotten", "kind": "forgotten", "after": "20d"},
        {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "10d",
         "then": [{"reassign": {"strategy": "round_robin"}}, {"notify_manager": {"to": "supervisor",
                                                                              "template": "released"}}]},
    ]
})  # fmt: skip
MAX_ATTEMPTS = 3
START = date(2026, 1, 1)

failures = st.one_of(
    st.just(0),  # nothing fails
    st.integers(1, 6),  # the first N calls fail
    st.sampled_from([{"create_task"}, {"reassign"}, {"notify_manager", "create_task"}]),  # these types always fail
    st.just("all"),
)


class LedgerMachine(RuleBasedStateMachine):
    backend = "memory"

    @initialize()
    def setup(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        url = "memory://" if self.backend == "memory" else f"sqlite:///{Path(self._dir.name) / 'crm.db'}"
        self.store = retainer.open_store(url)
        self.store.add(
            managers=[{"id": "boss"}, *({"id": f"m{i}", "supervisor_id": "boss", "max_clients": 4} for i in range(3))],
            clients=[{"id": f"c{i}", "manager_id": f"m{i % 3}", "created_at": "2026-01-01"} for i in range(4)],
        )
        self.engine = retainer.Engine(RULES, self.store)
        self.day = 0
        self.clients = 4
        self.touches = 0
        self.clock = FakeClock()
        self.planned: set[str] = set()  # every key a run proposed as new
        self.delivered: set[str] = set()  # ids some handler accepted

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            self._dir.cleanup()

    def _handler(self, fail: Any) -> RecordingHandler:
        return RecordingHandler(fail=(lambda a: True) if fail == "all" else fail)

    @rule(client=st.integers(0, 9), back=st.integers(0, 15))
    def touch(self, client: int, back: int) -> None:
        cid = f"c{client % self.clients}"
        when = START + timedelta(days=max(0, self.day - back))
        self.touches += 1
        self.store.add(touches=[{"id": f"t{self.touches}", "client_id": cid, "at": when.isoformat(), "kind": "call"}])

    @rule()
    def new_client(self) -> None:
        when = START + timedelta(days=self.day)
        self.store.add(clients=[{"id": f"c{self.clients}", "manager_id": "m0", "created_at": when.isoformat()}])
        self.clients += 1

    def _night(self, step: int) -> str:
        """The next night's as_of; the clock is that night's (a run dated after tomorrow is refused)."""
        self.day += step
        self.clock.now = max(self.clock.now, datetime.combine(START + timedelta(days=self.day), time(2), UTC))
        return (START + timedelta(days=self.day)).isoformat()

    @rule(step=st.integers(0, 25), fail=failures)
    def run(self, step: int, fail: Any) -> None:
        as_of = self._night(step)
        before = {e.key for e in self.store.ledger()}
        h = self._handler(fail)
        report = self.engine.run(
            as_of, handlers=h, retry=Retry(max_attempts=MAX_ATTEMPTS),
            clock=self.clock, sleep=self.clock.sleep,
        )  # fmt: skip
        new = {a.key for a in report.plan.actions}
        assert not new & before, "a key already in the ledger was proposed again"
        assert {a.key for a in report.committed} == new
        assert all(s.action.key in before for s in report.duplicates)
        self.planned |= new
        self.delivered |= set(h.ids)
        event(f"run: {'new' if new else 'nothing new'}, {'some dead' if report.dispatch.dead else 'none dead'}")

    @rule(step=st.integers(0, 25), after=st.integers(0, 3))
    def interrupted_run(self, step: int, after: int) -> None:
        """Ctrl-C in the middle of delivery: the commit stands, what was delivered is recorded."""
        as_of = self._night(step)
        expected = {a.key for a in self.engine.plan(as_of).actions}
        accepted: list[str] = []

        def stop(a: Any) -> bool:
            if len(accepted) >= after:
                raise KeyboardInterrupt
            accepted.append(a.id)
            return False

        h = RecordingHandler(fail=stop)
        with contextlib.suppress(KeyboardInterrupt):
            self.engine.run(as_of, handlers=h, retry=Retry(max_attempts=MAX_ATTEMPTS), clock=self.clock,
                            sleep=self.clock.sleep)  # fmt: skip
        self.planned |= expected
        self.delivered |= set(h.ids)

    @rule(fail=failures)
    def replay_dead(self, fail: Any) -> None:
        h = self._handler(fail)
        self.engine.replay(dead=True, handlers=h, retry=Retry(max_attempts=MAX_ATTEMPTS), clock=self.clock,
                           sleep=self.clock.sleep)  # fmt: skip
        self.delivered |= set(h.ids)

    @invariant()
    def ledger_is_sound(self) -> None:
        if not hasattr(self, "store"):
            return
        entries = self.store.ledger()
        keys = [e.key for e in entries]
        assert len(keys) == len(set(keys)), "a key is in the ledger twice"
        assert self.planned <= set(keys), "a planned action was lost"
        ids = {e.id for e in entries}
        assert self.delivered <= ids
        for e in entries:
            assert e.status in STATUSES
            assert e.attempts <= MAX_ATTEMPTS, f"{e.key} tried {e.attempts} times"
            if e.status == "done":
                assert e.id in self.delivered, f"{e.key} is done but no handler accepted it"
            if e.id in self.delivered:
                assert e.status == "done", f"{e.key} was delivered but is {e.status}"


class SQLiteLedgerMachine(LedgerMachine):
    backend = "sqlite"


TestLedgerMemory = LedgerMachine.TestCase
TestLedgerMemory.settings = settings(max_examples=40, stateful_step_count=15, deadline=None)
TestLedgerSQLite = SQLiteLedgerMachine.TestCase
TestLedgerSQLite.settings = settings(max_examples=15, stateful_step_count=12, deadline=None)
