"""The sweeping backtest (issue 7, item 4) against the reference: every step a full run.

The differential test is the contract: random CRMs and rule sets, daily steps over months, the same
new actions (byte for byte) per step and the same suppression counts. The examples below pin each
reason a client is re-evaluated without a new fact of its own.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
import strategies as S
from conftest import fresh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retainer
from retainer import RetainerError
from retainer.backtest import Backtest, backtest
from retainer.stores.base import TIME_FIELDS, VIRTUAL_FIELDS, VIRTUAL_SOURCES, AggSpec, Pred
from retainer.sweep import Kept, Quiet, Wakes

SETTINGS = settings(max_examples=30, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip


def same(a: Backtest, b: Backtest) -> None:
    assert [(d, x.model_dump_json()) for d, x in a.new] == [(d, x.model_dump_json()) for d, x in b.new]
    assert a.suppressed == b.suppressed
    assert a.warnings == b.warnings


def both(rules: dict[str, Any], store: retainer.Store, start: str, end: str, step: str = "1d") -> Backtest:
    rs = retainer.load_rules(rules)
    s, e = date.fromisoformat(start), date.fromisoformat(end)
    swept = backtest(rs, store, s, e, step=step, method="sweep")
    same(swept, backtest(rs, store, s, e, step=step, method="replan"))
    return swept


@SETTINGS
@given(
    crm=S.crms(),
    rules=st.one_of(S.rule_sets(), S.full_rule_sets(), S.full_rule_sets(pressure=1)),
    start=st.sampled_from(["2026-01-10", "2026-02-01"]),
    step=st.sampled_from(["1d", "1d", "1d", "1w"]),
)
def test_sweep_equals_replan(
    crm: dict[str, list[dict[str, Any]]], rules: dict[str, Any], start: str, step: str
) -> None:
    with fresh() as s:
        S.load(s, crm)
        both(rules, s, start, "2026-04-15", step)


# ------------------------------------------------------------------ one example per reason to wake


def crm(store: retainer.Store, **facts: list[dict[str, Any]]) -> None:
    store.add(managers=[{"id": "m1", "supervisor_id": "boss"}, {"id": "m2", "supervisor_id": "boss"},
                        {"id": "boss"}],
              clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"}], **facts)  # fmt: skip


def days_of(b: Backtest, rule: str) -> list[str]:
    return [d.isoformat() for d, a in b.new if a.rule == rule]


def test_a_reassignment_is_carried_out_for_the_steps_after_it() -> None:
    """Found by a new-user review: each step saw the data's manager, so m2, with room for one client,
    received both, and c1's next task went to m1, who had lost it."""
    with fresh() as s:
        s.add(managers=[{"id": "m1", "supervisor_id": "boss", "team": "north"}, {"id": "boss"},
                        {"id": "m2", "supervisor_id": "boss", "team": "north", "max_clients": 1}],
              clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01"},
                       {"id": "c2", "manager_id": "m1", "created_at": "2025-01-01"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2025-11-01T10:00", "kind": "call"},
                       {"id": "t2", "client_id": "c2", "at": "2025-11-20T10:00", "kind": "call"},
                       {"id": "t3", "client_id": "c1", "at": "2026-01-25T10:00", "kind": "call"}])  # fmt: skip
        rules = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "60d"},
                           {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "14d",
                            "then": [{"reassign": {"strategy": "least_loaded"}}]}]}  # fmt: skip
        b = both(rules, s, "2026-01-01", "2026-04-01")
        to = ("assignee_id", "to_manager_id")
        who = [(d.isoformat(), a.type, a.client_id, next(getattr(a, f) for f in to if hasattr(a, f))) for d, a in b.new]
        assert who == [
            ("2026-01-01", "create_task", "c1", "m1"),
            ("2026-01-14", "reassign", "c1", "m2"),
            ("2026-01-19", "create_task", "c2", "m1"),
            ("2026-02-02", "escalate", "c2", "boss"),  # m2 is full now: nobody can take c2
            ("2026-03-26", "create_task", "c1", "m2"),  # forgotten again, by its new manager
        ]
        assert b.client_manager == {"c1": "m2", "c2": "m1"}
        tag = {"id": "quiet", "when": {"days_since_activity": {"gte": 30}}, "then": [{"tag": "quiet"}]}
        tagged = both({"rules": [*rules["rules"], tag]}, s, "2026-01-01", "2026-04-01")
        assert [(d.isoformat(), a.client_id) for d, a in tagged.new if a.rule == "quiet"] == [
            ("2026-01-01", "c1"), ("2026-01-01", "c2")]  # fmt: skip
        # both were m1's clients then: c1's tag is not m2's because c1 moved to m2 two weeks later
        assert tagged.per_manager()["m1"]["client actions"] == 2 and "client actions" not in tagged.per_manager()["m2"]
        assert [c.manager_id for c in s.clients(datetime(2026, 4, 2, tzinfo=UTC))] == ["m1", "m1"]  # the data stays
        # a rule about the manager holds from the step after the move, with no fact of the client's own
        moved = {"id": "moved", "when": {"manager_id": "m2"}, "then": [{"tag": "moved"}]}
        tagging = {"rules": [*rules["rules"], moved]}
        assert [(d.isoformat(), a.client_id) for d, a in both(tagging, s, "2026-01-01", "2026-04-01").new
                if a.rule == "moved"] == [("2026-01-15", "c1")]  # fmt: skip


def test_a_forgotten_client_crosses_60_days_with_no_new_fact(backend: str, tmp_path: Any) -> None:
    with fresh(backend) as s:
        crm(s, touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00"}])
        rules = {
            "rules": [
                {"id": "forgotten", "kind": "forgotten", "after": "60d"},
                {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "14d"},
            ]
        }
        b = both(rules, s, "2026-02-01", "2026-04-01")
        assert days_of(b, "forgotten") == ["2026-03-02"] and days_of(b, "release") == ["2026-03-16"]


@settings(max_examples=60, deadline=None)
@given(
    after=st.sampled_from(["36h", "PT12H", "1d", "30d", "1mo", "2mo", "P1M3D", "P2W"]),
    zone=st.sampled_from(["UTC", "Europe/Moscow", "America/New_York", "Asia/Kolkata"]),
    at=st.sampled_from(["2026-01-30T23:59:59Z", "2026-01-31T00:00:00Z", "2026-01-31T20:30:00Z",
                        "2026-01-29T21:00:00Z", "2026-02-28T12:00:00Z", "2026-01-31T04:59:59Z"]),
)
def test_a_threshold_is_crossed_on_its_day_in_hours_months_and_zones(after: str, zone: str, at: str) -> None:
    """A client is woken on the day its `older_than` comes due, not the day before (hours, month ends,
    local midnights): the sweep must then give the replan's day exactly."""
    with fresh() as s:
        crm(s, touches=[{"id": "t1", "client_id": "c1", "at": at}])
        rules = {"timezone": zone, "rules": [{"id": "forgotten", "kind": "forgotten", "after": after}]}
        b = both(rules, s, "2026-01-28", "2026-05-10")
        assert max(days_of(b, "forgotten")) >= at[:10]  # the touch itself grew old within the period


def test_a_fact_arriving_mid_period_restarts_the_clock() -> None:
    with fresh() as s:
        crm(s, touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00"},
                        {"id": "t2", "client_id": "c1", "at": "2026-02-20T10:00"}])  # fmt: skip
        b = both({"rules": [{"id": "forgotten", "kind": "forgotten", "after": "30d"}]}, s, "2026-01-15", "2026-04-01")
        assert days_of(b, "forgotten") == ["2026-01-31", "2026-03-22"]


def test_a_commit_wakes_a_rule_that_reads_the_ledger() -> None:
    """`escalate` with `forgotten_rule` counts from the release, which only the ledger knows: the client
    released on a step is re-evaluated after the commit, though no fact of its own arrived."""
    with fresh() as s:
        crm(s, touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00"}])
        rules = {"rules": [
            {"id": "forgotten", "kind": "forgotten", "after": "30d"},
            {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "7d"},
            {"id": "again", "kind": "escalate", "forgotten_rule": "forgotten"}]}  # fmt: skip
        b = both(rules, s, "2026-01-20", "2026-04-01")
        assert days_of(b, "release") == ["2026-02-07"]
        assert days_of(b, "again") == ["2026-03-09"]  # 30 days after the release, not after the touch


def test_a_dunning_ladder_steps_on_by_time_alone() -> None:
    with fresh() as s:
        crm(
            s,
            invoices=[
                {"id": "i1", "client_id": "c1", "issued_at": "2026-01-01", "due_at": "2026-01-10", "amount": 500}
            ],
        )
        rules = {"rules": [{"id": "debtor", "kind": "debtor", "steps": [
            {"after": "3d", "notify_client": {"channel": "email", "template": "reminder"}},
            {"after": "10d", "notify_client": {"channel": "sms", "template": "reminder"}},
            {"after": "20d", "escalate": {}}]}]}  # fmt: skip
        b = both(rules, s, "2026-01-05", "2026-02-15")
        assert days_of(b, "debtor") == ["2026-01-13", "2026-01-20", "2026-01-30"]


def test_a_window_aggregate_expiring_flips_a_condition() -> None:
    with fresh() as s:
        crm(s, touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-05T10:00", "direction": "outbound"}])
        rules = {
            "rules": [
                {
                    "id": "quiet",
                    "when": {"outbound_30d": {"eq": 0}},
                    "episode": "last_activity_at",
                    "then": [{"notify_client": {"channel": "email", "template": "hello"}}],
                }
            ]
        }
        b = both(rules, s, "2026-01-10", "2026-03-01")
        assert days_of(b, "quiet") == ["2026-02-04"]  # the touch of 5 January leaves the 30-day window


def test_a_client_created_mid_period_is_no_warning() -> None:
    """The sweep asks for the clients it wakes, one not created yet at the step (a contract ending before the
    client's own creation date wakes it): no typo in a user's list of ids, so no "created after as_of"
    warning (re-planning every step has none)."""
    with fresh() as s:
        crm(s)
        s.add(clients=[{"id": "c2", "manager_id": "m1", "created_at": "2026-01-20T10:00:00Z"}],
              contracts=[{"id": "n1", "client_id": "c2", "ends_at": "2026-01-15T00:00:00Z"}])  # fmt: skip
        rules = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "30d"},
                           {"id": "any", "when": {"revenue_90d": {"gte": 0}}, "then": [{"tag": "x"}]}]}  # fmt: skip
        b = both(rules, s, "2026-01-10", "2026-02-20")
        assert b.warnings == set() and days_of(b, "forgotten") == ["2026-01-10", "2026-02-19"]


def test_the_cost_of_a_client_younger_than_its_profit_window_grows_by_time_alone() -> None:
    """Found in review: a client created inside the window has cost one day more each day, with no new fact;
    the sweep woke it daily for windows in months only, so a rule on `profit_90d` never fired."""
    with fresh() as s:
        s.add(managers=[{"id": "m1"}],
              clients=[{"id": "c1", "manager_id": "m1", "created_at": "2026-01-01", "cost_to_serve": 600}],
              invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-01-05", "amount": 1000,
                         "paid_at": "2026-01-06"}])  # fmt: skip
        rules = {"rules": [{"id": "loss", "category": "service", "when": {"profit_90d": {"lt": 0}},
                            "episode": "client_id", "then": [{"tag": "loss-making"}]}]}  # fmt: skip
        b = both(rules, s, "2026-01-10", "2026-03-31")
        assert days_of(b, "loss") == ["2026-02-21"]  # 1000 - 600 * 51 / 30 < 0


def test_a_reassigned_client_is_evaluated_for_a_rule_whose_episode_is_its_manager() -> None:
    """Found in review: a hand-over task per new manager (`episode: manager_id`) was never planned for the
    manager a release gave the client to: the sweep looked for the manager in conditions only."""
    with fresh() as s:
        crm(s, touches=[{"id": "t1", "client_id": "c1", "at": "2025-12-01T10:00"}])
        rules = {"rules": [
            {"id": "forgotten", "kind": "forgotten", "after": "30d"},
            {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "7d",
             "then": [{"reassign": {"strategy": "least_loaded"}}]},
            {"id": "handover", "category": "service", "when": {"status": "active"}, "episode": "manager_id",
             "then": [{"create_task": {"title": "Introduce yourself to {client.name}"}}]}]}  # fmt: skip
        b = both(rules, s, "2026-01-01", "2026-01-20")
        assert [(d.isoformat(), a.assignee_id) for d, a in b.new if a.rule == "handover"] == [  # type: ignore[attr-defined]
            ("2026-01-01", "m1"), ("2026-01-08", "m2")]  # fmt: skip


@pytest.mark.parametrize("zone", ["UTC", "Asia/Tokyo"])
def test_contract_progress_crosses_its_constants_on_their_days_without_daily_plans(zone: str) -> None:
    """Progress grows with time alone: each leaf is due on the day the progress reaches its constant, and
    the client is not planned on the days between (it was, every day, while a contract ran)."""
    when = [("third", {"contract_progress": {"gte": 0.3}}), ("past-half", {"contract_progress": {"gt": 0.5}}),
            ("band", {"contract_progress": {"between": [0.6, 0.7]}}),
            ("late", {"not": {"contract_progress": {"lt": "0.9"}}})]
    rules = {"timezone": zone, "rules": [{"id": r, "when": w, "then": [{"tag": r}]} for r, w in when]}  # fmt: skip
    with fresh() as s:
        crm(s, contracts=[{"id": "k1", "client_id": "c1", "starts_at": "2026-01-01T10:00",
                           "ends_at": "2026-11-01T22:00"}])
        evaluated: list[int] = []
        real = retainer.Engine._evaluate

        def counting(self: Any, a: Any, ids: Any, *rest: Any) -> Any:
            evaluated.append(-1 if ids is None else len(ids))
            return real(self, a, ids, *rest)

        b = both(rules, s, "2026-02-01", "2026-10-31")
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(retainer.Engine, "_evaluate", counting)
            backtest(retainer.load_rules(rules), s, date(2026, 2, 1), date(2026, 10, 31))
    first = {r: days_of(b, r) for r, _ in when}
    assert all(len(d) == 1 for d in first.values()), first
    assert first["third"][0] < first["past-half"][0] < first["band"][0] < first["late"][0]
    assert sum(1 for n in evaluated if n > 0) < 20  # a few wakes around each constant, not 270 daily plans


def _priority_crm(s: retainer.Store) -> None:
    s.add(managers=[{"id": "m1"}],
          clients=[{"id": "c1", "manager_id": "m1", "created_at": "2025-01-01", "cost_to_serve": 100}],
          invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-01-05", "amount": 1000,
                     "paid_at": "2026-01-06"}])  # fmt: skip


_PRIORITY_RULES = [
    {"id": "keep", "category": "retention", "when": {"status": "active"},
     "then": [{"create_task": {"title": "Keep {client.id}"}}]},
    {"id": "sell", "category": "development", "when": {"status": "active"},
     "then": [{"propose_offer": {"offer": "premium", "amount": 10}}]},
]  # fmt: skip


def _counting(evaluated: list[int]) -> Any:
    real = retainer.Engine._evaluate

    def counting(self: Any, a: Any, ids: Any, *rest: Any) -> Any:
        evaluated.append(-1 if ids is None else len(ids))
        return real(self, a, ids, *rest)

    return counting


def test_a_priority_hold_is_counted_every_step_without_planning_the_client() -> None:
    """Retention first: the up-sell is held back every night while the retention task is open (no outcome
    in a backtest). Nothing about the client changes, so the sweep counts the hold without planning it (it
    planned it nightly)."""
    rules = {"rules": _PRIORITY_RULES, "policies": {"priority": ["retention", "development"]}}
    with fresh() as s:
        _priority_crm(s)
        b = both(rules, s, "2026-02-01", "2026-05-31")
        evaluated: list[int] = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(retainer.Engine, "_evaluate", _counting(evaluated))
            backtest(retainer.load_rules(rules), s, date(2026, 2, 1), date(2026, 5, 31))
    assert b.suppressed[("sell", "priority")] == 120  # every night, as re-planning counts it
    assert evaluated[0] == -1 and not [n for n in evaluated[1:] if n > 0]


def test_a_priority_hold_behind_a_message_sent_ends_the_next_day_in_a_sweep_too() -> None:
    """A retention e-mail sent on the first night is history on the second: the up-sell goes then, whether the
    sweep plans the client again or re-planning does (the hold is not steady: time alone ends it)."""
    keep = {**_PRIORITY_RULES[0], "then": [{"notify_client": {"channel": "email", "template": "hello"}}]}
    rules = {"rules": [keep, _PRIORITY_RULES[1]], "policies": {"priority": ["retention", "development"]}}
    with fresh() as s:
        _priority_crm(s)
        b = both(rules, s, "2026-02-01", "2026-02-28")
    assert b.suppressed[("sell", "priority")] == 1
    assert [(d.isoformat(), x.rule) for d, x in b.new] == [("2026-02-01", "keep"), ("2026-02-02", "sell")]


def test_a_priority_hold_that_a_timed_guard_can_take_over_is_planned_every_step() -> None:
    """With no_development_for_unprofitable, the up-sell held for priority is held for unprofitable from
    the day January's invoice leaves the 90-day window (profit = 0 - 300): time alone changes the reason,
    so the client is planned every step."""
    rules = {"rules": _PRIORITY_RULES, "policies": {"priority": ["retention", "development"],
                                                    "no_development_for_unprofitable": {"window": "90d"}}}  # fmt: skip
    with fresh() as s:
        _priority_crm(s)
        b = both(rules, s, "2026-02-01", "2026-05-31")
    assert b.suppressed[("sell", "priority")] > 0 and b.suppressed[("sell", "unprofitable")] > 0
    assert b.suppressed[("sell", "priority")] + b.suppressed[("sell", "unprofitable")] == 120


def test_a_cap_window_sliding_lets_a_held_back_action_through() -> None:
    with fresh() as s:
        crm(
            s,
            touches=[
                {"id": "t1", "client_id": "c1", "at": "2026-01-20T10:00", "direction": "outbound", "kind": "email"}
            ],
            invoices=[
                {"id": "i1", "client_id": "c1", "issued_at": "2026-01-01", "due_at": "2026-01-10", "amount": 500}
            ],
        )
        rules = {"rules": [{"id": "debtor", "kind": "debtor", "steps": [
                     {"after": "15d", "notify_client": {"channel": "email", "template": "reminder"}}]}],
                 "policies": {"caps": [{"channel": "email", "limit": 1, "per": "14d"}]}}  # fmt: skip
        b = both(rules, s, "2026-01-20", "2026-02-20")
        assert days_of(b, "debtor") == ["2026-02-03"]  # held back (cap) from 25 January until the touch leaves
        assert b.suppressed[("debtor", "cap")] == 9  # counted every night it was held back, as in replan


def test_a_population_feature_change_wakes_the_clients_it_moves() -> None:
    with fresh() as s:
        s.add(managers=[{"id": "m1"}], clients=[{"id": f"c{k}", "manager_id": "m1"} for k in range(3)],
              invoices=[{"id": "i0", "client_id": "c0", "issued_at": "2026-01-01", "amount": 100},
                        {"id": "i1", "client_id": "c1", "issued_at": "2026-01-01", "amount": 50},
                        {"id": "i2", "client_id": "c2", "issued_at": "2026-02-10", "amount": 1000}])  # fmt: skip
        rules = {"rules": [{"id": "top", "when": {"abc_class": "C"}, "episode": "client_id",
                            "then": [{"tag": "small"}]}]}  # fmt: skip
        b = both(rules, s, "2026-01-15", "2026-03-01")
        assert [(d.isoformat(), a.client_id) for d, a in b.new] == [("2026-02-10", "c1")]  # C once c2 buys


def test_manager_level_rules_are_swept_too() -> None:
    with fresh() as s:
        crm(s, tasks=[{"id": f"k{n}", "client_id": "c1", "manager_id": "m1", "created_at": "2026-01-01",
                       "due_at": f"2026-01-{10 + n}"} for n in range(3)])  # fmt: skip
        rules = {"rules": [{"id": "overdue", "kind": "overdue_tasks", "count": 2, "after": "3d", "every": "week"}]}
        b = both(rules, s, "2026-01-05", "2026-02-01")
        assert days_of(b, "overdue") == ["2026-01-14", "2026-01-19", "2026-01-26"]


def test_unknown_method() -> None:
    with fresh() as s, pytest.raises(RetainerError, match="sweep or replan"):
        backtest(
            retainer.load_rules({"rules": [{"id": "f", "kind": "forgotten", "after": "1d"}]}),
            s,
            date(2026, 1, 1),
            date(2026, 1, 2),
            method="fast",
        )


def wakes_on(store: retainer.Store, day: str, when: dict[str, Any]) -> dict[str, date]:
    """When each client of a one-rule set is due again after a full plan as of `day`."""
    rules = retainer.load_rules({"rules": [{"id": "r", "when": when, "then": [{"tag": "x"}]}]})
    engine = retainer.Engine(rules, store)
    _, frame, _ = engine._plan(engine.as_of(day), None)
    return Wakes(rules).compute(frame)


def test_an_unmet_all_of_waits_for_the_last_child_that_blocks_it() -> None:
    """Past the release threshold but with a task due in April: the client is not woken on the threshold
    date (all of needs the task to pass too), and a client that holds is woken when the first child can
    flip. Wakes are what the sweep saves by; the result is the same either way (the test above)."""
    with fresh() as s:
        s.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}, {"id": "c2", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-01T10:00"},
                       {"id": "t2", "client_id": "c2", "at": "2025-11-01T10:00"}],
              tasks=[{"id": "k1", "client_id": "c1", "manager_id": "m1", "created_at": "2026-01-01",
                      "due_at": "2026-04-01T09:00"},
                     {"id": "k2", "client_id": "c2", "manager_id": "m1", "created_at": "2025-11-01",
                      "due_at": "2026-04-01T09:00"}])  # fmt: skip
        both_children = [{"days_since_activity": {"gte": 60}}, {"has_future_task": False}]
        wakes = wakes_on(s, "2026-02-01", {"all": both_children})
        assert wakes["c1"] == date(2026, 4, 2)  # the task stops being future; not 2 March (the counter)
        wakes = wakes_on(s, "2026-02-01", {"any": both_children})
        assert wakes["c1"] == date(2026, 3, 2)  # any of, unmet: the first child that can flip
        assert "c2" not in wakes  # any of, met by the counter alone (92 days): held for good


# ------------------------------------------------------------------ facts that only postpone


FORGOTTEN_30 = {"rules": [{"id": "forgotten", "kind": "forgotten", "after": "30d"}]}


def test_facts_that_only_postpone_are_known_per_rule_set() -> None:
    """With forgotten and release, a touch, a new task or an invoice can only restart a clock or add a
    future task; a task done can remove the future task that holds a release back."""
    rules = retainer.load_rules({"rules": [
        {"id": "forgotten", "kind": "forgotten", "after": "60d"},
        {"id": "release", "kind": "release", "forgotten_rule": "forgotten", "grace": "14d"}]})  # fmt: skip
    safe = Quiet(rules).safe
    assert {("touches", "at"), ("tasks", "created_at"), ("invoices", "paid_at")} <= safe
    assert ("tasks", "done_at") not in safe and ("tasks", "due_at") not in safe
    unpaid = retainer.load_rules({"rules": [{"id": "u", "kind": "unpaid", "after": "14d"}]})
    assert Quiet(unpaid).safe == frozenset()  # rules over invoices: rows come and go with facts


def test_every_virtual_field_names_the_time_field_it_reads() -> None:
    """`Quiet` reads a filter on a virtual field as a filter on its source: a virtual field added without
    one would let a fact that changes it pass for one that only postpones."""
    assert set(VIRTUAL_SOURCES) == {(e, n) for e, names in VIRTUAL_FIELDS.items() for n in names}
    assert all(f is None or f in TIME_FIELDS[e] for (e, _n), f in VIRTUAL_SOURCES.items())


def test_a_client_that_matched_is_evaluated_for_a_touch() -> None:
    """Forgotten (a duplicate every night), then touched: the clock restarts, and the client must be
    planned again 30 days after the touch, though the touch alone only postpones."""
    with fresh() as s:
        crm(s, touches=[{"id": "t1", "client_id": "c1", "at": "2025-10-01T10:00"},
                        {"id": "t2", "client_id": "c1", "at": "2026-01-10T10:00"}])  # fmt: skip
        b = both(FORGOTTEN_30, s, "2025-12-01", "2026-03-15")
        assert days_of(b, "forgotten") == ["2025-12-01", "2026-02-09"]


def test_a_client_never_active_is_evaluated_for_its_first_touch() -> None:
    """No activity and no created_at: nothing to count from, so no wake. Its first touch starts a clock."""
    with fresh() as s:
        s.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-10T10:00"}])  # fmt: skip
        b = both(FORGOTTEN_30, s, "2026-01-05", "2026-03-15")
        assert days_of(b, "forgotten") == ["2026-02-09"]


def test_a_fact_that_can_make_a_rule_hold_is_evaluated() -> None:
    """A task done empties `open_tasks`: that fact does not only postpone."""
    with fresh() as s:
        crm(s, tasks=[{"id": "k1", "client_id": "c1", "manager_id": "m1", "created_at": "2025-12-01",
                       "due_at": "2026-03-01", "done_at": "2026-02-01T10:00", "status": "done"}])  # fmt: skip
        rules = {"rules": [{"id": "idle", "when": {"open_tasks": 0}, "then": [{"tag": "idle"}]}]}
        b = both(rules, s, "2026-01-05", "2026-03-01")
        assert days_of(b, "idle") == ["2026-02-01"]


def test_a_first_activity_older_than_the_client_is_evaluated() -> None:
    """Found by review: a client never active counts from created_at (1 January). A task retainer made
    comes to light on 10 January with a done_at of 1 December: that is activity, older than the client,
    so the client is forgotten at once, though the fact that revealed it (a task created) only postpones
    for a client that was active before."""
    with fresh() as s:
        s.add(managers=[{"id": "m1", "supervisor_id": "boss"}, {"id": "boss"}],
              clients=[{"id": "c1", "manager_id": "m1", "created_at": "2026-01-01"}],
              tasks=[{"id": "k1", "client_id": "c1", "created_at": "2026-01-10T10:00", "done_at": "2025-12-01T10:00",
                      "status": "done", "source": "retainer"}])  # fmt: skip
        b = both(FORGOTTEN_30, s, "2026-01-05", "2026-02-15")
        assert days_of(b, "forgotten") == ["2026-01-10"]


def test_a_do_not_contact_client_is_refused_every_step_without_being_planned() -> None:
    """Forgotten and do_not_contact: a full run refuses it every night. The sweep counts the same refusals
    but plans the client only when something about it changes (here a touch, which restarts the clock)."""
    with fresh() as s:
        s.add(managers=[{"id": "m1"}],
              clients=[{"id": "c1", "manager_id": "m1", "contact_policy": "do_not_contact"},
                       {"id": "c2", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2025-10-01T10:00"},
                       {"id": "t2", "client_id": "c1", "at": "2026-01-20T10:00"},
                       {"id": "t3", "client_id": "c2", "at": "2025-10-01T10:00"}])  # fmt: skip
        rules = retainer.load_rules(FORGOTTEN_30)
        planned: list[list[str]] = []
        engine_plan = retainer.Engine._plan

        def spy(self: retainer.Engine, a: Any, ids: list[str] | None, *extra: Any, **kw: Any) -> Any:
            planned.append(ids or ["*"])
            return engine_plan(self, a, ids, *extra, **kw)

        retainer.Engine._plan = spy  # type: ignore[method-assign]
        try:
            b = backtest(rules, s, date(2026, 1, 1), date(2026, 3, 31), method="sweep")
        finally:
            retainer.Engine._plan = engine_plan  # type: ignore[method-assign]
        same(b, backtest(rules, s, date(2026, 1, 1), date(2026, 3, 31), method="replan"))
        # as of the end of each day: refused 1–19 January, touched on the 20th, refused again 19 February–31 March
        assert b.suppressed[("forgotten", "do_not_contact")] == 19 + 41
        assert sum("c1" in ids for ids in planned[1:]) == 2  # the touch, then the new threshold day


# ------------------------------------------------------------------ aggregates kept from step to step


def _specs(a: datetime) -> list[AggSpec]:
    """One of each kind the sweep keeps: a latest instant, counts and sums with filters on an instant that
    moves with as_of (due today or later, overdue, due within 3 days), windows, and a fixed instant."""
    day = datetime.combine(a.date(), time(0), tzinfo=UTC)
    return [
        AggSpec("touches", "max", "at", (Pred("direction", "eq", "inbound"),), "at"),
        AggSpec("tasks", "max", "done_at", (), "done_at"),
        AggSpec("tasks", "count", None, (Pred("is_open", "eq", True),)),
        AggSpec("tasks", "count", None, (Pred("is_open", "eq", True), Pred("due_at", "gte", day))),
        AggSpec("tasks", "min", "due_at", (Pred("is_open", "eq", True), Pred("due_at", "gte", day))),
        AggSpec("invoices", "sum", "outstanding", (Pred("outstanding", "gt", 0), Pred("due_at", "lt", a))),
        AggSpec("invoices", "sum", "amount", (), "issued_at", a - timedelta(days=30)),
        AggSpec("invoices", "sum", "amount", (), "issued_at", a - timedelta(days=60)),  # same shape, longer
        AggSpec("invoices", "min", "issued_at", (), "issued_at", a - timedelta(days=7)),
        AggSpec("touches", "count", None, (Pred("at", "gt", datetime(2026, 2, 1, tzinfo=UTC)),), "at"),
        AggSpec("tasks", "count", None, (Pred("is_open", "eq", True), Pred("due_at", "lt", a + timedelta(days=3)))),
    ]


@settings(SETTINGS, max_examples=100)
@given(crm=S.crms(), start=S.utc_instants(lo_days=-90, hi_days=-10), gaps=st.lists(
    st.sampled_from([timedelta(days=1), timedelta(days=1), timedelta(days=3), timedelta(days=7),
                     timedelta(hours=5), timedelta(hours=30)]),
    min_size=1, max_size=20), picks=st.lists(st.integers(0, 2**16), min_size=21, max_size=21))
def test_kept_aggregates_equal_the_stores(
    crm: dict[str, list[dict[str, Any]]], start: datetime, gaps: list[timedelta], picks: list[int]
) -> None:
    """`sweep.Kept` answers as the store does at every step, for any clients asked or for everyone, though
    it reads only the clients whose value can have moved since the last step."""
    steps = [start]
    for g in gaps:
        steps.append(steps[-1] + g)
    with fresh() as s:
        S.load(s, crm)
        everyone = [c.id for c in s.clients(datetime.max.replace(tzinfo=UTC))]
        kept = Kept(s, everyone, steps, [{}, *s.fact_steps(steps)])
        for k, a in enumerate(steps):
            kept.advance(k)
            # everyone at the first step and now and then later (a population feature, abc_class)
            some = [c for j, c in enumerate(everyone) if picks[k] >> (j % 16) & 1]
            ids = None if k == 0 or picks[k] % 5 == 0 else some
            got = kept.aggregate(_specs(a), a, ids)
            assert [dict(g) for g in got] == s.aggregate(_specs(a), a, ids), f"step {k}"


def test_a_kept_count_of_tasks_due_today_or_later_drops_the_day_after() -> None:
    """The due date passes at 05:00 on 10 February, in the step of 10 February (as of 10:00), yet the task
    is "due today or later" through that day: it leaves the count at the next step, whose bucket holds
    no fact of the client. The filter's moving instant says which earlier bucket to look in. A window's
    start moves the same way (an invoice 7 days old leaves `min issued_at within 7 days`)."""
    with fresh() as s:
        s.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
              tasks=[{"id": "k1", "client_id": "c1", "created_at": "2026-01-01", "due_at": "2026-02-10T05:00"}],
              invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-02-03T05:00", "due_at": "2026-03-01",
                         "amount": 10}])  # fmt: skip
        steps = [datetime(2026, 2, 8, 10, tzinfo=UTC) + timedelta(days=i) for i in range(5)]
        kept = Kept(s, ["c1"], steps, [{}, *s.fact_steps(steps)])
        counts = []
        for k, a in enumerate(steps):
            kept.advance(k)
            got = [dict(g) for g in kept.aggregate(_specs(a), a, None if k == 0 else ["c1"])]
            assert got == s.aggregate(_specs(a), a, None if k == 0 else ["c1"])
            counts.append((got[3].get("c1", 0), "c1" in got[8]))
        assert counts == [(1, True), (1, True), (1, False), (0, False), (0, False)]


def test_a_filter_on_a_fixed_date_is_not_a_moving_instant() -> None:
    """Found by review: `due_at < 2026-02-01` in a named feature was taken for a bound that moves with
    as_of, and the search for the day it passes a later due date ran until the year 3000."""
    with fresh() as s:
        s.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
              invoices=[{"id": "i1", "client_id": "c1", "issued_at": "2026-01-01", "due_at": "2026-03-01",
                         "amount": 10},
                        {"id": "i2", "client_id": "c1", "issued_at": "2026-01-07", "due_at": "2026-01-20",
                         "amount": 10}])  # fmt: skip
        rules = {
            "features": {"late": {"count": "invoices", "where": {"due_at": {"lt": "2026-02-01"}}}},
            "rules": [{"id": "r", "when": {"late": {"gte": 1}}, "then": [{"tag": "x"}]}],
        }
        b = both(rules, s, "2026-01-05", "2026-01-10")
        assert days_of(b, "r") == ["2026-01-07"]


def test_an_activity_revealed_late_by_its_task_keeps_the_silence_already_decided_in_a_sweep() -> None:
    """Found by the differential property: a task (retainer's: its creation is no activity) created on 18
    February but marked done on 30 November reveals
    an activity dated before the night that decided the client forgotten. Re-planning kept that night's episode
    (the silence from 30 November was reached by then); the sweep, which skipped the look-up for facts
    revealed in time order, gave the same silence a second task."""
    with fresh() as s:
        crm(s, tasks=[{"id": "k1", "client_id": "c1", "created_at": "2025-06-01T12:00:00Z", "status": "open"},
                      {"id": "k2", "client_id": "c1", "created_at": "2026-02-18T00:00:00Z", "status": "done",
                       "done_at": "2025-11-30T10:00:00Z", "source": "retainer"}])  # fmt: skip
        b = both(FORGOTTEN_30, s, "2026-02-01", "2026-03-15", "1w")
    assert [(d, x.key) for d, x in [(d.isoformat(), x) for d, x in b.new]] == [
        ("2026-02-01", "forgotten:c1:2025-06-01:create_task")]
