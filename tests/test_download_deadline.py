"""The whole-transfer deadline of package downloads (`packages.deadline`), against a real
HTTP server on 127.0.0.1 that trickles the body one byte every half second: every read
succeeds within the read timeout, the transfer never ends by itself. The download is cut
at the deadline with a coded error; the agent goes on and installs the deployment beside.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from margo_lite.devkit import wossim
from margo_lite.download import Downloader
from margo_lite.errors import DownloadError
from tests.support.pkgfixtures import make_tar
from tests.support.pkgserver import PackageServer
from tests.support.rig import deployment
from tests.support.wait import wait_for
from tests.test_agent_boundary import GOOD, _cycle, _device, _last

BODY = bytes(range(256)) * 4096  # 1 MiB: two bytes a second would take six days
TRICKLE = 0.5


@pytest.fixture
def server() -> Iterator[PackageServer]:
    with PackageServer(None) as running:
        yield running


def _in_thread(work) -> dict:
    """Run `work` in a thread, so that a download that is never cut fails the test at the
    wait's deadline instead of hanging the suite."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except Exception as exc:  # handed to the test thread
            outcome["error"] = exc

    threading.Thread(target=run, daemon=True).start()
    wait_for(lambda: outcome or None, timeout=120, what="the download to end")
    return outcome


def test_a_trickling_server_is_cut_at_the_deadline(server, tmp_path: Path) -> None:
    url = server.put("/slow.tar.gz", BODY)
    server.trickle["/slow.tar.gz"] = TRICKLE
    downloader = Downloader(timeout=10.0, deadline=2.0)
    dest = tmp_path / "slow.tar.gz"
    outcome = _in_thread(lambda: downloader.fetch(url, dest, limit=len(BODY) * 2))
    error = outcome.get("error")
    assert isinstance(error, DownloadError), outcome
    assert error.code == "PACKAGE_DOWNLOAD_FAILED"
    assert "packages.deadline" in error.message
    assert not dest.exists()
    assert 0 < server.body_bytes["/slow.tar.gz"] < len(BODY)
    assert server.requests("/slow.tar.gz") == 1  # the deadline is spent: no retry


def test_within_the_deadline_the_same_server_serves_the_body(server, tmp_path: Path) -> None:
    url = server.put("/fast.tar.gz", BODY)
    fetched = Downloader(timeout=10.0, deadline=60.0).fetch(
        url, tmp_path / "fast.tar.gz", limit=len(BODY)
    )
    assert fetched.size == len(BODY)
    assert (tmp_path / "fast.tar.gz").read_bytes() == BODY


def test_a_package_its_signature_and_its_key_share_one_deadline(server, tmp_path: Path) -> None:
    """What one step downloads (`PackageStore.prepare` asks for this) has one budget: after
    a trickle spent it, the next download is not even asked for."""
    slow = server.put("/app.tar.gz", BODY)
    server.trickle["/app.tar.gz"] = TRICKLE
    fast = server.put("/app.tar.gz.asc", b"signature")
    downloader = Downloader(timeout=10.0, deadline=2.0)

    def step() -> None:
        with downloader.one_deadline():
            with pytest.raises(DownloadError):
                downloader.fetch(slow, tmp_path / "a", limit=len(BODY))
            downloader.fetch(fast, tmp_path / "b", limit=100)

    error = _in_thread(step).get("error")
    assert isinstance(error, DownloadError) and "packages.deadline" in error.message
    assert server.requests("/app.tar.gz.asc") == 0
    assert downloader.fetch(fast, tmp_path / "c", limit=100).size == len(b"signature")


def test_the_agent_fails_the_slow_package_alone(server, tmp_path: Path) -> None:
    """Two deployments: one's package trickles from the server, the other's is in the
    repository. The slow one fails at packages.deadline; the other is Installed."""
    compose = b"services:\n  web:\n    image: example.com/web:1\n"
    url = server.put("/app.tar.gz", make_tar([("compose.yaml", compose)]) + BODY)
    server.trickle["/app.tar.gz"] = TRICKLE
    with wossim.WosSimulator() as sim:
        device, twin = _device(
            tmp_path,
            sim,
            bad_files={"slow-1.yaml": deployment("slow-1", greeting="x", port=1, package=url)},
            overrides={"packages": {"deadline": "2s", "timeout": "10s"}},
        )
        device.start()
        outcome = _in_thread(lambda: _cycle(device))
        assert "error" not in outcome, outcome
        slow = _last(sim, "slow-1")
        assert slow["state"] == "Failed"
        assert slow["error"]["code"] == "PACKAGE_DOWNLOAD_FAILED"
        assert "packages.deadline" in slow["error"]["message"]
        assert _last(sim, GOOD)["state"] == "Installed"
        assert (GOOD, "web") in twin.running
        assert ("slow-1", "web") not in twin.running
