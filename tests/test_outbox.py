"""The durable status outbox: order, outages, crashes, overflow, rejections."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from margo_lite.config import WosConfig
from margo_lite.outbox import BACKOFF, MAX_REJECTIONS, Outbox
from margo_lite.statestore import StateStore
from margo_lite.valueclass import replace
from margo_lite.wos import WosClient, status_body
from tests.conftest import ROOT
from tests.support.wait import wait_for
from tests.support.wos import (
    CLIENT_ID,
    clean,
    secret_free_logs,  # noqa: F401 (autouse fixture)
    simulator,
    write_secret,
)

STATES = ("Installing", "Installed", "Removing", "Removed")


def report(deployment: str, step: int) -> dict:
    """A report whose component name carries its step number, to check order on arrival."""
    return status_body(
        deployment, STATES[step % len(STATES)], None, [(f"step-{step}", "Installing")], "lowercase"
    )


def steps(bodies: list[dict]) -> list[int]:
    return [int(b["components"][0]["name"].split("-")[1]) for b in bodies]


def client_for(sim, tmp_path: Path) -> WosClient:
    cfg = WosConfig(
        url=sim.url,
        timeout=5.0,
        token_url=sim.token_url,
        client_id=CLIENT_ID,
        client_secret_file=str(write_secret(tmp_path)),
    )
    return WosClient(cfg, "gw-test", tmp_path / "state")


def drain(box: Outbox, client: WosClient, start: float = 1e6) -> None:
    """Flush until empty, with `now` past any backoff; bounded."""
    for i in range(100):
        if not len(box):
            return
        box.flush(client, now=start + i * 1000)
    raise AssertionError(f"outbox did not drain: {len(box)} left")


# --- backoff ---------------------------------------------------------------------------------


def test_backoff_is_exponential_with_jitter_and_cap():
    b = replace(BACKOFF, cap=60)
    delays = []
    for _ in range(8):
        b = b.failed()
        delays.append((b.spread(0.0), b.spread(0.999999)))
    assert [low for low, _ in delays] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert [round(high) for _, high in delays] == [2, 4, 8, 16, 32, 60, 60, 60]
    assert replace(BACKOFF, failures=10_000).spread(1.0) == 300  # no overflow, capped


# --- durability and order --------------------------------------------------------------------


def test_reports_survive_a_new_outbox_in_order(tmp_path):
    store = StateStore(tmp_path)
    box = Outbox(store, 100)
    for step in range(5):
        box.add(f"dep-{step % 2}", report(f"dep-{step % 2}", step))
    again = Outbox(StateStore(tmp_path), 100)
    assert len(again) == 5
    assert [d for d, _ in again.pending()] == ["dep-0", "dep-1", "dep-0", "dep-1", "dep-0"]
    assert steps([b for _, b in again.pending()]) == [0, 1, 2, 3, 4]


def test_wos_down_through_50_transitions_then_up(tmp_path):
    deployments = [f"dep-{n}" for n in range(5)]
    with simulator() as sim, client_for(sim, tmp_path) as client:
        box = Outbox(StateStore(tmp_path / "state"), 1000)
        sim.fault = "down"
        now = 0.0
        for step in range(50):
            box.add(deployments[step % 5], report(deployments[step % 5], step))
            result = box.flush(client, now=now)
            assert result.delivered == 0
            now += 1.0
        assert len(box) == 50 and sim.statuses() == []
        sim.fault = None
        drain(box, client)
        for n, deployment in enumerate(deployments):
            assert steps(sim.statuses(deployment)) == list(range(n, 50, 5))


def test_overflow_merges_intermediate_reports_never_the_newest(tmp_path):
    deployments = [f"dep-{n}" for n in range(5)]
    with simulator() as sim, client_for(sim, tmp_path) as client:
        box = Outbox(StateStore(tmp_path / "state"), 12)
        sim.fault = "down"
        for step in range(50):
            box.add(deployments[step % 5], report(deployments[step % 5], step))
            box.flush(client, now=float(step))
            assert len(box) <= 12
        sim.fault = None
        drain(box, client)
        for n, deployment in enumerate(deployments):
            delivered = steps(sim.statuses(deployment))
            assert delivered == sorted(delivered)  # order kept
            assert delivered[-1] == 45 + n  # the newest state arrived
    assert len(StateStore(tmp_path / "state").names("outbox")) == 0


def test_limit_is_passed_rather_than_drop_a_newest_report(tmp_path):
    box = Outbox(StateStore(tmp_path), 2)
    for n in range(3):
        box.add(f"dep-{n}", report(f"dep-{n}", n))
    box.add("dep-0", report("dep-0", 3))
    assert [d for d, _ in box.pending()] == ["dep-1", "dep-2", "dep-0"]
    assert steps([b for _, b in box.pending()]) == [1, 2, 3]


_CHILD = """
import sys
from margo_lite.config import WosConfig
from margo_lite.outbox import Outbox
from margo_lite.statestore import StateStore
from margo_lite.wos import WosClient, status_body

state, url, acks = sys.argv[1:]
box = Outbox(StateStore(state), 1000)
client = WosClient(WosConfig(url=url, timeout=2.0), "gw-test", state)
with open(acks, "a") as out:
    for step in range(100000):
        deployment = f"dep-{step % 3}"
        box.add(deployment, status_body(
            deployment, "Installing", None, [(f"step-{step}", "Installing")], "capitalized"))
        out.write(f"{step}\\n")
        out.flush()
        box.flush(client)
"""


def test_sigkill_with_undelivered_reports_then_restart(tmp_path):
    state, acks = tmp_path / "state", tmp_path / "acks"
    acks.touch()
    with simulator(client_id=None) as sim:
        sim.fault = "down"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(state), sim.url, str(acks)],
            env=env,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: len(acks.read_text().split()) >= 30, what="30 reports added")
        finally:
            child.send_signal(signal.SIGKILL)
            _, stderr = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, stderr.decode()
        acked = len(acks.read_text().split())
        assert sim.statuses() == []
        # restart: a new process would do exactly this
        sim.fault = None
        store = StateStore(state)
        store.remove_leftovers()
        box = Outbox(store, 1000)
        assert acked <= len(box) <= acked + 1  # every acknowledged report, maybe one more
        with WosClient(WosConfig(url=sim.url, timeout=5.0), "gw-test", state) as client:
            drain(box, client)
        delivered = steps(sim.statuses())
    assert sorted(delivered) == list(range(len(delivered)))  # nothing lost, nothing twice
    for n in range(3):
        mine = [s for s in delivered if s % 3 == n]
        assert mine == sorted(mine)  # in order per deployment


# --- failures --------------------------------------------------------------------------------


def test_transient_error_backs_off_and_not_before_is_respected(tmp_path):
    with simulator() as sim, client_for(sim, tmp_path) as client:
        box = Outbox(StateStore(tmp_path / "state"), 10, rand=lambda: 0.0)
        box.add("dep", report("dep", 0))
        sim.fault = "500"
        first = box.flush(client, now=100.0)
        assert first.error is not None and first.error.code == "WOS_SERVER_ERROR"
        assert first.not_before == 101.0  # base 2, equal jitter at 0
        assert box.next_attempt() == 101.0  # when the agent's loop wakes for it
        seen = len(sim.requests())
        assert box.flush(client, now=100.5).skipped
        assert len(sim.requests()) == seen  # nothing sent before the time
        second = box.flush(client, now=101.0)
        assert second.not_before == 103.0  # doubled
        sim.fault = None
        assert box.flush(client, now=103.0).delivered == 1
        assert box.flush(client, now=103.1).not_before is None  # reset after recovery
        assert box.next_attempt() is None  # nothing to wake for


def test_token_expiry_mid_run_costs_one_refresh(tmp_path):
    with simulator() as sim, client_for(sim, tmp_path) as client:
        box = Outbox(StateStore(tmp_path / "state"), 10)
        for step in range(3):
            box.add("dep", report("dep", step))
        box.flush(client, now=0.0, max_sends=1)
        sim.revoke_tokens()
        result = box.flush(client, now=1.0)
        assert result.delivered == 2 and result.error is None
        assert sim.token_requests() == 2
        assert steps(sim.statuses("dep")) == [0, 1, 2]


def test_rejected_report_is_logged_and_dropped_after_bounded_tries(tmp_path, secret_free_logs):  # noqa: F811
    with simulator() as sim, client_for(sim, tmp_path) as client:
        box = Outbox(StateStore(tmp_path / "state"), 10, rand=lambda: 0.0)
        bad = report("dep-a", 0)
        bad["deploymentId"] = "someone-else"  # the WOS answers 400
        box.add("dep-a", bad)
        box.add("dep-a", report("dep-a", 1))
        box.add("dep-b", report("dep-b", 2))
        box.flush(client, now=0.0)
        # dep-a's next report waits behind the rejected one: the loop wakes for that, not now
        assert box.next_attempt() > 0.0
        results = [box.flush(client, now=1000.0 * i) for i in range(MAX_REJECTIONS)]
        assert [r.dropped for r in results] == [0] * (MAX_REJECTIONS - 1) + [1]
        assert steps(sim.statuses("dep-b")) == [2]  # another deployment did not wait
        assert sim.statuses("dep-a") == []  # its next report waited behind the rejected one
        drain(box, client)
        assert steps(sim.statuses("dep-a")) == [1]
        rejected = [r for r in sim.requests("/device/gw-test/deployment/dep-a") if r.answer == 400]
        assert len(rejected) == MAX_REJECTIONS
    log = secret_free_logs.text
    assert "deploymentId does not match the URL" in log  # the WOS's answer is in the log
    assert "dropped after 3 rejections" in log


def test_quiet_flush_logs_no_warning(tmp_path, secret_free_logs):  # noqa: F811
    with simulator(client_id=None) as sim:
        sim.fault = "down"
        with WosClient(WosConfig(url=sim.url, timeout=2.0), "gw-test", tmp_path) as client:
            box = Outbox(StateStore(tmp_path), 10)
            box.add("dep", report("dep", 0))
            assert box.flush(client, now=0.0, quiet=True).error is not None
    assert "WARNING" not in secret_free_logs.text


def test_bounded_work_per_flush(tmp_path):
    with simulator(client_id=None) as sim:
        client = WosClient(WosConfig(url=sim.url, timeout=5.0), "gw-test", tmp_path)
        box = Outbox(StateStore(tmp_path / "state"), 100)
        for step in range(7):
            box.add("dep", report("dep", step))
        assert box.flush(client, now=0.0, max_sends=3).delivered == 3
        assert len(box) == 4
        client.close()


def test_unreadable_record_is_set_aside_not_fatal(tmp_path):
    store = StateStore(tmp_path)
    box = Outbox(store, 10)
    box.add("dep", report("dep", 0))
    box.add("dep", report("dep", 1))
    first = store.path("outbox/0000000000000001.json")
    first.write_bytes(b"torn")
    assert not first.with_name(first.name + ".prev").exists()
    again = Outbox(StateStore(tmp_path), 10)
    assert steps([b for _, b in again.pending()]) == [1]
    assert (tmp_path / "outbox-unreadable" / first.name).read_bytes() == b"torn"


def test_status_command_counts_waiting_reports(tmp_path, config_file, cli):
    box = Outbox(StateStore(tmp_path / "state"), 10)
    for step in range(3):
        box.add("dep", report("dep", step))
    result = clean(cli("-c", str(config_file()), "status", "--json"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["agent"]["outbox"] == 3


@pytest.mark.parametrize("limit", [1, 3])
def test_merge_keeps_order_within_deployment(tmp_path, limit):
    box = Outbox(StateStore(tmp_path), limit)
    for step in range(6):
        box.add("dep", report("dep", step))
    assert steps([b for _, b in box.pending()]) == list(range(6 - limit, 6))
