"""What watching the desired-state repository costs, measured against a real smart-HTTP
server (C git's http-backend behind the test bridge on 127.0.0.1).

    .venv-pypi/bin/python bench/gitsource.py [--commits 1000] [--polls 50]

Prints: idle-poll requests, bytes and CPU ms; the bytes of fetching a change next to C git's
`git fetch --depth=1`; state_dir size after N upstream commits fetched one by one; and the
idle-poll cost against a repository with 2000 extra refs. Figures, not assertions.
The functions below are also what `bench/run` (bench/suite.py) measures with.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from margo_lite import gitsource, proxy
from margo_lite.config import GitConfig
from tests.support.gitserver import DEPLOYMENT, BearerAuth, GitServer, Upstream
from tests.support.proxyserver import ForwardProxy
from tests.support.wait import wait_for

TOKEN = "bench-token-123"
#: The two changes fetched next to C git: (label, files changed).
CHANGES = (
    ("one-file edit", {"apps/app0.yaml": DEPLOYMENT.format(n=100)}),
    ("five new files", {f"apps/new{i}.yaml": DEPLOYMENT.format(n=200 + i) for i in range(5)}),
)


@dataclass(frozen=True)
class PollCost:
    """Per idle poll: requests, bytes from and to the server, CPU ms of the polling thread."""

    requests: float
    down: float
    up: float
    cpu_ms: float


@dataclass(frozen=True)
class FetchCost:
    """One change fetched by margo-lite and by C git `fetch --depth=1`: bytes both ways."""

    ours_bytes: int
    ours_requests: int
    c_git_bytes: int
    c_git_requests: int


@dataclass(frozen=True)
class StateGrowth:
    """state_dir bytes after fetching `commits` commits one by one."""

    commits: int
    final: int
    peak: int
    start: int
    ms_per_commit: float


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def c_git(*args: str) -> list[str]:
    """C git with the bench token: the client margo-lite is compared with."""
    return ["git", "-c", f"http.extraHeader=Authorization: Bearer {TOKEN}", *args]


def make_upstream(srv: Path) -> Upstream:
    """The bench repository: ten deployments on `main`."""
    upstream = Upstream(srv / "dev.git")
    upstream.commit({f"apps/app{i}.yaml": DEPLOYMENT.format(n=i) for i in range(10)})
    return upstream


def git_config(server: GitServer, tmp: Path) -> GitConfig:
    token = tmp / "token"
    token.write_text(TOKEN)
    server.auth = BearerAuth(TOKEN)
    return GitConfig(url=server.url(), auth="bearer", token_file=str(token))


def idle_poll_cost(server: GitServer, source: gitsource.GitSource, polls: int) -> PollCost:
    """Poll an unchanged branch `polls` times (after two warm-up polls)."""
    source.poll()
    source.poll()
    server.reset_counters()
    cpu = time.thread_time()  # this thread only: the server's threads do not count
    for _ in range(polls):
        assert not source.poll().changed
    cpu_ms = (time.thread_time() - cpu) * 1000 / polls
    return PollCost(
        server.requests / polls, server.bytes_sent / polls, server.bytes_received / polls, cpu_ms
    )


@dataclass(frozen=True)
class ProxiedPollCost:
    """Idle polls of one repository, direct (the anchor) and through a forward proxy, in turn."""

    direct: PollCost
    proxied: PollCost  # counted at the Git server: what the proxy forwarded
    proxy_requests: float  # per poll, from the proxy's access log
    proxy_down: float  # bytes per poll the proxy sent to margo-lite (its access log)


def proxied_idle_poll_cost(
    server: GitServer, cfg: GitConfig, tmp: Path, polls: int
) -> ProxiedPollCost:
    """The same idle polls, direct and through squid with basic auth on 127.0.0.1."""
    direct = idle_poll_cost(server, gitsource.GitSource(cfg, tmp / "state-direct"), polls)
    user, password = "bench-user", "bench-proxy-pass"
    with ForwardProxy(auth=(user, password)) as fwd:
        via = proxy.Proxy("127.0.0.1", fwd.port, user)
        settings = proxy.resolve(via, (), False, {}, password)
        source = gitsource.GitSource(cfg, tmp / "state-proxy", proxies=settings)
        server.reset_counters()
        source.poll()  # the first poll fetches
        wait_for(lambda: len(fwd.entries(server.port)) == server.requests, what="the proxy log")
        logged = len(fwd.entries(server.port))
        proxied = idle_poll_cost(server, source, polls)  # two more polls to warm up, then N
        per_poll = round(proxied.requests)
        expected = logged + per_poll * (polls + 2)
        wait_for(lambda: len(fwd.entries(server.port)) >= expected, what="the proxy's log")
        measured = fwd.entries(server.port)[expected - per_poll * polls : expected]
    return ProxiedPollCost(
        direct, proxied, len(measured) / polls, sum(e.size for e in measured) / polls
    )


def idle_polls(server: GitServer, source: gitsource.GitSource, polls: int) -> str:
    cost = idle_poll_cost(server, source, polls)
    return (
        f"{cost.requests:.1f} requests, {cost.down:.0f} B down + "
        f"{cost.up:.0f} B up, {cost.cpu_ms:.2f} ms CPU per poll"
    )


def change_fetch(
    server: GitServer,
    upstream: Upstream,
    source: gitsource.GitSource,
    clone: Path,
    change: dict[str, str],
) -> FetchCost:
    """Commit `change`; fetch it with C git into the shallow `clone`, then with `source`."""
    upstream.commit(change)
    server.reset_counters()
    subprocess.run([*c_git("-C", str(clone), "fetch", "-q", "--depth=1", "origin", "main")],
                   check=True)  # fmt: skip
    c_bytes = server.bytes_sent + server.bytes_received
    c_req = server.requests
    server.reset_counters()
    assert source.poll().changed
    ours = server.bytes_sent + server.bytes_received
    return FetchCost(ours, server.requests, c_bytes, c_req)


def shallow_clone(server: GitServer, clone: Path) -> None:
    subprocess.run([*c_git("clone", "-q", "--bare", "--depth=1", server.url(), str(clone))],
                   check=True)  # fmt: skip


def state_growth(
    upstream: Upstream, source: gitsource.GitSource, state: Path, commits: int
) -> StateGrowth:
    """Commit and fetch `commits` one-file edits, one by one; measure state_dir."""
    before = folder_bytes(state)
    peak = 0
    started = time.monotonic()
    for n in range(commits):
        upstream.commit({f"apps/app{n % 10}.yaml": DEPLOYMENT.format(n=1000 + n)})
        assert source.poll().changed
        peak = max(peak, folder_bytes(state))
    elapsed = time.monotonic() - started
    return StateGrowth(commits, folder_bytes(state), peak, before, elapsed / commits * 1000)


def ls_remote_cost(server: GitServer) -> tuple[int, int, int]:
    """C git `ls-remote URL refs/heads/main`: requests, bytes down, bytes up."""
    server.reset_counters()
    subprocess.run([*c_git("ls-remote", server.url(), "refs/heads/main")],
                   check=True, capture_output=True)  # fmt: skip
    return server.requests, server.bytes_sent, server.bytes_received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-git-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "srv").mkdir()
        upstream = make_upstream(tmp / "srv")
        with GitServer(tmp / "srv") as server:
            cfg = git_config(server, tmp)
            state = tmp / "state"
            source = gitsource.GitSource(cfg, state)
            print(f"idle poll:                 {idle_polls(server, source, args.polls)}")

            clone = tmp / "c-git"
            shallow_clone(server, clone)
            for label, change in CHANGES:
                cost = change_fetch(server, upstream, source, clone, change)
                print(
                    f"change, {label + ':':16}margo-lite {cost.ours_bytes} B in "
                    f"{cost.ours_requests} requests, C git fetch --depth=1 {cost.c_git_bytes} B "
                    f"in {cost.c_git_requests} requests "
                    f"(ratio {cost.ours_bytes / cost.c_git_bytes:.2f})"
                )

            growth = state_growth(upstream, source, state, args.commits)
            print(
                f"state_dir after {args.commits} commits: {growth.final} B "
                f"(peak {growth.peak} B, at the start {growth.start} B; "
                f"{growth.ms_per_commit:.0f} ms per commit+poll)"
            )

            upstream.add_refs(2000)
            source = gitsource.GitSource(cfg, tmp / "state2")
            print(f"idle poll, 2000 more refs: {idle_polls(server, source, args.polls)}")
            requests, down, up = ls_remote_cost(server)
            print(
                f"  C git ls-remote URL refs/heads/main: {requests} requests, "
                f"{down} B down + {up} B up"
            )


if __name__ == "__main__":
    main()
