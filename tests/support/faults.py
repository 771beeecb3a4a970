"""The fault table of docs/proof.md as data: each row's claims, each claim linked to the test that
proves it. `tests/test_fault_table.py` renders the
table from here, checks docs/proof.md holds exactly that, and checks every link both ways:
the named test exists (its node id collects) and carries `@proves(claim id)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest


def proves(*claims: str) -> Callable:
    """Mark a test as the proof of these claims of the fault table."""
    return pytest.mark.proves(*claims)


@dataclass(frozen=True)
class Claim:
    id: str
    text: str  # what the table's row says, in a few words
    tests: tuple[str, ...]  # node ids, "file.py::name[param]"; the first is agent-level


@dataclass(frozen=True)
class Row:
    fault: str
    does: str  # the table's "What margo-lite does"
    claims: tuple[Claim, ...]


F = "test_faults.py::"
S = "test_faults_schedule.py::"
OB = "test_outbox.py::"
G = "test_gitsource.py::"
W = "test_wos.py::"

ROWS: tuple[Row, ...] = (
    Row(
        "Git: any fault below",
        "the applications keep running untouched (same containers, not restarted) and nothing"
        " is removed; polled again with backoff (`poll.interval` doubling up to"
        " `poll.max_backoff`), back to the interval after a good poll; `margo-lite status`"
        " shows the last poll's error; `margo-lite once` prints `poll failed: ... [CODE]` and"
        " exits 1",
        (
            Claim(
                "git-untouched",
                "apps untouched, nothing removed",
                (F + "test_git_http_fault_keeps_the_last_desired_state[500]",),
            ),
            Claim(
                "git-backoff",
                "backoff doubling, on the agent's clock",
                (S + "test_git_faults_are_polled_again_with_the_interval_doubling",),
            ),
            Claim(
                "git-status-shows-error",
                "`margo-lite status` shows the error",
                (
                    F + "test_running_agent_rides_out_every_git_fault",
                    S + "test_git_faults_are_polled_again_with_the_interval_doubling",
                ),
            ),
            Claim(
                "git-once-exits-1",
                "`once` prints the code, exits 1",
                (F + "test_git_http_fault_keeps_the_last_desired_state[404]",),
            ),
        ),
    ),
    Row(
        "Git: HTTP 401, 403",
        "`GIT_AUTH_FAILED`; the last desired state stays in force; the first good poll applies"
        " what changed meanwhile",
        (
            Claim(
                "git-auth",
                "`GIT_AUTH_FAILED`, then the change",
                (
                    F + "test_git_http_fault_keeps_the_last_desired_state[401]",
                    F + "test_git_http_fault_keeps_the_last_desired_state[403]",
                    F + "test_running_agent_rides_out_every_git_fault",
                    G + "test_http_faults_on_poll",
                    G + "test_wrong_basic_password_is_an_auth_error",
                ),
            ),
        ),
    ),
    Row(
        "Git: HTTP 404",
        "`GIT_NOT_FOUND`; as above",
        (
            Claim(
                "git-not-found",
                "`GIT_NOT_FOUND`, then the change",
                (
                    F + "test_git_http_fault_keeps_the_last_desired_state[404]",
                    G + "test_deleted_repository_is_not_found",
                ),
            ),
        ),
    ),
    Row(
        "Git: HTTP 500",
        "`GIT_SERVER_ERROR` (transient); as above",
        (
            Claim(
                "git-server-error",
                "`GIT_SERVER_ERROR`, then the change",
                (F + "test_git_http_fault_keeps_the_last_desired_state[500]",),
            ),
        ),
    ),
    Row(
        "Git: connection refused",
        "`GIT_UNREACHABLE` naming the cause; as above",
        (
            Claim(
                "git-refused",
                "`GIT_UNREACHABLE` naming the cause",
                (
                    F + "test_git_connection_refused_keeps_the_last_desired_state",
                    G + "test_connection_refused_and_dns_failure",
                ),
            ),
        ),
    ),
    Row(
        "Git: server stalls",
        "the request ends after `git.timeout` with `GIT_TIMEOUT`; the agent never hangs",
        (
            Claim(
                "git-stall",
                "`GIT_TIMEOUT`, the daemon goes on",
                (
                    F + "test_git_http_fault_keeps_the_last_desired_state[stall]",
                    F + "test_running_agent_rides_out_every_git_fault",
                ),
            ),
        ),
    ),
    Row(
        "Git: truncated (or corrupted) pack",
        "`GIT_PACK_INVALID`; the new commit is not applied and the held commit stays; the next"
        " poll fetches it whole and applies it",
        (
            Claim(
                "git-pack",
                "not applied, then fetched whole",
                (
                    F + "test_broken_pack_is_not_applied_then_fetched_again[truncated]",
                    F + "test_broken_pack_is_not_applied_then_fetched_again[corrupt]",
                    G + "test_broken_fetch_keeps_the_held_commit",
                ),
            ),
        ),
    ),
    Row(
        "Git: TLS certificate mismatch (another host name; a CA not in `git.ca_file`)",
        "`GIT_TLS_FAILED`; nothing is fetched, never a silent fallback to no verification",
        (
            Claim(
                "git-tls",
                "`GIT_TLS_FAILED`, nothing fetched",
                (
                    F + "test_tls_certificate_mismatch_is_refused[host name]",
                    F + "test_tls_certificate_mismatch_is_refused[unknown CA]",
                    G + "test_tls_with_a_test_ca",
                ),
            ),
        ),
    ),
    Row(
        "Git: force-push",
        "the branch's new tip is the desired state, whatever its history: a rewound branch"
        " brings the older state back",
        (
            Claim(
                "git-force-push",
                "the rewound state comes back",
                (F + "test_force_push_is_followed", G + "test_force_push_and_orphan_history"),
            ),
        ),
    ),
    Row(
        "Git: branch deleted",
        "`GIT_BRANCH_MISSING`; a missing branch is not an empty desired state: nothing is"
        " removed; when the branch is back, polling resumes",
        (
            Claim(
                "git-branch-missing",
                "nothing removed, then resumes",
                (
                    F + "test_deleted_branch_keeps_the_last_desired_state",
                    G + "test_deleted_branch_keeps_the_last_state",
                ),
            ),
        ),
    ),
    Row(
        "WOS: down (connections closed) or HTTP 500",
        "changes are still applied; their reports wait in the durable outbox"
        " (`state_dir/outbox`) and are delivered, in order, once the WOS answers; `once`"
        " still exits 0",
        (
            Claim(
                "wos-outbox",
                "applied; reports wait, then delivered in order",
                (
                    F + "test_wos_fault_reports_wait_in_the_outbox_and_are_delivered_after[down]",
                    F + "test_wos_fault_reports_wait_in_the_outbox_and_are_delivered_after[500]",
                    OB + "test_wos_down_through_50_transitions_then_up",
                    OB + "test_sigkill_with_undelivered_reports_then_restart",
                ),
            ),
        ),
    ),
    Row(
        "WOS: 401 on a token it no longer accepts",
        "one new token (client credentials), one retry, delivered; the token and secret never"
        " reach a log",
        (
            Claim(
                "wos-401",
                "one new token, one retry",
                (
                    F + "test_wos_401_costs_one_token_refresh",
                    W + "test_token_cached_then_one_refresh_after_expiry_on_the_wos",
                    W + "test_persistent_401_costs_one_retry_then_is_transient",
                    OB + "test_token_expiry_mid_run_costs_one_refresh",
                ),
            ),
        ),
    ),
    Row(
        "WOS: down when the agent starts",
        "the capabilities it could not send are tried again with backoff (from 10 s, doubling"
        " up to `poll.max_backoff`) and sent once the WOS answers, without a restart",
        (
            Claim(
                "capabilities-follow",
                "sent once the WOS is back, no restart",
                (F + "test_wos_down_at_start_capabilities_follow_when_it_is_back",),
            ),
            Claim(
                "capabilities-backoff",
                "10, 20, 40 s apart, on the agent's clock",
                (S + "test_capabilities_are_tried_again_from_10_s_doubling",),
            ),
        ),
    ),
    Row(
        "WOS: slow (answers after `wos.timeout`)",
        "the call is given up at `wos.timeout`; the report stays in the outbox and is sent"
        " again later, so the WOS may hear a report twice but never misses one, and the order"
        " holds",
        (
            Claim(
                "wos-slow",
                "given up, sent again, order kept",
                (F + "test_wos_fault_reports_wait_in_the_outbox_and_are_delivered_after[slow]",),
            ),
        ),
    ),
    Row(
        "Git: a branch naming a tag, tree or blob; a tree entry or commit naming an object of"
        " another type",
        "`GIT_OBJECT_INVALID`, never a traceback; the last desired state stays in force",
        (
            Claim(
                "git-object-type",
                "`GIT_OBJECT_INVALID`, the last state kept",
                (
                    F + "test_git_object_of_the_wrong_type_keeps_the_last_desired_state",
                    "test_gitsource_objects.py::test_an_object_of_the_wrong_type_is_a_coded_error",
                ),
            ),
        ),
    ),
    Row(
        "Desired state: a surprise in one deployment (an exception no code was written for,"
        " while preparing, applying, self-healing or reporting it)",
        "that deployment alone is `Failed` with `INTERNAL_ERROR` naming the exception's class"
        " and message (the traceback at debug level only); the others are installed and"
        " self-healed; `run` stays up",
        (
            Claim(
                "surprise-alone",
                "that deployment alone `Failed`, `run` up",
                (
                    F + "test_surprise_in_one_deployment_fails_it_alone_and_run_goes_on",
                    "test_agent_boundary.py::test_a_surprise_fails_that_deployment_alone",
                    "test_agent_boundary_e2e.py::"
                    "test_running_agent_fails_a_surprise_alone_and_heals_the_others",
                ),
            ),
        ),
    ),
    Row(
        "Package server trickles (a byte every half second, each read within `packages.timeout`)",
        "the download is cut at `packages.deadline` with `PACKAGE_DOWNLOAD_FAILED` (retried"
        " with backoff); the deployment beside it is `Installed` meanwhile; `run` stays up",
        (
            Claim(
                "package-deadline",
                "cut at the deadline, the other installed",
                (
                    F + "test_trickling_package_server_is_cut_at_the_deadline",
                    "test_download_deadline.py::test_a_trickling_server_is_cut_at_the_deadline",
                ),
            ),
        ),
    ),
    Row(
        "Engine: image missing",
        "a pull is tried; that deployment alone is `Failed` with `IMAGE_MISSING` naming the"
        " image; others are untouched; tried again with backoff (10 s doubling up to"
        " `poll.max_backoff`), not at each poll, and at once when its spec changes",
        (
            Claim(
                "image-missing",
                "that deployment alone `Failed`",
                (
                    F + "test_missing_image_fails_that_deployment_alone",
                    "test_backends_engines.py::test_missing_image_and_unsupported_key",
                ),
            ),
            Claim(
                "component-retry-backoff",
                "retried 10, 20, 40 s after, on the agent's clock",
                (S + "test_failed_component_is_tried_again_on_its_backoff_not_at_each_poll",),
            ),
        ),
    ),
    Row(
        "Engine: published port already taken",
        "that deployment alone is `Failed` with `PORT_IN_USE` naming the address, nothing of"
        " it left (no container in any state, no network, no volume); the agent goes on;"
        " tried again with backoff, and at once when its spec changes or the agent starts",
        (
            Claim(
                "port-taken",
                "`PORT_IN_USE`, nothing of it left, installed at the next start",
                (F + "test_port_taken_fails_that_deployment_alone_until_the_next_start",),
            ),
        ),
    ),
    Row(
        "Engine: daemon stopped and started again (dockerd)",
        "the agent keeps running and removes nothing; it logs `cannot observe ..."
        " [ENGINE_UNAVAILABLE]` and reports nothing; when the daemon is back, the stopped"
        " containers are restored at the next look (every `runtime.observe_interval`) (a"
        " restoration that succeeds is not reported); a change that arrives meanwhile is"
        " `Failed` with `ENGINE_UNAVAILABLE` (transient), retried with backoff, then"
        " `Installed`",
        (
            Claim(
                "engine-restart",
                "nothing removed, restored, change applied after",
                (F + "test_engine_daemon_stopped_and_started_again",),
            ),
        ),
    ),
)


def render() -> str:
    """The table of docs/proof.md, from ROWS."""
    lines = ["| Fault | What margo-lite does | Proved by |", "| --- | --- | --- |"]
    for row in ROWS:
        proofs = "; ".join(
            f"{claim.text}: " + ", ".join(f"`{test}`" for test in claim.tests)
            for claim in row.claims
        )
        lines.append(f"| {row.fault} | {row.does} | {proofs} |")
    return "\n".join(lines)
