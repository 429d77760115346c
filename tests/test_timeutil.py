"""Durations, the "after D" threshold, as_of and time zones (DESIGN §2 Time, §12)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retainer.model import Touch
from retainer.stores import Store
from retainer.timeutil import (
    Duration,
    DurationError,
    DurationTooLongError,
    add_durations,
    get_tz,
    parse_as_of,
    parse_duration,
    parse_instant,
)
from tests.conftest import engine_for

MSK = ZoneInfo("Europe/Moscow")


# ---------------------------------------------------------------- parsing durations


@pytest.mark.parametrize(
    ("text", "months", "days", "hours"),
    [
        ("45d", 0, 45, 0),
        ("6w", 0, 42, 0),
        ("2mo", 2, 0, 0),
        ("1y", 12, 0, 0),
        ("36h", 0, 0, 36),
        ("P60D", 0, 60, 0),
        ("PT36H", 0, 0, 36),
        ("P2W", 0, 14, 0),
        ("P1Y2M", 14, 0, 0),
        ("P1M10D", 1, 10, 0),
        (" 30d ", 0, 30, 0),
        (60, 0, 60, 0),
        (0, 0, 0, 0),
    ],
)
def test_parse_duration_forms(text: str | int, months: int, days: int, hours: int) -> None:
    d = parse_duration(text)
    assert (d.months, d.days, d.hours) == (months, days, hours)


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "60", "60x", "d", "-5d", "1.5d", "60 days", "P", "PT", "P1DT2H", "P1Y1H", "5m", True, -1, None, 1.5],
)
def test_parse_duration_rejects_invalid(bad: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("longest", ["100y", "1200mo", "36525d", "5217w", "876600h", "P100Y", "P36525D", 36525])
def test_a_duration_may_be_up_to_100_years(longest: str | int) -> None:
    assert parse_duration(longest).approx_days() <= 36525


@pytest.mark.parametrize(
    "too_long",
    ["101y", "1201mo", "36526d", "5218w", "876601h", "P100Y1D", "3000000d", "100000y", 10**20, "9" * 5000 + "d"],
)
def test_a_longer_duration_is_refused_as_too_long(too_long: str | int) -> None:
    """No date is that far from as_of: such a duration once passed and crashed the plan (OverflowError)."""
    with pytest.raises(DurationTooLongError, match="too long: at most 100 years"):
        parse_duration(too_long)
    assert issubclass(DurationTooLongError, DurationError)


def test_duration_error_is_a_value_error_with_a_hint() -> None:
    with pytest.raises(ValueError, match="45d"):
        parse_duration("sixty days")


def test_hour_and_calendar_durations_are_distinguished() -> None:
    assert parse_duration("36h").is_hours
    assert not parse_duration("2d").is_hours
    assert not parse_duration("1y").is_hours


def test_add_durations_adds_calendar_and_hour_parts() -> None:
    total = add_durations(parse_duration("60d"), parse_duration("14d"))
    assert (total.months, total.days, total.hours) == (0, 74, 0)
    mixed = add_durations(parse_duration("2mo"), parse_duration("3d"))
    assert (mixed.months, mixed.days) == (2, 3)
    both = add_durations(parse_duration("36h"), parse_duration("3d"))
    assert (both.months, both.days, both.hours) == (0, 3, 36)
    assert not both.is_hours


@pytest.mark.parametrize(
    ("start", "first", "then", "end"),
    [
        (date(2026, 1, 31), "30d", "1mo", date(2026, 4, 2)),  # forgotten Mar 2, a month of grace: Apr 2
        (date(2026, 1, 30), "30d", "1mo", date(2026, 4, 1)),
        (date(2026, 1, 31), "1mo", "1mo", date(2026, 3, 28)),  # forgotten Feb 28 (clamped), then Mar 28
        (date(2024, 2, 29), "1y", "1mo", date(2025, 3, 28)),  # forgotten Feb 28 2025
        (date(2026, 1, 31), "1mo", "14d", date(2026, 3, 14)),  # months first is the same thing
        (date(2026, 1, 31), "60d", "14d", date(2026, 4, 15)),
    ],
)
def test_a_threshold_extended_by_another_counts_the_second_from_the_end_of_the_first(
    start: date, first: str, then: str, end: date
) -> None:
    """A release's `grace` counts from the day the client became forgotten: one relativedelta put every
    month first, so a month of grace after `30d` was 28 days from Jan 31, and `1mo` twice was `2mo`."""
    total = add_durations(parse_duration(first), parse_duration(then))
    assert total.add_to_date(start) == end
    assert total.cutoff(end) == start and total.add_to_date(total.cutoff(end - timedelta(days=1))) < end


@given(st.sampled_from(["3d", "30d", "1w", "1mo", "2mo", "1y", "P1M2D"]), st.sampled_from(["0d", "14d", "1mo", "1y"]),
       st.dates(min_value=date(2000, 1, 1), max_value=date(2040, 12, 31)))  # fmt: skip
def test_an_extended_threshold_is_the_first_then_the_second(first: str, then: str, start: date) -> None:
    a, b = parse_duration(first), parse_duration(then)
    total = add_durations(a, b)
    assert total.add_to_date(start) == b.add_to_date(a.add_to_date(start))
    end = total.add_to_date(start)
    c = total.cutoff(end)  # the latest start that reaches `end`: at or after this one
    assert c >= start and total.add_to_date(c) <= end < total.add_to_date(c + timedelta(days=1))


@pytest.mark.parametrize(
    ("event", "held"),
    [
        # 36h first: Nov 24 11:00 MSK lands on Nov 25 23:00 -> Nov 25 + 3 days = Nov 28 = as_of date
        (datetime(2026, 11, 24, 11, 0, tzinfo=MSK), True),
        # one hour later lands on Nov 26 00:00 -> Nov 29, not yet
        (datetime(2026, 11, 24, 12, 0, tzinfo=MSK), False),
    ],
)
def test_hours_plus_days_moves_the_event_by_hours_then_counts_local_days(event: datetime, held: bool) -> None:
    """A client's `forgotten_after: 36h` plus a release grace of `3d` (docs/decisions.md)."""
    both = add_durations(parse_duration("36h"), parse_duration("3d"))
    a = parse_as_of("2026-11-28", MSK)
    assert a.is_older(event, both) is held
    assert (event > a.window_start(both)) is not held


# ---------------------------------------------------------------- calendar arithmetic


@pytest.mark.parametrize(
    ("start", "dur", "expected"),
    [
        (date(2026, 1, 31), "1mo", date(2026, 2, 28)),
        (date(2024, 1, 31), "1mo", date(2024, 2, 29)),  # leap year
        (date(2026, 1, 30), "1mo", date(2026, 2, 28)),
        (date(2026, 3, 31), "1mo", date(2026, 4, 30)),
        (date(2025, 12, 31), "2mo", date(2026, 2, 28)),
        (date(2024, 2, 29), "1y", date(2025, 2, 28)),
        (date(2024, 2, 29), "4y", date(2028, 2, 29)),
        (date(2026, 1, 1), "60d", date(2026, 3, 2)),
        (date(2026, 1, 1), "6w", date(2026, 2, 12)),
    ],
)
def test_add_to_date_uses_calendar_months(start: date, dur: str, expected: date) -> None:
    assert parse_duration(dur).add_to_date(start) == expected


@pytest.mark.parametrize(
    ("as_of", "dur", "expected_cutoff"),
    [
        # Jan 29, 30 and 31 + 1mo all clamp to Feb 28: all are a month old on Feb 28
        (date(2026, 2, 28), "1mo", date(2026, 1, 31)),
        (date(2026, 2, 27), "1mo", date(2026, 1, 27)),
        (date(2026, 3, 1), "1mo", date(2026, 2, 1)),
        (date(2026, 3, 30), "1mo", date(2026, 2, 28)),
        (date(2024, 2, 29), "1mo", date(2024, 1, 31)),
        (date(2024, 2, 28), "1mo", date(2024, 1, 28)),
        (date(2025, 2, 28), "1y", date(2024, 2, 29)),
        (date(2026, 3, 2), "60d", date(2026, 1, 1)),
        (date(2026, 3, 2), "0d", date(2026, 3, 2)),
    ],
)
def test_cutoff_is_the_latest_date_that_is_old_enough(as_of: date, dur: str, expected_cutoff: date) -> None:
    d = parse_duration(dur)
    assert d.cutoff(as_of) == expected_cutoff


@pytest.mark.parametrize("dur", ["1mo", "2mo", "1y", "45d", "P1M3D"])
def test_cutoff_agrees_with_the_threshold_definition_for_every_day_of_a_leap_year(dur: str) -> None:
    d = parse_duration(dur)
    for n in range(366 + 31):
        as_of = date(2024, 1, 1) + timedelta(days=n)
        c = d.cutoff(as_of)
        assert d.add_to_date(c) <= as_of, (dur, as_of, c)
        assert d.add_to_date(c + timedelta(days=1)) > as_of, (dur, as_of, c)


@given(start=st.dates(date(1901, 1, 1), date(2998, 1, 1)), days=st.integers(0, 3000), weeks=st.booleans())
def test_days_alone_take_plain_date_arithmetic_with_the_same_answers(start: date, days: int, weeks: bool) -> None:
    """Durations of days (or weeks) skip relativedelta: the date, and the cutoff, are the ones it gives."""
    from dateutil.relativedelta import relativedelta

    d = parse_duration(f"{days // 7}w" if weeks else f"{days}d")
    n = d.days
    assert d.add_to_date(start) == start + relativedelta(days=n)
    c = d.cutoff(start)
    assert c + relativedelta(days=n) <= start < c + timedelta(days=1) + relativedelta(days=n)


# ---------------------------------------------------------------- the "after D" threshold


@pytest.mark.parametrize(("event_day", "held"), [(date(2026, 1, 1), True), (date(2026, 1, 2), False),
                                                 (date(2025, 12, 31), True)])
def test_after_holds_when_event_date_plus_d_reaches_as_of_date(event_day: date, held: bool) -> None:
    a = parse_as_of("2026-03-02", UTC)
    # the time of day of the event does not matter for day durations
    for hh in (0, 12, 23):
        event = datetime(event_day.year, event_day.month, event_day.day, hh, 59, tzinfo=UTC)
        assert a.is_older(event, parse_duration("60d")) is held


def test_after_with_months_at_month_end() -> None:
    two_months = parse_duration("2mo")
    a = parse_as_of("2026-02-28", UTC)
    for day in (29, 30, 31):
        assert a.is_older(datetime(2025, 12, day, 10, tzinfo=UTC), two_months)
    assert not a.is_older(datetime(2026, 1, 1, tzinfo=UTC), two_months)
    assert not parse_as_of("2026-02-27", UTC).is_older(datetime(2025, 12, 28, 10, tzinfo=UTC), two_months)
    assert parse_as_of("2026-02-27", UTC).is_older(datetime(2025, 12, 27, 10, tzinfo=UTC), two_months)
    # leap year: Dec 31 2023 + 2mo = Feb 29 2024
    assert not parse_as_of("2024-02-28", UTC).is_older(datetime(2023, 12, 31, tzinfo=UTC), two_months)
    assert parse_as_of("2024-02-29", UTC).is_older(datetime(2023, 12, 31, tzinfo=UTC), two_months)


def test_hour_durations_compare_instants_not_dates() -> None:
    h36 = parse_duration("36h")
    a = parse_as_of("2026-03-02T12:00:00+00:00", UTC)
    assert a.is_older(datetime(2026, 3, 1, 0, 0, 0, tzinfo=UTC), h36)  # exactly 36h
    assert not a.is_older(datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC), h36)  # 35h59m59s
    # two calendar days apart but only 35 hours: not old enough
    b = parse_as_of("2026-03-02T10:00:00+00:00", UTC)
    assert not b.is_older(datetime(2026, 2, 28, 23, 0, tzinfo=UTC), h36)
    # same calendar day difference as a 1d duration would see, yet 36h holds
    assert parse_as_of("2026-03-02T23:00:00+00:00", UTC).is_older(datetime(2026, 3, 1, 11, 0, tzinfo=UTC), h36)


def test_window_start_is_consistent_with_after() -> None:
    a = parse_as_of("2026-03-31", UTC)
    since = a.window_start(parse_duration("30d"))
    # an event is within 30d exactly when it is not yet 30d old
    inside = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    outside = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    assert inside > since and not a.is_older(inside, parse_duration("30d"))
    assert not outside > since and a.is_older(outside, parse_duration("30d"))


# ---------------------------------------------------------------- as_of and time zones


def test_date_only_as_of_is_the_end_of_that_day_in_the_rule_time_zone() -> None:
    a = parse_as_of("2026-03-01", MSK)
    assert a.instant == datetime(2026, 3, 1, 20, 59, 59, tzinfo=UTC)
    assert a.date == date(2026, 3, 1)
    u = parse_as_of("2026-03-01", UTC)
    assert u.instant == datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    assert parse_as_of(date(2026, 3, 1), MSK).instant == a.instant


def test_as_of_with_time_and_offset_is_that_instant() -> None:
    a = parse_as_of("2026-03-01T10:00:00+03:00", UTC)
    assert a.instant == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
    # a naive as_of is wall-clock time in the rule set's zone
    assert parse_as_of("2026-03-01T10:00:00", MSK).instant == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
    assert parse_as_of(datetime(2026, 3, 1, 10, 0), MSK).instant == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)


def test_as_of_date_is_the_local_calendar_date() -> None:
    # 22:30 UTC on Mar 1 is already Mar 2 in Moscow
    a = parse_as_of("2026-03-01T22:30:00Z", MSK)
    assert a.date == date(2026, 3, 2)
    assert parse_as_of("2026-03-01T22:30:00Z", UTC).date == date(2026, 3, 1)


def test_naive_timestamps_are_read_in_the_given_zone() -> None:
    assert parse_instant("2026-03-01T10:00:00", MSK) == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
    assert parse_instant("2026-03-01T10:00:00", UTC) == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    # aware values keep their offset; Z is UTC
    assert parse_instant("2026-03-01T10:00:00+00:00", MSK) == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    assert parse_instant("2026-03-01T10:00:00Z", MSK) == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    # a date-only fact is the start of that day in the zone
    assert parse_instant("2026-03-01", MSK) == datetime(2026, 2, 28, 21, 0, tzinfo=UTC)
    assert parse_instant(date(2026, 3, 1), MSK) == datetime(2026, 2, 28, 21, 0, tzinfo=UTC)
    assert parse_instant(datetime(2026, 3, 1, 10, 0), MSK) == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)


def test_model_reads_naive_timestamps_in_the_validation_zone() -> None:
    row = {"id": "t1", "client_id": "c1", "at": "2026-03-01T10:00:00"}
    assert Touch.model_validate(row, context={"tz": MSK}).at == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
    assert Touch.model_validate(row).at == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def test_get_tz() -> None:
    assert get_tz("UTC") is UTC
    assert get_tz("utc") is UTC
    assert get_tz("Europe/Moscow") == MSK
    with pytest.raises(ValueError, match="Mars/Base"):
        get_tz("Mars/Base")


@pytest.mark.parametrize(("zone", "message"), [
    ("Mars/Base", "unknown time zone 'Mars/Base'"),
    (None, "timezone must be a zone name or a tzinfo, not None: pass the rule set's"),  # was the machine's zone
])
def test_open_store_needs_a_known_zone(zone: str | None, message: str) -> None:
    import retainer

    with pytest.raises(retainer.ArgumentError, match=message):
        retainer.open_store("memory://", timezone=zone)  # type: ignore[arg-type]


def test_duration_text_round_trips() -> None:
    assert str(parse_duration("2mo")) == "2mo"
    assert str(parse_duration("P60D")) == "P60D"
    assert parse_duration("60d") == Duration(days=60, text="60d")


# ---------------------------------------------------------------- across midnight: Moscow vs UTC


def _midnight_facts(store: Store) -> None:
    # 23:30 and 00:30 Moscow time, one hour apart but on two Moscow dates; both on Jan 1 in UTC
    store.add(
        managers=[{"id": "m1"}],
        clients=[{"id": "late", "manager_id": "m1"}, {"id": "early", "manager_id": "m1"}],
        touches=[
            {"id": "t1", "client_id": "late", "at": "2026-01-01T23:30:00+03:00"},
            {"id": "t2", "client_id": "early", "at": "2026-01-02T00:30:00+03:00"},
        ],
    )


def _rules(tz: str) -> str:
    return f"version: 1\ntimezone: {tz}\nrules:\n  - id: forgotten\n    kind: forgotten\n    after: 60d\n"


def test_midnight_touch_in_moscow(store: Store) -> None:
    _midnight_facts(store)
    plan = engine_for(_rules("Europe/Moscow"), store).plan("2026-03-02")
    assert {a.client_id for a in plan.actions} == {"late"}
    (act,) = plan.actions
    assert act.evidence["days_since_activity"] == 60
    assert act.evidence["episode"] == "2026-01-01"
    # a day later the 00:30 touch (Jan 2 in Moscow) is 60 days old as well
    plan2 = engine_for(_rules("Europe/Moscow"), store).plan("2026-03-03")
    assert {a.client_id for a in plan2.actions} == {"late", "early"}
    early = next(a for a in plan2.actions if a.client_id == "early")
    assert early.evidence["episode"] == "2026-01-02"


def test_midnight_touch_in_utc(store: Store) -> None:
    _midnight_facts(store)
    plan = engine_for(_rules("UTC"), store).plan("2026-03-02")
    assert {a.client_id for a in plan.actions} == {"late", "early"}
    assert {a.evidence["episode"] for a in plan.actions} == {"2026-01-01"}
    assert not engine_for(_rules("UTC"), store).plan("2026-03-01").actions


def test_date_only_as_of_includes_facts_of_that_local_day(store: Store) -> None:
    # a touch at 23:30 Moscow on Mar 2 counts in a plan "as of 2026-03-02" (Moscow)
    store.add(
        managers=[{"id": "m1"}],
        clients=[{"id": "c1", "manager_id": "m1"}],
        touches=[
            {"id": "t1", "client_id": "c1", "at": "2026-01-01T12:00:00+03:00"},
            {"id": "t2", "client_id": "c1", "at": "2026-03-02T23:30:00+03:00"},
        ],
    )
    eng = engine_for(_rules("Europe/Moscow"), store)
    assert eng.plan("2026-03-02").actions == []
    # one second before that touch, the client is forgotten
    assert [a.client_id for a in eng.plan("2026-03-02T23:29:59+03:00").actions] == ["c1"]


def test_naive_facts_in_a_store_opened_in_moscow() -> None:
    import retainer

    s = retainer.open_store("memory://", timezone="Europe/Moscow")
    s.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
          touches=[{"id": "t1", "client_id": "c1", "at": "2026-01-02T00:30:00"}])
    t = s.get("touches", "t1")
    assert t is not None and t.at == datetime(2026, 1, 1, 21, 30, tzinfo=UTC)  # type: ignore[attr-defined]
    eng = engine_for(_rules("Europe/Moscow"), s)
    assert eng.plan("2026-03-02").actions == []
    assert [a.client_id for a in eng.plan("2026-03-03").actions] == ["c1"]


def test_hour_threshold_in_a_forgotten_rule_compares_instants(store: Store) -> None:
    store.add(managers=[{"id": "m1"}], clients=[{"id": "c1", "manager_id": "m1"}],
              touches=[{"id": "t1", "client_id": "c1", "at": "2026-03-01T10:00:00Z"}])
    rules = "version: 1\nrules:\n  - id: forgotten\n    kind: forgotten\n    after: 36h\n"
    eng = engine_for(rules, store)
    assert eng.plan("2026-03-02T21:59:59Z").actions == []
    assert [a.client_id for a in eng.plan("2026-03-02T22:00:00Z").actions] == ["c1"]
    assert [a.client_id for a in eng.plan("2026-03-02").actions] == ["c1"]  # end of the day
    assert eng.plan("2026-03-02T12:00:00Z").actions == []  # a later date but not 36 hours


@pytest.mark.parametrize("text", ["2026-03-01", "20260301", "2026-W09-7", " 2026-03-01 "])
def test_every_iso_spelling_of_a_date_means_the_end_of_that_day(text: str) -> None:
    """`20260301` was read as an instant, the START of the day: facts of that day were left out."""
    a = parse_as_of(text, MSK)
    assert a.instant == datetime(2026, 3, 1, 23, 59, 59, tzinfo=MSK)
    assert parse_as_of("2026-03-01T00:00", MSK).instant == datetime(2026, 3, 1, tzinfo=MSK)


def test_a_store_opened_without_a_zone_under_rules_in_another_zone_says_so() -> None:
    """DESIGN §5's own example opens the store without `timezone=`: a call at 22:30 on Dec 31 (Moscow
    time, written without an offset) was read as UTC, so Jan 1, and the task came a day late, silently."""
    import retainer

    rules = retainer.load_rules({"version": 1, "timezone": "Europe/Moscow",
                                 "rules": [{"id": "f", "kind": "forgotten", "after": "60d"}]})  # fmt: skip
    facts = {"managers": [{"id": "m1"}], "clients": [{"id": "c1", "manager_id": "m1"}],
             "touches": [{"id": "t1", "client_id": "c1", "at": "2025-12-31T22:30"}]}  # fmt: skip
    plain = retainer.open_store("memory://")
    plain.add(**facts)
    (warning,) = retainer.Engine(rules, plain).plan("2026-03-01").warnings
    assert "opened without a timezone" in warning and "Europe/Moscow" in warning
    for tz in ("UTC", "Europe/Moscow"):  # given: whatever it is, the caller chose it
        chosen = retainer.open_store("memory://", timezone=tz)
        chosen.add(**facts)
        assert retainer.Engine(rules, chosen).plan("2026-03-01").warnings == []
    utc_rules = retainer.load_rules({"version": 1, "rules": [{"id": "f", "kind": "forgotten", "after": "60d"}]})
    assert retainer.Engine(utc_rules, plain).plan("2026-03-01").warnings == []


def test_a_day_whose_last_hour_repeats_ends_at_its_second_end() -> None:
    """Asia/Almaty went from UTC+6 to UTC+5 at midnight after 2024-02-29: 23:00-24:00 happened twice. A touch
    at the second 23:30 is dated Feb 29, so the day-only as_of 2024-02-29 must include it."""
    almaty = get_tz("Asia/Almaty")
    touch = datetime(2024, 2, 29, 23, 30, tzinfo=almaty).replace(fold=1)
    a = parse_as_of("2024-02-29", almaty)
    assert touch.astimezone(UTC) <= a.instant and a.instant == datetime(2024, 2, 29, 18, 59, 59, tzinfo=UTC)
    assert parse_as_of("2026-03-01", MSK).instant == datetime(2026, 3, 1, 20, 59, 59, tzinfo=UTC)  # no fold: as before
