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
