from __future__ import annotations

import datetime as dt

import pytest

from margo_lite import schedule


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (1.5, 1.5),
        ("45", 45.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1d", 86400.0),
        (" 2M ", 120.0),
    ],
)
def test_durations(value, seconds):
    assert schedule.parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "5x", "m5", "1h 30m", "-5", True, None, [], "5m5"])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        schedule.parse_duration(value)


SAT_23 = dt.datetime(2026, 11, 28, 23, 0)  # a Saturday
SUN_03 = dt.datetime(2026, 11, 29, 3, 59)
SUN_04 = dt.datetime(2026, 11, 29, 4, 0)
MON_12 = dt.datetime(2026, 11, 30, 12, 0)


def test_weekly_window_wraps_across_days():
    window = schedule.parse_window("Sat 22:00-Sun 04:00")
    assert window.contains(SAT_23)
    assert window.contains(SUN_03)
    assert not window.contains(SUN_04)
    assert not window.contains(MON_12)


def test_weekly_window_wraps_across_week_end():
    window = schedule.parse_window("Sun 22:00-Mon 02:00")
    assert window.contains(dt.datetime(2026, 11, 29, 23, 0))
    assert window.contains(dt.datetime(2026, 11, 30, 1, 0))
    assert not window.contains(MON_12)


def test_daily_window_across_midnight():
    window = schedule.parse_window("22:00-06:00")
    assert window.contains(SAT_23)
    assert window.contains(SUN_03)
    assert not window.contains(MON_12)


def test_dated_window():
    window = schedule.parse_window("2026-11-28T22:00-2026-11-29T04:00")
    assert window.contains(SAT_23)
    assert not window.contains(MON_12)


@pytest.mark.parametrize(
    "text",
    [
        "24:00-01:00",
        "10:00-10:00",
        "Sat 22:00",
        "Foo 1:00-Bar 2:00",
        "2026-11-29T04:00-2026-11-28T22:00",
        "2026-02-30T01:00-2026-03-01T01:00",
    ],
)
def test_bad_windows(text):
    with pytest.raises(ValueError):
        schedule.parse_window(text)


def test_polling_allowed_respects_hours_and_downtime():
    hours = (schedule.parse_daily_window("06:00-22:00"),)
    downtime = (schedule.parse_window("Mon 11:00-Mon 13:00"),)
    assert not schedule.polling_allowed(hours, (), SAT_23)
    assert schedule.polling_allowed(hours, (), MON_12)
    assert not schedule.polling_allowed(hours, downtime, MON_12)
    assert schedule.polling_allowed((), (), SUN_03)


# --- when to poll next ------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_resets_on_success():
    backoff = schedule.Backoff(base=60, cap=900)
    waits = []
    for _ in range(7):
        backoff = backoff.failed()
        waits.append(backoff.delay())
    assert waits == [120, 240, 480, 900, 900, 900, 900]
    assert backoff.succeeded().delay() == 60
    assert backoff.succeeded().failures == 0
    assert schedule.Backoff(base=60, cap=900).delay() == 60


def test_backoff_never_waits_less_than_the_interval_and_survives_many_failures():
    backoff = schedule.Backoff(base=600, cap=300)
    for _ in range(2000):
        backoff = backoff.failed()
    assert backoff.delay() == 600
    assert schedule.Backoff(base=1, cap=30, failures=10_000).delay() == 30


def test_backoff_is_immutable():
    backoff = schedule.Backoff()
    backoff.failed()
    assert backoff.failures == 0
    with pytest.raises(AttributeError):
        backoff.failures = 3  # type: ignore[misc]


@pytest.mark.parametrize(("rand", "seconds"), [(0.0, 54.0), (0.5, 60.0), (0.999999, 66.0)])
def test_jitter_spreads_within_the_fraction(rand, seconds):
    assert schedule.jittered(60, 0.1, rand) == pytest.approx(seconds, abs=1e-3)


NOON = dt.datetime(2026, 11, 25, 12, 0)  # a Wednesday


def test_next_poll_is_the_interval_or_the_backoff():
    ok = schedule.Backoff(base=60, cap=900)
    assert schedule.next_poll(NOON, interval=60, jitter=0, backoff=ok) == NOON + dt.timedelta(
        seconds=60
    )
    failing = ok.failed().failed()
    assert schedule.next_poll(NOON, interval=60, jitter=0, backoff=failing) == NOON + dt.timedelta(
        seconds=240
    )


def test_next_poll_waits_for_polling_hours_and_skips_downtime():
    hours = (schedule.parse_daily_window("06:00-22:00"),)
    late = dt.datetime(2026, 11, 25, 21, 59, 30)
    due = schedule.next_poll(
        late, interval=60, jitter=0.1, backoff=schedule.Backoff(), hours=hours, rand=0.5
    )
    # 22:00:00 falls outside; the next morning 06:00, plus a spread of 3 s (0.5 * 0.1 * 60).
    assert due == dt.datetime(2026, 11, 26, 6, 0, 3)
    downtime = (schedule.parse_window("Wed 12:00-Wed 14:00"),)
    due = schedule.next_poll(
        NOON, interval=60, jitter=0, backoff=schedule.Backoff(), downtime=downtime
    )
    assert due == dt.datetime(2026, 11, 25, 14, 0)


def test_next_poll_is_none_when_polling_is_never_allowed():
    hours = (schedule.parse_daily_window("06:00-22:00"),)
    downtime = (schedule.parse_daily_window("05:00-23:00"),)
    never = dict(hours=hours, downtime=downtime)
    assert (
        schedule.next_poll(NOON, interval=60, jitter=0, backoff=schedule.Backoff(), **never) is None
    )
