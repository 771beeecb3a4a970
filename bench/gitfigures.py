"""The Git figures: idle polls (plain, with 2000 extra refs, through a forward proxy), change
fetches against C git, and the state_dir as 1000 commits go by (`bench/gitsource.py` measures).
"""

from __future__ import annotations

from pathlib import Path

from bench import gitsource as gitbench
from bench import goals
from bench.figures import Counts, Figure, fig, skipped
from margo_lite import config, gitsource
from tests.support.gitserver import GitServer
from tests.support.proxyserver import ForwardProxy


def git_figures(tmp: Path, counts: Counts) -> list[Figure]:
    """Idle poll, change fetch next to C git, 2000 extra refs, state_dir after N commits."""
    (tmp / "srv").mkdir()
    upstream = gitbench.make_upstream(tmp / "srv")
    out = []
    with GitServer(tmp / "srv") as server:
        cfg = gitbench.git_config(server, tmp)
        state = tmp / "state"
        source = gitsource.GitSource(cfg, state)
        plain = gitbench.idle_poll_cost(server, source, counts.git_polls)
        out += [
            fig(
                "idle_requests",
                "idle poll: requests",
                plain.requests,
                "requests/poll",
                f"GitSource.poll x {counts.git_polls}, counted at the server",
            ),
            fig(
                "idle_wire_bytes",
                "idle poll: bytes on the wire",
                plain.down + plain.up,
                "B/poll",
                f"HTTP with headers: {plain.down:.0f} down + {plain.up:.0f} up",
            ),
            fig(
                "idle_git_cpu_ms",
                "idle poll: CPU of GitSource.poll",
                plain.cpu_ms,
                "ms/poll",
                f"polling thread only, {counts.git_polls} polls",
            ),
        ]

        clone = tmp / "c-git"
        gitbench.shallow_clone(server, clone)
        for (label, change), key in zip(gitbench.CHANGES, ("edit", "new5"), strict=True):
            cost = gitbench.change_fetch(server, upstream, source, clone, change)
            out += [
                fig(
                    f"change_{key}_bytes",
                    f"change fetch, {label}: margo-lite",
                    cost.ours_bytes,
                    "B",
                    f"{cost.ours_requests} requests, both directions",
                ),
                fig(
                    f"change_{key}_c_git_bytes",
                    f"change fetch, {label}: git fetch --depth=1",
                    cost.c_git_bytes,
                    "B",
                    f"{cost.c_git_requests} requests, same server",
                ),
                fig(
                    f"change_{key}_ratio",
                    f"change fetch, {label}: margo-lite / C git",
                    cost.ours_bytes / cost.c_git_bytes,
                    "ratio",
                ),
            ]

        growth = gitbench.state_growth(upstream, source, state, counts.commits)
        gitbench.shallow_clone(server, tmp / "c-git-tip")
        tip = goals.c_git_tip_bytes(tmp / "c-git-tip")
        out += [
            fig(
                "state_dir_bytes",
                f"state_dir after {growth.commits} upstream commits",
                growth.final,
                "B",
                f"each fetched; {growth.start} B before",
            ),
            fig("state_dir_peak_bytes", "state_dir peak over those commits", growth.peak, "B"),
            fig(
                "anchor_c_git_tip_bytes",
                "anchor: C git's shallow clone of that tip",
                tip,
                "B",
                "git clone --bare --depth=1: .pack + .idx",
            ),
        ]

        out += proxy_figures(server, cfg, tmp, counts)

        upstream.add_refs(counts.extra_refs)
        refs = gitbench.idle_poll_cost(
            server, gitsource.GitSource(cfg, tmp / "state-refs"), counts.git_polls
        )
        ls_requests, ls_down, ls_up = gitbench.ls_remote_cost(server)
        extra = f"{counts.extra_refs} extra refs"
        out += [
            fig("refs_requests", f"idle poll, {extra}: requests", refs.requests, "requests/poll"),
            fig(
                "refs_wire_bytes",
                f"idle poll, {extra}: bytes on the wire",
                refs.down + refs.up,
                "B/poll",
                f"{refs.down:.0f} down + {refs.up:.0f} up",
            ),
            fig(
                "refs_wire_ratio",
                f"idle poll, {extra} / without: bytes",
                (refs.down + refs.up) / (plain.down + plain.up),
                "ratio",
            ),
            fig(
                "refs_cpu_ms", f"idle poll, {extra}: CPU of GitSource.poll", refs.cpu_ms, "ms/poll"
            ),
            fig(
                "refs_c_git_ls_remote_bytes",
                f"idle poll, {extra}: git ls-remote URL main",
                ls_down + ls_up,
                "B",
                f"{ls_requests} requests, for comparison",
            ),
        ]
    return out


def proxy_figures(server: GitServer, cfg: config.GitConfig, tmp: Path, counts: Counts) -> list:
    """Idle polls through a real forward proxy (squid, basic auth), direct ones as anchor."""
    keys = [
        ("proxy_idle_requests", "idle poll via proxy: requests", "requests/poll"),
        ("proxy_idle_wire_bytes", "idle poll via proxy: bytes proxy to server", "B/poll"),
        ("proxy_idle_client_bytes", "idle poll via proxy: bytes proxy to margo-lite", "B/poll"),
        ("proxy_idle_ratio", "idle poll via proxy / direct: bytes down", "ratio"),
        ("proxy_idle_cpu_ms", "idle poll via proxy: CPU of GitSource.poll", "ms/poll"),
    ]
    if not Path(ForwardProxy.squid).exists():
        return skipped(keys, "no squid (tools/setup-host installs it)")
    cost = gitbench.proxied_idle_poll_cost(server, cfg, tmp, counts.git_polls)
    d, p = cost.direct, cost.proxied
    anchor = f"direct, same run: {d.requests:.1f} requests, {d.down:.0f} B down + {d.up:.0f} B up"
    return [
        fig(keys[0][0], keys[0][1], cost.proxy_requests, keys[0][2], f"proxy's log; {anchor}"),
        fig(
            keys[1][0], keys[1][1], p.down + p.up, keys[1][2], f"{p.down:.0f} down + {p.up:.0f} up"
        ),
        fig(keys[2][0], keys[2][1], cost.proxy_down, keys[2][2], "squid's access log"),
        fig(keys[3][0], keys[3][1], cost.proxy_down / d.down, keys[3][2], "to margo-lite"),
        fig(keys[4][0], keys[4][1], p.cpu_ms, keys[4][2], f"direct, same run: {d.cpu_ms:.2f}"),
    ]


# --- real `margo-lite run` processes -------------------------------------------------------
