"""What watching the desired-state repository costs, measured against a real smart-HTTP
server (C git's http-backend behind the test bridge on 127.0.0.1).

    .venv-pypi/bin/python bench/gitsource.py [--commits 1000] [--polls 50]

Prints: idle-poll requests, bytes and CPU ms; the bytes of fetching a change next to C git's
`git fetch --depth=1`; state_dir size after N upstream commits fetched one by one; and the
idle-poll cost against a repository with 2000 extra refs. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from margo_lite import gitsource
from margo_lite.config import GitConfig
from tests.support.gitserver import DEPLOYMENT, BearerAuth, GitServer, Upstream


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def idle_polls(server: GitServer, source: gitsource.GitSource, polls: int) -> str:
    source.poll()
    source.poll()
    server.reset_counters()
    cpu = time.thread_time()  # this thread only: the server's threads do not count
    for _ in range(polls):
        assert not source.poll().changed
    cpu_ms = (time.thread_time() - cpu) * 1000 / polls
    return (
        f"{server.requests / polls:.1f} requests, {server.bytes_sent / polls:.0f} B down + "
        f"{server.bytes_received / polls:.0f} B up, {cpu_ms:.2f} ms CPU per poll"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-git-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "srv").mkdir()
        upstream = Upstream(tmp / "srv" / "dev.git")
        upstream.commit({f"apps/app{i}.yaml": DEPLOYMENT.format(n=i) for i in range(10)})
        token = tmp / "token"
        token.write_text("bench-token-123")
        with GitServer(tmp / "srv") as server:
            server.auth = BearerAuth("bench-token-123")
            cfg = GitConfig(url=server.url(), auth="bearer", token_file=str(token))
            state = tmp / "state"
            source = gitsource.GitSource(cfg, state)
            print(f"idle poll:                 {idle_polls(server, source, args.polls)}")

            clone = tmp / "c-git"
            git = ["git", "-c", "http.extraHeader=Authorization: Bearer bench-token-123"]
            subprocess.run([*git, "clone", "-q", "--bare", "--depth=1", server.url(), str(clone)],
                           check=True)  # fmt: skip
            for label, change in (
                ("one-file edit", {"apps/app0.yaml": DEPLOYMENT.format(n=100)}),
                (
                    "five new files",
                    {f"apps/new{i}.yaml": DEPLOYMENT.format(n=200 + i) for i in range(5)},
                ),
            ):
                upstream.commit(change)
                server.reset_counters()
                subprocess.run([*git, "-C", str(clone), "fetch", "-q", "--depth=1", "origin",
                                "main"], check=True)  # fmt: skip
                c_git = server.bytes_sent + server.bytes_received
                c_req = server.requests
                server.reset_counters()
                assert source.poll().changed
                ours = server.bytes_sent + server.bytes_received
                print(
                    f"change, {label + ':':16}margo-lite {ours} B in {server.requests} requests, "
                    f"C git fetch --depth=1 {c_git} B in {c_req} requests "
                    f"(ratio {ours / c_git:.2f})"
                )

            before = folder_bytes(state)
            peak = 0
            started = time.monotonic()
            for n in range(args.commits):
                upstream.commit({f"apps/app{n % 10}.yaml": DEPLOYMENT.format(n=1000 + n)})
                assert source.poll().changed
                peak = max(peak, folder_bytes(state))
            print(
                f"state_dir after {args.commits} commits: {folder_bytes(state)} B "
                f"(peak {peak} B, at the start {before} B; "
                f"{(time.monotonic() - started) / args.commits * 1000:.0f} ms per commit+poll)"
            )

            upstream.add_refs(2000)
            source = gitsource.GitSource(cfg, tmp / "state2")
            print(f"idle poll, 2000 more refs: {idle_polls(server, source, args.polls)}")
            server.reset_counters()
            subprocess.run([*git, "ls-remote", server.url(), "refs/heads/main"],
                           check=True, capture_output=True)  # fmt: skip
            print(
                f"  C git ls-remote URL refs/heads/main: {server.requests} requests, "
                f"{server.bytes_sent} B down + {server.bytes_received} B up"
            )


if __name__ == "__main__":
    main()
